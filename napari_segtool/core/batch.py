"""Segment images bigger than memory: chunked prediction with dask, labels streamed to zarr.

:func:`predict_to_zarr` runs a model over a lazy image (a path, a dask array,
or a numpy array) block by block and writes ``uint32`` labels to a zarr array,
chunk by chunk, so neither the image nor the labels are ever whole in memory.
:func:`predict_folder` does the same for many files with one cluster.

How it works (the geometry and merge maths live in
:mod:`napari_segtool.ops.chunked`):

1. **Predict** (one task per block). Each block reads its *window* -- its core
   plus a margin (for matching objects with its neighbours) plus a halo of half
   the model's receptive field (for context) -- straight from the source,
   predicts every plane of it with the architecture's ``predict_plane`` and
   crops the labels. This is what ``dask.array.overlap`` with
   ``boundary="none"`` does, but each task reads its own window, so reading is
   retried with the prediction and no neighbour slices travel between workers.
   An architecture whose detections depend on the tile (Mask R-CNN) gets the window
   widened to the whole tiles, on the whole image's grid, that label the region
   (:func:`~napari_segtool.core.window.window_for`); a stack whose Z assembly needs
   every plane (3D watershed, chain cutting) is never cut along Z.
   The core's labels (local ids) go to a temporary zarr, and the label strips
   around its borders to small files beside it (held in memory until their
   neighbour is done, they grew the job by ~1 MB a block: +0.5 GB at 20000²);
   the task returns the object count, the core areas and Z overlaps inside
   the block.
2. **Match.** For each border between two blocks, a small task matches the two
   views of the shared strip by IoU; along Z, objects of the last plane of one
   block and the first plane of the next are overlapped. On the client, ids are
   made globally unique by cumulative counts, equivalences are resolved with
   connected components (Z links use the same one-to-one IoU assignment as
   :func:`~napari_segtool.ops.postprocess.link_stack`) and every block gets a
   lookup table.
3. **Relabel** (one task per block): local ids -> final ids through the lookup
   table, written to the output zarr, which is moved to ``out_path`` only when
   complete. Semantic models skip steps 2-3 (their labels are class ids).

Schedulers: ``workers=N`` starts a :class:`distributed.LocalCluster` of ``N``
processes; ``scheduler="tcp://host:port"`` (or a :class:`distributed.Client`)
uses an existing cluster, whose workers must see ``out_path``'s folder and,
for path inputs, the input file; otherwise dask's threaded scheduler runs in
this process, one chunk at a time on all its threads (memory bounded by one window). The model travels to every worker once, as safetensors bytes plus
its JSON metadata (never a pickled torch module), and is rebuilt and cached
there. Failing chunks are retried ``retries`` times; chunks still failing are
listed in the :class:`BatchError` raised at the end, and nothing is written to
``out_path``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import uuid
from contextlib import nullcontext
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from napari_segtool.kernel.axes import spatial_axes as axes_without_channel
from napari_segtool.kernel.axes import to_canonical
from napari_segtool.ops.chunked import (Block, ChunkPlan, face_matches, merge_labels, overlap_counts,
                                         plan_chunks, round_up, union)
from napari_segtool.kernel.events import CancelToken, Cancelled
from napari_segtool.kernel.device import configure_threads, thread_count
from napari_segtool.kernel.memory import release_freed_memory
from napari_segtool.core.model import ModelMeta, SegModel
from napari_segtool.core.plan import model_diameter, plan_image
from napari_segtool.core.window import WindowSettings, input_halo, predict_window, window_for
from napari_segtool.io.atomic import replace_dir
from napari_segtool.io.outputs import check_output_path, unique_stems
from napari_segtool.kernel.events import run_job

__all__ = ["BatchReport", "BatchError", "predict_to_zarr", "predict_folder", "labels_name"]

log = logging.getLogger(__name__)

#: Smallest margin (pixels) around a core; grows with the model's typical object size.
MIN_MARGIN = 32


@dataclass
class BatchReport:
    """What a batch run did."""

    out_path: Path
    shape: tuple[int, ...]            # output (= input spatial) shape
    n_chunks: int
    n_objects: int                    # objects written (instance models; 0 for semantic ones)
    seconds: float
    mpx_per_s: float                  # input megapixels (all planes) per second, wall clock
    failed_chunks: list[tuple[int, ...]] = field(default_factory=list)
    retried_chunks: list[tuple[int, ...]] = field(default_factory=list)
    axes: str = ""                    # axes of the output
    source: str = ""
    errors: dict[tuple[int, ...], str] = field(default_factory=dict)  # chunk id -> last error


class BatchError(RuntimeError):
    """Some chunks still failed after all retries; ``report`` says which (nothing was written)."""

    def __init__(self, message: str, report: BatchReport | None = None,
                 reports: Sequence[BatchReport] = ()):
        super().__init__(message)
        self.report = report
        self.reports = list(reports)


# ----------------------------------------------------------------------------- sources and models
class _Source:
    """Where blocks are read from; re-opened lazily in each process that unpickles it.

    A path is re-opened with :func:`~napari_segtool.io.images.read_image` (lazy),
    an array travels as is (numpy data, or a dask graph that is computed
    synchronously block by block).
    """

    def __init__(self, axes: str, array: Any = None, path: str | None = None):
        self.axes = axes
        self.path = path
        self._array = array
        self._canon = None
        self._lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_canon"] = None
        state.pop("_lock")
        if self.path is not None:
            state["_array"] = None  # file handles do not travel; the worker re-opens the path
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def canonical(self):
        with self._lock:
            if self._canon is None:
                data = self._array
                if data is None:
                    from napari_segtool.io.images import read_image

                    data = read_image(self.path, axes=self.axes, lazy=True).data
                self._canon = to_canonical(data, self.axes)[0]
            return self._canon

    def read(self, key: tuple) -> np.ndarray:
        block = self.canonical()[key]
        if hasattr(block, "compute"):
            block = block.compute(scheduler="synchronous")
        return np.asarray(block)


_MODEL_CACHE: "OrderedDict[str, SegModel]" = OrderedDict()
_MODEL_LOCK = threading.Lock()


class _ModelRef:
    """A model that can travel: safetensors bytes + JSON metadata, rebuilt once per process."""

    def __init__(self, model: SegModel, threads: int | None = None, portable: bool = True):
        self.token = uuid.uuid4().hex
        self.threads = threads
        self._local: SegModel | None = None if portable else model
        self.meta_json = self.weights = None
        if portable:
            from safetensors.torch import save

            state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
            self.meta_json = json.dumps(model.meta.to_dict())
            self.weights = save(state)

    def __getstate__(self):
        if self.weights is None:
            raise TypeError("a local model reference cannot be sent to another process")
        state = self.__dict__.copy()
        state["_local"] = None
        return state

    def get(self) -> SegModel:
        if self._local is not None:
            return self._local
        with _MODEL_LOCK:
            model = _MODEL_CACHE.get(self.token)
            if model is None:
                model = self._build()
                _MODEL_CACHE[self.token] = model
                while len(_MODEL_CACHE) > 2:
                    _MODEL_CACHE.popitem(last=False)
            return model

    def _build(self) -> SegModel:
        import torch
        from safetensors.torch import load

        from napari_segtool.kernel.device import pick_device
        from napari_segtool.models.registry import get_architecture

        if self.threads:
            torch.set_num_threads(int(self.threads))
        meta = ModelMeta.from_dict(json.loads(self.meta_json))
        net = get_architecture(meta.arch).build(meta)
        net.load_state_dict(load(self.weights), strict=True)
        net.eval()
        return SegModel(net, meta).to(pick_device(None))


def _resolve_model(model: str | os.PathLike | SegModel) -> SegModel:
    if isinstance(model, SegModel):
        return model
    from napari_segtool.core.checkpoint import load_model

    return load_model(model)


# ----------------------------------------------------------------------------- per-run settings
class _Ctx:
    """Settings every task of one image needs (small, picklable)."""

    def __init__(self, **kw: Any):
        self.__dict__.update(kw)


@dataclass
class _BlockResult:
    pos: int
    index: tuple[int, ...]
    n_ids: int = 0
    core_area: np.ndarray | None = None
    z_pairs: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    attempts: int = 1
    error: str | None = None


class _Inflight:
    """Counts tasks running in local threads so a cancelled run can wait before cleaning up."""

    def __init__(self) -> None:
        self._n = 0
        self._cond = threading.Condition()

    def __enter__(self):
        with self._cond:
            self._n += 1

    def __exit__(self, *exc):
        with self._cond:
            self._n -= 1
            self._cond.notify_all()

    def wait(self, timeout: float = 120.0) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._n == 0, timeout)


def _retrying(fn: Callable[[], Any], retries: int, cancel: CancelToken | None, what: str):
    """Run ``fn`` up to ``1 + retries`` times; return ``(value, attempts, error or None)``."""
    error = None
    for attempt in range(1, retries + 2):
        if cancel is not None:
            cancel.raise_if_cancelled()
        try:
            return fn(), attempt, None
        except Cancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - reported per chunk, never dropped
            error = f"{type(exc).__name__}: {exc}"
            log.warning("%s failed (attempt %d of %d): %s", what, attempt, retries + 1, error)
    return None, retries + 1, error


def _read_window(source: _Source, block: Block) -> np.ndarray:
    """The block's window, all its planes, canonical: ``(stack..., h, w, C)``."""
    return source.read(block.slices(block.window) + (slice(None),))


