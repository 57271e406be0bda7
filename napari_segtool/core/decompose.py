"""Bulge/disk decomposition of a sky image by a regression model (image to image).

A ``regression`` model (``models.unet``, task ``"regression"``, components ``meta.classes``:
bulge, disk, other) predicts, per pixel, each component's share of the flux. :func:`decompose`
normalises the image as the model was trained (its ``meta.normalization``: sky-subtracted asinh),
runs the network tile by tile, and multiplies the shares by the sky-subtracted image, so the
components are fluxes in the input's units on the input grid and add up to the observed image
(minus sky): ``bulge + disk + other == image - sky``. ``other`` holds stars and the noise of empty
sky. :func:`bulge_to_total` sums them per source of a segmentation map.

A bulge is a concentrated core, so whether a compact galaxy has one depends on how sharp the seeing
is: a model with two input channels also takes the field's PSF size (:func:`field_psf_size`, measured
on the image's own compact bright sources, or given) as a constant second channel
(:class:`DecompositionInput`, the same for training and prediction).

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
from napari_segtool.ops.normalize import NormalizedPlane, Normalizer, fit_normalizer

__all__ = ["COMPONENTS", "Decomposition", "DecompositionInput", "decompose", "bulge_to_total", "field_psf_size",
           "is_decomposition_model"]

#: the components a decomposition model names, in order (``sim.bulge_disk.component_fractions``' channels)
COMPONENTS = ("bulge", "disk", "other")
#: the PSF channel holds the PSF size (:func:`field_psf_size`, pixels) over this, so it is of order 1
PSF_CHANNEL_SCALE = 2.0
#: the PSF size (pixels) assumed where an image has no source to measure it on (mid-range of training)
DEFAULT_PSF_SIZE = 1.7


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
    return (model.meta.task == "regression" and tuple(model.meta.classes) == COMPONENTS
            and model.meta.in_channels in (1, 2))


def field_psf_size(image: np.ndarray) -> float | None:
    """The PSF size of a sky image in pixels: the Gaussian sigma with the peak-to-flux ratio of its most
    compact high-S/N sources (10th percentile over those with S/N >= ``ops.sources.PSF_MIN_SNR``, or all;
    stars are the most compact), sources being 5+ connected pixels 3 sigma above the sigma-clipped sky
    (photutils ``detect_sources``) measured by ``ops.sources.source_table``. On simulated fields it follows
    the true PSF sigma with correlation 0.9 (the ``lower quartile of RMS radii`` of the star/galaxy
    column, truncated by the footprints, did not). ``None`` when nothing is detected."""
    import warnings

    from astropy.stats import sigma_clipped_stats
    from photutils.segmentation import detect_sources

    from napari_segtool.ops.sources import PSF_MIN_SNR, source_table

    data = np.asarray(image, np.float64)
    sky, _, noise = sigma_clipped_stats(data[np.isfinite(data)], sigma=3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # photutils' note on a field without sources
        segments = detect_sources(np.nan_to_num(data - sky), 3.0 * max(float(noise), 1e-12), n_pixels=5)
    rows = [r for r in (source_table(data, segments.data) if segments is not None else []) if r["peak"] > 0]
    if not rows:
        return None
    bright = [r for r in rows if r["snr"] >= PSF_MIN_SNR] or rows
    return float(np.percentile([np.sqrt(r["flux"] / (2 * np.pi * r["peak"])) for r in bright], 10))


class DecompositionInput:
    """Lazy ``YXC`` input of a decomposition model (tile by tile, as ``NormalizedPlane``): the normalised
    image and, for a two-channel model, the PSF size over ``PSF_CHANNEL_SCALE`` everywhere."""

    def __init__(self, plane: np.ndarray, normalizer: Normalizer, psf_size: float | None):
        self.image = NormalizedPlane(plane, normalizer)
        self.psf_value = None if psf_size is None else float(psf_size) / PSF_CHANNEL_SCALE
        self.shape = tuple(plane.shape[:2]) + (1 if psf_size is None else 2,)

    def __getitem__(self, key: Any) -> np.ndarray:
        block = self.image[key]
        if self.psf_value is None:
            return block
        return np.concatenate([block, np.full(block.shape[:-1] + (1,), self.psf_value, block.dtype)], axis=-1)

    @classmethod
    def of(cls, data: np.ndarray, normalization: dict[str, Any], in_channels: int,
           psf_size: float | None = None) -> "DecompositionInput":
        """The input of a model with ``in_channels`` for one ``YX`` plane (PSF size measured unless given;
        ``DEFAULT_PSF_SIZE`` on an image without sources, where there is nothing to decompose)."""
        plane = np.asarray(data, np.float32)[..., None]
        try:
            normalizer = fit_normalizer(plane, **normalization)
        except ValueError as exc:
            raise InputError(f"cannot normalise the image: {exc}") from None
        if in_channels == 2 and psf_size is None:
            psf_size = field_psf_size(data) or DEFAULT_PSF_SIZE
        return cls(plane, normalizer, psf_size if in_channels == 2 else None)


def decompose(model: SegModel, image: Any, *, psf_size: float | None = None, tile_size: int | None = None,
              progress: Any = None, cancel: CancelToken | None = None) -> Decomposition:
    """Split a 2D sky image (``YX``, or ``YXC`` with one channel) into bulge, disk and other flux.

    ``psf_size``: the PSF's sigma in pixels (about FWHM / 2.35; :func:`field_psf_size`), for a model
    that takes it; measured on the image when not given."""
    if not is_decomposition_model(model):
        raise InputError(f"model '{model.meta.name or model.meta.arch}' is not a bulge/disk decomposition model "
                         f"(task {model.meta.task}, outputs {', '.join(model.meta.classes)})")
    check_image(image)
    data = np.asarray(image, dtype=np.float32)
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 2:
        raise InputError(f"bulge/disk decomposition needs one 2D plane (YX), got shape {tuple(np.shape(image))}")
    if psf_size is not None and not (np.isfinite(psf_size) and psf_size > 0):
        raise InputError(f"the PSF size must be a positive number of pixels, got {psf_size}")
    inputs = DecompositionInput.of(data, model.meta.normalization, model.meta.in_channels, psf_size)
    shares = model.architecture.predict_maps(model.net, inputs, model.meta, device=model.device,
                                             tile_size=tile_size, progress=progress, cancel=cancel)
    sky = float(inputs.image.normalizer.lo[0])
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

