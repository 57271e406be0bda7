"""The contract every architecture fulfils so the core can train and run it.

An :class:`Architecture` knows how to build its network from :class:`ModelMeta`,
how to turn a batch of annotated patches into a loss, and how to turn one image
plane (``YXC``, normalised) into labels. The trainer, the predictor, the CLI and
the plugin only talk to this interface, so a new architecture is one new file in
``models/`` plus one line in ``models/registry.py``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from napari_segtool.kernel.events import CancelToken
from napari_segtool.kernel.meta import ModelMeta

ProgressFn = Callable[[int, int], None]


@dataclass
class Patch:
    """A training patch: image ``YXC`` float32, labels ``YX`` int, annotated ``YX`` bool."""

    image: np.ndarray
    labels: np.ndarray
    annotated: np.ndarray


@dataclass
class PlaneResult:
    """Prediction for one 2D plane."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None  # (K, Y, X) float32, optional
    table: list[dict[str, Any]] = field(default_factory=list)  # per-object rows


class Architecture(ABC):
    """Interface between the generic core and one network family."""

    name: str = ""
    supported_tasks: tuple[str, ...] = ("instance", "semantic")

    @abstractmethod
    def default_meta(self, task: str, in_channels: int, classes: Sequence[str], **arch_kwargs: Any) -> ModelMeta:
        """Metadata for a fresh, untrained model."""

    @abstractmethod
    def build(self, meta: ModelMeta) -> torch.nn.Module:
        """Instantiate the network described by ``meta`` (random weights)."""

    def configure_from_data(self, meta: ModelMeta, label_images: Sequence[np.ndarray]) -> None:
        """Adapt data-dependent settings (object size, anchors) from training labels."""

    @abstractmethod
    def loss(self, net: torch.nn.Module, patches: Sequence[Patch], meta: ModelMeta,
             device: torch.device) -> torch.Tensor:
        """Scalar loss of ``net`` on a batch of annotated patches (unannotated pixels ignored)."""

    @abstractmethod
    def predict_plane(self, net: torch.nn.Module, image: np.ndarray, meta: ModelMeta, *,
                      device: torch.device, tile_size: int | None = None, batch_size: int = 4,
                      return_probabilities: bool = False, progress: ProgressFn | None = None,
                      cancel: CancelToken | None = None, **postprocess: Any) -> PlaneResult:
        """Labels for one normalised ``YXC`` float32 plane of any size (tiled)."""

    def stack_maps(self, probabilities: np.ndarray, meta: ModelMeta) -> tuple[np.ndarray, np.ndarray] | None:
        """``(p_foreground, distance)`` from one plane's ``predict_plane`` probabilities, if this family
        predicts such maps; ``core.predict`` stacks them for a 3D watershed (``z_mode="watershed"``)."""
        return None

    def validation_score(self, pred: np.ndarray, labels: np.ndarray, annotated: np.ndarray,
                         meta: ModelMeta) -> tuple[str, float]:
        """A validation metric (name, value; higher is better) on annotated pixels."""
        from napari_segtool.ops.metrics import match_instances, semantic_scores

        if meta.task == "semantic":
            gt = np.where(annotated, labels, 0)
            p = np.where(annotated, pred, 0)
            return "miou", float(semantic_scores(p, gt, n_classes=len(meta.classes))["miou"])  # ids 0..K, 0 ignored
        return "ap50", float(match_instances(pred * annotated, labels * annotated, 0.5).ap)
