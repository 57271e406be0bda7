"""Human-in-the-loop simulation: a simulated annotator corrects objects, the model is fine-tuned, repeat.

This is the headless twin of the Correct → Train loop of the napari widgets, built
only on the public core API (:func:`~napari_segtool.core.predict.predict`,
:func:`~napari_segtool.core.data.make_example`,
:func:`~napari_segtool.core.train.iter_train`,
:func:`~napari_segtool.ops.metrics.instance_scores`). It answers "how many
corrected objects does it take?" on any image with ground truth.

Each round of :func:`iter_hitl`:

1. :class:`SimulatedAnnotator` looks at the current labels of the *training*
   image (the latest prediction, with every earlier correction kept) and corrects
   the ``k`` worst-matched objects first: a missed ground-truth object is **added**,
   a wrong one (split, merged, badly outlined) is **fixed** by replacing the
   predicted object(s) with the ground-truth one, and a false positive is
   **deleted**. The annotated mask is the pixels of each corrected object plus a
   ``margin`` of surrounding background, and the true-background pixels of each
   deleted object.
2. The model is fine-tuned (from the previous round's model, as the Train widget
   does when the new model becomes current) for a fixed ``time_budget`` on one
   example: the training image, its current labels, and the annotated mask (only
   annotated pixels count in the loss).
3. The training image and the held-out images are re-predicted; the held-out
   scores (AP@0.5, mean AP 0.5:0.95), training and prediction seconds are reported.

Baselines train on exactly the same corrections in the same run: ``"scratch"``
(a fresh model of the same architecture and budget, also continuing its own chain
round after round) and any ``baselines`` callables (e.g. an ilastik-style random
forest), so curves are comparable point by point.

The loop is a generator yielding one :class:`HitlRound` per round (round 0 is the
starting model, before any correction), so a CLI or widget can drive and cancel
it; it returns the list of rounds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Generator, Literal, Sequence

import numpy as np
from scipy import ndimage as ndi

from napari_segtool.core.data import DataError, make_example
from napari_segtool.core.edits import merge_prediction, shift_ids
from napari_segtool.kernel.events import CancelToken
from napari_segtool.ops.metrics import instance_scores, iou_matrix
from napari_segtool.core.model import SegModel
from napari_segtool.core.predict import predict
from napari_segtool.core.train import TrainConfig, iter_train

__all__ = [
    "Correction",
    "SimulatedAnnotator",
    "HitlConfig",
    "MethodResult",
    "HitlRound",
    "iter_hitl",
    "run_hitl",
    "split_image",
    "merge_corrections",
]

#: ``fit(image, labels, annotated) -> predict(image) -> labels``: a baseline trained on the same corrections.
Baseline = Callable[[np.ndarray, np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]


# ============================================================== the simulated annotator


@dataclass
class Correction:
    """One object the annotator corrected: ``add`` a missed object, ``fix`` a wrong one, ``delete`` a false positive."""

    kind: Literal["add", "fix", "delete"]
    gt_id: int      # ground-truth object (0 for a deletion)
    pred_id: int    # the predicted object it concerned (0 for an addition)
    iou: float      # best IoU of the object before the correction (what "worst-matched" sorts on)
    area: int       # pixels of the object (ground truth for add/fix, prediction for delete)


def merge_corrections(pred: np.ndarray, fixed: np.ndarray, annotated: np.ndarray,
                      drop_fraction: float = 0.5) -> np.ndarray:
    """A new prediction with the corrections kept: annotated pixels keep ``fixed``'s values.

    The very merge the Correct widget runs on a re-predicted plane
    (:func:`napari_segtool.core.edits.merge_prediction`): predicted objects lying mostly
    (``>= drop_fraction`` of their pixels) on annotated pixels are dropped, the others are
    trimmed to the unannotated pixels. Predicted ids are shifted above ``fixed.max()``.
    """
    shifted = shift_ids(pred, int(np.asarray(fixed).max()))
    return merge_prediction(np.asarray(fixed).astype(np.int32), shifted, annotated, instance=True,
                            drop_fraction=drop_fraction).astype(np.int32)


class SimulatedAnnotator:
    """Corrects the worst-matched objects of a prediction against ground truth ``gt``.

    The annotator is honest: it only ever asserts what the ground truth says. The
    margin around a corrected object is annotated only where the ground truth is
    background, and of a deleted false positive only its true-background pixels
    are annotated (background).

    Parameters
    ----------
    gt : ground-truth instance labels of the image the annotator works on.
    margin : pixels of background annotated around each corrected object.
    fp_overlap : a predicted object with less than this fraction of its pixels on
        ground-truth objects is a false positive (to delete); others are handled by
        fixing the ground-truth objects they overlap.
    """

    def __init__(self, gt: np.ndarray, *, margin: int = 3, fp_overlap: float = 0.5):
        self.gt = np.asarray(gt).astype(np.int32)
        if self.gt.ndim != 2:
            raise ValueError(f"ground truth must be 2D, got shape {self.gt.shape}")
        self.margin = int(margin)
        self.fp_overlap = float(fp_overlap)
        self.fixed = np.zeros(self.gt.shape, np.int32)      # corrected objects (their own ids) + asserted bg
        self.annotated = np.zeros(self.gt.shape, bool)
        self.labels = np.zeros(self.gt.shape, np.int32)     # current working labels (prediction + corrections)
        self.corrections: list[Correction] = []
        self._done_gt: set[int] = set()
        self._gt_ids = np.unique(self.gt[self.gt > 0])

    # ---------------------------------------------------------------- state
    @property
    def n_corrected(self) -> int:
        return len(self.corrections)

    def counts(self) -> dict[str, int]:
        kinds = [c.kind for c in self.corrections]
        return {"added": kinds.count("add"), "fixed": kinds.count("fix"), "deleted": kinds.count("delete")}

    def update(self, pred: np.ndarray) -> np.ndarray:
        """Take a new prediction of the image, keeping every correction; returns the working labels."""
        pred = np.asarray(pred)
        if pred.shape != self.gt.shape:
            raise ValueError(f"prediction shape {pred.shape} does not match ground truth {self.gt.shape}")
        self.labels = merge_corrections(pred, self.fixed, self.annotated)
        return self.labels

    # ---------------------------------------------------------------- choosing
    def candidates(self) -> list[Correction]:
        """Every correction still possible, worst-matched first (IoU ascending, then larger objects first)."""
        work = self.labels
        ious, gt_ids, pred_ids = iou_matrix(work, self.gt)
        fixed_ids = set(np.unique(self.fixed[self.annotated & (self.fixed > 0)]).tolist())
        gt_area = np.bincount(self.gt.ravel())
        out: list[Correction] = []
        for i, g in enumerate(gt_ids.tolist()):
            if g in self._done_gt:
                continue
            row = ious[i]
            j = int(np.argmax(row)) if row.size else -1
            best = float(row[j]) if row.size else 0.0
            if best <= 0:
                out.append(Correction("add", g, 0, 0.0, int(gt_area[g])))
            else:
                out.append(Correction("fix", g, int(pred_ids[j]), best, int(gt_area[g])))
        if pred_ids.size:
            flat = work.ravel()
            area = np.bincount(flat)
            on_gt = np.bincount(flat[self.gt.ravel() > 0], minlength=area.size)
            for j, p in enumerate(pred_ids.tolist()):
                if p in fixed_ids:
                    continue
                if on_gt[p] < self.fp_overlap * area[p]:
                    best = float(ious[:, j].max()) if ious.shape[0] else 0.0
                    out.append(Correction("delete", 0, p, best, int(area[p])))
        out.sort(key=lambda c: (c.iou, -c.area, c.kind, c.gt_id, c.pred_id))
        return out

    # ---------------------------------------------------------------- correcting
    def correct(self, k: int) -> list[Correction]:
        """Apply the ``k`` worst-matched corrections (fewer if fewer remain); returns them."""
        todo = self.candidates()[: max(0, int(k))]
        for c in todo:
            self._apply(c)
        self.corrections.extend(todo)
        return todo

    def _apply(self, c: Correction) -> None:
        work = self.labels
        struct = ndi.generate_binary_structure(2, 1)
        if c.kind == "delete":
            obj = work == c.pred_id
            work[obj] = 0
            bg = obj & (self.gt == 0)
            self.fixed[bg] = 0
            self.annotated |= bg
            return
        obj = self.gt == c.gt_id
        # predicted objects lying mostly inside the true one are its fragments: remove them whole
        ids, inside = np.unique(work[obj], return_counts=True)
        if ids.size:
            area = np.bincount(work.ravel(), minlength=int(ids.max()) + 1)
            protected = self._protected()
            frags = [pid for pid, n in zip(ids.tolist(), inside.tolist())
                     if pid > 0 and n >= 0.5 * area[pid] and pid not in protected]
            if frags:
                work[np.isin(work, frags)] = 0
        new_id = int(max(self.fixed.max(), work.max())) + 1
        ring = ndi.binary_dilation(obj, struct, iterations=self.margin) & ~obj & (self.gt == 0) \
            if self.margin > 0 else np.zeros_like(obj)
        # the margin is asserted background, but never over another corrected object
        ring &= ~(self.annotated & (self.fixed > 0))
        work[ring] = 0
        work[obj] = new_id
        self.fixed[ring] = 0
        self.fixed[obj] = new_id
        self.annotated |= obj | ring
        self._done_gt.add(c.gt_id)

    def _protected(self) -> set[int]:
        return set(np.unique(self.fixed[self.annotated & (self.fixed > 0)]).tolist())


# ============================================================== the round loop


@dataclass
class HitlConfig:
    """Settings of :func:`iter_hitl`.

    ``train`` is the base :class:`TrainConfig` of every fine-tuning (its
    ``time_budget`` is replaced by ``time_budget``; a fresh seed per round).
    ``time_budget=None`` trains the config's ``epochs x steps_per_epoch`` steps
    instead: slower machines then take longer but results are reproducible.
    ``warm_start`` continues each method's chain from its previous round (the
    widget's behaviour); ``False`` restarts from the initial model every round.
    """

    k: int = 10
    rounds: int = 5
    time_budget: float | None = 20.0
    margin: int = 3
    scratch: bool = True
    warm_start: bool = True
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=10_000, steps_per_epoch=10, patience=10_000, val_fraction=0.0))
    seed: int = 0


@dataclass
class MethodResult:
    """Held-out scores of one method after one round."""

    ap50: float
    mean_ap: float
    train_seconds: float = 0.0
    predict_seconds: float = 0.0
    steps: int = 0
    note: str = ""


@dataclass
class HitlRound:
    """What one round did and scored. ``results`` maps method name → :class:`MethodResult`."""

    round: int
    corrected: int                      # objects corrected so far (all rounds)
    added: int
    fixed: int
    deleted: int
    annotated_pixels: int
    corrections: list[Correction]       # this round's
    results: dict[str, MethodResult]
    model: SegModel | None = None       # the fine-tuned model after this round
    labels: np.ndarray | None = None    # working labels of the training image after this round's corrections

    @property
    def round_seconds(self) -> float:
        """Fine-tune + re-predict seconds of the fine-tuned model (the user's wait per round)."""
        r = self.results["finetune"]
        return r.train_seconds + r.predict_seconds

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per method (for CSV)."""
        base = {"round": self.round, "corrected": self.corrected, "added": self.added, "fixed": self.fixed,
                "deleted": self.deleted, "annotated_pixels": self.annotated_pixels}
        return [{**base, "method": name, "ap50": r.ap50, "mean_ap": r.mean_ap,
                 "train_seconds": r.train_seconds, "predict_seconds": r.predict_seconds, "steps": r.steps,
                 "note": r.note} for name, r in self.results.items()]


def split_image(image: np.ndarray, labels: np.ndarray, fraction: float = 0.5, axis: int = 1):
    """Cut an image and its labels into a training part and a held-out part along ``axis`` (default: X).

    Returns ``((train_image, train_labels), (heldout_image, heldout_labels))``;
    ``fraction`` is the training share (the left part for ``axis=1``).
    """
    image, labels = np.asarray(image), np.asarray(labels)
    cut = int(round(labels.shape[axis] * fraction))
    first = [slice(None)] * labels.ndim
    second = [slice(None)] * labels.ndim
    first[axis], second[axis] = slice(0, cut), slice(cut, None)
    return ((image[tuple(first)], labels[tuple(first)]), (image[tuple(second)], labels[tuple(second)]))


def _score(preds: Sequence[np.ndarray], heldout: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    scores = [instance_scores(p, gt) for p, (_, gt) in zip(preds, heldout)]
    return float(np.mean([s["ap50"] for s in scores])), float(np.mean([s["mean_ap"] for s in scores]))


def _predict_all(model: SegModel, images: Sequence[np.ndarray]) -> tuple[list[np.ndarray], float]:
    t0 = time.perf_counter()
    out = [predict(model, img).labels for img in images]
    return out, time.perf_counter() - t0


def _fine_tune(examples, init: SegModel | None, like: SegModel, cfg: TrainConfig, cancel):
    kwargs: dict[str, Any] = {"arch": like.meta.arch, "task": like.meta.task, "config": cfg, "cancel": cancel}
    if init is not None:
        kwargs["init"] = init
    else:
        kwargs["arch_kwargs"] = {k: v for k, v in like.meta.arch_kwargs.items() if k != "out_channels"}
        kwargs["normalization"] = like.meta.normalization
    gen = iter_train(examples, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def iter_hitl(
    model: SegModel,
    train_image: np.ndarray,
    train_labels: np.ndarray,
    heldout: Sequence[tuple[np.ndarray, np.ndarray]],
    config: HitlConfig | None = None,
    *,
    baselines: dict[str, Baseline] | None = None,
    cancel: CancelToken | None = None,
) -> Generator[HitlRound, None, list[HitlRound]]:
    """Run the simulated correct → fine-tune → re-predict loop; yields a :class:`HitlRound` per round.

    Parameters
    ----------
    model : the starting (default) model; never modified.
    train_image, train_labels : the image the annotator corrects, with its ground truth.
    heldout : ``(image, ground truth)`` pairs scored every round (never trained on).
    config : :class:`HitlConfig`.
    baselines : name → ``fit(image, labels, annotated) -> predict(image) -> labels``,
        trained each round on the same labels and annotated pixels as the model.
    cancel : stops the loop between rounds (and training within a round).
    """
    cfg = config or HitlConfig()
    baselines = dict(baselines or {})
    train_image = np.asarray(train_image)
    heldout = [(np.asarray(img), np.asarray(gt)) for img, gt in heldout]
    if not heldout:
        raise ValueError("need at least one held-out (image, labels) pair to score")
    held_images = [img for img, _ in heldout]
    annotator = SimulatedAnnotator(train_labels, margin=cfg.margin)
    norm = model.meta.normalization

    # round 0: the starting model, no corrections
    t0 = time.perf_counter()
    pred_train = predict(model, train_image).labels
    preds, _ = _predict_all(model, held_images)
    predict_seconds = time.perf_counter() - t0
    annotator.update(pred_train)
    ap50, mean_ap = _score(preds, heldout)
    results = {"finetune": MethodResult(ap50, mean_ap, 0.0, predict_seconds)}
    history: list[HitlRound] = []
    record = HitlRound(0, 0, 0, 0, 0, 0, [], results, model, annotator.labels.copy())
    history.append(record)
    yield record

    current: SegModel = model
    scratch_model: SegModel | None = None
    for rnd in range(1, cfg.rounds + 1):
        if cancel is not None and cancel.cancelled:
            break
        done = annotator.correct(cfg.k)
        if not done:
            break
        labels, annotated = annotator.labels.copy(), annotator.annotated.copy()
        train_cfg = replace(cfg.train, time_budget=cfg.time_budget, seed=cfg.seed + rnd)
        results = {}
        try:
            examples = [make_example(train_image, labels, annotated, normalization=norm, name=f"hitl-{rnd}")]
        except DataError as exc:  # e.g. only deletions so far: nothing to learn objects from yet
            examples, note = [], str(exc)
        # -- fine-tune (the method under test); its prediction drives the annotator
        if examples:
            res = _fine_tune(examples, current if cfg.warm_start else model, model, train_cfg, cancel)
            current, train_seconds, steps, note = res.model, res.seconds, res.steps, res.stop_reason
        else:
            train_seconds, steps = 0.0, 0
        t0 = time.perf_counter()
        pred_train = predict(current, train_image).labels
        preds, _ = _predict_all(current, held_images)
        predict_seconds = time.perf_counter() - t0
        ap50, mean_ap = _score(preds, heldout)
        results["finetune"] = MethodResult(ap50, mean_ap, train_seconds, predict_seconds, steps, note)
        # -- from scratch, same annotations and budget
        if cfg.scratch:
            if examples:
                init = scratch_model if (cfg.warm_start and scratch_model is not None) else None
                res = _fine_tune(examples, init, model, train_cfg, cancel)
                scratch_model = res.model
                s_train, s_steps, s_note = res.seconds, res.steps, res.stop_reason
            else:
                s_train, s_steps, s_note = 0.0, 0, note
            if scratch_model is not None:
                s_preds, s_pred_seconds = _predict_all(scratch_model, held_images)
                s_ap50, s_map = _score(s_preds, heldout)
            else:
                s_pred_seconds, s_ap50, s_map = 0.0, 0.0, 0.0
            results["scratch"] = MethodResult(s_ap50, s_map, s_train, s_pred_seconds, s_steps, s_note)
        # -- other baselines on the very same labels and annotated pixels
        for name, fit in baselines.items():
            t0 = time.perf_counter()
            predictor = fit(train_image, labels, annotated)
            b_train = time.perf_counter() - t0
            b_preds, b_pred_seconds = _predict_all_fn(predictor, held_images)
            b_ap50, b_map = _score(b_preds, heldout)
            results[name] = MethodResult(b_ap50, b_map, b_train, b_pred_seconds)
        annotator.update(pred_train)
        counts = annotator.counts()
        record = HitlRound(rnd, annotator.n_corrected, counts["added"], counts["fixed"], counts["deleted"],
                           int(annotated.sum()), done, results, current, labels)
        history.append(record)
        yield record
    return history


def _predict_all_fn(fn: Callable[[np.ndarray], np.ndarray], images: Sequence[np.ndarray]):
    t0 = time.perf_counter()
    out = [np.asarray(fn(img)) for img in images]
    return out, time.perf_counter() - t0


def run_hitl(*args: Any, callback: Callable[[HitlRound], None] | None = None, **kwargs: Any) -> list[HitlRound]:
    """Synchronous :func:`iter_hitl`; ``callback`` receives each round."""
    history = []
    for record in iter_hitl(*args, **kwargs):
        history.append(record)
        if callback is not None:
            callback(record)
    return history
