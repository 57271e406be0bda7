"""Reading images and writing label images, for microscopy and astronomy formats.

Supported inputs (chosen by extension):

* TIFF, OME-TIFF, ImageJ hyperstacks (``.tif``, ``.tiff``, ``.btf``) via
  :mod:`tifffile`; axes and pixel sizes come from the file's metadata.
* FITS (``.fits``, ``.fit``, ``.fts``, optionally ``.gz``) via
  :mod:`astropy.io.fits`; the header and a WCS header are kept.
* Zarr and OME-Zarr folders (``.zarr``) via :mod:`zarr`, always lazy.
* NumPy ``.npy`` files.

Every reader returns an :class:`ImageData` whose ``axes`` describe ``data``
as stored (with ``S`` mapped to ``C``); reorder it for processing with
:func:`napari_segtool.kernel.axes.to_canonical`.  Every failure is an
:class:`ImageReadError` with a one-line message naming the file.

Label images are written atomically (see :mod:`napari_segtool.io.atomic`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import tifffile

from ..kernel.axes import AxesError, guess_axes, normalize_axes
from ..kernel.errors import InputError, OutputError
from .atomic import atomic_write, atomic_write_tiff, clean_stale_temps, replace_dir, temp_prefix

if TYPE_CHECKING:  # pragma: no cover
    import dask.array

    ArrayLike = Union[np.ndarray, dask.array.Array]

__all__ = [
    "ImageReadError",
    "ImageData",
    "read_image",
    "read_labels",
    "write_labels",
    "image_format",
    "TIFF_SUFFIXES",
    "FITS_SUFFIXES",
]

TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
_UNKNOWN = "?"


class ImageReadError(InputError):
    """An image could not be read: missing, unsupported, corrupt or unusable."""


@dataclass
class ImageData:
    """An image as read from disk.

    Attributes
    ----------
    data
        NumPy array, or a Dask array when read lazily (always for Zarr).
    axes
        Axes of ``data`` as stored, one letter per dimension from ``TZYXC``
        (e.g. ``"ZYX"``, ``"YXC"``, ``"TZCYX"``), from the file's metadata or
        :func:`~napari_segtool.kernel.axes.guess_axes`.
    metadata
        ``source`` (path string) and ``format`` always; ``scale`` and
        ``units`` (dicts keyed by axis letter) when the file gives pixel sizes;
        for FITS ``fits_header`` (text), ``fits_header_dict``, ``fits_hdu`` and
        ``wcs_header`` (when a valid WCS exists), and ``fits_primary_header`` when the HDU
        is an extension with ``INHERIT = T``; ``axes_source`` says whether
        the axes came from the ``"file"``, the ``"user"`` or a ``"guess"``.
    path
        Where the image came from, or ``None``.
    """

    data: ArrayLike
    axes: str
    metadata: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def is_lazy(self) -> bool:
        """True when ``data`` is a Dask array (nothing loaded yet)."""
        return not isinstance(self.data, np.ndarray)

    def scale_for(self, axes: str | None = None) -> tuple[float, ...]:
        """Pixel sizes in the order of ``axes`` (default: ``self.axes``), 1.0 where unknown."""
        scale = self.metadata.get("scale") or {}
        return tuple(float(scale.get(a, 1.0)) for a in normalize_axes(axes or self.axes))

    def pixel_size_in(self, unit: Any) -> float | None:
        """The X pixel size expressed in ``unit`` (an astropy length unit), when the file gives one."""
        import astropy.units as u

        size = (self.metadata.get("scale") or {}).get("X")
        file_unit = (self.metadata.get("units") or {}).get("X")
        if not size or not file_unit:
            return None
        try:
            value = float((float(size) * u.Unit(str(file_unit))).to_value(unit))
        except (ValueError, TypeError, u.UnitsError):
            return None
        return value if value > 0 else None

    def z_anisotropy(self) -> float | None:
        """Z voxel size / X pixel size when the file gives both in one unit, else ``None``.

        Files that only carry a Z spacing (or sizes in different units, e.g. a
        default "inch" resolution next to a micron spacing) say nothing reliable.
        """
        scale = self.metadata.get("scale") or {}
        units = self.metadata.get("units") or {}
        if "Z" not in scale or "X" not in scale or units.get("Z") != units.get("X"):
            return None
        ratio = float(scale["Z"]) / float(scale["X"]) if float(scale["X"]) > 0 else 0.0
        return ratio if 0.05 <= ratio <= 50 else None


# --------------------------------------------------------------------------- helpers


def _fail(path: Path | str, reason: str) -> ImageReadError:
    """The one standard error message: ``cannot read <path>: <reason>``."""
    reason = " ".join(str(reason).split())  # one line
    return ImageReadError(f"cannot read {path}: {reason}")


def _reason(exc: BaseException) -> str:
    """A short description of a library exception."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def image_format(path: str | os.PathLike) -> str:
    """The reader for ``path``: ``"tiff"``, ``"fits"``, ``"zarr"`` or ``"npy"``.

    Raises :class:`ImageReadError` for an unknown extension.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    if name.endswith(FITS_SUFFIXES):
        return "fits"
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(".zarr") or (
        path.is_dir() and any((path / m).exists() for m in (".zarray", ".zgroup", "zarr.json"))
    ):
        return "zarr"
    raise _fail(
        path,
        f"unknown file type {''.join(path.suffixes) or '(no extension)'!r}; "
        "supported: .tif/.tiff, .fits/.fit/.fts(.gz), .zarr, .npy",
    )


def _check_data(path: Path, data: Any) -> None:
    """Reject empty arrays and dtypes the pipeline cannot use (complex, text, objects)."""
    if 0 in tuple(data.shape) or data.ndim == 0:
        raise _fail(path, f"the image is empty (shape {tuple(data.shape)})")
    dtype = np.dtype(data.dtype)
    if dtype.kind not in "biuf":
        raise _fail(path, f"unsupported pixel type {dtype} (need integer, float or bool)")


def _resolve_axes(path: Path, shape: tuple[int, ...], file_axes: str | None, user_axes: str | None):
    """Pick the axes: the user's (validated), else the file's, else a guess.

    ``file_axes`` may contain ``?`` for dimensions the file does not name
    (tifffile's ``Q``/``I``...); one unknown becomes ``Z`` (``T`` if ``Z`` is
    taken), two become ``T`` and ``Z``.  If the file's axes still do not form
    a valid axes string, they are guessed from the shape.
    Returns ``(axes, source)``.
    """
    try:
        if user_axes is not None:
            return guess_axes(shape, user_axes), "user"
        if file_axes:
            known = file_axes.replace(_UNKNOWN, "")
            free = [a for a in "TZ" if a not in known]
            n_unknown = file_axes.count(_UNKNOWN)
            if n_unknown <= len(free):
                fill = iter(free[len(free) - n_unknown :])
                filled = "".join(next(fill) if a == _UNKNOWN else a for a in file_axes)
                try:
                    return guess_axes(shape, filled), "file"
                except AxesError:
                    pass
        return guess_axes(shape), "guess"
    except AxesError as exc:
        raise _fail(path, str(exc)) from None


def _tifffile_axes(axes: str) -> str:
    """Map tifffile's axis letters to ours: ``S`` -> ``C``, letters we lack -> ``?``."""
    return "".join(
        "C" if a == "S" else (a if a in "TZYXC" else _UNKNOWN) for a in axes.upper()
    )


