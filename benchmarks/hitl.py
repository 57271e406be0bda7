"""Human-in-the-loop benchmark: AP on held-out pixels versus the number of corrected objects.

    python benchmarks/hitl.py --out DIR [--dataset real|nuclei|astro] [--rounds 5 --k 10 --budget 20]
                              [--image IMG --labels LAB] [--init MODEL] [--ref-budget S]

The image is cut in two: the simulated annotator (``napari_segtool.core.hitl``)
corrects ``k`` objects per round on the left half (worst-matched first: add missed,
fix wrong, delete false positives), the default model is fine-tuned for ``--budget``
seconds on the corrected labels (only annotated pixels count), and both halves are
re-predicted; the right half is never trained on and gives the scores.

Side by side, on the very same corrections of the same run:

* ``scratch``: a fresh model of the same architecture, same budget;
* ``forest``: the ilastik-style random forest (``benchmarks/baselines.py``);
* constant lines: Otsu + watershed, photutils ``detect_sources`` + ``deblend_sources``
  (astro), and the reference: the default model fine-tuned once on *all* labels of
  the left half with ``--ref-budget`` seconds.

Writes ``DIR/hitl.csv`` (``.tsv`` with ``--tsv``), ``DIR/hitl.png`` and
``DIR/hitl_summary.json`` (the goals, met or not).

``--effort`` measures the effort axis instead (issue 14): user actions to reach
``--target`` AP@0.5 (default 0.90) on the held-out half, ``--actions-per-round`` per
round, for two simulated annotators on the GUI's own engine (``core.hitl.iter_effort``:
``core.prompts``, ``core.edits``, and ``core.train_project.iter_fit`` for every
fine-tuning, as the Train widget): ``prompts+ranking`` (jumps with correct next, fixes with
the prompt tools) and ``repaint+random`` (looks at objects in random order, repaints by
hand). Each row also gives the errors the annotator's actions fixed so far (``fixed``: truth objects
newly matched at ``--accept-iou`` plus false positives removed, ``core.hitl.EffortAnnotator.errors_left``)
and ``fix/act``, objects fixed per action. Writes ``DIR/hitl_effort.csv``, ``DIR/hitl_effort.png`` and
``DIR/hitl_effort_summary.json``.

Action costs (``core.hitl.ActionCosts``; this table is where they are defined and why).
An action is one deliberate input that changes the labels: a key press with the cursor
on the spot, a click, a drag. The same rule holds for both annotators:

=====================  =====  ================================================================
tool                   cost   why
=====================  =====  ================================================================
add (click)            1      A with the cursor on the missed object
box                    2      B at one corner, B at the opposite corner (the widget's box)
grow / shrink          1      Shift-G / Shift-S with the cursor where the object should change
scribble split         n      a path clicked through the n merged objects' centres (a double
                              click on the last point ends it)
delete                 1      Del with the cursor on the object
undo                   1      Ctrl-Z
review                 1      R: the whole plane as it is now becomes training data
repaint an object      1 + s  M (a fresh label id), then s = ceil(D / 10) brush strokes: napari's
                       + e    default brush is 10 px wide and parallel strokes fill a disc of
                              diameter D (its equivalent diameter); then e eraser strokes for what
                              the objects under it spill onto background: per connected part,
                              ceil(thickness / 10) strokes (a thin rim is one stroke around it)
navigation             0      the correct-next key N, panning to the next object in random order
                              and switching tools are counted for neither (the ``views`` column)
=====================  =====  ================================================================

Both annotators accept an object once its IoU with the truth reaches ``--accept-iou``
(the IoU at which AP@0.5 counts it) and fall back to repainting, at the same cost, when
their tools cannot get there. Fine-tuning keeps what the starting model knows
(``TrainConfig.fine_tune``, ``core.finetune``): ``--freeze-norm``, ``--distill W``,
``--l2sp A``, ``--average D`` change it for measuring each lever.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from napari_segtool.core.data import make_example  # noqa: E402
from napari_segtool.core.hitl import HitlConfig, HitlRound, iter_effort, iter_hitl, split_image  # noqa: E402
from napari_segtool.ops.metrics import instance_scores  # noqa: E402
from napari_segtool.core.predict import predict  # noqa: E402
from napari_segtool.core.train import TrainConfig, train  # noqa: E402

DEFAULT_MODELS = {"real": "nuclei", "nuclei": "nuclei", "file": "nuclei", "astro": "astro-sources"}
ASINH = {"method": "asinh", "softening": 3.0}
COLUMNS = ["dataset", "method", "round", "corrected", "added", "fixed", "deleted", "annotated_pixels",
           "ap50", "mean_ap", "train_seconds", "predict_seconds", "steps", "note"]


# ------------------------------------------------------------------ data and models
def load_dataset(name: str, size: int, seed: int, image: str | None = None, labels: str | None = None):
    """``(image, labels)`` of one annotated 2D image, cropped to at most ``size``²."""
    if image or labels:
        if not (image and labels):
            raise SystemExit("--image and --labels go together")
        from napari_segtool.io.images import read_image

        img, lab = np.asarray(read_image(image).data), np.asarray(read_image(labels).data)
    elif name == "real":
        from benchmarks.real_data import nuclei_2d

        img, lab = nuclei_2d()
    elif name == "nuclei":
        from napari_segtool.sim import simulate_nuclei

        sim = simulate_nuclei((size, size), seed=seed)
        img, lab = sim.image, sim.labels
    elif name == "astro":
        from napari_segtool.sim import simulate_astro_field

        sim = simulate_astro_field((size, size), seed=seed)
        img, lab = sim.image, sim.labels
    else:
        raise SystemExit(f"unknown dataset {name!r}")
    img, lab = img[:size, :size], lab[:size, :size].astype(np.int32)
    if img.ndim != 2 or lab.shape != img.shape:
        raise SystemExit(f"need a 2D image and labels of the same shape, got {img.shape} and {lab.shape}")
    return img.astype(np.float32), lab


def standin_model(dataset: str, budget: float, seed: int = 100):
    """A small model trained for ``budget`` seconds on simulated images, used until the zoo model exists."""
    if dataset == "astro":
        from napari_segtool.sim import simulate_astro_dataset

        pairs = [(f.image, f.labels) for f in simulate_astro_dataset(6, (192, 192), seed=seed)]
        norm = ASINH
    else:
        from napari_segtool.sim import simulate_nuclei_dataset

        pairs = [(s.image, s.labels) for s in simulate_nuclei_dataset(6, (192, 192), seed=seed)]
        norm = None
    examples = [make_example(i, lab, normalization=norm) for i, lab in pairs]
    cfg = TrainConfig(epochs=10_000, steps_per_epoch=10, patience=10_000, val_fraction=0.0, time_budget=budget)
    model = train(examples, config=cfg, normalization=norm, arch_kwargs={"depth": 3, "width": 16}).model
    model.meta.name = f"stand-in ({budget:.0f} s on simulated {dataset})"
    return model


def load_init(args) -> tuple[Any, str]:
    from napari_segtool.core.checkpoint import ModelLoadError, load_model

    if args.init:
        return load_model(args.init), str(args.init)
    name = DEFAULT_MODELS[args.dataset]
    try:
        return load_model(name), name
    except ModelLoadError:
        print(f"default model '{name}' not found: training a stand-in for {args.standin_budget:.0f} s "
              "on simulated data", flush=True)
        model = standin_model(args.dataset, args.standin_budget)
        return model, model.meta.name


# ------------------------------------------------------------------ baselines
def forest_baseline(n_estimators: int = 100) -> Callable:
    from benchmarks.baselines import RandomForestSegmenter

    def fit(image, labels, annotated):
        rf = RandomForestSegmenter(n_estimators=n_estimators).fit_instances(image.astype(np.float32), labels,
                                                                             annotated)
        return lambda img: rf.predict_instances(img.astype(np.float32))

    return fit


def constant_rows(dataset, held, train_pair, init, args) -> list[dict[str, Any]]:
    """Methods that do not depend on the corrections: classical pipelines and the all-labels reference."""
    from benchmarks.baselines import otsu_watershed, photutils_sources

    himg, hgt = held
    rows = []

    def add(method, pred, train_s, pred_s, steps=0, note=""):
        s = instance_scores(pred, hgt)
        rows.append({"dataset": dataset, "method": method, "round": "", "corrected": "", "ap50": s["ap50"],
                     "mean_ap": s["mean_ap"], "train_seconds": train_s, "predict_seconds": pred_s, "steps": steps,
                     "note": note})

    t0 = time.perf_counter()
    add("otsu_watershed", otsu_watershed(himg), 0.0, time.perf_counter() - t0)
    if dataset == "astro" or args.photutils:
        t0 = time.perf_counter()
        add("photutils", photutils_sources(himg), 0.0, time.perf_counter() - t0)
    if args.ref_budget > 0:
        timg, tgt = train_pair
        cfg = HitlConfig().train
        cfg.time_budget, cfg.patch_size, cfg.batch_size = args.ref_budget, args.patch_size, args.batch_size
        res = train([make_example(timg, tgt, normalization=init.meta.normalization)], init=init, config=cfg)
        t0 = time.perf_counter()
        pred = predict(res.model, himg).labels
        add("reference_all_labels", pred, res.seconds, time.perf_counter() - t0, res.steps,
            f"fine-tuned on all {len(np.unique(tgt[tgt > 0]))} objects of the training half")
    return rows


# ------------------------------------------------------------------ output
def write_table(rows: list[dict[str, Any]], path: Path) -> None:
    delim = "\t" if path.suffix == ".tsv" else ","
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS, delimiter=delim, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})


STYLE = {"finetune": ("fine-tuned default model (ours)", "C0", "o"),
         "scratch": ("U-Net from scratch, same budget", "C1", "s"),
         "forest": ("random forest (ilastik-style)", "C2", "^")}
CONST_STYLE = {"reference_all_labels": ("fine-tuned on all labels", "k", "-"),
               "otsu_watershed": ("Otsu + watershed", "C3", "--"),
               "photutils": ("photutils detect + deblend", "C4", "-.")}


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    curves = [r for r in rows if r["round"] != ""]
    consts = [r for r in rows if r["round"] == ""]
    for ax, key, label in zip(axes, ("ap50", "mean_ap"), ("AP@0.5", "mean AP (IoU 0.5:0.95)")):
        for method in dict.fromkeys(r["method"] for r in curves):
            pts = sorted((r["corrected"], r[key]) for r in curves if r["method"] == method)
            name, color, marker = STYLE.get(method, (method, None, "x"))
            ax.plot(*zip(*pts), marker=marker, color=color, label=name)
        for r in consts:
            name, color, ls = CONST_STYLE.get(r["method"], (r["method"], "grey", ":"))
            ax.axhline(r[key], color=color, ls=ls, lw=1.2, label=name)
            if r["method"] == "reference_all_labels":
                ax.axhline(0.95 * r[key], color=color, ls=":", lw=1, label="95% of that")
        ax.set_xlabel("objects corrected")
        ax.set_ylabel(f"{label}, held-out half")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarize(history: list[HitlRound], consts: list[dict[str, Any]], max_corrections: int = 50,
              round_limit: float = 30.0) -> dict[str, Any]:
    """The three goals of the benchmark, each with its numbers and whether it was met."""
    ref = next((r for r in consts if r["method"] == "reference_all_labels"), None)
    within = [h for h in history if h.corrected <= max_corrections]
    best = max(within, key=lambda h: h.results["finetune"].ap50)
    out: dict[str, Any] = {}
    if ref is not None:
        for key in ("ap50", "mean_ap"):
            got = max(getattr(h.results["finetune"], key) for h in within)
            out[f"{key}_within_5pct_of_all_labels"] = {
                "best_finetune": got, "reference": ref[key], "ratio": got / ref[key] if ref[key] else None,
                "met": bool(got >= 0.95 * ref[key]), "max_corrections": max_corrections,
                "at_corrected": best.corrected if key == "ap50" else None}
    trained = [h for h in history if h.round > 0]
    secs = [h.round_seconds for h in trained]
    out["round_seconds"] = {"max": max(secs) if secs else None, "mean": float(np.mean(secs)) if secs else None,
                            "limit": round_limit, "met": bool(secs and max(secs) <= round_limit)}
    if trained and "forest" in trained[0].results:
        for key in ("ap50", "mean_ap"):
            diffs = [getattr(h.results["finetune"], key) - getattr(h.results["forest"], key) for h in trained]
            out[f"beats_forest_{key}"] = {"min_margin": min(diffs), "met": bool(min(diffs) > 0)}
    return out


# ------------------------------------------------------------------ effort axis
EFFORT_COLUMNS = ["dataset", "annotator", "round", "actions", "views", "tools", "ap50", "mean_ap", "train_seconds",
                  "predict_seconds", "annotated_pixels", "objects_fixed", "fixed_per_action"]


def effort_rows(args, cfg, dataset: str, train_pair, held, init, kind: str) -> list[dict[str, Any]]:
    """The rows of one simulated annotator's effort run (``core.hitl.iter_effort``), printed as they come."""
    rows = []
    for rec in iter_effort(init, *train_pair, [held], kind, actions_per_round=args.actions_per_round,
                           rounds=args.rounds, target_ap50=args.target, train=cfg,
                           time_budget=None if args.steps else args.budget, seed=args.seed,
                           accept_iou=args.accept_iou, training_margin=args.training_margin,
                           freeze=tuple(f for f in args.freeze.split(",") if f), review=args.review,
                           warm_start=not args.cold_start, accept_shown=not args.no_accept):
        row = {"dataset": dataset, "annotator": rec.annotator, "round": rec.round, "actions": rec.actions,
               "views": rec.views, "tools": " ".join(f"{k}:{v}" for k, v in sorted(rec.tools.items())),
               "ap50": rec.ap50, "mean_ap": rec.mean_ap, "train_seconds": rec.train_seconds,
               "predict_seconds": rec.predict_seconds, "annotated_pixels": rec.annotated_pixels,
               "objects_fixed": rec.objects_fixed, "fixed_per_action": rec.fixed_per_action}
        rows.append(row)
        print(f"{rec.annotator:>16s} {rec.round:5d} {rec.actions:7d} {rec.views:5d} {rec.ap50:7.3f} "
              f"{rec.train_seconds:8.1f} {rec.objects_fixed:5d} {rec.fixed_per_action:6.2f}  {row['tools']}",
              flush=True)
    return rows


