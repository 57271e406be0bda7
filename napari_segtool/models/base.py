"""The contract every architecture fulfils so the core can train and run it.

An :class:`Architecture` knows how to build its network from :class:`ModelMeta`,
how to turn a batch of annotated patches into a loss, and how to turn one image
plane (``YXC``, normalised) into labels. It declares, typed, what it lets users set
and what the core needs to know about it:

* ``postprocess_params`` / ``arch_params``: :class:`~napari_segtool.kernel.params.Param`
  declarations of its per-plane post-processing and network settings (checked in
  ``model.json``, shown as controls by the plugin's Segment and Train widgets);
* ``tasks``, :meth:`Architecture.probability_layout`, :meth:`Architecture.align` and
  :meth:`Architecture.receptive_field`: its capabilities.

The trainer, the predictor, the CLI and the plugin only talk to this interface, so a
new architecture is one new file in ``models/`` plus one
:func:`~napari_segtool.models.registry.register_architecture` line.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from napari_segtool.kernel.events import CancelToken
from napari_segtool.kernel.meta import ModelMeta
from napari_segtool.kernel.params import Param, ProbabilityLayout, check_settings
from napari_segtool.ops.postprocess import CORE_PARAMS, CORE_POSTPROCESS

ProgressFn = Callable[[int, int], None]


@dataclass
class Patch:
    """A training patch: image ``YXC`` float32, labels ``YX`` int, annotated ``YX`` bool.

    Regression patches also carry ``targets`` (``KYX`` float32, one map per output channel) and a
    per-pixel loss ``weight`` (``YX`` float32); segmentation patches leave them ``None``.
    """

    image: np.ndarray
    labels: np.ndarray
    annotated: np.ndarray
    targets: np.ndarray | None = None
    weight: np.ndarray | None = None


@dataclass
class PlaneResult:
    """Prediction for one 2D plane."""

    labels: np.ndarray
    probabilities: np.ndarray | None = None  # (K, Y, X) float32, optional
    table: list[dict[str, Any]] = field(default_factory=list)  # per-object rows


@dataclass
class PlaneSettings:
    """A model's post-processing settings with the caller's overrides, split by who applies them.

    ``plane``: the architecture's own, applied per plane (``fg_threshold``, ``score_threshold``...);
    ``core``: :data:`~napari_segtool.ops.postprocess.CORE_PARAMS`, applied by ``core.predict`` to the
    assembled result (``z_mode``, ``source_table``...; ``diameter`` is handed to the planes too).
    """

    plane: dict[str, Any]
    core: dict[str, Any]


def split_postprocess(postprocess: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> PlaneSettings:
    """``postprocess`` updated with the non-``None`` ``overrides``, split into per-plane and core settings."""
    merged = {**postprocess, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    return PlaneSettings({k: v for k, v in merged.items() if k not in CORE_POSTPROCESS},
                         {k: v for k, v in merged.items() if k in CORE_POSTPROCESS})


#: share of an output pixel's input-gradient mass the measured halo must hold (:func:`measured_halo`): nuclei
#: 0.97 -> 64 px (0.999 -> 96); labels of 2048²/3072² planes agree with the 96 px ones on 0.9996-0.9998 of the
#: pixels (AP@0.5 against them 0.995-1.0, against the truth within 0.002; docs/benchmarks/inference_speed.txt)
HALO_MASS = 0.97


def measured_halo(net: torch.nn.Module, in_channels: int, out_channels: int, align: int, bound: int,
                  mass: float = HALO_MASS) -> int:
    """The halo a dense network's outputs measurably need: the radius (pixels, Chebyshev, rounded up to
    ``align``, at most ``bound``) holding ``mass`` of the input-gradient magnitude of every output
    channel at both extreme phases of the ``align`` grid.

    The theoretical receptive field (``bound`` = half of it) counts every path through the network;
    trained weights put almost all of an output's dependence much closer (the *effective* receptive
    field, Luo et al. 2016). Measured once on an empty input (no image needed, so the halo is a
    property of the weights alone) in one batched backward pass; the outputs' dependence beyond the
    returned radius is ``1 - mass`` of the total.
    """
    from napari_segtool.models.runtime import fuse_batchnorm
    from napari_segtool.ops.tiling import round_up

    if bound <= align:
        return bound
    probe = fuse_batchnorm(net)  # a copy: the model's own gradients stay untouched
    for p in probe.parameters():
        p.requires_grad_(False)
    size = round_up(2 * bound + align, align)
    phases = (0, align - 1)
    cases = [(p, c) for p in phases for c in range(out_channels)]
    x = torch.zeros(len(cases), in_channels, size, size, requires_grad=True)
    with torch.enable_grad():
        y = probe(x)
        torch.stack([y[i, c, bound + p, bound + p] for i, (p, c) in enumerate(cases)]).sum().backward()
    grad = x.grad.abs().sum(1).numpy()
    yy, xx = np.indices((size, size))
    radius = 0
    for i, (p, _) in enumerate(cases):
        ring = np.maximum(abs(yy - bound - p), abs(xx - bound - p)).ravel()
        cumulative = np.cumsum(np.bincount(ring, grad[i].ravel()))
        if cumulative[-1] > 0:
            radius = max(radius, int(np.searchsorted(cumulative, mass * cumulative[-1])))
    return min(bound, round_up(max(radius, 1), align))


class Architecture(ABC):
    """Interface between the generic core and one network family."""

    name: str = ""
    #: the tasks it can learn
    tasks: tuple[str, ...] = ("instance", "semantic")
    #: whether it also learns the ``regression`` task (per-pixel maps from targets, not labels: :meth:`predict_maps`)
    regression: bool = False
    #: its per-plane post-processing settings (the core's own are ``ops.postprocess.CORE_PARAMS``)
    postprocess_params: tuple[Param, ...] = ()
    #: the network's settings (``meta.arch_kwargs``) a user may choose for a new model
    arch_params: tuple[Param, ...] = ()

    @property
    def supported_tasks(self) -> tuple[str, ...]:
        """Old name of :attr:`tasks`."""
        return self.tasks

    # ------------------------------------------------------------ capabilities
    def align(self, meta: ModelMeta) -> int:
        """The grid (pixels) the core keeps windows and training patches on; 1 when any size works."""
        return 1

    def receptive_field(self, meta: ModelMeta) -> int:
        """Context (pixels) one output pixel depends on; tiles and chunks get half of it as halo."""
        return int(meta.receptive_field or 0)

    def halo(self, net: torch.nn.Module, meta: ModelMeta) -> int:
        """Context (pixels each side) a tile of ``predict_plane`` carries: half the receptive field, on the
        :meth:`align` grid. Dense networks may override it with the context they measurably use
        (:func:`measured_halo`)."""
        from napari_segtool.ops.tiling import halo_for

        return halo_for(self.receptive_field(meta), self.align(meta))

    def measure_halo(self, net: torch.nn.Module, meta: ModelMeta) -> int:
        """The context these weights measurably need, stored as ``meta.halo`` when the model is saved so that
        every run of the same file tiles alike; 0 where the architecture does not use it."""
        return 0

    def window_extent(self, meta: ModelMeta, plane_hw: tuple[int, int], region: tuple[int, int, int, int], *,
                      tile_size: int | None = None, postprocess: Mapping[str, Any] | None = None
                      ) -> tuple[int, int, int, int] | None:
        """The part ``(y0, y1, x0, x1)`` of a whole plane of ``plane_hw`` (model grid) that a window must hold
        for its labels inside ``region`` to be those of a whole-plane run; ``None`` when the region grown by
        the halo is enough (dense maps blend to the whole-plane ones). Tile-bound detectors return whole tiles."""
        return None

    def probability_layout(self, meta: ModelMeta) -> ProbabilityLayout:
        """What the maps of ``predict_plane(..., return_probabilities=True)`` are, for this model."""
        return ProbabilityLayout(channels=("object",), foreground_channels=(0,))

    def training_problem(self, meta: ModelMeta, patch_size: int, batch_size: int) -> str | None:
        """Why this model cannot train on batches of ``batch_size`` patches of ``patch_size`` pixels, or ``None``.

        By default: a patch size off the :meth:`align` grid. An architecture adds its own limits.
        """
        align = self.align(meta)
        if align > 1 and patch_size % align:
            return (f"patch_size {patch_size} must be a multiple of {align} for this {meta.arch} "
                    f"(e.g. {-(-patch_size // align) * align})")
        return None

    def params_for(self, task: str, *, advanced: bool = True) -> tuple[Param, ...]:
        """The per-plane post-processing settings acting on models of ``task`` (without the advanced ones
        unless ``advanced``)."""
        return tuple(p for p in self.postprocess_params if p.applies(task) and (advanced or not p.advanced))

    def check_postprocess(self, postprocess: Any) -> None:
        """Raise :class:`ValueError` unless every setting is one of this architecture's or the core's, valid.
        ``after_fine_tuning`` holds settings too, checked the same way."""
        params = self.postprocess_params + CORE_PARAMS
        check_settings(postprocess, params, "postprocess.")
        later = postprocess.get("after_fine_tuning")
        if later is not None:
            check_settings(later, [p for p in params if p.name != "after_fine_tuning"],
                           "postprocess.after_fine_tuning.")

    def split_postprocess(self, meta: ModelMeta, overrides: Mapping[str, Any] | None = None) -> PlaneSettings:
        """``meta.postprocess`` with the non-``None`` overrides, split (see :func:`split_postprocess`)."""
        return split_postprocess(meta.postprocess, overrides)

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

    def predict_maps(self, net: torch.nn.Module, image: np.ndarray, meta: ModelMeta, *, device: torch.device,
                     tile_size: int | None = None, batch_size: int = 2, progress: ProgressFn | None = None,
                     cancel: CancelToken | None = None) -> np.ndarray:
        """The per-pixel output maps ``(K, Y, X)`` float32 of a ``regression`` model on one normalised ``YXC``
        plane (tiled), for the architectures with :attr:`regression`."""
        raise NotImplementedError(f"architecture '{self.name}' has no regression task")

    def stack_maps(self, probabilities: np.ndarray, meta: ModelMeta) -> tuple[np.ndarray, np.ndarray] | None:
        """``(p_foreground, distance)`` from one plane's ``predict_plane`` probabilities, if this family
        predicts such maps (its :meth:`probability_layout` has both); ``core.predict`` stacks them for a 3D
        watershed (``z_mode="watershed"``)."""
        layout = self.probability_layout(meta)
        if not layout.has_foreground or layout.distance_channel is None:
            return None
        return layout.foreground(probabilities), layout.distance(probabilities)

    def validation_score(self, pred: np.ndarray, labels: np.ndarray, annotated: np.ndarray,
                         meta: ModelMeta) -> tuple[str, float]:
        """A validation metric (name, value; higher is better) on annotated pixels."""
        from napari_segtool.ops.metrics import match_instances, semantic_scores

        if meta.task == "semantic":
            gt = np.where(annotated, labels, 0)
            p = np.where(annotated, pred, 0)
            return "miou", float(semantic_scores(p, gt, n_classes=len(meta.classes))["miou"])  # ids 0..K, 0 ignored
        return "ap50", float(match_instances(pred * annotated, labels * annotated, 0.5).ap)
