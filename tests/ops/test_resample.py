"""The model grid: windows of a resampled view hold the whole view's values; labels come back exactly."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from napari_segtool.ops.normalize import content_box, content_panels, fit_normalizer
from napari_segtool.ops.resample import ResampledPlane, grid_bounds, labels_to_input, scaled_length


def _image(shape=(97, 131), seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, shape + (1,)).astype(np.float32).cumsum(0).cumsum(1)


@pytest.mark.parametrize("factor", [0.37, 0.5, 1.6, 2.0])
def test_windows_of_the_view_equal_the_whole_view(factor):
    image = _image()
    whole = ResampledPlane(image, factor)[:, :]
    assert whole.shape[:2] == tuple(scaled_length(n, factor) for n in image.shape[:2])
    # a window of the image, placed by its offset, resamples to the same model pixels
    y0, y1, x0, x1 = 20, 80, 33, 120
    window = ResampledPlane(image[y0:y1, x0:x1], factor, offset=(y0, x0), image_shape=image.shape[:2])
    gy, gx = window.grid_start
    part = window[:, :]
    # away from the window's own edges (where it lacks neighbours) the values are the whole view's
    m = int(np.ceil(4 * max(0.0, (1 / factor - 1) / 2) * factor)) + 2
    inner = part[m:-m, m:-m]
    np.testing.assert_allclose(inner, whole[gy + m:gy + part.shape[0] - m, gx + m:gx + part.shape[1] - m],
                               atol=1e-4)


def test_grids_of_adjacent_windows_tile_the_whole_grid():
    factor = 0.61
    cuts = [0, 40, 77, 130]
    spans = [grid_bounds(a, b, factor) for a, b in zip(cuts, cuts[1:])]
    assert spans[0][0] == 0 and spans[-1][1] == scaled_length(130, factor)
    assert all(prev[1] == nxt[0] for prev, nxt in zip(spans, spans[1:]))


@pytest.mark.parametrize("factor", [0.3, 0.75, 2.5])
def test_labels_return_to_the_exact_input_shape_and_keep_objects(factor):
    shape = (203, 157)
    centres, radius = [(50, 50), (120, 100), (160, 40)], 22
    grid = np.zeros(tuple(scaled_length(n, factor) for n in shape), np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):  # the same discs drawn on the model grid
        rr, cc = disk(((cy + 0.5) * factor - 0.5, (cx + 0.5) * factor - 0.5), radius * factor, shape=grid.shape)
        grid[rr, cc] = i
    back = labels_to_input(grid, factor, shape)
    assert back.shape == shape
    for i, (cy, cx) in enumerate(centres, start=1):
        truth = np.zeros(shape, bool)
        truth[disk((cy, cx), radius, shape=shape)] = True
        mine = back == i
        assert (truth & mine).sum() / (truth | mine).sum() > 0.85


def test_content_box_finds_flat_and_nan_padding_exactly():
    image = _image((60, 70))
    padded = np.pad(image, ((13, 7), (5, 21), (0, 0)), constant_values=3.0)
    assert content_box(padded) == (13, 73, 5, 75)
    nan = np.pad(image, ((0, 9), (11, 0), (0, 0)), constant_values=np.nan)
    assert content_box(nan) == (0, 60, 11, 81)
    assert content_box(np.full((30, 30, 1), 2.0, np.float32)) == (0, 30, 0, 30)


def test_normalisation_ignores_flat_padding():
    image = _image((80, 80)) + 50
    plain = fit_normalizer(image)
    framed = fit_normalizer(np.pad(image, ((64, 64), (64, 64), (0, 0)), constant_values=float(np.median(image))))
    np.testing.assert_allclose([framed.lo, framed.hi], [plain.lo, plain.hi], rtol=1e-4)


def test_content_panels_cut_a_mosaic_at_its_gaps_and_nowhere_else():
    a, b, c = _image((40, 50)), _image((40, 30)) + 1, _image((30, 95)) + 2
    mosaic = np.zeros((100, 120, 1), np.float32)
    mosaic[5:45, 10:60], mosaic[5:45, 75:105], mosaic[60:90, 10:105] = a, b, c  # an irregular montage
    assert sorted(content_panels(mosaic)) == [(5, 45, 10, 60), (5, 45, 75, 105), (60, 90, 10, 105)]
    assert content_box(mosaic) == (5, 90, 10, 105)
    mosaic[5:45, 62:75] = np.nan  # NaN gaps cut as flat ones do
    assert sorted(content_panels(mosaic)) == [(5, 45, 10, 60), (5, 45, 75, 105), (60, 90, 10, 105)]
    image = _image((60, 60))
    image[:, 30:32] = 4.0  # a flat band narrower than MIN_GAP (a seam, a dead column) is no gap
    assert content_panels(image) == [(0, 60, 0, 60)]
    image[:, 30:33] = 4.0
    assert content_panels(image) == [(0, 60, 0, 30), (0, 60, 33, 60)]


def test_content_panels_of_large_arrays_are_exact():
    mosaic = np.zeros((400, 400, 1), np.float32)
    mosaic[7:190, 3:397], mosaic[251:393, 3:397] = _image((183, 394)), _image((142, 394))
    panels = content_panels(mosaic, max_samples=2000)  # found on a sample with a stride of 9 pixels
    assert sorted(panels) == [(7, 190, 3, 397), (251, 393, 3, 397)]  # edges exact: they fix each panel's grid
