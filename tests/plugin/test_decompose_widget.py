"""The Segment widget with a bulge/disk (regression) model: two image layers, bulge and disk, on the
image's grid, holding what ``core.decompose`` computes; no labels layer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import napari_segtool


@pytest.mark.gui
def test_segment_widget_shows_bulge_and_disk_layers(make_napari_viewer, qtbot, tmp_path, monkeypatch, errors):
    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.decompose import decompose
    from napari_segtool.plugin import segment_widget as sw

    from tests.plugin.test_astro_features import sky_fits

    monkeypatch.setattr("napari_segtool.core.checkpoint.ZOO_DIR", Path(napari_segtool.__file__).parent / "zoo")
    image = sky_fits(tmp_path / "field.fits", seed=4)
    viewer = make_napari_viewer()
    widget = sw.SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    viewer.open(str(tmp_path / "field.fits"), plugin="napari-segtool")
    combo = widget.model_combo
    combo.setCurrentIndex([str(combo.itemData(i) or "").endswith("astro-bulge-disk") for i in range(combo.count())]
                          .index(True))
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
