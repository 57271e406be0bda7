"""Bridging napari layers and the core's axes conventions (no Qt here, only napari layers)."""
from __future__ import annotations

from typing import Any

import numpy as np

from napari_segtool.kernel.axes import guess_axes, to_canonical

META_KEY = "segtool"

#: labels ids are held in the narrowest of these that fits them: napari hands uint16 labels to its texture as
#: they are, while 32-bit labels are re-coded on the CPU at every slice (63-97 ms per 2048² plane on the GUI
#: thread, docs/upstream-napari.md); past 65535 ids the labels are widened to int32 (``LabelsTracker.fit_ids``)
COMPACT_LABELS = np.dtype(np.uint16)
WIDE_LABELS = np.dtype(np.int32)


def labels_dtype(max_id: int) -> np.dtype:
    """The dtype that holds ids up to ``max_id``: uint16 while they fit, else int32."""
    return COMPACT_LABELS if int(max_id) <= np.iinfo(COMPACT_LABELS).max else WIDE_LABELS


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """``labels`` in :func:`labels_dtype` of its largest id (the array itself when it has that dtype already)."""
    labels = np.asarray(labels)
    return labels.astype(labels_dtype(labels.max(initial=0)), copy=False)


def show_in_layer(viewer: Any, layer_type: type, data: Any, name: str, **properties: Any) -> tuple[Any, bool]:
    """Show ``data`` in the viewer's layer ``name``; returns ``(layer, added)``.

    An existing layer of ``layer_type`` with ``data``'s dimensionality gets the new data (and the
    ``properties`` that differ: scale, translate, metadata...) in place; otherwise (none, another type
    or shape of array) a new layer is added in place of the old one. Adding a layer is what costs napari
    most on the GUI thread (its layer controls, vispy visuals and overlays: 0.2-0.5 s on a
    software-rendered display, docs/upstream-napari.md); setting a layer's data only re-slices it, so a
    result shown again (the same image re-run) does not pay it again.
    """
    old = viewer.layers[name] if name in viewer.layers else None
    if type(old) is layer_type and old.ndim == np.ndim(data) and not getattr(old, "multiscale", False):
        for key, value in properties.items():
            if not _same(getattr(old, key, None), value):
                setattr(old, key, value)
        old.data = data
        return old, False
    if old is not None:
        viewer.layers.remove(old)
    from napari_segtool.plugin._reveal import add_then_show

    return add_then_show(viewer, layer_type, data, name=name, **properties), True


def _same(current: Any, wanted: Any) -> bool:
    """Whether a layer property already has the wanted value (arrays and sequences by value, colormaps by name)."""
    if isinstance(wanted, str) and hasattr(current, "name"):
        return current.name == wanted
    if isinstance(wanted, (tuple, list, np.ndarray)):
        try:
            return np.shape(current) == np.shape(wanted) and bool(np.allclose(current, wanted))
        except (TypeError, ValueError):
            return False
    try:
        return bool(current == wanted)
    except (TypeError, ValueError):
        return False


def layer_data(layer: Any) -> Any:
    """Full-resolution data of a (possibly multiscale) layer."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def image_axes(layer: Any) -> str:
    """Axes letters (``TZCYX`` subset) of an image layer's data."""
    data = layer_data(layer)
    ndim = data.ndim
    meta = (getattr(layer, "metadata", None) or {}).get(META_KEY, {})
    axes = meta.get("axes")
    if isinstance(axes, str) and len(axes) == ndim:
        try:
            return guess_axes(data.shape, axes)
        except ValueError:
            pass
    if getattr(layer, "rgb", False):
        return {3: "YXC", 4: "ZYXC", 5: "TZYXC"}.get(ndim, guess_axes(data.shape))
    return {2: "YX", 3: "ZYX", 4: "TZYX"}.get(ndim) or guess_axes(data.shape)


def labels_axes(image_axes_: str) -> str:
    return image_axes_.replace("C", "")


def spatial_shape(layer: Any) -> tuple[int, ...]:
    """Shape of the labels that go with an image layer (its shape without channels)."""
    axes = image_axes(layer)
    shape = layer_data(layer).shape
    return tuple(int(s) for s, a in zip(shape, axes) if a != "C")


def labels_from_image_order(axes: str) -> bool:
    """True when the labels axes are the image's stack axes then ``YX`` (what the plugin supports)."""
    lab = labels_axes(axes)
    return lab.endswith("YX") and lab[:-2] in ("", "T", "Z", "TZ")


def canonical(layer: Any) -> tuple[Any, str]:
    """The image in canonical ``(stack..., Y, X, C)`` order (a view; dask stays lazy)."""
    return to_canonical(layer_data(layer), image_axes(layer))


