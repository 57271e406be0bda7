"""Astronomy source segmentation: the shipped ``astro-sources`` U-Net vs photutils and SEP.

    python benchmarks/astro_sources.py [--fields 20] [--size 256] [--model astro-sources|PATH]
                                       [--tune-fields 8] [--speed-fields 5] [--out DIR]
                                       [--ours-only | --speed-only]

``--ours-only``: the model's rows, speed and star/galaxy line without photutils, SEP or the real sky;
``--speed-only``: the speed line alone (``--speed-fields`` fields, default 5).

Held-out simulated fields (``napari_segtool.sim.simulate_astro_dataset``, seed
``--seed``, default 100: the model was trained on seeds 1 and 501 and its card scored on seed 2),
*standard* and *crowded* (``crowding="crowded"``, seed + 1000: 2-3x the source density, 40-70 %
blends), both with the simulator's documented truth (detectable sources, isophotal S/N >= 5, the
1.5-sigma isophote, each pixel to the source with the most flux), are segmented by

* the model (``core.predict.predict``, its own asinh normalisation);
* photutils ``detect_sources`` + ``deblend_sources`` and SEP ``sep.extract`` with
  deblending and ``segmentation_map=True`` (``benchmarks/baselines.py``), each with the
  parameters that maximise mean AP@0.5 on separate tuning fields (seed ``--tune-seed``,
  default 50; crowded: seed + 1000, tuned separately) over a small grid (threshold, minimum
  area, deblending contrast and levels), and, for reference, with their stock parameters.

Per method, means over the test fields of ``ops.metrics.instance_scores``: AP@0.5,
mean AP (0.5:0.95), precision, recall and F1 at IoU 0.5; the recall at IoU 0.5 of the
*blended* sources (the simulator's ``blended`` flag: the footprint touches another one,
8-connected), pooled over all fields because each field has only a few; the share of *large*
galaxies (the simulator's extended ones, 2-20 arcsec half-light radius) whose footprint is held
mostly (> 50 %) by one label ("large whole"); and seconds per field (segmentation only; the model
is warmed up once before timing).

Speed (``--speed-fields``): the model alone on 512x512 standard fields, after a warm-up, each
field timed (median and mean), with the 1-minute load average before and after: on a shared CPU
the load says how far the figure is from an idle machine's.

Real sky (``--no-real`` skips it): the same methods, with the same parameters, on the Hubble
Deep Field shipped with scikit-image (grey: the mean of its RGB channels). No truth exists, so the
reference is SEP's 3-sigma catalogue (``sep_sources(thresh=3)``, stock deblending): per method the
number of sources, the fraction of SEP 3-sigma sources whose brightest pixel lies in one of the
method's labels ("SEP 3σ covered"), and, over SEP's 5 largest footprints, the median fraction of a
footprint held by the one label covering most of it ("largest: one label", 1.0 = kept whole).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.baselines import (  # noqa: E402
    format_row, format_table, matched_count, photutils_sources, sep_sources, write_report,
)
from napari_segtool.kernel.device import configure_threads, pick_device  # noqa: E402
from napari_segtool.ops.metrics import instance_scores, match_instances  # noqa: E402
from napari_segtool.core.predict import predict  # noqa: E402
from napari_segtool.sim import AstroField, simulate_astro_dataset  # noqa: E402

Segmenter = Callable[[np.ndarray], np.ndarray]

#: classical pipelines: (function, stock parameters, tuning grid)
BASELINES: dict[str, tuple[Callable[..., np.ndarray], dict[str, Any], dict[str, list]]] = {
    "photutils": (photutils_sources,
                  {"nsigma": 1.5, "npixels": 5, "contrast": 0.001, "n_levels": 32},
                  {"nsigma": [0.5, 0.75, 1.0, 1.5, 2.0, 3.0], "npixels": [3, 5, 10],
                   "contrast": [1e-4, 1e-3, 1e-2, 5e-2], "n_levels": [16, 32]}),
    "SEP": (sep_sources,
            {"thresh": 1.5, "minarea": 5, "deblend_cont": 0.005, "deblend_nthresh": 32},
            {"thresh": [0.5, 0.75, 1.0, 1.5, 2.0, 3.0], "minarea": [3, 5, 10],
             "deblend_cont": [1e-4, 1e-3, 5e-3, 1e-2, 5e-2], "deblend_nthresh": [16, 32, 64]}),
}
REAL_COLUMNS = [("image", "image", "s"), ("method", "method", "s"), ("params", "parameters", "s"),
                ("n_sources", "sources", "d"), ("sep3_covered", "SEP 3σ covered", ".3f"),
                ("largest_one_label", "largest: one label", ".3f"), ("seconds", "s/image", ".2f")]
COLUMNS = [("set", "fields", "s"), ("method", "method", "s"), ("params", "parameters", "s"), ("ap50", "AP@0.5", ".3f"),
           ("mean_ap", "mean AP", ".3f"), ("precision50", "precision", ".3f"), ("recall50", "recall", ".3f"),
           ("f1_50", "F1", ".3f"), ("blended_recall50", "blended recall", ".3f"),
           ("large_whole", "large whole", ".2f"), ("seconds_per_field", "s/field", ".3f")]
#: a large galaxy counts as kept whole when one label holds more than this share of its footprint
LARGE_WHOLE = 0.5


def blended_ids(field: AstroField) -> list[int]:
    """Ground-truth ids the simulator flags as blended (footprint touches another, 8-connected)."""
    return [e["id"] for e in field.catalog if e["blended"]]


def tune(fn: Callable[..., np.ndarray], grid: dict[str, list], fields: Sequence[AstroField]
         ) -> tuple[dict[str, Any], float, int]:
    """Grid search maximising mean AP@0.5 (``ops.metrics.match_instances``) over ``fields``.

    Returns the best parameters, their mean AP@0.5 and how many settings failed (SEP
    raises on buffer overflows; such a setting is skipped, never silently scored).
    """
    best: tuple[float, dict[str, Any]] = (-1.0, {})
    failed = 0
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values))
        try:
            ap = float(np.mean([match_instances(fn(f.image, **params), f.labels, 0.5).ap for f in fields]))
        except Exception as exc:  # noqa: BLE001 - any library failure just rules the setting out
            failed += 1
            print(f"  {fn.__name__}{params} failed: {exc}", flush=True)
            continue
        if ap > best[0]:
            best = (ap, params)
    return best[1], best[0], failed


def evaluate(method: str, params: str, segment: Segmenter, fields: Sequence[AstroField],
             set_name: str = "standard") -> dict[str, Any]:
    """Mean instance scores over ``fields``, pooled blended-source recall, large galaxies kept whole,
    seconds per field."""
    per_field, seconds, hit, total, whole = [], 0.0, 0, 0, []
    for f in fields:
        t0 = time.perf_counter()
        pred = segment(f.image)
        seconds += time.perf_counter() - t0
        per_field.append(instance_scores(pred, f.labels))
        h, t = matched_count(pred, f.labels, blended_ids(f))
        hit, total = hit + h, total + t
        whole += [one_label_fraction(pred, f.labels == e["id"]) > LARGE_WHOLE for e in f.catalog if e.get("large")]
    row: dict[str, Any] = {"set": set_name, "method": method, "params": params}
    for key in ("ap50", "mean_ap", "precision50", "recall50", "f1_50"):
        row[key] = float(np.mean([s[key] for s in per_field]))
    row["blended_recall50"] = hit / total if total else None
    row["large_whole"] = float(np.mean(whole)) if whole else None
    row["seconds_per_field"] = seconds / len(fields)
    return row


def speed(model, n_fields: int, seed: int) -> str:
    """Seconds per 512x512 field for the model alone (warmed up), with the load average around the run."""
    import os

    fields = simulate_astro_dataset(n_fields, (512, 512), seed=seed)
    # warm-up: a 1536² plane runs enough tile pixels for the fast CPU path to be prepared (models.runtime,
    # as after the accuracy rows), then a field of the timed size
    predict(model, np.tile(fields[0].image, (3, 3)))
    predict(model, fields[0].image)
    load0 = os.getloadavg()[0]
    times = []
    for f in fields:
        t0 = time.perf_counter()
        predict(model, f.image)
        times.append(time.perf_counter() - t0)
    load1 = os.getloadavg()[0]
    return (f"speed: {n_fields} fields 512x512 (seed {seed}): median {np.median(times):.3f} s, mean "
            f"{np.mean(times):.3f} s, min {np.min(times):.3f} s per field (network + deblending + source table); "
            f"1-min load average {load0:.1f} before, {load1:.1f} after, on {os.cpu_count()} cores")


def sep_reference(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SEP's 3-sigma sources (stock deblending): their segmentation and each one's brightest pixel (y, x)."""
    from scipy import ndimage

    segmap = sep_sources(image, thresh=3.0)
    ids = np.arange(1, int(segmap.max()) + 1)
    return segmap, np.array(ndimage.maximum_position(image, segmap, ids), dtype=int).reshape(-1, 2)


