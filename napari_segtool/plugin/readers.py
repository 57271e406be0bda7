"""npe2 reader: TIFF / OME-TIFF / ImageJ, FITS, Zarr / OME-Zarr via :func:`napari_segtool.io.images.read_image`.

Axes become the layer's axis labels, pixel sizes its scale. A channel axis that
is not RGB(A) is moved to the front, so labels (which have no channel axis)
line up with the image's remaining dimensions in napari. FITS images keep their
header and WCS in the layer metadata; NaN pixels stay NaN (the core ignores
them) and the contrast uses astronomy's zscale. Zarr folders are always read
lazily (dask); the labels a batch run wrote (``predict_to_zarr``) open as a
Labels layer.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from napari_segtool.plugin._layers import META_KEY

TIFF_PATTERNS = (".tif", ".tiff", ".btf")
FITS_PATTERNS = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
ZARR_PATTERNS = (".zarr",)
LAZY_BYTES = 1 << 30  # files above 1 GiB are read lazily (dask)


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """Return a reader for the paths we understand, else ``None`` (napari tries other readers)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not paths:
        return None
    if not all(str(p).rstrip("/\\").lower().endswith(TIFF_PATTERNS + FITS_PATTERNS + ZARR_PATTERNS)
               for p in paths):
        return None
    return read_layers


def read_layers(path: str | list[str]) -> list[tuple]:
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers = []
    for p in paths:
        layers.extend(read_one(p))
    return layers


def read_one(path: str | os.PathLike) -> list[tuple]:
    from napari_segtool.io.images import read_image

    path = Path(path)
    try:
        lazy = path.stat().st_size > LAZY_BYTES
    except OSError:
        lazy = False
    image = read_image(path, lazy=lazy)  # ImageReadError: napari shows the message
    if image.metadata.get("format") == "fits":
        return [fits_layer(image)]
    if image.metadata.get("format") == "zarr" and _is_batch_labels(path):
        return [batch_labels_layer(image)]
    if image.metadata.get("format") == "ome-zarr":
        from napari_segtool.io.ome_zarr import is_ome_zarr_labels

        if is_ome_zarr_labels(path):  # NGFF labels (``segtool predict --out x.ome.zarr``)
            return [batch_labels_layer(image)]
    return [image_layer(image)]


def _is_batch_labels(path: Path) -> bool:
    """True for a zarr array written by :func:`napari_segtool.core.batch.predict_to_zarr`."""
    import zarr

    try:
        attrs = dict(zarr.open(str(path), mode="r").attrs)
    except Exception:
        return False
    return "n_objects" in attrs and attrs.get("task") in ("instance", "semantic")


def batch_labels_layer(image: Any) -> tuple:
    """Layer data tuple for batch labels: the lazy (dask) array as a Labels layer."""
    meta = {META_KEY: {"axes": image.axes, "source": str(image.path) if image.path else None,
                       "format": "zarr"}}
    scale = image.scale_for() if image.metadata.get("scale") else None
    name = Path(image.path).name.split(".")[0] if image.path else "labels"
    kwargs: dict[str, Any] = dict(name=name, metadata=meta)
    if scale:
        kwargs["scale"] = scale
    return (image.data, kwargs, "labels")


def _units(image: Any, axes: str) -> tuple | None:
    units = image.metadata.get("units") or {}
    if not units:
        return None
    try:
        import pint

        reg = pint.get_application_registry()
        out = []
        for a in axes:
            u = units.get(a)
            u = {"µm": "micrometer", "um": "micrometer", "micron": "micrometer", "nm": "nanometer",
                 "s": "second", "sec": "second", "ms": "millisecond", "min": "minute"}.get(u, u)
            out.append(str(reg.Unit(u)) if u else "pixel")
        return tuple(out)
    except Exception:
        return None


def image_layer(image: Any, name: str | None = None) -> tuple:
    """Layer data tuple for a microscopy image (``ImageData``)."""
    data, axes = image.data, image.axes
    rgb = False
    if "C" in axes:
        c = axes.index("C")
        n = data.shape[c]
        if c == len(axes) - 1 and n in (3, 4) and np.dtype(data.dtype) == np.uint8:
            rgb = True
        elif c != 0:
            data = np.moveaxis(data, c, 0) if isinstance(data, np.ndarray) else data.transpose(
                [c] + [i for i in range(data.ndim) if i != c])
            axes = "C" + axes.replace("C", "")
    shown = axes[:-1] if rgb else axes
    scale = tuple(float(image.metadata.get("scale", {}).get(a, 1.0)) for a in shown)
    meta = {k: v for k, v in image.metadata.items()}
    meta[META_KEY] = {"axes": axes, "source": str(image.path) if image.path else None,
                      "format": image.metadata.get("format")}
    kwargs: dict[str, Any] = dict(name=Path(image.path).name.split(".")[0] if image.path and not name else name,
                                  rgb=rgb, scale=scale, metadata=meta, axis_labels=tuple(a.lower() for a in shown))
    units = _units(image, shown)
    if units:
        kwargs["units"] = units
    if not rgb and np.dtype(data.dtype).kind == "f":
        limits = _finite_limits(data)
        if limits:
            kwargs["contrast_limits"] = limits
    return (data, kwargs, "image")


def _finite_limits(data: Any, zscale: bool = False) -> tuple[float, float] | None:
    """Contrast limits from a subsample, ignoring NaN/inf (zscale for astronomy)."""
    from napari_segtool.ops.normalize import _subsample

    sample = np.asarray(_subsample(data, 1_000_000), dtype=np.float32).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return None
    if zscale:
        try:
            from astropy.visualization import ZScaleInterval

            lo, hi = ZScaleInterval().get_limits(sample)
        except Exception:
            lo, hi = np.percentile(sample, [1, 99.5])
    else:
        lo, hi = np.percentile(sample, [0.1, 99.9])
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def fits_layer(image: Any, name: str | None = None) -> tuple:
    """Layer data tuple for a FITS image: header + WCS in metadata, zscale contrast."""
    data, axes = image.data, image.axes
    meta = {k: v for k, v in image.metadata.items()}
    wcs_text = meta.get("wcs_header")
    if wcs_text:
        try:
            from astropy.wcs import WCS

            from napari_segtool.io.fits import header_from_text

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                meta["wcs"] = WCS(header_from_text(wcs_text))
        except Exception:  # an unusable WCS is simply not attached
            pass
    meta[META_KEY] = {"axes": axes, "source": str(image.path) if image.path else None, "format": "fits"}
    nan = int(np.count_nonzero(~np.isfinite(np.asarray(data)))) if isinstance(data, np.ndarray) else None
    if nan:
        meta[META_KEY]["non_finite_pixels"] = nan
    kwargs: dict[str, Any] = dict(
        name=name or (Path(image.path).name.split(".")[0] if image.path else "fits"),
        metadata=meta, colormap="gray", axis_labels=tuple(a.lower() for a in axes))
    limits = _finite_limits(data, zscale=True)
    if limits:
        kwargs["contrast_limits"] = limits
    return (data, kwargs, "image")
