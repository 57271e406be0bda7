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
(:class:`DecompositionInput`, the same for training and prediction). A user gives it as a FWHM
(``segtool predict --psf-fwhm``), or the FITS header does (:func:`header_psf_fwhm`: ``PSF_FWHM``,
``FWHM``, ``SEEING``); :class:`PsfFwhm` says which, in pixels (angles over the WCS pixel scale).

The CLI (``segtool predict astro-bulge-disk``), the napari Segment widget and
``benchmarks/bulge_disk.py`` all call :func:`decompose`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from scipy import ndimage as ndi

from napari_segtool.core.model import SegModel
from napari_segtool.core.plan import check_image
from napari_segtool.kernel.errors import InputError
from napari_segtool.kernel.events import CancelToken
from napari_segtool.kernel.meta import ModelMeta
from napari_segtool.ops.normalize import NormalizedPlane, Normalizer, fit_normalizer

__all__ = ["COMPONENTS", "Decomposition", "DecompositionInput", "PsfFwhm", "decompose", "bulge_to_total",
           "field_psf_size", "has_psf_channel", "header_psf_fwhm", "is_decomposition_model", "psf_fwhm_pixels"]

#: the components a decomposition model names, in order (``sim.bulge_disk.component_fractions``' channels)
COMPONENTS = ("bulge", "disk", "other")
#: the PSF channel holds the PSF size (:func:`field_psf_size`, pixels) over this, so it is of order 1
PSF_CHANNEL_SCALE = 2.0
#: the PSF size (pixels) assumed where an image has no source to measure it on (mid-range of training)
DEFAULT_PSF_SIZE = 1.7
#: FITS keywords giving a field's PSF FWHM, the first present wins, with the unit taken when the card's comment
#: names none (``[arcsec]``, ``pixels``...): a seeing is an angle by definition, the others are read as pixels
PSF_KEYWORDS: tuple[tuple[str, str], ...] = (("PSF_FWHM", "pix"), ("PSFFWHM", "pix"), ("FWHM", "pix"),
                                             ("SEEING", "arcsec"))


@dataclass
class Decomposition:
    """Component fluxes of one ``YX`` image, in its units, sky subtracted, on its grid (float32; NaN
    where the input is NaN): ``bulge + disk + other == image - sky``."""

    bulge: np.ndarray
    disk: np.ndarray
    other: np.ndarray
    sky: float
    psf_size: float | None = None  # the PSF sigma (pixels) a two-channel model was given, measured or not
    psf_origin: str = ""           # where it came from: a PsfFwhm's origin, "given" or "measured on the image"

    def layers(self) -> dict[str, np.ndarray]:
        """The galaxy components by name (what the CLI writes and napari shows)."""
        return {"bulge": self.bulge, "disk": self.disk}

    def psf_note(self) -> str:
        """Which PSF the model was given, for the user (empty for a model without the PSF channel)."""
        if self.psf_size is None:
            return ""
        from astropy.stats import gaussian_sigma_to_fwhm

        return f"PSF FWHM {self.psf_size * gaussian_sigma_to_fwhm:.3g} px ({self.psf_origin})"


def is_decomposition_model(model: SegModel) -> bool:
    """Whether ``model`` is a bulge/disk regression model (:func:`decompose` runs it)."""
    return (model.meta.task == "regression" and tuple(model.meta.classes) == COMPONENTS
            and model.meta.in_channels in (1, 2))


def has_psf_channel(meta: ModelMeta) -> bool:
    """Whether a model (its ``ModelMeta``: known before loading it) decomposes with the PSF size as its
    second input channel."""
    return meta.task == "regression" and tuple(meta.classes) == COMPONENTS and meta.in_channels == 2


@dataclass(frozen=True)
class PsfFwhm:
    """The PSF FWHM a field is decomposed with, in its pixels, and where it came from (said to the user)."""

    pixels: float
    origin: str  # e.g. "--psf-fwhm 1.2 arcsec", "header SEEING = 0.9 (arcsec, from its comment)"

    @property
    def sigma(self) -> float:
        """The Gaussian sigma in pixels: what :func:`decompose` takes as ``psf_size``."""
        from astropy.stats import gaussian_fwhm_to_sigma

        return self.pixels * gaussian_fwhm_to_sigma