def one_label_fraction(labels: np.ndarray, footprint: np.ndarray) -> float:
    """Fraction of ``footprint`` (bool) held by the single label covering most of it (0 if none)."""
    inside = labels[footprint]
    inside = inside[inside > 0]
    return float(np.bincount(inside).max() / footprint.sum()) if inside.size else 0.0


def real_sky(name: str, image: np.ndarray, segmenters: Sequence[tuple[str, str, Segmenter]],
             n_largest: int = 5) -> list[dict[str, Any]]:
    """Counts and coverage of SEP's 3-sigma sources per method on a real image (see the module docstring)."""
    segmap, peaks = sep_reference(image)
    areas = np.bincount(segmap.ravel())
    areas[0] = 0
    largest = np.argsort(areas)[::-1][:n_largest]
    print(f"{name}: {image.shape[1]}x{image.shape[0]}, {len(peaks)} SEP 3-sigma sources, largest footprints "
          f"{', '.join(str(int(areas[i])) for i in largest)} px", flush=True)
    rows = []
    for method, params, segment in segmenters:
        t0 = time.perf_counter()
        labels = np.asarray(segment(image))
        seconds = time.perf_counter() - t0
        rows.append({"image": name, "method": method, "params": params,
                     "n_sources": int(len(np.unique(labels)) - 1),
                     "sep3_covered": float(np.mean(labels[peaks[:, 0], peaks[:, 1]] > 0)) if len(peaks) else None,
                     "largest_one_label": float(np.median([one_label_fraction(labels, segmap == i) for i in largest])),
                     "seconds": seconds})
        print(format_row(rows[-1], REAL_COLUMNS[1:]), flush=True)
    return rows