def _predict_block_once(source: _Source, model_ref: _ModelRef, ctx: _Ctx, block: Block, pos: int,
                        strips: Sequence[tuple[int, tuple]], cancel: CancelToken | None) -> _BlockResult:
    import zarr

    model = model_ref.get()
    if ctx.torch_threads:  # torch's thread count is the calling thread's: dask's pool may be older than the job
        configure_threads(ctx.torch_threads)
    raw = _read_window(source, block)
    result = run_job(predict_window(model, raw, ctx.spatial_axes, ctx.settings,
                                    offset=(block.window[0], block.window[2]), cancel=cancel, region=block.region))
    ry, rx = block.region_in_window()
    labels = result.labels[..., ry, rx]
    labels = labels.reshape((-1,) + labels.shape[-2:]).astype(np.uint32)
    offset = int(labels.max()) if ctx.instance else 0
    cy, cx = block.core_in_region()
    core = labels[:, cy, cx]
    core_nd = core.reshape(block.stack_shape + core.shape[-2:])
    if cancel is not None:
        cancel.raise_if_cancelled()
    if not ctx.instance:  # class ids are final: straight to the output, in its axis order
        out = zarr.open_array(ctx.final_path, mode="r+")
        out[_permute(block.core_slices, ctx.perm)] = np.transpose(core_nd, ctx.perm)
        return _BlockResult(pos, block.index)
    zarr.open_array(ctx.local_path, mode="r+")[block.core_slices] = core_nd
    z_pairs = None
    if ctx.z_dim is not None and core_nd.shape[ctx.z_dim] > 1:
        a = np.take(core_nd, range(core_nd.shape[ctx.z_dim] - 1), axis=ctx.z_dim)
        b = np.take(core_nd, range(1, core_nd.shape[ctx.z_dim]), axis=ctx.z_dim)
        z_pairs = overlap_counts(a, b)
    area = np.bincount(core.ravel().astype(np.int64), minlength=offset + 1)
    for key, r in strips:  # read back by the border's match task (_face_task)
        np.savez_compressed(_strip_file(ctx, key, pos), labels[:, r[0]:r[1], r[2]:r[3]])
    return _BlockResult(pos, block.index, offset, area, z_pairs)


