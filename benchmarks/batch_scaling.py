"""Benchmark of batch prediction to zarr (napari_segtool.core.batch).

Three measurements:

1. **same labels** -- a small ZYX volume predicted in memory (``core.predict``)
   and chunked on a 2-worker LocalCluster; AP@0.5 and the share of pixels whose
   ids map one-to-one.
2. **throughput vs workers** -- Mpx/s (wall clock of ``predict_to_zarr``, the
   cluster already started) with dask threads in-process, and 1 and 2 worker
   processes.
3. **peak memory vs volume size** -- ZYX volumes written chunk by chunk to zarr
   (uint16, never whole in memory), predicted by 2 workers with a dask
   ``memory_limit`` each; the resident memory (RSS) of the client process plus
   all worker processes is sampled every 0.1 s with psutil.

The model is a U-Net wired by hand to segment bright blobs (a 3x3 mean and a
threshold; same compute as a trained net of that size, and well-defined objects
without training). The volume is a periodic tiling of a 24x500x500 block of
ellipsoids with noise, generated lazily block by block (``da.map_blocks``).

    python benchmarks/batch_scaling.py            # a few minutes on 2 cores
    python benchmarks/batch_scaling.py --large    # adds 268 Mpx and 1.07 Gpx volumes
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BASE_SHAPE = (24, 500, 500)  # not a multiple of any chunk size: objects cross chunk borders


# ----------------------------------------------------------------------------- model and data
def threshold_unet(depth: int = 2, width: int = 4):
    """A U-Net whose weights make it segment bright blobs (normalised 3x3 mean > 0.5)."""
    import torch

    from napari_segtool.core.train import new_model

    model = new_model("unet", "instance", 1, depth=depth, width=width)
    net = model.net
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                mod.weight.zero_()
                if mod.bias is not None:
                    mod.bias.zero_()
        c0 = net.down[0][0].out_channels
        net.down[0][0].weight[0, 0] = 1.0 / 9.0
        net.down[0][3].weight[0, 0, 1, 1] = 1.0
        net.dec[-1][0].weight[0, c0, 1, 1] = 1.0
        net.dec[-1][3].weight[0, 0, 1, 1] = 1.0
        s = 20.0
        net.head.weight[:, 0, 0, 0] = torch.tensor([-s, s, 0.0, s])
        net.head.bias[:] = torch.tensor([s / 2, -s / 2, -10.0, -s / 2])
    net.eval()
    model.meta.name = f"blobs-d{depth}w{width}"
    model.meta.training["object_size"] = {"median_diameter": 16.0}
    return model


def make_base(seed: int = 0) -> np.ndarray:
    """Ellipsoids (radius 5-11 px in YX, 2-6 planes in Z) on a noisy background, uint16."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = BASE_SHAPE
    signal = np.zeros(BASE_SHAPE, np.float32)
    zz, yy, xx = np.ogrid[:nz, :ny, :nx]
    for _ in range(1800):
        cz, cy, cx = rng.uniform(0, nz), rng.uniform(0, ny), rng.uniform(0, nx)
        r, h = rng.uniform(5, 11), rng.uniform(2, 6)
        z0, z1 = max(0, int(cz - h)), min(nz, int(cz + h) + 1)
        y0, y1 = max(0, int(cy - r)), min(ny, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(nx, int(cx + r) + 1)
        d = ((zz[z0:z1] - cz) / h) ** 2 + ((yy[:, y0:y1] - cy) / r) ** 2 + ((xx[..., x0:x1] - cx) / r) ** 2
        signal[z0:z1, y0:y1, x0:x1] = np.maximum(signal[z0:z1, y0:y1, x0:x1], d < 1)
    image = 100 + 300 * signal + rng.normal(0, 25, BASE_SHAPE)
    return np.clip(image, 0, 65535).astype(np.uint16)


def _tile(block_info=None, base=None):
    loc = block_info[None]["array-location"]
    idx = [np.arange(a, b) % n for (a, b), n in zip(loc, base.shape)]
    return base[np.ix_(*idx)]


def synthetic_volume(shape, chunks, base):
    """A lazy periodic volume of ``base``, computed block by block."""
    import dask.array as da

    return da.map_blocks(_tile, dtype=base.dtype, chunks=da.core.normalize_chunks(chunks, shape), base=base)


def write_volume(path: Path, shape, base, chunks=(1, 1024, 1024)) -> Path:
    import dask.array as da

    if not path.exists():
        chunks = tuple(min(c, s) for c, s in zip(chunks, shape))
        da.to_zarr(synthetic_volume(shape, chunks, base), str(path), compute=True)
    return path


# ----------------------------------------------------------------------------- measuring
class RSSSampler(threading.Thread):
    """Samples the RSS of a process (default: this one) plus all its descendants every ``dt`` s.

    ``pid``: another process to watch (e.g. a benchmark's child run); its own RSS then counts as the
    "client" and its descendants (cluster workers) as workers.
    """

    def __init__(self, dt: float = 0.1, pid: int | None = None):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.dt = dt
        self.peak_total = 0
        self.peak_client = 0
        self.peak_worker = 0
        self._stop_event = threading.Event()

    def sample(self) -> tuple[int, int, int]:
        import psutil

        try:
            client = self.proc.memory_info().rss
        except psutil.Error:  # the watched process has ended
            return 0, 0, 0
        others = []
        try:
            children = self.proc.children(recursive=True)
        except psutil.Error:
            children = []
        for child in children:
            try:
                others.append(child.memory_info().rss)
            except psutil.Error:
                pass
        return client + sum(others), client, max(others, default=0)

    def run(self):
        while not self._stop_event.is_set():
            total, client, worker = self.sample()
            self.peak_total = max(self.peak_total, total)
            self.peak_client = max(self.peak_client, client)
            self.peak_worker = max(self.peak_worker, worker)
            time.sleep(self.dt)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self._stop_event.set()
        self.join()


def _warm():
    import torch  # noqa: F401

    import napari_segtool.core.batch  # noqa: F401
    return os.getpid()


class Cluster:
    """A LocalCluster of ``n`` 1-thread worker processes, imports warmed up."""

    def __init__(self, n: int, memory_limit: str | None = None):
        from distributed import Client, LocalCluster

        kw = {} if memory_limit is None else {"memory_limit": memory_limit}
        self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                                    silence_logs=logging.ERROR, **kw)
        self.client = Client(self.cluster, set_as_default=False)
        self.client.run(_warm)
        self.address = self.cluster.scheduler_address

    def close(self):
        self.client.close()
        self.cluster.close()


