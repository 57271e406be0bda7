"""The Segment widget drives the core in a worker: results, scopes, reviewed slices, cancel, errors."""
import numpy as np
import pytest

from napari_segtool.plugin import segment_widget as sw

pytestmark = pytest.mark.gui


def _wait(qtbot, widget, timeout=60000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)
    return widget.last_outcome


def _widget(make_napari_viewer, image, **kwargs):
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="nuclei", **kwargs)
    widget = sw.SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment")
    widget.fg_spin.setValue(0.3)  # the tiny test model is barely trained
    return viewer, layer, widget


def test_no_model_says_train_one(make_napari_viewer, errors):
    viewer, layer, widget = _widget(make_napari_viewer, np.zeros((32, 32), np.float32))
    assert widget.model_combo.itemText(0).startswith("no model yet")
    assert widget.current_model_ref() is None
    assert widget.run() is None
    assert any("no model yet" in m for _, m in errors)
    assert [l.name for l in viewer.layers] == ["nuclei"]


def test_segment_slice_then_stack_keeps_reviewed_and_edits(make_napari_viewer, qtbot, user_model, nuclei_stack,
                                                            errors):
    image, _ = nuclei_stack
    viewer, layer, widget = _widget(make_napari_viewer, image, scale=(2, 1, 1))
    assert widget.current_model_ref().endswith("tiny")
    viewer.dims.set_current_step(0, 2)
    widget.prob_check.setChecked(True)
    assert widget.run(scope=sw.SCOPE_SLICE) is not None
    outcome = _wait(qtbot, widget)
    assert outcome.ok, outcome.message
    labels = viewer.layers["nuclei labels"]
    assert labels.data.shape == image.shape and tuple(labels.scale) == (2, 1, 1)
    assert labels.data[2].max() > 0 and labels.data[[0, 1, 3]].max() == 0
    assert "nuclei object probability" in viewer.layers
    tracker = widget.session.tracker_for_labels(labels)
    assert tracker is not None and not tracker.edited.any()

    # review slice 2, edit slice 0 by painting, then run on the whole stack
    tracker.set_reviewed((2,))
    before_2 = labels.data[2].copy()
    viewer.dims.set_current_step(0, 0)
    labels.paint((0, 20, 20), 77, refresh=True)
    assert tracker.edited[0].any()
    painted = labels.data[0] == 77
    assert widget.run(scope=sw.SCOPE_STACK) is not None
    assert _wait(qtbot, widget).ok
    np.testing.assert_array_equal(labels.data[2], before_2)      # reviewed slice untouched
    assert (labels.data[0][painted] == 77).all()                 # the user's object kept
    assert labels.data[1].max() > 0                              # the rest predicted
    assert "kept" in widget.status_label.text()
    assert not any(kind == "show_error" for kind, _ in errors)


def test_visible_field_of_view(make_napari_viewer, qtbot, user_model):
    rng = np.random.default_rng(0)
    image = rng.normal(10, 1, (256, 256)).astype(np.float32)
    image[100:120, 100:120] += 50
    viewer, layer, widget = _widget(make_napari_viewer, image)
    viewer.camera.center = (110, 110)
    viewer.camera.zoom = 8.0  # ~100 x 75 px visible on the 800 x 600 canvas
    assert widget.run(scope=sw.SCOPE_VIEW) is not None
    assert _wait(qtbot, widget).ok
    crop = widget.last_run.crop
    assert 0 < crop[0].start < 110 < crop[0].stop < 256
    assert 0 < crop[1].start < 110 < crop[1].stop < 256


def test_cancel_changes_nothing(make_napari_viewer, qtbot, user_model):
    image = np.random.default_rng(1).normal(10, 1, (12, 128, 128)).astype(np.float32)
    viewer, layer, widget = _widget(make_napari_viewer, image)
    assert widget.run(scope=sw.SCOPE_STACK) is not None
    widget.cancel()
    outcome = _wait(qtbot, widget)
    assert outcome.status == "cancelled"
    assert "nuclei labels" not in viewer.layers  # the annotation layer is made only with a result
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()


def test_errors_are_messages_not_crashes(make_napari_viewer, qtbot, user_model, tmp_path, errors):
    viewer, layer, widget = _widget(make_napari_viewer, np.zeros((64, 64), np.float32))
    wrong = viewer.add_labels(np.zeros((10, 10), np.int32), name="wrong")
    widget.refresh_layers()
    # a labels layer is not an image
    assert widget.run(image_layer=wrong) is None
    # an output layer of the wrong shape
    widget.output_combo.setCurrentText("wrong")
    assert widget.run(image_layer=layer) is None
    assert any("shape" in m for _, m in errors)
    # a broken model file
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    assert widget.load_model_file(str(bad)) is False
    # an error inside the worker (a model that cannot load) -> outcome error, message shown
    widget.output_combo.setCurrentIndex(0)
    widget.model_combo.addItem("ghost", str(tmp_path / "ghost"))
    widget.model_combo.setCurrentIndex(widget.model_combo.count() - 1)
    assert widget.run(image_layer=layer) is not None
    outcome = _wait(qtbot, widget)
    assert outcome.status == "error" and "ghost" in outcome.message
    kinds = [k for k, _ in errors]
    assert kinds.count("show_error") >= 4