def _strip_file(ctx: _Ctx, key: int, pos: int) -> Path:
    return Path(ctx.strips_path) / f"{key}-{pos}.npz"


def _block_task(source, model_ref, ctx, block, pos, strips, cancel=None, inflight=None) -> _BlockResult:
    with inflight if inflight is not None else nullcontext():
        value, attempts, error = _retrying(
            lambda: _predict_block_once(source, model_ref, ctx, block, pos, strips, cancel),
            ctx.retries, cancel, f"chunk {block.index}")
    # the window's freed temporaries back to the OS: glibc kept them in its heap, and the resident set between
    # windows crept up ~5 MiB a window (4096², nuclei: 923 -> 1024 MiB over 16 windows; trimmed: 813-840)
    release_freed_memory()
    if error is not None:
        return _BlockResult(pos, block.index, attempts=attempts, error=error)
    value.attempts = attempts
    return value


def _face_task(ctx: _Ctx, res_a: _BlockResult, res_b: _BlockResult, key: int):
    if res_a.error or res_b.error:
        return None
    strips = []
    for res in (res_a, res_b):
        with np.load(_strip_file(ctx, key, res.pos)) as stored:
            strips.append(stored["arr_0"])
    return face_matches(*strips)


def _zface_task(sum_a: _BlockResult, sum_b: _BlockResult, ctx: _Ctx, block_a: Block, block_b: Block,
                cancel=None, inflight=None):
    """Overlaps between the last Z plane of ``block_a`` and the first of ``block_b`` (read back)."""
    if sum_a.error or sum_b.error:
        return None

    def run():
        import zarr

        arr = zarr.open_array(ctx.local_path, mode="r")
        sa, sb = list(block_a.core_slices), list(block_b.core_slices)
        z = ctx.z_dim
        sa[z] = slice(sa[z].stop - 1, sa[z].stop)
        sb[z] = slice(sb[z].start, sb[z].start + 1)
        return overlap_counts(arr[tuple(sa)], arr[tuple(sb)])

    with inflight if inflight is not None else nullcontext():
        value, _, error = _retrying(run, ctx.retries, cancel, f"Z border {block_a.index}/{block_b.index}")
    if error is not None:
        return _TaskError(RuntimeError(error))
    return value


