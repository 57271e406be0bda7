"""Edits of label images that the correction tools make (numpy / scipy / scikit-image only).

No Qt, no napari: the plugin's Correct widget calls these on one plane and writes
the result back through the labels layer (undoable, tracked as an edit).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi


def _bbox(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...] | None:
    coords = np.nonzero(mask)
    if coords[0].size == 0:
        return None
    return tuple(slice(max(0, int(c.min()) - pad), min(n, int(c.max()) + 1 + pad))
                 for c, n in zip(coords, mask.shape))


def split_mask_at_neck(mask: np.ndarray, p1: Sequence[int], p2: Sequence[int],
                       seed_fraction: float = 0.8) -> np.ndarray:
    """Split a 2D object mask in two between the points ``p1`` and ``p2`` (y, x), at its neck.

    Each click grows into a disc seed: as wide as the object is around the click
    (``seed_fraction`` of the distance to its edge), but never past the midline
    between the two clicks. The pieces are then flooded from the two discs over the
    object's distance transform (a watershed of ``-distance``), so the border falls on
    the narrowest place between them — not wherever two single-pixel floods happen
    to meet, which on a click a little off centre can leave one piece a few pixels.

    Returns an int array of the mask's shape: 0 outside, 1 the piece of ``p1``,
    2 the piece of ``p2``. Raises ``ValueError`` when a point is outside the mask
    or both are the same pixel.
    """
    from skimage.segmentation import watershed

    mask = np.asarray(mask, bool)
    p1 = tuple(int(v) for v in p1)
    p2 = tuple(int(v) for v in p2)
    if not (mask[p1] and mask[p2]):
        raise ValueError("both split points must be inside the same object")
    if p1 == p2:
        raise ValueError("the two split points are the same pixel")
    sl = _bbox(mask, pad=1)
    sub = mask[sl]
    a = np.array([p1[0] - sl[0].start, p1[1] - sl[1].start], float)
    b = np.array([p2[0] - sl[0].start, p2[1] - sl[1].start], float)
    dist = ndi.distance_transform_edt(sub)
    yy, xx = np.mgrid[: sub.shape[0], : sub.shape[1]]
    da = np.hypot(yy - a[0], xx - a[1])
    db = np.hypot(yy - b[0], xx - b[1])
    half = np.linalg.norm(b - a) / 2.0
    seeds = np.zeros(sub.shape, np.int32)
    for label, centre, d_own, d_other in ((1, a, da, db), (2, b, db, da)):
        radius = min(seed_fraction * float(dist[int(centre[0]), int(centre[1])]), 0.9 * half)
        disc = (d_own <= max(radius, 0.5)) & (d_own < d_other) & sub
        # only the part of the disc connected to the click (a disc may reach across a gap in the mask)
        parts, _ = ndi.label(disc)
        seeds[parts == parts[int(centre[0]), int(centre[1])]] = label
    pieces = watershed(-dist, markers=seeds, mask=sub)
    out = np.zeros(mask.shape, np.int32)
    out[sl] = pieces
    return out


def window(shape: Sequence[int], centre: Sequence[float], half: int) -> tuple[slice, slice]:
    """The square window of half-width ``half`` around ``centre`` (y, x), clipped to a plane of ``shape``."""
    cy, cx = int(round(centre[0])), int(round(centre[1]))
    return (slice(max(0, cy - half), min(int(shape[0]), cy + half + 1)),
            slice(max(0, cx - half), min(int(shape[1]), cx + half + 1)))


def box_window(shape: Sequence[int], y0: int, y1: int, x0: int, x1: int, pad: int) -> tuple[slice, slice]:
    """Rows ``y0:y1`` and columns ``x0:x1`` with ``pad`` pixels around, clipped to a plane of ``shape``."""
    return (slice(max(0, y0 - pad), min(int(shape[0]), y1 + pad)),
            slice(max(0, x0 - pad), min(int(shape[1]), x1 + pad)))


def touches_open_edge(mask: np.ndarray, sl: tuple[slice, slice], shape: Sequence[int]) -> bool:
    """Whether ``mask`` reaches an edge of its window that is not an edge of the plane."""
    if not mask.any():
        return False
    return bool((sl[0].start > 0 and mask[0].any()) or (sl[0].stop < shape[0] and mask[-1].any())
                or (sl[1].start > 0 and mask[:, 0].any()) or (sl[1].stop < shape[1] and mask[:, -1].any()))


def object_window(labels: np.ndarray, label: int, near: Sequence[float], half: int = 48
                  ) -> tuple[slice, slice]:
    """A window around ``near`` that holds all of object ``label`` (grown until it does).

    Edits of one object then touch only this window, not the whole (possibly 2048² or larger) plane."""
    while True:
        sl = window(labels.shape, near, half)
        if not touches_open_edge(labels[sl] == label, sl, labels.shape) or \
                (sl[0].start == 0 and sl[1].start == 0 and sl[0].stop == labels.shape[0]
                 and sl[1].stop == labels.shape[1]):
            return _shrink_to(labels[sl] == label, sl, labels.shape, pad=half // 2)
        half *= 2


def _shrink_to(mask: np.ndarray, sl: tuple[slice, slice], shape: Sequence[int], pad: int) -> tuple[slice, slice]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return sl
    return box_window(shape, sl[0].start + int(ys.min()), sl[0].start + int(ys.max()) + 1,
                      sl[1].start + int(xs.min()), sl[1].start + int(xs.max()) + 1, pad)


# ============================================================== the Correct widget's edits (and the simulated annotator's)


def bbox(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...] | None:
    """Bounding box slices of a mask (with ``pad`` pixels of margin), or ``None`` when empty."""
    return _bbox(mask, pad)


def delete_object(plane: np.ndarray, label: int) -> np.ndarray:
    return np.where(plane == label, 0, plane).astype(plane.dtype, copy=False)


def merge_objects(plane: np.ndarray, labels: Iterable[int]) -> np.ndarray:
    ids = sorted({int(i) for i in labels if int(i) > 0})
    if len(ids) < 2:
        return plane
    return np.where(np.isin(plane, ids[1:]), ids[0], plane).astype(plane.dtype, copy=False)


def split_object_points(plane: np.ndarray, p1: Sequence[int], p2: Sequence[int], new_label: int) -> np.ndarray:
    """Split the object under ``p1`` and ``p2`` (y, x) at its neck between them; ``p2``'s piece gets
    ``new_label`` (see :func:`napari_segtool.core.edits.split_mask_at_neck`). A new plane."""
    sl, labels = split_object_points_in_window(plane, p1, p2, new_label)
    out = plane.copy()
    out[sl] = labels
    return out


def split_object_points_in_window(plane: np.ndarray, p1: Sequence[int], p2: Sequence[int], new_label: int
                                  ) -> tuple[tuple[slice, slice], np.ndarray]:
    """:func:`split_object_points` as ``(window, its new labels)``: the rest of the plane is unchanged, so an
    editor writes only the object's window (no copy of a 2048² plane per click)."""
    label = int(plane[tuple(p1)])
    if label == 0 or int(plane[tuple(p2)]) != label:
        raise ValueError("both split points must be inside the same object")
    (y1, x1), (y2, x2) = (tuple(int(v) for v in p) for p in (p1, p2))
    sl = object_window(plane, label, ((y1 + y2) / 2, (x1 + x2) / 2), max(48, int(np.hypot(y2 - y1, x2 - x1))))
    pieces = split_mask_at_neck(plane[sl] == label, (y1 - sl[0].start, x1 - sl[1].start),
                                (y2 - sl[0].start, x2 - sl[1].start))
    labels = plane[sl].copy()  # only the object's window is read (a large plane stays fast)
    labels[pieces == 2] = new_label
    return sl, labels


