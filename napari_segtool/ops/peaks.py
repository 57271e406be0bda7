"""Local maxima of a relief within labelled regions: scikit-image's answer, without its per-region loop.

``skimage.feature.peak_local_max(image, labels=...)`` looks for peaks region by region: a bounding
box, a copy, a maximum filter and a spacing check per region. On a 2048² plane of nuclei that is
~2800 Python iterations and a third of the post-processing. Most regions lie farther from every
other region than the footprint reaches; for those one maximum filter over the whole plane gives
the same peaks (a window around a pixel of such a region sees only it and background), and one
spacing pass gives the same survivors (peaks of different regions are farther apart than the
spacing). Regions closer together than the footprint, and flat regions (scikit-image's "trivial
image" rule), still go through scikit-image itself. The result is the same array, in the same order.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage import feature
from skimage._shared.coord import ensure_spacing


def peaks_by_label(relief: np.ndarray, labels: np.ndarray, half: Sequence[int]) -> np.ndarray:
    """``peak_local_max(relief, min_distance=min(half), footprint=box of half-sizes half, labels=labels,
    exclude_border=False)``: coordinates ``(n, ndim)``, region by region in label order, highest first."""
    footprint = np.ones([2 * int(h) + 1 for h in half], bool)
    min_distance = int(min(half))
    labels = np.asarray(labels)
    if not labels.any():
        return np.empty((0, relief.ndim), int)
    inside = labels > 0
    top = np.iinfo(labels.dtype).max
    sees_other = (ndi.maximum_filter(labels, footprint=footprint, mode="nearest") != labels) | \
                 (ndi.minimum_filter(np.where(inside, labels, top), footprint=footprint, mode="nearest") != labels)
    image = relief if np.issubdtype(relief.dtype, np.floating) else relief.astype(np.float64)
    masked = np.where(inside, image, np.finfo(image.dtype).min)
    on_max = inside & (masked == ndi.maximum_filter(masked, footprint=footprint, mode="nearest"))
    n = int(labels.max()) + 1
    flat = np.bincount(labels[on_max], minlength=n) == np.bincount(labels[inside], minlength=n)
    crowded = np.zeros(n, bool)
    crowded[labels[inside & sees_other]] = True
    slow = (crowded | flat)
    slow[0] = False
    fast = on_max & (image > image.min()) & ~slow[labels]

    coords = np.argwhere(fast)  # raster order
    region = labels[tuple(coords.T)]
    order = np.lexsort((-image[tuple(coords.T)], region), axis=-1)  # by region, highest first, raster for ties
    coords, region = coords[order], region[order]
    if min_distance > 1 and len(coords):  # regions are farther apart than the spacing: one greedy pass
        coords = ensure_spacing(coords, spacing=min_distance, p_norm=np.inf)
        region = labels[tuple(coords.T)]
    if slow.any():
        rest = np.where(slow[labels], labels, 0)
        more = feature.peak_local_max(image, min_distance=min_distance, footprint=footprint, labels=rest,
                                      exclude_border=False)
        coords = np.vstack([coords, more]) if len(more) else coords
        region = np.concatenate([region, labels[tuple(more.T)]]) if len(more) else region
        coords = coords[np.argsort(region, kind="stable")]
    return coords.astype(int, copy=False)
