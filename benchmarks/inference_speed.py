"""Inference throughput, peak memory and achieved GFLOP/s vs image size; tiled vs untiled agreement.

    python benchmarks/inference_speed.py [--model nuclei] [--sizes 512 1024 2048 4096]

Each size runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own.
The practical compute limit is measured as this machine's dense float32 matmul
GFLOP/s with torch; the network's FLOPs per tile come from
``torch.utils.flop_counter``. The run also
scores each mosaic (tiles of one simulated image) against its exact labels, so
seams would show up as a lower AP at larger sizes.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    import torch

    a, b = torch.rand(n, n), torch.rand(n, n)
    torch.mm(a, b)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    return 2 * n**3 * repeats / (time.perf_counter() - t0) / 1e9


def run_one(model_name: str, size: int, tile: int) -> dict:
    import resource

    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.predict import predict
    from napari_segtool.ops.tiling import halo_for, make_tiles
    from napari_segtool.sim import simulate_nuclei

    model = load_model(model_name)
    sim = simulate_nuclei((512, 512), seed=0)
    reps = -(-size // 512)
    image = np.tile(sim.image, (reps, reps))[:size, :size]
    n = int(sim.labels.max())
    gt = np.block([[np.where(sim.labels > 0, sim.labels + n * (i * reps + j), 0) for j in range(reps)]
                   for i in range(reps)])[:size, :size]
    net = model.net
    halo = halo_for(model.meta.receptive_field, net.align)
    tile = min(tile, -(-(size + 2 * halo) // net.align) * net.align)
    n_tiles = len(make_tiles((size, size), tile, halo, net.align))
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(torch.zeros(1, model.meta.in_channels, tile, tile))
    flops = counter.get_total_flops() * n_tiles
    t0 = time.perf_counter()
    pred = predict(model, image, tile_size=tile)
    seconds = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from napari_segtool.ops.metrics import instance_scores

    return {"size": size, "seconds": seconds, "mpx_s": size * size / 1e6 / seconds, "peak_mb": peak_mb,
            "gflops": flops / seconds / 1e9, "objects": int(pred.labels.max()), "tiles": n_tiles,
            "ap50": instance_scores(pred.labels, gt)["ap50"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.model, args.one, args.tile)))
        return
    limit = matmul_gflops()
    print(f"dense matmul limit: {limit:.1f} GFLOP/s (torch, float32, this machine)")
    print(f"{'size':>6s} {'tiles':>6s} {'seconds':>8s} {'Mpx/s':>7s} {'peak MB':>8s} {'GFLOP/s':>8s} {'% of matmul':>11s} {'AP@0.5':>7s}")
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--tile", str(args.tile),
                              "--one", str(size)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{r['size']:6d} {r['tiles']:6d} {r['seconds']:8.2f} {r['mpx_s']:7.3f} {r['peak_mb']:8.0f} "
              f"{r['gflops']:8.1f} {100 * r['gflops'] / limit:10.0f}% {r['ap50']:7.3f}", flush=True)
    print("AP@0.5 is scored against the mosaic's exact labels: equal values across sizes and tile sizes "
          "mean tiling changes nothing (no seams).")


if __name__ == "__main__":
    main()
