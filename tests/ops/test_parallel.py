"""ops.parallel: work split over threads gives the whole array's answer exactly, whatever the number of workers."""
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_segtool.ops.parallel import bounding_boxes, counts, in_bands


def random_labels(rng: np.random.Generator, k: int) -> np.ndarray:
    """Sparse ids (some absent), 1D to 3D, objects spanning bands or inside one; int32, int64 or uint16."""
    ndim = 1 + k % 3
    shape = tuple(int(s) for s in rng.integers(1, 300 if ndim < 3 else 40, size=ndim))
    ids = rng.integers(0, int(rng.integers(2, 60)), size=shape)
    labels = np.where(rng.random(shape) < rng.uniform(0.05, 0.9), ids, 0)
    return labels.astype([np.int32, np.int64, np.uint16][k % 3])


@pytest.mark.parametrize("workers", [1, 2, 3, 5])
def test_bounding_boxes_are_find_objects(workers):
    rng = np.random.default_rng(workers)
    for k in range(60):
        labels = random_labels(rng, k)
        present = np.unique(labels[labels > 0])
        if not present.size:
            continue
        ids = rng.choice(present, size=int(rng.integers(1, present.size + 1)), replace=False)
        starts, stops = bounding_boxes(labels, ids, workers=workers)
        boxes = ndi.find_objects(labels)
        assert starts.shape == stops.shape == (len(ids), labels.ndim)
        for i, j in enumerate(ids):
            assert tuple(slice(a, b) for a, b in zip(starts[i], stops[i])) == boxes[j - 1], (k, j)


def test_bounding_boxes_of_no_ids():
    starts, stops = bounding_boxes(np.ones((200, 8), np.int32), np.array([], int), workers=2)
    assert starts.shape == stops.shape == (0, 2)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_counts_are_bincount(workers):
    rng = np.random.default_rng(10 + workers)
    for k in range(60):
        labels = random_labels(rng, k)
        minlength = int(rng.integers(0, 80))
        expected = np.bincount(labels.ravel(), minlength=minlength)
        got = counts(labels, minlength=minlength, workers=workers)
        assert got.dtype == expected.dtype and np.array_equal(got, expected), k
    assert np.array_equal(counts(np.zeros((0, 5), np.int32), minlength=3, workers=workers), np.zeros(3, np.intp))


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_in_bands_writes_each_band_into_one_output(workers):
    """Lookups and filters on bands (workers > 1: several bands of >= 64 rows) are the whole array's, in its dtype."""
    rng = np.random.default_rng(workers)
    labels = rng.integers(0, 50, size=(3, 400, 37)).astype(np.int32)
    lookup = rng.integers(-5, 5, size=50).astype(np.int16)
    for array, fn, margin in ((labels, lookup.__getitem__, 0), (labels[0], lookup.__getitem__, 0),
                              (labels[1].astype(np.float32), lambda a: ndi.gaussian_filter(a, 2.0), 9),
                              (labels[2] > 20, lambda a: ndi.binary_dilation(a, iterations=3), 3)):
        whole = fn(array)
        banded = in_bands(fn, array, margin=margin, workers=workers)
        assert banded.dtype == whole.dtype and banded.flags.c_contiguous and np.array_equal(banded, whole)
