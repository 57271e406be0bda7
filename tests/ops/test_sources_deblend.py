"""Deblending by flux contrast (ops.deblend) and its use in split_by_flux: knots join their galaxy,
a neighbour holding a real share of the flux stays a source of its own."""
import numpy as np

from napari_segtool.ops.deblend import asinh_flux, merge_by_contrast, saddles
from napari_segtool.ops.normalize import ASINH_SCALE
from napari_segtool.ops.postprocess import split_by_flux


def _gauss(shape, y, x, flux, sigma):
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    return flux / (2 * np.pi * sigma ** 2) * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma ** 2))


def _stretched(flux):
    """The asinh stretch the astronomy models see (ops.normalize), sky at 0, softening 1."""
    return (np.arcsinh(flux) / ASINH_SCALE).astype(np.float32)


def test_saddles_of_two_regions():
    labels = np.array([[1, 1, 2, 2]], np.int32)
    relief = np.array([[5.0, 3.0, 2.0, 4.0]])
    a, b, s = saddles(labels, relief)
    assert a.tolist() == [1] and b.tolist() == [2]
    assert s.tolist() == [2.0]  # the pair (3, 2) touches at level min(3, 2)


def test_asinh_flux_inverts_the_stretch():
    flux = np.array([0.0, 0.5, 10.0, 1000.0])
    np.testing.assert_allclose(asinh_flux(_stretched(flux)), flux, rtol=1e-4, atol=1e-5)
    assert asinh_flux(np.array([-0.3]))[0] == 0.0  # below the sky is no flux
    np.testing.assert_allclose(asinh_flux(np.array([0.0, 3.0, 100.0])), [0.0, 3.0, 100.0])  # a raw image: linear


def test_knots_join_the_galaxy_and_a_companion_stays_apart():
    shape = (120, 160)
    galaxy = _gauss(shape, 60, 60, 2e5, 14.0)
    knots = sum(_gauss(shape, 60 + dy, 60 + dx, 800.0, 1.2) for dy, dx in [(-12, 5), (8, -10), (10, 14), (-6, -16)])
    companion = _gauss(shape, 60, 122, 3e4, 3.0)  # ~13 % of the total flux, its own clear peak
    flux = galaxy + knots + companion
    image = _stretched(flux)
    fg = (flux > 1.0).astype(np.float32)
    plain = split_by_flux(image, fg, diameter=8.0, contrast=0.0)
    assert plain.max() >= 5  # every knot is a peak of its own without the contrast rule
    labels = split_by_flux(image, fg, diameter=8.0)
    assert labels.max() == 2
    assert labels[60, 60] != labels[60, 122] and labels[60, 60] > 0 and labels[60, 122] > 0
    for dy, dx in [(-12, 5), (8, -10)]:
        assert labels[60 + dy, 60 + dx] == labels[60, 60]
    np.testing.assert_array_equal(labels > 0, plain > 0)  # deblending only relabels the footprint


def test_contrast_decides_a_faint_neighbour():
    shape = (64, 96)
    # a neighbour on the wing of a bright source, ~1 % of the pair's flux above their saddle
    flux = _gauss(shape, 32, 30, 1e4, 4.0) + _gauss(shape, 32, 46, 300.0, 2.0)
    image = _stretched(flux)
    fg = (flux > 0.05).astype(np.float32)
    assert split_by_flux(image, fg, diameter=6.0, contrast=0.0).max() == 2
    assert split_by_flux(image, fg, diameter=6.0, contrast=0.003).max() == 2
    assert split_by_flux(image, fg, diameter=6.0, contrast=0.05).max() == 1


def test_merge_keeps_ids_and_background():
    labels = np.array([[0, 1, 1, 2, 2, 0, 3]], np.int32)
    relief = np.array([[0.0, 9.0, 5.0, 4.9, 5.5, 0.0, 7.0]])
    merged = merge_by_contrast(labels, relief, relief, contrast=0.2)
    assert merged[0, 0] == 0 and merged[0, 5] == 0
    assert set(np.unique(merged[0, 1:5])) == {1}  # piece 2 holds 0.6 of 29.3 above its saddle: absorbed
    assert merged[0, 6] == 3  # a separate footprint is never merged


def test_saddles_match_every_touching_pixel_pair():
    """Saddles read from the labelled pixels only equal a plain walk over every 8-connected pixel pair."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, (23, 31)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = 0
    relief = rng.random(labels.shape).astype(np.float32)
    best: dict[tuple[int, int], float] = {}
    for y in range(23):
        for x in range(31):
            for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
                v, u = y + dy, x + dx
                if v < 23 and 0 <= u < 31 and 0 < labels[y, x] != labels[v, u] > 0:
                    key = (min(labels[y, x], labels[v, u]), max(labels[y, x], labels[v, u]))
                    best[key] = max(best.get(key, -1.0), float(min(relief[y, x], relief[v, u])))
    a, b, s = saddles(labels, relief)
    assert dict(zip(zip(a.tolist(), b.tolist()), s.tolist())) == best and a.size == len(best)


def test_deblend_by_contrast_is_the_merge_renumbered():
    """The deblending reads only the labelled pixels and renumbers in one lookup: the same labels as merging
    with the whole plane's flux, then renumbering (scikit-image), on a scene of many galaxies and knots."""
    from skimage.segmentation import relabel_sequential

    from napari_segtool.ops.deblend import deblend_by_contrast
    from napari_segtool.ops.postprocess import _split_at_peaks

    rng = np.random.default_rng(5)
    shape = (160, 200)
    flux = sum(_gauss(shape, *rng.uniform(10, 150, 1), *rng.uniform(10, 190, 1), rng.uniform(50, 5e4),
                      rng.uniform(1, 6)) for _ in range(40)) + rng.normal(0, 0.3, shape)
    relief = _stretched(flux)
    pieces = _split_at_peaks(relief, flux > 1.0, 2.0, min_size=4)
    assert pieces.max() > 30
    merged = deblend_by_contrast(pieces, relief)
    assert 5 < merged.max() < pieces.max() and merged.dtype == pieces.dtype
    expected = relabel_sequential(merge_by_contrast(pieces, relief, asinh_flux(relief)))[0]
    np.testing.assert_array_equal(merged, expected)
