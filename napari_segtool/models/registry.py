"""Name -> architecture. A new architecture is its file plus one :func:`register_architecture` line here.

Builders are called lazily (torchvision is slow to import) and this module imports no
torch itself, so listing the names (``segtool train --model`` choices) stays cheap.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from napari_segtool.models.base import Architecture

_BUILDERS: dict[str, Callable[[], "Architecture"]] = {}
_CACHE: dict[str, "Architecture"] = {}


def register_architecture(name: str, builder: Callable[[], "Architecture"], *, replace: bool = False) -> None:
    """Make ``builder()`` (an :class:`~napari_segtool.models.base.Architecture` subclass, or a function
    returning an instance) available as ``name`` to training, prediction, checkpoints, the CLI and the widgets.

    The architecture's ``name`` must be ``name`` (it is what ``model.json`` records).
    """
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"architecture names are letters, digits, '-' and '_', got {name!r}")
    if name in _BUILDERS and not replace:
        raise ValueError(f"architecture '{name}' is already registered")
    _BUILDERS[name] = builder
    _CACHE.pop(name, None)


def _unet() -> "Architecture":
    from napari_segtool.models.unet import UNetArchitecture

    return UNetArchitecture()


def _maskrcnn() -> "Architecture":
    from napari_segtool.models.maskrcnn import MaskRCNNArchitecture

    return MaskRCNNArchitecture()


register_architecture("unet", _unet)
register_architecture("maskrcnn", _maskrcnn)


def available_architectures() -> list[str]:
    """The registered names, U-Net (the default) first."""
    return sorted(_BUILDERS, key=lambda n: (n != "unet", n))


def get_architecture(name: str) -> "Architecture":
    """Return the (cached) architecture object for ``name``; imports lazily (torchvision is slow)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown architecture '{name}' (choose from {', '.join(available_architectures())})")
    if name not in _CACHE:
        arch = _BUILDERS[name]()
        if arch.name != name:
            raise ValueError(f"architecture registered as '{name}' calls itself '{arch.name}'")
        _CACHE[name] = arch
    return _CACHE[name]
