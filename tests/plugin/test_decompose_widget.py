"""The Segment widget with a bulge/disk (regression) model: two image layers, bulge and disk, on the
image's grid, holding what ``core.decompose`` computes; no labels layer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_segtool


def _bulge_disk_widget(viewer, path):
    """A Segment widget docked in ``viewer`` with the FITS file ``path`` open and astro-bulge-disk chosen."""
    from napari_segtool.plugin import segment_widget as sw

    widget = sw.SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    viewer.open(str(path), plugin="napari-segtool")
    combo = widget.model_combo
    combo.setCurrentIndex([str(combo.itemData(i) or "").endswith("astro-bulge-disk") for i in range(combo.count())]
                          .index(True))
    return widget


@pytest.mark.gui
def test_segment_widget_shows_bulge_and_disk_layers(make_napari_viewer, qtbot, tmp_path, monkeypatch, errors):
    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.decompose import decompose

    from tests.plugin.test_astro_features import sky_fits

    monkeypatch.setattr("napari_segtool.core.checkpoint.ZOO_DIR", Path(napari_segtool.__file__).parent / "zoo")
    image = sky_fits(tmp_path / "field.fits", seed=4)
    viewer = make_napari_viewer()
    widget = _bulge_disk_widget(viewer, tmp_path / "field.fits")
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    assert widget.last_outcome.ok, widget.last_outcome.message
    expected = decompose(load_model("astro-bulge-disk"), image)
    for name in ("bulge", "disk"):
        layer = viewer.layers[f"field {name}"]
        assert layer.data.shape == image.shape
        np.testing.assert_allclose(layer.data, getattr(expected, name), rtol=1e-5, atol=1e-4, equal_nan=True)
    assert "bulge and disk" in widget.status_label.text()
    assert not [m for kind, m in errors if kind == "show_error"]


@pytest.mark.gui
def test_the_psf_fwhm_of_the_fits_header_reaches_the_model_and_an_object_size_is_refused(
        make_napari_viewer, qtbot, tmp_path, monkeypatch, errors):
    """As ``segtool predict`` does: the header's SEEING (an angle, over the WCS pixel scale) is the PSF the model
    gets, and the status line says so; an Object size, which a bulge/disk model cannot use, is refused."""
    from astropy.io import fits

    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.decompose import PsfFwhm, decompose

    from tests.plugin.test_astro_features import sky_fits

    monkeypatch.setattr("napari_segtool.core.checkpoint.ZOO_DIR", Path(napari_segtool.__file__).parent / "zoo")
    image = sky_fits(tmp_path / "field.fits", seed=4)
    with fits.open(tmp_path / "field.fits", mode="update") as hdul:
        hdul[0].header["SEEING"] = (0.3, "[arcsec] seeing FWHM")  # 0.108 arcsec pixels: 2.78 px
    viewer = make_napari_viewer()
    widget = _bulge_disk_widget(viewer, tmp_path / "field.fits")
    widget.object_size.spin.setValue(12)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    assert not widget.last_outcome.ok and "Object size to auto" in widget.last_outcome.message
    assert "field bulge" not in viewer.layers
    widget.object_size.spin.setValue(0)
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=120000)
    assert widget.last_outcome.ok, widget.last_outcome.message
    fwhm = 0.3 / 3600 / 3e-5
    expected = decompose(load_model("astro-bulge-disk"), image, psf_size=PsfFwhm(fwhm, "header"))
    np.testing.assert_allclose(viewer.layers["field bulge"].data, expected.bulge, rtol=1e-5, atol=1e-4, equal_nan=True)
    assert f"PSF FWHM {fwhm:.3g} px (header SEEING = 0.3 (arcsec" in widget.status_label.text()
