"""Training a bulge/disk decomposition (regression) model on simulated sky fields.

Segmentation training (``core.train``) learns labels from annotations; a decomposition learns
per-pixel component shares from a simulator's noiseless component images, which no annotation
gives. A :class:`RegressionExample` is one field: its normalised image, the true shares of
bulge, disk and other flux (``sim.bulge_disk.component_fractions``) and per-pixel loss weights
(``sim.bulge_disk.footprint_weights``: every source counts alike, its pixels by flux).
:func:`iter_train_regression` draws patches around weighted pixels, turns them by the 8 symmetries
of the square (the sky has no preferred orientation), and asks the architecture for the loss;
it is a job generator like ``core.train.iter_train`` (``TrainStep`` / ``TrainEpoch`` events, a
``CancelToken``) with the same ``TrainConfig`` and learning-rate schedule, and fixed steps, so a
recipe's weights are reproducible.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Generator, Sequence

import numpy as np
import torch

from napari_segtool.core.decompose import COMPONENTS
from napari_segtool.core.model import SegModel
from napari_segtool.core.train import TrainConfig, TrainResult, _lr_at
from napari_segtool.kernel.device import configure_threads, pick_device
from napari_segtool.kernel.errors import ConfigError, InputError
from napari_segtool.kernel.events import CancelToken, TrainEpoch, TrainStep
from napari_segtool.models.base import Patch
from napari_segtool.models.registry import get_architecture
from napari_segtool.ops.normalize import normalize
from napari_segtool.sim.astro import AstroField
from napari_segtool.sim.bulge_disk import component_fractions, footprint_weights

__all__ = ["RegressionExample", "field_example", "iter_train_regression", "train_regression"]


@dataclass
class RegressionExample:
    """One training plane: ``image`` ``YXC`` (normalised float32), ``targets`` ``KYX`` shares, ``weight`` ``YX``."""

    image: np.ndarray
    targets: np.ndarray
    weight: np.ndarray


def field_example(field: AstroField, normalization: dict[str, Any]) -> RegressionExample:
    """A simulated field (with components) as a training example, normalised as the model will be."""
    image = normalize(field.image.astype(np.float32)[..., None], **normalization)
    return RegressionExample(image, component_fractions(field), footprint_weights(field))


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
    """Train a new regression model on ``examples`` for ``config.epochs * config.steps_per_epoch`` steps."""
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
    optimizer = torch.optim.AdamW(model.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps, step, stop_reason, epochs = cfg.epochs * cfg.steps_per_epoch, 0, "epochs", []
    for epoch in range(cfg.epochs):
        losses = []
        for _ in range(cfg.steps_per_epoch):
            if cancel is not None and cancel.cancelled:
                stop_reason = "cancelled"
                break
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(cfg.lr, step / total_steps)
            batch = [_crop(examples[int(rng.integers(len(examples)))], cfg.patch_size, rng)
                     for _ in range(cfg.batch_size)]
            loss = architecture.loss(model.net, batch, meta, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            yield TrainStep(step, epoch, losses[-1], time.perf_counter() - start, total_steps)
        if not losses:
            break
        event = TrainEpoch(epoch, float(np.mean(losses)), -float(np.mean(losses)), "train_loss",
                           time.perf_counter() - start, True, cfg.epochs)
        epochs.append(event)
        yield event
        if stop_reason != "epochs":
            break
    model.net.eval()
    seconds = time.perf_counter() - start
    meta.history.append({"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "examples": len(examples), "steps": step,
                         "seconds": round(seconds, 1), "stop_reason": stop_reason,
                         "config": {k: v for k, v in copy.deepcopy(cfg.to_dict()).items() if k != "device"},
                         "epochs": [e.as_dict() for e in epochs]})
    return TrainResult(model, epochs, stop_reason, seconds, step)


def train_regression(examples: Sequence[RegressionExample], **kwargs: Any) -> TrainResult:
    """Synchronous :func:`iter_train_regression` (pass ``callback`` to see its events)."""
    from napari_segtool.kernel.events import run_job

    callback = kwargs.pop("callback", None)
    return run_job(iter_train_regression(examples, **kwargs), callback)
