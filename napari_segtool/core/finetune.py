"""Fine-tuning that keeps what the starting model knows: frozen norm statistics, self-distillation, L2-SP,
weight averaging.

A user's corrections are a biased sample: a handful of edited objects and a thin ring of
background around them (:func:`napari_segtool.core.edits.training_mask`). Fine-tuned on
that alone, a network forgets the rest of the image (false objects appear in the
background it no longer sees) and a round of corrections can make the model worse than
the one it started from. Four remedies from the literature, each one setting of
:class:`FineTuneConfig` (``TrainConfig.fine_tune``), applied only when training starts
from a model (:func:`napari_segtool.core.train.iter_train` with ``init``):

* ``freeze_norm``: batch-norm layers keep the starting model's running statistics and
  normalise with them while training (they stay in eval mode). Patches drawn around a few
  edited objects do not have the image's statistics; batch statistics of tiny batches are
  noise (the usual practice when fine-tuning detection/segmentation networks).
* ``distill``: self-distillation (Learning without Forgetting, Li & Hoiem 2016; logit
  matching, Ba & Caruana 2014): on every pixel of the patch the user did *not* annotate,
  the network's outputs are pulled towards the frozen starting model's outputs on the same
  input (mean squared difference of the raw outputs, times ``distill``). The unedited,
  unreviewed regions thus act as soft pseudo-targets at low weight, so what the user did
  not correct stays as the starting model had it.
* ``l2sp``: L2-SP (Li, Grandvalet & Davoine 2018), decoupled as AdamW decouples weight
  decay: after every optimiser step each weight moves back towards its starting value by
  ``lr * l2sp * (w - w0)``.
* ``average``: weight averaging (Polyak averaging; the EMA of "mean teacher" / SWA-style
  averaging of iterates): the run ends on an exponential moving average of the weights
  after each step (decay ``average``), batch-norm statistics included, instead of its last
  step. With a handful of corrections a run's last weights depend on which random patches
  its last steps drew; their average depends on it less. It replaces the last weights,
  also when an epoch score picked the best epoch's.

A fine-tuning run ends on its last weights (the cosine schedule has annealed them), not on the epoch that
scored best on the validation region (``keep_best``, as training from scratch does): that region is a thin
stripe of the user's annotations, and picking weights by its score picked luck. Fine-tuning the shipped
nuclei model on the left half of the real nuclei image (seed 2, 25 steps an epoch), the stripe's ~20 objects
rated epoch 1 AP@0.5 0.600 and epochs 2-5 0.455-0.524, so the run kept epoch 1's weights: mean AP 0.600 on
the held-out half, where epochs 3-5 reached 0.65-0.70. That was the seed that stayed below the random forest
in every benchmark run (0.602-0.616).

Architecture-agnostic: the network's output is caught with a forward hook during the
architecture's own loss, so no loss function is copied; a network whose output is not a
tensor with the patch's height and width (Mask R-CNN's dicts) gets no distillation term.

All are off by default: a project trains on its edits plus the 3 px background ring,
and there no lever measured made a round reliably better than plain fine-tuning (averaging at
0.95 came closest: held-out AP@0.5 0.916 mean over four seeds against 0.900, the same spread;
``docs/benchmarks/hitl_effort.md``); distillation is what keeps training on edited pixels
alone from forgetting.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn


@dataclass
class FineTuneConfig:
    """How fine-tuning stays close to the starting model (ignored when training from scratch)."""

    freeze_norm: bool = False  # batch norm keeps the starting model's running statistics (eval mode)
    distill: float = 0.0       # weight of the self-distillation term on unannotated pixels (0 = off; see below)
    l2sp: float = 0.0          # decoupled pull of the weights towards their starting values (0 = off)
    average: float = 0.0       # decay of an exponential moving average of the weights, kept at the end (0 = off)
    keep_best: bool = False    # end on the best-validated epoch instead of the last (see the module docstring)


def freeze_norm_statistics(net: nn.Module) -> None:
    """Put every batch-norm layer of ``net`` in eval mode (call after each ``net.train()``)."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


class Anchor:
    """The starting model during one fine-tuning run: its frozen copy (the teacher) and its weights."""

    def __init__(self, net: nn.Module, config: FineTuneConfig):
        self.config = config
        self.teacher: nn.Module | None = None
        if config.distill > 0:
            self.teacher = copy.deepcopy(net).eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.start = [p.detach().clone() for p in net.parameters()] if config.l2sp > 0 else []
        self._seen: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.averaged = torch.optim.swa_utils.AveragedModel(
            net, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.average), use_buffers=True
        ) if config.average > 0 else None

    def set_mode(self, net: nn.Module) -> None:
        """The training mode of the fine-tuned network: batch norm frozen when configured."""
        if self.config.freeze_norm:
            freeze_norm_statistics(net)

    @contextmanager
    def watch(self, net: nn.Module) -> Iterator[None]:
        """Catch the input and output of each forward pass of ``net`` (the architecture's loss runs inside)."""
        self._seen = []

        def hook(_module: nn.Module, inputs: Any, output: Any) -> None:
            if self.teacher is not None and inputs and isinstance(inputs[0], torch.Tensor) \
                    and isinstance(output, torch.Tensor):
                self._seen.append((inputs[0], output))

        handle = net.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def distill_loss(self, annotated: Sequence[np.ndarray]) -> torch.Tensor | None:
        """``distill`` x mean squared difference to the teacher on the unannotated pixels of the last forward pass."""
        if self.teacher is None or not self._seen:
            return None
        x, out = self._seen[-1]
        self._seen = []
        free = torch.from_numpy(~np.stack([np.asarray(a, bool) for a in annotated])).to(out.device)
        if out.ndim != 4 or tuple(free.shape) != (out.shape[0], *out.shape[2:]):
            return None
        with torch.no_grad():
            target = self.teacher(x)
        weight = free.unsqueeze(1).to(out.dtype)
        denom = (weight.sum() * out.shape[1]).clamp_min(1.0)
        return self.config.distill * (((out - target) ** 2) * weight).sum() / denom

    @torch.no_grad()
    def pull(self, net: nn.Module, lr: float) -> None:
        """After each optimiser step: the L2-SP step (each weight moves towards its starting value by
        ``lr * l2sp * (w - w0)``), then the moving average takes in the new weights."""
        for p, p0 in zip(net.parameters(), self.start):
            p.sub_(p - p0, alpha=lr * self.config.l2sp)
        if self.averaged is not None:
            self.averaged.update_parameters(net)

    @torch.no_grad()
    def finish(self, net: nn.Module) -> None:
        """End of the run: ``net`` takes the averaged weights and batch-norm statistics (when averaging)."""
        if self.averaged is not None and int(self.averaged.n_averaged) > 0:
            net.load_state_dict(self.averaged.module.state_dict())