def split_object_line(plane: np.ndarray, line: np.ndarray, first_new_label: int, min_size: int = 3) -> np.ndarray:
    """Cut every object crossed by a polyline (``(N, 2)`` y, x points) into its pieces.

    Pieces get new ids (the largest keeps the old id); pixels on the cut go to the
    nearest piece. Objects the line does not really cut are left alone.
    """
    from skimage.draw import line as draw_line
    from skimage.segmentation import expand_labels

    h, w = plane.shape
    cut = np.zeros(plane.shape, bool)
    pts = np.round(np.asarray(line, float)).astype(int)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
        rr, cc = draw_line(y0, x0, y1, x1)
        ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        cut[rr[ok], cc[ok]] = True
    cut = ndi.binary_dilation(cut, structure=np.ones((2, 2), bool))  # no diagonal leaks
    out = plane.copy()
    next_id = int(first_new_label)
    for label in np.unique(plane[cut]):
        if label == 0:
            continue
        obj = plane == label
        sl = bbox(obj, pad=1)
        sub = obj[sl]
        pieces, n = ndi.label(sub & ~cut[sl])
        if n < 2:
            continue
        sizes = np.bincount(pieces.ravel())[1:]
        keep = [i + 1 for i in np.argsort(sizes)[::-1] if sizes[i] >= min_size]
        if len(keep) < 2:
            continue
        ids = np.zeros(n + 1, np.int64)
        ids[keep[0]] = label
        for piece in keep[1:]:
            ids[piece] = next_id
            next_id += 1
        relabelled = ids[pieces]
        grown = expand_labels(relabelled, distance=3)
        region = out[sl]
        region[sub] = grown[sub]
        region[sub & (grown == 0)] = label
    return out


def fill_object_holes(plane: np.ndarray, label: int | None = None) -> np.ndarray:
    from napari_segtool.ops.postprocess import fill_holes

    if label is None:
        return fill_holes(plane)
    mask = plane == label
    filled = ndi.binary_fill_holes(mask)
    out = plane.copy()
    out[filled & (plane == 0)] = label
    return out


