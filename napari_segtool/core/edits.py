"""Edits of label images that the correction tools make (numpy / scipy / scikit-image only).

No Qt, no napari: the plugin's Correct widget calls these on one plane and writes
the result back through the labels layer (undoable, tracked as an edit).
"""
from __future__ import annotations

from typing import Sequence

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
