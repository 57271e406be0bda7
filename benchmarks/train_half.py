"""Foundation benchmark: train on one half of an annotated image for a fixed time, score the other.

    python benchmarks/train_half.py [--budget 120]

1. Instances: the real 512×512 fluorescence-nuclei image from the stardist wheel
   (``benchmarks/real_data.py``): left half trains, right half scores (AP@0.5, mean AP).
2. Semantic: a 4-class RGB mosaic of real textures (scikit-image's brick, grass,
   gravel and a smoothed brick, tinted per class) with ~5% of pixels scribbled;
   the model labels the whole image (mIoU over all pixels).

Each is run side by side with the ilastik-style random forest on the same labels.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from skimage import data as skdata, draw, filters, segmentation

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baselines import RandomForestSegmenter  # noqa: E402
from benchmarks.real_data import nuclei_2d  # noqa: E402
from napari_segtool.core.data import make_example  # noqa: E402
from napari_segtool.ops.metrics import instance_scores, semantic_scores  # noqa: E402
from napari_segtool.core.predict import predict  # noqa: E402
from napari_segtool.core.train import TrainConfig, train  # noqa: E402


def instance_half(budget: float) -> list[tuple[str, dict, float]]:
    image, labels = nuclei_2d()
    left, right = (slice(None), slice(0, 256)), (slice(None), slice(256, None))
    rows = []
    t0 = time.perf_counter()
    res = train([make_example(image[left], labels[left])],
                config=TrainConfig(time_budget=budget, epochs=10_000, patience=10_000, val_fraction=0.15))
    seconds = time.perf_counter() - t0
    pred = predict(res.model, image[right]).labels
    rows.append(("U-Net (ours)", instance_scores(pred, labels[right]), seconds))
    t0 = time.perf_counter()
    rf = RandomForestSegmenter().fit_instances(image[left].astype(np.float32), labels[left])
    pred_rf = rf.predict_instances(image[right].astype(np.float32))
    rows.append(("random forest (ilastik-style)", instance_scores(pred_rf, labels[right]), time.perf_counter() - t0))
    return rows


def texture_mosaic(size: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """4 regions (Voronoi cells) filled with real photographed textures, tinted per class."""
    rng = np.random.default_rng(seed)
    textures = [skdata.brick(), skdata.grass(), skdata.gravel(), filters.gaussian(skdata.brick(), 3, preserve_range=True)]
    tints = np.array([[1.0, 0.8, 0.7], [0.8, 1.0, 0.8], [0.9, 0.9, 1.0], [1.0, 0.95, 0.8]])
    seeds = rng.uniform(0, size, (12, 2))
    yy, xx = np.mgrid[:size, :size]
    cell = np.argmin((yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2, axis=-1)
    classes = (cell % 4) + 1
    image = np.zeros((size, size, 3), np.float32)
    for k, tex in enumerate(textures):
        tex = np.asarray(tex, np.float32)[:size, :size]
        image[classes == k + 1] = (tex[..., None] * tints[k])[classes == k + 1]
    image += rng.normal(0, 5, image.shape)
    return image, classes


def scribbles(classes: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Random thick strokes inside each class region until ~``fraction`` of pixels are labelled."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(classes)
    inside = ~segmentation.find_boundaries(classes)
    target = fraction * classes.size
    while (out > 0).sum() < target:
        y, x = rng.integers(0, classes.shape[0], 2)
        if not inside[y, x]:
            continue
        k = classes[y, x]
        angle = rng.uniform(0, np.pi)
        length = rng.integers(20, 60)
        y2, x2 = int(y + length * np.sin(angle)), int(x + length * np.cos(angle))
        rr, cc = draw.line(y, x, np.clip(y2, 0, classes.shape[0] - 1), np.clip(x2, 0, classes.shape[1] - 1))
        for dy in (-1, 0, 1):
            r = np.clip(rr + dy, 0, classes.shape[0] - 1)
            keep = classes[r, cc] == k
            out[r[keep], cc[keep]] = k
    return out


def semantic_scribbles(budget: float) -> tuple[list[tuple[str, dict, float]], float]:
    image, classes = texture_mosaic()
    marks = scribbles(classes, 0.05)
    rows = []
    t0 = time.perf_counter()
    res = train([make_example(image, marks, task="semantic")], task="semantic",
                config=TrainConfig(time_budget=budget, epochs=10_000, patience=10_000, val_fraction=0.15))
    seconds = time.perf_counter() - t0
    pred = predict(res.model, image).labels
    rows.append(("U-Net (ours)", semantic_scores(pred, classes), seconds))
    t0 = time.perf_counter()
    rf = RandomForestSegmenter().fit(image, marks, marks > 0)
    rows.append(("random forest (ilastik-style)", semantic_scores(rf.predict_classes(image), classes),
                 time.perf_counter() - t0))
    return rows, float((marks > 0).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0, help="U-Net training seconds")
    parser.add_argument("--only", choices=["instance", "semantic"])
    args = parser.parse_args()
    if args.only in (None, "instance"):
        print(f"\nInstances: real nuclei image, train left half, score right half (budget {args.budget:.0f} s)")
        print(f"{'method':32s} {'AP@0.5':>7s} {'mean AP':>8s} {'seconds':>8s}")
        for name, s, sec in instance_half(args.budget):
            print(f"{name:32s} {s['ap50']:7.3f} {s['mean_ap']:8.3f} {sec:8.1f}")
    if args.only in (None, "semantic"):
        rows, frac = semantic_scribbles(args.budget)
        print(f"\nSemantic: 4-class texture mosaic, {100 * frac:.1f}% of pixels scribbled (budget {args.budget:.0f} s)")
        print(f"{'method':32s} {'mIoU':>7s} {'seconds':>8s}")
        for name, s, sec in rows:
            print(f"{name:32s} {s['miou']:7.3f} {sec:8.1f}")


if __name__ == "__main__":
    main()
