"""Segmentation quality scores: semantic (per-class IoU/Dice) and instance (matching AP).

Pure NumPy/SciPy; every function works on 2-D images and 3-D volumes alike
(any shape, as long as prediction and ground truth have the same one).

Conventions
-----------
* **Semantic maps** hold class ids.  With the default ``ignore_index=0`` a
  map uses classes ``1..K`` and ``0`` means *unlabeled*: pixels whose ground
  truth is 0 are left out of every score, and class 0 itself is not scored.
  Predicting 0 on a labeled pixel still counts as a miss for that pixel's
  class.  Pass ``ignore_index=None`` to score every pixel and every class,
  background included.
* **Instance maps** hold object ids; 0 is background and ids need not be
  consecutive.  A predicted object matches a ground-truth object when their
  IoU reaches a threshold; matching is one-to-one and *optimal* (maximum number
  of matches, then maximum total IoU), as in StarDist's ``matching``.
* ``ap`` at a threshold is ``TP / (TP + FP + FN)``: the "average precision"
  of the Data Science Bowl 2018 and StarDist (sometimes called accuracy).
* **Empty cases**: when there is nothing to find and nothing was found (both
  maps empty) every score is 1.0 -- the prediction is perfect.  When only one
  side is empty every ratio is 0.0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = [
    "DEFAULT_THRESHOLDS",
    "MatchResult",
    "semantic_scores",
    "iou_matrix",
    "match_instances",
    "instance_scores",
    "format_scores",
]

#: IoU thresholds 0.5, 0.55, ..., 0.95 (COCO / DSB2018 style).
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
#: Above this many (n_gt * n_pred) cells, pair counting switches from bincount to np.unique.
_DENSE_PAIR_LIMIT = 4_000_000


# --------------------------------------------------------------------------- helpers


def _check_pair(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray]:
    """Return both maps as NumPy arrays after checking that their shapes agree."""
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match ground truth shape {gt.shape}")
    return pred, gt


def _as_label_ints(a: np.ndarray, name: str) -> np.ndarray:
    """Check that ``a`` holds integer ids (bool and integral floats allowed); return ints."""
    if a.dtype == bool:
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        return a
    if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        return a.astype(np.int64)
    raise ValueError(f"{name} must hold integer labels, got dtype {a.dtype}")


def _ratio(num: float, den: float, empty: float) -> float:
    """``num / den`` or ``empty`` when the denominator is zero."""
    return float(num) / float(den) if den else float(empty)


# --------------------------------------------------------------------------- semantic


def semantic_scores(
    pred: Any,
    gt: Any,
    *,
    n_classes: int | None = None,
    ignore_index: int | None = 0,
) -> dict[str, Any]:
    """Per-class IoU and Dice, their means, and pixel accuracy of a class map.

    Parameters
    ----------
    pred, gt
        Class maps of the same shape (2-D or 3-D).
    n_classes
        If given, class ids must lie in ``0..n_classes-1`` and only these are
        scored; otherwise the classes are the ids present in either map.
    ignore_index
        Ground-truth value that marks unlabeled pixels (default 0): those
        pixels are excluded everywhere and the class is not scored.  ``None``
        scores all pixels.

    Returns
    -------
    dict with ``per_class`` (``{class: {"iou", "dice", "gt_pixels",
    "pred_pixels"}}``), ``miou``, ``mean_dice``, ``pixel_accuracy``,
    ``n_pixels`` (pixels scored) and ``classes``.  Classes absent from both
    maps (within the scored pixels) are skipped.  If no class is present at
    all the prediction is perfect: means and accuracy are 1.0.
    """
    pred, gt = _check_pair(pred, gt)
    pred = _as_label_ints(pred, "prediction").ravel()
    gt = _as_label_ints(gt, "ground truth").ravel()
    if ignore_index is not None:
        keep = gt != ignore_index
        pred, gt = pred[keep], gt[keep]

    if n_classes is not None:
        for name, arr in (("prediction", pred), ("ground truth", gt)):
            if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
                raise ValueError(f"{name} has class ids outside 0..{n_classes - 1}")
        ids = np.arange(n_classes)
        pred_idx, gt_idx = pred.astype(np.intp), gt.astype(np.intp)
    else:
        ids, inverse = np.unique(np.concatenate([gt, pred]), return_inverse=True)
        gt_idx, pred_idx = inverse[: gt.size], inverse[gt.size :]

    k = len(ids)
    confusion = np.bincount(gt_idx * k + pred_idx, minlength=k * k).reshape(k, k)
    inter = np.diag(confusion)
    gt_count = confusion.sum(axis=1)
    pred_count = confusion.sum(axis=0)

    per_class: dict[int, dict[str, float]] = {}
    for i, cls in enumerate(ids.tolist()):
        if ignore_index is not None and cls == ignore_index:
            continue
        union = gt_count[i] + pred_count[i] - inter[i]
        if union == 0:
            continue
        per_class[int(cls)] = {
            "iou": float(inter[i] / union),
            "dice": float(2 * inter[i] / (gt_count[i] + pred_count[i])),
            "gt_pixels": int(gt_count[i]),
            "pred_pixels": int(pred_count[i]),
        }

    n_pixels = int(gt.size)
    return {
        "per_class": per_class,
        "classes": sorted(per_class),
        "miou": float(np.mean([c["iou"] for c in per_class.values()])) if per_class else 1.0,
        "mean_dice": float(np.mean([c["dice"] for c in per_class.values()])) if per_class else 1.0,
        "pixel_accuracy": _ratio(inter.sum(), n_pixels, empty=1.0),
        "n_pixels": n_pixels,
    }


# --------------------------------------------------------------------------- instance


@dataclass
class MatchResult:
    """Outcome of matching predicted to ground-truth objects at one IoU threshold."""

    threshold: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    ap: float  #: TP / (TP + FP + FN), the DSB2018 / StarDist "average precision"
    mean_matched_iou: float = 0.0  #: mean IoU of the matched pairs (0 when none)
    n_pred: int = 0
    n_gt: int = 0

    @classmethod
    def from_counts(
        cls, threshold: float, tp: int, n_pred: int, n_gt: int, matched_iou_sum: float = 0.0
    ) -> "MatchResult":
        """Build a result from match counts, applying the empty-case conventions."""
        fp, fn = n_pred - tp, n_gt - tp
        empty = 1.0 if n_pred == 0 and n_gt == 0 else 0.0
        return cls(
            threshold=float(threshold),
            tp=int(tp),
            fp=int(fp),
            fn=int(fn),
            precision=_ratio(tp, n_pred, empty),
            recall=_ratio(tp, n_gt, empty),
            f1=_ratio(2 * tp, n_pred + n_gt, empty),
            ap=_ratio(tp, tp + fp + fn, empty),
            mean_matched_iou=_ratio(matched_iou_sum, tp, 0.0),
            n_pred=int(n_pred),
            n_gt=int(n_gt),
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain ``dict`` copy (JSON-friendly)."""
        return asdict(self)


