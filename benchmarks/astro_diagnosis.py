"""Where ``astro-sources`` loses AP@0.5 on held-out simulated fields, in numbers.

    python benchmarks/astro_diagnosis.py [--fields 10] [--crowded-fields 10] [--model astro-sources]

The fields are ``benchmarks/astro_sources.py``'s (``simulate_astro_dataset`` seeds 100 and 1100, 256²).
Per set it prints, for the model as shipped:

* recall at IoU 0.5 and 0.1 per bin of the true sources' isophotal S/N (the simulator's ``snr``), with
  the median area ratio (predicted / true footprint) of the best-overlapping prediction;
* why true sources are missed at IoU 0.1: merged into a neighbour's label (> half of the footprint
  labelled) or not detected (< 10 % labelled);
* false positives (no true source at IoU 0.5) by kind: noise (no simulated source, even an undetectable
  one, reaches 1 sigma under the footprint), faint real (an undetectable source is there), mis-sized (IoU
  0.1-0.5 with one source), merged (> 10 % of it on each of two or more sources), fragment;

and AP@0.5 / blended recall of *ceilings*, each with the true identities given for free (every labelled
pixel goes to the nearest true footprint): the noiseless image of all sources thresholded at the truth's
1.5 sigma (what a perfect denoiser sees: sums of blends and undetectable sources included), the noisy
image smoothed by the PSF at the same level, and the model's own foreground (what perfect deblending of
its footprints would score).

``--flux-noise-draws N`` adds the ceiling of a method that knows each source's exact noiseless profile and
position and only its amplitude to 1/SNR (``sim.astro.draw_source`` times ``1 + N(0, 1/snr)``, N draws per
source): the share of draws whose 1.5-sigma isophote keeps IoU >= 0.5 with the true one, per S/N bin.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.astro_sources import blended_ids, load  # noqa: E402
from benchmarks.baselines import matched_count  # noqa: E402
from napari_segtool.core.predict import predict  # noqa: E402
from napari_segtool.kernel.device import configure_threads  # noqa: E402
from napari_segtool.ops.metrics import match_instances  # noqa: E402
from napari_segtool.ops.postprocess import overlap_matrix  # noqa: E402
from napari_segtool.sim import AstroField, simulate_astro_dataset  # noqa: E402
from napari_segtool.sim.astro import draw_source  # noqa: E402

SNR_BINS = ((5, 10), (10, 20), (20, 50), (50, 200), (200, np.inf))


def iou_table(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """IoU and overlap (pixels) between every predicted (rows) and true (columns) id, with both id lists."""
    inter, pid, gid = overlap_matrix(pred, truth)
    keep_p, keep_g = pid > 0, gid > 0
    inter, pid, gid = inter[keep_p][:, keep_g], pid[keep_p], gid[keep_g]
    pa = np.bincount(pred.ravel(), minlength=int(pred.max()) + 1)[pid]
    ga = np.bincount(truth.ravel(), minlength=int(truth.max()) + 1)[gid]
    return inter / np.maximum(pa[:, None] + ga[None, :] - inter, 1), inter, pid, gid


def true_source_rows(pred: np.ndarray, field: AstroField) -> list[dict]:
    """Per true source: S/N, best IoU, area ratio of its best-IoU prediction, share of it labelled at all."""
    iou, _, pid, gid = iou_table(pred, field.labels)
    area = np.bincount(pred.ravel(), minlength=int(pred.max()) + 1)
    col = {int(g): j for j, g in enumerate(gid)}
    rows = []
    for e in field.catalog:
        m = field.labels == e["id"]
        j = col.get(e["id"])
        best = int(np.argmax(iou[:, j])) if j is not None and pid.size else -1
        best_iou = float(iou[best, j]) if best >= 0 else 0.0
        rows.append({"snr": e["snr"], "iou": best_iou, "labelled": float(np.mean(pred[m] > 0)),
                     "ratio": float(area[pid[best]] / m.sum()) if best_iou > 0 else np.nan})
    return rows


def false_positive_kinds(pred: np.ndarray, field: AstroField) -> dict[str, int]:
    """Predictions matching no true source at IoU 0.5, by kind (see the module docstring)."""
    iou, inter, pid, _ = iou_table(pred, field.labels)
    area = np.bincount(pred.ravel(), minlength=int(pred.max()) + 1)
    peak = ndi.maximum(field.noiseless, pred, np.arange(int(pred.max()) + 1)) / field.noise_sigma
    kinds = dict.fromkeys(("noise", "faint real", "mis-sized", "merged", "fragment"), 0)
    all_ids = np.unique(pred[pred > 0])
    row_of = {int(p): i for i, p in enumerate(pid)}
    for p in all_ids:
        i = row_of.get(int(p))
        best = float(iou[i].max()) if i is not None and iou.shape[1] else 0.0
        if best >= 0.5:
            continue
        on = int(np.sum(inter[i] > 0.1 * area[p])) if i is not None else 0
        if on == 0:
            kinds["noise" if peak[p] < 1.0 else "faint real"] += 1
        elif on >= 2:
            kinds["merged"] += 1
        else:
            kinds["mis-sized" if best >= 0.1 else "fragment"] += 1
    return kinds


def nearest_truth(mask: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``mask``'s pixels labelled with the nearest true footprint's id: a segmentation with perfect identities."""
    idx = ndi.distance_transform_edt(truth == 0, return_distances=False, return_indices=True)
    return np.where(mask, truth[tuple(idx)], 0).astype(np.int32)


