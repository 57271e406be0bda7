"""Bulge/disk decomposition of a sky image by a regression model (image to image).

A ``regression`` model (``models.unet``, task ``"regression"``, components ``meta.classes``:
bulge, disk, other) predicts, per pixel, each component's share of the flux. :func:`decompose`
normalises the image as the model was trained (its ``meta.normalization``: sky-subtracted asinh),
runs the network tile by tile, and multiplies the shares by the sky-subtracted image, so the
components are fluxes in the input's units on the input grid and add up to the observed image
(minus sky): ``bulge + disk + other == image - sky``. ``other`` holds stars and the noise of empty
sky. :func:`bulge_to_total` sums them per source of a segmentation map.

The CLI (``segtool predict astro-bulge-disk``), the napari Segment widget and
``benchmarks/bulge_disk.py`` all call :func:`decompose`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_segtool.core.model import SegModel
from napari_segtool.core.plan import check_image
from napari_segtool.kernel.errors import InputError
from napari_segtool.kernel.events import CancelToken
from napari_segtool.ops.normalize import NormalizedPlane, fit_normalizer
from napari_segtool.sim.astro import AstroField
from napari_segtool.sim.bulge_disk import COMPONENTS, GalaxyTruth, galaxy_truth  # the components a decomposition model names, in order

__all__ = ["Decomposition", "decompose", "bulge_to_total", "is_decomposition_model", "bt_pairs", "EVAL_MIN_PIXELS"]

#: galaxies are judged when their footprint has at least this many pixels (a two-profile fit has 10 parameters)
EVAL_MIN_PIXELS = 30



@dataclass
class Decomposition:
    """Component fluxes of one ``YX`` image, in its units, sky subtracted, on its grid (float32; NaN
    where the input is NaN): ``bulge + disk + other == image - sky``."""

    bulge: np.ndarray
    disk: np.ndarray
    other: np.ndarray
    sky: float

    def layers(self) -> dict[str, np.ndarray]:
        """The galaxy components by name (what the CLI writes and napari shows)."""
        return {"bulge": self.bulge, "disk": self.disk}


def is_decomposition_model(model: SegModel) -> bool:
    """Whether ``model`` is a bulge/disk regression model (:func:`decompose` runs it)."""
    return model.meta.task == "regression" and tuple(model.meta.classes) == COMPONENTS


def decompose(model: SegModel, image: Any, *, tile_size: int | None = None, progress: Any = None,
              cancel: CancelToken | None = None) -> Decomposition:
    """Split a 2D sky image (``YX``, or ``YXC`` with one channel) into bulge, disk and other flux."""
    if not is_decomposition_model(model):
        raise InputError(f"model '{model.meta.name or model.meta.arch}' is not a bulge/disk decomposition model "
                         f"(task {model.meta.task}, outputs {', '.join(model.meta.classes)})")
    check_image(image)
    data = np.asarray(image, dtype=np.float32)
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 2:
        raise InputError(f"bulge/disk decomposition needs one 2D plane (YX), got shape {tuple(np.shape(image))}")
    plane = data[..., None]
    try:
        normalizer = fit_normalizer(plane, **model.meta.normalization)
    except ValueError as exc:
        raise InputError(f"cannot normalise the image: {exc}") from None
    shares = model.architecture.predict_maps(model.net, NormalizedPlane(plane, normalizer), model.meta,
                                             device=model.device, tile_size=tile_size, progress=progress,
                                             cancel=cancel)
    sky = float(normalizer.lo[0])
    flux = data - sky
    bulge, disk, other = (np.asarray(shares[k] * flux, np.float32) for k in range(3))
    return Decomposition(bulge, disk, other, sky)


def bulge_to_total(result: Decomposition, labels: np.ndarray) -> dict[int, float]:
    """B/T = bulge / (bulge + disk) summed over each labelled source's pixels (NaN pixels skipped);
    ``nan`` where a source's bulge + disk flux is not positive."""
    labels = np.asarray(labels)
    if labels.shape != result.bulge.shape:
        raise InputError(f"labels of shape {labels.shape} do not match the image's {result.bulge.shape}")
    ids = np.unique(labels)
    ids = ids[ids > 0]
    bulge = np.asarray(ndi.sum(np.nan_to_num(result.bulge), labels, index=ids))
    disk = np.asarray(ndi.sum(np.nan_to_num(result.disk), labels, index=ids))
    total = bulge + disk
    return {int(i): float(b / t) if t > 0 else float("nan") for i, b, t in zip(ids, bulge, total)}


def bt_pairs(model: SegModel, field: AstroField, min_pixels: int = EVAL_MIN_PIXELS) -> list[tuple[GalaxyTruth, float]]:
    """Each galaxy of a simulated field with at least ``min_pixels`` footprint pixels, with its true B/T, and
    the B/T :func:`decompose` gives on its footprint (a recipe's held-out score, ``benchmarks/bulge_disk.py``)."""
    predicted = bulge_to_total(decompose(model, field.image), field.labels)
    return [(g, predicted[g.id]) for g in galaxy_truth(field, min_pixels)]