@dataclass
class _Overlaps:
    """Sparse IoU table: one entry per (gt, pred) pair that share at least one pixel."""

    gt_ids: np.ndarray
    pred_ids: np.ndarray
    rows: np.ndarray  # index into gt_ids
    cols: np.ndarray  # index into pred_ids
    ious: np.ndarray


def _overlaps(pred: Any, gt: Any) -> _Overlaps:
    """Count pixel overlaps of every touching (gt, pred) object pair and their IoU.

    Cost is one ``np.unique`` per map plus one ``bincount`` (or ``np.unique``
    on the pair codes when the dense pair table would be large), so thousands
    of objects are cheap: only pairs that actually overlap are kept.
    """
    pred, gt = _check_pair(pred, gt)
    pred = _as_label_ints(pred, "prediction").ravel()
    gt = _as_label_ints(gt, "ground truth").ravel()
    gt_ids, gt_inv = np.unique(gt, return_inverse=True)
    pred_ids, pred_inv = np.unique(pred, return_inverse=True)
    # index 0 is background when the map contains 0; shift so objects start at 0
    gt_off = 1 if gt_ids.size and gt_ids[0] == 0 else 0
    pred_off = 1 if pred_ids.size and pred_ids[0] == 0 else 0
    gt_area = np.bincount(gt_inv, minlength=gt_ids.size)[gt_off:]
    pred_area = np.bincount(pred_inv, minlength=pred_ids.size)[pred_off:]
    gt_ids, pred_ids = gt_ids[gt_off:], pred_ids[pred_off:]

    both = (gt_inv >= gt_off) & (pred_inv >= pred_off)
    g = gt_inv[both].astype(np.int64) - gt_off
    p = pred_inv[both].astype(np.int64) - pred_off
    n_p = max(pred_ids.size, 1)
    codes = g * n_p + p
    if gt_ids.size * n_p <= _DENSE_PAIR_LIMIT:
        counts = np.bincount(codes, minlength=gt_ids.size * n_p)
        codes = np.flatnonzero(counts)
        inter = counts[codes]
    else:
        codes, inter = np.unique(codes, return_counts=True)
    rows, cols = codes // n_p, codes % n_p
    union = gt_area[rows] + pred_area[cols] - inter
    return _Overlaps(gt_ids, pred_ids, rows, cols, inter / union)


