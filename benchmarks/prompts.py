"""Prompt tools' latency on a 2048² plane: add at a click, box, grow, shrink, two-click and scribble split, ranking.

    python benchmarks/prompts.py [--out docs/benchmarks/prompts.txt] [--n 20] [--size 2048] [--maps model|ideal]

The plane is the real 512² nuclei image (``benchmarks/real_data.py``) tiled to
``--size``²; ``--maps model`` (default) runs the shipped ``nuclei`` U-Net once on it with
``return_probabilities=True`` (the maps the Segment widget keeps), ``--maps ideal``
derives maps from the ground truth (no torch). Prompts are made from the ground truth
against the model's labels, as a user would place them:

* ``add``: a ground-truth object removed from the labels, a click at its centre;
* ``box``: a box 3 px around a ground-truth object;
* ``grow``: the right half of an object removed, a click in the removed part;
* ``shrink``: a disc of background painted onto an object, a click in it;
* ``split2``: the same merged pair, two clicks (K, K) at their centres
  (:func:`napari_segtool.core.edits.split_object_points`, the widget's two-click split);
* ``scribble``: two touching objects merged, a stroke through both centres.

Each edit is timed end to end (the core function on the whole plane, the write of its
window into the plane included), ``--n`` prompts per tool; the goal is < 200 ms each.
``rank`` (correct next, a whole-plane pass) is timed too. Prints one row per tool, then
the quality of each edit: the IoU of the object it leaves with the true object (are
the model's maps good enough for prompts, or would a click-conditioned head be needed?).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from napari_segtool.core.edits import split_object_points_in_window  # noqa: E402
from napari_segtool.models.unet import INSTANCE_LAYOUT  # noqa: E402
from napari_segtool.core.prompts import (  # noqa: E402
    LocalEdit,
    PromptError,
    PromptMaps,
    add_object,
    grow_object,
    rank_uncertain,
    redraw_in_box,
    shrink_object,
    split_by_scribble,
)

GOAL_MS = 200.0


def ideal_maps(gt: np.ndarray) -> PromptMaps:
    from skimage.segmentation import find_boundaries

    from napari_segtool.models.unet import instance_targets

    boundary = (find_boundaries(gt, mode="inner") & (gt > 0)).astype(np.float32)
    fg = ndi.gaussian_filter((gt > 0).astype(np.float32), 1.0)
    interior = np.clip(fg - boundary, 0, 1)
    _, dist = instance_targets(gt)
    return PromptMaps.from_probabilities(np.stack([1 - fg, interior, fg - interior, dist]), INSTANCE_LAYOUT)


def plane(size: int, maps_kind: str):
    from benchmarks.real_data import nuclei_2d

    img, gt = nuclei_2d()
    reps = -(-size // img.shape[0])
    image = np.tile(img, (reps, reps))[:size, :size].astype(np.float32)
    tiles = []
    for i in range(reps):
        row = []
        for j in range(reps):
            row.append(np.where(gt > 0, gt + (i * reps + j) * int(gt.max()), 0))
        tiles.append(np.concatenate(row, 1))
    truth = np.concatenate(tiles, 0)[:size, :size].astype(np.int32)
    if maps_kind == "ideal":
        return image, truth, truth.copy(), ideal_maps(truth), 0.0
    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.predict import predict

    t0 = time.perf_counter()
    model = load_model("nuclei")
    pred = predict(model, image, return_probabilities=True)
    seconds = time.perf_counter() - t0
    maps = PromptMaps.from_probabilities(pred.probabilities, model.architecture.probability_layout(model.meta))
    return image, truth, pred.labels.astype(np.int32), maps, seconds


def _centre(mask: np.ndarray) -> tuple[int, int]:
    d = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    return tuple(int(v) for v in np.unravel_index(int(np.argmax(d)), d.shape))  # type: ignore[return-value]


def _iou_at(labels: np.ndarray, yx, truth: np.ndarray) -> float:
    """IoU of the object at ``yx`` with the true object (0 where there is none)."""
    v = labels[yx]
    if not v:
        return 0.0
    obj = labels == v
    return float((obj & truth).sum() / (obj | truth).sum())


def timed(fn, labels):
    """Milliseconds of one edit written into ``labels`` (a prompt's local edit, or a whole new plane), and whether
    it applied."""
    t0 = time.perf_counter()
    try:
        edit = fn()
        if isinstance(edit, np.ndarray):
            labels[...] = edit
        else:
            edit.apply(labels)
        ok = True
    except (PromptError, ValueError):
        ok = False
    return (time.perf_counter() - t0) * 1000, ok


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--maps", choices=["model", "ideal"], default="model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    image, gt, labels, maps, predict_s = plane(args.size, args.maps)
    ids = np.unique(gt[gt > 0])
    # objects away from the plane's edge, whose prediction matches them (a single predicted object)
    slices = ndi.find_objects(gt)
    good = [i for i in ids if slices[i - 1] is not None and slices[i - 1][0].start > 20 and slices[i - 1][1].start > 20
            and slices[i - 1][0].stop < args.size - 20 and slices[i - 1][1].stop < args.size - 20]
    picks = rng.choice(good, size=min(args.n, len(good)), replace=False)
    times: dict[str, list[float]] = {k: [] for k in ("add", "box", "grow", "shrink", "split2", "scribble", "rank")}
    done: dict[str, int] = {k: 0 for k in times}
    quality: dict[str, list[float]] = {k: [] for k in ("model", "add", "box", "grow", "shrink", "split2", "scribble")}
    next_id = int(labels.max()) + 1
    for g in picks:
        sl = tuple(slice(max(0, s.start - 12), s.stop + 12) for s in slices[g - 1])
        obj = gt == g
        c = _centre(obj)
        # add: the object missing from the labels
        work = labels.copy()
        work[obj] = 0
        work[np.isin(work, np.unique(labels[obj]))] = 0
        ms, ok = timed(lambda: add_object(work, maps, c, next_id), work)
        times["add"].append(ms)
        done["add"] += ok
        quality["add"].append(_iou_at(work, c, obj))
        quality["model"].append(_iou_at(labels, c, obj))
        # box around it
        ys, xs = np.nonzero(obj[sl])
        box = (sl[0].start + ys.min() - 3, sl[1].start + xs.min() - 3, sl[0].start + ys.max() + 3,
               sl[1].start + xs.max() + 3)
        work = labels.copy()
        ms, ok = timed(lambda: redraw_in_box(work, maps, box, next_id), work)
        times["box"].append(ms)
        done["box"] += ok
        quality["box"].append(_iou_at(work, c, obj))
        # grow: right half removed, click there
        work = labels.copy()
        pid = int(labels[c])
        if pid:
            right = (work == pid) & (np.arange(args.size)[None, :] > c[1] + 1)
            work[right] = 0
            target = (c[0], min(args.size - 1, c[1] + max(2, int(xs.max() + sl[1].start - c[1]) // 2)))
            if work[target] == 0:
                ms, ok = timed(lambda: grow_object(work, maps, target, pid), work)
                times["grow"].append(ms)
                done["grow"] += ok
                quality["grow"].append(_iou_at(work, c, obj))
            # shrink: a bleed disc to the right, click in it
            work = labels.copy()
            r = max(3, int((xs.max() - xs.min()) // 3))
            bleed_c = (c[0], min(args.size - 1, sl[1].start + int(xs.max()) + r // 2))
            yy, xx = np.ogrid[: args.size, : args.size]
            disc = ((yy - bleed_c[0]) ** 2 + (xx - bleed_c[1]) ** 2 <= r * r) & (work == 0)
            work[disc] = pid
            if work[bleed_c] == pid:
                ms, ok = timed(lambda: shrink_object(work, maps, bleed_c), work)
                times["shrink"].append(ms)
                done["shrink"] += ok
                quality["shrink"].append(_iou_at(work, c, obj))
        # scribble: merge with the nearest touching ground-truth neighbour
        ring = ndi.binary_dilation(obj, iterations=3) & ~obj
        neighbours = [v for v in np.unique(gt[ring]) if v and v != g]
        if neighbours and pid:
            other = gt == neighbours[0]
            c2 = _centre(other)
            work = labels.copy()
            other_ids = [v for v in np.unique(labels[other]) if v]
            work[np.isin(work, other_ids)] = pid
            bridge = ndi.binary_closing(work == pid, iterations=3) & (work == 0)  # the merge bleeds between
            work[bridge] = pid
            if work[c2] == pid:
                merged = work.copy()
                # what the widget runs: the object's window and its new labels, written into the plane
                ms, ok = timed(lambda: LocalEdit(*split_object_points_in_window(merged, c, c2, next_id)), merged)
                times["split2"].append(ms)
                done["split2"] += ok
                quality["split2"].append(min(_iou_at(merged, c, obj), _iou_at(merged, c2, other)))
                ms, ok = timed(lambda: split_by_scribble(work, maps, [c, c2], next_id), work)
                times["scribble"].append(ms)
                done["scribble"] += ok
                quality["scribble"].append(min(_iou_at(work, c, obj), _iou_at(work, c2, other)))
    for _ in range(3):
        t0 = time.perf_counter()
        rank_uncertain(labels, maps, top=20)
        times["rank"].append((time.perf_counter() - t0) * 1000)
        done["rank"] += 1
    # how well "correct next" finds the mistakes: of its top items, how many are wrong (an object whose best
    # IoU with the truth is < 0.5, or unlabelled foreground holding a missed true object)
    from napari_segtool.ops.metrics import iou_matrix

    ranked = rank_uncertain(labels, maps, top=None)
    ious, _, pred_ids = iou_matrix(labels, gt)
    best = dict(zip(pred_ids.tolist(), ious.max(axis=0).tolist())) if ious.size else {}
    matched_gt = set(np.flatnonzero(ious.max(axis=1) >= 0.5).tolist()) if ious.size else set()
    gt_ids = np.unique(gt[gt > 0])
    missed = {int(g) for i, g in enumerate(gt_ids.tolist()) if i not in matched_gt}

    def wrong(u) -> bool:
        if u.kind == "object":
            return best.get(u.label, 0.0) < 0.5
        return int(gt[u.yx]) in missed

    flags = np.array([wrong(u) for u in ranked], bool)
    n_objects = int((np.asarray(list(best.values())) < 0.5).sum()) + len(missed)
    precision = {k: float(flags[:k].mean()) for k in (10, 20, 50) if len(flags) >= k}
    base_rate = float(flags.mean()) if flags.size else 0.0
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    lines = [f"prompt tools on a {args.size}x{args.size} plane (real nuclei image tiled), maps: {args.maps}"
             + (f" (model prediction {predict_s:.1f} s)" if predict_s else "")
             + f"; {os.cpu_count()} cores, load average {load:.1f}; goal < {GOAL_MS:.0f} ms per edit",
             f"{'tool':>9s} {'n':>3s} {'applied':>7s} {'median ms':>9s} {'p95 ms':>7s} {'max ms':>7s} {'goal':>5s}"]
    rows = []
    for name, values in times.items():
        if not values:
            continue
        v = np.asarray(values)
        row = {"tool": name, "n": len(v), "applied": done[name], "median_ms": float(np.median(v)),
               "p95_ms": float(np.percentile(v, 95)), "max_ms": float(v.max())}
        goal = "-" if name == "rank" else ("met" if row["max_ms"] < GOAL_MS else "MISSED")
        rows.append(row)
        lines.append(f"{name:>9s} {row['n']:3d} {row['applied']:7d} {row['median_ms']:9.1f} {row['p95_ms']:7.1f} "
                     f"{row['max_ms']:7.1f} {goal:>5s}")
    lines.append("")
    lines.append("quality: IoU with the true object after the edit (model = the model's own labels of the same objects)")
    lines.append(f"{'tool':>9s} {'n':>3s} {'median IoU':>10s} {'>=0.5':>6s} {'>=0.7':>6s}")
    for name, values in quality.items():
        if values:
            v = np.asarray(values)
            row = next((r for r in rows if r["tool"] == name), None)
            if row is not None:
                row.update(median_iou=float(np.median(v)), iou50=float((v >= 0.5).mean()),
                           iou70=float((v >= 0.7).mean()))
            lines.append(f"{name:>9s} {len(v):3d} {np.median(v):10.3f} {(v >= 0.5).mean():6.0%} {(v >= 0.7).mean():6.0%}")
    lines.append("")
    lines.append(f"correct next: {len(ranked)} items ranked, {int(flags.sum())} of them wrong ({n_objects} mistakes "
                 f"in the plane); share wrong among the top " + ", ".join(f"{k}: {v:.0%}" for k, v in precision.items())
                 + f" (all items: {base_rate:.0%})")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + f"\n\ncommand: python benchmarks/prompts.py {' '.join(argv or sys.argv[1:])}\n")
    return rows


if __name__ == "__main__":
    main()
