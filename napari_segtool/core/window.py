"""The per-window pipeline every path runs: a whole image, a napari view or one dask chunk.

A *window* is a canonical array (stack axes, ``Y``, ``X``, ``C``) -- the whole image, or a
block of it read by :mod:`napari_segtool.core.batch`. :func:`predict_window` reads each
plane through :func:`plane_view` (channel mean, the image's normaliser, the model grid of
:mod:`napari_segtool.ops.resample`), runs the architecture's ``predict_plane``, assembles
the planes (3D watershed or Z linking, :func:`assemble`) on the model grid, and maps the
labels back to the window's input pixels. In-memory and chunked prediction call this same
function with the same settings, so they cannot drift apart; only how windows are cut and
stitched differs.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Generator, Sequence

import numpy as np

from napari_segtool.kernel.events import CancelToken, Progress
from napari_segtool.ops.chunked import PlacedPlane, Rect, union
from napari_segtool.ops.mirror import MirrorFrame, mirror_labels, mirror_values, source_rect
from napari_segtool.ops.normalize import NormalizedPlane, Normalizer
from napari_segtool.ops.tiling import halo_for
from napari_segtool.ops.postprocess import link_stack, overlap_matrix, split_by_shape, split_z_chains, typical_diameter
from napari_segtool.ops.resample import (ResampledPlane, antialias_sigma, is_identity, labels_to_input,
                                        scaled_length)


class ChannelMean:
    """Lazy mean over channels, for running a 1-channel model on RGB/multichannel data."""

    def __init__(self, plane: Any):
        self.plane = plane
        self.shape = tuple(plane.shape[:-1]) + (1,)

    def __getitem__(self, key):
        return np.asarray(self.plane[key], dtype=np.float32).mean(axis=-1, keepdims=True)


@dataclass
class WindowSettings:
    """Everything that decides a window's labels, the same for every window of an image."""

    normalizer: Normalizer
    factor: float = 1.0                 # model-grid pixels per input pixel
    channel_mean: bool = False
    content: tuple[int, int, int, int] | None = None  # (y0, y1, x0, x1) of the image's informative pixels:
    # outside it (flat or NaN padding) labels are 0 and nothing runs; the model grid and its mirrored
    # borders are those of this box, so padding around an image cannot change its objects
    panels: tuple[tuple[int, int, int, int], ...] = ()  # the content split at flat bands crossing it (a
    # mosaic's gaps): each panel runs as its own image (its own grid and mirrored borders), so a panel's objects
    # do not depend on what lies beyond the gap; empty: the content box is one panel
    mirror: MirrorFrame | None = None   # exact mirror bands around the content (np.pad reflect/symmetric): the
    # content runs as the plain image; each band pixel takes its mirror source's label (ops.mirror.mirror_labels)
    align: int = 1                      # the network's pooling grid, kept global on the model grid
    postprocess: dict[str, Any] = field(default_factory=dict)  # overrides passed to predict_plane
    stack: dict[str, Any] = field(default_factory=dict)        # the assembled settings (model's + overrides)
    link: bool = False                  # instance planes of a Z stack become 3D objects
    tile_size: int | None = None
    batch_size: int = 2

    @property
    def content_hw(self) -> tuple[int, int] | None:
        if self.content is None:
            return None
        y0, y1, x0, x1 = self.content
        return y1 - y0, x1 - x0

    @property
    def want_maps(self) -> bool:
        return self.link and self.stack.get("z_mode") == "watershed"

    @property
    def whole_z(self) -> bool:
        """Whether the Z assembly needs every plane at once: a 3D watershed, or chains cut at their area
        necks (``z_split_dip``). Overlap linking alone is reproduced across chunks by
        :func:`~napari_segtool.ops.chunked.merge_labels`."""
        return self.want_maps or (self.link and float(self.stack.get("z_split_dip", 0.0) or 0.0) > 0)


@dataclass
class WindowResult:
    labels: np.ndarray                  # stack + window YX, on the input grid
    tables: dict[tuple, list[dict[str, Any]]] = field(default_factory=dict)
    probabilities: np.ndarray | None = None  # (K, Y, X) of the first plane, when asked