def test_widgets_docked_by_napari_share_one_session_and_tracker(make_napari_viewer, qtbot, user_model, nuclei_stack):
    """napari hands plugin widgets proxies of its viewer (a new proxy per layer access): the widgets must
    still share one session, and the labels the Segment widget makes must be correctable and trainable."""
    image, _ = nuclei_stack
    viewer = make_napari_viewer()
    viewer.add_image(image, name="nuclei")
    _, segment = viewer.window.add_plugin_dock_widget("napari-segtool", "Segment")
    _, correct = viewer.window.add_plugin_dock_widget("napari-segtool", "Correct", tabify=True)
    _, train = viewer.window.add_plugin_dock_widget("napari-segtool", "Train", tabify=True)
    assert type(segment.viewer) is type(viewer)  # the real viewer, not a proxy
    assert segment.session is correct.session is train.session
    segment.fg_spin.setValue(0.3)
    assert segment.run(scope=sw.SCOPE_SLICE) is not None
    assert _wait(qtbot, segment).ok
    correct.refresh_layers()
    tracker = correct.tracker
    assert tracker is not None and tracker.image_layer.name == "nuclei"
    tracker.set_reviewed(tracker.current_plane(), True)
    assert tracker.current_plane() in tracker.reviewed


def test_per_object_table_becomes_the_labels_layer_features(make_napari_viewer, qtbot, tmp_path, monkeypatch,
                                                             errors):
    """A model with a source table (as astro-sources has): hovering an object shows its row."""
    from napari_segtool.core.checkpoint import save_model
    from napari_segtool.sim import simulate_nuclei
    from tests.core.test_batch import threshold_unet

    model = threshold_unet()  # segments bright blobs without training
    model.meta.postprocess["source_table"] = True
    save_model(model, tmp_path / "models" / "blobs-table")
    monkeypatch.setenv("SEGTOOL_MODELS_DIR", str(tmp_path / "models"))
    sim = simulate_nuclei((96, 96), seed=5, snr=30.0, density=0.2)
    viewer, layer, widget = _widget(make_napari_viewer, sim.image)
    widget.fg_spin.setValue(-1)  # the model's own threshold
    assert widget.current_model_ref().endswith("blobs-table")
    assert widget.run(scope=sw.SCOPE_SLICE) is not None
    assert _wait(qtbot, widget).ok
    labels = viewer.layers["nuclei labels"]
    ids = set(np.unique(labels.data[labels.data > 0]).tolist())
    assert ids and set(labels.features["index"]) == ids
    row = labels.features.set_index("index").loc[max(ids)]
    ys, xs = np.nonzero(labels.data == max(ids))
    assert abs(row["y"] - ys.mean()) < 3 and abs(row["x"] - xs.mean()) < 3 and row["flux"] > 0


def test_load_from_disk_accepts_a_bioimageio_package(make_napari_viewer, qtbot, user_model, tmp_path, monkeypatch,
                                                     errors):
    """Issue 15: the Segment widget's "Load from disk…" offers bioimage.io ``.zip`` packages and runs one that
    napari-segtool exported, with the same labels as the model it came from."""
    from fnmatch import fnmatch

    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QFileDialog

    from napari_segtool.core.export import export_bioimageio
    from napari_segtool.sim import simulate_nuclei

    try:
        package = export_bioimageio(user_model, tmp_path / "tiny-package.zip")
    except Exception as exc:  # noqa: BLE001 - bioimageio.spec missing or unusable (see tests/core/test_export.py)
        pytest.skip(f"bioimage.io export not available here: {exc}")
    sim = simulate_nuclei((96, 96), seed=4)
    viewer, layer, widget = _widget(make_napari_viewer, sim.image)
    widget.prob_check.setChecked(True)
    assert widget.run(scope=sw.SCOPE_SLICE) is not None
    assert _wait(qtbot, widget).ok
    labels = viewer.layers["nuclei labels"].data.copy()
    maps = np.asarray(viewer.layers["nuclei object probability"].data).copy()
    offered = []

    def dialog(parent, caption, start, filters):
        offered.extend(filters.split(";;")[0].split("(")[1].rstrip(")").split())
        return str(package), filters.split(";;")[0]

    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(dialog))
    combo = widget.model_combo
    combo.setFocus()
    QTest.keyClick(combo, Qt.Key_End)  # the last entry: "load from disk…"
    assert any(fnmatch(package.name, pattern) for pattern in offered), offered
    assert combo.current_ref() == str(package)
    assert widget.run(scope=sw.SCOPE_SLICE) is not None
    outcome = _wait(qtbot, widget)
    assert outcome.ok, outcome.message
    np.testing.assert_allclose(np.asarray(viewer.layers["nuclei object probability"].data), maps, atol=1e-4)
    again = viewer.layers["nuclei labels"].data  # new ids after the first run's: the same objects
    pairs = np.unique(np.stack([labels.ravel(), again.ravel()]), axis=1).shape[1]
    assert pairs == len(np.unique(labels)) == len(np.unique(again))
    assert not any(kind == "show_error" for kind, _ in errors)
