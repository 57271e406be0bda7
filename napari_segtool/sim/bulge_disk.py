"""Bulge/disk truth of simulated sky fields: per-pixel flux fractions and per-galaxy bulge-to-total.

:func:`napari_segtool.sim.astro.simulate_astro_field` draws every galaxy as a de Vaucouleurs bulge
plus an exponential disk and, with ``with_components=True``, returns their noiseless PSF-convolved
images. This module turns one such field into what a decomposition is trained and judged on:

* :func:`component_fractions`: per pixel, the share of the noiseless flux that is bulge, disk and
  *other* (stars), ``(3, Y, X)``, summing to 1 wherever any source has flux;
* :func:`footprint_weights`: per pixel, its share of the flux of the detected source owning it
  (each catalogued source weighs 1 in total, and within it pixels count by flux, as they do in
  its bulge-to-total ratio);
* :func:`galaxy_truth`: per catalogued galaxy, B/T measured on its footprint from the noiseless
  component images (what an image-to-image decomposition can see) and the catalogue's total B/T;
* :func:`bt_pairs`: the galaxies a method is judged on (footprints of at least ``EVAL_MIN_PIXELS``)
  beside the B/T it gives them (the recipe's held-out score and ``benchmarks/bulge_disk.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import ndimage as ndi

from .astro import AstroField, simulate_astro_field

__all__ = ["EVAL_MIN_PIXELS", "GalaxyTruth", "bt_pairs", "bulge_disk_fields", "component_fractions",
           "footprint_weights", "galaxy_truth"]

#: galaxies are judged when their footprint has at least this many pixels (a two-profile fit has 10 parameters)
EVAL_MIN_PIXELS = 30


@dataclass
class GalaxyTruth:
    """One catalogued galaxy: its label id, footprint size, footprint B/T and catalogue (total) B/T."""

    id: int
    npix: int
    bt_footprint: float
    bt_total: float
    flux: float


def bulge_disk_fields(n: int, shape: tuple[int, int] = (256, 256), seed: int = 0) -> list[AstroField]:
    """``n`` varied fields (as ``simulate_astro_dataset``: blend fraction, correlated noise) with their
    bulge and disk images."""
    rng = np.random.default_rng(seed)
    return [simulate_astro_field(shape, blend_fraction=float(rng.uniform(0.1, 0.5)),
                                 correlated_noise=bool(rng.random() < 0.3), with_components=True,
                                 seed=int(rng.integers(2**31)))
            for _ in range(int(n))]


def component_fractions(field: AstroField) -> np.ndarray:
    """``(3, Y, X)`` float32 shares of the noiseless flux: bulge, disk, other (stars), the order of
    ``core.decompose.COMPONENTS``; where no source has flux the pixel is all *other*."""
    if field.bulge is None or field.disk is None:
        raise ValueError("the field has no component images: simulate it with with_components=True")
    bulge = np.clip(field.bulge, 0, None)
    disk = np.clip(field.disk, 0, None)
    other = np.clip(field.noiseless - bulge - disk, 0, None)
    total = bulge + disk + other
    out = np.zeros((3,) + total.shape, np.float32)
    lit = total > 0
    for k, comp in enumerate((bulge, disk, other)):
        out[k][lit] = comp[lit] / total[lit]
    out[2][~lit] = 1.0
    return out


def footprint_weights(field: AstroField) -> np.ndarray:
    """``(Y, X)`` float32: each labelled pixel's share of its source's noiseless flux on the footprint
    (0 outside footprints), so every source weighs 1 and its pixels count by flux."""
    labels = field.labels
    flux = np.clip(field.noiseless, 0, None).astype(np.float64)
    totals = np.asarray(ndi.sum(flux, labels, index=np.arange(labels.max() + 1)), np.float64)
    totals[0] = np.inf
    totals[totals <= 0] = np.inf
    return (flux / totals[labels]).astype(np.float32)


def galaxy_truth(field: AstroField, min_pixels: int = 1) -> list[GalaxyTruth]:
    """The catalogued galaxies with at least ``min_pixels`` footprint pixels and their true B/T."""
    if field.bulge is None or field.disk is None:
        raise ValueError("the field has no component images: simulate it with with_components=True")
    index = np.arange(field.labels.max() + 1)
    bulge = np.asarray(ndi.sum(field.bulge, field.labels, index=index))
    disk = np.asarray(ndi.sum(field.disk, field.labels, index=index))
    out = []
    for entry in field.catalog:
        i = entry["id"]
        if entry["class"] != "galaxy" or entry["npix"] < min_pixels or bulge[i] + disk[i] <= 0:
            continue
        out.append(GalaxyTruth(i, int(entry["npix"]), float(bulge[i] / (bulge[i] + disk[i])),
                               float(entry["bulge_frac"]), float(entry["flux"])))
    return out


def bt_pairs(field: AstroField, predicted: Mapping[int, float],
             min_pixels: int = EVAL_MIN_PIXELS) -> list[tuple[GalaxyTruth, float]]:
    """Each catalogued galaxy of ``field`` with at least ``min_pixels`` footprint pixels, with the B/T a
    method gives its footprint (``predicted``: per label id, as ``core.decompose.bulge_to_total``
    returns; ``nan`` where it gives none)."""
    return [(g, float(predicted.get(g.id, np.nan))) for g in galaxy_truth(field, min_pixels)]
