"""Tests of the GalSim astronomy field simulator and its ground-truth rule."""

import numpy as np
import pytest
from scipy import ndimage as ndi

pytest.importorskip("galsim")

from napari_segtool.sim import AstroField, draw_source, simulate_astro_dataset, simulate_astro_field


def _touching_ids(labels: np.ndarray) -> set:
    """Ids of footprints touching another footprint (8-connectivity)."""
    ids = set()
    shifts = [(0, 1), (1, 0), (1, 1), (1, -1)]
    ny, nx = labels.shape
    for dy, dx in shifts:
        a = labels[0:ny - dy, max(0, -dx):nx - max(0, dx)]
        b = labels[dy:ny, max(0, dx):nx - max(0, -dx)]
        m = (a != b) & (a > 0) & (b > 0)
        ids.update(a[m].tolist())
        ids.update(b[m].tolist())
    return ids


@pytest.fixture(scope="module")
def tiny() -> AstroField:
    return simulate_astro_field((64, 64), n_galaxies=10, n_stars=3, blend_fraction=0.6,
                                with_components=True, seed=3)


@pytest.fixture(scope="module")
def field() -> AstroField:
    return simulate_astro_field((128, 128), n_galaxies=60, n_stars=8, seed=1)


def test_shapes_dtypes(field):
    assert field.image.shape == field.labels.shape == field.noiseless.shape == (128, 128)
    assert field.image.dtype == np.float32 and field.labels.dtype == np.int32
    assert field.bulge is None and field.disk is None
    assert field.noise_sigma > 0 and field.sky_level > 0
    # a real exposure: the sky is not subtracted
    assert abs(np.median(field.image) - field.sky_level) < 2 * field.noise_sigma + 0.1 * field.sky_level


def test_determinism():
    a = simulate_astro_field((64, 64), n_galaxies=15, n_stars=3, seed=5)
    b = simulate_astro_field((64, 64), n_galaxies=15, n_stars=3, seed=5)
    c = simulate_astro_field((64, 64), n_galaxies=15, n_stars=3, seed=6)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.catalog == b.catalog
    assert not np.array_equal(a.image, c.image)


def test_catalog_labels_consistent(field):
    ids = np.unique(field.labels)
    ids = ids[ids > 0]
    np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))
    assert [e["id"] for e in field.catalog] == ids.tolist()
    assert set(field.classes) == set(ids.tolist())
    assert set(field.classes.values()) == {"star", "galaxy"}
    counts = np.bincount(field.labels.ravel())
    for e in field.catalog:
        assert e["npix"] == counts[e["id"]] > 0  # no empty footprint kept
        assert e["class"] == field.classes[e["id"]]
        if e["class"] == "galaxy":
            assert {"hlr", "bulge_frac", "e1", "e2"} <= set(e)
    assert field.meta["n_detected"] == len(field.catalog) < field.meta["n_drawn"]


def test_ground_truth_rule(tiny):
    """Each labelled pixel belongs to the max-flux detectable source, above k_sigma * noise_sigma."""
    stack = np.stack([draw_source(e, tiny.meta) for e in tiny.catalog])
    thr = tiny.meta["threshold"]
    assert thr == pytest.approx(1.5 * tiny.noise_sigma)  # the documented isophote
    lab = tiny.labels
    m = lab > 0
    own = np.take_along_axis(stack, np.clip(lab - 1, 0, None)[None], 0)[0]
    best = stack.max(0)
    assert np.all(own[m] >= 0.99 * best[m])
    assert np.all(own[m] > 0.99 * thr)
    # conversely pixels clearly above threshold are labelled (fragments aside)
    clearly = (best > 1.05 * thr) & ~m
    assert clearly.sum() <= 0.02 * m.sum()


def test_blended_flag(tiny, field):
    for f in (tiny, field):
        touching = _touching_ids(f.labels)
        for e in f.catalog:
            assert e["blended"] == (e["id"] in touching)
    assert any(e["blended"] for e in field.catalog)


def test_components_sum_to_galaxies():
    f = simulate_astro_field((64, 64), n_galaxies=12, n_stars=0, with_components=True, seed=9)
    np.testing.assert_allclose(f.bulge + f.disk, f.noiseless, atol=1e-3 * f.noiseless.max())
    assert f.bulge.sum() > 0 and f.disk.sum() > 0


def test_components_match_catalog(tiny):
    gal = [e for e in tiny.catalog if e["class"] == "galaxy"][0]
    b = draw_source(gal, tiny.meta, component="bulge")
    d = draw_source(gal, tiny.meta, component="disk")
    np.testing.assert_allclose(b + d, draw_source(gal, tiny.meta), atol=1e-3 * gal["flux"])


def test_noise_level_and_correlation():
    for corr in (False, True):
        f = simulate_astro_field((128, 128), n_galaxies=5, n_stars=0, sky_sigma=10.0,
                                 correlated_noise=corr, seed=2)
        resid = f.image - f.sky_level - f.noiseless
        bg = f.noiseless < 0.05 * f.noise_sigma
        assert f.noise_sigma == 10.0
        assert resid[bg].std() == pytest.approx(10.0, rel=0.1)
        r = np.corrcoef(resid[:, :-1].ravel(), resid[:, 1:].ravel())[0, 1]
        assert (r > 0.2) if corr else (abs(r) < 0.1)


