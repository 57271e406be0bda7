"""Training and fine-tuning from annotated examples, as a generator of progress events.

``iter_train`` yields :class:`TrainStep` after every optimiser step and
:class:`TrainEpoch` after every epoch, and returns a :class:`TrainResult`. It stops
at the first of: ``epochs`` done, ``time_budget`` seconds spent, no validation
improvement for ``patience`` epochs, or a cancelled :class:`CancelToken` (then the
best weights so far are kept — cancelling never throws work away).
"""
from __future__ import annotations

import copy
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Generator, Sequence

import numpy as np
import torch

from napari_segtool.core.augment import AugmentConfig, augment
from napari_segtool.core.data import DataError, Example, PatchSampler, split_validation
from napari_segtool.core.finetune import Anchor, FineTuneConfig
from napari_segtool.core.scale import object_scale_from_labels
from napari_segtool.core.train_loop import history_entry, iter_optimise
from napari_segtool.core.tune_decoding import tune_decoding
from napari_segtool.kernel.device import configure_threads, pick_device
from napari_segtool.kernel.errors import ConfigError
from napari_segtool.kernel.events import CancelToken, TrainEpoch, TrainStep
from napari_segtool.core.model import ModelMeta, SegModel
from napari_segtool.models.registry import get_architecture


@dataclass
class TrainConfig:
    """Everything that controls a training run (stored in the model's history)."""

    epochs: int = 100
    steps_per_epoch: int = 25
    batch_size: int = 8
    patch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    time_budget: float | None = None   # seconds; None = no limit
    val_fraction: float = 0.15
    patience: int = 15
    seed: int = 0
    device: str | None = None
    num_threads: int | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    fine_tune: FineTuneConfig = field(default_factory=FineTuneConfig)  # used only when starting from a model
    tune_decoding: bool = True  # instance thresholds chosen on the validation region after training (core.tune_decoding)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    model: SegModel
    epochs: list[TrainEpoch]
    stop_reason: str
    seconds: float
    steps: int


def new_model(arch: str, task: str, in_channels: int, classes: Sequence[str] | None = None,
              **arch_kwargs: Any) -> SegModel:
    """A fresh model of architecture ``arch``; semantic ``classes`` list starts with 'unlabelled'."""
    architecture = get_architecture(arch)
    if task not in architecture.supported_tasks:
        raise ConfigError(f"architecture '{arch}' does not support task '{task}'")
    if classes is None:
        classes = ["background", "object"]
    try:
        meta = architecture.default_meta(task, in_channels, classes, **arch_kwargs)
    except (ValueError, TypeError) as exc:  # arguments the architecture refuses (too few classes, unknown kwargs)
        raise ConfigError(f"{arch}: {' '.join(str(exc).split())}") from None
    return SegModel(architecture.build(meta), meta)


def _check_compatible(model: SegModel, examples: Sequence[Example], task: str) -> None:
    channels = {ex.image.shape[-1] for ex in examples}
    if channels != {model.meta.in_channels}:
        raise DataError(f"model expects {model.meta.in_channels} channel(s) but the images have {sorted(channels)}")
    if model.meta.task != task:
        raise DataError(f"cannot fine-tune an {model.meta.task} model for the {task} task" if model.meta.task == "instance"
                        else f"cannot fine-tune a {model.meta.task} model for the {task} task")
    if task == "semantic":
        top = max(int(ex.labels.max()) for ex in examples)
        if top > len(model.meta.classes) - 1:
            raise DataError(f"labels use class id {top} but the model has {len(model.meta.classes) - 1} classes")


#: Augmented draws per batch item before falling back to an unaugmented patch around an annotated pixel.
MAX_DRAWS_PER_PATCH = 20