def _json_safe(value: Any) -> Any:
    """Turn NumPy scalars / arrays and odd objects into JSON-friendly values."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


# --------------------------------------------------------------------------- TIFF


def _imagej_scale(tif: tifffile.TiffFile) -> tuple[dict, dict]:
    """Pixel sizes of an ImageJ file: X/Y from the resolution tags, Z spacing, T interval."""
    ij = tif.imagej_metadata or {}
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    page = tif.pages.first if hasattr(tif.pages, "first") else tif.pages[0]
    for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
        t = page.tags.get(tag)
        if t is not None:
            num, den = t.value
            if num and den:
                scale[axis] = den / num  # tag is pixels per unit
    if ij.get("spacing"):
        scale["Z"] = float(ij["spacing"])
    if ij.get("finterval"):
        scale["T"] = float(ij["finterval"])
        units["T"] = str(ij.get("tunit", "s"))
    unit = ij.get("unit")
    if unit and unit not in ("pixel", "pixels"):
        unit = str(unit).replace("\\u00B5", "µ").replace("micron", "µm")
        for axis in "XYZ":
            if axis in scale:
                units[axis] = ij.get("zunit", unit) if axis == "Z" else unit
    return scale, units


def _ome_scale(tif: tifffile.TiffFile) -> tuple[dict, dict]:
    """Pixel sizes of the first OME image: PhysicalSizeX/Y/Z and TimeIncrement."""
    ome = tifffile.xml2dict(tif.ome_metadata or "").get("OME", {})
    image = ome.get("Image", {})
    if isinstance(image, list):
        image = image[0] if image else {}
    pixels = image.get("Pixels", {}) if isinstance(image, dict) else {}
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    for axis, key in (("X", "PhysicalSizeX"), ("Y", "PhysicalSizeY"), ("Z", "PhysicalSizeZ"), ("T", "TimeIncrement")):
        if key in pixels:
            try:
                scale[axis] = float(pixels[key])
            except (TypeError, ValueError):
                continue
            units[axis] = str(pixels.get(key + "Unit", "s" if axis == "T" else "µm"))
    return scale, units


def _shaped_scale(tif: tifffile.TiffFile) -> tuple[dict, dict]:
    """Scale stored by :func:`write_labels` in tifffile's JSON (shaped) description."""
    shaped = (tif.shaped_metadata or ({},))[0] or {}
    scale = {str(k): float(v) for k, v in (shaped.get("scale") or {}).items()}
    units = {str(k): str(v) for k, v in (shaped.get("units") or {}).items()}
    return scale, units


