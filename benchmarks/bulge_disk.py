"""Bulge/disk decomposition: the shipped ``astro-bulge-disk`` network vs a parametric fit per galaxy.

    python benchmarks/bulge_disk.py [--fields 12] [--size 256] [--seed 100] [--model astro-bulge-disk|PATH ...]
                                    [--no-parametric] [--out docs/benchmarks/bulge_disk.txt]

Held-out simulated fields (``napari_segtool.sim.bulge_disk.bulge_disk_fields``, seed ``--seed``,
default 100; the model was trained on seed 1 and its card scored on seed 2) with their noiseless
bulge and disk images. Every catalogued galaxy whose footprint (the simulator's segmentation)
has at least ``EVAL_MIN_PIXELS`` pixels is judged by its bulge-to-total ratio on that footprint:

* truth: sum of the noiseless bulge image over the footprint / sum of bulge + disk;
* network: ``core.decompose.decompose`` on the whole noisy field (it estimates the sky itself and,
  for a model with a PSF channel, the PSF size), bulge / (bulge + disk) summed over the same
  footprint; ``--model`` again adds another network (e.g. the previous weights) to the same run;
* parametric: astropy.modeling, a Sersic bulge (n = 4) plus an exponential disk (Sersic n = 1)
  with a common centre, fitted by least squares (``TRFLSQFitter``, pixels weighted by 1/sigma) to
  the footprint's pixels of a cutout, after subtracting the simulator's true sky level (given to
  it, not estimated); the two fitted profiles summed over the footprint give its B/T. No PSF in the
  model, as in the simplest fits; the better of two starting points (small and large bulge) is kept.

Printed per method: galaxies, median and mean |B/T error| against the footprint truth, median
|B/T error| against the catalogue's total B/T (flux of the whole profiles), and seconds per field;
and, as a floor any useful method must beat, the errors of one constant B/T (the test truths' own
median) given to every galaxy. ``--no-parametric`` leaves out the fit (about 20 s per field).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from napari_segtool.core.checkpoint import load_model  # noqa: E402
from napari_segtool.core.decompose import bulge_to_total, decompose  # noqa: E402
from napari_segtool.kernel.device import configure_threads  # noqa: E402
from napari_segtool.sim.bulge_disk import EVAL_MIN_PIXELS, bt_pairs, bulge_disk_fields, galaxy_truth  # noqa: E402


@dataclass
class ParametricFit:
    """A fitted bulge + disk on a cutout: the two model images and the B/T on the fitted pixels."""

    bulge: np.ndarray
    disk: np.ndarray
    bt: float
    chi2: float


def _sersic_norm(n: float) -> float:
    """Total flux of a round Sersic profile / (2 pi amplitude r_eff^2) (Graham & Driver 2005)."""
    from scipy.special import gamma, gammaincinv

    b = gammaincinv(2 * n, 0.5)
    return float(np.exp(b) * n * b ** (-2 * n) * gamma(2 * n))


def fit_bulge_disk(cutout: np.ndarray, mask: np.ndarray, sigma: float) -> ParametricFit:
    """Fit a Sersic n=4 bulge + n=1 disk (common centre) to the ``mask`` pixels of a sky-subtracted
    ``cutout``; B/T = the fitted bulge over bulge + disk, summed over ``mask``."""
    from astropy.modeling import fitting
    from astropy.modeling.models import Sersic2D

    yy, xx = np.mgrid[:cutout.shape[0], :cutout.shape[1]].astype(np.float64)
    z, x, y = cutout[mask].astype(np.float64), xx[mask], yy[mask]
    flux = max(float(np.clip(z, 0, None).sum()), 1e-6)
    w = np.clip(z, 0, None) + 1e-12
    x0, y0 = float((w * x).sum() / w.sum()), float((w * y).sum() / w.sum())
    cxx, cyy, cxy = ((w * (x - x0) ** 2).sum() / w.sum(), (w * (y - y0) ** 2).sum() / w.sum(),
                     (w * (x - x0) * (y - y0)).sum() / w.sum())
    size = max(float(np.sqrt(max(cxx + cyy, 0.5))), 1.0)
    theta = 0.5 * float(np.arctan2(2 * cxy, cxx - cyy))
    best: ParametricFit | None = None
    for bulge_size, share in ((0.3, 0.3), (0.8, 0.6)):
        r_b, r_d = max(0.5, bulge_size * size), max(1.0, size)
        bulge = Sersic2D(amplitude=share * flux / (2 * np.pi * r_b**2 * _sersic_norm(4)), r_eff=r_b, n=4,
                         x_0=x0, y_0=y0, ellip=0.1, theta=theta)
        disk = Sersic2D(amplitude=(1 - share) * flux / (2 * np.pi * r_d**2 * _sersic_norm(1)), r_eff=r_d, n=1,
                        x_0=x0, y_0=y0, ellip=0.2, theta=theta)
        for comp in (bulge, disk):
            comp.n.fixed = True
            comp.amplitude.bounds = (0, None)
            comp.r_eff.bounds = (0.2, 4 * max(cutout.shape))
            comp.ellip.bounds = (0.0, 0.9)
            comp.x_0.bounds = (x0 - 3, x0 + 3)
            comp.y_0.bounds = (y0 - 3, y0 + 3)
        disk.x_0.tied = lambda m: m.x_0_0
        disk.y_0.tied = lambda m: m.y_0_0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy's notes on fits that end at their iteration limit
            fitted = fitting.TRFLSQFitter()(bulge + disk, x, y, z, weights=np.full(z.shape, 1.0 / sigma),
                                            maxiter=200)
        b_img, d_img = fitted[0](xx, yy), fitted[1](xx, yy)
        chi2 = float(((((b_img + d_img)[mask] - z) / sigma) ** 2).sum())
        total = b_img[mask].sum() + d_img[mask].sum()
        bt = float(b_img[mask].sum() / total) if total > 0 else float("nan")
        if best is None or chi2 < best.chi2:
            best = ParametricFit(b_img, d_img, bt, chi2)
    assert best is not None
    return best


def parametric_pairs(field, min_pixels: int = EVAL_MIN_PIXELS, pad: int = 4) -> list[tuple[float, float, float]]:
    """(footprint truth, catalogue total, fitted) B/T of each judged galaxy of a field."""
    from scipy import ndimage as ndi

    image = field.image - field.sky_level
    boxes = ndi.find_objects(field.labels)
    out = []
    for g in galaxy_truth(field, min_pixels):
        sl = boxes[g.id - 1]
        sl = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(sl, field.labels.shape))
        fit = fit_bulge_disk(image[sl], field.labels[sl] == g.id, field.noise_sigma)
        out.append((g.bt_footprint, g.bt_total, fit.bt))
    return out


def network_pairs(model, field) -> list[tuple[float, float, float]]:
    """(footprint truth, catalogue total, network) B/T of each judged galaxy of a field."""
    predicted = bulge_to_total(decompose(model, field.image), field.labels)
    return [(g.bt_footprint, g.bt_total, bt) for g, bt in bt_pairs(field, predicted)]


def summary(name: str, rows: list[tuple[float, float, float]], seconds: float, n_fields: int) -> str:
    """One line: galaxies, median / mean |error| vs the footprint truth, median |error| vs total B/T, s/field."""
    a = np.array(rows, np.float64)
    err, err_total = np.abs(a[:, 2] - a[:, 0]), np.abs(a[:, 2] - a[:, 1])
    return (f"{name:<12} {len(a):>8d} {np.nanmedian(err):>14.3f} {np.nanmean(err):>12.3f} "
            f"{np.nanmedian(err_total):>18.3f} {seconds / n_fields:>10.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields", type=int, default=12)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--model", action="append", help="a model name or folder (repeat to compare; "
                                                         "default astro-bulge-disk)")
    parser.add_argument("--parametric", action=argparse.BooleanOptionalAction, default=True,
                        help="fit the parametric baseline too (default; about 20 s per field)")
    parser.add_argument("--out", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    configure_threads(None)
    names = args.model or ["astro-bulge-disk"]
    fields = bulge_disk_fields(args.fields, (args.size, args.size), seed=args.seed)
    runs = []
    for i, name in enumerate(names):
        model = load_model(name)
        decompose(model, fields[0].image)  # warm-up (torch's first call)
        runs.append(("network" if i == 0 else f"net:{Path(name).name}"[:12],
                     lambda f, model=model: network_pairs(model, f)))
    if args.parametric:
        runs.append(("parametric", parametric_pairs))
    results = {}
    for name, run in runs:
        t0 = time.perf_counter()
        rows = [r for f in fields for r in run(f)]
        results[name] = (rows, time.perf_counter() - t0)
    header = (f"# benchmarks/bulge_disk.py --fields {args.fields} --size {args.size} --seed {args.seed} "
              f"{' '.join(f'--model {n}' for n in names)}{'' if args.parametric else ' --no-parametric'}\n# galaxies with >= {EVAL_MIN_PIXELS} footprint pixels; B/T error against "
              f"the noiseless components on the true footprint (and the catalogue's total B/T)\n"
              f"{'method':<12} {'galaxies':>8} {'median |dB/T|':>14} {'mean |dB/T|':>12} "
              f"{'median |dB/T| total':>18} {'s/field':>10}")
    net = np.array(results["network"][0])
    oracle = [(t, total, float(np.median(net[:, 0]))) for t, total, _ in results["network"][0]]
    lines = [header] + [summary(name, rows, sec, len(fields)) for name, (rows, sec) in results.items()] + \
        [summary("constant", oracle, 0.0, len(fields)) + "   (reference: every galaxy given the test truths' median B/T)"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