MB = 1024 * 1024


# ----------------------------------------------------------------------------- the three parts
def same_labels(model_path, work: Path, base) -> dict:
    import zarr

    from napari_segtool.core.batch import predict_to_zarr
    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.ops.metrics import instance_scores
    from napari_segtool.core.predict import predict

    shape = (4, 512, 512)
    vol = write_volume(work / "small.zarr", shape, base, chunks=(1, 256, 256))
    image = zarr.open_array(str(vol), mode="r")[...]
    ref = predict(load_model(model_path), image, axes="ZYX").labels
    cluster = Cluster(2)
    try:
        report = predict_to_zarr(model_path, vol, work / "small_labels.zarr", chunk_size=256,
                                 scheduler=cluster.address, threads_per_worker=1)
    finally:
        cluster.close()
    out = zarr.open_array(str(report.out_path), mode="r")[...]
    pairs, counts = np.unique(np.stack([out.ravel(), ref.ravel()]).astype(np.int64), axis=1, return_counts=True)
    best: dict[int, tuple[int, int]] = {}
    for (o, r), c in zip(pairs.T, counts):
        if c > best.get(o, (0, 0))[1]:
            best[o] = (r, c)
    one_to_one = len({r for r, _ in best.values()}) == len(best)
    agree = sum(c for _, c in best.values()) / out.size
    return {"shape": shape, "chunks": report.n_chunks, "objects_chunked": report.n_objects,
            "objects_in_memory": int(len(np.unique(ref)) - 1),
            "ap50": instance_scores(out, ref)["ap50"], "pixels_mapped": agree, "one_to_one": one_to_one}


def throughput(model_path, work: Path, base, shape) -> list[dict]:
    from napari_segtool.core.batch import predict_to_zarr

    vol = write_volume(work / "mosaic.zarr", shape, base)
    rows = []
    for workers in ("threads", 1, 2):
        cluster = None if workers == "threads" else Cluster(workers)
        try:
            report = predict_to_zarr(model_path, vol, work / "mosaic_labels.zarr", chunk_size=1024,
                                     scheduler="threads" if cluster is None else cluster.address,
                                     threads_per_worker=None if cluster is None else 1)
        finally:
            if cluster is not None:
                cluster.close()
        rows.append({"workers": workers, "mpx": np.prod(shape) / 1e6, "chunks": report.n_chunks,
                     "seconds": report.seconds, "mpx_per_s": report.mpx_per_s})
    return rows


