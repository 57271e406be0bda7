"""A source catalogue as astronomers write one: photutils photometry on a segmentation map.

:func:`measure_sources` takes an image (``YX``, raw units), its segmentation and optionally the
image's celestial WCS and gain, and returns the map made ready to publish plus an
:class:`astropy.table.Table` with one row per source:

* the map: pixels that are not finite (NaN, inf, FITS ``BLANK``) are unlabelled (0), and ids are
  made consecutive (``1..N``, SExtractor's ``NUMBER``) unless ``relabel=False``;
* the sky: photutils ``Background2D`` (median in 64-pixel boxes, 3-sigma clipped, sources and
  invalid pixels masked, 3x3 median-filtered) where the image holds at least two boxes a side and
  enough sky, else one sigma-clipped level and RMS for the whole image
  (:func:`astropy.stats.sigma_clipped_stats`); ``Table.meta["BKGMETH"]`` says which;
* the per-source error: the sky RMS, plus the sources' own Poisson noise when the gain (electrons
  per data unit) is known (:func:`photutils.utils.calc_total_error`);
* the measurements: :class:`photutils.segmentation.SourceCatalog` on the sky-subtracted image.

Columns: ``id``; ``x``, ``y`` (flux-weighted centroid in pixels, **0-based**: the centre of the
first pixel is (0, 0); add 1 for FITS/DS9 pixel coordinates); ``ra``, ``dec`` (degrees, ICRS,
from the WCS at the centroid; only with a celestial WCS); ``flux``, ``flux_err`` (sum of the
sky-subtracted pixels of the footprint and its 1-sigma error, in the image's unit); ``snr``
(``flux / flux_err``); ``a``, ``b`` (RMS extent along the major and minor axes, pixels: SExtractor's
``A_IMAGE``/``B_IMAGE``); ``theta`` (major axis angle in [-90, 90) degrees, counter-clockwise from +x);
``ellipticity`` (``1 - b/a``); ``area`` (unmasked footprint pixels); ``peak`` (highest
sky-subtracted pixel); ``background`` (mean sky under the footprint); and, when the model's own
source table gives them (``ops.sources.source_table``, a star/galaxy classifier in its metadata),
``p_star`` and ``class``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from napari_segtool.kernel.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from astropy.table import Table
    from astropy.wcs import WCS

__all__ = ["Background", "SourceMeasurement", "estimate_background", "publishable_labels", "measure_sources",
           "BOX_SIZE"]

#: Edge of the boxes in which ``Background2D`` measures the sky (pixels).
BOX_SIZE = 64


@dataclass
class Background:
    """The sky under an image: level and RMS (arrays of the image's shape, or scalars) and how."""

    level: np.ndarray | float
    rms: np.ndarray | float
    method: str


@dataclass
class SourceMeasurement:
    """What :func:`measure_sources` returns: the map as published, the catalogue and the sky used."""

    labels: np.ndarray
    table: "Table"
    background: Background


def _global_background(image: np.ndarray, sky: np.ndarray) -> Background:
    from astropy.stats import sigma_clipped_stats

    values = image[sky]
    where = "outside the sources"
    if values.size < 10:  # a region filled by one source: its own pixels, clipped, are the best left
        values, where = image[np.isfinite(image)], "of every valid pixel (too little sky outside the sources)"
    if values.size == 0:
        return Background(0.0, 1.0, "none: the image has no valid pixel")
    _, median, std = sigma_clipped_stats(values, sigma=3.0)
    return Background(float(median), float(std) if std > 0 else 1.0,
                      f"global sigma-clipped median and standard deviation (3 sigma) {where}")


def estimate_background(image: np.ndarray, labels: np.ndarray, box_size: int = BOX_SIZE) -> Background:
    """The sky level and RMS of ``image`` outside the sources of ``labels`` (see the module docstring)."""
    from photutils.background import Background2D, MedianBackground

    valid = np.isfinite(image)
    sky = valid & (labels == 0)
    if min(image.shape) >= 2 * box_size:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # photutils' notes on masked boxes
                bkg = Background2D(np.where(valid, image, 0.0), box_size, mask=~sky, filter_size=3,
                                   exclude_percentile=50.0, bkg_estimator=MedianBackground())
            return Background(np.asarray(bkg.background), np.asarray(bkg.background_rms),
                              f"photutils Background2D: median in {box_size}-pixel boxes, 3-sigma clipped, "
                              f"sources masked, 3x3 median filter")
        except ValueError:  # too few sky boxes (a crowded or small field): one level for the image
            pass
    return _global_background(image, sky)


def publishable_labels(labels: np.ndarray, image: np.ndarray,
                       relabel: bool = True) -> tuple[np.ndarray, dict[int, int]]:
    """``labels`` with non-finite pixels of ``image`` set to 0 and, with ``relabel``, ids made
    consecutive from 1; returns them and the map old id -> new id (of the ids that remain)."""
    from skimage.segmentation import relabel_sequential

    labels = np.where(np.isfinite(image), labels, 0)
    if not relabel:
        ids = np.unique(labels[labels > 0])
        return labels, {int(i): int(i) for i in ids}
    new, forward, _ = relabel_sequential(labels)
    old_ids = np.unique(labels[labels > 0])
    return new.astype(np.int32, copy=False), dict(zip(old_ids.tolist(), forward[old_ids].tolist()))


def _flux_unit(unit: Any) -> Any:
    """An astropy unit for the image's ``BUNIT`` text, or ``None`` when astropy cannot parse it."""
    import astropy.units as u

    if unit in (None, ""):
        return None
    try:
        parsed = u.Unit(str(unit), parse_strict="raise")
        return parsed if parsed != u.dimensionless_unscaled else None
    except ValueError:
        return None


def measure_sources(image: Any, labels: Any, *, wcs: "WCS | None" = None, gain: float | None = None,
                    unit: str | None = None, source_rows: Sequence[dict[str, Any]] = (),
                    relabel: bool = True, meta: dict[str, Any] | None = None) -> SourceMeasurement:
    """Measure every source of ``labels`` on ``image`` (both ``YX``); see the module docstring.

    ``wcs`` is a celestial WCS of the image (``io.fits.celestial_wcs``); ``gain`` in electrons per
    data unit adds Poisson noise to the errors; ``unit`` is the image's ``BUNIT``; ``source_rows``
    are the model's own rows for these labels (``Prediction.tables``), whose ``p_star``/``class``
    are carried over by id; ``meta`` goes into the table's metadata.
    """
    import astropy.units as u
    from astropy.table import Table
    from photutils.segmentation import SegmentationImage, SourceCatalog
    from photutils.utils import calc_total_error

    image = np.asarray(image.compute() if hasattr(image, "compute") else image, dtype=np.float64)
    labels = np.asarray(labels.compute() if hasattr(labels, "compute") else labels)
    if image.ndim != 2 or image.shape != labels.shape:
        raise InputError(f"a catalogue needs a YX image and labels of one shape, got {image.shape} and {labels.shape}")
    labels, new_id = publishable_labels(labels, image, relabel=relabel)
    background = estimate_background(image, labels)
    valid = np.isfinite(image)
    data = np.where(valid, image - background.level, 0.0)
    rms = np.broadcast_to(np.asarray(background.rms, dtype=np.float64), image.shape)
    error = calc_total_error(data, rms, float(gain)) if gain and gain > 0 else np.array(rms)
    table = Table(meta={"BKGMETH": background.method, "PIXORIGN": 0, **(meta or {})})
    if new_id:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # photutils' notes on masked/NaN pixels
            cat = SourceCatalog(data, SegmentationImage(labels), error=error, mask=~valid,
                                background=np.broadcast_to(np.asarray(background.level, np.float64), image.shape),
                                wcs=wcs)
        _fill(table, cat, wcs, _flux_unit(unit))
        _carry_classes(table, source_rows, new_id)
    else:
        for name in ("id", "x", "y", "flux", "flux_err", "snr", "area"):
            table[name] = np.zeros(0, dtype=np.int64 if name in ("id", "area") else np.float64)
    table["x"].unit = table["y"].unit = u.pix
    return SourceMeasurement(labels, table, background)


def _fill(table: "Table", cat: Any, wcs: Any, flux_unit: Any) -> None:
    """The catalogue's columns from a photutils ``SourceCatalog`` (units and descriptions attached)."""
    import astropy.units as u

    def column(name: str, values: Any, unit: Any = None, description: str = "") -> None:
        table[name] = np.asarray(getattr(values, "value", values))
        if unit is not None:
            table[name].unit = unit
        table[name].description = description

    column("id", np.asarray(cat.label, dtype=np.int64), None, "segmentation id (value of its pixels in the map)")
    column("x", _prop(cat, "x_centroid", "xcentroid"), u.pix, "flux-weighted centroid, column, 0-based (DS9: x + 1)")
    column("y", _prop(cat, "y_centroid", "ycentroid"), u.pix, "flux-weighted centroid, row, 0-based (DS9: y + 1)")
    if wcs is not None:
        sky = wcs.pixel_to_world(table["x"], table["y"]).icrs
        column("ra", sky.ra.deg, u.deg, "right ascension of the centroid (ICRS, from the image's WCS)")
        column("dec", sky.dec.deg, u.deg, "declination of the centroid (ICRS, from the image's WCS)")
    flux = np.asarray(cat.segment_flux, np.float64)
    err = np.asarray(_prop(cat, "segment_flux_err", "segment_fluxerr"), np.float64)
    column("flux", flux, flux_unit, "sum of the sky-subtracted pixels of the footprint")
    column("flux_err", err, flux_unit, "1-sigma error of flux (sky RMS, plus Poisson noise when GAIN is known)")
    with np.errstate(divide="ignore", invalid="ignore"):
        column("snr", np.where(err > 0, flux / err, np.nan), None, "signal-to-noise ratio, flux / flux_err")
    column("a", _prop(cat, "semimajor_axis", "semimajor_sigma"), u.pix, "RMS extent along the major axis (A_IMAGE)")
    column("b", _prop(cat, "semiminor_axis", "semiminor_sigma"), u.pix, "RMS extent along the minor axis (B_IMAGE)")
    theta = (np.asarray(getattr(cat.orientation, "value", cat.orientation)) + 90.0) % 180.0 - 90.0
    column("theta", theta, u.deg, "major axis angle in [-90, 90), counter-clockwise from +x (SExtractor THETA_IMAGE)")
    column("ellipticity", cat.ellipticity, None, "1 - b/a")
    column("area", np.asarray(getattr(cat.area, "value", cat.area)).astype(np.int64), u.pix ** 2,
           "unmasked pixels of the footprint")
    column("peak", cat.max_value, flux_unit, "highest sky-subtracted pixel of the footprint")
    column("background", cat.background_mean, flux_unit, "mean sky level under the footprint (subtracted)")


def _prop(cat: Any, name: str, old: str) -> Any:
    """A ``SourceCatalog`` property by its photutils 3 name, or its older name (photutils < 3)."""
    return getattr(cat, name if hasattr(type(cat), name) else old)


def _carry_classes(table: "Table", rows: Sequence[dict[str, Any]], new_id: dict[int, int]) -> None:
    """``p_star`` and ``class`` of the model's source rows, by (renumbered) id."""
    found = {new_id[int(r["label"])]: r for r in rows if "p_star" in r and int(r.get("label", 0)) in new_id}
    if not found:
        return
    ids = [int(i) for i in table["id"]]
    table["p_star"] = [float(found[i]["p_star"]) if i in found else np.nan for i in ids]
    table["p_star"].description = "probability that the source is a star (the model's star/galaxy classifier)"
    table["class"] = [str(found[i].get("class", "")) if i in found else "" for i in ids]
    table["class"].description = "star or galaxy (p_star >= 0.5)"
