"""Instance architectures side by side: U-Net + watershed vs Mask R-CNN on the same data.

    python benchmarks/instance_models.py [--budget S | --unet-budget 120 --maskrcnn-budget 600]
                                         [--finetune] [--out DIR]

Data: the real 512×512 fluorescence-nuclei image of ``benchmarks/real_data.py``; the
left half trains, the right half (never seen) scores. Each architecture is trained
from scratch by the one generic trainer (``core.train.train``) for a fixed number of
seconds, with the network size, normalisation, learning rate and patch/batch size of
its shipped recipe (``scripts/train_defaults.py``: U-Net depth 4 on 128² × 8 patches,
Mask R-CNN on 256² × 2) and the same validation strip. With ``--finetune`` the
shipped ``nuclei`` / ``nuclei-maskrcnn`` models are scored as they are and
fine-tuned for ``--finetune-budget`` seconds (300, or the architecture's budget if
smaller), when they exist.

Per row: AP@0.5 and mean AP (IoU 0.5:0.95) from ``ops.metrics.instance_scores``; the
matched fraction at IoU 0.5 of the *touching* ground-truth objects (dilated by
``--touch-radius`` px they overlap another object: where watershed splitting and
box-based detection differ most), matched by ``ops.metrics.match_instances``;
training seconds and steps; inference throughput (Mpx/s, best of ``--repeats`` timed
runs after one untimed run) on the right half.

Mask R-CNN steps cost several times more than U-Net steps, hence the longer default
budget; ``--budget S`` gives both architectures the same ``S`` seconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` and ``scripts`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baselines import format_row, format_table, matched_count, touching_ids, write_report  # noqa: E402
from benchmarks.real_data import nuclei_2d  # noqa: E402
from napari_segtool.core.data import make_example  # noqa: E402
from napari_segtool.kernel.device import configure_threads, pick_device  # noqa: E402
from napari_segtool.ops.metrics import instance_scores  # noqa: E402
from napari_segtool.core.model import SegModel  # noqa: E402
from napari_segtool.core.predict import predict  # noqa: E402
from napari_segtool.core.train import TrainConfig, train  # noqa: E402
from scripts.train_defaults import RECIPES, Recipe  # noqa: E402

#: display name -> the shipped recipe whose architecture, sizes and normalisation are used
CONTENDERS: dict[str, Recipe] = {"U-Net + watershed": RECIPES["nuclei"], "Mask R-CNN": RECIPES["nuclei-maskrcnn"]}
COLUMNS = [("method", "method", "s"), ("init", "init", "s"), ("ap50", "AP@0.5", ".3f"),
           ("mean_ap", "mean AP", ".3f"), ("touching_matched50", "touching matched@0.5", ".3f"),
           ("n_pred", "objects", "d"), ("train_seconds", "train s", ".1f"), ("steps", "steps", "d"),
           ("mpx_per_s", "infer Mpx/s", ".3f")]


def _timed_predict(model: SegModel, image: np.ndarray) -> float:
    t0 = time.perf_counter()
    predict(model, image)
    return time.perf_counter() - t0


def score_row(model: SegModel, image: np.ndarray, gt: np.ndarray, touching: np.ndarray,
              repeats: int) -> dict[str, Any]:
    """Scores and inference throughput of ``model`` on the held-out ``image``."""
    labels = predict(model, image).labels  # untimed: the first call pays one-off set-up costs
    seconds = min(_timed_predict(model, image) for _ in range(max(1, repeats)))
    s = instance_scores(labels, gt)
    hit, total = matched_count(labels, gt, touching)
    return {"ap50": s["ap50"], "mean_ap": s["mean_ap"], "touching_matched50": hit / total if total else None,
            "n_pred": s["n_pred"], "mpx_per_s": image.size / 1e6 / seconds}


def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    """Train and score every contender; return the rows and the table's header lines."""
    from napari_segtool.core.checkpoint import ModelLoadError, load_model

    image, labels = nuclei_2d()
    half = image.shape[1] // 2
    train_img, train_lab = image[:, :half], labels[:, :half]
    test_img, test_lab = image[:, half:], labels[:, half:]
    touching = touching_ids(test_lab, args.touch_radius)
    threads = configure_threads()
    header = [
        "# U-Net + watershed vs Mask R-CNN (real nuclei, train left half, score right half)",
        "",
        f"- data: stardist `img2d` 512×512, {len(np.unique(train_lab[train_lab > 0]))} objects (left) / "
        f"{len(np.unique(test_lab[test_lab > 0]))} held out (right); {len(touching)} of these touch another "
        f"within {args.touch_radius} px",
        f"- budgets: U-Net {args.unet_budget:g} s, Mask R-CNN {args.maskrcnn_budget:g} s; val_fraction 0.15; "
        f"seed {args.seed}",
        f"- device {pick_device()}, {threads} torch thread(s); inference = best of {args.repeats} timed run(s)",
    ]
    for line in header[2:]:
        print(line, flush=True)

    rows: list[dict[str, Any]] = []

    def fit_and_score(title: str, recipe: Recipe, init: SegModel | None, budget: float) -> None:
        norm = init.meta.normalization if init is not None else recipe.normalization
        cfg = TrainConfig(time_budget=budget, epochs=10_000, patience=10_000, val_fraction=0.15,
                          patch_size=recipe.config.patch_size, batch_size=recipe.config.batch_size,
                          lr=recipe.config.lr, seed=args.seed)
        res = train([make_example(train_img, train_lab, normalization=norm)], arch=recipe.arch, init=init,
                    config=cfg, arch_kwargs=recipe.arch_kwargs, normalization=norm)
        rows.append({"method": f"{title}, {'fine-tuned' if init is not None else 'from scratch'}",
                     "init": recipe.name if init is not None else "random", "train_seconds": res.seconds,
                     "steps": res.steps, **score_row(res.model, test_img, test_lab, touching, args.repeats)})
        print(format_row(rows[-1], COLUMNS), flush=True)

    for title, recipe in CONTENDERS.items():
        if recipe.arch not in args.archs:
            continue
        budget = args.unet_budget if recipe.arch == "unet" else args.maskrcnn_budget
        fit_and_score(title, recipe, None, budget)
        if not args.finetune:
            continue
        try:
            shipped = load_model(recipe.name)
        except ModelLoadError:
            note = f"- shipped model `{recipe.name}` not found: no fine-tuning rows for {title}"
            print(note, flush=True)
            header.append(note)
            continue
        rows.append({"method": f"{title}, shipped as is", "init": recipe.name, "train_seconds": 0.0, "steps": 0,
                     **score_row(shipped, test_img, test_lab, touching, args.repeats)})
        print(format_row(rows[-1], COLUMNS), flush=True)
        fit_and_score(title, recipe, shipped, min(budget, args.finetune_budget))
    return rows, header


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, help="training seconds for both architectures")
    p.add_argument("--unet-budget", type=float, help="U-Net training seconds (default --budget, else 120)")
    p.add_argument("--maskrcnn-budget", type=float, help="Mask R-CNN training seconds (default --budget, else 600)")
    p.add_argument("--finetune-budget", type=float, default=300.0,
                   help="fine-tuning seconds (at most the architecture's budget; default 300)")
    p.add_argument("--finetune", action="store_true",
                   help="also score and fine-tune the shipped nuclei / nuclei-maskrcnn models (if present)")
    archs = [r.arch for r in CONTENDERS.values()]
    p.add_argument("--archs", nargs="+", choices=archs, default=archs, help="run only these architectures")
    p.add_argument("--touch-radius", type=int, default=2,
                   help="a ground-truth object 'touches' when its dilation by this many px overlaps another")
    p.add_argument("--repeats", type=int, default=1, help="timed inference runs (the best is reported)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="write instance_models.md and instance_models.csv here")
    args = p.parse_args(argv)
    for name, default in (("unet_budget", 120.0), ("maskrcnn_budget", 600.0)):
        if getattr(args, name) is None:
            setattr(args, name, default if args.budget is None else args.budget)

    rows, header = run(args)
    print()
    print(format_table(rows, COLUMNS))
    if args.out:
        md, csv_path = write_report(rows, COLUMNS, args.out, "instance_models", header)
        print(f"wrote {md} and {csv_path}")
    return rows


if __name__ == "__main__":
    main()
