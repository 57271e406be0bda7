"""Foundation benchmark: train on one half of an annotated image for a fixed time, score the other.

    python benchmarks/train_half.py [--budget 120] [--seeds 5] [--init nuclei]

1. Instances: the real 512×512 fluorescence-nuclei image from the stardist wheel
   (``benchmarks/real_data.py``): left half trains, right half scores (AP@0.5, mean AP).
   From scratch, and (``--init``) fine-tuning a shipped model, as the Train widget does
   by default ("fine-tune the selected model").
2. Semantic: a 4-class RGB mosaic of real textures (scikit-image's brick, grass,
   gravel and a smoothed brick, tinted per class) with ~5% of pixels scribbled;
   the model labels the whole image (mIoU over all pixels).

Each is run side by side with the ilastik-style random forest on the same labels; with
``--seeds N`` every U-Net row is trained N times (seeds 0..N-1) and the mean and the
worst seed are printed, so a result does not rest on one lucky run.
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


def instance_half(budget: float, seed: int = 0, init: str | None = None, lr: float | None = None,
                  average: float = 0.0) -> tuple[dict, float]:
    """Scores on the right half of a U-Net trained ``budget`` s on the left half (from ``init`` if given).

    Training tunes the decoding thresholds on its validation stripe of the left half (``core.tune_decoding``);
    ``untuned`` is the mean AP of the same weights decoded with the thresholds before tuning, and
    ``decoding`` names the chosen pair.
    """
    from napari_segtool.core.checkpoint import load_model

    image, labels = nuclei_2d()
    left, right = (slice(None), slice(0, 256)), (slice(None), slice(256, None))
    start = load_model(init) if init else None
    normalization = start.meta.normalization if start is not None else None
    t0 = time.perf_counter()
    config = TrainConfig(time_budget=budget, epochs=10_000, patience=10_000, val_fraction=0.15, seed=seed)
    if lr is not None:
        config.lr = lr
    config.fine_tune.average = average
    res = train([make_example(image[left], labels[left], normalization=normalization)], init=start, config=config)
    seconds = time.perf_counter() - t0
    scores = instance_scores(predict(res.model, image[right]).labels, labels[right])
    tuned = res.model.meta.history[-1].get("decoding")
    if tuned:
        before = predict(res.model, image[right], **tuned["default"]).labels
        scores["untuned"] = instance_scores(before, labels[right])["mean_ap"]
        scores["decoding"] = (f"fg {tuned['fg_threshold']:.2f} seed {tuned['seed_threshold']:.2f} "
                              f"(val {tuned['default_mean_ap']:.3f} -> {tuned['mean_ap']:.3f}, {tuned['seconds']:.1f} s)")
    return scores, seconds


def instance_forest() -> tuple[dict, float]:
    """The ilastik-style forest on the same halves."""
    image, labels = nuclei_2d()
    left, right = (slice(None), slice(0, 256)), (slice(None), slice(256, None))
    t0 = time.perf_counter()
    rf = RandomForestSegmenter().fit_instances(image[left].astype(np.float32), labels[left])
    pred_rf = rf.predict_instances(image[right].astype(np.float32))
    return instance_scores(pred_rf, labels[right]), time.perf_counter() - t0


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


def semantic_scribbles(budget: float, seed: int = 0) -> tuple[dict, float]:
    """mIoU of a U-Net trained ``budget`` s on the scribbles of the texture mosaic."""
    image, classes = texture_mosaic()
    marks = scribbles(classes, 0.05)
    t0 = time.perf_counter()
    res = train([make_example(image, marks, task="semantic")], task="semantic",
                config=TrainConfig(time_budget=budget, epochs=10_000, patience=10_000, val_fraction=0.15, seed=seed))
    seconds = time.perf_counter() - t0
    return semantic_scores(predict(res.model, image).labels, classes), seconds


def semantic_forest() -> tuple[dict, float, float]:
    """The forest on the same scribbles, and the scribbled fraction."""
    image, classes = texture_mosaic()
    marks = scribbles(classes, 0.05)
    t0 = time.perf_counter()
    rf = RandomForestSegmenter().fit(image, marks, marks > 0)
    return semantic_scores(rf.predict_classes(image), classes), time.perf_counter() - t0, float((marks > 0).mean())


def _seed_rows(name: str, runs: list[tuple[dict, float]], keys: tuple[str, ...]) -> list[str]:
    """One line per seed (with its ``decoding`` note, if any), then mean and worst (per key) when there are
    several."""
    lines = [f"{name + (f' seed {i}' if len(runs) > 1 else ''):40s} "
             + " ".join(f"{s.get(k, float('nan')):8.3f}" for k in keys) + f" {sec:8.1f}"
             + (f"  {s['decoding']}" if "decoding" in s else "") for i, (s, sec) in enumerate(runs)]
    if len(runs) > 1:
        for label, pick in (("mean", np.mean), ("worst", np.min)):
            lines.append(f"{name + ' ' + label:40s} " + " ".join(f"{pick([s.get(k, np.nan) for s, _ in runs]):8.3f}"
                                                                 for k in keys)
                         + f" {np.mean([sec for _, sec in runs]):8.1f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0, help="U-Net training seconds")
    parser.add_argument("--only", choices=["instance", "semantic"])
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per U-Net row (mean and worst)")
    parser.add_argument("--init", default="nuclei",
                        help="shipped model the instance task also fine-tunes (the Train widget's default); "
                             "'none' trains from scratch only")
    parser.add_argument("--no-scratch", action="store_true", help="instance task: only the fine-tuning rows")
    parser.add_argument("--lr", type=float, help="learning rate of the instance rows (default: TrainConfig's)")
    parser.add_argument("--average", type=float, default=0.0,
                        help="fine-tuning ends on the moving average of its weights with this decay (0: off)")
    args = parser.parse_args()
    seeds = range(max(1, args.seeds))
    if args.only in (None, "instance"):
        print(f"\nInstances: real nuclei image, train left half, score right half (budget {args.budget:.0f} s)")
        print(f"{'method':40s} {'AP@0.5':>8s} {'mean AP':>8s} {'untuned':>8s} {'seconds':>8s}  decoding (untuned: "
              "mean AP of the same weights with the thresholds before tuning)")
        starts = ([] if args.no_scratch else [None]) + ([] if args.init == "none" else [args.init])
        for init in starts:
            runs = [instance_half(args.budget, seed, init, args.lr, args.average) for seed in seeds]
            name = f"U-Net fine-tuned from {init}" if init else "U-Net from scratch"
            print("\n".join(_seed_rows(name, runs, ("ap50", "mean_ap", "untuned"))), flush=True)
        s, sec = instance_forest()
        print(f"{'random forest (ilastik-style)':40s} {s['ap50']:8.3f} {s['mean_ap']:8.3f} {'':8s} {sec:8.1f}")
    if args.only in (None, "semantic"):
        runs = [semantic_scribbles(args.budget, seed) for seed in seeds]
        s, sec, frac = semantic_forest()
        print(f"\nSemantic: 4-class texture mosaic, {100 * frac:.1f}% of pixels scribbled (budget {args.budget:.0f} s)")
        print(f"{'method':40s} {'mIoU':>8s} {'seconds':>8s}")
        print("\n".join(_seed_rows("U-Net (ours)", runs, ("miou",))))
        print(f"{'random forest (ilastik-style)':40s} {s['miou']:8.3f} {sec:8.1f}")


if __name__ == "__main__":
    main()
