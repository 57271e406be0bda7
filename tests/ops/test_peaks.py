"""ops.peaks.peaks_by_label is scikit-image's peak_local_max(labels=...): same peaks, same order."""
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import feature, measure

from napari_segtool.ops.peaks import peaks_by_label


def _reference(relief, labels, half):
    return feature.peak_local_max(relief, min_distance=min(half), footprint=np.ones([2 * h + 1 for h in half], bool),
                                  labels=labels, exclude_border=False)


def _scene(shape, seed, spacing):
    """Blobs (some touching, some far apart), a flat region, plateaus, quantised values (ties)."""
    rng = np.random.default_rng(seed)
    field = np.zeros(shape, np.float32)
    centres = rng.uniform(0, 1, (int(np.prod(shape) / spacing ** len(shape)), len(shape))) * np.array(shape)
    field[tuple(np.clip(centres.astype(int), 0, np.array(shape) - 1).T)] = 1
    relief = ndi.gaussian_filter(field, 3) + 0.02 * rng.random(shape)
    relief = np.round(relief * 200) / 200  # ties
    labels = measure.label(relief > np.percentile(relief, 55))
    if labels.max() > 2:
        relief[labels == 2] = relief[labels == 2].max()  # a flat region
    return relief.astype(np.float32), labels


@pytest.mark.parametrize("seed", range(6))
def test_same_peaks_in_the_same_order_as_scikit_image_2d(seed):
    relief, labels = _scene((160, 200), seed, spacing=14 + 4 * seed)
    for half in ((2, 2), (4, 4), (6, 6)):
        np.testing.assert_array_equal(peaks_by_label(relief, labels, half), _reference(relief, labels, half))


@pytest.mark.parametrize("seed", range(3))
def test_same_peaks_in_the_same_order_as_scikit_image_3d(seed):
    relief, labels = _scene((12, 64, 72), seed, spacing=12)
    for half in ((1, 4, 4), (2, 3, 3)):
        np.testing.assert_array_equal(peaks_by_label(relief, labels, half), _reference(relief, labels, half))


def test_no_regions_no_peaks():
    assert peaks_by_label(np.ones((8, 8), np.float32), np.zeros((8, 8), int), (2, 2)).shape == (0, 2)
