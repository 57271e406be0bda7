"""Same objects, other presentations: AP@0.5 of the shipped models per condition, beside the plain image.

    python benchmarks/invariance.py                       # nuclei + nuclei-maskrcnn on the real 2D image
    python benchmarks/invariance.py --models nuclei --mosaic 7 --stack
    python benchmarks/invariance.py --models astro-sources --astro

Conditions (each the *same* objects, scored against the correspondingly transformed
ground truth; ``benchmarks/real_data.py`` gives the real nuclei image, 512², ~24 px nuclei):

* ``magnification ×m`` -- the image rescaled (linear, anti-aliased when shrinking), labels
  by nearest neighbour; objects ~12 px (×0.5) to ~95 px (×4) across.
* ``framed flat / noise / mirror`` -- 64 px of constant background (the background's
  median), of background-like noise (its mean and std), or a mirror of the image around
  it; scored on the original area.
* ``mosaic k×k`` -- k² copies with 64-px flat gaps, one ``segtool predict``-style run.
* ``chunked (zarr, 2 workers)`` -- the 4×4 mosaic written to zarr and run through
  :func:`~napari_segtool.core.batch.predict_to_zarr` on a 2-worker local cluster, 512-px chunks.
* ``--stack``: the real 3D stack plain, chunked, and with XY magnified ×2.
* ``--astro``: simulated fields, plain / framed / 2×2 mosaic / chunked.
* ``--diagnose``: per magnification, the estimated diameter, the factor the engine chose and the
  objects' size on the model grid (beside the plain image's), AP, and the *oracle* AP with the
  factor forced to the plain image's factor divided by the magnification (the plain run's grid).
  Oracle ≈ plain and engine < plain: the size estimate or the factor policy is at fault, not
  the resampling.
* ``--diagnose-frames``: per frame, the limits the normaliser fitted, AP as run, AP with the plain
  image's limits forced, with its limits and object size forced, and AP over the objects at least
  ``EDGE`` px inside the original border (framed with plain limits, beside plain). Forced ≈ plain:
  the normaliser (or the size) is at fault; interior ≈ plain but forced < plain: the objects cut by
  the original border are, i.e. what the network sees beyond it (the frame, or the engine's mirror).

Every prediction goes through the same public functions the CLI and the widgets call.
``size`` is the object diameter (input pixels) the engine estimated for the condition.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from skimage.transform import rescale, resize  # noqa: E402

from benchmarks.real_data import nuclei_2d, nuclei_3d  # noqa: E402
from napari_segtool.core.batch import predict_to_zarr  # noqa: E402
from napari_segtool.core.checkpoint import load_model  # noqa: E402
from napari_segtool.core.predict import predict  # noqa: E402
from napari_segtool.ops.metrics import instance_scores  # noqa: E402

GAP = 64


def magnify(image: np.ndarray, labels: np.ndarray, m: float) -> tuple[np.ndarray, np.ndarray]:
    img = rescale(image.astype(np.float32), m, order=1, anti_aliasing=m < 1, preserve_range=True)
    lab = resize(labels, img.shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    return img.astype(np.float32), lab


def frame(image: np.ndarray, labels: np.ndarray, kind: str, width: int = GAP, seed: int = 0) -> np.ndarray:
    """``image`` surrounded by ``width`` px of flat background, noise, or its mirror image."""
    if kind == "mirror":
        return np.pad(image, width, mode="reflect")
    background = image[labels == 0].astype(np.float32)
    out = np.pad(image.astype(np.float32), width, mode="constant", constant_values=float(np.median(background)))
    if kind == "noise":
        rng = np.random.default_rng(seed)
        noise = rng.normal(background.mean(), background.std(), out.shape).astype(np.float32)
        inside = np.zeros(out.shape, bool)
        inside[width:-width, width:-width] = True
        out = np.where(inside, out, noise)
    return out


def mosaic(image: np.ndarray, labels: np.ndarray, k: int, gap: int = GAP) -> tuple[np.ndarray, np.ndarray]:
    """``k × k`` copies separated by ``gap`` px of the background's median; labels made unique."""
    h, w = image.shape[:2]
    fill = float(np.median(image[labels == 0]))
    img = np.full((k * h + (k - 1) * gap, k * w + (k - 1) * gap), fill, np.float32)
    lab = np.zeros(img.shape, np.int32)
    n = int(labels.max())
    for i in range(k):
        for j in range(k):
            y, x = i * (h + gap), j * (w + gap)
            img[y:y + h, x:x + w] = image
            lab[y:y + h, x:x + w] = np.where(labels > 0, labels + (i * k + j) * n, 0)
    return img, lab


