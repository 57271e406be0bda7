"""Model + image of any dimensionality -> labels with the image's spatial shape.

The image is put in canonical axis order (stack axes, then ``YX``, then ``C``;
see :mod:`napari_segtool.kernel.axes`), normalised with percentiles measured once
over the whole image (so all planes of a stack look alike), and predicted plane
by plane with tiling. Instance labels of a Z stack are linked across planes into
3D objects; in other stacks every plane keeps ids of its own, made unique.
Lazy (dask/zarr) inputs are read tile by tile.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterable, Sequence

import numpy as np

from napari_segtool.kernel.axes import guess_axes, to_canonical
from napari_segtool.kernel.device import configure_threads
from napari_segtool.kernel.events import CancelToken, Progress
from napari_segtool.core.model import SegModel
from napari_segtool.ops.normalize import NormalizedPlane, fit_normalizer
from napari_segtool.ops.postprocess import link_stack, split_by_shape, split_z_chains, typical_diameter
from napari_segtool.ops.sources import source_table


class InputError(ValueError):
    """The image cannot be segmented by this model (message says why)."""


@dataclass
class Prediction:
    """Labels with the input's spatial shape and axes, plus optional extras."""

    labels: np.ndarray
    axes: str
    probabilities: np.ndarray | None = None  # (K, *spatial) when requested
    tables: dict[tuple, list[dict[str, Any]]] = field(default_factory=dict)  # plane index -> object rows
    notes: list[str] = field(default_factory=list)


class _ChannelMean:
    """Lazy mean over channels, for running a 1-channel model on RGB/multichannel data."""

    def __init__(self, plane: Any):
        self.plane = plane
        self.shape = tuple(plane.shape[:-1]) + (1,)

    def __getitem__(self, key):
        return np.asarray(self.plane[key], dtype=np.float32).mean(axis=-1, keepdims=True)


def check_image(image: Any) -> None:
    """Reject arrays no model can use, with a message a user understands."""
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        raise InputError(f"expected an array, got {type(image).__name__}")
    if 0 in image.shape:
        raise InputError(f"the image is empty (shape {tuple(image.shape)})")
    kind = np.dtype(image.dtype).kind
    if kind not in "biuf":
        raise InputError(f"cannot segment an image of dtype {image.dtype}")


def iter_predict(
    model: SegModel,
    image: Any,
    *,
    axes: str | None = None,
    planes: Iterable[tuple[int, ...]] | None = None,
    out: np.ndarray | None = None,
    tile_size: int | None = None,
    batch_size: int = 2,
    link_z: bool = True,
    return_probabilities: bool = False,
    cancel: CancelToken | None = None,
    tile_callback: Callable[[int, int], None] | None = None,
    num_threads: int | None = None,
    **postprocess: Any,
) -> Generator[Progress, None, Prediction]:
    """Predict ``image`` plane by plane, yielding :class:`Progress` after each plane.

    Parameters
    ----------
    model : the model to run.
    image : numpy or dask/zarr array, any of 2D, 3D, 4D, 5D with ``axes``.
    axes : axis letters of ``image`` (``TZYXC``); guessed from the shape when ``None``.
    planes : indices over the stack axes (e.g. ``[(3,), (4,)]`` for Z planes 3 and 4) to
        predict; ``None`` predicts all. Other planes of ``out`` are left untouched.
    out : existing labels array (spatial shape) to update in place, e.g. a napari layer.
    tile_size : tile edge in pixels (default: the model's); memory scales with it.
    link_z : link instance labels across Z into 3D objects (only when all planes run).
    return_probabilities : also return the network's per-class maps (2D inputs only).
    tile_callback : called as ``(tiles_done, tiles_total)`` within each plane.
    postprocess : overrides of the model's post-processing (e.g. ``fg_threshold``).
    """
    check_image(image)
    configure_threads(num_threads)
    try:
        axes = guess_axes(tuple(image.shape), axes)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    data, canon = to_canonical(image, axes)
    spatial_axes = canon[:-1]
    stack_shape = tuple(data.shape[: len(spatial_axes) - 2])
    meta = model.meta
    channels = data.shape[-1]
    notes: list[str] = []
    if channels != meta.in_channels:
        if meta.in_channels == 1:
            notes.append(f"averaged {channels} channels for the single-channel model '{meta.name}'")
        else:
            raise InputError(f"model '{meta.name}' expects {meta.in_channels} channel(s), the image has {channels}")
    try:
        normalizer = fit_normalizer(data, **meta.normalization)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if channels != meta.in_channels:
        normalizer.lo = normalizer.lo.mean(keepdims=True)
        normalizer.hi = normalizer.hi.mean(keepdims=True)

    all_planes = list(np.ndindex(*stack_shape)) if stack_shape else [()]
    todo = all_planes if planes is None else [tuple(p) for p in planes]
    stack_params = {**meta.postprocess, **{k: v for k, v in postprocess.items() if v is not None}}
    link = link_z and planes is None and meta.task == "instance" and "Z" in spatial_axes
    want_maps = link and stack_params.get("z_mode") == "watershed"
    maps: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    result_planes: dict[tuple, np.ndarray] = {}
    tables: dict[tuple, list[dict[str, Any]]] = {}
    probs = None
    arch = model.architecture
    model.net.eval()
    for i, index in enumerate(todo):
        if cancel is not None:
            cancel.raise_if_cancelled()
        plane = data[index] if index else data
        if channels != meta.in_channels:
            plane = _ChannelMean(plane)
        result = arch.predict_plane(model.net, NormalizedPlane(plane, normalizer), meta, device=model.device,
                                    tile_size=tile_size, batch_size=batch_size,
                                    return_probabilities=want_maps or (return_probabilities and not index),
                                    progress=tile_callback, cancel=cancel, **postprocess)
        result_planes[index] = result.labels
        if result.table:
            tables[index] = result.table
        elif meta.task == "instance" and stack_params.get("source_table"):
            tables[index] = source_table(np.asarray(plane[:, :, :], dtype=np.float32).mean(axis=-1), result.labels,
                                         stack_params.get("star_classifier"))
        if want_maps and result.probabilities is not None:
            plane_maps = arch.stack_maps(result.probabilities, meta)
            want_maps = plane_maps is not None
            if want_maps:
                maps[index] = tuple(_to_uint8(m) for m in plane_maps)
        if result.probabilities is not None and return_probabilities and not index:
            probs = result.probabilities
        yield Progress("predict", i + 1, len(todo), f"plane {index}" if index else "image")

    labels = _assemble(result_planes, data.shape[:-1], spatial_axes, meta.task, link, stack_params,
                       maps if want_maps else None)
    labels = _to_original_order(labels, spatial_axes, axes)
    if out is not None:
        if out.shape != labels.shape:
            raise InputError(f"output layer has shape {out.shape}, expected {labels.shape}")
        if meta.task == "instance" and out.max() > 0:  # new ids must not collide with kept planes
            labels = np.where(labels > 0, labels + int(out.max()), 0).astype(np.int32)
        _write_planes(out, labels, todo, spatial_axes, axes)
        labels = out
    return Prediction(labels, "".join(a for a in axes if a not in "CS"), probs, tables, notes)