def image_plane(layer: Any, index: tuple[int, ...]) -> np.ndarray:
    """One plane ``YXC`` of an image layer, loaded."""
    data, _ = canonical(layer)
    plane = data[tuple(index)] if index else data
    if hasattr(plane, "compute"):
        plane = plane.compute()
    return np.asarray(plane)


def spatial_scale(layer: Any) -> tuple[float, ...]:
    axes = image_axes(layer)
    scale = tuple(layer.scale)
    return tuple(float(s) for s, a in zip(scale, axes) if a != "C")


def z_anisotropy(layer: Any) -> float | None:
    """Z / X voxel size from the layer's scale, or ``None`` when it has no Z or no pixel sizes (all 1)."""
    axes = [a for a in image_axes(layer) if a != "C"]
    scale = spatial_scale(layer)
    if "Z" not in axes or all(s == 1.0 for s in scale) or scale[axes.index("X")] <= 0:
        return None
    return scale[axes.index("Z")] / scale[axes.index("X")]


def spatial_translate(layer: Any) -> tuple[float, ...]:
    axes = image_axes(layer)
    return tuple(float(s) for s, a in zip(layer.translate, axes) if a != "C")


def source_of(layer: Any) -> str | None:
    """The file an image layer came from, if any."""
    meta = (getattr(layer, "metadata", None) or {}).get(META_KEY, {})
    if meta.get("source"):
        return str(meta["source"])
    source = getattr(layer, "source", None)
    path = getattr(source, "path", None)
    return str(path) if path else None


def current_plane(viewer: Any, labels_layer: Any) -> tuple[int, ...]:
    """Index over the leading stack axes of the labels layer at the viewer's current slice."""
    n_stack = labels_layer.ndim - 2
    if n_stack <= 0:
        return ()
    point = labels_layer.world_to_data(viewer.dims.point)
    shape = labels_layer.data.shape
    return tuple(int(np.clip(round(float(point[i])), 0, shape[i] - 1)) for i in range(n_stack))


def visible_region(viewer: Any, layer: Any) -> tuple[slice, slice] | None:
    """The (Y, X) slices of ``layer`` visible in the canvas (2D display), or ``None``."""
    if viewer.dims.ndisplay != 2:
        return None
    try:
        canvas_h, canvas_w = _canvas_size(viewer)
        zoom = float(viewer.camera.zoom)
        center = np.asarray(viewer.camera.center[-2:], float)
    except Exception:
        return None
    half = np.array([canvas_h, canvas_w], float) / (2.0 * zoom)
    point = np.asarray(viewer.dims.point, float).copy()
    corners = []
    for sy in (-1, 1):
        for sx in (-1, 1):
            p = point.copy()
            p[-2:] = center + half * np.array([sy, sx])
            corners.append(layer.world_to_data(p)[-2:])
    corners = np.asarray(corners)
    lo = np.floor(corners.min(axis=0)).astype(int)
    hi = np.ceil(corners.max(axis=0)).astype(int) + 1
    shape = layer_data(layer).shape if not getattr(layer, "rgb", False) else layer_data(layer).shape[:-1]
    h, w = shape[-2], shape[-1]
    y0, y1 = int(np.clip(lo[0], 0, h)), int(np.clip(hi[0], 0, h))
    x0, x1 = int(np.clip(lo[1], 0, w)), int(np.clip(hi[1], 0, w))
    if y1 - y0 < 2 or x1 - x0 < 2:
        return None
    return slice(y0, y1), slice(x0, x1)


def _canvas_size(viewer: Any) -> tuple[int, int]:
    canvas = getattr(viewer, "canvas", None)
    size = getattr(canvas, "size", None)
    if size is not None:
        return int(size[0]), int(size[1])
    size = getattr(viewer, "_canvas_size", None)
    return int(size[0]), int(size[1])


ASTRO_SOURCES = ("sim:astro", "skimage:hubble")


def image_kind(layer: Any) -> str:
    """``"astro"`` for a sky image (FITS file, FITS header / WCS in the metadata, simulated or sample sky),
    else ``"microscopy"``: which shipped model to propose for it."""
    metadata = getattr(layer, "metadata", None) or {}
    meta = metadata.get(META_KEY, {}) or {}
    if str(meta.get("format", "")).lower() == "fits" or metadata.get("format") == "fits":
        return "astro"
    if any(k in metadata for k in ("wcs", "wcs_header", "fits_header", "header")):
        return "astro"
    source = str(meta.get("source") or "")
    if source.startswith(ASTRO_SOURCES) or source.lower().endswith((".fits", ".fit", ".fts", ".fits.gz")):
        return "astro"
    return "microscopy"
