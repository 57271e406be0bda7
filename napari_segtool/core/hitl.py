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
    "PlaneEdits",
    "Action",
    "EffortAnnotator",
    "PromptAnnotator",
    "RepaintAnnotator",
    "EffortRound",
    "ActionCosts",
    "iter_effort",
    "predict_maps",
    "RankingPrecision",
    "ranking_precision",
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
    #: the image's object size is estimated by round 0's prediction and given to every later one, as the
    #: Segment widget's Object size (remembered per image) gives it: a round re-predicts without re-estimating
    keep_size: bool = True


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


def _predict_all(model: SegModel, images: Sequence[np.ndarray],
                 diameter: float | None = None) -> tuple[list[np.ndarray], float]:
    t0 = time.perf_counter()
    out = [predict(model, img, diameter=diameter).labels for img in images]
    return out, time.perf_counter() - t0


def few_object_init(model: SegModel, *, freeze: Sequence[str] = ()) -> SegModel:
    """A copy of ``model`` whose top-level modules named in ``freeze`` keep their weights while fine-tuning.

    E.g. ``("down", "bottom")``: a U-Net's encoder; names the network does not have are
    ignored. The state dict keeps its keys, so the result saves and loads as any model.
    (Batch-norm statistics are kept by ``TrainConfig.fine_tune.freeze_norm`` in every
    fine-tuning: :mod:`napari_segtool.core.finetune`.)
    """
    import copy

    from torch import nn

    net = copy.deepcopy(model.net)
    for name in freeze:
        part = getattr(net, name, None)
        if isinstance(part, nn.Module):
            for param in part.parameters():
                param.requires_grad_(False)
    return SegModel(net, model.meta)


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
    first = predict(model, train_image)
    pred_train, diameter = first.labels, (first.diameter if cfg.keep_size else None)
    preds, _ = _predict_all(model, held_images, diameter)
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
        pred_train = predict(current, train_image, diameter=diameter).labels
        preds, _ = _predict_all(current, held_images, diameter)
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
                s_preds, s_pred_seconds = _predict_all(scratch_model, held_images, diameter)
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


# ============================================================== effort: actions, as the GUI counts them
#
# The annotators below work the way a user of the Correct widget does and run the very functions the
# widget runs: the prompt tools and the ranking of :mod:`napari_segtool.core.prompts`, the edits of
# :mod:`napari_segtool.core.edits`, the merge of re-predictions with edits
# (:func:`~napari_segtool.core.edits.merge_prediction`) and the rule that turns edits into training data
# (:func:`~napari_segtool.core.edits.edited_pixels`). Each user action (a click, a box, a stroke, a key
# press that edits) is counted; looking at an object that needs nothing is a "view", counted apart.

from napari_segtool.core.edits import TRAINING_RING_PX, delete_object, edited_pixels, training_mask  # noqa: E402
from napari_segtool.core import prompts as _prompts  # noqa: E402
from napari_segtool.core import train_project as _train_project  # noqa: E402
from napari_segtool.kernel.events import run_job  # noqa: E402

#: a result the simulated user accepts without more work
ACCEPT_IOU = 0.7


@dataclass(frozen=True)
class ActionCosts:
    """User actions each tool costs, as the Correct widget and napari's labels layer are operated.

    The justification of every figure is the table in ``benchmarks/hitl.py`` (the one
    documented place); in short: a key press with the cursor on the spot is one action,
    a box is two (B at each corner), a split two (K at each point), a scribble one click per
    point of its path; repainting takes a fresh label (M), one brush stroke per brush width
    of the object's diameter, and one eraser stroke per brush width of thickness of each
    wrong part left outside it. Navigation (the correct-next key N, panning to the next
    object) and switching tools are counted for neither annotator (``views`` apart).
    """

    add: int = 1            # A on the missed object
    box: int = 2            # B at one corner, B at the opposite one
    grow: int = 1           # Shift-G where the object should reach
    shrink: int = 1         # Shift-S on the part that must go
    scribble_point: int = 1  # per point of the path through the merged objects (double-click ends it)
    delete: int = 1         # Del on the object
    undo: int = 1           # Ctrl-Z
    review: int = 1         # R: the plane is reviewed
    new_label: int = 1      # M: a fresh label id before painting an object
    brush_px: int = 10      # napari's default brush size: one stroke paints (or erases) a band this wide


COSTS = ActionCosts()


