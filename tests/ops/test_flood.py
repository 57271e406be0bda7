"""ops.flood's labelling shared by its callers: the same components and pieces as labelling each on its own."""
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import measure

from napari_segtool.ops import parallel
from napari_segtool.ops.flood import component_peaks, flood_from_peaks, label_foreground


@pytest.mark.parametrize("workers", [1, 2])
def test_label_foreground_is_measure_label_and_ndi_label(monkeypatch, workers):
    monkeypatch.setattr(parallel, "worker_count", lambda: workers)
    rng = np.random.default_rng(workers)
    for k in range(40):
        shape = tuple(int(s) for s in rng.integers(1, 30, size=2 + k % 2))
        mask = rng.random(shape) < rng.uniform(0.2, 0.8)  # diagonal-only contacts: the two labellings differ
        found = label_foreground(mask, background=k % 3 > 0)
        assert np.array_equal(found.components[0], measure.label(mask)) and found.components[1] == found.components[0].max()
        for got, expected in ((found.pieces, ndi.label(mask)), (found.background, ndi.label(~mask) if k % 3 else None)):
            assert (got is None) == (expected is None)
            assert got is None or (np.array_equal(got[0], expected[0]) and got[1] == expected[1])


@pytest.mark.parametrize("workers", [1, 2])
def test_flood_with_the_callers_pieces_is_the_flood_without(monkeypatch, workers):
    monkeypatch.setattr(parallel, "worker_count", lambda: workers)
    rng = np.random.default_rng(7)
    for k in range(30):
        mask = ndi.gaussian_filter(rng.random((150, 90)), 1.5) > 0.5
        relief = ndi.gaussian_filter(rng.random(mask.shape), 2.0).astype(np.float32)
        found = label_foreground(mask)
        components = found.components[0]
        peaks = component_peaks(relief, components, (3, 3))
        alone = flood_from_peaks(relief, components, peaks)
        assert np.array_equal(flood_from_peaks(relief, components, peaks, found.pieces), alone)
        assert alone.max() == len(peaks) > 0