def test_k_sigma_shrinks_footprints():
    lo = simulate_astro_field((96, 96), n_galaxies=30, n_stars=4, k_sigma=0.5, seed=4)
    hi = simulate_astro_field((96, 96), n_galaxies=30, n_stars=4, k_sigma=3.0, seed=4)
    assert (hi.labels > 0).sum() < (lo.labels > 0).sum()
    assert len(hi.catalog) <= len(lo.catalog)


def test_labels_where_bright(field):
    sig = field.image - field.sky_level
    assert sig[field.labels > 0].mean() > sig[field.labels == 0].mean() + field.noise_sigma


def test_dataset():
    ds = simulate_astro_dataset(2, (48, 48), seed=0)
    assert len(ds) == 2 and all(isinstance(f, AstroField) for f in ds)
    assert not np.array_equal(ds[0].image, ds[1].image)



def test_only_detectable_sources_are_labelled(field):
    """Sources under the isophotal S/N limit are sky: drawn in the image, absent from labels and catalogue."""
    assert field.meta["snr_min"] == 5.0
    assert all(e["snr"] >= 5.0 for e in field.catalog)
    for e in field.catalog[:10]:  # the catalogued S/N is the one the rule defines
        alone = draw_source(e, field.meta)
        inside = alone > field.meta["threshold"]
        assert e["snr"] == pytest.approx(alone[inside].sum() / (field.noise_sigma * np.sqrt(inside.sum())), rel=0.02)
    loose = simulate_astro_field((128, 128), n_galaxies=60, n_stars=8, seed=1, snr_min=0.0)
    assert len(loose.catalog) > len(field.catalog)  # the faint population exists and was left out
    np.testing.assert_array_equal(loose.image, field.image)  # the same sky either way


def test_saturation_clips_and_bleeds():
    kw = dict(n_galaxies=0, n_stars=30, sky_sigma=10.0, psf_fwhm=0.8, seed=8)
    plain = simulate_astro_field((128, 128), **kw)
    sat = simulate_astro_field((128, 128), saturation=20.0, **kw)
    level = sat.sky_level + 20.0 * sat.noise_sigma
    assert plain.image.max() > level and sat.image.max() <= level + 1e-3
    clipped = sat.image >= level - 1e-3
    assert clipped.sum() > (plain.image >= level).sum()  # the excess charge filled more pixels
    for sl in ndi.find_objects(ndi.label(clipped)[0]):  # bleed trails run along columns
        assert sl[0].stop - sl[0].start >= sl[1].stop - sl[1].start
    np.testing.assert_array_equal(sat.labels, plain.labels)  # truth comes from the noiseless sources


def test_bleeding_conserves_charge_on_the_chip():
    from napari_segtool.sim.astro import _saturate

    image = np.zeros((40, 3), np.float32)
    image[20, 1] = 100.0
    out = _saturate(image, 15.0)
    assert out.max() == 15.0 and out.sum() == pytest.approx(100.0)
    assert np.count_nonzero(out[:, 1]) == 7 and not out[:, [0, 2]].any()  # 100 / 15 -> 7 pixels, one column


def test_cosmos_noise_is_correlated():
    f = simulate_astro_field((128, 128), n_galaxies=0, n_stars=0, sky_sigma=10.0, correlated_noise="cosmos", seed=2)
    resid = f.image - f.sky_level - f.noiseless
    assert resid.std() == pytest.approx(10.0, rel=0.15)
    assert np.corrcoef(resid[:, :-1].ravel(), resid[:, 1:].ravel())[0, 1] > 0.2
    with pytest.raises(ValueError):
        simulate_astro_field((32, 32), correlated_noise="pink")


def test_large_galaxy_spans_hundreds_of_pixels():
    f = simulate_astro_field((256, 256), n_galaxies=20, n_stars=2, n_large=1, pixel_scale=0.1, seed=11)
    large = [e for e in f.catalog if e["large"]]
    assert len(large) == 1 and large[0]["class"] == "galaxy"
    assert large[0]["npix"] > 2000  # hundreds of pixels across a few sigma of sky
    assert not any(e["large"] for e in f.catalog if e is not large[0])


def test_dataset_varies_conditions_and_crowding():
    std = simulate_astro_dataset(6, (64, 64), seed=3)
    crowd = simulate_astro_dataset(6, (64, 64), seed=3, crowding="crowded")
    assert len({round(f.meta["pixel_scale"], 3) for f in std}) == 6
    assert len({round(f.meta["psf_fwhm"], 3) for f in std}) == 6
    assert all(f.meta["saturation"] > 0 for f in std)
    assert sum(f.meta["n_drawn"] for f in crowd) > 1.5 * sum(f.meta["n_drawn"] for f in std)
    with pytest.raises(ValueError):
        simulate_astro_dataset(1, (32, 32), crowding="dense")
