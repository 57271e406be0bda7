"""A trained segmentation model: a torch network plus the metadata needed to use it.

``ModelMeta`` is what travels in the checkpoint's JSON: which architecture and its
arguments, what the input looks like (channels, normalisation), what comes out
(task, classes), post-processing defaults, the receptive field and the training
history. Everything a caller needs to run the model correctly is in here.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import torch

Task = Literal["instance", "semantic"]


@dataclass
class ModelMeta:
    """Metadata stored next to the weights (JSON), never pickled."""

    arch: str
    task: Task
    in_channels: int
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    classes: list[str] = field(default_factory=lambda: ["background", "object"])
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"method": "percentile", "low": 1.0, "high": 99.8}
    )
    postprocess: dict[str, Any] = field(default_factory=dict)
    receptive_field: int = 0
    tile_size: int = 256
    name: str = ""
    description: str = ""
    card: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    version: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelMeta":
        known = {f.name for f in fields(cls)}
        missing = {"arch", "task", "in_channels"} - set(data)
        if missing:
            raise ValueError(f"model metadata lacks {sorted(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})


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