def run_effort(args, dataset: str, train_pair, held, init, init_name: str) -> dict[str, Any]:
    """Actions (clicks, boxes, strokes, Del, brush strokes) to reach ``--target`` AP@0.5 on the held-out half:
    prompts + correct-next ranking against repainting in random order, the same engine as the GUI."""
    cfg = HitlConfig().train
    cfg.patch_size, cfg.batch_size = args.patch_size, args.batch_size
    if args.steps:
        cfg.epochs, cfg.steps_per_epoch = 1, args.steps
    if args.lr:
        cfg.lr = args.lr
    if args.val_fraction is not None:
        cfg.val_fraction = args.val_fraction
    ft = cfg.fine_tune
    cfg.fine_tune = replace(ft, freeze_norm=ft.freeze_norm or args.freeze_norm,
                            distill=ft.distill if args.distill is None else args.distill,
                            l2sp=ft.l2sp if args.l2sp is None else args.l2sp,
                            average=ft.average if args.average is None else args.average)
    kinds = args.annotators.split(",")
    print(f"{'annotator':>16s} {'round':>5s} {'actions':>7s} {'views':>5s} {'AP@0.5':>7s} {'train s':>8s} "
          f"{'fixed':>5s} {'fix/act':>6s}")
    if args.parallel and len(kinds) > 1:  # one process per annotator: same settings, half the wall time
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(len(kinds), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(effort_rows, args, cfg, dataset, train_pair, held, init, kind) for kind in kinds]
            rows = [row for f in futures for row in f.result()]
    else:
        rows = [row for kind in kinds for row in effort_rows(args, cfg, dataset, train_pair, held, init, kind)]
    path = args.out / "hitl_effort.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, EFFORT_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    plot_effort(rows, args.out / "hitl_effort.png", args.target,
                f"{dataset}: effort to AP@0.5 {args.target:g} on the held-out half; init: {init_name}; "
                f"{args.actions_per_round} actions/round, "
                f"{f'{args.steps} steps' if args.steps else f'{args.budget:g} s'} fine-tuning/round"
                f"{', R when nothing is left' if args.review else ''}, accept IoU {args.accept_iou:g}")
    return effort_goal(rows, args.target)


