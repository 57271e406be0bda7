"""Model metadata: what travels in a checkpoint's JSON next to the weights.

``ModelMeta`` says which architecture and its arguments, what the input looks
like (channels, normalisation), what comes out (task, classes), post-processing
defaults, the receptive field and the training history. It is plain data
(nothing of the package, no torch), so every layer can speak it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

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
