"""The source catalogue: sky, fluxes and centroids measured from an image and its segmentation map."""
import numpy as np
import pytest

from napari_segtool.ops.sources import measure_sources, source_table


def test_fluxes_centroids_and_sky_of_two_gaussian_sources():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96].astype(np.float64)
    sources = [(30.0, 40.5, 5000.0, 2.0), (70.2, 60.0, 2000.0, 3.0)]  # y, x, flux, sigma
    image = 100.0 + rng.normal(0, 2.0, yy.shape)
    labels = np.zeros(yy.shape, np.int32)
    for i, (y, x, flux, s) in enumerate(sources, start=1):
        r2 = (yy - y) ** 2 + (xx - x) ** 2
        image += flux / (2 * np.pi * s ** 2) * np.exp(-r2 / (2 * s ** 2))
        labels[r2 < (4 * s) ** 2] = i
    rows = source_table(image, labels)
    assert [r["label"] for r in rows] == [1, 2]
    for row, (y, x, flux, s) in zip(rows, sources):
        assert row["sky"] == pytest.approx(100.0, abs=0.2) and row["sky_noise"] == pytest.approx(2.0, rel=0.1)
        assert row["flux"] == pytest.approx(flux, rel=0.05)
        assert (row["y"], row["x"]) == pytest.approx((y, x), abs=0.3)
    assert rows[0]["size"] == pytest.approx(2.0, rel=0.15)  # noise in a faint footprint inflates moments,
    assert rows[1]["size"] > rows[0]["size"]                 # but the wider source stays the wider one
    assert rows[0]["snr"] > rows[1]["snr"]


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # regionprops' moments of the zero-weight source
def test_measurements_equal_scikit_image_regionprops():
    """measure_sources (all labels at once) against regionprops per region, on a simulated field with gaps in
    the ids, a source with no positive signal and a one-pixel source."""
    from skimage.measure import regionprops

    from napari_segtool.sim import simulate_astro_dataset

    field = simulate_astro_dataset(1, (192, 160), seed=4)[0]
    labels = field.labels.astype(np.int32) * 3  # ids 3, 6, 9...: absent ids are skipped
    signal = field.image.astype(np.float64) - np.median(field.image)
    labels[:4, :4] = 1
    signal[:4, :4] = -1.0  # all below the sky: plain centroid, size 0
    labels[-1, -1], signal[-1, -1] = 2, 5.0  # one pixel
    m = measure_sources(signal, labels)
    props = regionprops(labels, intensity_image=np.clip(signal, 0.0, None))
    assert m.label.tolist() == [p.label for p in props] and len(props) >= 6
    for i, p in enumerate(props):
        values = signal[p.slice][p.image]
        mu = p.moments_weighted_central
        a, b, c = mu[2, 0], mu[0, 2], mu[1, 1]
        weighted = mu[0, 0] > 0
        assert (m.area[i], m.flux[i], m.peak[i]) == pytest.approx((p.area, values.sum(), values.max()))
        assert (m.y[i], m.x[i]) == pytest.approx(p.centroid_weighted if weighted else p.centroid)
        assert m.size[i] == pytest.approx(np.sqrt((a + b) / (2 * mu[0, 0])) if weighted else 0.0, abs=1e-9)
        assert m.ellipticity[i] == pytest.approx(np.sqrt((a - b) ** 2 + 4 * c ** 2) / (a + b) if a + b > 0 else 0.0,
                                                 abs=1e-9)


def test_empty_and_mismatched_inputs():
    assert source_table(np.ones((16, 16)), np.zeros((16, 16), np.int32)) == []
    with pytest.raises(ValueError, match="one shape"):
        source_table(np.ones((16, 16)), np.zeros((8, 8), np.int32))