def chunked(model, image: np.ndarray, axes: str, workers: int = 2, chunk: int = 512) -> np.ndarray:
    import zarr

    with tempfile.TemporaryDirectory() as tmp:
        src = zarr.open_array(f"{tmp}/in.zarr", mode="w", shape=image.shape, chunks=(chunk,) * image.ndim,
                              dtype=image.dtype)
        src[...] = image
        predict_to_zarr(model, f"{tmp}/in.zarr", f"{tmp}/out.zarr", axes=axes, chunk_size=chunk, workers=workers)
        return np.asarray(zarr.open_array(f"{tmp}/out.zarr", mode="r")[...])


def scored(label: str, run: Callable[[], tuple[Any, np.ndarray]], plain: float | None) -> float:
    """Print one condition's row; ``run`` returns the prediction (a ``Prediction`` or labels) and the truth."""
    t0 = time.perf_counter()
    pred, gt = run()
    size = getattr(pred, "diameter", None)
    s = instance_scores(getattr(pred, "labels", pred), gt)
    delta = "" if plain is None else f"{s['ap50'] - plain:+7.3f}"
    size_text = f"{size:6.1f}" if size else "     -"
    print(f"  {label:36s} {s['ap50']:7.3f} {delta:>7s} {s['mean_ap']:8.3f} {size_text} {time.perf_counter() - t0:8.1f}",
          flush=True)
    return s["ap50"]


class Cropped:
    """A prediction's labels cut to the original image's area (a framed run), its size estimate kept."""

    def __init__(self, prediction: Any, key: tuple[slice, ...]):
        self.labels = prediction.labels[key]
        self.diameter = prediction.diameter


def nuclei_conditions(model, mosaic_k: int, with_chunked: bool) -> None:
    image, gt = nuclei_2d()
    image = image.astype(np.float32)
    plain = scored("plain image", lambda: (predict(model, image), gt), None)
    for m in (0.5, 2.0, 3.0, 4.0):
        img, lab = magnify(image, gt, m)
        scored(f"magnification x{m:g}", lambda: (predict(model, img), lab), plain)
    inner = (slice(GAP, -GAP), slice(GAP, -GAP))
    for kind in ("flat", "noise", "mirror"):
        img = frame(image, gt, kind)
        scored(f"framed {kind}", lambda: (Cropped(predict(model, img), inner), gt), plain)
    img, lab = mosaic(image, gt, mosaic_k)
    scored(f"mosaic {mosaic_k}x{mosaic_k} ({img.shape[0]} px)", lambda: (predict(model, img), lab), plain)
    if with_chunked:
        img, lab = mosaic(image, gt, 4)
        scored("mosaic 4x4 chunked (zarr, 2 workers)", lambda: (chunked(model, img, "YX"), lab), plain)


def at_factor(model, image: np.ndarray, factor: float, diameter: float) -> Any:
    """``predict`` with the resampling factor forced (the size estimate and the factor policy bypassed)."""
    from unittest import mock

    import napari_segtool.core.plan as plan

    with mock.patch.object(plan, "scale_factor", lambda scale, image_diameter: factor):
        return predict(model, image, diameter=diameter)


#: Objects closer than this (px) to the original border are left out of the frames' interior AP.
EDGE = 16


def interior_ap(pred: np.ndarray, gt: np.ndarray, margin: int = EDGE) -> float:
    """AP@0.5 over the objects wholly at least ``margin`` px inside the image (truth and prediction alike)."""
    band = np.ones(gt.shape, bool)
    band[margin:-margin, margin:-margin] = False
    keep_gt = np.where(np.isin(gt, np.unique(gt[band])), 0, gt)
    keep_pred = np.where(np.isin(pred, np.unique(pred[band])), 0, pred)
    return instance_scores(keep_pred, keep_gt)["ap50"]


