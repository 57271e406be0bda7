"""File input/output: images in (TIFF, FITS, Zarr, NPY), labels out, crash-safe writes.

The core stays free of Qt and napari; this package only needs NumPy, tifffile,
and (lazily imported) astropy, zarr and dask.
"""

from .atomic import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_write_tiff,
)
from .images import (
    FITS_SUFFIXES,
    TIFF_SUFFIXES,
    ImageData,
    ImageReadError,
    image_format,
    read_image,
    read_labels,
    write_labels,
)

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_tiff",
    "FITS_SUFFIXES",
    "TIFF_SUFFIXES",
    "ImageData",
    "ImageReadError",
    "image_format",
    "read_image",
    "read_labels",
    "write_labels",
]
