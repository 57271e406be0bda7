"""Speed of finished labels vs image size: where the time goes, and whether the fast path changes the labels.

    python benchmarks/inference_speed.py [--model nuclei] [--sizes 512 1024 2048 4096] [--tile N]
                                         [--backend auto|torch|fused|onnxruntime] [--diameter D]
    python benchmarks/inference_speed.py --halo-check 0.999 1024 0.97 1152   # labels per halo mass / tile

Each size runs in a fresh subprocess (so its peak RSS, ``ru_maxrss``, is its own) on a mosaic of
one simulated 512² nuclei image, scored against the mosaic's exact labels. Per row:

* ``first s``: seconds of the process's first ``core.predict.predict`` of the image, which also prepares
  the fast path (ONNX export / BatchNorm folding, once per model and process) and pays first-call costs;
* ``seconds``, ``e2e Mpx/s``: the same image predicted again, as every later image of a folder or click
  of the widget is (normalising, the object-size estimate unless ``--diameter``, tiles,
  post-processing, labels back on the input grid); all other columns are of this run;
* ``net Mpx/s``: image pixels / seconds inside the network's forward calls for the image's plane
  (not the size estimate's small crops); ``GFLOP/s`` and ``% mm``: the network's FLOPs
  (``torch.utils.flop_counter`` per tile pixel × pixels run) per second of those calls, against this
  machine's dense float32 matmul measured in the same subprocess just before;
* ``overhead``: pixels the network computed for the plane / the plane's pixels (halo, overlap, padding); a plane
  that ran chunked (over ``core.predict.LARGE_PLANE_PIXELS``) counts all its chunks' tiles (each chunk runs the
  tiles of the whole plane's grid that reach its region, ``ops.tiling.tiled_apply``), and so do ``net Mpx/s``,
  ``GFLOP/s`` and ``% mm``;
* ``post %``: share of the end-to-end time in ``ops.postprocess.instances_from_maps`` (watershed,
  splits, holes); ``other %``: the rest outside network and post-processing (size estimate, blending,
  normalising, resampling);
* ``peak MB``: the process's ``ru_maxrss`` (MiB; the matmul and the first prediction count too);
  ``peak-I/O``: less the image, its exact labels and the predicted labels, which any tool must hold: what the
  prediction needs beyond them (``benchmarks/peak_memory.py`` prints it for the in-memory and chunked paths);
* ``halo``/``tile``: what the plane's tiling used (the measured halo, ``models.base.measured_halo``,
  for planes large enough; ``--backend torch`` is the reference path: eager torch, half the theoretical
  receptive field).

The timers wrap ``models.unet.inference_forward``, ``instances_from_maps`` and ``tiled_apply`` from the
outside (the benchmark's own probe; the library runs unchanged). The machine is shared: run it when
``uptime`` is low and quote the load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-``repeats`` dense float32 matmul GFLOP/s with torch (the practical compute limit)."""
    import torch

    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def mosaic(size: int) -> tuple[Any, Any]:
    """A ``size``² mosaic of one simulated 512² nuclei image and its exact labels (ids unique per copy)."""
    import numpy as np

    from napari_segtool.sim import simulate_nuclei

    sim = simulate_nuclei((512, 512), seed=0)
    reps = -(-size // 512)
    image = np.tile(sim.image, (reps, reps))[:size, :size]
    n = int(sim.labels.max())
    gt = np.block([[np.where(sim.labels > 0, sim.labels + n * (i * reps + j), 0) for j in range(reps)]
                   for i in range(reps)])[:size, :size]
    return image, gt


class Probe:
    """Seconds and pixels inside the library's network, tiling and post-processing calls."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []  # one per tiled_apply: plane shape, tile, halo, net seconds/pixels
        self.post_seconds = 0.0

    def install(self) -> None:
        import napari_segtool.models.unet as unet

        real_forward, real_tiled, real_post = unet.inference_forward, unet.tiled_apply, unet.instances_from_maps

        def inference_forward(*args, **kwargs) -> Callable:
            run = real_forward(*args, **kwargs)

            def timed(x):
                t0 = time.perf_counter()
                y = run(x)
                call = self.calls[-1]
                call["net_seconds"] += time.perf_counter() - t0
                call["net_pixels"] += x.shape[0] * x.shape[2] * x.shape[3]
                return y

            return timed

        def tiled_apply(fn, plane, *args, **kwargs):
            from napari_segtool.ops.chunked import wanted
            from napari_segtool.ops.tiling import plan_tile_size, tiling_frame

            _, plane_hw, _ = tiling_frame(plane)  # a chunk's window tiles on the whole plane's grid
            size = plan_tile_size(plane_hw, kwargs["tile_size"], kwargs["halo"], kwargs.get("align", 1))
            self.calls.append({"shape": tuple(plane.shape[:2]), "tile": size, "halo": kwargs["halo"],
                               "chunk": wanted(plane) is not None,
                               "net_seconds": 0.0, "net_pixels": 0, "seconds": 0.0})
            t0 = time.perf_counter()
            out = real_tiled(fn, plane, *args, **kwargs)
            self.calls[-1]["seconds"] = time.perf_counter() - t0
            return out

        def instances_from_maps(*args, **kwargs):
            t0 = time.perf_counter()
            out = real_post(*args, **kwargs)
            self.post_seconds += time.perf_counter() - t0
            return out

        unet.inference_forward, unet.tiled_apply, unet.instances_from_maps = \
            inference_forward, tiled_apply, instances_from_maps


def run_one(model_name: str, size: int, tile: int | None, diameter: float | None) -> dict:
    import gc
    import resource

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.predict import predict
    from napari_segtool.ops.metrics import instance_scores

    limit = matmul_gflops()
    model = load_model(model_name)
    # what `segtool predict` and the plugin's warm-up do once torch is imported: its millions of objects
    # stay out of the cyclic collector's full passes (one took 0.15 s inside a 512² run's post-processing)
    gc.freeze()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model.net.eval()(torch.zeros(1, model.meta.in_channels, 256, 256))
    flops_per_px = counter.get_total_flops() / 256**2
    image, gt = mosaic(size)
    t0 = time.perf_counter()
    predict(model, image, tile_size=tile, diameter=diameter)  # the first image: the fast path is prepared here
    first_seconds = time.perf_counter() - t0
    probe = Probe()
    probe.install()
    t0 = time.perf_counter()
    pred = predict(model, image, tile_size=tile, diameter=diameter)
    seconds = time.perf_counter() - t0
    # the image's plane: its chunks' windows when it ran chunked (all of them: the plane's work), else its one call
    chunks = [c for c in probe.calls if c["chunk"]]
    main = chunks[0] if chunks else max(probe.calls, key=lambda c: c["shape"][0] * c["shape"][1])
    plane_px = size * size if chunks else main["shape"][0] * main["shape"][1]
    net_s = sum(c["net_seconds"] for c in chunks) if chunks else main["net_seconds"]
    net_px = sum(c["net_pixels"] for c in chunks) if chunks else main["net_pixels"]
    return {"size": size, "first_seconds": first_seconds, "seconds": seconds, "mpx_s": size * size / 1e6 / seconds,
            "net_mpx_s": plane_px / 1e6 / net_s, "gflops": flops_per_px * net_px / net_s / 1e9,
            "limit": limit, "overhead": net_px / plane_px, "halo": main["halo"], "tile": main["tile"],
            "post_share": probe.post_seconds / seconds, "net_share": sum(c["net_seconds"] for c in probe.calls) / seconds,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "io_mb": (image.nbytes + gt.nbytes + pred.labels.nbytes) / 2**20,
            "objects": int(pred.labels.max()), "ap50": instance_scores(pred.labels, gt)["ap50"],
            "flops_per_px": flops_per_px}


def network_sweep(widths: list[int], depth: int, size: int, backend: str | None) -> None:
    """Untrained U-Nets of other widths: FLOPs per pixel and network-only speed on one ``size``² tile
    (what a narrower shipped model would run at; its accuracy needs retraining to know)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from napari_segtool.models.runtime import inference_forward
    from napari_segtool.models.unet import UNet, unet_receptive_field

    print(f"\nuntrained U-Nets, depth {depth} (receptive field {unet_receptive_field(depth)} px), one {size}² tile, "
          f"backend {backend or 'auto'}:")
    print(f"{'width':>5s} {'kFLOP/px':>8s} {'net Mpx/s':>9s} {'GFLOP/s':>7s}")
    x = torch.rand(1, 1, size, size)
    for width in widths:
        net = UNet(1, 4, depth=depth, width=width).eval()
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            net(x[..., :256, :256])
        per_px = counter.get_total_flops() / 256**2
        run = inference_forward(net, 1, "cpu", backend, work=10**12)
        with torch.inference_mode():
            run(x)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                run(x)
                best = min(best, time.perf_counter() - t0)
        print(f"{width:5d} {per_px / 1e3:8.1f} {size * size / 1e6 / best:9.3f} {per_px * size * size / best / 1e9:7.1f}",
              flush=True)


def tiled_real(k: int) -> tuple[Any, Any]:
    """The real 512² nuclei image (``benchmarks/real_data.py``) tiled ``k``×``k`` without gaps, its labels too."""
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from real_data import nuclei_2d

    image, gt = nuclei_2d()
    n = int(gt.max())
    labels = np.block([[np.where(gt > 0, gt + n * (i * k + j), 0) for j in range(k)] for i in range(k)])
    return np.tile(image, (k, k)), labels


def halo_check(model_name: str, configs: list[tuple[float, int]]) -> None:
    """Labels per (gradient mass of the measured halo, largest tile) on the 2048² mosaic (diameter 14) and the
    real image tiled 4×4 and 6×6 (diameter estimated): AP against the truth, and against the first
    configuration's labels."""
    import functools

    import numpy as np

    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.predict import predict
    from napari_segtool.models import base, runtime, unet
    from napari_segtool.ops.metrics import instance_scores, match_instances

    model = load_model(model_name)
    cases = {"mosaic2048 d14": (*mosaic(2048), 14.0), "real tiled 4x4": (*tiled_real(4), None),
             "real tiled 6x6": (*tiled_real(6), None)}
    measure, first = base.measured_halo, {}
    for mass, tile in configs:
        unet.measured_halo, unet.PREDICT_TILE = functools.partial(measure, mass=mass), tile
        runtime._CACHE.pop(model.net, None)  # the halo is cached per weights version, not per mass
        for name, (image, gt, diameter) in cases.items():
            t0 = time.process_time()
            labels = np.asarray(predict(model, image, diameter=diameter).labels)
            cpu = time.process_time() - t0
            s = instance_scores(labels, gt)
            ref = first.setdefault(name, labels)
            print(f"mass {mass} tile {tile} halo {model.architecture.halo(model.net, model.meta)} {name}: "
                  f"objects {labels.max()} AP50 {s['ap50']:.4f} meanAP {s['mean_ap']:.4f} cpu {cpu:.1f}s; vs first: "
                  f"identical {np.array_equal(ref, labels)} AP50 {match_instances(labels, ref, 0.5).ap:.4f}",
                  flush=True)


HEADER = (f"{'size':>6s} {'tile':>5s} {'halo':>4s} {'first s':>7s} {'seconds':>8s} {'e2e Mpx/s':>9s} {'net Mpx/s':>9s} "
          f"{'GFLOP/s':>7s} {'% mm':>5s} {'overhead':>8s} {'post %':>6s} {'other %':>7s} {'peak MB':>7s} {'peak-I/O':>8s} "
          f"{'AP@0.5':>6s}")


def format_row(r: dict) -> str:
    other = 1.0 - r["post_share"] - r["net_share"]
    return (f"{r['size']:6d} {r['tile']:5d} {r['halo']:4d} {r['first_seconds']:7.2f} {r['seconds']:8.2f} {r['mpx_s']:9.3f} {r['net_mpx_s']:9.3f} "
            f"{r['gflops']:7.1f} {100 * r['gflops'] / r['limit']:4.0f}% {r['overhead']:8.2f} "
            f"{100 * r['post_share']:5.0f}% {100 * other:6.0f}% {r['peak_mb']:7.0f} {r['peak_mb'] - r['io_mb']:8.0f} "
            f"{r['ap50']:6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--sizes", type=int, nargs="*", default=[512, 1024, 2048, 4096])
    parser.add_argument("--tile", type=int, default=None, help="largest tile (default: the architecture's)")
    parser.add_argument("--backend", default=None, help="SEGTOOL_BACKEND for the runs (torch: the reference path)")
    parser.add_argument("--diameter", type=float, default=None,
                        help="objects' diameter in pixels (skips the size estimate)")
    parser.add_argument("--widths", type=int, nargs="*", default=[],
                        help="also time untrained depth-4 U-Nets of these widths (network only, one tile)")
    parser.add_argument("--halo-check", type=float, nargs="*", default=[], metavar="MASS TILE",
                        help="labels per (halo gradient mass, largest tile) pair vs the first pair, then stop")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.halo_check:
        pairs = args.halo_check
        halo_check(args.model, [(pairs[i], int(pairs[i + 1])) for i in range(0, len(pairs) - 1, 2)])
        return
    if args.widths:
        network_sweep(args.widths, 4, 1024, args.backend)
        if not args.sizes:
            return
    if args.one:
        print(json.dumps(run_one(args.model, args.one, args.tile, args.diameter)))
        return
    env = dict(os.environ)
    if args.backend:
        env["SEGTOOL_BACKEND"] = args.backend
    print(f"model {args.model}, backend {env.get('SEGTOOL_BACKEND', 'auto')}, tile {args.tile or 'default'}, "
          f"diameter {args.diameter or 'estimated'}; load average at start: {os.getloadavg()[0]:.2f}")
    print(HEADER)
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--model", args.model, "--one", str(size)]
        for flag, value in (("--tile", args.tile), ("--diameter", args.diameter)):
            if value is not None:
                cmd += [flag, str(value)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(format_row(r), f" (matmul {r['limit']:.0f} GFLOP/s, load {os.getloadavg()[0]:.1f})", flush=True)
    print("AP@0.5 is scored against the mosaic's exact labels; % mm = network GFLOP/s / dense matmul GFLOP/s; peak MB:\n"
          "ru_maxrss (MiB) of the size's process, peak-I/O: less the image, its exact labels and the predicted labels\n"
          "(what the prediction needs beyond its input and output; flat in image size: benchmarks/peak_memory.py)")


if __name__ == "__main__":
    main()