def plane_view(plane: Any, settings: WindowSettings, offset: tuple[int, int] = (0, 0)) -> Any:
    """What the network reads of one ``YXC`` plane or window: channel mean, normalised, on the model grid.

    ``offset`` places a window in the image's content box; the view's first model pixel is
    put on the network's pooling grid (``settings.align``) of the whole content's model grid.
    """
    view: Any = NormalizedPlane(ChannelMean(plane) if settings.channel_mean else plane, settings.normalizer)
    if is_identity(settings.factor):
        return view
    return ResampledPlane(view, settings.factor, offset=offset, image_shape=settings.content_hw,
                          align=settings.align)


def predict_window(model: Any, window: Any, spatial_axes: str, settings: WindowSettings, *,
                   offset: tuple[int, int] = (0, 0), planes: Sequence[tuple] | None = None,
                   first_probabilities: bool = False, cancel: CancelToken | None = None,
                   tile_callback: Callable[[int, int], None] | None = None, region: Rect | None = None
                   ) -> Generator[Progress, None, WindowResult]:
    """Labels of a canonical window (stack axes, ``Y``, ``X``, ``C``), yielding progress per plane.

    ``planes`` limits the work to some stack indices (the others stay 0); ``offset`` is the
    window's ``(y, x)`` in the image. Returns labels on the window's input grid, 0 outside the
    image's content box (``settings.content``; the window is the whole image when it is ``None``).
    ``region`` (image coordinates): the pixels whose labels the caller keeps (a chunk's core and margin);
    the rest of the window is context only, and dense networks run just the tiles of the whole image's grid
    that reach the region (:func:`~napari_segtool.ops.tiling.tiled_apply`), as a whole-image run does.
    """
    window_hw = tuple(int(n) for n in window.shape[-3:-1])
    if settings.mirror is not None:
        return (yield from _predict_mirrored(model, window, spatial_axes, settings, offset, planes,
                                             first_probabilities, cancel, tile_callback, region))
    if len(settings.panels) > 1:
        return (yield from _predict_panels(model, window, spatial_axes, settings, offset, planes,
                                           first_probabilities, cancel, tile_callback, region))
    if settings.content is None:
        settings = replace(settings, content=(offset[0], offset[0] + window_hw[0], offset[1], offset[1] + window_hw[1]))
    y0, y1, x0, x1 = settings.content
    ya, yb = _aligned_start(offset[0], y0, settings.align), min(offset[0] + window_hw[0], y1)
    xa, xb = _aligned_start(offset[1], x0, settings.align), min(offset[1] + window_hw[1], x1)
    if yb <= ya or xb <= xa:
        return WindowResult(np.zeros(tuple(window.shape[:-1]), np.int32))
    inner = window[..., ya - offset[0]:yb - offset[0], xa - offset[1]:xb - offset[1], :]
    rel = None if region is None else (region[0] - y0, region[1] - y0, region[2] - x0, region[3] - x0)
    result = yield from _predict_content(model, inner, spatial_axes, settings, (ya - y0, xa - x0), planes,
                                         first_probabilities, cancel, tile_callback, rel)
    core = (..., slice(ya - offset[0], yb - offset[0]), slice(xa - offset[1], xb - offset[1]))
    if result.labels.shape == tuple(window.shape[:-1]):  # the content is the whole window: no second plane
        labels = np.asarray(result.labels, np.int32)
    else:
        labels = np.zeros(tuple(window.shape[:-1]), np.int32)
        labels[core] = result.labels
    if np.issubdtype(inner.dtype, np.floating):
        # NaN/inf pixels (masks, bad pixels) stay unlabelled even inside an object (issue 17); only float
        # data can hold them, so integer images are not read a second time for this
        np.copyto(labels[core], 0, where=~np.isfinite(np.asarray(inner)).all(axis=-1))
    probs = result.probabilities
    if probs is not None and probs.shape[-2:] != window_hw:
        full = np.zeros(probs.shape[:-2] + window_hw, probs.dtype)
        full[..., ya - offset[0]:yb - offset[0], xa - offset[1]:xb - offset[1]] = probs
        probs = full
    return WindowResult(labels, result.tables, probs)


