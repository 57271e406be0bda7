"""FITS images in napari: the reader keeps header and WCS; the Segment widget's labels layer carries
the source catalogue (RA/Dec from the WCS) as its features and leaves NaN pixels unlabelled."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

import napari_segtool
from napari_segtool.plugin.astro import fits_features
from napari_segtool.plugin.readers import read_one


def sky_fits(path: Path, seed: int = 21) -> np.ndarray:
    """A simulated 128² field under a TAN WCS, with bad (NaN) pixels in its brightest source's wing."""
    from napari_segtool.sim import simulate_astro_field

    sim = simulate_astro_field((128, 128), seed=seed)
    image = sim.image.astype(np.float32).copy()
    e = max(sim.catalog, key=lambda s: s["flux"])
    y, x = int(round(e["y"])), int(round(e["x"]))
    image[y - 1: y + 2, x + 2: x + 5] = np.nan
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [150.1, 2.2], [64.5, 64.5], [-3e-5, 3e-5]
    header = w.to_header()
    header["BUNIT"] = "adu"
    fits.PrimaryHDU(image, header).writeto(path)
    return image


def test_features_of_a_region_have_true_sky_positions(tmp_path):
    """A prediction of part of the plane (the visible region): RA/Dec come from the WCS moved to the
    region, so they are those of the whole plane's pixel (x + x0, y + y0)."""
    sky_fits(tmp_path / "f.fits")
    data, kwargs, _ = read_one(tmp_path / "f.fits")[0]
    layer = SimpleNamespace(metadata=kwargs["metadata"])
    crop = (slice(20, 100), slice(30, 110))
    labels = np.zeros((80, 80), np.int32)
    labels[10:16, 12:20], labels[40:50, 50:58] = 3, 8
    prediction = SimpleNamespace(labels=labels, tables={(): [{"label": 8, "p_star": 0.7, "class": "star"}]})
    target = SimpleNamespace(metadata={"segtool": {"axes": "YX"}})
    rows = fits_features(layer, target, data[crop][..., None], crop, prediction)
    assert [r["label"] for r in rows] == [3, 8] and rows[1]["p_star"] == 0.7 and rows[0]["class"] == ""
    full = WCS(fits.getheader(tmp_path / "f.fits"))
    for row in rows:
        sky = full.pixel_to_world(row["x"] + 30, row["y"] + 20)
        assert row["ra"] == pytest.approx(sky.ra.deg, abs=1e-10) and row["dec"] == pytest.approx(sky.dec.deg, abs=1e-10)
    assert "RA---TAN" in target.metadata["wcs_header"] and target.metadata["segtool"] == {"axes": "YX"}
    other = SimpleNamespace(metadata={"segtool": {"format": "tiff"}})  # not FITS: the model's rows as they are
    assert fits_features(other, None, data, crop, prediction) is prediction.tables[()]


@pytest.mark.gui
def test_segment_widget_on_a_fits_image(make_napari_viewer, qtbot, tmp_path, monkeypatch, errors):
    from napari_segtool.plugin import segment_widget as sw

    monkeypatch.setattr("napari_segtool.core.checkpoint.ZOO_DIR", Path(napari_segtool.__file__).parent / "zoo")
    image = sky_fits(tmp_path / "field.fits")
    viewer = make_napari_viewer()
    widget = sw.SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    viewer.open(str(tmp_path / "field.fits"), plugin="napari-segtool")
    layer = viewer.layers["field"]
    assert "RA---TAN" in layer.metadata["fits_header"] and layer.metadata["wcs"].has_celestial  # reader
    combo = widget.model_combo
    combo.setCurrentIndex([str(combo.itemData(i) or "").endswith("astro-sources") for i in range(combo.count())]
                          .index(True))
    assert widget.current_model_ref().endswith("astro-sources")
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    assert widget.last_outcome.ok, widget.last_outcome.message
    labels = viewer.layers["field labels"]
    data = np.asarray(labels.data)
    assert data.max() > 0 and np.all(data[np.isnan(image)] == 0)  # NaN pixels unlabelled
    features = labels.features
    ids = sorted(np.unique(data[data > 0]).tolist())
    assert sorted(features["index"].tolist()) == ids
    for name in ("ra", "dec", "flux", "flux_err", "snr", "a", "b", "theta", "area", "p_star"):
        assert name in features.columns, name
    sky = WCS(fits.getheader(tmp_path / "field.fits")).pixel_to_world(features["x"].to_numpy(), features["y"].to_numpy())
    np.testing.assert_allclose(features["ra"], sky.ra.deg, atol=1e-9)
    np.testing.assert_allclose(features["dec"], sky.dec.deg, atol=1e-9)
    assert "fits_header" in labels.metadata and "wcs_header" in labels.metadata
    # File > Save Layers... as .fits: the map under the image's header and WCS
    [written] = labels.save(str(tmp_path / "saved.fits"), plugin="napari-segtool")
    with fits.open(written) as hdul:
        header = hdul[0].header
        np.testing.assert_array_equal(hdul[0].data, data)
        assert header["BITPIX"] == 32 and header["SEGLAYER"] == "field labels" and "BUNIT" not in header
        assert WCS(header).wcs.ctype[0] == "RA---TAN" and header["CRVAL1"] == 150.1
    assert not [m for kind, m in errors if kind == "show_error"]
