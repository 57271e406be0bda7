"""napari-segtool: human-in-the-loop segmentation of microscopy stacks and astronomy images.

The public API is re-exported here lazily (``import napari_segtool`` stays cheap;
torch is imported on first use):

>>> from napari_segtool import load_model, predict          # doctest: +SKIP
>>> labels = predict(load_model("nuclei"), image).labels     # doctest: +SKIP
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "napari_segtool.core.checkpoint",
    "save_model": "napari_segtool.core.checkpoint",
    "list_models": "napari_segtool.core.checkpoint",
    "SegModel": "napari_segtool.core.model",
    "ModelMeta": "napari_segtool.core.model",
    "predict": "napari_segtool.core.predict",
    "iter_predict": "napari_segtool.core.predict",
    "Prediction": "napari_segtool.core.predict",
    "train": "napari_segtool.core.train",
    "iter_train": "napari_segtool.core.train",
    "new_model": "napari_segtool.core.train",
    "TrainConfig": "napari_segtool.core.train",
    "Example": "napari_segtool.core.data",
    "make_example": "napari_segtool.core.data",
    "CancelToken": "napari_segtool.kernel.events",
    "instance_scores": "napari_segtool.ops.metrics",
    "semantic_scores": "napari_segtool.ops.metrics",
    "read_image": "napari_segtool.io.images",
    "write_labels": "napari_segtool.io.images",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'napari_segtool' has no attribute {name!r}")