def _read_tiff(path: Path, axes: str | None, lazy: bool) -> ImageData:
    """TIFF / OME-TIFF / ImageJ via tifffile; lazy through its zarr store."""
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise _fail(path, "the TIFF file has no image series")
        series = tif.series[0]
        file_axes = _tifffile_axes(series.axes)
        shape = tuple(series.shape)
        if tif.is_ome:
            scale, units = _ome_scale(tif)
        elif tif.is_imagej:
            scale, units = _imagej_scale(tif)
        elif tif.is_shaped:
            scale, units = _shaped_scale(tif)
        else:
            scale, units = {}, {}
        kind = "ome-tiff" if tif.is_ome else "imagej-tiff" if tif.is_imagej else "tiff"
        data = None if lazy else series.asarray()
    if lazy:
        import dask.array as da

        store = tifffile.imread(path, aszarr=True, series=0, level=0)
        data = da.from_zarr(store)
        shape = tuple(data.shape)
    final_axes, source = _resolve_axes(path, shape, file_axes, axes)
    meta = {"format": kind, "file_axes": series.axes, "axes_source": source}
    if scale:
        meta["scale"] = {a: s for a, s in scale.items() if a in final_axes}
        meta["units"] = {a: u for a, u in units.items() if a in final_axes}
    return ImageData(data, final_axes, meta, path)


# --------------------------------------------------------------------------- FITS


def _header_dict(header: Any) -> dict[str, Any]:
    """A FITS header as a JSON-friendly dict; COMMENT/HISTORY become lists of lines."""
    out: dict[str, Any] = {}
    for card in header.cards:
        key, value = card.keyword, card.value
        if key in ("COMMENT", "HISTORY", ""):
            out.setdefault(key or "BLANK", []).append(str(value))
            continue
        if not isinstance(value, (bool, int, float, str)):
            value = None if type(value).__name__ == "Undefined" else str(value)
        out[key] = value
    return out


