"""The shipped models on real images they never saw, with no training at all.

    python benchmarks/zoo_real.py [--models nuclei nuclei-maskrcnn]

Data: the real fluorescence-nuclei image (512×512, 125 hand-labelled nuclei) and
3D stack (ZYX) that ship in the stardist wheel (``benchmarks/real_data.py``). The
shipped models were trained on simulations only (``scripts/train_defaults.py``),
so this is the "first result before any annotation" a user gets. The 3D stack is
predicted plane by plane and linked across Z, exactly as ``segtool predict``
does for a ZYX TIFF; its AP is computed on 3D objects.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.real_data import nuclei_2d, nuclei_3d  # noqa: E402
from napari_segtool.core.checkpoint import load_model  # noqa: E402
from napari_segtool.ops.metrics import instance_scores  # noqa: E402
from napari_segtool.core.predict import predict  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["nuclei", "nuclei-maskrcnn"])
    args = parser.parse_args(argv)
    data = {"real 2D (512x512)": (nuclei_2d(), "YX"), "real 3D stack": (nuclei_3d(), "ZYX")}
    print(f"{'model':18s} {'image':20s} {'AP@0.5':>7s} {'mean AP':>8s} {'precision':>9s} {'recall':>7s} "
          f"{'objects':>8s} {'seconds':>8s}")
    for name in args.models:
        model = load_model(name)
        for label, ((image, gt), axes) in data.items():
            t0 = time.perf_counter()
            pred = predict(model, image, axes=axes).labels
            seconds = time.perf_counter() - t0
            s = instance_scores(pred, gt)
            print(f"{name:18s} {label:20s} {s['ap50']:7.3f} {s['mean_ap']:8.3f} {s['precision50']:9.3f} "
                  f"{s['recall50']:7.3f} {int(pred.max()):8d} {seconds:8.1f}", flush=True)


if __name__ == "__main__":
    main()