def memory(model_path, work: Path, base, sizes, memory_limit: str):
    """Yields one row per volume size (as it is measured: the large ones take many minutes)."""
    from napari_segtool.core.batch import predict_to_zarr

    for shape in sizes:
        name = "vol_" + "x".join(map(str, shape))
        vol = write_volume(work / f"{name}.zarr", shape, base)
        cluster = Cluster(2, memory_limit)
        try:
            idle = RSSSampler().sample()
            with RSSSampler() as rss:
                report = predict_to_zarr(model_path, vol, work / f"{name}_labels.zarr", chunk_size=1024,
                                         scheduler=cluster.address, threads_per_worker=1)
        finally:
            cluster.close()
        shutil.rmtree(work / f"{name}_labels.zarr", ignore_errors=True)
        yield {"shape": shape, "mpx": np.prod(shape) / 1e6, "float32_mb": np.prod(shape) * 4 / MB,
               "chunks": report.n_chunks, "objects": report.n_objects, "seconds": report.seconds,
               "mpx_per_s": report.mpx_per_s, "idle_mb": idle[0] / MB, "peak_mb": rss.peak_total / MB,
               "peak_worker_mb": rss.peak_worker / MB, "peak_client_mb": rss.peak_client / MB}


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="add 268 Mpx and 1.07 Gpx volumes (long)")
    # a worker holding torch and the model resides at ~0.7 GB, and dask pauses a worker at 80% of its limit
    # (and its nanny kills it at 95%): 1 GiB is about the least a worker can run in
    parser.add_argument("--memory-limit", default="1GiB", help="dask memory_limit of each worker (default 1GiB)")
    parser.add_argument("--workdir", type=Path, default=None, help="where volumes go (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the volumes")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: same,throughput,memory")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))

    from napari_segtool.core.checkpoint import save_model

    work = args.workdir or Path(tempfile.mkdtemp(prefix="segtool-batch-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        base = make_base()
        small = save_model(threshold_unet(2, 4), work / "blobs-d2w4.safetensors")
        default = save_model(threshold_unet(3, 16), work / "blobs-d3w16.safetensors")
        print(f"cores: {len(os.sched_getaffinity(0))}, load average: {os.getloadavg()[0]:.1f}, work: {work}")
        if "same" not in skip:
            r = same_labels(default, work, base)
            print("\n== same labels: in-memory predict() vs chunked (2 workers, chunk 256), U-Net depth 3 width 16")
            print(f"volume {r['shape']}, {r['chunks']} chunks: objects {r['objects_chunked']} chunked / "
                  f"{r['objects_in_memory']} in memory, AP@0.5 {r['ap50']:.4f}, "
                  f"pixels with one-to-one ids {100 * r['pixels_mapped']:.3f}%, one-to-one: {r['one_to_one']}")
        if "throughput" not in skip:
            shape = (1, 2048, 2048)
            print(f"\n== throughput, U-Net depth 3 width 16 (the default size), {shape} uint16, chunk 1024")
            print(f"{'workers':>8} {'Mpx':>6} {'chunks':>6} {'seconds':>8} {'Mpx/s':>7}")
            for r in throughput(default, work, base, shape):
                print(f"{r['workers']:>8} {r['mpx']:6.1f} {r['chunks']:6d} {r['seconds']:8.1f} {r['mpx_per_s']:7.3f}")
        if "memory" not in skip:
            sizes = [(2, 1024, 1024), (8, 1024, 1024), (32, 1024, 1024)]
            if args.large:
                sizes += [(64, 2048, 2048), (256, 2048, 2048)]
            print(f"\n== peak memory vs volume, 2 workers x memory_limit {args.memory_limit}, "
                  f"U-Net depth 2 width 4, chunk 1024, RSS of client + workers")
            print(f"{'shape':>16} {'Mpx':>7} {'f32 MB':>8} {'chunks':>6} {'objects':>8} {'s':>7} {'Mpx/s':>6} "
                  f"{'idle MB':>8} {'peak MB':>8} {'worker':>7} {'client':>7}")
            for r in memory(small, work, base, sizes, args.memory_limit):
                print(f"{str(r['shape']):>16} {r['mpx']:7.1f} {r['float32_mb']:8.0f} {r['chunks']:6d} "
                      f"{r['objects']:8d} {r['seconds']:7.1f} {r['mpx_per_s']:6.2f} {r['idle_mb']:8.0f} "
                      f"{r['peak_mb']:8.0f} {r['peak_worker_mb']:7.0f} {r['peak_client_mb']:7.0f}", flush=True)
        print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
