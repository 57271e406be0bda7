"""Peak memory of predicting one 2D plane vs its size: the in-memory and the chunked path side by side.

    python benchmarks/peak_memory.py                       # 1024² .. 8192², numpy and zarr paths
    python benchmarks/peak_memory.py --sizes 2048 20000 --modes zarr --model blobs
    python benchmarks/peak_memory.py --stages 4096 --diameter 14   # what each step of one plane holds

The input is a mosaic of simulated nuclei (``sim.simulate_nuclei``, four 1000x1000 tiles, flipped
and rotated per chunk) written chunk by chunk to a ``uint16`` zarr array, so creating it stays
small. Each run is its own process, through the public entry points:

* ``numpy`` (in memory): the image read into a ``uint16`` numpy array, ``core.predict.predict`` on it,
  labels back as one ``int32`` array -- what the plugin and ``segtool predict --out dir/`` do. Planes
  over ``core.predict.LARGE_PLANE_PIXELS`` run through the chunked path inside ``predict``.
* ``zarr`` (chunked): ``segtool predict MODEL in.zarr --out labels.zarr`` (``core.batch.predict_to_zarr``,
  dask threads in the process): neither the image nor the labels are ever whole in memory.
* ``api``: ``core.predict.predict(model, dask.array.from_zarr(in.zarr))``: lazy input, in-memory labels.

Peak memory is the resident set (RSS) of the run's process plus its children, sampled every 0.1 s
with psutil, and the kernel's own high-water mark (``ru_maxrss`` of the child, from ``wait4``); the
larger of the two is the peak.

What "flat" means here (issue 18): a user's image and its labels have to fit in memory on the
in-memory path whatever the tool does (2 + 4 bytes a pixel for ``uint16`` in, ``int32`` out); what the
prediction needs *beyond* them should not depend on the image's size. So each row prints
``I/O`` (the input and label arrays a path holds whole: numpy 6 B/px, api 4 B/px, zarr none) and
``peak-I/O``; ``B/px`` is the growth of ``peak-I/O`` per added pixel since the size before it, and
``flat`` says whether ``peak-I/O`` stays within 10 % of that size's (sizes doubling: 4x the pixels). The
chunked path must be flat at every size; the in-memory path holds whole-plane maps and post-processing
temporaries (docs/benchmarks/peak_memory.txt lists them), so its ``B/px`` is that path's cost per pixel, up to
``LARGE_PLANE_PIXELS`` (4096²), above which ``predict`` runs the plane chunk by chunk. A ``verdict`` line per path
closes the table: the largest ``peak-I/O`` of all sizes against the smallest size's (and the second size's), and
"flat, bounded within X %" when that is within the 10 %.
Planes whose tiles add up to under 2 Mpx run the reference network (``models.runtime.PREPARE_AFTER_PIXELS``:
preparing ONNX Runtime would not pay off), so the first row over that runs another backend.
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.batch_scaling import MB, RSSSampler  # noqa: E402

TILE = 1000            # mosaic tile edge = the input's zarr chunk (not the prediction's 1024 chunks)
LIMIT_MB = 3e9 / MB    # the target: under 3 GB (2861 MiB)
FLAT_TOLERANCE = 1.10  # "flat": peak-I/O at most 10 % above the previous (4x smaller) size's
MODES = ("numpy", "zarr", "api")


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


def child_predict(mode: str, model: str, image: str, diameter: float | None) -> None:
    """The ``numpy`` / ``api`` run (its own process): ``core.predict.predict`` on the image read whole into
    numpy, or on the lazy zarr; prints the objects, the bytes of the arrays held whole and the RSS before."""
    import gc
    import resource

    import dask.array as da
    import psutil
    import zarr

    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.predict import predict

    seg = load_model(model)
    gc.freeze()  # as ``segtool predict`` does once the model is loaded
    data = np.asarray(zarr.open_array(image, mode="r")[...]) if mode == "numpy" else da.from_zarr(image)
    base = psutil.Process().memory_info().rss
    pred = predict(seg, data, axes="YX", diameter=diameter)
    held = pred.labels.nbytes + (data.nbytes if mode == "numpy" else 0)
    print(json.dumps({"objects": int(pred.labels.max()), "io_mb": held / MB, "base_mb": base / MB,
                      "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_one(mode: str, model: str, image: Path, out: Path, diameter: float | None) -> dict:
    """Runs one prediction in a child process; peak RSS sampled from here and read back with wait4."""
    if mode == "zarr":
        cmd = [sys.executable, "-m", "napari_segtool.cli", "--quiet", "predict", model, str(image),
               "--out", str(out), "--overwrite"] + (["--diameter", str(diameter)] if diameter else [])
    else:
        cmd = [sys.executable, __file__, "--child", mode, model, str(image), str(diameter or 0)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    with RSSSampler(pid=proc.pid) as rss:
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    if mode == "zarr":
        import zarr

        report = {"objects": zarr.open_array(str(out), mode="r").attrs.get("n_objects"), "io_mb": 0.0}
    else:
        report = json.loads(stdout.strip().splitlines()[-1])
    peak = max(rss.peak_total / MB, usage.ru_maxrss / 1024)
    return {"seconds": seconds, "peak_mb": peak, "objects": report["objects"], "io_mb": report["io_mb"],
            "net_mb": peak - report["io_mb"]}


#: (module, function) pairs whose calls ``--stages`` reports: the tiling, post-processing and assembly steps
STAGES = (("napari_segtool.models.unet", "tiled_apply"), ("napari_segtool.models.unet", "instances_from_maps"),
          ("napari_segtool.ops.postprocess", "distance_inside"), ("napari_segtool.ops.postprocess", "in_bands"),
          ("napari_segtool.ops.postprocess", "_flood_from_peaks"), ("napari_segtool.ops.postprocess", "fill_holes"),
          ("napari_segtool.ops.postprocess", "_finished"), ("napari_segtool.core.window", "assemble"),
          ("napari_segtool.core.window", "labels_to_input"))


@dataclass
class StageCall:
    """One call of a watched function: traced bytes (numpy reports its buffers to tracemalloc) at entry, at
    the peak inside it and at exit, and the process's RSS at entry and exit."""

    name: str
    depth: int
    enter: int
    rss_in: int
    inner_peak: int = 0
    peak: int = 0
    exit: int = 0
    rss_out: int = 0