def effort_goal(rows: list[dict[str, Any]], target: float, max_actions: int = 25, factor: float = 3.0
                ) -> dict[str, Any]:
    """The issue's goal from the effort rows: prompts+ranking reach ``target`` within ``max_actions``, and
    repainting needs at least ``factor`` times as many. A repaint run that never reached the target only
    shows it when the actions it did spend are already ``factor`` times as many (a lower bound)."""
    reached: dict[str, Any] = {}
    spent: dict[str, int] = {}
    for row in rows:
        name = row["annotator"]
        spent[name] = max(spent.get(name, 0), int(row["actions"]))
        if float(row["ap50"]) >= target and name not in reached:
            reached[name] = {"actions": int(row["actions"]), "round": int(row["round"]),
                             "objects_fixed": int(row.get("objects_fixed", 0)),
                             "train_seconds": sum(float(r["train_seconds"]) for r in rows
                                                  if r["annotator"] == name and int(r["round"]) <= int(row["round"]))}
    p, r = reached.get("prompts+ranking"), reached.get("repaint+random")
    repaint_needs = r["actions"] if r else spent.get("repaint+random", 0)
    fewer = bool(p) and repaint_needs >= factor * p["actions"]
    note = ""
    if p and r is None:
        note = (f"repaint+random did not reach the target within the rounds ({repaint_needs} actions spent): "
                f"{'at least' if fewer else 'not shown to be'} {factor:g}x fewer")
    return {"target_ap50": target, "prompts+ranking": p, "repaint+random": r, "prompt_actions_max": max_actions,
            "ratio": (r["actions"] / p["actions"]) if (p and r and p["actions"]) else None,
            "met": bool(p and p["actions"] <= max_actions and fewer), "note": note}