def _strokes(mask: np.ndarray, brush_px: int) -> int:
    """Brush strokes to cover ``mask``: parts closer than a brush width are swept by one stroke; per such
    group, one stroke per brush width of its thickness (twice its largest distance to its edge)."""
    if not mask.any():
        return 0
    groups, n = ndi.label(ndi.binary_dilation(mask, iterations=max(1, brush_px // 2)))
    radius = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    thickness = 2 * np.asarray(ndi.maximum(radius, groups, index=np.arange(1, n + 1)))
    return int(np.sum(np.maximum(1, np.ceil(thickness / brush_px))))


class PlaneEdits:
    """The Correct widget's bookkeeping of one 2D plane, headless.

    ``labels`` the current labels, ``base`` what was predicted before the user touched
    it, ``marks`` regions marked reviewed, ``edited`` the training pixels, derived as the
    widget's tracker derives them (:func:`edited_pixels`). :meth:`update` merges a new
    prediction as the widget does (:func:`merge_prediction`).
    """

    def __init__(self, labels: np.ndarray):
        self.labels = np.asarray(labels).astype(np.int32).copy()
        self.base = self.labels.copy()
        self.marks = np.zeros(self.labels.shape, bool)
        self.edited = np.zeros(self.labels.shape, bool)

    def next_label(self) -> int:
        return int(self.labels.max()) + 1

    def apply(self, edit: Any) -> None:
        """Write an edit: a whole new plane, or a :class:`~napari_segtool.core.prompts.LocalEdit`."""
        if isinstance(edit, _prompts.LocalEdit):
            edit.apply(self.labels)
        else:
            self.labels = np.asarray(edit).astype(np.int32)
        self.edited = edited_pixels(self.base, self.labels, self.marks)

    def mark(self, mask: np.ndarray) -> None:
        """Mark pixels reviewed (the tracker's ``marks``): they are training data as they are now."""
        self.marks |= np.asarray(mask, bool)
        self.edited = edited_pixels(self.base, self.labels, self.marks)

    def update(self, pred: np.ndarray) -> np.ndarray:
        """A new prediction of the plane: edited pixels are kept (the widget's ``apply_prediction``)."""
        pred = shift_ids(pred, int(self.labels.max()))
        merged = merge_prediction(self.labels, pred, self.edited, instance=True)
        self.base = np.where(self.edited, self.base, merged)
        self.labels = merged.astype(np.int32)
        return self.labels


@dataclass
class Action:
    """One correction: ``tool`` used, ``cost`` in user actions."""

    tool: str
    cost: int
    gt_id: int = 0
    pred_id: int = 0


def _iou_with(labels: np.ndarray, gt_obj: np.ndarray) -> tuple[int, float]:
    ids, counts = np.unique(labels[gt_obj], return_counts=True)
    best, best_iou = 0, 0.0
    for i, n in zip(ids.tolist(), counts.tolist()):
        if i == 0:
            continue
        iou = n / float((labels == i).sum() + gt_obj.sum() - n)
        if iou > best_iou:
            best, best_iou = i, iou
    return best, best_iou


def _centre(mask: np.ndarray) -> tuple[int, int]:
    d = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(d)), d.shape)
    return int(y), int(x)


class EffortAnnotator:
    """Base of the effort annotators: corrects ``plane`` against ground truth ``gt``, counting actions.

    With ``review``, once its own way of working finds nothing left to correct, the annotator
    marks the plane reviewed (R in the Correct widget, one action): all of it becomes
    training data, objects and background, as the project's training mask makes it.
    """

    name = "annotator"

    def __init__(self, gt: np.ndarray, labels: np.ndarray, seed: int = 0, accept_iou: float = ACCEPT_IOU,
                 review: bool = False, costs: ActionCosts = COSTS):
        self.gt = np.asarray(gt).astype(np.int32)
        self.costs = costs
        self.accept_iou = float(accept_iou)
        self.review = bool(review)
        self.reviewed = False
        self.plane = PlaneEdits(labels)
        self.rng = np.random.default_rng(seed)
        self.actions: list[Action] = []
        self.views = 0
        self.fixed = 0          # errors its actions fixed (:meth:`errors_left` before - after each :meth:`work`)
        self._done_gt: set[int] = set()

    @property
    def cost(self) -> int:
        return sum(a.cost for a in self.actions)

    def update(self, pred: np.ndarray, maps: Any = None) -> None:
        self.plane.update(pred)
        self.maps = maps

    def work(self, budget: int) -> list[Action]:
        """Correct until ``budget`` more actions are spent (or nothing is left to correct)."""
        start, done = self.cost, len(self.actions)
        before = self.errors_left()
        while self.cost - start < budget:
            if not self.step():
                if self.review and not self.reviewed:
                    self.mark_reviewed()
                break
        self.fixed += before - self.errors_left()
        return self.actions[done:]

    def errors_left(self) -> int:
        """Errors of the labels against the truth: truth objects no object matches at ``accept_iou`` plus
        objects mostly on true background. What the actions of a :meth:`work` remove from it is the
        objects they fixed (a merge of two split well counts 2, a deleted false positive 1); a new
        prediction between rounds changes it too, which counts for neither annotator."""
        labels = self.plane.labels
        ious, _, pred_ids = iou_matrix(labels, self.gt)
        missed = int((ious.max(axis=1) < self.accept_iou).sum()) if ious.shape[1] else int(len(np.unique(self.gt)) - 1)
        if not len(pred_ids):
            return missed
        n = int(labels.max()) + 1
        on_truth = np.bincount(labels.ravel(), (self.gt > 0).ravel().astype(float), minlength=n)
        area = np.bincount(labels.ravel(), minlength=n)
        return missed + int(np.sum(on_truth[pred_ids] < 0.5 * area[pred_ids]))

    def mark_reviewed(self) -> None:
        """R: the whole plane as it is now is what the user asserts (the tracker's reviewed plane)."""
        self.plane.mark(np.ones(self.plane.labels.shape, bool))
        self.actions.append(Action("review", self.costs.review))
        self.reviewed = True

    def step(self) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- what both annotators do when a tool is not enough: repaint the object by hand
    def repaint(self, g: int) -> None:
        """Paint true object ``g`` with a fresh label and erase what the objects under it spill onto background.

        Costs (:class:`ActionCosts`): M, then one stroke per brush width of the object's
        diameter (parallel strokes fill a disc), then per wrong part left outside it on true
        background one eraser stroke per brush width of its thickness."""
        obj = self.gt == g
        labels = self.plane.labels
        # the objects under it that are its own (of the true objects they cover, this one holds most of them):
        # what they spill onto background is this object's error; a neighbour that only touches it is left
        on_truth = np.bincount(labels[self.gt > 0].ravel(), minlength=int(labels.max()) + 1)
        ids, inside = np.unique(labels[obj], return_counts=True)
        own = [int(i) for i, n in zip(ids.tolist(), inside.tolist()) if i and n >= 0.5 * on_truth[i]]
        spill = np.isin(labels, own) & ~obj & (self.gt == 0) if own else np.zeros_like(obj)
        plane = labels.copy()
        plane[spill] = 0
        new = int(labels.max()) + 1
        plane[obj] = new
        diameter = 2 * np.sqrt(obj.sum() / np.pi)
        self.plane.apply(plane)
        self.actions.append(Action("new_label", self.costs.new_label, g, new))
        self.actions.append(Action("paint", int(np.ceil(diameter / self.costs.brush_px)), g, new))
        erase = _strokes(spill, self.costs.brush_px)
        if erase:
            self.actions.append(Action("erase", erase, g, new))
        self._done_gt.add(g)

    def delete(self, label: int) -> None:
        self.plane.apply(delete_object(self.plane.labels, label))
        self.actions.append(Action("delete", self.costs.delete, 0, label))

    def fix_gt(self, g: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fp(self, label: int) -> bool:
        """A predicted object mostly on true background (or on objects already fixed)."""
        mask = self.plane.labels == label
        return (self.gt[mask] > 0).mean() < 0.5 if mask.any() else False


class RepaintAnnotator(EffortAnnotator):
    """Looks at objects in random order; repaints each wrong one by hand and deletes false positives."""

    name = "repaint+random"

    def __init__(self, gt: np.ndarray, labels: np.ndarray, seed: int = 0, accept_iou: float = ACCEPT_IOU,
                 review: bool = False, costs: ActionCosts = COSTS):
        super().__init__(gt, labels, seed, accept_iou, review, costs)
        self._order: list[tuple[str, int]] = []

    def update(self, pred: np.ndarray, maps: Any = None) -> None:
        super().update(pred, maps)
        items = [("gt", int(g)) for g in np.unique(self.gt[self.gt > 0]) if int(g) not in self._done_gt]
        items += [("pred", int(p)) for p in np.unique(self.plane.labels[self.plane.labels > 0])
                  if not self.plane.edited[self.plane.labels == p].any()]
        order = self.rng.permutation(len(items))
        self._order = [items[i] for i in order]

    def step(self) -> bool:
        while self._order:
            kind, i = self._order.pop()
            self.views += 1
            if kind == "pred":
                if (self.plane.labels == i).any() and self._fp(i):
                    self.delete(i)
                    return True
                continue
            _, iou = _iou_with(self.plane.labels, self.gt == i)
            if iou >= self.accept_iou:
                continue
            self.repaint(i)
            return True
        return False


class PromptAnnotator(EffortAnnotator):
    """Follows "correct next" (:func:`~napari_segtool.core.prompts.rank_uncertain`) and fixes with prompts.

    Missed object: a click (add); merged objects: a stroke through their centres
    (scribble); badly outlined or fragmented: a box (then a Del per fragment left);
    false positive: Del. A result under :data:`ACCEPT_IOU` is tried with a box; a box
    result that is close (IoU >= 0.5) gets up to two grow/shrink clicks on its largest
    error (a click that makes it worse is undone, Ctrl-Z counted); what is still wrong is
    repainted. Where the ranking has nothing left, the annotator stops: it never looks
    at objects the model is sure of.

    An object the ranking showed that is right (IoU >= ``accept_iou``) is left as it is and
    the user presses Shift-N: the Correct widget then marks it reviewed
    (:func:`~napari_segtool.core.prompts.accepted_pixels`), so it is training data at no
    action, and so it is here (``accept_shown=False``: only edits are, as before).
    """

    name = "prompts+ranking"

    def __init__(self, *args: Any, accept_shown: bool = True, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.accept_shown = bool(accept_shown)

    def update(self, pred: np.ndarray, maps: Any = None) -> None:
        super().update(pred, maps)
        self.looked = np.zeros(self.gt.shape, bool)

    def step(self) -> bool:
        if self.maps is None:
            return False
        while True:
            queue = _prompts.rank_uncertain(self.plane.labels, self.maps, top=5,
                                            exclude=self.plane.edited | self.looked)
            if not queue:
                return False
            item = queue[0]
            self.views += 1
            if self._handle(item):
                return True

    def _handle(self, item: Any) -> bool:
        labels = self.plane.labels
        if item.kind == "missed":
            region = (labels == 0) & (self.maps.window((slice(0, labels.shape[0]), slice(0, labels.shape[1])))
                                      .foreground >= 0.3)
            parts, _ = ndi.label(region)
            here = parts == parts[item.yx]
            self.looked |= here
            todo = [int(g) for g in np.unique(self.gt[here]) if g and g not in self._done_gt
                    and _iou_with(labels, self.gt == g)[1] < self.accept_iou
                    and (self.gt == g)[here].sum() >= 0.3 * (self.gt == g).sum()]
            for g in todo:
                self._add(g)
            return bool(todo)
        p = item.label
        mask = labels == p
        self.looked |= mask
        if self._fp(p):
            self.delete(p)
            return True
        gts, counts = np.unique(self.gt[mask], return_counts=True)
        covered = [int(g) for g, n in zip(gts.tolist(), counts.tolist())
                   if g and n >= 0.5 * (self.gt == g).sum() and g not in self._done_gt]
        if len(covered) >= 2:
            self._scribble(p, covered)
            return True
        main = int(gts[np.argmax(np.where(gts > 0, counts, -1))])
        if main == 0 or main in self._done_gt:
            return False
        best, iou = _iou_with(labels, self.gt == main)
        if iou >= self.accept_iou:
            if best == p and self.accept_shown:  # right: Shift-N, and the widget records it as reviewed
                self.plane.mark(_prompts.accepted_pixels(labels, item))
            return False
        self._box(main)
        return True

    # -- the tools
    def _accept_or_fallback(self, g: int, tried_box: bool) -> None:
        label, iou = _iou_with(self.plane.labels, self.gt == g)
        if self.accept_iou > iou >= 0.5 and tried_box and label:  # close: a click or two; far off: repaint
            label, iou = self._refine(g, label, iou)
        if iou >= self.accept_iou:
            self._cleanup_fragments(g, label)
            self._done_gt.add(g)
        elif not tried_box:
            self._box(g)
        else:
            self.repaint(g)

    def _refine(self, g: int, label: int, iou: float, clicks: int = 2) -> tuple[int, float]:
        """Up to ``clicks`` positive/negative clicks on the largest error (grow where the object misses
        truth, shrink where it covers background); each click counts, a click that makes it worse is undone."""
        obj_gt = self.gt == g
        for _ in range(clicks):
            obj = self.plane.labels == label
            missing, extra = obj_gt & ~obj & (self.plane.labels == 0), obj & ~obj_gt
            parts_m, nm = ndi.label(missing)
            parts_e, ne = ndi.label(extra)
            size_m = np.bincount(parts_m.ravel())[1:].max() if nm else 0
            size_e = np.bincount(parts_e.ravel())[1:].max() if ne else 0
            if max(size_m, size_e) < 3:
                break
            before = self.plane.labels.copy()
            try:
                if size_m >= size_e:
                    c = _centre(parts_m == (np.argmax(np.bincount(parts_m.ravel())[1:]) + 1))
                    edit = _prompts.grow_object(self.plane.labels, self.maps, c, label)
                    tool = "grow"
                else:
                    c = _centre(parts_e == (np.argmax(np.bincount(parts_e.ravel())[1:]) + 1))
                    edit = _prompts.shrink_object(self.plane.labels, self.maps, c)
                    tool = "shrink"
            except _prompts.PromptError:
                break
            self.plane.apply(edit)
            self.actions.append(Action(tool, getattr(self.costs, tool), g, label))
            new_label, new_iou = _iou_with(self.plane.labels, obj_gt)
            if new_iou <= iou:  # worse: Ctrl-Z (counted) and stop trying
                self.plane.apply(before)
                self.actions.append(Action("undo", self.costs.undo, g, label))
                break
            label, iou = new_label, new_iou
            if iou >= self.accept_iou:
                break
        return label, iou

    def _cleanup_fragments(self, g: int, keep: int) -> None:
        obj = self.gt == g
        labels = self.plane.labels
        for i, n in zip(*np.unique(labels[obj], return_counts=True)):
            if i and i != keep and n >= 0.5 * (labels == i).sum():
                self.delete(int(i))

    def _prompt(self, g: int, tool: str, make: Callable[[], Any], fallback: Callable[[int], None]) -> None:
        """One prompt for truth object ``g`` (an action), then accept or refine; ``fallback`` when it cannot apply."""
        try:
            self.plane.apply(make())
        except _prompts.PromptError:
            fallback(g)
            return
        self.actions.append(Action(tool, getattr(self.costs, tool), g))
        self._accept_or_fallback(g, tried_box=tool == "box")

    def _add(self, g: int) -> None:
        c = _centre(self.gt == g)

        def click() -> Any:
            if self.plane.labels[c] != 0:
                raise _prompts.PromptError("occupied")
            return _prompts.add_object(self.plane.labels, self.maps, c, self.plane.next_label())

        self._prompt(g, "add", click, self._box)

    def _box(self, g: int) -> None:
        ys, xs = np.nonzero(self.gt == g)
        h, w = self.gt.shape
        box = (max(0, ys.min() - 2), max(0, xs.min() - 2), min(h - 1, ys.max() + 2), min(w - 1, xs.max() + 2))
        self._prompt(g, "box", lambda: _prompts.redraw_in_box(self.plane.labels, self.maps, box,
                                                                self.plane.next_label()), self.repaint)

    def _scribble(self, p: int, gts: list[int]) -> None:
        centres = [_centre(self.gt == g) for g in gts]
        order = [0]  # a stroke from one centre to the nearest next, and so on
        while len(order) < len(centres):
            last = centres[order[-1]]
            rest = [i for i in range(len(centres)) if i not in order]
            order.append(min(rest, key=lambda i: np.hypot(centres[i][0] - last[0], centres[i][1] - last[1])))
        stroke = [centres[i] for i in order]
        try:
            self.plane.apply(_prompts.split_by_scribble(self.plane.labels, self.maps, stroke,
                                                        self.plane.next_label()))
            self.actions.append(Action("scribble", self.costs.scribble_point * len(stroke), gts[0], p))
        except _prompts.PromptError:
            for g in gts:
                self.repaint(g)
            return
        for g in gts:
            self._accept_or_fallback(g, tried_box=False)


@dataclass
class RankingPrecision:
    """How many of correct next's first ``k`` items are true errors (:func:`ranking_precision`)."""

    objects: int
    true_errors: int                 # among every ranked item
    precision_at: dict[int, float]
    errors_in_top: dict[int, int]


def ranking_precision(labels: np.ndarray, maps: Any, gt: np.ndarray, accept_iou: float = ACCEPT_IOU,
                      ks: Sequence[int] = (5, 10, 15, 20)) -> RankingPrecision:
    """Precision at k of "correct next" (:func:`~napari_segtool.core.prompts.rank_uncertain`, the widget's
    list) against ground truth ``gt``: an item is a true error when the simulated user would act on it, an
    object mostly on background, covering most of two or more truth objects, or under ``accept_iou`` with the
    truth object it covers most; a missed region holding 30 % or more of a truth object nothing matches."""
    ious, gt_ids, pred_ids = iou_matrix(labels, gt)
    gt_row = {g: i for i, g in enumerate(gt_ids.tolist())}
    pred_col = {p: j for j, p in enumerate(pred_ids.tolist())}
    gt_area = np.bincount(gt.ravel())

    def wrong(label: int) -> bool:
        ids, n = np.unique(gt[labels == label], return_counts=True)
        whole = [g for g, c in zip(ids.tolist(), n.tolist()) if g and c >= 0.5 * gt_area[g]]
        if n[ids > 0].sum() < 0.5 * n.sum() or len(whole) >= 2:
            return True
        main = int(ids[np.argmax(np.where(ids > 0, n, -1))])
        return float(ious[gt_row[main], pred_col[label]]) < accept_iou

    regions = ndi.label((labels == 0) & (maps.foreground >= 0.3), ndi.generate_binary_structure(2, 1))[0]
    matched = ious.max(axis=1) if ious.size else np.zeros(len(gt_ids))

    def missed(yx: tuple[int, int]) -> bool:
        ids, n = np.unique(gt[regions == regions[yx]], return_counts=True)
        return any(g and matched[gt_row[g]] < accept_iou and c >= 0.3 * gt_area[g]
                   for g, c in zip(ids.tolist(), n.tolist()))

    hits = [wrong(u.label) if u.kind == "object" else missed(u.yx)
            for u in _prompts.rank_uncertain(labels, maps, top=None)]
    return RankingPrecision(int(len(pred_ids)), int(sum(hits)),
                            {k: round(float(np.mean(hits[:k])), 3) for k in ks if hits},
                            {k: int(sum(hits[:k])) for k in ks})


@dataclass
class EffortRound:
    """One round of :func:`iter_effort`: actions so far, the held-out score after training on them."""

    annotator: str
    round: int
    actions: int          # cumulative user actions
    views: int            # cumulative objects looked at that needed nothing (or navigation)
    tools: dict[str, int]  # cumulative actions per tool
    ap50: float
    mean_ap: float
    train_seconds: float = 0.0
    predict_seconds: float = 0.0
    annotated_pixels: int = 0
    objects_fixed: int = 0  # cumulative errors the actions fixed (:meth:`EffortAnnotator.errors_left`)

    @property
    def fixed_per_action(self) -> float:
        return self.objects_fixed / self.actions if self.actions else 0.0


def predict_maps(model: SegModel, image: np.ndarray) -> tuple[np.ndarray, Any]:
    """Labels of ``image`` and the model's maps for the prompt tools (``None`` when it has none), as Segment keeps them."""
    pred = predict(model, image, return_probabilities=True)
    maps = None
    if pred.probabilities is not None:
        try:
            maps = _prompts.PromptMaps.from_probabilities(pred.probabilities,
                                                          model.architecture.probability_layout(model.meta))
        except ValueError:
            maps = None
    return pred.labels, maps


def iter_effort(
    model: SegModel,
    train_image: np.ndarray,
    train_labels: np.ndarray,
    heldout: Sequence[tuple[np.ndarray, np.ndarray]],
    annotator: Literal["prompts", "repaint"] = "prompts",
    *,
    actions_per_round: int = 5,
    rounds: int = 10,
    target_ap50: float | None = 0.9,
    train: TrainConfig | None = None,
    time_budget: float | None = 20.0,
    seed: int = 0,
    accept_iou: float = ACCEPT_IOU,
    training_margin: int = TRAINING_RING_PX,
    freeze: Sequence[str] = (),
    review: bool = False,
    costs: ActionCosts = COSTS,
    warm_start: bool = True,
    accept_shown: bool = True,
    cancel: CancelToken | None = None,
) -> Generator[EffortRound, None, list[EffortRound]]:
    """Correct → fine-tune → re-predict, counting user actions; yields an :class:`EffortRound` per round.

    ``annotator`` is ``"prompts"`` (:class:`PromptAnnotator`: prompt tools + correct next)
    or ``"repaint"`` (:class:`RepaintAnnotator`: repaint by hand, random order). Each
    round spends ``actions_per_round`` actions, fine-tunes the current model (warm start)
    on the training pixels the widget would record, re-predicts the image (its maps
    too) and merges the prediction with the edits as the widget does, and scores the
    held-out pairs. Stops once AP@0.5 reaches ``target_ap50`` or after ``rounds``.
    ``accept_iou``: the IoU with the truth at which the simulated user takes a result as it is.
    ``training_margin``: background ring added around edited objects for training
    (:func:`~napari_segtool.core.edits.training_mask`, what the project trains on:
    :data:`~napari_segtool.core.edits.TRAINING_RING_PX`); 0 trains on the edited pixels only.
    Fine-tuning runs the Train widget's own function
    (:func:`~napari_segtool.core.train_project.iter_fit`, with ``train.fine_tune``);
    ``freeze``: from :func:`few_object_init`. ``costs``: :class:`ActionCosts`. ``review``: the
    annotator marks the plane reviewed (one action) once it finds nothing left to correct;
    later rounds then train again on the reviewed plane without new actions (Train pressed
    again: the seconds count, the actions do not grow). ``warm_start=False``: every round
    fine-tunes ``model`` itself on all corrections so far (the Train widget with the starting
    model chosen again) instead of the previous round's model. ``accept_shown``: objects the
    prompt user was shown by correct next and left as they are are training data, as the
    widget records them (:class:`PromptAnnotator`); ``False`` measures without.
    """
    cfg = replace(train or HitlConfig().train, time_budget=time_budget)
    heldout = [(np.asarray(img), np.asarray(gt)) for img, gt in heldout]
    held_images = [img for img, _ in heldout]
    norm = model.meta.normalization
    t0 = time.perf_counter()
    labels, maps = predict_maps(model, train_image)
    preds, _ = _predict_all(model, held_images)
    predict_seconds = time.perf_counter() - t0
    extra: dict[str, Any] = {"accept_shown": accept_shown} if annotator == "prompts" else {}
    cls = PromptAnnotator if annotator == "prompts" else RepaintAnnotator
    ann = cls(train_labels, np.zeros_like(np.asarray(train_labels), np.int32), seed=seed, accept_iou=accept_iou,
              review=review, costs=costs, **extra)
    ann.update(labels, maps)
    ap50, mean_ap = _score(preds, heldout)
    history = [EffortRound(ann.name, 0, 0, 0, {}, ap50, mean_ap, 0.0, predict_seconds, 0)]
    yield history[-1]
    current = model
    for rnd in range(1, rounds + 1):
        if (target_ap50 is not None and ap50 >= target_ap50) or (cancel is not None and cancel.cancelled):
            break
        done = ann.work(actions_per_round)
        if not done and not ann.reviewed:  # nothing left to do and nothing to train on again
            break
        train_seconds = 0.0
        try:
            annotated = training_mask(ann.plane.labels, ann.plane.edited, training_margin)
            example = make_example(train_image, ann.plane.labels, annotated, normalization=norm,
                                   name=f"effort-{rnd}")
            start = current if warm_start else model
            init = few_object_init(start, freeze=freeze) if freeze else start
            res = run_job(_train_project.iter_fit([example], init, replace(cfg, seed=seed + rnd), cancel))
            current, train_seconds = res.model, res.seconds
        except DataError:
            pass
        t0 = time.perf_counter()
        labels, maps = predict_maps(current, train_image)
        preds, _ = _predict_all(current, held_images)
        predict_seconds = time.perf_counter() - t0
        ann.update(labels, maps)
        ap50, mean_ap = _score(preds, heldout)
        tools: dict[str, int] = {}
        for a in ann.actions:
            tools[a.tool] = tools.get(a.tool, 0) + a.cost
        history.append(EffortRound(ann.name, rnd, ann.cost, ann.views, tools, ap50, mean_ap, train_seconds,
                                   predict_seconds, int(ann.plane.edited.sum()), ann.fixed))
        yield history[-1]
    return history
