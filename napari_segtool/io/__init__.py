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
# read_image & co. are imported on first use (PEP 562): ``images`` imports tifffile (0.1-0.5 s), and the
# project store, which the plugin's widgets import on napari's GUI thread, needs only the atomic writers
_IMAGES = ("FITS_SUFFIXES", "TIFF_SUFFIXES", "ImageData", "ImageReadError", "image_format", "read_image",
           "read_labels", "write_labels")


def __getattr__(name: str):
    if name in _IMAGES:
        from . import images

        return getattr(images, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
