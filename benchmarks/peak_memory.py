"""Peak memory of predicting one huge 2D plane (up to 20000x20000) with a shipped model.

    python benchmarks/peak_memory.py                       # 2048², 8192², 20000², both paths (long)
    python benchmarks/peak_memory.py --sizes 2048 8192 --modes zarr

The input is a mosaic of simulated nuclei (``sim.simulate_nuclei``, four 1000x1000 tiles, flipped
and rotated per chunk) written chunk by chunk to a ``uint16`` zarr array, so creating it stays
small. Each run is its own process, through the public entry points:

* ``zarr``: ``segtool predict MODEL in.zarr --out labels.zarr`` (``core.batch.predict_to_zarr``,
  dask threads in the process): neither the image nor the labels are ever whole in memory.
* ``api``: ``core.predict.predict(model, dask.array.from_zarr(in.zarr))``: the labels come back as
  one in-memory ``int32`` array (4 bytes a pixel, 1.6 GB at 20000²), so this path's floor grows
  with the plane; large planes go through the chunked path automatically.

Peak memory is the resident set (RSS) of the run's process plus its children, sampled every 0.1 s
with psutil, and the kernel's own high-water mark (``ru_maxrss`` of the child, from ``wait4``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.batch_scaling import MB, RSSSampler  # noqa: E402

TILE = 1000            # mosaic tile edge = the input's zarr chunk (not the prediction's 1024 chunks)
LIMIT_MB = 3e9 / MB    # the target: under 3 GB (2861 MiB)


def mosaic_tiles(seed: int = 0) -> list[np.ndarray]:
    """Four simulated nuclei tiles as ``uint16`` on one common intensity scale."""
    from napari_segtool.sim import simulate_nuclei

    images = [simulate_nuclei((TILE, TILE), seed=seed + k, snr=20.0).image for k in range(4)]
    hi = max(float(np.percentile(im, 99.9)) for im in images)
    return [np.clip(im / hi * 40000.0, 0, 65535).astype(np.uint16) for im in images]


def write_mosaic(path: Path, size: int, tiles: list[np.ndarray]) -> Path:
    """A ``size`` x ``size`` zarr mosaic written one chunk at a time (never whole in memory)."""
    import zarr

    if path.exists():
        return path
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    arr = zarr.open_array(str(tmp), mode="w", shape=(size, size), chunks=(TILE, TILE), dtype="uint16")
    n = -(-size // TILE)
    for i in range(n):
        for j in range(n):
            k = (3 * i + 5 * j + i * j) % 4
            tile = np.rot90(tiles[k], (i + 2 * j) % 4)
            tile = tile[:, ::-1] if (i ^ j) & 1 else tile
            y, x = i * TILE, j * TILE
            arr[y: y + TILE, x: x + TILE] = tile[: size - y, : size - x]
    tmp.rename(path)
    return path


def child_api(model: str, image: str) -> None:
    """The ``api`` run (its own process): ``core.predict.predict`` on the lazy zarr image."""
    import resource

    import dask.array as da

    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.predict import predict

    seg = load_model(model)
    pred = predict(seg, da.from_zarr(image), axes="YX")
    print(json.dumps({"objects": int(pred.labels.max()), "labels_mb": pred.labels.nbytes / MB,
                      "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_one(mode: str, model: str, image: Path, out: Path) -> dict:
    """Runs one prediction in a child process; peak RSS sampled from here and read back with wait4."""
    if mode == "zarr":
        cmd = [sys.executable, "-m", "napari_segtool.cli", "--quiet", "predict", model, str(image),
               "--out", str(out), "--overwrite"]
    else:
        cmd = [sys.executable, __file__, "--child-api", model, str(image)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    with RSSSampler(pid=proc.pid) as rss:
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    objects = None
    if mode == "zarr":
        import zarr

        objects = zarr.open_array(str(out), mode="r").attrs.get("n_objects")
    else:
        objects = json.loads(stdout.strip().splitlines()[-1])["objects"]
    return {"seconds": seconds, "peak_mb": rss.peak_total / MB, "maxrss_mb": usage.ru_maxrss / 1024,
            "objects": objects}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 20000])
    parser.add_argument("--modes", nargs="+", choices=["zarr", "api"], default=["zarr", "api"])
    parser.add_argument("--model", default="nuclei",
                        help="model name or folder; 'blobs': batch_scaling's hand-wired U-Net (depth 2, width 4), "
                             "~20x less compute per pixel than 'nuclei', for the chunked path's own memory at full size")
    parser.add_argument("--workdir", type=Path, help="where the mosaics go (kept; default: a temp folder)")
    parser.add_argument("--child-api", nargs=2, metavar=("MODEL", "IMAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_api:
        child_api(*args.child_api)
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="segtool-peak-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    tiles = mosaic_tiles()
    model = args.model
    if model == "blobs":
        from benchmarks.batch_scaling import threshold_unet
        from napari_segtool.core.checkpoint import save_model

        model = str(save_model(threshold_unet(2, 4), work / "blobs-d2w4"))
    print(f"model {args.model}; cores {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.1f} "
          f"(shared machine: seconds are noisy); limit 3 GB = {LIMIT_MB:.0f} MiB")
    print(f"{'size':>7} {'Mpx':>6} {'path':>5} {'objects':>8} {'seconds':>8} {'Mpx/s':>6} "
          f"{'peak RSS MiB':>12} {'ru_maxrss MiB':>13} {'< 3 GB':>6}", flush=True)
    try:
        for size in args.sizes:
            image = write_mosaic(work / f"mosaic_{size}.zarr", size, tiles)
            for mode in args.modes:
                out = work / f"labels_{size}_{mode}.zarr"
                r = run_one(mode, model, image, out)
                shutil.rmtree(out, ignore_errors=True)
                mpx = size * size / 1e6
                peak = max(r["peak_mb"], r["maxrss_mb"])
                print(f"{size:>7} {mpx:6.1f} {mode:>5} {r['objects']:>8} {r['seconds']:8.0f} "
                      f"{mpx / r['seconds']:6.3f} {r['peak_mb']:12.0f} {r['maxrss_mb']:13.0f} "
                      f"{'yes' if peak < LIMIT_MB else 'NO':>6}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
