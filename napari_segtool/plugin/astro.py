"""FITS images in the Segment widget: the source catalogue as the labels layer's features.

The Segment widget hands each finished prediction of one plane (or of its visible part) to
:func:`fits_features` before applying it. For an image read from FITS
(:func:`napari_segtool.plugin.readers.fits_layer`) it

* unlabels the pixels that are not finite (NaN / BLANK), as ``segtool predict`` does;
* measures the sources with :func:`napari_segtool.core.catalog.measure_sources`, the function
  ``segtool predict`` writes its ``_cat.ecsv`` with, RA/Dec from the image's WCS sliced to the
  predicted region (so they are true sky positions, while ``x``/``y`` stay relative to the region
  until the widget moves them into the plane);
* copies the image's FITS header and WCS into the labels layer's metadata, so saving the layer as
  ``.fits`` (:func:`napari_segtool.plugin.writers.write_labels_fits`) keeps them.

Other images get the model's own rows (``Prediction.tables``) unchanged.

A bulge/disk model with a PSF input gets the PSF FWHM of the layer's FITS header
(:func:`layer_psf_fwhm`, as ``segtool predict`` reads it), else measures it on the image.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from napari_segtool.plugin._layers import META_KEY

__all__ = ["fits_features", "is_fits_layer", "layer_psf_fwhm", "FITS_KEYS"]

#: Metadata entries of a FITS image layer that travel to its labels layer.
FITS_KEYS = ("fits_header", "wcs_header", "fits_hdu", "fits_extname", "original_shape")


def is_fits_layer(layer: Any) -> bool:
    """True for an image layer read from a FITS file by this plugin's reader."""
    meta = getattr(layer, "metadata", None) or {}
    return (meta.get(META_KEY) or {}).get("format") == "fits" and isinstance(meta.get("fits_header"), str)


def layer_psf_fwhm(layer: Any) -> Any:
    """The PSF FWHM the FITS header of an image layer gives (``core.decompose.header_psf_fwhm``: PSF_FWHM,
    FWHM, SEEING, angles over the layer's WCS pixel scale), or ``None`` (the model measures it)."""
    if not is_fits_layer(layer):
        return None
    from napari_segtool.core.decompose import header_psf_fwhm

    return header_psf_fwhm(layer.metadata)


def fits_features(image: Any, target: Any, plane: Any, crop: tuple[slice, slice] | None,
                  prediction: Any) -> list[dict[str, Any]]:
    """The rows the labels layer shows as features (see the module docstring); may change
    ``prediction.labels`` (non-finite pixels unlabelled) and ``target.metadata`` (FITS header)."""
    rows = prediction.tables.get((), [])
    if not is_fits_layer(image):
        return rows
    from napari_segtool.core.catalog import measure_sources
    from napari_segtool.io.fits import celestial_wcs, fits_header

    meta = image.metadata
    if target is not None:
        target.metadata = {**target.metadata, **{k: meta[k] for k in FITS_KEYS if k in meta}}
    if crop is None:  # a whole stack: per-plane catalogues are not made
        return rows
    data = np.asarray(plane.compute() if hasattr(plane, "compute") else plane, dtype=np.float64)
    if data.ndim == 3:  # (Y, X, C)
        data = data.mean(axis=-1)
    labels = np.asarray(prediction.labels)
    if labels.shape != data.shape:
        return rows
    wcs = celestial_wcs(meta)
    if wcs is not None:
        wcs = wcs[crop]  # astropy moves CRPIX: pixel (0, 0) of the region keeps its sky position
    header = fits_header(meta)
    gain = header.get("GAIN") if header is not None else None
    measured = measure_sources(data, labels, wcs=wcs, relabel=False, source_rows=rows,
                               gain=float(gain) if isinstance(gain, (int, float)) else None,
                               unit=header.get("BUNIT") if header is not None else None)
    prediction.labels = measured.labels.astype(labels.dtype, copy=False)
    table = measured.table
    return [{("label" if name == "id" else name): _plain(row[name]) for name in table.colnames} for row in table]


def _plain(value: Any) -> Any:
    """A table cell as a Python scalar (napari's features table is a DataFrame)."""
    return value.item() if hasattr(value, "item") else value