def hubble_grey() -> np.ndarray:
    """The Hubble Deep Field shipped with scikit-image, grey (mean of its channels), float32."""
    from skimage import data

    return data.hubble_deep_field().astype(np.float32).mean(axis=-1)


def star_galaxy(model, fields: Sequence[AstroField]) -> str | None:
    """Accuracy of the model's star/galaxy column on its sources matched to true ones (``None`` if it has none)."""
    from napari_segtool.ops.sources import truth_classes

    pairs = []
    for f in fields:
        pred = predict(model, f.image)
        truth = truth_classes(pred.labels, f.labels, f.classes)
        pairs += [(r["class"], truth[r["label"]]) for r in pred.tables.get((), []) if "class" in r
                  and r["label"] in truth]
    if not pairs:
        return None
    guess, true = (np.array(v) for v in zip(*pairs))
    stars = true == "star"
    tp = int(np.sum((guess == "star") & stars))
    return (f"star/galaxy column on {len(pairs)} matched sources: accuracy {np.mean(guess == true):.3f} "
            f"(all 'galaxy': {1 - stars.mean():.3f}), stars: precision {tp / max(1, np.sum(guess == 'star')):.2f} "
            f"recall {tp / max(1, stars.sum()):.2f}")


def load(model: str):
    """The model by zoo name or path, or exit with what to do when the zoo model is missing."""
    from napari_segtool.core.checkpoint import ModelLoadError, load_model

    try:
        return load_model(model)
    except ModelLoadError as exc:
        hint = (" (the shipped model is made by `python scripts/train_defaults.py --only astro-sources`)"
                if model == "astro-sources" else "")
        raise SystemExit(f"model '{model}' not found{hint}; pass --model PATH to a saved model.\n{exc}")


