"""The source catalogue: sky, fluxes and centroids measured from an image and its segmentation map."""
import numpy as np
import pytest

from napari_segtool.core.sources import source_table


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


def test_empty_and_mismatched_inputs():
    assert source_table(np.ones((16, 16)), np.zeros((16, 16), np.int32)) == []
    with pytest.raises(ValueError, match="one shape"):
        source_table(np.ones((16, 16)), np.zeros((8, 8), np.int32))
