"""A trained segmentation model: a torch network plus its :class:`ModelMeta`.

Prediction goes through the architecture registry (``models/``), which this
module sits above; the metadata itself lives in :mod:`napari_segtool.kernel.meta`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from napari_segtool.kernel.meta import ModelMeta, Task

__all__ = ["ModelMeta", "SegModel", "Task"]


@dataclass
class SegModel:
    """A network and its metadata; prediction goes through the architecture registry."""

    net: torch.nn.Module
    meta: ModelMeta

    @property
    def architecture(self):
        from napari_segtool.models.registry import get_architecture

        return get_architecture(self.meta.arch)

    def to(self, device: torch.device | str) -> "SegModel":
        self.net.to(device)
        return self

    @property
    def device(self) -> torch.device:
        try:
            return next(self.net.parameters()).device
        except StopIteration:
            return torch.device("cpu")