def _batch(sampler: PatchSampler, cfg: TrainConfig, rng: np.random.Generator):
    """``batch_size`` augmented patches that each hold annotated pixels; always terminates.

    Augmentation can rotate or zoom the annotated pixels of a tiny or sparsely
    annotated image out of the patch; after ``MAX_DRAWS_PER_PATCH`` such draws per
    patch the rest of the batch is cropped around annotated pixels, unaugmented.
    """
    src = int(math.ceil(cfg.patch_size * cfg.augment.margin))
    patches = []
    for _ in range(MAX_DRAWS_PER_PATCH * cfg.batch_size):
        if len(patches) >= cfg.batch_size:
            break
        p = augment(sampler.sample(src), cfg.patch_size, rng, cfg.augment)
        if p.annotated.any():
            patches.append(p)
    while len(patches) < cfg.batch_size:
        patches.append(sampler.sample_annotated(cfg.patch_size))
    return patches


#: device types on which the next batch is drawn in a worker thread while the network trains on the current
#: one. On an accelerator that thread uses a core that would wait (H200, nuclei fine-tune, 60 steps + 6 validations:
#: 11.3 -> 9.9 s); on a CPU torch's threads already fill the cores (2 cores: same wall time, +3 % CPU).
PREFETCH_ON = ("cuda", "mps")