def forced(model, image: np.ndarray, normalizer: Any = None, diameter: float | None = None) -> Any:
    """``predict`` with the normaliser forced (the image's own limits bypassed) and optionally the size."""
    from unittest import mock

    import napari_segtool.core.plan as plan

    if normalizer is None:
        return predict(model, image, diameter=diameter)
    with mock.patch.object(plan, "fit_image_normalizer", lambda *args, **kwargs: normalizer):
        return predict(model, image, diameter=diameter)


def diagnose_frames(model, images: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """Where a frame loses AP: the normaliser's limits, the size estimate, or the objects at the border.

    ``images`` are (image, truth) pairs (one real image, or several sky fields scored as one).
    """
    from napari_segtool.core.plan import fit_image_normalizer, mirror_content

    inner = (slice(GAP, -GAP), slice(GAP, -GAP))
    config = model.meta.normalization
    plains = [predict(model, im) for im, _ in images]
    norms = [fit_image_normalizer(im.astype(np.float32)[..., None], config, False) for im, _ in images]
    gts = [gt for _, gt in images]

    def ap(preds: list[np.ndarray]) -> float:
        return instance_scores(_stack_ids(preds), _stack_ids(gts))["ap50"]

    def interior(preds: list[np.ndarray]) -> float:
        return float(np.mean([interior_ap(p, gt) for p, gt in zip(preds, gts)]))

    def limits(ns: list[Any]) -> str:
        return ", ".join(f"{float(n.lo[0]):.4g}..{float(n.hi[0]):.4g}" for n in ns[:3]) + (" ..." if len(ns) > 3 else "")

    plain_labels = [p.labels for p in plains]
    print(f"  plain          limits {limits(norms)}  AP {ap(plain_labels):.3f}  interior {interior(plain_labels):.3f}",
          flush=True)
    for kind in ("flat", "noise", "mirror"):
        framed = [frame(im.astype(np.float32), gt, kind) for im, gt in images]
        own = [fit_image_normalizer(mirror_content(f[..., None])[1], config, False) for f in framed]  # as planned
        runs = {
            "as run": [predict(model, f).labels[inner] for f in framed],
            "plain limits": [forced(model, f, n).labels[inner] for f, n in zip(framed, norms)],
            "+ plain size": [forced(model, f, n, p.diameter).labels[inner] for f, n, p in zip(framed, norms, plains)],
        }
        print(f"  framed {kind:7s} limits {limits(own)}  " + "  ".join(f"{k} {ap(v):.3f}" for k, v in runs.items())
              + f"  interior (plain limits) {interior(runs['plain limits']):.3f}", flush=True)


def diagnose_magnifications(model, grids: tuple[float, ...] = (13.5, 16.0, 20.0, 24.0, 28.0)) -> None:
    """Where a magnification loses AP: the size estimate, the factor policy, or the model's response to size.

    Last line: the plain image run with its objects at several sizes on the model grid (factor forced).
    """
    image, gt = nuclei_2d()
    image = image.astype(np.float32)
    base = predict(model, image)
    for m in (0.5, 1.0, 2.0, 3.0, 4.0):
        img, lab = (image, gt) if m == 1 else magnify(image, gt, m)
        pred = predict(model, img)
        ap = instance_scores(pred.labels, lab)["ap50"]
        oracle_factor = base.scale_factor / m
        oracle = at_factor(model, img, oracle_factor, base.diameter * m)  # the plain run's grid, exactly
        grid = (pred.diameter or 0.0) * pred.scale_factor
        print(f"  x{m:<4g} estimate {pred.diameter or 0:6.1f} (plain x m {base.diameter * m:6.1f})  factor "
              f"{pred.scale_factor:.3f} -> grid {grid:5.1f} (plain {base.diameter * base.scale_factor:5.1f})  "
              f"AP {ap:.3f}  oracle factor {oracle_factor:.3f}: AP {instance_scores(oracle.labels, lab)['ap50']:.3f}",
              flush=True)
    aps = [instance_scores(at_factor(model, image, g / base.diameter, base.diameter).labels, gt)["ap50"] for g in grids]
    print("  plain image, objects on the model grid at " + "  ".join(f"{g:g} px: {a:.3f}" for g, a in zip(grids, aps)),
          flush=True)


def stack_conditions(model, with_chunked: bool) -> None:
    stack, gt = nuclei_3d()
    stack = stack.astype(np.float32)
    plain = scored("3D stack plain", lambda: (predict(model, stack, axes="ZYX"), gt), None)
    if with_chunked:
        scored("3D stack chunked (zarr, 2 workers)", lambda: (chunked(model, stack, "ZYX", chunk=32), gt), plain)
    big = np.stack([rescale(p, 2.0, order=1, preserve_range=True) for p in stack]).astype(np.float32)
    big_gt = np.stack([resize(p, big.shape[1:], order=0, preserve_range=True, anti_aliasing=False)
                       for p in gt]).astype(np.int32)
    # XY magnified ×2: a Z step is now 4 XY pixels instead of the default 2
    scored("3D stack, XY magnified x2", lambda: (predict(model, big, axes="ZYX", z_scale=4.0), big_gt),
           plain)


def astro_conditions(model, n_fields: int, with_chunked: bool) -> None:
    fields = _astro_images(n_fields)

    def mean_over(fn: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]):
        def run():
            preds, gts = zip(*(fn(im, lab) for im, lab in fields))
            return _stack_ids(preds), _stack_ids(gts)
        return run

    plain = scored("fields plain", mean_over(lambda im, lab: (predict(model, im).labels, lab)), None)
    inner = (slice(GAP, -GAP), slice(GAP, -GAP))
    for kind in ("noise", "mirror"):
        scored(f"fields framed {kind}",
               mean_over(lambda im, lab: (predict(model, frame(im, lab, kind)).labels[inner], lab)), plain)
    scored("fields 2x2 mosaic", mean_over(lambda im, lab: (predict(model, mosaic(im, lab, 2)[0]).labels,
                                                           mosaic(im, lab, 2)[1])), plain)
    if with_chunked:
        scored("fields chunked (zarr, 2 workers)",
               mean_over(lambda im, lab: (chunked(model, im.astype(np.float32), "YX", chunk=128), lab)), plain)


