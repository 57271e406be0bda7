"""Object scale: what size a model's objects are, what size an image's are, and the factor between.

A network only knows the object sizes it was trained on. The engine therefore runs
every image on a grid where its objects have the model's size
(:class:`~napari_segtool.kernel.meta.ObjectScale`), and maps the labels back
(:mod:`napari_segtool.ops.resample`). The image's object size is given by the user
(pixels, or physical units converted with the file's pixel size) or estimated here
with the model itself: the model segments a few crops of the image resampled by
factors an octave apart, and each run *implies* an object diameter in input pixels
(its objects' median diameter divided by the factor). Where the model sees objects
at sizes it knows, the implied diameters agree from one octave to the next; where
objects are far larger than anything it was trained on it cuts them into pieces and
the implied diameter collapses. The estimate is the median over the longest run of
octaves that agree -- the network's own maps at a few scales, no extra model to train.
Images whose objects are within the model's training range run at their own scale;
others are resampled just into that range (:func:`scale_factor`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from napari_segtool.kernel.meta import ObjectScale
from napari_segtool.ops.resample import ResampledPlane, scaled_length

#: Factors tried by the estimator (model pixels per input pixel), an octave apart.
ESTIMATE_FACTORS = (1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0)
#: Model-grid pixels segmented per factor (crops spread over the image), bounding the estimate's cost.
ESTIMATE_PIXELS = 256 * 256
#: Neighbouring octaves agree when their implied diameters differ by less than this ratio.
AGREEMENT = 1.45
#: A run needs at least this many objects to imply a diameter.
MIN_OBJECTS = 3


@dataclass
class ScaleEstimate:
    """The image's median object diameter (input pixels) and how it was found."""

    diameter: float | None
    implied: dict[float, float] = field(default_factory=dict)  # factor -> implied diameter (input px)
    counts: dict[float, int] = field(default_factory=dict)     # factor -> objects found

    def describe(self) -> str:
        if self.diameter is None:
            return "object size: not estimated (too few objects at any scale)"
        return f"object size: {self.diameter:.1f} px (estimated)"


def median_diameter(labels: np.ndarray) -> tuple[float, int]:
    """Median equivalent diameter (pixels) of the objects of a label image, and their number."""
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    if not areas.size:
        return 0.0, 0
    return float(2.0 * np.sqrt(np.median(areas) / np.pi)), int(areas.size)


def whole_object_areas(labels: np.ndarray) -> np.ndarray:
    """Areas (pixels) of the objects of a crop's labels that do not touch its edge.

    An object cut by the crop's edge shows only part of its size, and how many are cut depends
    on where the crop falls (a frame, a mosaic gap, another crop grid); counting them would pull
    the estimate down by an amount that changes with the image's surroundings. When fewer than
    :data:`MIN_OBJECTS` objects lie wholly inside (objects as large as the crop), all are counted.
    """
    labels = np.asarray(labels).astype(np.int64)
    areas = np.bincount(labels.ravel())[1:]
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    whole = areas.copy()
    whole[edge[edge > 0] - 1] = 0
    if np.count_nonzero(whole) >= MIN_OBJECTS:
        return whole[whole > 0]
    return areas[areas > 0]


def object_scale_from_labels(label_images: Sequence[np.ndarray],
                             augment_range: tuple[float, float] = (1.0, 1.0)) -> ObjectScale:
    """The :class:`ObjectScale` of a training set.

    ``diameter`` is the geometric middle of the 10th..90th percentiles of the per-image median
    diameters; the range the model knows is that span widened by the scale augmentation it was
    trained with (``augment_range``, e.g. ``(0.8, 1.25)``).
    """
    diameters = [d for d, n in (median_diameter(lab) for lab in label_images) if n]
    if not diameters:
        return ObjectScale()
    low, high = (float(v) for v in np.percentile(diameters, [10, 90]))
    return ObjectScale(diameter=float(math.sqrt(low * high)), low=low * min(augment_range),
                       high=high * max(augment_range))


def scale_factor(scale: ObjectScale, image_diameter: float | None) -> float:
    """Model pixels per input pixel that bring ``image_diameter`` objects into the model's size range.

    Objects already within ``scale.low``..``scale.high`` (sizes the model was trained on) are left
    as they are: resampling costs detail and time and buys nothing there. Larger objects are
    shrunk to ``high``, smaller ones enlarged to ``low``. Without a range, objects are brought to
    ``scale.diameter``. A model whose range is one size (``low == high``) has every image brought to
    it: ``nuclei-maskrcnn`` (a detector whose accuracy varies with object size well inside its
    training range, see its recipe in ``scripts/train_defaults.py``).
    """
    if not scale.diameter or not image_diameter or image_diameter <= 0:
        return 1.0
    if scale.low > 0 and scale.high >= scale.low:
        target = min(max(float(image_diameter), scale.low), scale.high)
    else:
        target = scale.diameter
    return target / float(image_diameter)


