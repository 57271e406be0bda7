"""Model metadata: what travels in a checkpoint's JSON next to the weights.

``ModelMeta`` says which architecture and its arguments, what the input looks
like (channels, normalisation), what comes out (task, classes), post-processing
defaults, the receptive field and the training history. It is plain data
(nothing of the package, no torch), so every layer can speak it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

Task = Literal["instance", "semantic", "regression"]


@dataclass
class ObjectScale:
    """The object size a model works at, measured on its training labels (pixels).

    ``diameter`` is where the engine runs it: images whose objects have another size are
    resampled so that theirs become this one (:mod:`napari_segtool.core.scale`). It is the
    geometric middle of ``low``..``high``, the 10th and 90th percentiles of the per-image
    median object diameters the model was trained on. ``diameter == 0`` means unknown: the
    model runs at the image's own scale. ``auto`` lets the engine estimate each image's
    object size when the user gives none (models whose objects span all sizes, like
    astronomical sources, turn it off).
    """

    diameter: float = 0.0
    low: float = 0.0
    high: float = 0.0
    auto: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ObjectScale":
        data = data or {}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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
    # the context (pixels each side) these weights measurably need, stored when the model is saved
    # (``Architecture.measure_halo``); 0: not measured, tiles carry half the theoretical receptive field
    halo: int = 0
    scale: ObjectScale = field(default_factory=ObjectScale)
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
        values = {k: v for k, v in data.items() if k in known}
        values["scale"] = ObjectScale.from_dict(values.get("scale"))
        return cls(**values)