def test_star_classifier_learns_compactness_and_fills_the_class_column():
    from napari_segtool.ops.sources import (FEATURES, fit_star_classifier, source_features, star_probability)

    rng = np.random.default_rng(1)
    # sources as the table describes them: stars at the PSF size, galaxies wider
    rows = []
    for i in range(200):
        star = i % 3 == 0
        size = 2.0 * (1 + 0.05 * rng.normal()) if star else 2.0 * rng.uniform(1.3, 3.0)
        flux = 10 ** rng.uniform(2, 4)
        rows.append({"size": size, "psf_size": 2.0, "peak": flux / (2 * np.pi * size ** 2), "flux": flux,
                     "snr": flux / 50, "ellipticity": 0.05 if star else rng.uniform(0, 0.6),
                     "area": int(20 * size ** 2), "star": star})
    features = source_features(rows)
    assert features.shape == (200, len(FEATURES))
    truth = np.array([r["star"] for r in rows])
    clf = fit_star_classifier(features[:150], truth[:150])
    p = star_probability(features[150:], clf)
    assert np.mean((p >= 0.5) == truth[150:]) >= 0.95
    with pytest.raises(ValueError, match="both classes"):
        fit_star_classifier(features[:20], np.zeros(20, bool))
    with pytest.raises(ValueError, match="features"):
        star_probability(features, {**clf, "features": ["other"]})


def test_source_table_with_a_classifier_has_p_star_and_class():
    from napari_segtool.ops.sources import fit_star_classifier

    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[:64, :64].astype(np.float64)
    image = 10.0 + rng.normal(0, 1.0, yy.shape)
    labels = np.zeros(yy.shape, np.int32)
    for i, (y, x, s) in enumerate([(16, 16, 1.5), (40, 45, 4.0)], start=1):
        r2 = (yy - y) ** 2 + (xx - x) ** 2
        image += 3000 / (2 * np.pi * s ** 2) * np.exp(-r2 / (2 * s ** 2))
        labels[r2 < (3 * s) ** 2] = i
    features = rng.normal(size=(40, 7))
    clf = fit_star_classifier(features, np.arange(40) % 2 == 0)
    rows = source_table(image, labels, clf)
    assert all(0.0 <= r["p_star"] <= 1.0 and r["class"] == ("star" if r["p_star"] >= 0.5 else "galaxy")
               for r in rows)
    assert "class" not in source_table(image, labels)[0]


def test_a_row_with_the_images_sky_is_the_same_in_any_window():
    """Given the whole image's sky and noise (the plan's), a source's row is the same in a window of the image
    as in the whole; measured on the window's own unlabelled pixels, it moves with what else the window holds."""
    from napari_segtool.ops.sources import SkyLevel

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:128, :192].astype(np.float64)
    image = 100.0 + rng.normal(0, 2.0, yy.shape)
    image[:, 96:] += 6.0  # a brighter sky on the right: the windows' backgrounds differ
    labels = np.zeros(yy.shape, np.int32)
    for i, (y, x) in enumerate([(40, 40), (90, 60), (64, 150)], start=1):
        r2 = (yy - y) ** 2 + (xx - x) ** 2
        image += 3000.0 / (2 * np.pi * 4.0) * np.exp(-r2 / 8.0)
        labels[r2 < 64] = i
    image = image.astype(np.float32)
    sky = SkyLevel(103.0, 2.5)
    whole = source_table(image, labels, sky=sky)
    window = source_table(image[:, :96], labels[:, :96], sky=sky)
    keys = ("label", "y", "x", "flux", "peak", "area", "snr", "size", "ellipticity", "sky", "sky_noise")
    assert [{k: r[k] for k in keys} for r in window] == [{k: r[k] for k in keys} for r in whole[:2]]
    assert whole[0]["sky"] == 103.0 and whole[0]["sky_noise"] == 2.5
    own = source_table(image[:, :96], labels[:, :96]), source_table(image, labels)
    assert abs(own[0][0]["flux"] - own[1][0]["flux"]) > 0.05 * own[1][0]["flux"]


def test_measure_sources_subtracts_the_sky_and_zeroes_non_finite_pixels():
    rng = np.random.default_rng(2)
    image = rng.normal(50.0, 3.0, (40, 50))
    labels = np.zeros(image.shape, np.int32)
    labels[5:15, 5:20], labels[20:35, 30:45] = 1, 2
    image[10, 10] = np.nan
    signal = np.where(np.isfinite(image), image - 50.0, 0.0)
    got, expected = measure_sources(image.astype(np.float32), labels, 50.0), measure_sources(signal, labels)
    for field in ("label", "area", "flux", "peak", "y", "x", "size", "ellipticity"):
        np.testing.assert_allclose(getattr(got, field), getattr(expected, field), rtol=1e-5, atol=1e-4)