def stack_scale_factor(scale: ObjectScale, image_diameter: float | None, factor: float, z_step: float,
                       model_z_step: float) -> float:
    """:func:`scale_factor` for a Z stack whose objects are assembled in 3D, ``z_step`` XY pixels per Z step.

    The 3D assembly needs Z sampled about as finely, relative to XY, as in the stacks the model
    was tuned on (``model_z_step``, model pixels per Z step): the same stack magnified in XY
    (a Z step of more XY pixels) is brought back to it as far as the objects stay within the
    model's size range, so it gets the 3D objects it gets at its own magnification.
    """
    if not image_diameter or not scale.diameter or z_step * factor <= model_z_step:
        return factor
    smallest = (scale.low or scale.diameter) / float(image_diameter)  # objects no smaller than the model knows
    return min(factor, max(model_z_step / z_step, smallest))


def _crop_windows(shape: tuple[int, int], factor: float, budget: int) -> list[tuple[slice, slice]]:
    """The whole plane, or a 2×2 grid of input windows whose model-grid area is at most ``budget``."""
    h, w = shape
    if scaled_length(h, factor) * scaled_length(w, factor) <= budget:
        return [(slice(0, h), slice(0, w))]
    size = max(8, int(math.sqrt(budget / 4) / factor))
    ny = 1 if size >= h else 2
    nx = 1 if size >= w else 2
    ys = np.linspace(0, max(0, h - size), ny + 2)[1:-1].astype(int) if ny > 1 else [max(0, (h - size) // 2)]
    xs = np.linspace(0, max(0, w - size), nx + 2)[1:-1].astype(int) if nx > 1 else [max(0, (w - size) // 2)]
    return [(slice(y, min(h, y + size)), slice(x, min(w, x + size))) for y in ys for x in xs]


def estimate_diameter(model: Any, plane: Any, *, factors: Sequence[float] = ESTIMATE_FACTORS,
                      budget: int = ESTIMATE_PIXELS, settings: dict[str, Any] | None = None) -> ScaleEstimate:
    """Estimate the median object diameter (input pixels) of a normalised ``YXC`` plane.

    Parameters
    ----------
    model : a :class:`~napari_segtool.core.model.SegModel` of an instance task.
    plane : the normalised plane (numpy or any lazy ``YXC`` view).
    factors : resampling factors to try (model pixels per input pixel).
    budget : model-grid pixels segmented per factor.
    settings : post-processing overrides passed to the architecture.
    """
    meta = model.meta
    arch = model.architecture
    shape = tuple(plane.shape[:2])
    implied: dict[float, float] = {}
    counts: dict[float, int] = {}
    for factor in sorted(factors):
        pooled = []
        for ys, xs in _crop_windows(shape, factor, budget):
            crop = np.asarray(plane[ys, xs], dtype=np.float32)
            view = ResampledPlane(crop, factor)
            if min(view.shape[:2]) < 8:
                continue
            result = arch.predict_plane(model.net, view, meta, device=model.device, **(settings or {}))
            pooled.extend(whole_object_areas(result.labels).tolist())
        counts[factor] = len(pooled)
        if len(pooled) >= MIN_OBJECTS:
            implied[factor] = float(2.0 * np.sqrt(np.median(pooled) / np.pi)) / factor
    return ScaleEstimate(_agreeing_median(implied), implied, counts)


def _agreeing_median(implied: dict[float, float]) -> float | None:
    """Median implied diameter of the run of neighbouring factors that agree on the largest size.

    A model shown objects far larger than it was trained on cuts them into fragments, and fragments
    can look alike at neighbouring factors (a nucleus 4× too large gives ~9 px pieces at factors 1,
    2 and 4), so the longest agreeing run is not always the true size. The opposite error (a model
    inventing objects larger than those in the image, at two neighbouring factors) is much rarer,
    so among runs confirmed by at least two factors the one with the largest diameter wins; with no
    such run, the single factor that found objects (the coarsest of several).
    """
    keys = sorted(implied)
    if not keys:
        return None
    runs: list[list[float]] = [[keys[0]]]
    for prev, cur in zip(keys, keys[1:]):
        ratio = implied[cur] / implied[prev]
        adjacent = cur / prev <= 2.0 + 1e-9
        if adjacent and 1 / AGREEMENT < ratio < AGREEMENT:
            runs[-1].append(cur)
        else:
            runs.append([cur])
    confirmed = [run for run in runs if len(run) >= 2]
    if not confirmed:
        return float(implied[keys[0]])
    return max(float(np.median([implied[k] for k in run])) for run in confirmed)