def _astro_images(n_fields: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from napari_segtool.sim import simulate_astro_dataset

    return [(f.image, f.labels) for f in simulate_astro_dataset(n_fields, (256, 256), seed=7)]


def _stack_ids(planes) -> np.ndarray:
    """Side-by-side concatenation with unique ids, so one AP covers all fields."""
    out, offset = [], 0
    for p in planes:
        p = np.asarray(p, np.int64)
        out.append(np.where(p > 0, p + offset, 0))
        offset += int(p.max())
    return np.concatenate(out, axis=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["nuclei", "nuclei-maskrcnn"],
                        help="shipped model names or model folders (a candidate before it is shipped)")
    parser.add_argument("--mosaic", type=int, default=3, help="k for the k×k in-memory mosaic (7 gives 4032 px)")
    parser.add_argument("--no-chunked", action="store_true", help="skip the zarr/dask runs")
    parser.add_argument("--stack", action="store_true", help="also the real 3D stack")
    parser.add_argument("--astro", action="store_true", help="simulated sky fields (for astro-sources)")
    parser.add_argument("--fields", type=int, default=6)
    parser.add_argument("--diagnose", action="store_true",
                        help="only the magnifications: estimate, factor, grid size, AP and the oracle factor's AP")
    parser.add_argument("--diagnose-frames", action="store_true",
                        help="only the frames: limits, AP as run, with the plain limits (and size) forced, interior AP")
    args = parser.parse_args(argv)
    for name in args.models:
        model = load_model(name)
        if args.diagnose_frames:
            print(f"{name}: frame diagnosis (interior: objects >= {EDGE} px inside the original border)")
            diagnose_frames(model, _astro_images(args.fields) if args.astro else [nuclei_2d()])
            continue
        if args.diagnose:
            print(f"{name}: magnification diagnosis")
            diagnose_magnifications(model)
            continue
        print(f"{name}:  {'condition':34s} {'AP@0.5':>7s} {'vs plain':>7s} {'mean AP':>8s} {'size':>6s} "
              f"{'seconds':>8s}")
        if args.astro:
            astro_conditions(model, args.fields, not args.no_chunked)
            continue
        nuclei_conditions(model, args.mosaic, not args.no_chunked)
        if args.stack:
            stack_conditions(model, not args.no_chunked)


if __name__ == "__main__":
    main()
