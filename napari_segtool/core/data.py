"""Annotated training examples and patch sampling.

An :class:`Example` is an image, its labels and a mask of *annotated* pixels.
Pixels outside the mask carry no information and are ignored by the loss, which
makes sparse scribbles, a few corrected objects, or fully labelled slices all
valid training data. Patches are drawn preferentially around annotated pixels.
An example may also carry a per-pixel loss ``weight`` (:func:`loss_weights`: the U-Net paper's
weight map for touching objects, and small objects weighed as much as large ones); its patches
then hold that weight, zero where unannotated, as ``Patch.annotated``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from napari_segtool.kernel.errors import InputError
from napari_segtool.models.base import Patch

#: Largest label id training accepts (labels are stored as int32).
MAX_LABEL_ID = 2**31 - 1


class DataError(InputError):
    """Training data that cannot be used (message says why)."""


@dataclass
class LossWeights:
    """A per-pixel loss weight map from the truth labels (:func:`loss_weights`).

    ``touching`` (``w0``) and ``sigma`` (px): Ronneberger et al. 2015 (U-Net), eq. 2, the term
    ``w0 * exp(-(d1 + d2)² / (2 sigma²))`` with ``d1``, ``d2`` the distances to the nearest and
    second-nearest objects: large on the pixels where two objects meet or nearly do, so the
    network learns the boundary that separates them. ``balance``: each object's pixels weigh
    ``(median area / its area) ** balance`` (1: every object counts alike, as the flux-share
    loss; 0: every pixel alike), clipped to ``clip`` -- small (faint) objects count as much as
    large ones, large ones do not vanish. Background weighs 1 (+ the touching term).
    """

    touching: float = 10.0
    sigma: float = 5.0
    balance: float = 0.0
    clip: tuple[float, float] = (0.1, 10.0)


@dataclass
class Example:
    """One annotated plane: ``image`` ``YXC`` (normalised float32), ``labels`` ``YX``, ``annotated`` ``YX`` bool,
    optionally ``weight`` ``YX`` float32 (per-pixel loss weight on the annotated pixels; ``None``: 1 each)."""

    image: np.ndarray
    labels: np.ndarray
    annotated: np.ndarray
    name: str = ""
    weight: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape  # type: ignore[return-value]


def touching_distances(labels: np.ndarray, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the distances ``d1 <= d2`` to the nearest and second-nearest objects of ``labels`` (0 inside
    an object for ``d1``); objects farther than ``reach`` px count as ``inf`` (each object's distance transform
    is computed in its box widened by ``reach`` only, so the cost follows the objects' area, not their number
    times the image's)."""
    d1 = np.full(labels.shape, np.inf, np.float32)
    d2 = np.full(labels.shape, np.inf, np.float32)
    pad = int(np.ceil(reach))
    for i, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        box = tuple(slice(max(0, s.start - pad), min(n, s.stop + pad)) for s, n in zip(box, labels.shape))
        d = ndi.distance_transform_edt(labels[box] != i).astype(np.float32)
        d[d > reach] = np.inf
        near1, near2 = d1[box], d2[box]
        near2[...] = np.minimum(near2, np.maximum(near1, d))
        near1[...] = np.minimum(near1, d)
    return d1, d2


def loss_weights(labels: np.ndarray, cfg: LossWeights) -> np.ndarray:
    """The per-pixel loss weight of an instance label image (``YX`` float32, :class:`LossWeights`)."""
    labels = np.asarray(labels)
    weight = np.ones(labels.shape, np.float32)
    ids, areas = np.unique(labels[labels > 0], return_counts=True)
    if not ids.size:
        return weight
    if cfg.balance:
        per_id = np.ones(int(ids.max()) + 1, np.float32)
        per_id[ids] = np.clip((np.median(areas) / areas) ** cfg.balance, *cfg.clip)
        weight = per_id[labels]
        weight[labels == 0] = 1.0
    if cfg.touching and ids.size > 1:
        d1, d2 = touching_distances(labels, 3 * cfg.sigma)
        weight += cfg.touching * np.exp(-((d1 + d2) ** 2) / (2 * cfg.sigma ** 2))
    return weight.astype(np.float32)