def _predict_panels(model: Any, window: Any, spatial_axes: str, settings: WindowSettings, offset: tuple[int, int],
                    planes: Sequence[tuple] | None, first_probabilities: bool, cancel: CancelToken | None,
                    tile_callback: Callable[[int, int], None] | None, region: Rect | None = None
                    ) -> Generator[Progress, None, WindowResult]:
    """:func:`predict_window` panel by panel (``settings.panels``), each panel as its own content box.

    Ids are made unique over the window; per-plane tables are left to the caller (made from the
    joined labels), and the probabilities are those of each panel inside it, 0 in the gaps.
    """
    window_hw = tuple(int(n) for n in window.shape[-3:-1])
    labels = np.zeros(tuple(window.shape[:-1]), np.int32)
    probs = None
    for panel in settings.panels:
        y0, y1, x0, x1 = panel
        if y1 <= offset[0] or y0 >= offset[0] + window_hw[0] or x1 <= offset[1] or x0 >= offset[1] + window_hw[1]:
            continue
        part = yield from predict_window(model, window, spatial_axes, replace(settings, content=panel, panels=()),
                                         offset=offset, planes=planes, first_probabilities=first_probabilities,
                                         cancel=cancel, tile_callback=tile_callback, region=region)
        top = int(labels.max()) if model.meta.task == "instance" else 0
        labels = np.where(part.labels > 0, part.labels + top if top else part.labels, labels).astype(np.int32)
        if part.probabilities is not None:
            probs = part.probabilities if probs is None else probs + part.probabilities
    return WindowResult(labels, {}, probs)


def _predict_mirrored(model: Any, window: Any, spatial_axes: str, settings: WindowSettings, offset: tuple[int, int],
                      planes: Sequence[tuple] | None, first_probabilities: bool, cancel: CancelToken | None,
                      tile_callback: Callable[[int, int], None] | None, region: Rect | None = None
                      ) -> Generator[Progress, None, WindowResult]:
    """:func:`predict_window` of a window of a mirror-framed image: the content as the plain image, then each
    band pixel labelled as its mirror source (which the window holds: :func:`window_for` widens chunks to it).

    Per-plane tables cover the content's objects only, so they are left to the caller when a band is in the window.
    """
    frame = settings.mirror
    hw = tuple(int(n) for n in window.shape[-3:-1])
    y0, y1, x0, x1 = frame.box
    inside = y0 <= offset[0] and offset[0] + hw[0] <= y1 and x0 <= offset[1] and offset[1] + hw[1] <= x1
    part = yield from predict_window(model, window, spatial_axes, replace(settings, mirror=None), offset=offset,
                                     planes=planes, first_probabilities=first_probabilities, cancel=cancel,
                                     tile_callback=tile_callback,
                                     region=region if inside else None)  # band pixels read their sources' labels
    if inside:
        return part  # no band in this window
    labels = mirror_labels(part.labels, frame, offset, model.meta.task == "instance")
    probs = None if part.probabilities is None else mirror_values(part.probabilities, frame, offset)
    return WindowResult(labels, {}, probs)


def model_plane_hw(settings: WindowSettings) -> tuple[int, int]:
    """The content box's size on the model grid (what a window of it is a part of)."""
    h, w = settings.content_hw
    if is_identity(settings.factor):
        return h, w
    return scaled_length(h, settings.factor), scaled_length(w, settings.factor)