def iou_matrix(pred: Any, gt: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU of every ground-truth object with every predicted object.

    Returns ``(ious, gt_ids, pred_ids)`` where ``ious`` has shape
    ``(n_gt, n_pred)`` (row ``i`` is object ``gt_ids[i]``, column ``j`` is
    ``pred_ids[j]``) and the id arrays are sorted and exclude background 0.
    """
    ov = _overlaps(pred, gt)
    ious = np.zeros((ov.gt_ids.size, ov.pred_ids.size), dtype=np.float64)
    ious[ov.rows, ov.cols] = ov.ious
    return ious, ov.gt_ids, ov.pred_ids


def _match(ov: _Overlaps, threshold: float) -> MatchResult:
    """Optimal one-to-one matching among pairs with IoU >= ``threshold``.

    The candidate pairs form a sparse bipartite graph; each connected component
    is solved with :func:`scipy.optimize.linear_sum_assignment` on its own,
    maximising first the number of matches and then their total IoU.  For
    thresholds >= 0.5 every component is a single pair (an object can overlap
    at most one other by more than half), so this stays fast for large maps.
    """
    n_gt, n_pred = ov.gt_ids.size, ov.pred_ids.size
    ok = ov.ious >= threshold
    rows, cols, ious = ov.rows[ok], ov.cols[ok], ov.ious[ok]
    if rows.size == 0:
        return MatchResult.from_counts(threshold, 0, n_pred, n_gt)

    # components of the candidate graph: nodes 0..n_gt-1 are gt, n_gt.. are pred
    graph = coo_matrix((np.ones(rows.size), (rows, cols + n_gt)), shape=(n_gt + n_pred,) * 2)
    _, comp = connected_components(graph, directed=False)
    pair_comp = comp[rows]

    tp, iou_sum = 0, 0.0
    order = np.argsort(pair_comp, kind="stable")
    bounds = np.flatnonzero(np.diff(pair_comp[order])) + 1
    for sel in np.split(order, bounds):
        if sel.size == 1:  # the common case: an isolated pair
            tp, iou_sum = tp + 1, iou_sum + float(ious[sel[0]])
            continue
        r_ids, r = np.unique(rows[sel], return_inverse=True)
        c_ids, c = np.unique(cols[sel], return_inverse=True)
        score = np.zeros((r_ids.size, c_ids.size))
        score[r, c] = ious[sel]
        # 1 per match dominates any IoU sum (< 1 after scaling): count first, IoU second
        benefit = (score > 0) + score / (2 * min(r_ids.size, c_ids.size))
        ri, ci = linear_sum_assignment(benefit, maximize=True)
        good = score[ri, ci] > 0
        tp += int(good.sum())
        iou_sum += float(score[ri, ci][good].sum())
    return MatchResult.from_counts(threshold, tp, n_pred, n_gt, iou_sum)


def match_instances(pred: Any, gt: Any, threshold: float = 0.5) -> MatchResult:
    """Match predicted to ground-truth objects at one IoU ``threshold``.

    A pair may match when its IoU is >= ``threshold``; the assignment is
    one-to-one and optimal (most matches, then highest total IoU), unlike a
    greedy best-IoU-first pass.  Unmatched predictions are false positives,
    unmatched ground-truth objects false negatives.
    """
    return _match(_overlaps(pred, gt), float(threshold))


def instance_scores(
    pred: Any, gt: Any, thresholds: Sequence[float] = DEFAULT_THRESHOLDS
) -> dict[str, Any]:
    """Instance segmentation scores over several IoU thresholds.

    Returns a dict with ``ap50``, ``ap75`` (AP at IoU 0.5 / 0.75, computed even
    when not among ``thresholds``), ``mean_ap`` (mean AP over ``thresholds``,
    by default 0.5:0.05:0.95), ``precision50``, ``recall50``, ``f1_50``,
    ``mean_matched_iou50``, ``per_threshold`` (one :meth:`MatchResult.as_dict`
    per threshold), ``thresholds``, ``n_pred`` and ``n_gt``.
    """
    ov = _overlaps(pred, gt)
    thresholds = [float(t) for t in thresholds]
    if not thresholds:
        raise ValueError("at least one IoU threshold is needed")
    results = {t: _match(ov, t) for t in thresholds}
    for t in (0.5, 0.75):
        if t not in results:
            results[t] = _match(ov, t)
    at50 = results[0.5]
    return {
        "ap50": at50.ap,
        "ap75": results[0.75].ap,
        "mean_ap": float(np.mean([results[t].ap for t in thresholds])),
        "precision50": at50.precision,
        "recall50": at50.recall,
        "f1_50": at50.f1,
        "mean_matched_iou50": at50.mean_matched_iou,
        "per_threshold": [results[t].as_dict() for t in thresholds],
        "thresholds": thresholds,
        "n_pred": int(ov.pred_ids.size),
        "n_gt": int(ov.gt_ids.size),
    }


# --------------------------------------------------------------------------- text


def _format_semantic(scores: dict[str, Any]) -> list[str]:
    lines = [
        f"mean IoU {scores['miou']:.3f}   mean Dice {scores['mean_dice']:.3f}   "
        f"pixel accuracy {scores['pixel_accuracy']:.3f}   ({scores.get('n_pixels', 0)} px scored)"
    ]
    for cls, s in sorted(scores.get("per_class", {}).items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"  class {cls}: IoU {s['iou']:.3f}  Dice {s['dice']:.3f}  "
            f"(gt {s['gt_pixels']} px, pred {s['pred_pixels']} px)"
        )
    return lines


def _format_instance(scores: dict[str, Any]) -> list[str]:
    lines = [
        f"objects: {scores['n_pred']} predicted, {scores['n_gt']} ground truth",
        f"AP50 {scores['ap50']:.3f}   AP75 {scores['ap75']:.3f}   mean AP {scores['mean_ap']:.3f}",
        f"at IoU 0.5: precision {scores['precision50']:.3f}  recall {scores['recall50']:.3f}  "
        f"F1 {scores['f1_50']:.3f}",
    ]
    per = scores.get("per_threshold") or []
    if per:
        lines.append("  IoU   TP   FP   FN   AP")
        lines += [
            f"  {r['threshold']:.2f} {r['tp']:4d} {r['fp']:4d} {r['fn']:4d}  {r['ap']:.3f}" for r in per
        ]
    return lines


def format_scores(scores: dict[str, Any]) -> str:
    """Short multi-line text of a score dict from this module (semantic, instance or both merged)."""
    lines: list[str] = []
    if "miou" in scores:
        lines += _format_semantic(scores)
    if "mean_ap" in scores:
        lines += _format_instance(scores)
    if not lines:
        lines = [f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in scores.items()]
    return "\n".join(lines)