def _wcs_header(header: Any) -> str | None:
    """A cleaned WCS header string when the header describes real world coordinates."""
    from astropy.wcs import WCS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header)
            if not any(str(c).strip() for c in wcs.wcs.ctype):
                return None
            return wcs.to_header_string(relax=True)
    except Exception:  # an invalid WCS is simply not kept
        return None


def _native(data: Any) -> Any:
    """Native byte order; floats become float32 (enough for pixels, half the memory)."""
    dtype = np.dtype(data.dtype)
    if dtype.kind == "f":
        target = np.dtype(np.float32)
    elif dtype.kind in "iub":
        target = dtype.newbyteorder("=")
    else:
        return data
    return data if dtype == target else data.astype(target)


def _read_fits(path: Path, axes: str | None, lazy: bool, hdu: int | str | None = None) -> ImageData:
    """FITS via astropy: HDU ``hdu`` (index, or ``EXTNAME`` in any case), else the first HDU holding
    image data.

    Scaled data (``BSCALE``/``BZERO``/``BLANK``) cannot be memory-mapped by astropy
    once scaled: when ``lazy``, the stored integers are memory-mapped unscaled and
    scaled chunk by chunk (``value * BSCALE + BZERO`` as float32, ``BLANK`` -> NaN).
    """
    compressed = path.name.lower().endswith(".gz")
    memmap = lazy and not compressed
    try:
        return _read_fits_hdus(path, axes, lazy, memmap, hdu=hdu)
    except ValueError as exc:
        if memmap and "memory-mapped" in str(exc):
            return _read_fits_hdus(path, axes, lazy, memmap, raw=True, hdu=hdu)
        raise


def _scale_lazily(data: Any, header: Any) -> Any:
    """Physical values of raw (unscaled) FITS integers, as a lazy float32 dask array."""
    import dask.array as da

    raw = da.from_array(data, chunks="auto")
    bscale, bzero = float(header.get("BSCALE", 1.0)), float(header.get("BZERO", 0.0))
    out = raw.astype(np.float32) * np.float32(bscale) + np.float32(bzero)
    blank = header.get("BLANK")
    if blank is not None and raw.dtype.kind in "iu":
        out = da.where(raw == blank, np.float32(np.nan), out)
    return out


def _hdu_list(hdul: Any) -> str:
    """The HDUs of a file, for a message: ``0 PRIMARY (no data), 1 SCI (image 512x512), 2 CAT (table)``."""
    parts = []
    for index, hdu in enumerate(hdul):
        shape = tuple(hdu.header.get(f"NAXIS{i}", 0) for i in range(hdu.header.get("NAXIS", 0), 0, -1))
        kind = ("image " + "x".join(map(str, shape)) if shape else "no data") if getattr(hdu, "is_image", False) \
            else "table"
        parts.append(f"{index} {hdu.name or '(no name)'} ({kind})")
    return ", ".join(parts)


def _find_image_hdu(path: Path, hdul: Any, wanted: int | str | None) -> tuple[int, Any, Any]:
    """``(index, hdu, data)`` of the HDU asked for, else of the first one holding image data."""
    if wanted is None:
        for index, hdu in enumerate(hdul):
            if getattr(hdu, "is_image", False) and hdu.header.get("NAXIS", 0) > 0:
                data = hdu.data
                if data is not None and data.size:
                    return index, hdu, data
        raise _fail(path, "no HDU with image data")
    key: int | str = int(wanted) if str(wanted).strip().isdigit() else str(wanted).strip()
    try:
        index = key if isinstance(key, int) else hdul.index_of(key)
        hdu = hdul[index]
    except (KeyError, IndexError):
        raise _fail(path, f"no HDU {wanted!r}; the file has {_hdu_list(hdul)}") from None
    data = hdu.data if getattr(hdu, "is_image", False) else None
    if data is None or not data.size:
        what = "holds no image data" if getattr(hdu, "is_image", False) else f"is a {type(hdu).__name__}, not an image"
        raise _fail(path, f"HDU {index} ({hdu.name or 'no name'}) {what}; the file has {_hdu_list(hdul)}")
    return index, hdu, data


