"""OME-Zarr (OME-NGFF 0.4) label images: written so napari, Fiji/MoBIE and ome-zarr-py open them.

Layout of ``NAME.ome.zarr`` (Zarr format 2, readable with zarr-python 2 and 3)::

    NAME.ome.zarr/
        .zgroup
        .zattrs      {"multiscales": [...], "image-label": {...}, "segtool": {...}}
        0/           full resolution, uint16 or uint32 label ids
        1/, 2/ ...   Y and X halved at each level (nearest: every other pixel, ids kept)

``multiscales`` names the axes in NGFF order (``t``, ``z``, ``y``, ``x``; types ``time`` /
``space``) with their units where the input gave them (mapped to the UDUNITS-2 names NGFF
requires: ``µm`` -> ``micrometer``...; an unknown unit is left out rather than written wrong),
and each level's ``scale`` transformation (the input's pixel sizes, times 2**level in Y/X).
``image-label`` marks the image as labels (NGFF's label metadata; readers then show it as a
labels layer). The group is a standalone label image: NGFF also allows labels inside an image's
``labels/`` group, which :func:`write_ome_zarr_labels` does not write (the input image stays
where it is).

The folder is written aside and swapped in atomically, like every output of this package.
:func:`napari_segtool.io.images.read_image` reads it back (full resolution, axes, pixel sizes).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import clean_stale_temps, replace_dir, temp_prefix

NGFF_VERSION = "0.4"
#: Axis letter -> (NGFF name, NGFF type), in the order NGFF requires (time, channel, space).
AXES = {"T": ("t", "time"), "C": ("c", "channel"), "Z": ("z", "space"), "Y": ("y", "space"), "X": ("x", "space")}
#: Units as files spell them -> UDUNITS-2 names (the NGFF vocabulary).
UNIT_NAMES = {
    "µm": "micrometer", "μm": "micrometer", "um": "micrometer", "micron": "micrometer", "microns": "micrometer",
    "micrometer": "micrometer", "micrometre": "micrometer", "nm": "nanometer", "nanometer": "nanometer",
    "nanometre": "nanometer", "mm": "millimeter", "millimeter": "millimeter", "millimetre": "millimeter",
    "cm": "centimeter", "centimeter": "centimeter", "m": "meter", "meter": "meter", "metre": "meter",
    "pm": "picometer", "å": "angstrom", "angstrom": "angstrom", "inch": "inch", "in": "inch",
    "s": "second", "sec": "second", "second": "second", "seconds": "second", "ms": "millisecond",
    "millisecond": "millisecond", "µs": "microsecond", "us": "microsecond", "min": "minute", "minute": "minute",
    "minutes": "minute", "h": "hour", "hr": "hour", "hour": "hour", "hours": "hour", "d": "day", "day": "day",
}
MIN_LEVEL_SIZE = 64  # no pyramid level smaller than this in Y or X
MAX_LEVELS = 6
CHUNK = 512


def ngff_unit(unit: Any) -> str | None:
    """The UDUNITS-2 name NGFF wants for a unit as a file spells it, or ``None`` if unknown."""
    if unit is None:
        return None
    text = str(unit).strip()
    return UNIT_NAMES.get(text) or UNIT_NAMES.get(text.lower())


def _label_array(labels: Any) -> np.ndarray:
    from .images import _label_array as to_label_dtype

    return to_label_dtype(labels)


def _ngff_order(axes: str) -> str:
    return "".join(a for a in AXES if a in axes)


def n_levels(shape_yx: tuple[int, int]) -> int:
    """Pyramid levels: halve Y and X while both stay >= :data:`MIN_LEVEL_SIZE` (at most :data:`MAX_LEVELS`)."""
    levels, (h, w) = 1, shape_yx
    while levels < MAX_LEVELS and h // 2 >= MIN_LEVEL_SIZE and w // 2 >= MIN_LEVEL_SIZE:
        h, w = h // 2, w // 2
        levels += 1
    return levels


def multiscales_metadata(axes: str, shape: tuple[int, ...], scale: dict | None = None, units: dict | None = None,
                         name: str = "labels", levels: int | None = None) -> dict[str, Any]:
    """The NGFF 0.4 ``multiscales`` entry for a label image with ``axes`` (NGFF order) and ``shape``."""
    scale = {str(k): float(v) for k, v in (scale or {}).items() if v is not None and float(v) > 0}
    units = units or {}
    if levels is None:
        levels = n_levels((shape[axes.index("Y")], shape[axes.index("X")]))
    axes_meta = []
    for a in axes:
        ngff_name, kind = AXES[a]
        entry: dict[str, Any] = {"name": ngff_name, "type": kind}
        unit = ngff_unit(units.get(a))
        if unit and kind != "channel":
            if (kind == "time") == (unit in ("second", "millisecond", "microsecond", "minute", "hour", "day")):
                entry["unit"] = unit
        axes_meta.append(entry)
    datasets = []
    for level in range(levels):
        factors = [2.0 ** level if a in "YX" else 1.0 for a in axes]
        values = [scale.get(a, 1.0) * f for a, f in zip(axes, factors)]
        datasets.append({"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": values}]})
    return {"version": NGFF_VERSION, "name": name, "axes": axes_meta, "datasets": datasets, "type": "nearest",
            "metadata": {"method": "numpy slicing [..., ::2, ::2] (nearest, label ids kept)"}}


def _create_array(group: Any, name: str, data: np.ndarray, chunks: tuple[int, ...]) -> None:
    if hasattr(group, "create_array"):  # zarr-python 3
        array = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks, fill_value=0,
                                   chunk_key_encoding={"name": "v2", "separator": "/"})
    else:  # zarr-python 2
        array = group.create_dataset(name, shape=data.shape, dtype=data.dtype, chunks=chunks,
                                     dimension_separator="/", fill_value=0)
    array[...] = data


def _open_group(path: Path) -> Any:
    import zarr

    try:
        return zarr.open_group(str(path), mode="w", zarr_format=2)
    except TypeError:  # zarr-python 2 has no zarr_format (and writes format 2)
        return zarr.open_group(str(path), mode="w")


def write_ome_zarr_labels(path: str | os.PathLike, labels: Any, axes: str, *, scale: dict | None = None,
                          units: dict | None = None, name: str | None = None,
                          attrs: dict[str, Any] | None = None) -> Path:
    """Write ``labels`` (axes e.g. ``"YX"``, ``"ZYX"``, ``"TZYX"``) as an NGFF 0.4 label image at ``path``.

    ``scale`` / ``units`` are per axis letter (as in :class:`~napari_segtool.io.images.ImageData`
    metadata); ``attrs`` (JSON) are stored under the group's ``segtool`` attribute. Axes are
    reordered to NGFF's order (time, then Z, Y, X). Whatever ``path`` held is replaced
    atomically (check it first with :func:`napari_segtool.io.outputs.check_output_path`).
    """
    import json

    path = Path(path).expanduser()
    arr = _label_array(labels)
    axes = str(axes).upper()
    if len(axes) != arr.ndim or set(axes) - set("TZYX") or len(set(axes)) != len(axes) or not {"Y", "X"} <= set(axes):
        raise ValueError(f"label axes must be distinct letters from TZYX including Y and X, one per dimension "
                         f"of shape {arr.shape}; got '{axes}'")
    order = _ngff_order(axes)
    arr = np.transpose(arr, [axes.index(a) for a in order])
    meta = multiscales_metadata(order, arr.shape, scale, units, name or path.name.split(".")[0] or "labels")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path.parent, path.name, once=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=path.parent))
    try:
        target = tmp / "labels.ome.zarr"
        group = _open_group(target)
        level = arr
        for k in range(len(meta["datasets"])):
            if k:
                level = level[..., ::2, ::2]
            chunks = tuple(min(CHUNK, s) if a in "YX" else 1 for a, s in zip(order, level.shape))
            _create_array(group, str(k), np.ascontiguousarray(level), chunks)
        group_attrs: dict[str, Any] = {"multiscales": [meta], "image-label": {"version": NGFF_VERSION}}
        if attrs:
            group_attrs["segtool"] = json.loads(json.dumps(attrs, default=str))
        group.attrs.update(group_attrs)
        replace_dir(target, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return path


def is_ome_zarr_labels(path: str | os.PathLike) -> bool:
    """True for an OME-Zarr group whose attributes mark it as a label image (``image-label``)."""
    import zarr

    try:
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception:
        return False
    ome = attrs.get("ome") if isinstance(attrs.get("ome"), dict) else {}
    return "image-label" in attrs or "image-label" in ome