def _relabel_task(ctx: _Ctx, block: Block, lut: np.ndarray, cancel=None, inflight=None):
    def run():
        import zarr

        local = zarr.open_array(ctx.local_path, mode="r")[block.core_slices]
        out = zarr.open_array(ctx.final_path, mode="r+")
        out[_permute(block.core_slices, ctx.perm)] = np.transpose(lut[local], ctx.perm)

    with inflight if inflight is not None else nullcontext():
        _, attempts, error = _retrying(run, ctx.retries, cancel, f"writing chunk {block.index}")
    return attempts, error


def _permute(items: Sequence, perm: Sequence[int]) -> tuple:
    return tuple(items[p] for p in perm)


# ----------------------------------------------------------------------------- schedulers
class _TaskError:
    def __init__(self, exc: BaseException):
        self.exc = exc


class _LocalRunner:
    """dask's threaded scheduler in this process (or ``synchronous`` for debugging), one task at a time.

    One window at a time, with every thread inside it (the network's, and ``ops.parallel``'s for the
    post-processing), as the in-memory path runs its plane: two windows side by side (one torch thread
    each) held two tiles' worth of ONNX Runtime buffers at once whenever both were in their network
    step, so the peak rose with the number of windows, i.e. with the image (issue 18: 1491 MiB at
    4096², 1696 at 8192²; the border merge and the relabelling stay ~500 MiB below it).
    """

    distributed = False

    def __init__(self, synchronous: bool = False, threads_per_worker: int | None = None):
        self.scheduler = "synchronous" if synchronous else "threads"
        self.threads = 1
        self.torch_threads = threads_per_worker or thread_count()
        self.inflight = _Inflight()
        self._saved = None

    def __enter__(self):
        import torch

        self._saved = torch.get_num_threads()
        torch.set_num_threads(self.torch_threads)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self._saved)
        release_freed_memory()

    def model_ref(self, model: SegModel) -> _ModelRef:
        return _ModelRef(model, portable=False)

    def share(self, obj):
        return obj

    def run(self, tasks: list, counted: set, on_count: Callable[[], None], cancel: CancelToken | None,
            retries: int) -> list:
        import dask
        from dask.callbacks import Callback

        class _Count(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if key in counted:
                    on_count()
                if cancel is not None:
                    cancel.raise_if_cancelled()

        try:
            with _Count():
                return list(dask.compute(*tasks, scheduler=self.scheduler, num_workers=self.threads,
                                         optimize_graph=False))
        except BaseException:
            self.inflight.wait()
            raise


class _DistRunner:
    """A dask.distributed client, on a LocalCluster started here or on a given scheduler."""

    distributed = True

    def __init__(self, workers: int | None, scheduler: Any, threads_per_worker: int | None):
        from distributed import Client, LocalCluster

        self.cluster = None
        self.inflight = None
        if scheduler is not None and not isinstance(scheduler, str):  # an existing Client
            self.client, self._own_client = scheduler, False
            self.threads = threads_per_worker
        elif scheduler is not None:
            self.client, self._own_client = Client(scheduler, set_as_default=False), True
            self.threads = threads_per_worker
        else:
            self.threads = threads_per_worker or 1
            self.cluster = LocalCluster(n_workers=int(workers), threads_per_worker=self.threads, processes=True,
                                        dashboard_address=":0", silence_logs=logging.ERROR)
            self.client, self._own_client = Client(self.cluster, set_as_default=False), True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._own_client:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def model_ref(self, model: SegModel) -> _ModelRef:
        return _ModelRef(model, threads=self.threads, portable=True)

    def share(self, obj):
        return self.client.scatter(obj, broadcast=True, hash=False)

    def run(self, tasks: list, counted: set, on_count: Callable[[], None], cancel: CancelToken | None,
            retries: int) -> list:
        from distributed import as_completed

        futures = self.client.compute(tasks, retries=retries, optimize_graph=False)
        where = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        pending = as_completed(futures, loop=self.client.loop, with_results=False)
        try:
            while not pending.is_empty():
                if cancel is not None:
                    cancel.raise_if_cancelled()
                if not pending.has_ready():
                    time.sleep(0.05)
                    continue
                batch = pending.next_batch(block=False)
                ok = [f for f in batch if f.status == "finished"]
                for f, value in zip(ok, self.client.gather(ok)):
                    results[where[f.key]] = value
                for f in batch:
                    if f.status != "finished":
                        results[where[f.key]] = _TaskError(f.exception())
                    if f.key in counted:
                        on_count()
        except BaseException:
            self.client.cancel(futures)
            raise
        return results


def _runner(workers, scheduler, threads_per_worker):
    if scheduler in (None, "threads", "threading", "synchronous", "sync"):
        if workers is None:
            return _LocalRunner(scheduler in ("synchronous", "sync"), threads_per_worker)
        return _DistRunner(workers, None, threads_per_worker)
    return _DistRunner(None, scheduler, threads_per_worker)


# ----------------------------------------------------------------------------- one image
def labels_name(path: str | os.PathLike) -> str:
    """Output name for an input file: ``cells.ome.tif`` -> ``cells_labels.zarr``."""
    name = Path(path).name
    for suffix in (".ome.zarr", ".ome.tiff", ".ome.tif", ".fits.gz", ".fit.gz", ".fts.gz"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] + "_labels.zarr"
    return Path(name).stem + "_labels.zarr"


def _margin(meta: ModelMeta, diameter: float, align: int) -> int:
    """Margin for matching objects across borders: about twice the objects' diameter (input pixels)."""
    if meta.task != "instance":
        return 0
    return round_up(max(MIN_MARGIN, 2 * diameter), align)


class _Job:
    """One image, planned: source, axes, the settings every window shares (:func:`plan_image`), chunks."""

    def __init__(self, model: SegModel, image: Any, out_path: str | os.PathLike, axes: str | None,
                 chunk_size: int, diameter: float | None = None, tile_size: int | None = None,
                 z_scale: float | None = None):
        self.out_path = Path(out_path).expanduser()
        if isinstance(image, (str, os.PathLike)):
            from napari_segtool.io.images import read_image

            img = read_image(image, axes=axes, lazy=True)
            data, axes, path = img.data, img.axes, str(Path(image).expanduser().resolve())
            self.source_name = path
            z_scale = z_scale or img.z_anisotropy()  # as segtool predict does for in-memory files
        else:
            data, path = image, None
            self.source_name = f"<{type(image).__module__}.{type(image).__name__} {tuple(image.shape)}>"
        plan = plan_image(model, data, axes, diameter=diameter, tile_size=tile_size,
                          postprocess={"z_scale": z_scale})
        axes = plan.axes
        self.axes = axes
        self.data = data
        self.source = _Source(axes, array=data, path=path)
        self.canon = plan.data
        spatial = plan.spatial_axes
        self.target = axes_without_channel(axes)
        self.perm = tuple(spatial.index(a) for a in self.target)
        meta = model.meta
        self.meta = meta
        self.settings = plan.settings
        self.spatial_axes = spatial
        self.notes = plan.notes
        factor = self.settings.factor
        align = self.settings.align
        halo = input_halo(model, self.settings)  # input pixels
        self.instance = meta.task == "instance"
        stack_axes = spatial[:-2]
        # a 3D watershed or Z chain cutting needs the whole stack: Z never cut, each block assembles it as
        # core.predict does; plain overlap linking is merged across Z blocks instead (ops.chunked.merge_labels)
        three_d = self.instance and self.settings.whole_z
        self.settings.link = three_d
        diameter = plan.scale.diameter or model_diameter(meta) / factor
        self.plan: ChunkPlan = plan_chunks(self.canon.shape[:-1], stack_axes, chunk_size,
                                           margin=_margin(meta, diameter, align), halo=halo, align=align,
                                           whole="Z" if three_d else "")
        self.plan.blocks = [_widened(blk, model, self.settings, self.canon.shape[-3:-1]) for blk in self.plan.blocks]
        self.z_dim = stack_axes.index("Z") if (self.instance and "Z" in stack_axes and not three_d) else None
        self.steps = len(self.plan.blocks) * (2 if self.instance else 1)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return _permute(self.plan.shape, self.perm)


def _widened(block: Block, model: SegModel, settings: WindowSettings, image_hw: tuple[int, int]) -> Block:
    """``block`` with its window grown to what the architecture needs for exact labels in its region
    (:func:`~napari_segtool.core.window.window_for`: Mask R-CNN's whole tiles of the whole image's grid)."""
    need = window_for(model, settings, block.region, image_hw)
    if need is None:
        return block
    y0, y1, x0, x1 = union(block.window, need)
    return replace(block, window=(max(0, y0), min(image_hw[0], y1), max(0, x0), min(image_hw[1], x1)))


def _create(path: Path, shape, chunks, attrs: dict | None = None):
    import zarr

    arr = zarr.open_array(str(path), mode="w", shape=tuple(shape), chunks=tuple(chunks), dtype="uint32",
                          fill_value=0)
    if attrs:
        arr.attrs.update(attrs)
    return arr


def _run_job(runner, job: _Job, model_ref_shared, retries: int, progress, cancel, step0: int,
             total: int) -> BatchReport:
    import dask

    t0 = time.perf_counter()
    plan = job.plan
    run_id = uuid.uuid4().hex[:12]
    out_path = job.out_path
    out_path.parent.mkdir(parents=True, exist_ok=True)
    work = out_path.parent / f".{out_path.name}.{run_id}.partial"
    work.mkdir()
    done = [step0]

    def tick():
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    local = not runner.distributed
    task_cancel = cancel if local else None
    inflight = runner.inflight if local else None
    try:
        if cancel is not None:
            cancel.raise_if_cancelled()
        ctx = _Ctx(settings=job.settings, spatial_axes=job.spatial_axes, instance=job.instance,
                   retries=int(retries), z_dim=job.z_dim, perm=job.perm,
                   local_path=str(work / "local.zarr"), final_path=str(work / "final.zarr"),
                   strips_path=str(work / "strips"), torch_threads=runner.torch_threads if local else None)
        (work / "strips").mkdir()
        _create(work / "final.zarr", job.out_shape, _permute(plan.chunks, job.perm))
        if job.instance:
            _create(work / "local.zarr", plan.shape, plan.chunks)
        source = runner.share(job.source)
        faces = plan.faces() if job.instance else []
        strips: list[list[tuple[int, tuple]]] = [[] for _ in plan.blocks]
        for key, face in enumerate(faces):
            if face.axis != "z":
                ra, rb = plan.strip(face)
                strips[face.a].append((key, ra))
                strips[face.b].append((key, rb))
        delayed = dask.delayed
        blocks = [delayed(_block_task, pure=False)(source, model_ref_shared, ctx, blk, pos, strips[pos],
                                                   task_cancel, inflight,
                                                   dask_key_name=f"segtool-block-{run_id}-{pos}")
                  for pos, blk in enumerate(plan.blocks)]
        face_tasks = []
        for key, face in enumerate(faces):
            name = f"segtool-face-{run_id}-{key}"
            if face.axis == "z":
                face_tasks.append(delayed(_zface_task, pure=False)(
                    blocks[face.a], blocks[face.b], ctx, plan.blocks[face.a], plan.blocks[face.b],
                    task_cancel, inflight, dask_key_name=name))
            else:
                face_tasks.append(delayed(_face_task, pure=False)(ctx, blocks[face.a], blocks[face.b], key,
                                                                  dask_key_name=name))
        results = runner.run(blocks + face_tasks, {b.key for b in blocks}, tick, cancel, retries)
        sums: list[_BlockResult] = results[: len(blocks)]
        face_results = results[len(blocks):]

        failed: dict[tuple[int, ...], str] = {}
        for pos, s in enumerate(sums):
            if isinstance(s, _TaskError):
                failed[plan.blocks[pos].index] = f"{type(s.exc).__name__}: {s.exc}"
            elif s.error:
                failed[s.index] = s.error
        for face, r in zip(faces, face_results):
            if isinstance(r, _TaskError):
                for p in (face.a, face.b):
                    failed.setdefault(plan.blocks[p].index, f"border {face.axis}: {r.exc}")
        retried = [s.index for s in sums if isinstance(s, _BlockResult) and s.attempts > 1]
        if failed:
            _raise_failed(job, failed, retried, t0)

        n_objects = 0
        if job.instance:
            luts, n_objects = _merge(sums, faces, face_results)
            writes = [delayed(_relabel_task, pure=False)(ctx, blk, luts[pos], task_cancel, inflight,
                                                         dask_key_name=f"segtool-write-{run_id}-{pos}")
                      for pos, blk in enumerate(plan.blocks)]
            outcomes = runner.run(writes, {w.key for w in writes}, tick, cancel, retries)
            for pos, r in enumerate(outcomes):
                index = plan.blocks[pos].index
                if isinstance(r, _TaskError):
                    failed[index] = f"{type(r.exc).__name__}: {r.exc}"
                elif r[1] is not None:
                    failed[index] = r[1]
                elif r[0] > 1 and index not in retried:
                    retried.append(index)
            if failed:
                _raise_failed(job, failed, retried, t0)

        import zarr

        final = zarr.open_array(str(work / "final.zarr"), mode="r+")
        final.attrs.update({"axes": job.target, "model": job.meta.name, "source": job.source_name,
                            "task": job.meta.task, "n_objects": int(n_objects),
                            "classes": list(job.meta.classes)})
        replace_dir(work / "final.zarr", out_path)
    except BaseException:
        if local:
            runner.inflight.wait()
        shutil.rmtree(work, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - t0
    pixels = float(np.prod(plan.shape))
    return BatchReport(out_path, job.out_shape, len(plan.blocks), int(n_objects), seconds,
                       pixels / 1e6 / max(seconds, 1e-9), [], sorted(retried), job.target, job.source_name)


def _raise_failed(job: _Job, failed: dict, retried: list, t0: float) -> None:
    seconds = time.perf_counter() - t0
    report = BatchReport(job.out_path, job.out_shape, len(job.plan.blocks), 0, seconds, 0.0,
                         sorted(failed), sorted(retried), job.target, job.source_name, dict(failed))
    ids = ", ".join(str(i) for i in sorted(failed))
    first = next(iter(failed.values()))
    raise BatchError(f"{len(failed)} chunk(s) of {job.source_name} failed after retries: {ids} ({first}); "
                     f"nothing written to {job.out_path}", report)


def _merge(sums: list[_BlockResult], faces, face_results) -> tuple[list[np.ndarray], int]:
    """Lookup tables (local id -> final id) per block, from block summaries and border matches."""
    counts = np.array([s.n_ids for s in sums], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    n_ids = int(counts.sum())
    if n_ids >= 2**32 - 1:
        raise OverflowError(f"{n_ids} objects before merging do not fit uint32 ids")
    area = np.zeros(n_ids + 1, np.int64)
    z_a, z_b, z_n = [], [], []
    for s, off in zip(sums, offsets):
        area[off + 1: off + 1 + s.n_ids] = s.core_area[1: s.n_ids + 1]
        if s.z_pairs is not None:
            z_a.append(s.z_pairs[0] + off)
            z_b.append(s.z_pairs[1] + off)
            z_n.append(s.z_pairs[2])
    same = [np.zeros((0, 2), np.int64)]
    for face, r in zip(faces, face_results):
        oa, ob = offsets[face.a], offsets[face.b]
        if face.axis == "z":
            z_a.append(r[0] + oa)
            z_b.append(r[1] + ob)
            z_n.append(r[2])
        elif len(r):
            same.append(r + np.array([oa, ob]))
    z = (np.concatenate(z_a), np.concatenate(z_b), np.concatenate(z_n)) if z_a else None
    merged = merge_labels(n_ids, area, np.concatenate(same), z)
    luts = []
    for s, off in zip(sums, offsets):
        lut = merged.final[off: off + s.n_ids + 1].astype(np.uint32)
        lut[0] = 0
        luts.append(lut)
    return luts, merged.n_objects


# ----------------------------------------------------------------------------- public API
def predict_to_zarr(model: str | Path | SegModel, image, out_path, *, axes: str | None = None,
                    chunk_size: int = 1024, workers: int | None = None, scheduler: str | None = None,
                    threads_per_worker: int | None = None, retries: int = 2,
                    progress: Callable[[int, int], None] | None = None,
                    cancel: CancelToken | None = None, diameter: float | None = None,
                    tile_size: int | None = None, z_scale: float | None = None,
                    overwrite: bool = False) -> BatchReport:
    """Segment ``image`` chunk by chunk and write ``uint32`` labels to the zarr array ``out_path``.

    Parameters
    ----------
    model : model name, path, or a loaded :class:`SegModel`.
    image : path of an image file (opened lazily with ``read_image``), a dask
        array, or a numpy array.
    out_path : zarr array to write (replaced if it exists, only once complete).
        It has the input's shape without the channel axis, axes in the input's
        order, and attributes ``axes``, ``model``, ``source``, ``task``,
        ``n_objects``, ``classes``.
    axes : axes of ``image`` (``TZYXC``); default from the file or guessed.
    chunk_size : YX edge of a chunk (rounded up to the network's pooling
        factor); stack axes are grouped so a chunk holds about
        ``chunk_size**2`` pixels. Memory per task grows with its square.
    workers : start a local cluster of this many worker processes.
    scheduler : ``"tcp://host:port"`` of a running dask scheduler (or a
        ``distributed.Client``); ``None``/``"threads"`` for threads in this
        process, ``"synchronous"`` for one thread (debugging).
    threads_per_worker : dask threads per worker process, also used as torch's
        thread count there (default 1 on a local cluster); locally, where one
        chunk runs at a time, torch's threads (default
        :func:`~napari_segtool.kernel.device.thread_count`).
    retries : extra attempts for a failing chunk before giving up.
    progress : called as ``(steps_done, steps_total)``; a chunk counts once when
        predicted and, for instance models, once more when written.
    cancel : stops the run (raises :class:`~napari_segtool.kernel.events.Cancelled`;
        nothing is written).
    diameter : the image's object diameter in pixels (``None``: estimated, as
        :func:`~napari_segtool.core.predict.iter_predict` does; both paths share
        :func:`~napari_segtool.core.plan.plan_image`).
    tile_size, z_scale : as for :func:`~napari_segtool.core.predict.iter_predict`
        (``z_scale`` defaults to the file's voxel size, then the model's).
    overwrite : replace an existing ``out_path`` (never an input); otherwise an
        existing ``out_path`` is an :class:`~napari_segtool.kernel.errors.OutputError`.

    Raises
    ------
    BatchError
        chunks still failing after ``retries`` (``err.report.failed_chunks``).
    InputError
        an image the model cannot segment.
    """
    check_output_path(out_path, [image] if isinstance(image, (str, os.PathLike)) else [], overwrite)
    seg = _resolve_model(model)
    job = _Job(seg, image, out_path, axes, chunk_size, diameter, tile_size, z_scale)
    with _runner(workers, scheduler, threads_per_worker) as runner:
        ref = runner.share(runner.model_ref(seg))
        return _run_job(runner, job, ref, retries, progress, cancel, 0, job.steps)


def predict_folder(model: str | Path | SegModel, inputs: Sequence[str | os.PathLike], out_dir, *,
                   axes: str | None = None, chunk_size: int = 1024, workers: int | None = None,
                   scheduler: str | None = None, threads_per_worker: int | None = None, retries: int = 2,
                   progress: Callable[[int, int], None] | None = None,
                   cancel: CancelToken | None = None, diameter: float | None = None,
                   tile_size: int | None = None, z_scale: float | None = None,
                   overwrite: bool = False) -> list[BatchReport]:
    """:func:`predict_to_zarr` for many files as one job: one cluster, the model sent once.

    Each input ``name.ext`` becomes ``out_dir/name_labels.zarr`` (see
    :func:`labels_name`). Progress counts the steps of all files together. A
    file whose chunks fail does not stop the others; a :class:`BatchError`
    listing the failed files (``err.reports`` holds every report) is raised at
    the end.
    """
    seg = _resolve_model(model)
    out_dir = Path(out_dir).expanduser()
    names = [f"{stem}_labels.zarr" for stem in unique_stems([labels_name(p)[: -len("_labels.zarr")]
                                                             for p in inputs])]
    for name in names:
        check_output_path(out_dir / name, inputs, overwrite)
    jobs = [_Job(seg, p, out_dir / n, axes, chunk_size, diameter, tile_size, z_scale) for p, n in zip(inputs, names)]
    total = sum(j.steps for j in jobs)
    reports: list[BatchReport] = []
    errors: list[str] = []
    with _runner(workers, scheduler, threads_per_worker) as runner:
        ref = runner.share(runner.model_ref(seg))
        step = 0
        for job in jobs:
            try:
                reports.append(_run_job(runner, job, ref, retries, progress, cancel, step, total))
            except BatchError as exc:
                reports.append(exc.report)
                errors.append(str(exc))
                if progress is not None:  # skip the steps this file did not do
                    progress(step + job.steps, total)
            step += job.steps
    if errors:
        raise BatchError(f"{len(errors)} of {len(jobs)} file(s) failed: " + "; ".join(errors), reports=reports)
    return reports
