"""The optimisation loop every training job runs, whatever it learns (labels, component shares).

:func:`iter_optimise` owns what a training run does between "here is a network" and "here are
its best weights": AdamW, the warm-up + cosine learning-rate schedule (over steps, or over the
time budget when that ends first), ``TrainStep`` / ``TrainEpoch`` events, the time budget, the
``CancelToken`` (cancelling keeps the best weights so far), per-epoch scoring with early stopping,
and the entry a run leaves in the model's history. The caller gives what differs between jobs:
a ``loss`` function drawing and scoring one batch, and optionally an epoch ``score`` (validation)
and hooks around the step (fine-tuning's anchor). ``core.train.iter_train`` and
``core.decompose_train.iter_train_regression`` both run it, so they cannot drift apart.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, Protocol

import numpy as np
import torch
from torch import nn

from napari_segtool.kernel.events import CancelToken, TrainEpoch, TrainStep

__all__ = ["LoopConfig", "LoopResult", "iter_optimise", "lr_at", "history_entry"]


class LoopConfig(Protocol):
    """The settings the loop reads (``core.train.TrainConfig`` has them)."""

    epochs: int
    steps_per_epoch: int
    lr: float
    weight_decay: float
    time_budget: float | None
    patience: int

    def to_dict(self) -> dict[str, Any]: ...


@dataclass
class LoopResult:
    """How a run ended: its epochs, why it stopped, optimiser steps, best epoch score (None: none scored)."""

    epochs: list[TrainEpoch]
    stop_reason: str
    steps: int
    best_score: float | None


def lr_at(base: float, progress: float) -> float:
    """Short linear warm-up then cosine decay over ``progress`` in [0, 1]."""
    warm = min(1.0, progress / 0.05) if progress < 0.05 else 1.0
    return base * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def iter_optimise(
    net: nn.Module,
    cfg: LoopConfig,
    loss: Callable[[], torch.Tensor],
    *,
    start: float,
    cancel: CancelToken | None = None,
    score: Callable[[list[float]], tuple[str, float]] | None = None,
    train_mode: Callable[[], None] | None = None,
    after_step: Callable[[float], None] | None = None,
    keep_best: bool = True,
) -> Generator[TrainStep | TrainEpoch, None, LoopResult]:
    """Optimise ``net`` (in training mode) by ``loss()`` for ``cfg.epochs * cfg.steps_per_epoch`` steps.

    Stops early at ``cfg.time_budget`` seconds after ``start`` (``time.perf_counter``; the next step
    must fit), at a cancelled ``cancel``, or after ``cfg.patience`` epochs without a better score.
    ``score(losses)`` rates each epoch (higher is better) with ``net`` in eval mode, then
    ``train_mode()`` (default ``net.train()``) restores training; the best-scoring weights are kept.
    Without ``score`` every epoch is rated by its training loss and the last weights are kept (a
    fixed-step recipe); so they are with ``keep_best=False``, when the scores only report and stop early
    (a score of a small held-out region is too noisy to pick weights by: see ``core.finetune``).
    ``after_step(lr)`` runs after each optimiser step. Leaves ``net`` in eval mode.
    """
    restore = train_mode or net.train
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    epochs: list[TrainEpoch] = []
    keep_best = keep_best and score is not None
    best_state = copy.deepcopy(net.state_dict()) if keep_best else None
    best_score, since_best, step = -math.inf, 0, 0
    total_steps = cfg.epochs * cfg.steps_per_epoch
    stop_reason = "epochs"
    step_seconds = 0.0
    for epoch in range(cfg.epochs):
        losses: list[float] = []
        for _ in range(cfg.steps_per_epoch):
            elapsed = time.perf_counter() - start
            if cancel is not None and cancel.cancelled:
                stop_reason = "cancelled"
                break
            if cfg.time_budget is not None and elapsed + step_seconds > cfg.time_budget:
                stop_reason = "time budget"
                break
            t0 = time.perf_counter()
            progress = step / total_steps
            if cfg.time_budget:
                progress = max(progress, elapsed / cfg.time_budget)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(cfg.lr, progress)
            value = loss()
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            if after_step is not None:
                after_step(optimizer.param_groups[0]["lr"])
            step += 1
            losses.append(float(value.detach()))
            step_seconds = 0.8 * step_seconds + 0.2 * (time.perf_counter() - t0) if step > 1 else time.perf_counter() - t0
            yield TrainStep(step, epoch, losses[-1], time.perf_counter() - start, total_steps)
        if not losses:
            break
        if score is not None:
            net.eval()
            metric_name, value_score = score(losses)
            restore()
        else:
            metric_name, value_score = "train_loss", -float(np.mean(losses))
        is_best = score is None or value_score > best_score
        if is_best:
            best_score, since_best = value_score, 0
            if keep_best:
                best_state = copy.deepcopy(net.state_dict())
        else:
            since_best += 1
        event = TrainEpoch(epoch, float(np.mean(losses)), value_score, metric_name,
                           time.perf_counter() - start, is_best, cfg.epochs)
        epochs.append(event)
        yield event
        if stop_reason != "epochs":
            break
        if score is not None and since_best >= cfg.patience:
            stop_reason = "early stopping"
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return LoopResult(epochs, stop_reason, step, None if math.isinf(best_score) else best_score)


def history_entry(cfg: LoopConfig, result: LoopResult, examples: int, seconds: float,
                  **extra: Any) -> dict[str, Any]:
    """What a run appends to ``ModelMeta.history``: when, on how much, how long, why it stopped, its
    settings (less the device) and epochs; ``extra`` (e.g. ``fine_tuned_from``) first."""
    return {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra,
            "examples": examples, "steps": result.steps, "seconds": round(seconds, 1),
            "stop_reason": result.stop_reason, "best_score": result.best_score,
            "config": {k: v for k, v in cfg.to_dict().items() if k != "device"},
            "epochs": [e.as_dict() for e in result.epochs]}