def make_example(image: np.ndarray, labels: np.ndarray, annotated: np.ndarray | None = None, *,
                 task: str = "instance", name: str = "", normalization: dict | None = None,
                 weights: LossWeights | None = None) -> Example:
    """Validate and normalise one (image, labels, mask) triple.

    ``image`` is ``YX`` or ``YXC``; ``labels`` ``YX`` integers. Without a mask, an
    instance example counts as fully annotated (0 = background) and a semantic
    example as annotated wherever ``labels > 0`` (scribbles). ``weights`` (instance
    examples): the per-pixel loss weight computed from ``labels`` (:func:`loss_weights`).
    """
    from napari_segtool.ops.normalize import normalize

    image = np.asarray(image)
    labels = np.asarray(labels)
    where = f" ({name})" if name else ""
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3:
        raise DataError(f"image{where} must be 2D (YX) or 2D with channels (YXC), got shape {image.shape}")
    if labels.ndim != 2:
        raise DataError(f"labels{where} must be 2D, got shape {labels.shape}")
    if image.shape[:2] != labels.shape:
        raise DataError(f"image{where} has spatial shape {image.shape[:2]} but labels have shape {labels.shape}")
    if labels.dtype == bool:  # a binary mask: one object / class 1
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if np.issubdtype(labels.dtype, np.floating) and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise DataError(f"labels{where} must be integers, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise DataError(f"labels{where} contain negative values")
    if labels.size and int(labels.max()) > MAX_LABEL_ID:
        raise DataError(f"labels{where} use id {int(labels.max())}, above the largest supported id {MAX_LABEL_ID} "
                        f"(relabel them, e.g. with skimage.segmentation.relabel_sequential)")
    if not np.issubdtype(image.dtype, np.number) and image.dtype != bool:
        raise DataError(f"image{where} has unsupported pixel type {image.dtype}")
    if image.dtype.kind == "f" and not np.isfinite(image).any():
        raise DataError(f"image{where} has no finite pixel values")
    if annotated is None:
        annotated = np.ones(labels.shape, bool) if task == "instance" else labels > 0
    annotated = np.asarray(annotated).astype(bool)
    if annotated.shape != labels.shape:
        raise DataError(f"mask{where} has shape {annotated.shape} but labels have shape {labels.shape}")
    if not annotated.any():
        raise DataError(f"no annotated pixels{where}: the mask is empty")
    if task == "instance" and not (labels[annotated] > 0).any():
        raise DataError(f"labels{where} are empty: no objects in the annotated region")
    if task == "semantic" and not (labels[annotated] > 0).any():
        raise DataError(f"labels{where} contain no class ids > 0 in the annotated region")
    try:
        img = normalize(image.astype(np.float32), **(normalization or {}))
    except ValueError as exc:
        raise DataError(f"image{where}: {exc}") from exc
    if weights is not None and task != "instance":
        raise DataError(f"loss weights{where} are computed from instance labels, not {task} ones")
    weight = loss_weights(labels, weights) if weights is not None else None
    return Example(img, labels.astype(np.int32), annotated, name, weight)


def split_validation(examples: Sequence[Example], fraction: float) -> tuple[list[Example], list[Example]]:
    """Hold out the last ``fraction`` of each example's annotated rows (or columns) for validation.

    A spatial split (not random pixels) keeps validation pixels away from the
    training patches' context, so the score is honest. Examples with too little
    annotation are kept whole for training.
    """
    train, val = [], []
    for ex in examples:
        if fraction <= 0:
            train.append(ex)
            continue
        axis = 0 if ex.shape[0] >= ex.shape[1] else 1
        profile = ex.annotated.sum(axis=1 - axis)
        cumulative = np.cumsum(profile)
        total = cumulative[-1]
        cut = int(np.searchsorted(cumulative, (1 - fraction) * total))
        if total < 200 or cut <= 0 or cut >= ex.shape[axis] - 8:
            train.append(ex)
            continue
        mask_train = ex.annotated.copy()
        mask_val = ex.annotated.copy()
        if axis == 0:
            mask_train[cut:] = False
            mask_val[:cut] = False
        else:
            mask_train[:, cut:] = False
            mask_val[:, :cut] = False
        # a val object cut by the split still trains on its upper part but is scored whole
        if mask_train.any():
            train.append(Example(ex.image, ex.labels, mask_train, ex.name, ex.weight))
        if mask_val.any():
            val.append(Example(ex.image, ex.labels, mask_val, ex.name + ":val", ex.weight))
    return train, val


class PatchSampler:
    """Draws square patches, centred on annotated pixels with probability ``p_annotated``."""

    def __init__(self, examples: Sequence[Example], patch_size: int, rng: np.random.Generator,
                 p_annotated: float = 0.9):
        if not examples:
            raise DataError("no training examples")
        self.examples = list(examples)
        self.size = patch_size
        self.rng = rng
        self.p_annotated = p_annotated
        weights = np.array([max(1, ex.annotated.sum()) for ex in self.examples], dtype=np.float64)
        self.weights = weights / weights.sum()
        self._coords = [np.flatnonzero(ex.annotated) for ex in self.examples]

    def sample(self, size: int | None = None) -> Patch:
        size = size or self.size
        i = self.rng.choice(len(self.examples), p=self.weights)
        ex = self.examples[i]
        h, w = ex.shape
        if self.rng.random() < self.p_annotated and self._coords[i].size:
            cy, cx = divmod(int(self.rng.choice(self._coords[i])), w)
        else:
            cy, cx = int(self.rng.integers(h)), int(self.rng.integers(w))
        y0 = int(np.clip(cy - size // 2 + self.rng.integers(-size // 4, size // 4 + 1), 0, max(0, h - size)))
        x0 = int(np.clip(cx - size // 2 + self.rng.integers(-size // 4, size // 4 + 1), 0, max(0, w - size)))
        return crop_patch(ex, y0, x0, size)

    def sample_annotated(self, size: int | None = None) -> Patch:
        """A ``size``² patch centred on an annotated pixel (so it always holds one), unaugmented."""
        size = size or self.size
        choices = [i for i, c in enumerate(self._coords) if c.size]
        if not choices:
            raise DataError("no annotated pixels to train on")
        p = self.weights[choices] / self.weights[choices].sum()
        i = choices[int(self.rng.choice(len(choices), p=p))]
        ex = self.examples[i]
        h, w = ex.shape
        cy, cx = divmod(int(self.rng.choice(self._coords[i])), w)
        y0 = int(np.clip(cy - size // 2, 0, max(0, h - size)))
        x0 = int(np.clip(cx - size // 2, 0, max(0, w - size)))
        return crop_patch(ex, y0, x0, size)


def crop_patch(ex: Example, y0: int, x0: int, size: int) -> Patch:
    """Crop (and pad, if the example is smaller) a ``size``² patch; padding is unannotated.

    With an example ``weight`` the patch's ``annotated`` is that weight (float32, 0 where unannotated), which
    the loss multiplies each pixel by; without, the boolean mask.
    """
    img = ex.image[y0:y0 + size, x0:x0 + size]
    lab = ex.labels[y0:y0 + size, x0:x0 + size]
    ann = ex.annotated[y0:y0 + size, x0:x0 + size]
    if ex.weight is not None:
        ann = np.where(ann, ex.weight[y0:y0 + size, x0:x0 + size], np.float32(0))
    ph, pw = size - lab.shape[0], size - lab.shape[1]
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(img.shape[:2]) > 1 else "edge")
        lab = np.pad(lab, ((0, ph), (0, pw)))
        ann = np.pad(ann, ((0, ph), (0, pw)))
    return Patch(np.ascontiguousarray(img), np.ascontiguousarray(lab), np.ascontiguousarray(ann))