def renumber(labels: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(labels.dtype, copy=False)


# ============================================================== one rule for GUI and benchmark


def merge_prediction(old: np.ndarray, pred: np.ndarray, edited: np.ndarray, instance: bool = True,
                     drop_fraction: float = 0.5) -> np.ndarray:
    """New labels for a region after a re-prediction: edited pixels keep ``old``, the prediction fills the rest.

    For instances, a predicted object with at least ``drop_fraction`` of its pixels on
    edited pixels is dropped (the user already decided what is there, object or
    background); any other is trimmed to the unedited pixels (a neighbour that bleeds into
    a corrected object keeps its own part). Predicted ids must not collide with the ids
    kept from ``old`` (see :func:`shift_ids`).

    The Correct widget (re-predicting a plane with edits) and the simulated annotator of
    :mod:`napari_segtool.core.hitl` both merge with this function.
    """
    old = np.asarray(old)
    pred = np.asarray(pred)
    edited = np.asarray(edited, bool)
    if not edited.any():
        return pred.astype(old.dtype, copy=False)
    if instance and pred.max() > 0:
        ids = pred.ravel().astype(np.int64)
        total = np.bincount(ids)
        inside = np.bincount(ids[edited.ravel()], minlength=total.size)
        drop = np.flatnonzero((total > 0) & (inside >= drop_fraction * np.maximum(total, 1)))
        drop = drop[drop > 0]
        if drop.size:
            pred = np.where(np.isin(pred, drop), 0, pred)
    return np.where(edited, old, pred).astype(old.dtype, copy=False)


def shift_ids(pred: np.ndarray, above: int) -> np.ndarray:
    """Instance ids of ``pred`` moved above ``above`` (0 stays background), as int32."""
    pred = np.asarray(pred)
    if above <= 0:
        return pred.astype(np.int32, copy=False)
    return np.where(pred > 0, pred.astype(np.int64) + int(above), 0).astype(np.int32)


def edited_pixels(base: np.ndarray, current: np.ndarray, marks: np.ndarray | None = None) -> np.ndarray:
    """The annotated pixels of a plane: what the user decided, as training data.

    Pixels that differ from what was predicted (``base``), plus the whole extent of every
    object such a pixel belongs to (before or after the edit), plus what was marked
    outright (``marks``: reviewed regions). Recomputed from ``base`` each time, so undoing
    an edit also undoes its annotation. The plugin's edit tracker and the simulated
    annotator both derive training data with it.
    """
    base = np.asarray(base)
    current = np.asarray(current)
    mask = np.zeros(current.shape, bool) if marks is None else np.array(marks, bool, copy=True)
    differ = base != current
    if differ.any():
        ids = np.union1d(np.unique(base[differ]), np.unique(current[differ]))
        ids = ids[ids != 0]
        mask |= differ
        if ids.size:
            mask |= np.isin(current, ids)
    return mask


#: px of background around every edited object that training counts as annotated (:func:`training_mask`)
TRAINING_RING_PX = 3


def training_mask(labels: np.ndarray, edited: np.ndarray, margin: int = TRAINING_RING_PX) -> np.ndarray:
    """The pixels to train on: ``edited`` plus a ring of ``margin`` px of background around every
    edited object (where the labels are 0: the user saw it was background while fixing the object).

    Without the ring a correction only ever says "object here", and fine-tuning on it teaches the
    model that everything is object: the effort benchmark (``benchmarks/hitl.py --effort``) measured
    held-out AP@0.5 falling from 0.77 to 0.16 in two rounds of the widget's rule on the real nuclei
    image. ``margin=0`` returns ``edited`` unchanged. The project's training data
    (:meth:`napari_segtool.core.project.Project.training_examples`) is made with it.
    """
    edited = np.asarray(edited, bool)
    if margin <= 0 or not edited.any():
        return edited.copy()
    labels = np.asarray(labels)
    objects = edited & (labels > 0)
    ring = ndi.binary_dilation(objects, ndi.generate_binary_structure(labels.ndim, 1), iterations=int(margin))
    return edited | (ring & (labels == 0))


#: share of a reviewed plane's width held out for scoring (its right end)
HOLDOUT_FRACTION = 0.2
#: narrowest held-out stripe: a plane narrower than ``HOLDOUT_MIN_PX / HOLDOUT_FRACTION`` is all training
HOLDOUT_MIN_PX = 32


def holdout_mask(shape: Sequence[int], fraction: float = HOLDOUT_FRACTION,
                 min_px: int = HOLDOUT_MIN_PX) -> np.ndarray:
    """The held-out pixels of a reviewed plane of ``shape`` (``Y, X``): its rightmost columns.

    ``round(fraction * width)`` columns, or none when that is under ``min_px`` (a small
    plane is worth more as training data than as a score of a few objects).
    """
    h, w = int(shape[-2]), int(shape[-1])
    mask = np.zeros((h, w), bool)
    cols = int(round(fraction * w))
    if cols >= min_px:
        mask[:, w - cols:] = True
    return mask