def _read_fits_hdus(path: Path, axes: str | None, lazy: bool, memmap: bool, raw: bool = False,
                    hdu: int | str | None = None) -> ImageData:
    from astropy.io import fits

    hdul = fits.open(path, memmap=memmap, lazy_load_hdus=True, do_not_scale_image_data=raw)
    try:
        index, hdu, data = _find_image_hdu(path, hdul, hdu)
        header = hdu.header
        meta = {
            "format": "fits",
            "fits_hdu": index,
            "fits_extname": str(header.get("EXTNAME", "PRIMARY" if index == 0 else "")),
            "fits_header": header.tostring(sep="\n"),
            "fits_header_dict": _header_dict(header),
            "original_shape": tuple(int(s) for s in data.shape),
        }
        if index > 0 and header.get("INHERIT", False) is True:  # the extension inherits the primary's keywords
            meta["fits_primary_header"] = hdul[0].header.tostring(sep="\n")
        wcs = _wcs_header(header)
        if wcs:
            meta["wcs_header"] = wcs
        if raw:
            data = _scale_lazily(data, header)
        elif lazy:  # a .gz file cannot be memory-mapped: it is in memory, wrapped all the same
            import dask.array as da

            data = _native(da.from_array(data, chunks="auto"))
        else:
            data = _native(np.asarray(data))
    finally:  # a memory-mapped array stays valid after close: astropy keeps its mmap alive
        hdul.close()
    if axes is None:  # drop degenerate leading axes (radio cubes: Stokes, frequency)
        while data.ndim > 2 and data.shape[0] == 1:
            data = data[0]
    _check_data(path, data)
    file_axes = {2: "YX", 3: "ZYX", 4: "TZYX"}.get(data.ndim)
    final_axes, source = _resolve_axes(path, tuple(data.shape), file_axes, axes)
    meta["axes_source"] = source
    return ImageData(data, final_axes, meta, path)


# --------------------------------------------------------------------------- Zarr

_AXIS_NAMES = {
    "t": "T", "time": "T",
    "z": "Z", "depth": "Z",
    "y": "Y", "x": "X",
    "c": "C", "channel": "C", "channels": "C", "s": "C", "band": "C",
}
_AXIS_TYPES = {"time": "T", "channel": "C"}


def _axis_letter(axis: Any) -> str:
    """One OME-Zarr / xarray axis description (name or dict) as a letter, ``?`` if unknown."""
    if isinstance(axis, dict):
        letter = _AXIS_NAMES.get(str(axis.get("name", "")).lower())
        return letter or _AXIS_TYPES.get(str(axis.get("type", "")).lower(), _UNKNOWN)
    return _AXIS_NAMES.get(str(axis).lower(), _UNKNOWN)


def _ome_multiscales(attrs: dict) -> list | None:
    """``multiscales`` of OME-Zarr 0.4 (top level) or 0.5 (under ``ome``)."""
    ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    return ms if isinstance(ms, list) and ms else None


def _scale_from_transforms(transforms: Any, n: int) -> list[float] | None:
    """The ``scale`` entry of an OME-Zarr ``coordinateTransformations`` list."""
    for t in transforms or []:
        if isinstance(t, dict) and t.get("type") == "scale" and len(t.get("scale", [])) == n:
            return [float(s) for s in t["scale"]]
    return None