def watch_stages(calls: list[StageCall]) -> None:
    """Wraps the :data:`STAGES` functions (where the module has them) to record a :class:`StageCall` each."""
    import functools
    import importlib
    import tracemalloc

    import psutil

    proc, stack = psutil.Process(), []
    for module_name, name in STAGES:
        module = importlib.import_module(module_name)
        real = getattr(module, name, None)
        if real is None:
            continue

        def watched(*args, _real=real, _name=name, **kwargs):
            current, peak = tracemalloc.get_traced_memory()
            if stack:
                stack[-1].inner_peak = max(stack[-1].inner_peak, peak)
            tracemalloc.reset_peak()
            call = StageCall(_name, len(stack), current, proc.memory_info().rss)
            stack.append(call)
            calls.append(call)
            try:
                return _real(*args, **kwargs)
            finally:
                call.exit, peak = tracemalloc.get_traced_memory()
                call.peak, call.rss_out = max(call.inner_peak, peak), proc.memory_info().rss
                stack.pop()
                if stack:
                    stack[-1].inner_peak = max(stack[-1].inner_peak, call.peak)

        setattr(module, name, functools.wraps(real)(watched))


def stages(model: str, image: Path, diameter: float | None) -> None:
    """``--stages``: what one in-memory prediction holds, step by step, in bytes per image pixel."""
    import gc
    import tracemalloc

    import zarr

    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.predict import predict

    seg = load_model(model)
    gc.freeze()
    data = np.asarray(zarr.open_array(str(image), mode="r")[...])
    for _ in range(2):  # the fast path prepared (models.runtime.PREPARE_AFTER_PIXELS), first calls paid
        predict(seg, data[:1024, :1024], axes="YX", diameter=diameter)
    calls: list[StageCall] = []
    watch_stages(calls)
    tracemalloc.start()
    pred = predict(seg, data, axes="YX", diameter=diameter)
    tracemalloc.stop()
    px = data.size
    print(f"{data.shape[0]}x{data.shape[1]}: {int(pred.labels.max())} objects; traced bytes (numpy buffers allocated "
          f"during the run) per image pixel; RSS MiB; the input ({data.nbytes / MB:.0f} MiB) was read before")
    print(f"{'step':<24} {'enter':>6} {'peak':>6} {'exit':>6}   {'RSS in':>6} {'RSS out':>7}")
    for c in calls:
        print(f"{'  ' * c.depth + c.name:<24} {c.enter / px:6.1f} {c.peak / px:6.1f} {c.exit / px:6.1f}   "
              f"{c.rss_in / MB:6.0f} {c.rss_out / MB:7.0f}")


