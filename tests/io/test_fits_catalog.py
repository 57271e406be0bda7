"""The source catalogue of a FITS image (napari_segtool.core.catalog.measure_sources): photometry,
positions on the sky, shapes, invalid pixels, the model's star/galaxy column."""
from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.wcs import WCS

from napari_segtool.core.catalog import measure_sources

SKY, NOISE = 100.0, 2.0
#: (x, y, total flux, sigma_major, sigma_minor, angle in degrees counter-clockwise from +x)
SOURCES = [(60.3, 50.7, 4000.0, 2.5, 2.5, 0.0), (140.0, 120.0, 20000.0, 6.0, 3.0, 30.0),
           (30.0, 160.0, 3000.0, 2.0, 2.0, 0.0)]


def gaussian(shape, x, y, flux, s1, s2, angle):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    t = np.deg2rad(angle)
    u_ = (xx - x) * np.cos(t) + (yy - y) * np.sin(t)
    v_ = -(xx - x) * np.sin(t) + (yy - y) * np.cos(t)
    return flux / (2 * np.pi * s1 * s2) * np.exp(-0.5 * ((u_ / s1) ** 2 + (v_ / s2) ** 2))


def field(shape=(200, 220), seed=0):
    """Sky + Gaussian sources + noise, and footprints (ids 5, 9, 12: not consecutive) out to 4 sigma."""
    rng = np.random.default_rng(seed)
    image = SKY + rng.normal(0, NOISE, shape)
    labels = np.zeros(shape, np.int32)
    for label, (x, y, flux, s1, s2, angle) in zip((5, 9, 12), SOURCES):
        g = gaussian(shape, x, y, flux, s1, s2, angle)
        image += g
        labels[g > g.max() * np.exp(-0.5 * 4 ** 2)] = label
    return image, labels


def tan_wcs(shape) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix = [150.1, 2.2], [shape[1] / 2, shape[0] / 2]
    w.wcs.cdelt = [-1e-4, 1e-4]
    w.wcs.radesys = "ICRS"
    return w


def test_photometry_positions_and_shapes():
    image, labels = field()
    wcs = tan_wcs(image.shape)
    measured = measure_sources(image, labels, wcs=wcs, unit="adu")
    table = measured.table
    assert list(table["id"]) == [1, 2, 3] and sorted(np.unique(measured.labels)) == [0, 1, 2, 3]
    assert table.meta["PIXORIGN"] == 0 and "Background2D" in table.meta["BKGMETH"]
    assert table["x"].unit == u.pix and table["ra"].unit == u.deg and table["flux"].unit == u.adu
    assert table["area"].unit == u.pix ** 2 and table["theta"].unit == u.deg
    for row, (x, y, flux, s1, s2, angle) in zip(table, SOURCES):
        assert row["x"] == pytest.approx(x, abs=0.1) and row["y"] == pytest.approx(y, abs=0.1)  # 0-based
        sky = wcs.pixel_to_world(x, y)  # the true position's sky coordinates
        assert row["ra"] == pytest.approx(sky.ra.deg, abs=0.1 * 1e-4) and row["dec"] == pytest.approx(sky.dec.deg, abs=1e-5)
        # footprints out to 4 sigma hold 1 - exp(-8) of the flux
        assert row["flux"] == pytest.approx(flux, abs=3 * row["flux_err"] + 0.01 * flux)
        assert row["flux_err"] == pytest.approx(NOISE * np.sqrt(row["area"]), rel=0.1)  # sky noise only: no gain
        assert row["snr"] == pytest.approx(row["flux"] / row["flux_err"])
        assert row["a"] == pytest.approx(s1, rel=0.1) and row["b"] == pytest.approx(s2, rel=0.1)
        assert row["ellipticity"] == pytest.approx(1 - row["b"] / row["a"])
        if s1 != s2:
            assert row["theta"] == pytest.approx(angle, abs=2.0)
        assert row["background"] == pytest.approx(SKY, abs=0.5)
    with_gain = measure_sources(image, labels, wcs=wcs, gain=1.0).table
    assert np.all(with_gain["flux_err"] > table["flux_err"])  # the sources' Poisson noise is added
    assert "p_star" not in table.colnames  # no classifier rows: no column invented


def test_ra_dec_are_icrs_from_a_galactic_wcs():
    image, labels = field()
    w = WCS(naxis=2)
    w.wcs.ctype = ["GLON-TAN", "GLAT-TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [120.0, 30.0], [110, 100], [-1e-4, 1e-4]
    table = measure_sources(image, labels, wcs=w).table
    sky = w.pixel_to_world(table["x"], table["y"]).icrs
    np.testing.assert_allclose(table["ra"], sky.ra.deg, atol=1e-10)
    np.testing.assert_allclose(table["dec"], sky.dec.deg, atol=1e-10)


def test_invalid_pixels_are_unlabelled_and_ids_carry_the_model_columns():
    image, labels = field()
    image[118:123, 138:143] = np.nan  # a hole in the second source's core
    image[:, :3] = np.inf
    labels[:, :3] = 12  # a footprint running into invalid pixels
    rows = [{"label": 9, "p_star": 0.1, "class": "galaxy"}, {"label": 12, "p_star": 0.8, "class": "star"}]
    measured = measure_sources(image, labels, source_rows=rows)
    assert np.all(measured.labels[~np.isfinite(image)] == 0)
    table = measured.table
    assert "ra" not in table.colnames  # no WCS, no sky positions
    assert list(table["class"]) == ["", "galaxy", "star"] and np.isnan(table["p_star"][0])
    assert table["p_star"][2] == 0.8
    assert np.all(np.isfinite(table["flux"])) and table["area"][1] == np.count_nonzero(measured.labels == 2)
    kept = measure_sources(image, labels, relabel=False).table
    assert list(kept["id"]) == [5, 9, 12]


def test_no_sources_and_a_field_full_of_one_source():
    image, _ = field()
    empty = measure_sources(image, np.zeros(image.shape, np.int32)).table
    assert len(empty) == 0 and "flux" in empty.colnames
    full = measure_sources(image[40:60, 50:70], np.ones((20, 20), np.int32))  # no sky left: clipped all pixels
    assert len(full.table) == 1 and "every valid pixel" in full.background.method