def _fmt(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" for k, v in params.items())


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fields", type=int, default=20, help="held-out test fields")
    p.add_argument("--size", type=int, default=256, help="field size (px)")
    p.add_argument("--model", default="astro-sources", help="zoo name or path of the model")
    p.add_argument("--seed", type=int, default=100, help="test fields' seed (training used 1 and 501, the card 2)")
    p.add_argument("--crowded-fields", type=int, default=20, help="held-out crowded fields (seed --seed + 1000)")
    p.add_argument("--speed-fields", type=int, default=5, help="512x512 fields timed for the model alone (0: skip)")
    p.add_argument("--tune-fields", type=int, default=8, help="fields used to tune photutils and SEP")
    p.add_argument("--tune-seed", type=int, default=50)
    p.add_argument("--no-stock", action="store_true", help="skip the baselines with stock parameters")
    p.add_argument("--no-real", action="store_true", help="skip the real-sky rows (Hubble Deep Field)")
    p.add_argument("--out", type=Path, help="write astro_sources.md and astro_sources.csv here")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--ours-only", action="store_true", help="the model alone: no photutils, SEP or real sky")
    only.add_argument("--speed-only", action="store_true", help="only the speed line (--speed-fields fields)")
    args = p.parse_args(argv)
    if {args.seed, args.tune_seed} & {1, 2, 501} or args.seed == args.tune_seed:
        raise SystemExit("test and tuning seeds must differ from each other and from 1, 501 and 2 (training, card)")

    model = load(args.model)
    threads = configure_threads()
    if args.speed_only:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            print(speed(model, max(args.speed_fields, 1), args.seed + 2000) + f"; {threads} torch thread(s)", flush=True)
        return []
    shape = (args.size, args.size)
    t0 = time.perf_counter()
    n_tune = 0 if args.ours_only else args.tune_fields
    sets = {"standard": (simulate_astro_dataset(n_tune, shape, seed=args.tune_seed),
                         simulate_astro_dataset(args.fields, shape, seed=args.seed))}
    if args.crowded_fields:
        sets["crowded"] = (simulate_astro_dataset(n_tune, shape, seed=args.tune_seed + 1000, crowding="crowded"),
                           simulate_astro_dataset(args.crowded_fields, shape, seed=args.seed + 1000, crowding="crowded"))
    test_fields = sets["standard"][1]
    header = [
        "# Astronomy sources: U-Net model vs photutils and SEP (held-out simulated fields)",
        "",
    ]
    for name, (_, fields) in sets.items():
        seed = args.seed if name == "standard" else args.seed + 1000
        n_src = sum(int(f.labels.max()) for f in fields)
        n_blend = sum(len(blended_ids(f)) for f in fields)
        n_large = sum(e.get("large", False) for f in fields for e in f.catalog)
        header.append(f"- {name}: {len(fields)} fields {args.size}×{args.size} (simulate_astro_dataset seed "
                      f"{seed}), {n_src} sources, {n_blend} blended, "
                      f"{n_large} large galaxies")
    header += [
        "- truth: detectable sources (isophotal S/N >= 5), footprints at the 1.5-sigma isophote (napari_segtool.sim.astro)",
        f"- photutils / SEP tuned for AP@0.5 on {args.tune_fields} other fields per set (seed {args.tune_seed}, "
        f"crowded {args.tune_seed + 1000})",
        f"- model: {model.meta.name or args.model} (`{args.model}`); device {pick_device()}, {threads} torch thread(s)",
        "- seconds are wall-clock times of this run; on a CPU shared with other jobs compare them within a run",
    ]
    for line in header[2:]:
        print(line, flush=True)
    print(f"  (simulated in {time.perf_counter() - t0:.0f} s)", flush=True)

    rows: list[dict[str, Any]] = []
    real: list[dict[str, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # photutils/astropy warn about deblending modes and empty meshes
        predict(model, test_fields[0].image)  # warm-up, untimed
        arch = {"unet": "U-Net", "maskrcnn": "Mask R-CNN"}.get(model.meta.arch, model.meta.arch)
        ours: tuple[str, str, Segmenter] = (f"{arch} (ours)", f"model {model.meta.name or args.model}",
                                             lambda im: predict(model, im).labels)
        for set_name, (tune_fields, fields) in sets.items():
            segmenters = [ours]
            rows.append(evaluate(*ours, fields, set_name))
            print(format_row(rows[-1], COLUMNS), flush=True)
            for name, (fn, stock, grid) in ({} if args.ours_only else BASELINES).items():
                t0 = time.perf_counter()
                best, ap, failed = tune(fn, grid, tune_fields)
                n = int(np.prod([len(v) for v in grid.values()]))
                print(f"{set_name} {name}: best of {n} settings on the tuning fields AP@0.5 {ap:.3f} with {_fmt(best)} "
                      f"({failed} failed, {time.perf_counter() - t0:.0f} s)", flush=True)
                if not best:
                    continue
                segmenters.append((f"{name} (tuned)", _fmt(best), lambda im, fn=fn, kw=best: fn(im, **kw)))
                if not args.no_stock:
                    segmenters.append((f"{name} (stock)", _fmt(stock), lambda im, fn=fn, kw=stock: fn(im, **kw)))
                for method in segmenters[len(segmenters) - (1 if args.no_stock else 2):]:
                    rows.append(evaluate(*method, fields, set_name))
                    print(format_row(rows[-1], COLUMNS), flush=True)
            if set_name == "standard" and not (args.no_real or args.ours_only):
                real = real_sky("Hubble Deep Field (skimage, grey)", hubble_grey(), segmenters)
        timing = speed(model, args.speed_fields, args.seed + 2000) if args.speed_fields else ""
    if timing:
        print(timing, flush=True)
        header.append(f"- {timing}")

    classes = star_galaxy(model, test_fields)
    if classes:
        header.append(f"- {classes}")
    print()
    print(format_table(rows, COLUMNS))
    print(classes or "the model's source table has no star/galaxy column")
    if real:
        print()
        print(format_table(real, REAL_COLUMNS))
    if args.out:
        md, csv_path = write_report(rows, COLUMNS, args.out, "astro_sources", header)
        print(f"wrote {md} and {csv_path}")
        if real:
            real_md, real_csv = write_report(real, REAL_COLUMNS, args.out, "astro_sources.real", [
                "## Real sky: counts and coverage of SEP's 3-sigma sources", "",
                "Same methods and parameters as above; reference: SEP at 3 sigma with stock deblending. "
                "'SEP 3σ covered': its sources whose brightest pixel lies in a label; 'largest: one label': "
                "median over its 5 largest footprints of the share held by one label."])
            md.write_text(md.read_text() + "\n" + real_md.read_text())
            real_md.unlink()
            print(f"appended the real-sky table to {md}; wrote {real_csv}")
    return rows


if __name__ == "__main__":
    main()