class _Batches:
    """The training batches of :func:`_batch`, in order; with ``prefetch`` the next one is drawn in one worker
    thread while the caller trains on the current one.

    Sampling, augmentation and the copies around them hold no torch state, so they can run beside the
    forward and backward passes (which release the GIL). After the first draw only the worker uses ``rng``,
    one batch after another, so the batches -- and the losses of a seeded run -- are those of drawing them in
    the loop.
    """

    def __init__(self, sampler: PatchSampler, cfg: TrainConfig, rng: np.random.Generator, prefetch: bool):
        self._args = (sampler, cfg, rng)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="segtool-batches") if prefetch else None
        self._next: Future | None = None

    def next(self) -> list:
        if self._pool is None:
            return _batch(*self._args)
        batch = (self._next or self._pool.submit(_batch, *self._args)).result()
        self._next = self._pool.submit(_batch, *self._args)
        return batch

    def close(self) -> None:
        """Stop the worker (after the batch it is drawing, which is dropped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def _validate(model: SegModel, val: Sequence[Example], device: torch.device) -> tuple[str, float]:
    """The architecture's validation score of the held-out annotated region of each example (mean).

    Each region is predicted in the prediction path's own tiles (a stripe this small is one tile plus
    its halo). Tiles of 256 px with the nuclei model's 112 px halo kept a 32 px core: 24 tiles, 79x the
    pixels of the 78x256 held-out stripe of the real nuclei half-image, 1.56 s CPU per epoch against 0.27 s.
    """
    arch = model.architecture
    scores, name = [], "score"
    for ex in val:
        ys, xs = np.nonzero(ex.annotated)
        sl = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        pred = arch.predict_plane(model.net, ex.image[sl], model.meta, device=device).labels
        name, value = arch.validation_score(pred, ex.labels[sl], ex.annotated[sl], model.meta)
        scores.append(value)
    return name, float(np.mean(scores)) if scores else float("nan")


def _train_mode(model: SegModel, anchor: Anchor | None) -> None:
    """The network in training mode; when fine-tuning, batch norm as the anchor says (frozen statistics)."""
    model.net.train()
    if anchor is not None:
        anchor.set_mode(model.net)


def iter_train(
    examples: Sequence[Example],
    *,
    arch: str = "unet",
    task: str = "instance",
    classes: Sequence[str] | None = None,
    init: SegModel | None = None,
    config: TrainConfig | None = None,
    cancel: CancelToken | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    normalization: dict[str, Any] | None = None,
) -> Generator[TrainStep | TrainEpoch, None, TrainResult]:
    """Train a new model (or fine-tune ``init``) on ``examples``; see module docstring.

    ``examples`` must have been normalised the way the model will be used:
    ``make_example(..., normalization=...)`` with ``init.meta.normalization`` when
    fine-tuning, or with the ``normalization`` passed here (stored in the new model).
    """
    from napari_segtool.core.validate import check_train_config

    from napari_segtool.models.registry import available_architectures

    cfg = config or TrainConfig()
    check_train_config(cfg)  # ConfigError before any work
    if task not in ("instance", "semantic"):
        raise ConfigError(f"task must be 'instance' or 'semantic', got {task!r}")
    if init is None and arch not in available_architectures():
        raise ConfigError(f"unknown architecture {arch!r} (choose from {', '.join(available_architectures())})")
    if not examples:
        raise DataError("no training examples")
    configure_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    device = pick_device(cfg.device)
    start = time.perf_counter()

    if init is not None:
        model = SegModel(copy.deepcopy(init.net), ModelMeta.from_dict(copy.deepcopy(init.meta.to_dict())))
        model.meta.halo = 0  # the weights will change: their halo is measured again when they are saved
        # a shipped model may post-process differently once it has learnt the user's data
        model.meta.postprocess.update(model.meta.postprocess.pop("after_fine_tuning", None) or {})
        _check_compatible(model, examples, task)
    else:
        in_ch = examples[0].image.shape[-1]
        if task == "semantic" and classes is None:
            top = max(int(ex.labels.max()) for ex in examples)
            classes = ["unlabelled"] + [f"class {i}" for i in range(1, top + 1)]
        model = new_model(arch, task, in_ch, classes, **(arch_kwargs or {}))
        if normalization:
            model.meta.normalization = dict(normalization)
        _check_compatible(model, examples, task)
    architecture = model.architecture
    problem = architecture.training_problem(model.meta, cfg.patch_size, cfg.batch_size)
    if problem:
        raise ConfigError(problem)
    annotated_labels = [np.where(ex.annotated, ex.labels, 0) for ex in examples]
    architecture.configure_from_data(model.meta, [ex.labels[ex.annotated] for ex in examples] if task == "semantic"
                                     else annotated_labels)
    if task == "instance":  # the model now works at the object size of the data it learns from
        aug = cfg.augment
        scale = object_scale_from_labels(annotated_labels, aug.scale_range if aug.enabled and aug.p_similarity > 0
                                         else (1.0, 1.0))
        if scale.diameter:
            model.meta.scale = replace(scale, auto=model.meta.scale.auto)

    train_set, val_set = split_validation(examples, cfg.val_fraction)
    sampler = PatchSampler(train_set, cfg.patch_size, rng)
    model.to(device)
    anchor = Anchor(model.net, cfg.fine_tune) if init is not None else None
    _train_mode(model, anchor)

    batches = _Batches(sampler, cfg, rng, prefetch=device.type in PREFETCH_ON)

    def batch_loss() -> torch.Tensor:
        batch = batches.next()
        if anchor is None:
            return architecture.loss(model.net, batch, model.meta, device)
        with anchor.watch(model.net):
            loss = architecture.loss(model.net, batch, model.meta, device)
        extra = anchor.distill_loss([p.annotated for p in batch])
        return loss if extra is None else loss + extra

    def score(losses: list[float]) -> tuple[str, float]:
        return _validate(model, val_set, device) if val_set else ("train_loss", -float(np.mean(losses)))

    try:
        run = yield from iter_optimise(
            model.net, cfg, batch_loss, start=start, cancel=cancel, score=score,
            train_mode=lambda: _train_mode(model, anchor),
            after_step=None if anchor is None else lambda lr: anchor.pull(model.net, lr),
            keep_best=anchor is None or cfg.fine_tune.keep_best)  # fine-tuning ends on its last weights
    finally:
        batches.close()
    if anchor is not None:
        anchor.finish(model.net)  # the averaged weights, when fine-tuning averages them
    tuned = tune_decoding(model, val_set, device) if cfg.tune_decoding and val_set else None
    if tuned is not None:  # stored in model.json: every later prediction starts from them
        model.meta.postprocess.update(tuned.settings)
    seconds = time.perf_counter() - start
    model.meta.history.append(history_entry(cfg, run, len(examples), seconds,
                                            fine_tuned_from=init.meta.name if init is not None else None,
                                            **({"decoding": tuned.record()} if tuned is not None else {})))
    return TrainResult(model, run.epochs, run.stop_reason, seconds, run.steps)


def train(examples: Sequence[Example], **kwargs: Any) -> TrainResult:
    """Synchronous :func:`iter_train` (events are discarded; pass ``callback`` to see them)."""
    from napari_segtool.kernel.events import run_job

    callback = kwargs.pop("callback", None)
    return run_job(iter_train(examples, **kwargs), callback)
