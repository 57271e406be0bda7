"""Faster post-processing steps give exactly the library's (the slower reference's) result.

On the real nuclei labels (stardist's 512² image, simulated nuclei when its wheel is not cached) and on
a simulated 2048² mosaic, with holes punched into the objects and an object nested inside another's
hole, so that every branch of the hole filling runs.
"""
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import measure
from skimage.draw import disk

from napari_segtool.ops.postprocess import enclosed_background, fill_holes


def real_labels() -> np.ndarray:
    root = Path(__file__).resolve().parents[2]
    if list((root / "benchmarks" / ".cache").glob("stardist-*.whl")):
        import sys

        sys.path.insert(0, str(root / "benchmarks"))
        from real_data import nuclei_2d

        return nuclei_2d()[1]
    from napari_segtool.sim import simulate_nuclei

    return simulate_nuclei((512, 512), seed=3).labels.astype(np.int32)


def mosaic_labels(size: int = 2048) -> np.ndarray:
    """A ``size``² mosaic of one simulated 512² nuclei image (ids unique per copy), as the speed benchmark."""
    from napari_segtool.sim import simulate_nuclei

    labels = simulate_nuclei((512, 512), seed=0).labels.astype(np.int32)
    n, reps = int(labels.max()), size // 512
    return np.block([[np.where(labels > 0, labels + n * (i * reps + j), 0) for j in range(reps)]
                     for i in range(reps)]).astype(np.int32)


def with_holes(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """``labels`` with a background hole punched into every third object (at its most interior pixel),
    and one small object nested in a hole."""
    out = labels.copy()
    distance = ndi.distance_transform_edt(labels > 0)
    regions = measure.regionprops(labels, intensity_image=distance)
    for k, region in enumerate(regions):
        if k % 3 or region.intensity_max < 4:
            continue
        centre = np.unravel_index(np.argmax(region.image_intensity * region.image), region.image.shape)
        y, x = centre[0] + region.slice[0].start, centre[1] + region.slice[1].start
        rr, cc = disk((y, x), 2, shape=labels.shape)
        out[rr, cc] = 0
        if k == 0:  # an object inside the hole: the hole is shared, the outer object alone encloses it
            out[y, x] = labels.max() + 1
    return out


def fill_each_object(labels: np.ndarray) -> np.ndarray:
    """The reference: each object's own holes filled with it (``binary_fill_holes`` per object)."""
    out = labels.copy()
    for region in measure.regionprops(labels):
        filled = ndi.binary_fill_holes(region.image)
        view = out[region.slice]
        view[filled & (labels[region.slice] == 0)] = region.label
    return out


@pytest.mark.parametrize("make", [real_labels, mosaic_labels])
def test_fill_holes_equals_filling_each_object_alone(make):
    labels = with_holes(make())
    holes = enclosed_background(labels > 0)[1]
    assert holes > 10  # the punched holes are there
    filled = fill_holes(labels)
    assert np.array_equal(filled, fill_each_object(labels))
    assert enclosed_background(filled > 0)[1] <= holes - 10  # the punched holes are gone (gaps that
    # several touching objects enclose together stay background)


def test_enclosed_background_is_binary_fill_holes_labelled():
    rng = np.random.default_rng(0)
    masks = [with_holes(real_labels()) > 0, with_holes(mosaic_labels(1024)) > 0,
             np.zeros((4, 5), bool), np.ones((3, 7), bool)]
    for k in range(60):  # random 2D and 3D masks, dense enough for many holes
        shape = tuple(int(s) for s in rng.integers(1, 40, size=3 if k % 3 == 0 else 2))
        masks.append(rng.random(shape) < rng.uniform(0.3, 0.9))
    for mask in masks:
        reference = ndi.label(ndi.binary_fill_holes(mask) & ~mask)
        holes, n = enclosed_background(mask)
        assert n == reference[1]
        assert np.array_equal(holes, reference[0])