def psf_fwhm_pixels(fwhm: Any, metadata: Mapping[str, Any]) -> float | None:
    """A FWHM (an astropy Quantity) in the image's pixels: ``pix`` as it is, an angle over the pixel scale of
    the image's celestial WCS (``metadata`` of ``read_image`` or a napari layer; the mean of its two axes);
    ``None`` for an angle without a celestial WCS, or a unit that is neither."""
    import astropy.units as u
    from astropy.wcs.utils import proj_plane_pixel_scales

    from napari_segtool.io.fits import celestial_wcs

    if fwhm.unit.is_equivalent(u.pix):
        return float(fwhm.to_value(u.pix))
    wcs = celestial_wcs(metadata) if fwhm.unit.physical_type == "angle" else None
    if wcs is None:
        return None
    scale = float(np.mean(proj_plane_pixel_scales(wcs))) * u.Unit(wcs.wcs.cunit[0] or "deg")
    return float((fwhm / scale).decompose().value)


def header_psf_fwhm(metadata: Mapping[str, Any]) -> PsfFwhm | None:
    """The PSF FWHM a FITS image's header gives (:data:`PSF_KEYWORDS`, unit from the card's comment when it
    names one), in pixels; ``None`` without such a keyword, or with one that cannot be used (not a positive
    number, an angle without a WCS)."""
    import astropy.units as u

    from napari_segtool.io.fits import fits_header

    header = fits_header(metadata)
    if header is None:
        return None
    for key, default in PSF_KEYWORDS:
        value = header.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
            continue
        comment = str(header.comments[key])
        unit = _comment_unit(comment)
        fwhm = value * (unit or u.Unit(default))
        pixels = psf_fwhm_pixels(fwhm, metadata)
        if pixels is not None and pixels > 0:
            said = f"{unit}, from its comment" if unit is not None else f"{default} assumed: its comment names no unit"
            return PsfFwhm(pixels, f"header {key} = {value:g} ({said})")
    return None


def _comment_unit(comment: str) -> Any:
    """The unit a FITS card's comment names: ``[unit]`` (the FITS standard's way), else a word such as arcsec
    or pixels; ``None`` when it names none."""
    import astropy.units as u

    bracket = re.match(r"\s*\[([^\]]+)\]", comment)
    words = [bracket.group(1)] if bracket else []
    words += re.findall(r"arcsec|arcmin|deg|pix", comment.lower())
    for word in words:
        try:
            unit = u.Unit(word.strip())
        except ValueError:
            continue
        if unit.is_equivalent(u.pix) or unit.physical_type == "angle":
            return unit
    return None


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


def decompose(model: SegModel, image: Any, *, psf_size: "float | PsfFwhm | None" = None, tile_size: int | None = None,
              progress: Any = None, cancel: CancelToken | None = None) -> Decomposition:
    """Split a 2D sky image (``YX``, or ``YXC`` with one channel) into bulge, disk and other flux.

    ``psf_size``: the PSF's sigma in pixels (about FWHM / 2.35; :func:`field_psf_size`), or a :class:`PsfFwhm`
    (its origin is kept in the result), for a model that takes it; measured on the image when not given."""
    if not is_decomposition_model(model):
        raise InputError(f"model '{model.meta.name or model.meta.arch}' is not a bulge/disk decomposition model "
                         f"(task {model.meta.task}, outputs {', '.join(model.meta.classes)})")
    check_image(image)
    data = np.asarray(image, dtype=np.float32)
    if data.ndim == 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 2:
        raise InputError(f"bulge/disk decomposition needs one 2D plane (YX), got shape {tuple(np.shape(image))}")
    origin = "given" if psf_size is not None else "measured on the image"
    if isinstance(psf_size, PsfFwhm):
        psf_size, origin = psf_size.sigma, psf_size.origin
    if psf_size is not None and not (np.isfinite(psf_size) and psf_size > 0):
        raise InputError(f"the PSF size must be a positive number of pixels, got {psf_size}")
    inputs = DecompositionInput.of(data, model.meta.normalization, model.meta.in_channels, psf_size)
    shares = model.architecture.predict_maps(model.net, inputs, model.meta, device=model.device,
                                             tile_size=tile_size, progress=progress, cancel=cancel)
    sky = float(inputs.image.normalizer.lo[0])
    flux = data - sky
    bulge, disk, other = (np.asarray(shares[k] * flux, np.float32) for k in range(3))
    if inputs.psf_value is None:
        return Decomposition(bulge, disk, other, sky)
    return Decomposition(bulge, disk, other, sky, inputs.psf_value * PSF_CHANNEL_SCALE, origin)


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