def _open_ome(path: Path, group: Any, ms: dict) -> tuple[Any, str | None, dict, dict]:
    """The full-resolution array of an OME-Zarr image, its axes, scale and units."""
    datasets = ms.get("datasets") or []
    if not datasets or "path" not in datasets[0]:
        raise _fail(path, "OME-Zarr multiscales has no datasets")
    array = group[datasets[0]["path"]]
    n = len(array.shape)
    axes_meta = ms.get("axes") or []
    file_axes = "".join(_axis_letter(a) for a in axes_meta) if len(axes_meta) == n else None
    scale_values = _scale_from_transforms(datasets[0].get("coordinateTransformations"), n)
    outer = _scale_from_transforms(ms.get("coordinateTransformations"), n)
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    if file_axes and (scale_values or outer):
        values = np.multiply(scale_values or [1.0] * n, outer or [1.0] * n)
        scale = {a: float(v) for a, v in zip(file_axes, values) if a != _UNKNOWN}
        for a, meta in zip(file_axes, axes_meta):
            if isinstance(meta, dict) and meta.get("unit") and a != _UNKNOWN:
                units[a] = str(meta["unit"])
    return array, file_axes, scale, units


def _plain_zarr_axes(array: Any) -> str | None:
    """Axes stored with a plain array: our ``axes`` attribute or xarray's dimension names."""
    attrs = dict(array.attrs)
    axes = attrs.get("axes") or attrs.get("_ARRAY_DIMENSIONS")
    if axes is None:
        names = getattr(getattr(array, "metadata", None), "dimension_names", None)
        axes = list(names) if names and all(names) else None
    if isinstance(axes, str):
        return _tifffile_axes(axes)
    if isinstance(axes, (list, tuple)) and len(axes) == len(array.shape):
        return "".join(_axis_letter(a) for a in axes)
    return None


def _read_zarr(path: Path, axes: str | None, lazy: bool) -> ImageData:
    """Zarr / OME-Zarr: the (full-resolution) array as a Dask array, never loaded."""
    import dask.array as da
    import zarr

    node = zarr.open(str(path), mode="r")
    scale: dict[str, float] = {}
    units: dict[str, str] = {}
    kind = "zarr"
    if hasattr(node, "array_keys"):  # a group
        attrs = dict(node.attrs)
        ms = _ome_multiscales(attrs)
        if ms:
            array, file_axes, scale, units = _open_ome(path, node, ms[0])
            kind = "ome-zarr"
        else:
            keys = sorted(node.array_keys())
            if not keys:
                raise _fail(path, "the zarr group holds no array")
            array = node["0"] if "0" in keys else node[keys[0]]
            file_axes = _plain_zarr_axes(array)
    else:
        array = node
        file_axes = _plain_zarr_axes(array)
        attrs = dict(array.attrs)
        scale = {str(k): float(v) for k, v in (attrs.get("scale") or {}).items()}
        units = {str(k): str(v) for k, v in (attrs.get("units") or {}).items()}
    data = da.from_zarr(array)
    _check_data(path, data)
    final_axes, source = _resolve_axes(path, tuple(data.shape), file_axes, axes)
    meta: dict[str, Any] = {"format": kind, "axes_source": source}
    if scale:
        meta["scale"] = {a: s for a, s in scale.items() if a in final_axes}
        meta["units"] = {a: u for a, u in units.items() if a in final_axes}
    return ImageData(data, final_axes, meta, path)


# --------------------------------------------------------------------------- NPY


def _read_npy(path: Path, axes: str | None, lazy: bool) -> ImageData:
    """A ``.npy`` file; memory-mapped and wrapped in Dask when lazy."""
    data = np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
    if lazy:
        import dask.array as da

        data = da.from_array(data, chunks="auto")
    _check_data(path, data)
    final_axes, source = _resolve_axes(path, tuple(data.shape), None, axes)
    return ImageData(data, final_axes, {"format": "npy", "axes_source": source}, path)


_READERS = {"tiff": _read_tiff, "fits": _read_fits, "zarr": _read_zarr, "npy": _read_npy}


