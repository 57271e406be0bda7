"""FITS products of a segmentation: the segmentation image and the source catalogue files.

Reading a FITS image (any HDU, ``hdu=``) is :func:`napari_segtool.io.images.read_image`; it keeps
the header of the HDU it read as text in ``metadata["fits_header"]`` and a cleaned WCS header in
``metadata["wcs_header"]``. This module turns that metadata back into astropy objects and writes:

* the segmentation map as SExtractor writes its ``SEGMENTATION`` check-image: one primary HDU,
  32-bit integers (``BITPIX = 32``), 0 for sky and unlabelled pixels, ``N`` for catalogue id ``N``,
  under the input HDU's own header (WCS and all other keywords kept; the keywords that describe
  the input's *pixel values* -- ``BUNIT``, ``BSCALE``/``BZERO``/``BLANK``, ``DATAMIN``/``DATAMAX``,
  checksums -- are dropped because they are not true of labels), so DS9 and astropy overlay it on
  the image pixel for pixel;
* a catalogue (an :class:`astropy.table.Table`) as ECSV or as a FITS binary table, chosen by suffix;
* a float image in the input's units under its header (:func:`write_image`: bulge and disk images).

Every file is written atomically (:func:`napari_segtool.io.atomic.atomic_write`).
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from ..kernel.errors import InputError, OutputError
from .atomic import atomic_write, atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from astropy.io.fits import Header
    from astropy.table import Table
    from astropy.wcs import WCS

__all__ = ["fits_header", "header_from_text", "celestial_wcs", "segmentation_hdu", "write_segmentation",
           "write_table", "write_image", "SEGMENTATION_DROPPED", "TABLE_SUFFIXES"]

#: Keywords of the input header that describe its pixel values or its place in the file, not labels.
SEGMENTATION_DROPPED = ("BUNIT", "BSCALE", "BZERO", "BLANK", "DATAMIN", "DATAMAX", "CHECKSUM", "DATASUM",
                        "XTENSION", "PCOUNT", "GCOUNT", "EXTEND")
#: Catalogue formats :func:`write_table` writes, by suffix.
TABLE_SUFFIXES = (".ecsv", ".fits")


def header_from_text(text: str) -> "Header":
    """A header from ``Header.tostring`` text, with or without newlines between the cards."""
    from astropy.io.fits import Header

    return Header.fromstring(text, sep="\n" if "\n" in text else "")


#: Primary-header keywords an inheriting extension never takes (they describe the primary HDU itself).
_NOT_INHERITED = ("SIMPLE", "BITPIX", "NAXIS", "EXTEND", "COMMENT", "HISTORY", "", "CHECKSUM", "DATASUM", "INHERIT")


def fits_header(metadata: Mapping[str, Any]) -> "Header | None":
    """The header of the HDU an image was read from (``read_image`` metadata), or ``None``.

    An extension with ``INHERIT = T`` (HST, JWST) gets the primary header's keywords it lacks
    (``TELESCOP``, ``DATE-OBS``, ``GAIN``...), as the FITS inheritance convention means.
    """
    text = metadata.get("fits_header")
    if not isinstance(text, str) or not text:
        return None
    header = header_from_text(text)
    primary = metadata.get("fits_primary_header")
    if isinstance(primary, str) and primary:
        for card in header_from_text(primary).cards:
            key = card.keyword
            if key not in header and key not in _NOT_INHERITED and not key.startswith("NAXIS"):
                header.append(card)
    return header


def celestial_wcs(metadata: Mapping[str, Any]) -> "WCS | None":
    """The image's celestial WCS (RA/Dec, galactic... axes) when its header has one, else ``None``.

    Only a WCS whose two celestial axes are the image's own X and Y (FITS axes 1 and 2) counts:
    a spectral cube's celestial part is still returned, a position-velocity slice is not.
    """
    from astropy.wcs import WCS

    text = metadata.get("wcs_header")
    if not isinstance(text, str) or not text:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header_from_text(text))
    except Exception:  # an unusable WCS is no WCS
        return None
    if not wcs.has_celestial or sorted((wcs.wcs.lng, wcs.wcs.lat)) != [0, 1]:
        return None
    return wcs.celestial


def segmentation_hdu(labels: Any, metadata: Mapping[str, Any], cards: Mapping[str, Any] | None = None):
    """A primary HDU holding ``labels`` as int32 under the input's header (see the module docstring).

    ``labels`` take the input HDU's own shape when they only lack its degenerate axes (radio cubes
    read as 2D); ``cards`` are added as keywords (values, or ``(value, comment)`` pairs).
    """
    arr = np.asarray(labels.compute() if hasattr(labels, "compute") else labels)
    if arr.dtype.kind not in "biu":
        raise InputError(f"a segmentation map holds integer ids, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > np.iinfo(np.int32).max):
        raise InputError(f"segmentation ids must lie in 0..{np.iinfo(np.int32).max}, got {arr.min()}..{arr.max()}")
    return _product_hdu(arr.astype(np.int32, copy=False), metadata, SEGMENTATION_DROPPED, cards)


def _product_hdu(arr: np.ndarray, metadata: Mapping[str, Any], dropped: tuple[str, ...],
                 cards: Mapping[str, Any] | None):
    """A primary HDU of ``arr`` (in the input HDU's shape) under the input's header less ``dropped``, plus ``cards``."""
    from astropy.io import fits

    original = tuple(metadata.get("original_shape") or ())
    if original and arr.shape != original and int(np.prod(original)) == arr.size:
        arr = arr.reshape(original)
    header = fits_header(metadata)
    header = header.copy() if header is not None else fits.Header()
    for key in dropped:
        header.remove(key, ignore_missing=True, remove_all=True)
    for key, value in (cards or {}).items():
        header[key] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # astropy's notes on the keywords it rewrites (NAXISn, BITPIX)
        return fits.PrimaryHDU(arr, header=header)


def write_image(path: str | os.PathLike, data: Any, metadata: Mapping[str, Any],
                cards: Mapping[str, Any] | None = None) -> Path:
    """Write a float32 image in the input's units (a bulge or disk flux image) atomically under the input HDU's
    header: WCS, ``BUNIT`` and the rest kept; the keywords of its stored encoding (``BSCALE``/``BZERO``/``BLANK``,
    ``DATAMIN``/``DATAMAX``, checksums, extension keywords) dropped. Returns the path."""
    arr = np.asarray(data.compute() if hasattr(data, "compute") else data, dtype=np.float32)
    hdu = _product_hdu(arr, metadata, tuple(k for k in SEGMENTATION_DROPPED if k != "BUNIT"), cards)
    return atomic_write(Path(path), lambda fh: hdu.writeto(fh, output_verify="silentfix"))


def write_segmentation(path: str | os.PathLike, labels: Any, metadata: Mapping[str, Any],
                       cards: Mapping[str, Any] | None = None) -> Path:
    """Write :func:`segmentation_hdu` to ``path`` atomically; returns the path."""
    hdu = segmentation_hdu(labels, metadata, cards)
    return atomic_write(Path(path), lambda fh: hdu.writeto(fh, output_verify="silentfix"))


def write_table(table: "Table", path: str | os.PathLike) -> Path:
    """Write a catalogue atomically: ``.ecsv`` (units, descriptions and meta in its YAML header) or
    ``.fits`` (an empty primary HDU and a binary table; units as ``TUNITn``, in astropy's generic
    notation where the FITS standard has no name for them, e.g. ``electron / s``)."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".ecsv"):
        buffer = io.StringIO()
        table.write(buffer, format="ascii.ecsv")
        return atomic_write_text(path, buffer.getvalue())
    if name.endswith(".fits"):
        from astropy.io import fits

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # long meta keys become HIERARCH cards
            hdu = fits.table_to_hdu(table)
        for i, col in enumerate(table.itercols(), start=1):  # astropy drops units FITS does not name
            if col.unit is not None and f"TUNIT{i}" not in hdu.header:  # (electron): keep them as text
                hdu.header.set(f"TUNIT{i}", col.unit.to_string(), after=f"TFORM{i}")
        hdul = fits.HDUList([fits.PrimaryHDU(), hdu])
        return atomic_write(path, lambda fh: hdul.writeto(fh))
    raise OutputError(f"cannot write a catalogue to {path}: use one of {', '.join(TABLE_SUFFIXES)}")