def window_for(model: Any, settings: WindowSettings, region: Rect, image_hw: tuple[int, int]) -> Rect | None:
    """The input pixels (image coordinates) a window must hold for its labels inside ``region`` to be those of
    a whole-image run, as the architecture asks (``Architecture.window_extent``: Mask R-CNN's whole tiles);
    ``None`` when the region grown by the halo suffices. Each panel of the content has its own tile grid.
    In a mirror frame (``settings.mirror``) a region's band pixels are labelled from their mirror sources in
    the content, so the window also holds those sources, with the halo (or whole tiles) they need."""
    if settings.mirror is not None:
        return _mirror_window(model, settings, region, image_hw)
    panels = settings.panels or ((settings.content or (0, image_hw[0], 0, image_hw[1])),)
    factor = settings.factor
    identity = is_identity(factor)
    # input pixels the resampled view reads beyond a model pixel's centre (ResampledPlane._sample)
    reach = 0 if identity else int(np.ceil(4 * antialias_sigma(factor))) + 2
    out = None
    for panel in panels:
        y0, y1, x0, x1 = panel
        ry0, ry1, rx0, rx1 = max(region[0], y0), min(region[1], y1), max(region[2], x0), min(region[3], x1)
        if ry1 <= ry0 or rx1 <= rx0:
            continue
        local = replace(settings, content=panel, panels=())
        plane_hw = model_plane_hw(local)
        rel = (ry0 - y0, ry1 - y0, rx0 - x0, rx1 - x0)
        if not identity:
            rel = _model_pixels(rel, factor)
            rel = (max(0, rel[0]), min(plane_hw[0], rel[1]), max(0, rel[2]), min(plane_hw[1], rel[3]))
        ext = model.architecture.window_extent(model.meta, plane_hw, rel, tile_size=settings.tile_size,
                                               postprocess=settings.postprocess)
        if ext is None:
            return None
        if not identity:  # input pixels holding those model pixels' sources (source_coords), and what they read
            lo = [int(np.floor((a + 0.5) / factor - 0.5)) - reach for a in (ext[0], ext[2])]
            hi = [int(np.floor((b - 0.5) / factor - 0.5)) + 2 + reach for b in (ext[1], ext[3])]
            ext = (lo[0], hi[0], lo[1], hi[1])
        align = max(1, settings.align)  # the window starts on the pooling grid counted from the panel
        rect = (y0 + (max(0, ext[0]) // align) * align, min(y1, y0 + ext[1]),
                x0 + (max(0, ext[2]) // align) * align, min(x1, x0 + ext[3]))
        out = rect if out is None else union(out, rect)
    return out


def _mirror_window(model: Any, settings: WindowSettings, region: Rect, image_hw: tuple[int, int]) -> Rect | None:
    """:func:`window_for` in a mirror frame: the content pixels that ``region`` holds or mirrors, and their context."""
    frame = settings.mirror
    inner = replace(settings, mirror=None)
    y0, y1, x0, x1 = frame.box
    if y0 <= region[0] and region[1] <= y1 and x0 <= region[2] and region[3] <= x1:
        return window_for(model, inner, region, image_hw)
    sources = source_rect(frame, region)
    if sources is None:
        return None
    need = window_for(model, inner, sources, image_hw)
    if need is None:  # the sources grown by the halo a chunk's window has around its region (core.batch)
        halo = input_halo(model, settings)
        need = (sources[0] - halo, sources[1] + halo, sources[2] - halo, sources[3] + halo)
    return (max(0, need[0]), min(image_hw[0], need[1]), max(0, need[2]), min(image_hw[1], need[3]))


def input_halo(model: Any, settings: WindowSettings) -> int:
    """Input pixels of context a window needs beyond the pixels it labels: half the receptive field on the model
    grid, in input pixels, plus one pooling step."""
    rf = model.architecture.receptive_field(model.meta)
    return int(np.ceil(halo_for(rf, settings.align) / settings.factor)) + settings.align if rf else 0


def _aligned_start(window_start: int, content_start: int, align: int) -> int:
    """Where a window's work starts: inside the content, on the pooling grid counted from its start.

    A window that starts inside the content drops its first few (halo) pixels so that its tiles
    line up with those of a whole-image run.
    """
    if window_start <= content_start:
        return content_start
    return content_start + -(-(window_start - content_start) // align) * align


def _predict_content(model: Any, window: Any, spatial_axes: str, settings: WindowSettings,
                     offset: tuple[int, int], planes: Sequence[tuple] | None, first_probabilities: bool,
                     cancel: CancelToken | None, tile_callback: Callable[[int, int], None] | None,
                     region: Rect | None = None) -> Generator[Progress, None, WindowResult]:
    """:func:`predict_window` on a window inside the content box (``offset`` and ``region`` relative to the box)."""
    meta = model.meta
    arch = model.architecture
    stack_shape = tuple(window.shape[: len(spatial_axes) - 2])
    window_hw = tuple(int(n) for n in window.shape[-3:-1])
    todo = list(planes) if planes is not None else (list(np.ndindex(*stack_shape)) if stack_shape else [()])
    want_maps = settings.want_maps
    identity = is_identity(settings.factor)
    result_planes: dict[tuple, np.ndarray] = {}
    maps: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    tables: dict[tuple, list[dict[str, Any]]] = {}
    probs = None
    grid_start, grid_hw = (0, 0), window_hw
    model.net.eval()
    for i, index in enumerate(todo):
        if cancel is not None:
            cancel.raise_if_cancelled()
        view = plane_view(window[index] if index else window, settings, offset)
        if not identity:
            grid_start, grid_hw = view.grid_start, tuple(view.shape[:2])
        origin = grid_start if not identity else offset
        view = PlacedPlane(view, origin, model_plane_hw(settings),
                           None if region is None else _wanted_pixels(region, settings.factor, origin, view.shape[:2]))
        want_probs = want_maps or (first_probabilities and i == 0)
        result = arch.predict_plane(model.net, view, meta, device=model.device, tile_size=settings.tile_size,
                                    batch_size=settings.batch_size, return_probabilities=want_probs,
                                    progress=tile_callback, cancel=cancel, **settings.postprocess)
        result_planes[index] = result.labels
        if result.table:
            tables[index] = result.table
        if want_maps and result.probabilities is not None:
            plane_maps = arch.stack_maps(result.probabilities, meta)
            want_maps = plane_maps is not None
            if want_maps:
                maps[index] = tuple(_to_uint8(m) for m in plane_maps)
        if first_probabilities and i == 0 and result.probabilities is not None:
            probs = result.probabilities
        yield Progress("predict", i + 1, len(todo), f"plane {index}" if index else "image")
    labels = assemble(result_planes, stack_shape + grid_hw, spatial_axes, meta.task, settings.link,
                      settings.stack, maps if want_maps else None)
    if not identity:
        labels = labels_to_input(labels, settings.factor, window_hw, offset=offset, grid_start=grid_start)
        if probs is not None:
            probs = labels_to_input(probs, settings.factor, window_hw, offset=offset, grid_start=grid_start)
    return WindowResult(labels, tables, probs)


def _model_pixels(rect: Rect, factor: float) -> Rect:
    """The model-grid pixels whose labels the input pixels ``rect`` take: those whose centres fall in it, and one
    more each side (unclipped)."""
    return (int(np.floor(rect[0] * factor)) - 1, int(np.ceil(rect[1] * factor)) + 1,
            int(np.floor(rect[2] * factor)) - 1, int(np.ceil(rect[3] * factor)) + 1)


def _wanted_pixels(region: Rect, factor: float, origin: tuple[int, int], hw: tuple[int, int]) -> Rect:
    """``region`` (input pixels of the content box) as the pixels of a view at ``origin`` on the model grid
    (of ``hw`` pixels) whose maps its labels read (:func:`_model_pixels`)."""
    if not is_identity(factor):
        region = _model_pixels(region, factor)
    y0, y1 = (min(hw[0], max(0, v - origin[0])) for v in region[:2])
    x0, x1 = (min(hw[1], max(0, v - origin[1])) for v in region[2:])
    return y0, max(y0, y1), x0, max(x0, x1)


def _to_uint8(p: np.ndarray) -> np.ndarray:
    """A 0..1 map stored in a quarter of the memory (kept for every plane of a stack)."""
    return np.round(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)


def assemble(planes: dict[tuple, np.ndarray], shape: tuple[int, ...], spatial_axes: str, task: str,
             link: bool, stack: dict[str, Any] | None = None,
             maps: dict[tuple, tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
    """Planes into one label array; when ``link``, instance planes of Z stacks become 3D objects.

    ``stack`` holds the model's post-processing settings, overrides included
    (those of :data:`~napari_segtool.ops.postprocess.CORE_POSTPROCESS` act here). With
    ``maps`` (each plane's foreground and distance maps, ``z_mode="watershed"``)
    the objects come from one 3D watershed of the stacked maps
    (:func:`split_by_shape`, seeds spaced by ``stack["diameter"]``, the objects' size on
    the model grid); otherwise planes are linked by overlap and ``z_split_dip > 0`` cuts
    chains stacked along Z at their area necks (:func:`split_z_chains`).
    """
    stack = stack or {}
    if not link and list(planes) == [()] and planes[()].shape == shape:  # one plane: itself, not a copy
        return np.asarray(planes[()], np.int32)
    labels = np.zeros(shape, np.int32)
    offset = 0
    for index, plane in planes.items():
        if task == "instance" and index:
            plane = np.where(plane > 0, plane + offset, 0)
            offset = max(offset, int(plane.max()))
        labels[index] = plane
    if not link:
        return labels
    if maps is not None:
        fg = np.zeros(shape, np.uint8)
        dist = np.zeros(shape, np.uint8)
        for index, (f, d) in maps.items():
            fg[index], dist[index] = f, d

    def objects_3d(t: tuple) -> np.ndarray:
        if maps is not None:
            size = float(stack.get("diameter") or 0) or typical_diameter(labels[t])
            return split_by_shape(fg[t].astype(np.float32) / 255, dist[t].astype(np.float32) / 255,
                                  size, z_scale=float(stack.get("z_scale", 2.0)),
                                  fg_threshold=float(stack.get("fg_threshold", 0.5)))
        linked = link_stack(labels[t])
        dip = float(stack.get("z_split_dip", 0.0))
        return split_z_chains(linked, dip) if dip > 0 else linked

    z = spatial_axes.index("Z")
    offset = 0
    for t in np.ndindex(*shape[:z]):  # T before Z: each time point on its own, ids kept unique
        objects = objects_3d(t)
        labels[t] = np.where(objects > 0, objects + offset, 0)
        offset = int(labels[t].max())
    return labels


def join_kept_planes(predicted: np.ndarray, kept: np.ndarray, kept_planes: Sequence[tuple],
                     min_iou: float = 0.25) -> np.ndarray:
    """3D objects predicted over a whole stack, joined to the labels of planes the user kept.

    ``predicted`` and ``kept`` are canonical stacks (stack axes, ``Y``, ``X``); in
    ``kept_planes`` (reviewed slices) the user's labels stay as they are. A predicted 3D object
    whose footprint in a kept plane matches a user object (IoU >= ``min_iou``, the best one
    over all kept planes) takes that object's id, so a nucleus crossing reviewed slices stays
    one object; the others get new ids above the user's.
    """
    kept_planes = [tuple(k) for k in kept_planes]
    best: dict[int, tuple[float, int]] = {}
    for k in kept_planes:
        inter, pred_ids, user_ids = overlap_matrix(predicted[k], kept[k])
        if not inter.size:
            continue
        area_p = np.bincount(predicted[k].ravel())[pred_ids]
        area_u = np.bincount(kept[k].ravel())[user_ids]
        iou = inter / np.maximum(area_p[:, None] + area_u[None, :] - inter, 1)
        for row, pid in enumerate(pred_ids):
            col = int(np.argmax(iou[row]))
            if iou[row, col] >= min_iou and iou[row, col] > best.get(int(pid), (0.0, 0))[0]:
                best[int(pid)] = (float(iou[row, col]), int(user_ids[col]))
    lut = np.zeros(int(predicted.max()) + 1, np.int64)
    next_id = int(kept.max()) + 1
    for pid in np.unique(predicted[predicted > 0]):
        if int(pid) in best:
            lut[pid] = best[int(pid)][1]
        else:
            lut[pid], next_id = next_id, next_id + 1
    out = lut[predicted].astype(np.int32)
    for k in kept_planes:
        out[k] = kept[k]
    return out