def read_image(path: str | os.PathLike, axes: str | None = None, lazy: bool = False,
               hdu: int | str | None = None) -> ImageData:
    """Read an image file (TIFF/OME-TIFF/ImageJ, FITS, Zarr/OME-Zarr, NPY).

    Parameters
    ----------
    path
        File, or ``.zarr`` folder.
    axes
        Override the axes (e.g. ``"CZYX"``); checked against the data.
        Without it the file's metadata is used, else :func:`guess_axes`.
    lazy
        Return a Dask array that reads on demand instead of loading the file
        (TIFF through tifffile's zarr store, FITS and NPY memory-mapped).
        Zarr is always lazy.
    hdu
        FITS only: the HDU to read, by index (``1``, ``"1"``) or ``EXTNAME`` (``"SCI"``, any case);
        default: the first HDU holding image data.

    Raises
    ------
    ImageReadError
        Missing file, unknown extension, unreadable/corrupt file, empty image,
        unsupported pixel type (complex, text...), axes that do not fit, or an
        ``hdu`` that is missing, not an image, or given for a file that is not FITS.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ImageReadError(f"cannot read an image from {type(path).__name__}: expected a file path")
    path = Path(path).expanduser()
    if not path.exists():
        raise _fail(path, "no such file or folder")
    kind = image_format(path)
    reader = _READERS[kind]
    if hdu is not None:
        if kind != "fits":
            raise _fail(path, f"an HDU (hdu={hdu!r}) can only be chosen in a FITS file")
        reader = functools.partial(_read_fits, hdu=hdu)
    try:
        image = reader(path, axes, lazy)
    except ImageReadError:
        raise
    except MemoryError:
        raise _fail(path, "not enough memory; try lazy=True") from None
    except Exception as exc:  # any library error means the file is unreadable
        raise _fail(path, _reason(exc)) from exc
    _check_data(path, image.data)
    image.metadata.setdefault("source", str(path))
    return image


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read a label image (any format :func:`read_image` reads) fully into memory.

    Integer and bool images are returned as stored; float images are accepted
    when every value is a whole number (some tools save labels as float32) and
    converted to ``int32`` or ``int64``.
    """
    image = read_image(path)
    labels = np.asarray(image.data)
    if labels.dtype.kind in "biu":
        return labels
    finite = np.isfinite(labels).all()
    if not finite or not np.array_equal(labels, np.round(labels)):
        raise _fail(path, f"labels must be whole numbers, got {labels.dtype} values with fractions or NaN")
    big = labels.size and (labels.max() > np.iinfo(np.int32).max or labels.min() < np.iinfo(np.int32).min)
    return labels.astype(np.int64 if big else np.int32)


# --------------------------------------------------------------------------- writing


def _label_array(labels: Any) -> np.ndarray:
    """Labels as uint16 (max < 65536) or uint32; materialises Dask input."""
    arr = np.asarray(labels.compute() if hasattr(labels, "compute") else labels)
    if arr.dtype.kind not in "biu":  # InputError is a ValueError: callers catching that still work
        raise InputError(f"labels must be integers or bool, got dtype {arr.dtype}")
    if arr.size == 0:
        raise InputError(f"labels are empty (shape {arr.shape})")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        raise InputError(f"labels must not be negative (min {lo})")
    if hi < 2**16:
        return arr.astype(np.uint16, copy=False)
    if hi < 2**32:
        return arr.astype(np.uint32, copy=False)
    raise InputError(f"label id {hi} does not fit in uint32")


def _is_imagej_order(axes: str) -> bool:
    """True when ``axes`` is an ordered subset of ImageJ's ``TZCYX`` ending in ``YX``."""
    return axes.endswith("YX") and [a for a in "TZCYX" if a in axes] == list(axes)


def _json_extras(metadata: dict) -> dict:
    """Top-level metadata entries that survive JSON (for tifffile's / zarr's description)."""
    out = {}
    for key, value in metadata.items():
        if key in ("shape", "axes"):
            continue
        safe = _json_safe(value)
        try:
            json.dumps(safe)
        except (TypeError, ValueError):
            continue
        out[str(key)] = safe
    return out