@dataclass
class Flatness:
    """``peak-I/O`` of one path over the sizes: growth per pixel against the size before, and the verdict over all."""

    rows: list[tuple[int, float]] = field(default_factory=list)   # (pixels, peak-I/O MiB) of each size so far

    def judge(self, pixels: int, net_mb: float) -> tuple[float, bool]:
        last_px, last_mb = self.rows[-1] if self.rows else (0, 0.0)
        grown = pixels - last_px if last_px else 0
        per_px = (net_mb - last_mb) * MB / grown if grown else 0.0
        flat = not grown or net_mb <= FLAT_TOLERANCE * last_mb
        self.rows.append((pixels, net_mb))
        return per_px, flat

    def verdict(self, mode: str) -> str:
        """One line: the largest ``peak-I/O`` of all sizes against the smallest size's (and the second's, as
        the smallest may run the reference network, ``PREPARE_AFTER_PIXELS``); flat when within the tolerance."""
        (px0, mb0), (top_px, top_mb) = self.rows[0], max(self.rows, key=lambda r: r[1])
        spread = top_mb / mb0 - 1
        line = (f"{mode}: peak-I/O {min(r[1] for r in self.rows):.0f}..{top_mb:.0f} MiB over {_edge(px0)}².."
                f"{_edge(self.rows[-1][0])}²; the largest ({_edge(top_px)}²) is {spread:+.0%} over the smallest size's")
        if len(self.rows) > 2:
            line += f", {top_mb / self.rows[1][1] - 1:+.0%} over {_edge(self.rows[1][0])}²'s"
        ok = spread <= FLAT_TOLERANCE - 1
        return line + (f": flat, bounded within {max(spread, 0):.0%}" if ok else
                       f": NOT flat (over {FLAT_TOLERANCE - 1:.0%})")


def _edge(pixels: int) -> int:
    return int(round(pixels ** 0.5))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["numpy", "zarr"])
    parser.add_argument("--model", default="nuclei",
                        help="model name or folder; 'blobs': batch_scaling's hand-wired U-Net (depth 2, width 4), "
                             "~20x less compute per pixel than 'nuclei', for the chunked path's own memory at full size")
    parser.add_argument("--diameter", type=float, help="objects' diameter in pixels (skips the size estimate)")
    parser.add_argument("--workdir", type=Path, help="where the mosaics go (kept; default: a temp folder)")
    parser.add_argument("--stages", type=int, metavar="SIZE",
                        help="instead: one in-memory prediction of a SIZE² mosaic, what each step holds (tracemalloc)")
    parser.add_argument("--child", nargs=4, metavar=("MODE", "MODEL", "IMAGE", "DIAMETER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, model, image, diameter = args.child
        child_predict(mode, model, image, float(diameter) or None)
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="segtool-peak-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    tiles = mosaic_tiles()
    model = args.model
    if args.stages:
        stages(model, write_mosaic(work / f"mosaic_{args.stages}.zarr", args.stages, tiles), args.diameter)
        return 0
    if model == "blobs":
        from benchmarks.batch_scaling import threshold_unet
        from napari_segtool.core.checkpoint import save_model

        model = str(save_model(threshold_unet(2, 4), work / "blobs-d2w4"))
    print(f"model {args.model}, diameter {args.diameter or 'estimated'}; cores {len(os.sched_getaffinity(0))}, "
          f"load average {os.getloadavg()[0]:.1f} (shared machine: seconds are noisy); MiB = 2**20 bytes; "
          f"limit 3 GB = {LIMIT_MB:.0f} MiB; flat: peak-I/O within {FLAT_TOLERANCE - 1:.0%} of the size before")
    head = " | ".join(f"{m + ' objects':>13} {'s':>5} {'peak':>5} {'I/O':>5} {'peak-I/O':>8} {'B/px':>5} {'flat':>4}"
                      for m in args.modes)
    print(f"{'size':>6} {'Mpx':>5} | {head}", flush=True)
    flat = {m: Flatness() for m in args.modes}
    try:
        for size in args.sizes:
            image = write_mosaic(work / f"mosaic_{size}.zarr", size, tiles)
            cells = []
            for mode in args.modes:
                out = work / f"labels_{size}_{mode}.zarr"
                r = run_one(mode, model, image, out, args.diameter)
                shutil.rmtree(out, ignore_errors=True)
                per_px, ok = flat[mode].judge(size * size, r["net_mb"])
                over = "" if r["peak_mb"] < LIMIT_MB else "!"
                cells.append(f"{r['objects']:>13} {r['seconds']:5.0f} {r['peak_mb']:5.0f}{over} {r['io_mb']:5.0f} "
                             f"{r['net_mb']:8.0f} {per_px:5.1f} {'yes' if ok else 'NO':>4}")
            print(f"{size:>6} {size * size / 1e6:5.1f} | {' | '.join(cells)}", flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print("peak, I/O, peak-I/O in MiB; '!' marks a peak over 3 GB; B/px: growth of peak-I/O per pixel since the size before")
    for mode in args.modes:
        if flat[mode].rows:
            print("verdict " + flat[mode].verdict(mode))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
