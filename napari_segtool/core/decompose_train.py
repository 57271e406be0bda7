"""Training a bulge/disk decomposition (regression) model on simulated sky fields.

Segmentation training (``core.train``) learns labels from annotations; a decomposition learns
per-pixel component shares from a simulator's noiseless component images, which no annotation
gives. A :class:`RegressionExample` is one field: its normalised image, the true shares of
bulge, disk and other flux (``sim.bulge_disk.component_fractions``) and per-pixel loss weights
(``sim.bulge_disk.footprint_weights``: every source counts alike, its pixels by flux).
:func:`iter_train_regression` draws patches around weighted pixels, turns them by the 8 symmetries
of the square (the sky has no preferred orientation), and asks the architecture for the loss;
it runs the same optimisation loop as ``core.train.iter_train`` (``core.train_loop``: ``TrainStep`` /
``TrainEpoch`` events, ``CancelToken``, time budget, learning-rate schedule, history entry) with the
same ``TrainConfig``, and keeps the last weights of its fixed steps, so a recipe's weights are
reproducible.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Generator, Sequence

import numpy as np
import torch

from napari_segtool.core.decompose import COMPONENTS, DecompositionInput
from napari_segtool.core.model import SegModel
from napari_segtool.core.train import TrainConfig, TrainResult
from napari_segtool.core.train_loop import history_entry, iter_optimise
from napari_segtool.kernel.device import configure_threads, pick_device
from napari_segtool.kernel.errors import ConfigError, InputError
from napari_segtool.kernel.events import CancelToken, TrainEpoch, TrainStep
from napari_segtool.models.base import Patch
from napari_segtool.models.registry import get_architecture
from napari_segtool.sim.astro import AstroField
from napari_segtool.sim.bulge_disk import component_fractions, footprint_weights

__all__ = ["RegressionExample", "field_example", "iter_train_regression", "train_regression"]


@dataclass
class RegressionExample:
    """One training plane: ``image`` ``YXC`` (normalised float32), ``targets`` ``KYX`` shares, ``weight`` ``YX``."""

    image: np.ndarray
    targets: np.ndarray
    weight: np.ndarray


def field_example(field: AstroField, normalization: dict[str, Any], with_psf: bool = False) -> RegressionExample:
    """A simulated field (with components) as a training example, the input made as ``core.decompose``
    makes it (``with_psf``: a second channel holding the PSF size it measures on the noisy image)."""
    inputs = DecompositionInput.of(field.image, normalization, 2 if with_psf else 1)
    return RegressionExample(np.asarray(inputs[:, :]), component_fractions(field), footprint_weights(field))


def _crop(ex: RegressionExample, size: int, rng: np.random.Generator) -> Patch:
    """A ``size``² patch around a weighted pixel (or anywhere, 10 %), in one of the 8 orientations."""
    h, w = ex.weight.shape
    lit = np.flatnonzero(ex.weight > 0)
    if lit.size and rng.random() < 0.9:
        cy, cx = divmod(int(rng.choice(lit)), w)
    else:
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y0 = int(np.clip(cy - size // 2 + rng.integers(-size // 4, size // 4 + 1), 0, h - size))
    x0 = int(np.clip(cx - size // 2 + rng.integers(-size // 4, size // 4 + 1), 0, w - size))
    window = (slice(y0, y0 + size), slice(x0, x0 + size))
    image, targets, weight = ex.image[window], ex.targets[(slice(None),) + window], ex.weight[window]
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))

    def orient(a: np.ndarray, axes: tuple[int, int]) -> np.ndarray:
        a = np.rot90(a, turns, axes=axes)
        return np.ascontiguousarray(np.flip(a, axis=axes[1]) if flip else a)

    weight = orient(weight, (0, 1))
    return Patch(orient(image, (0, 1)), np.zeros(weight.shape, np.int32), weight > 0,
                 targets=orient(targets, (1, 2)).astype(np.float32), weight=weight.astype(np.float32))


def iter_train_regression(
    examples: Sequence[RegressionExample],
    *,
    arch: str = "unet",
    classes: Sequence[str] = COMPONENTS,
    config: TrainConfig | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    normalization: dict[str, Any] | None = None,
    cancel: CancelToken | None = None,
) -> Generator[TrainStep | TrainEpoch, None, TrainResult]:
    """Train a new regression model on ``examples`` for ``config.epochs * config.steps_per_epoch`` steps
    (fewer if ``config.time_budget`` runs out or ``cancel`` is set)."""
    cfg = config or TrainConfig()
    architecture = get_architecture(arch)
    if not architecture.regression:
        raise ConfigError(f"architecture '{arch}' has no regression task")
    if not examples:
        raise InputError("no training examples")
    if any(min(ex.weight.shape) < cfg.patch_size for ex in examples):
        raise InputError(f"every training image must be at least {cfg.patch_size} pixels on each side")
    configure_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = pick_device(cfg.device)
    start = time.perf_counter()
    meta = architecture.default_meta("regression", examples[0].image.shape[-1], list(classes), **(arch_kwargs or {}))
    if normalization:
        meta.normalization = dict(normalization)
    problem = architecture.training_problem(meta, cfg.patch_size, cfg.batch_size)
    if problem:
        raise ConfigError(problem)
    model = SegModel(architecture.build(meta), meta).to(device)
    model.net.train()

    def batch_loss() -> torch.Tensor:
        batch = [_crop(examples[int(rng.integers(len(examples)))], cfg.patch_size, rng) for _ in range(cfg.batch_size)]
        return architecture.loss(model.net, batch, meta, device)

    run = yield from iter_optimise(model.net, cfg, batch_loss, start=start, cancel=cancel)
    seconds = time.perf_counter() - start
    meta.history.append(history_entry(cfg, run, len(examples), seconds))
    return TrainResult(model, run.epochs, run.stop_reason, seconds, run.steps)


def train_regression(examples: Sequence[RegressionExample], **kwargs: Any) -> TrainResult:
    """Synchronous :func:`iter_train_regression` (pass ``callback`` to see its events)."""
    from napari_segtool.kernel.events import run_job

    callback = kwargs.pop("callback", None)
    return run_job(iter_train_regression(examples, **kwargs), callback)