def plot_effort(rows: list[dict[str, Any]], path: Path, target: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, label in zip(axes, ("actions", "round"),
                              ("user actions (core.hitl.ActionCosts: keys, clicks, strokes)",
                               "fine-tuning round (a round with no new action: Train pressed again)")):
        for name, color in (("prompts+ranking", "C0"), ("repaint+random", "C1")):
            pts = [(int(r[key]), float(r["ap50"])) for r in rows if r["annotator"] == name]
            if pts:
                ax.plot(*zip(*pts), marker="o", color=color, label=name)
        ax.axhline(target, color="k", ls=":", lw=1, label=f"target {target:g}")
        ax.set_xlabel(label, fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AP@0.5, held-out half")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ main
def source_state() -> dict[str, Any]:
    """The commit the run imported and the package files changed in the work tree at its start.

    The checkout is shared: a commit that only changed which random numbers augmentation draws
    moved round 1 of the prompt user from held-out AP@0.5 0.869 to 0.931 on the same corrections
    (``docs/benchmarks/hitl_effort.md``), so a figure is only comparable with the code it ran on."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=root, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    changed = [line.split(maxsplit=1)[-1] for line in git("status", "--porcelain", "--", "napari_segtool",
                                                             "benchmarks").splitlines() if not line.startswith("??")]
    return {"commit": git("rev-parse", "HEAD"), "changed_files": changed}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dataset", choices=["real", "nuclei", "astro"], default="real")
    p.add_argument("--image", help="annotated image file (instead of --dataset)")
    p.add_argument("--labels", help="its instance labels")
    p.add_argument("--size", type=int, default=512, help="crop to at most SIZE x SIZE")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--k", type=int, default=10, help="objects corrected per round")
    p.add_argument("--budget", type=float, default=20.0, help="training seconds per round")
    p.add_argument("--steps", type=int, default=0,
                   help="train a fixed number of steps per round instead of --budget seconds (reproducible)")
    p.add_argument("--ref-budget", type=float, default=None,
                   help="seconds for the all-labels reference (default rounds x budget; 0 = skip)")
    p.add_argument("--init", help="starting model (path or name; default: the dataset's zoo model)")
    p.add_argument("--standin-budget", type=float, default=60.0,
                   help="seconds to train a stand-in model when the zoo model is missing")
    p.add_argument("--margin", type=int, default=3)
    p.add_argument("--patch-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--trees", type=int, default=100, help="random forest size")
    p.add_argument("--no-scratch", action="store_true")
    p.add_argument("--no-forest", action="store_true")
    p.add_argument("--photutils", action="store_true", help="also run photutils on non-astro data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tsv", action="store_true")
    p.add_argument("--effort", action="store_true",
                   help="the effort axis instead: actions to reach --target AP@0.5, prompts+ranking vs repaint+random")
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--actions-per-round", type=int, default=5)
    p.add_argument("--training-margin", type=int, default=3,
                   help="effort: px of background around edited objects added to the training pixels "
                        "(core.edits.training_mask, as the project trains; 0 = the edited pixels only)")
    p.add_argument("--freeze-norm", action="store_true",
                   help="effort: batch norm keeps the starting statistics while fine-tuning (core.finetune)")
    p.add_argument("--distill", type=float, default=None,
                   help="effort: self-distillation weight on unannotated pixels (default: TrainConfig's)")
    p.add_argument("--l2sp", type=float, default=None,
                   help="effort: L2-SP pull towards the starting weights (default: TrainConfig's)")
    p.add_argument("--average", type=float, default=None,
                   help="effort: decay of the moving average of the fine-tuned weights (0 = off; default: TrainConfig's)")
    p.add_argument("--review", action="store_true",
                   help="effort: an annotator with nothing left to correct marks the plane reviewed (R, 1 action)")
    p.add_argument("--cold-start", action="store_true",
                   help="effort: every round fine-tunes the starting model on all corrections so far "
                        "(default: the previous round's model, as the Train widget after a round)")
    p.add_argument("--ranking", action="store_true",
                   help="print the precision at k of correct next on the starting model's left half against the "
                        "true errors (an object under --accept-iou, a merge, a false positive, a missed object)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="effort: share of the corrections held out to validate each fine-tuning and tune its "
                        f"decoding thresholds (the Train widget's: {TrainConfig().val_fraction:g}; default: "
                        f"{HitlConfig().train.val_fraction:g}, all trained on)")
    p.add_argument("--no-accept", action="store_true",
                   help="effort: objects correct next showed and the prompt user left as they are are not "
                        "training data (default: they are, as the Correct widget marks them reviewed on N)")
    p.add_argument("--freeze", default="", help="effort: network modules not trained, e.g. down,bottom (U-Net encoder)")
    p.add_argument("--lr", type=float, default=0.0, help="effort: fine-tuning learning rate (0 = TrainConfig's)")
    p.add_argument("--parallel", action="store_true",
                   help="effort: run the annotators side by side, one process each (same settings)")
    p.add_argument("--annotators", default="prompts,repaint",
                   help="effort: which simulated annotators to run (comma-separated: prompts, repaint)")
    p.add_argument("--accept-iou", type=float, default=0.7,
                   help="IoU with the truth at which the simulated user accepts a prompt's result")
    args = p.parse_args(argv)
    if args.ref_budget is None:
        args.ref_budget = args.rounds * args.budget
    dataset = "file" if args.image else args.dataset
    args.dataset = dataset
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    source = source_state()  # before anything is imported lazily: what this run runs

    image, labels = load_dataset(dataset, args.size, args.seed, args.image, args.labels)
    train_pair, held = split_image(image, labels)
    init, init_name = load_init(args)
    print(f"{dataset}: image {image.shape}, {len(np.unique(train_pair[1])) - 1} objects to correct on the left, "
          f"{len(np.unique(held[1])) - 1} held out on the right; init = {init_name}; "
          f"threads = {os.environ.get('SEGTOOL_NUM_THREADS', 'all')}", flush=True)

    if args.ranking:  # correct next's precision at k on the starting model's maps of the left half
        from dataclasses import asdict

        from napari_segtool.core.hitl import predict_maps, ranking_precision

        found = asdict(ranking_precision(*predict_maps(init, train_pair[0]), train_pair[1], args.accept_iou))
        print(json.dumps(found, indent=2))
        return found
    if args.effort:
        goal = run_effort(args, dataset, train_pair, held, init, init_name)
        summary = {"command": "python benchmarks/hitl.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                   "dataset": dataset, "init": init_name, "threads": os.environ.get("SEGTOOL_NUM_THREADS", "all"),
                   "source": source, "total_seconds": time.perf_counter() - t_start, "effort": goal}
        (args.out / "hitl_effort_summary.json").write_text(json.dumps(summary, indent=2))
        print(json.dumps(goal, indent=2))
        print(f"wrote {args.out / 'hitl_effort.csv'}, {args.out / 'hitl_effort.png'} ({summary['total_seconds']:.0f} s)")
        return summary

    cfg = HitlConfig(k=args.k, rounds=args.rounds, time_budget=None if args.steps else args.budget,
                     margin=args.margin, scratch=not args.no_scratch, seed=args.seed)
    cfg.train.patch_size, cfg.train.batch_size = args.patch_size, args.batch_size
    if args.steps:
        cfg.train.epochs, cfg.train.steps_per_epoch = 1, args.steps
    baselines = {} if args.no_forest else {"forest": forest_baseline(args.trees)}

    rows: list[dict[str, Any]] = []
    history: list[HitlRound] = []
    print(f"{'round':>5s} {'corr':>5s} {'method':>10s} {'AP@0.5':>7s} {'mAP':>6s} {'train s':>8s} {'pred s':>7s}")
    for rec in iter_hitl(init, *train_pair, [held], cfg, baselines=baselines):
        history.append(rec)
        for row in rec.rows():
            rows.append({"dataset": dataset, **row})
            print(f"{row['round']:5d} {row['corrected']:5d} {row['method']:>10s} {row['ap50']:7.3f} "
                  f"{row['mean_ap']:6.3f} {row['train_seconds']:8.1f} {row['predict_seconds']:7.1f}", flush=True)
    consts = constant_rows(dataset, held, train_pair, init, args)
    for r in consts:
        print(f"{'':5s} {'':5s} {r['method']:>10s} {r['ap50']:7.3f} {r['mean_ap']:6.3f} "
              f"{r['train_seconds']:8.1f} {r['predict_seconds']:7.1f}", flush=True)
    rows += consts

    table = args.out / ("hitl.tsv" if args.tsv else "hitl.csv")
    write_table(rows, table)
    title = (f"{dataset}: {image.shape[0]}x{image.shape[1]}, left half corrected, right half held out; "
             f"k={args.k}/round, {f'{args.steps} steps' if args.steps else f'{args.budget:g} s'} fine-tuning/round; "
             f"init: {init_name}")
    plot(rows, args.out / "hitl.png", title)
    summary = {"command": "python benchmarks/hitl.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "dataset": dataset, "init": init_name, "threads": os.environ.get("SEGTOOL_NUM_THREADS", "all"),
               "source": source, "total_seconds": time.perf_counter() - t_start, "goals": summarize(history, consts)}
    (args.out / "hitl_summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary["goals"], indent=2))
    print(f"wrote {table}, {args.out / 'hitl.png'} ({summary['total_seconds']:.0f} s)")
    return summary


if __name__ == "__main__":
    main()