def _to_uint8(p: np.ndarray) -> np.ndarray:
    """A 0..1 map stored in a quarter of the memory (kept for every plane of a stack)."""
    return np.round(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)


def _assemble(planes: dict[tuple, np.ndarray], shape: tuple[int, ...], spatial_axes: str, task: str,
              link: bool, stack: dict[str, Any] | None = None,
              maps: dict[tuple, tuple[np.ndarray, np.ndarray]] | None = None) -> np.ndarray:
    """Planes into one label array; when ``link``, instance planes of Z stacks become 3D objects.

    ``stack`` holds the model's post-processing settings, overrides included
    (those of :data:`~napari_segtool.ops.postprocess.CORE_POSTPROCESS` act here). With
    ``maps`` (each plane's foreground and distance maps, ``z_mode="watershed"``)
    the objects come from one 3D watershed of the stacked maps
    (:func:`split_by_shape`); otherwise planes are linked by overlap and
    ``z_split_dip > 0`` cuts chains stacked along Z at their area necks
    (:func:`split_z_chains`).
    """
    stack = stack or {}
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
            return split_by_shape(fg[t].astype(np.float32) / 255, dist[t].astype(np.float32) / 255,
                                  typical_diameter(labels[t]), z_scale=float(stack.get("z_scale", 2.0)),
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


def _to_original_order(labels: np.ndarray, spatial_axes: str, original_axes: str) -> np.ndarray:
    target = "".join(a for a in original_axes.replace("S", "C") if a != "C")
    return np.transpose(labels, [spatial_axes.index(a) for a in target])


def _write_planes(out: np.ndarray, labels: np.ndarray, planes: Sequence[tuple], spatial_axes: str,
                  original_axes: str) -> None:
    """Copy only the predicted planes from ``labels`` into ``out`` (both in original order)."""
    target = "".join(a for a in original_axes.replace("S", "C") if a != "C")
    stack_axes = spatial_axes[:-2]
    for index in planes:
        key = [slice(None)] * len(target)
        for axis, i in zip(stack_axes, index):
            key[target.index(axis)] = i
        out[tuple(key)] = labels[tuple(key)]


def predict(model: SegModel, image: Any, **kwargs: Any) -> Prediction:
    """Synchronous :func:`iter_predict`; pass ``callback`` to receive progress events."""
    from napari_segtool.kernel.events import run_job

    callback = kwargs.pop("callback", None)
    return run_job(iter_predict(model, image, **kwargs), callback)