def ceilings(field: AstroField, foreground: np.ndarray) -> dict[str, np.ndarray]:
    """The ceilings' segmentations (module docstring) for one field."""
    level = field.meta["k_sigma"] * field.noise_sigma
    psf_sigma = field.meta["psf_fwhm"] / 2.355 / field.meta["pixel_scale"]
    sky = np.median(field.image[field.labels == 0])
    return {"noiseless image > 1.5 sigma": nearest_truth(field.noiseless > level, field.labels),
            "noisy image * PSF > 1.5 sigma": nearest_truth(ndi.gaussian_filter(field.image - sky, psf_sigma) > level,
                                                           field.labels),
            "model's foreground": nearest_truth(foreground, field.labels)}


def flux_noise_ceiling(fields: list[AstroField], draws: int, seed: int = 0) -> str:
    """Per S/N bin, the share of draws whose isophote at a noisy amplitude keeps IoU >= 0.5 (module docstring)."""
    rng = np.random.default_rng(seed)
    snr, iou = [], []
    for f in fields:
        level = f.meta["threshold"]
        for e in f.catalog:
            alone = draw_source(e, f.meta)
            true = alone > level
            for _ in range(draws):
                noisy = alone * (1 + rng.normal(0, 1 / e["snr"])) > level
                snr.append(e["snr"])
                iou.append((true & noisy).sum() / max((true | noisy).sum(), 1))
    snr, iou = np.array(snr), np.array(iou)
    return "; ".join(f"S/N {lo:g}-{hi:g}: {np.mean(iou[(snr >= lo) & (snr < hi)] >= 0.5):.3f} (median IoU "
                     f"{np.median(iou[(snr >= lo) & (snr < hi)]):.2f})" for lo, hi in SNR_BINS[:3])


def scores(segmentations: list[np.ndarray], fields: list[AstroField]) -> str:
    """Mean AP@0.5 and pooled blended recall of one segmentation per field."""
    ap = np.mean([match_instances(s, f.labels, 0.5).ap for s, f in zip(segmentations, fields)])
    hit, total = np.sum([matched_count(s, f.labels, blended_ids(f)) for s, f in zip(segmentations, fields)], axis=0)
    return f"AP@0.5 {ap:.3f}, blended recall {hit / max(total, 1):.3f}"


def diagnose(model, name: str, fields: list[AstroField], flux_noise_draws: int = 0) -> None:
    """Print the per-S/N table, the misses, the false positives and the ceilings of one set."""
    preds, rows, fps, ceil = [], [], {}, {}
    for f in fields:
        result = predict(model, f.image, return_probabilities=True)
        preds.append(result.labels)
        rows += true_source_rows(result.labels, f)
        for k, v in false_positive_kinds(result.labels, f).items():
            fps[k] = fps.get(k, 0) + v
        fg = model.meta.postprocess.get("fg_threshold", 0.5)
        for k, v in ceilings(f, result.probabilities[1] + result.probabilities[2] > fg).items():
            ceil.setdefault(k, []).append(v)
    print(f"## {name}: {len(fields)} fields, {len(rows)} true sources; model {scores(preds, fields)}")
    snr, iou, ratio, labelled = (np.array([r[k] for r in rows]) for k in ("snr", "iou", "ratio", "labelled"))
    print("| S/N | sources | recall@0.5 | recall@0.1 | area ratio (median, q25-q75) |\n|---|---:|---:|---:|---|")
    for lo, hi in SNR_BINS:
        s = (snr >= lo) & (snr < hi)
        r = ratio[s & (iou >= 0.1)]
        spread = f"{np.median(r):.2f} ({np.percentile(r, 25):.2f}-{np.percentile(r, 75):.2f})" if r.size else "-"
        print(f"| {lo:g}-{hi:g} | {s.sum()} | {np.mean(iou[s] >= 0.5):.3f} | {np.mean(iou[s] >= 0.1):.3f} | {spread} |")
    missed = iou < 0.1
    print(f"missed at IoU 0.1: {missed.sum()} ({np.sum(missed & (labelled > 0.5))} merged into a neighbour, "
          f"{np.sum(missed & (labelled < 0.1))} not detected); IoU 0.1-0.5: {np.sum((iou >= 0.1) & (iou < 0.5))}")
    print(f"false positives at IoU 0.5 ({sum(fps.values())} of {sum(int(p.max()) for p in preds)} predictions): "
          + ", ".join(f"{k} {v}" for k, v in fps.items()))
    for k, v in ceil.items():
        print(f"ceiling, true identities, {k}: {scores(v, fields)}")
    if flux_noise_draws:
        print(f"ceiling, exact profile, amplitude to 1/SNR, share with IoU >= 0.5: "
              f"{flux_noise_ceiling(fields, flux_noise_draws)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fields", type=int, default=10)
    p.add_argument("--crowded-fields", type=int, default=10)
    p.add_argument("--seed", type=int, default=100, help="standard fields' seed (crowded: seed + 1000)")
    p.add_argument("--model", default="astro-sources")
    p.add_argument("--flux-noise-draws", type=int, default=0, help="draws per source of the exact-profile ceiling")
    args = p.parse_args(argv)
    model = load(args.model)
    configure_threads()
    diagnose(model, "standard", simulate_astro_dataset(args.fields, (256, 256), seed=args.seed), args.flux_noise_draws)
    if args.crowded_fields:
        diagnose(model, "crowded", simulate_astro_dataset(args.crowded_fields, (256, 256), seed=args.seed + 1000,
                                                          crowding="crowded"), args.flux_noise_draws)


if __name__ == "__main__":
    main()