def _write_tiff(path: Path, arr: np.ndarray, axes: str | None, metadata: dict) -> Path:
    """zlib-compressed TIFF; an ImageJ hyperstack when the axes allow it (uint16 only)."""
    scale = metadata.get("scale") or {}
    units = metadata.get("units") or {}
    kwargs: dict[str, Any] = {"compression": "zlib", "photometric": "minisblack"}
    if "X" in scale and "Y" in scale:
        kwargs["resolution"] = (1.0 / float(scale["X"]), 1.0 / float(scale["Y"]))
    if axes and arr.dtype == np.uint16 and _is_imagej_order(axes):
        ij: dict[str, Any] = {"axes": axes}
        if "Z" in scale:
            ij["spacing"] = float(scale["Z"])
        if "T" in scale:
            ij["finterval"] = float(scale["T"])
        if units.get("X"):
            ij["unit"] = str(units["X"])
        kwargs.update(imagej=True, metadata=ij)
    else:
        extras = _json_extras(metadata)
        if axes:
            extras["axes"] = axes
        kwargs["metadata"] = extras
    return atomic_write_tiff(path, arr, **kwargs)


def _write_zarr(path: Path, arr: np.ndarray, axes: str | None, metadata: dict) -> Path:
    """A zarr array folder, written aside and swapped in (atomic exchange on Linux)."""
    import zarr

    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name, once=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent))
    try:
        target = tmp / "data.zarr"
        z = zarr.open_array(str(target), mode="w", shape=arr.shape, dtype=arr.dtype)
        z[...] = arr
        attrs = _json_extras(metadata)
        if axes:
            attrs["axes"] = axes
        z.attrs.update(attrs)
        replace_dir(target, path)  # atomic exchange: the old or the new array, never neither
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return path


def write_labels(
    path: str | os.PathLike,
    labels: Any,
    *,
    axes: str | None = None,
    metadata: dict | None = None,
) -> Path:
    """Write a label image atomically as TIFF (``.tif/.tiff``), ``.npy`` or ``.zarr``.

    Labels are stored as ``uint16`` when the largest id is below 65536, else
    ``uint32`` (negative ids are refused).  ``axes`` (e.g. ``"ZYX"``) is
    checked against the shape and stored so :func:`read_image` finds it:

    * TIFF: zlib-compressed; an ImageJ hyperstack (``imagej=True``) when the
      axes are in ImageJ order (a subset of ``TZCYX``) and the data is uint16,
      otherwise tifffile's JSON description holding ``axes`` plus the
      JSON-serialisable entries of ``metadata``.  ``metadata["scale"]`` (per
      axis letter) sets the resolution tags and ImageJ ``spacing``/``finterval``.
    * Zarr: ``axes`` and JSON-serialisable metadata go to the array's attributes.
    * NPY: only the array.

    Returns the written path. Raises :class:`~napari_segtool.kernel.errors.InputError`
    for labels that cannot be stored (not integers, negative, empty, ids above
    uint32, axes that do not fit), :class:`~napari_segtool.kernel.errors.OutputError`
    for an unsupported extension and :class:`OSError` when the file cannot be written.
    """
    path = Path(path).expanduser()
    arr = _label_array(labels)
    metadata = dict(metadata or {})
    if axes is not None:
        try:
            axes = guess_axes(arr.shape, axes)
        except AxesError as exc:
            raise InputError(f"cannot write labels to {path}: {exc}") from None
    name = path.name.lower()
    if name.endswith(TIFF_SUFFIXES):
        return _write_tiff(path, arr, axes, metadata)
    if name.endswith(".npy"):
        return atomic_write(path, lambda fh: np.save(fh, arr, allow_pickle=False))
    if name.endswith(".zarr"):
        return _write_zarr(path, arr, axes, metadata)
    raise OutputError(f"cannot write labels to {path}: use a .tif, .tiff, .npy or .zarr path")
