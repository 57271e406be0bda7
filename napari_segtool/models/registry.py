"""Name -> architecture. Add a new architecture here (one line) after writing its file."""
from __future__ import annotations

from typing import Callable

from napari_segtool.models.base import Architecture


def _unet() -> Architecture:
    from napari_segtool.models.unet import UNetArchitecture

    return UNetArchitecture()


def _maskrcnn() -> Architecture:
    from napari_segtool.models.maskrcnn import MaskRCNNArchitecture

    return MaskRCNNArchitecture()


_BUILDERS: dict[str, Callable[[], Architecture]] = {
    "unet": _unet,
    "maskrcnn": _maskrcnn,
}
_CACHE: dict[str, Architecture] = {}


def available_architectures() -> list[str]:
    return sorted(_BUILDERS)


def get_architecture(name: str) -> Architecture:
    """Return the (cached) architecture object for ``name``; imports lazily (torchvision is slow)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown architecture '{name}' (choose from {', '.join(available_architectures())})")
    if name not in _CACHE:
        _CACHE[name] = _BUILDERS[name]()
    return _CACHE[name]
