"""Model + image of any dimensionality -> labels with the image's spatial shape.

The image is put in canonical axis order (stack axes, then ``YX``, then ``C``;
see :mod:`napari_segtool.kernel.axes`), normalised with percentiles measured once
over the whole image (so all planes of a stack look alike), resampled so that its
objects have the size the model was trained on (:mod:`napari_segtool.core.scale`;
the object size is given or estimated) and predicted plane by plane with tiling.
Post-processing works on that model grid with the model's own object size, so it
does not depend on what else is in the image; labels are then mapped back to the
input grid, exact shape. Instance labels of a Z stack become 3D objects; in other
stacks every plane keeps ids of its own, made unique. Lazy (dask/zarr) inputs are
read tile by tile.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterable, Sequence

import numpy as np

from napari_segtool.kernel.axes import from_canonical, to_canonical
from napari_segtool.kernel.axes import spatial_axes as axes_without_channel
from napari_segtool.kernel.device import configure_threads
from napari_segtool.kernel.errors import InputError
from napari_segtool.kernel.events import CancelToken, Progress
from napari_segtool.core.model import SegModel
from napari_segtool.core.plan import ImagePlan, plan_image
from napari_segtool.core.window import join_kept_planes, predict_window
from napari_segtool.ops.chunked import round_up
from napari_segtool.ops.sources import source_table




@dataclass
class Prediction:
    """Labels with the input's spatial shape and axes, plus optional extras."""

    labels: np.ndarray
    axes: str
    probabilities: np.ndarray | None = None  # (K, *spatial) when requested
    tables: dict[tuple, list[dict[str, Any]]] = field(default_factory=dict)  # plane index -> object rows
    notes: list[str] = field(default_factory=list)
    diameter: float | None = None  # the image's object diameter (input pixels), given or estimated
    scale_factor: float = 1.0      # model-grid pixels per input pixel the model ran at


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
    diameter: float | None = None,
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
    diameter : the image's typical object diameter in XY pixels; ``None`` estimates it
        (instance models that know their own object size). The image is run at the
        model's object size and the labels mapped back (``Prediction.scale_factor``).
    postprocess : overrides of the model's post-processing (e.g. ``fg_threshold``).
    """
    threads = configure_threads(num_threads)
    plan = plan_image(model, image, axes, diameter=diameter, link_z=link_z, tile_size=tile_size,
                      batch_size=batch_size, postprocess=postprocess)
    axes, data, spatial_axes, settings = plan.axes, plan.data, plan.spatial_axes, plan.settings
    label_axes = axes_without_channel(axes)
    todo = None if planes is None else [tuple(p) for p in planes]
    # planes kept by the user (``out`` outside ``planes``) inside a Z stack: predict every plane in 3D,
    # then join the new objects to the kept ones instead of losing the stack's 3D objects
    join = todo is not None and out is not None and settings.link
    settings.link = settings.link and (todo is None or join)
    if _too_large_for_memory(plan, todo, out, return_probabilities):
        labels = yield from _predict_chunked(model, image, axes, plan, tile_size, cancel, threads)
        return Prediction(labels, label_axes, None, {}, plan.notes
                          + ["a plane this large ran chunk by chunk (memory bounded by the chunks)"],
                          plan.scale.diameter, settings.factor)
    window = yield from predict_window(model, data, spatial_axes, settings, planes=None if join else todo,
                                       first_probabilities=return_probabilities, cancel=cancel,
                                       tile_callback=tile_callback)
    labels, tables = window.labels, window.tables
    stack_shape = tuple(data.shape[: len(spatial_axes) - 2])
    all_planes = list(np.ndindex(*stack_shape)) if stack_shape else [()]
    if join:
        kept = [p for p in all_planes if p not in set(todo)]
        labels = join_kept_planes(labels, to_canonical(np.asarray(out), label_axes)[0][..., 0], kept)
    todo = todo if todo is not None else all_planes
    if model.meta.task == "instance" and settings.stack.get("source_table"):
        for index in todo:
            if index not in tables:
                plane = data[index] if index else data
                tables[index] = source_table(np.asarray(plane[:, :, :], dtype=np.float32).mean(axis=-1),
                                             labels[index] if index else labels,
                                             settings.stack.get("star_classifier"), sky=plan.sky)
    labels = from_canonical(labels, spatial_axes, axes)
    if out is not None:
        if out.shape != labels.shape:
            raise InputError(f"output layer has shape {out.shape}, expected {labels.shape}")
        if model.meta.task == "instance" and out.max() > 0 and not join:  # new ids must not collide with kept ones
            labels = np.where(labels > 0, labels + int(out.max()), 0).astype(np.int32)
        _write_planes(out, labels, todo, spatial_axes, axes)
        labels = out
    return Prediction(labels, label_axes, window.probabilities, tables, plan.notes,
                      plan.scale.diameter, settings.factor)


#: Planes with more pixels (in the content box) run through the chunked path, whose memory beyond the
#: input and the labels is bounded by its chunks. In memory a plane holds its blended maps (8 B/px) and the
#: post-processing's temporaries (~22 B/px more at the flood) over ONNX Runtime's tile buffers: its peak
#: less input and labels grows with the plane (issue 18, docs/benchmarks/peak_memory.txt section 7: 8000²,
#: under the former 64 Mpx, peaked at 3181 MiB, 2815 beyond I/O), while the chunked path holds one window's.
#: The threshold is the largest plane issue 18 asks >= 1 Mpx/s of in memory (4096²: 1.26-1.29 Mpx/s idle),
#: so no larger plane holds more than a 4096² one does. Chunks run the whole plane's tile grid (ops.tiling), so
#: the two paths give the same labels (a 2048² mosaic in 1024² chunks: identical, ids aside; 799 px differed
#: when each window tiled itself); tiles cut at a chunk's region may still move a pixel in rare cases.
LARGE_PLANE_PIXELS = 4096 * 4096
#: The largest chunk such a plane runs in; a plane is cut into equal chunks no larger (:func:`large_plane_chunk`),
#: so no window holds more than a 4096² plane in memory does, and halos stay a small share of the work. Same run,
#: nuclei mosaics (2 threads; in memory 1.248 Mpx/s at 6144²): 8192² in 4096² chunks 1.101 Mpx/s (2048²: 0.931),
#: 6144² in 3072² chunks 1.037 (4096² + a 2048 strip: 0.969; 2048²: 0.937; 1024²: 0.641), peak beyond I/O
#: 1316-1392 MiB (in memory 6144²: 1997).
LARGE_PLANE_CHUNK = 4096


def large_plane_chunk(hw: tuple[int, int], largest: int = LARGE_PLANE_CHUNK, step: int = 256) -> int:
    """The chunk side for a plane of ``hw`` pixels: the plane's longer side cut into the fewest equal parts of at
    most ``largest`` pixels, rounded up to ``step`` (6144 -> 3072, 8192 -> 4096, 5000 -> 2560)."""
    side = max(int(n) for n in hw)
    parts = -(-side // largest)
    return min(largest, round_up(-(-side // parts), step))


def _too_large_for_memory(plan: ImagePlan, todo: Any, out: Any, return_probabilities: bool) -> bool:
    hw = plan.settings.content_hw or (0, 0)
    stack = plan.data.shape[: len(plan.spatial_axes) - 2]
    plane_px = hw[0] * hw[1] * plan.settings.factor ** 2
    return (not stack and todo is None and out is None and not return_probabilities
            and not plan.settings.stack.get("source_table") and max(plane_px, hw[0] * hw[1]) > LARGE_PLANE_PIXELS)


def _predict_chunked(model: SegModel, image: Any, axes: str, plan: ImagePlan, tile_size: int | None,
                     cancel: CancelToken | None, threads: int) -> Generator[Progress, None, np.ndarray]:
    """One huge plane through :func:`~napari_segtool.core.batch.predict_to_zarr` (a temporary zarr, one
    chunk at a time on ``threads`` torch threads), with the scale already found; progress streamed from
    the worker thread."""
    import queue
    import tempfile
    import threading

    import zarr

    from napari_segtool.core.batch import predict_to_zarr  # the chunked path sits on this module

    events: "queue.Queue[tuple[int, int] | None]" = queue.Queue()
    outcome: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="segtool-large-") as tmp:
        target = f"{tmp}/labels.zarr"

        def work() -> None:
            try:
                predict_to_zarr(model, image, target, axes=axes, chunk_size=large_plane_chunk(plan.data.shape[-3:-1]),
                                diameter=plan.scale.diameter, tile_size=tile_size,
                                z_scale=plan.settings.stack.get("z_scale", 2.0) / plan.settings.factor,
                                progress=lambda done, total: events.put((done, total)), cancel=cancel,
                                threads_per_worker=threads)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                outcome["error"] = exc
            finally:
                events.put(None)

        thread = threading.Thread(target=work, name="segtool-large-plane", daemon=True)
        thread.start()
        while (event := events.get()) is not None:
            yield Progress("predict", event[0], event[1], "chunks")
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        # ids < 2**31 (fewer objects than pixels): the same bits as int32, no second 1.6 GB copy at 20000²
        return np.asarray(zarr.open_array(target, mode="r")[...]).view(np.int32)


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
