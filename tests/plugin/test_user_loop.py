"""Issue 13, the napari loop as a user lives it: each test drives the docked widgets with real Qt input
(menu actions, QTest clicks and keys on the widgets of a ``make_napari_viewer`` window)."""
from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest
from qtpy.QtWidgets import QDockWidget, QTabBar

from tests.core.test_batch import threshold_unet

pytestmark = pytest.mark.gui

WIDGETS = ("Segment", "Correct", "Train", "Batch")


def _plugin_menu_action(viewer, title):
    """The action of Plugins ▸ napari-segtool ▸ ``title`` in the window's real menu bar."""
    for action in viewer.window.plugins_menu.actions():
        if action.menu() is not None and action.text().replace("&", "") == "napari-segtool":
            for sub in action.menu().actions():
                if sub.text().startswith(title):
                    return sub
    raise AssertionError(f"no Plugins ▸ napari-segtool ▸ {title}")


def _open_from_menu(viewer, qtbot):
    """Open the four widgets as a user does: one Plugins-menu click each, in order."""
    for title in WIDGETS:
        _plugin_menu_action(viewer, title).trigger()
        qtbot.wait(50)
    docks = {}
    for name, dock in viewer.window._wrapped_dock_widgets.items():
        for title in WIDGETS:
            if name.startswith(title):
                docks[title] = dock
    assert set(docks) == set(WIDGETS)
    return docks


def _tab_bar_with(window, title):
    for bar in window.findChildren(QTabBar):
        if bar.isVisible() and any(bar.tabText(i).startswith(title) for i in range(bar.count())):
            return bar
    return None


def _click_tab(qtbot, window, title):
    bar = _tab_bar_with(window, title)
    assert bar is not None, f"no visible tab '{title}'"
    index = next(i for i in range(bar.count()) if bar.tabText(i).startswith(title))
    QTest.mouseClick(bar, Qt.LeftButton, pos=bar.tabRect(index).center())
    qtbot.wait(50)


# ---------------------------------------------------------------- item 9: one tabbed dock


def test_plugins_menu_opens_the_four_widgets_as_tabs_that_fit_1400x900(make_napari_viewer, qtbot):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1400, 900)
    qtbot.wait(50)
    docks = _open_from_menu(viewer, qtbot)
    qtbot.wait(100)
    segment = docks["Segment"]
    tabbed = window.tabifiedDockWidgets(segment)
    assert {id(d) for d in tabbed} == {id(docks[t]) for t in WIDGETS[1:]}  # one tab group, not a column
    assert window.width() <= 1400 and window.height() <= 900  # the window did not grow
    bar = _tab_bar_with(window, "Segment")
    assert bar is not None and bar.count() == 4
    # each widget gets the whole dock height and fits in it: nothing crushed, no need to scroll
    for title in WIDGETS:
        _click_tab(qtbot, window, title)
        dock = docks[title]
        assert dock.isVisible() and not dock.visibleRegion().isEmpty()
        area = dock.widget().scroll_area
        assert area.widget().minimumSizeHint().height() <= area.viewport().height()
        assert dock.height() > 600  # not a quarter of the column
    # closing a tab's dock and reopening it from the menu brings it back into the group
    docks["Train"].setVisible(False)
    _plugin_menu_action(viewer, "Train").trigger()
    qtbot.wait(50)
    assert docks["Train"].isVisible()
    assert any(d is docks["Train"] for d in window.tabifiedDockWidgets(segment))


# ---------------------------------------------------------------- item 8: the Segment widget follows File ▸ Open


@pytest.fixture
def shipped_models(tiny_model_dir, tmp_path, monkeypatch):
    """A stand-in zoo: 'nuclei' and 'astro-sources' (copies of the seconds-trained tiny U-Net)."""
    import shutil

    zoo = tmp_path / "zoo"
    for name in ("nuclei", "astro-sources"):
        shutil.copytree(tiny_model_dir / "tiny", zoo / name)
    monkeypatch.setattr("napari_segtool.core.checkpoint.ZOO_DIR", zoo)
    return zoo


def _dock(viewer, qtbot, title):
    """Open a widget from the Plugins menu; returns the widget napari docked."""
    _plugin_menu_action(viewer, title).trigger()
    qtbot.wait(20)
    for name, dock in viewer.window._wrapped_dock_widgets.items():
        if name.startswith(title):
            return dock.widget().findChild(_widget_class(title)) or dock.widget()
    raise AssertionError(title)


def _widget_class(title):
    from napari_segtool.plugin import batch_widget, correct_widget, segment_widget, train_widget

    return {"Segment": segment_widget.SegmentWidget, "Correct": correct_widget.CorrectWidget,
            "Train": train_widget.TrainWidget, "Batch": batch_widget.BatchWidget}[title]


def _click(qtbot, button):
    assert button.isEnabled(), button.text()
    QTest.mouseClick(button, Qt.LeftButton)


def test_segment_follows_file_open_and_proposes_astro_sources_for_fits(make_napari_viewer, qtbot, tmp_path,
                                                                        shipped_models, errors):
    import tifffile
    from astropy.io import fits

    rng = np.random.default_rng(0)
    tif = tmp_path / "cells.tif"
    tifffile.imwrite(tif, rng.normal(100, 5, (64, 64)).astype(np.float32))
    sky = tmp_path / "field.fits"
    header = fits.Header()
    header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=2.0, CRPIX1=32, CRPIX2=32,
                  CDELT1=-5e-5, CDELT2=5e-5)
    fits.PrimaryHDU(rng.normal(10, 1, (64, 64)).astype(np.float32), header=header).writeto(sky)

    viewer = make_napari_viewer(show=True)
    segment = _dock(viewer, qtbot, "Segment")
    assert isinstance(segment, _widget_class("Segment"))
    viewer.open(str(tif), plugin="napari-segtool")  # what File ▸ Open does once a file is chosen
    assert segment.image_combo.currentText() == "cells"
    assert segment.current_model_ref().endswith("nuclei")
    viewer.open(str(sky), plugin="napari-segtool")
    assert segment.image_combo.currentText() == "field"        # the new image, not the old one
    assert segment.current_model_ref().endswith("astro-sources")  # a FITS image gets the sky model
    _click(qtbot, segment.run_button)
    qtbot.waitUntil(lambda: not segment.running, timeout=60000)
    assert segment.last_outcome.ok, segment.last_outcome.message
    assert segment.last_run.image is viewer.layers["field"]
    assert segment.last_run.model_ref.endswith("astro-sources")
    # selecting the TIFF in the layer list brings it (and the microscopy model) back
    viewer.layers.selection.active = viewer.layers["cells"]
    assert segment.image_combo.currentText() == "cells"
    assert segment.current_model_ref().endswith("nuclei")
    # selecting a labels layer does not change the image
    viewer.layers.selection.active = viewer.layers["field labels"]
    assert segment.image_combo.currentText() == "cells"
    # a model the user chose (here one loaded from disk) is kept when the image changes
    import shutil

    shutil.copytree(shipped_models / "nuclei", tmp_path / "mine")
    assert segment.load_model_file(str(tmp_path / "mine"))
    chosen = segment.current_model_ref()
    viewer.layers.selection.active = viewer.layers["field"]
    assert segment.image_combo.currentText() == "field" and segment.current_model_ref() == chosen
    assert not any(kind == "show_error" for kind, _ in errors)


# ---------------------------------------------------------------- item 3: Mask R-CNN, probabilities, its controls


@pytest.fixture
def maskrcnn_user_model(tiny_model_dir, tmp_path, monkeypatch):
    """An untrained Mask R-CNN (small backbone) next to the tiny U-Net among the user's models."""
    import shutil

    from napari_segtool.core.checkpoint import save_model
    from napari_segtool.core.model import SegModel
    from napari_segtool.models.registry import get_architecture

    arch = get_architecture("maskrcnn")
    meta = arch.default_meta("instance", 1, ["background", "object"])
    folder = tmp_path / "user-models"
    save_model(SegModel(arch.build(meta), meta), folder / "rcnn")
    shutil.copytree(tiny_model_dir / "tiny", folder / "tiny")
    monkeypatch.setenv("SEGTOOL_MODELS_DIR", str(folder))
    return folder


def _choose_model(qtbot, combo, name):
    """Pick a model with the keyboard, as a user does (arrow keys emit ``activated``)."""
    combo.setFocus()
    QTest.keyClick(combo, Qt.Key_Home)
    for _ in range(combo.count()):
        if str(combo.currentData() or "").endswith(name):
            return
        QTest.keyClick(combo, Qt.Key_Down)
    assert str(combo.currentData() or "").endswith(name), name


def _type_value(spin, text):
    spin.setFocus()
    spin.selectAll()
    QTest.keyClicks(spin, text)
    QTest.keyClick(spin, Qt.Key_Enter)


def test_maskrcnn_with_probabilities_and_its_own_controls(make_napari_viewer, qtbot, maskrcnn_user_model, errors):
    from napari_segtool.sim import simulate_nuclei

    viewer = make_napari_viewer(show=True)
    segment = _dock(viewer, qtbot, "Segment")
    viewer.add_image(simulate_nuclei((96, 96), seed=1).image, name="cells")
    _choose_model(qtbot, segment.model_combo, "rcnn")
    shown = {k for k, (label, spin) in segment.pp_controls.items() if spin.isVisibleTo(segment)}
    assert shown == {"score_threshold", "mask_threshold", "min_size"}  # from the model's meta.postprocess
    _type_value(segment.score_spin, "0.05")
    QTest.mouseClick(segment.prob_check, Qt.LeftButton, pos=segment.prob_check.rect().center())
    assert segment.prob_check.isChecked()
    _click(qtbot, segment.run_button)
    qtbot.waitUntil(lambda: not segment.running, timeout=120000)
    outcome = segment.last_outcome
    assert outcome.ok, outcome.message
    assert not segment.status_label.text().startswith("failed"), segment.status_label.text()
    assert segment.last_run.postprocess == {"score_threshold": 0.05}
    probs = viewer.layers["cells object probability"]
    assert probs.data.shape == (96, 96) and 0.0 <= float(probs.data.min()) and float(probs.data.max()) <= 1.0
    assert segment.image_combo.currentText() == "cells"  # a derived layer does not become the input
    assert not any(kind == "show_error" for kind, _ in errors)
    # a U-Net instance model shows its own thresholds instead, and only they are passed on
    _choose_model(qtbot, segment.model_combo, "tiny")
    shown = {k for k, (label, spin) in segment.pp_controls.items() if spin.isVisibleTo(segment)}
    assert {"fg_threshold", "seed_threshold"} <= shown and not shown & {"score_threshold", "mask_threshold"}
    _type_value(segment.fg_spin, "0.3")
    assert segment.postprocess_overrides() == {"fg_threshold": 0.3}  # the hidden score setting is not sent


# ---------------------------------------------------------------- the canvas: mouse position and keys


def _canvas(viewer):
    return viewer.window._qt_viewer.canvas.native


def _hover(viewer, qtbot, layer, yx):
    """Move the mouse over the canvas to the data point ``yx`` of ``layer`` (2D view)."""
    from qtpy.QtCore import QPoint

    native = _canvas(viewer)
    world = np.asarray(layer.data_to_world(list(yx)), float)[-2:]
    centre = np.asarray(viewer.camera.center, float)[-2:]
    zoom = viewer.camera.zoom
    ratio = native.devicePixelRatioF() if hasattr(native, "devicePixelRatioF") else 1.0
    x = (world[1] - centre[1]) * zoom / ratio + native.width() / 2
    y = (world[0] - centre[0]) * zoom / ratio + native.height() / 2
    QTest.mouseMove(native, QPoint(int(round(x)), int(round(y))))
    qtbot.wait(20)
    seen = np.round(layer.world_to_data(viewer.cursor.position)[-2:]).astype(int)
    assert tuple(seen) == tuple(int(v) for v in yx), (seen, yx)


def _key(viewer, qtbot, key, modifier=Qt.NoModifier):
    QTest.keyClick(_canvas(viewer), key, modifier)
    qtbot.wait(20)


def _two_discs(a1=125, a2=212, shape=(60, 80)):
    """One object made of two touching discs of ``a1`` and ``a2`` pixels, a bridge of prediction between
    them; returns the plane, both centres and the discs' own areas."""
    r1, r2 = np.sqrt(a1 / np.pi), np.sqrt(a2 / np.pi)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    c1 = (30, 25)
    c2 = (30, int(round(c1[1] + r1 + r2 - 1)))
    d1 = (yy - c1[0]) ** 2 + (xx - c1[1]) ** 2 <= r1 ** 2
    d2 = (yy - c2[0]) ** 2 + (xx - c2[1]) ** 2 <= r2 ** 2
    plane = np.zeros(shape, np.int32)
    plane[d1 | d2] = 1
    plane[27:34, 28:40] = 1  # the prediction bleeds between the nuclei: a fat bridge
    return plane, c1, c2, int(d1.sum()), int(d2.sum())


def _correct_setup(make_napari_viewer, qtbot, plane, image=None):
    viewer = make_napari_viewer(show=True)
    correct = _dock(viewer, qtbot, "Correct")
    image = np.random.default_rng(0).normal(10, 1, plane.shape).astype(np.float32) if image is None else image
    img = viewer.add_image(image, name="cells")
    session = correct.session
    labels = session.annotation_layer(img)
    tracker = session.tracker_for_labels(labels)
    tracker.apply_prediction({(): ((slice(None), slice(None)), plane)})
    viewer.layers.selection.active = labels
    viewer.reset_view()
    qtbot.wait(50)
    correct.refresh_layers()
    return viewer, labels, tracker, correct


# ---------------------------------------------------------------- item 2: K twice splits at the neck


@pytest.mark.parametrize("offset", [(0, 0), (2, 2), (-3, 2)])
def test_k_twice_splits_two_touching_discs_at_the_neck(make_napari_viewer, qtbot, offset):
    plane, c1, c2, a1, a2 = _two_discs()
    viewer, labels, tracker, correct = _correct_setup(make_napari_viewer, qtbot, plane)
    p1 = (c1[0] + offset[0], c1[1] + offset[1])  # a click near, not exactly at, each centre
    p2 = (c2[0] - offset[0], c2[1] - offset[1])
    _hover(viewer, qtbot, labels, p1)
    _key(viewer, qtbot, Qt.Key_K)
    assert "split point 1" in correct.selection_label.text()
    _hover(viewer, qtbot, labels, p2)
    _key(viewer, qtbot, Qt.Key_K)
    out = np.asarray(labels.data)
    first, second = int(out[p1]), int(out[p2])
    assert first != second and first > 0 and second > 0
    n1, n2 = int((out == first).sum()), int((out == second).sum())
    assert n1 + n2 == int((plane > 0).sum())
    assert abs(n1 - a1) <= 0.15 * a1 and abs(n2 - a2) <= 0.15 * a2, (n1, n2, a1, a2)
    assert tracker.edited[out > 0].all()  # the split object is training data


def test_split_past_id_65535_widens_the_uint16_labels_instead_of_wrapping(make_napari_viewer, qtbot):
    """Annotation layers hold uint16 labels while the ids fit (napari draws them without re-coding each
    slice); an edit that makes id 65536 widens them to int32 first: no id wraps round to 0 or to another
    object, and Ctrl-Z still undoes the split."""
    plane, c1, c2, _a1, _a2 = _two_discs()
    plane = plane * 65535
    plane[0:3, 0:3] = 7  # another object
    viewer, labels, tracker, correct = _correct_setup(make_napari_viewer, qtbot, plane)
    assert labels.data.dtype == np.uint16
    _hover(viewer, qtbot, labels, c1)
    _key(viewer, qtbot, Qt.Key_K)
    _hover(viewer, qtbot, labels, c2)
    _key(viewer, qtbot, Qt.Key_K)
    out = np.asarray(labels.data)
    assert out.dtype == np.int32 and tracker.shadow.dtype == np.int32 and tracker.base.dtype == np.int32
    assert int(out[c1]) == 65535 and int(out[c2]) == 65536  # the new piece got the next id, not 0
    np.testing.assert_array_equal(out > 0, plane > 0)     # no pixel lost to background
    assert tracker.edited[out == 65536].all()
    _key(viewer, qtbot, Qt.Key_Z, Qt.ControlModifier)
    np.testing.assert_array_equal(np.asarray(labels.data), plane)
    qtbot.waitUntil(lambda: not tracker.edited.any(), timeout=5000)  # undone: no longer an annotation


def test_a_prediction_past_id_65535_widens_the_uint16_labels(make_napari_viewer, qtbot, user_model, nuclei_stack):
    """Segment on a slice of a layer whose ids reach 65535: the new objects' ids (above the largest) are
    written into labels widened to int32, the kept object untouched."""
    from napari_segtool.plugin import segment_widget as sw

    image, _ = nuclei_stack
    viewer = make_napari_viewer(show=True)
    segment = _dock(viewer, qtbot, "Segment")
    segment.fg_spin.setValue(0.3)  # the tiny test model is barely trained
    img = viewer.add_image(image[0], name="cells")
    labels = segment.session.annotation_layer(img)
    tracker = segment.session.tracker_for_labels(labels)
    qtbot.waitUntil(lambda: labels.visible, timeout=5000)  # shown on the turn after it was added
    corner = tuple(a.ravel() for a in np.mgrid[:4, :4])
    labels.data_setitem(corner, 65535)  # the user paints an object with the largest uint16 id
    qtbot.waitUntil(lambda: tracker.edited[:4, :4].all(), timeout=5000)
    assert labels.data.dtype == np.uint16
    _choose_text(segment.scope_combo, sw.SCOPE_SLICE)
    _click(qtbot, segment.run_button)
    qtbot.waitUntil(lambda: not segment.running, timeout=600000)
    assert segment.last_outcome.ok, segment.last_outcome.message
    out = np.asarray(labels.data)
    assert out.dtype == np.int32
    assert (out[:4, :4] == 65535).all()
    new = set(np.unique(out).tolist()) - {0, 65535}
    assert new and min(new) > 65535  # the predicted objects above the kept one, none wrapped


# ---------------------------------------------------------------- item 1: a reviewed slice keeps the stack 3D


@pytest.fixture
def blob_model(tmp_path, monkeypatch):
    """The hand-wired bright-blob U-Net of tests/core/test_batch.py (no training: real 3D nuclei) as the
    user's only model."""
    from napari_segtool.core.checkpoint import save_model

    save_model(threshold_unet(), tmp_path / "blob-models" / "blobs")
    monkeypatch.setenv("SEGTOOL_MODELS_DIR", str(tmp_path / "blob-models"))
    return tmp_path / "blob-models" / "blobs"


def _choose_text(combo, text):
    """Pick a combo entry with the keyboard (Home, then Down until it shows ``text``)."""
    combo.setFocus()
    QTest.keyClick(combo, Qt.Key_Home)
    for _ in range(combo.count()):
        if combo.currentText() == text:
            return
        QTest.keyClick(combo, Qt.Key_Down)
    assert combo.currentText() == text


def _ids(plane):
    return set(np.unique(plane).tolist()) - {0}


def test_a_reviewed_slice_keeps_the_stack_three_dimensional(make_napari_viewer, qtbot, blob_model, errors):
    from napari_segtool.plugin import segment_widget as sw
    from napari_segtool.sim import simulate_nuclei

    sim = simulate_nuclei((8, 96, 96), seed=3, anisotropy=2.0, snr=20.0)
    viewer = make_napari_viewer(show=True)
    _dock(viewer, qtbot, "Correct")
    segment = _dock(viewer, qtbot, "Segment")  # opened last: in front
    viewer.add_image(sim.image, name="stack")
    assert segment.current_model_ref().endswith("blobs")
    _choose_text(segment.scope_combo, sw.SCOPE_STACK)
    _click(qtbot, segment.run_button)
    qtbot.waitUntil(lambda: not segment.running, timeout=600000)
    assert segment.last_outcome.ok, segment.last_outcome.message
    labels = viewer.layers["stack labels"]
    first = np.array(labels.data, copy=True)
    through = _ids(first[3]) & _ids(first[4]) & _ids(first[5])  # 3D objects running through slice 4
    assert len(through) >= 5, through

    # the user reviews slice 4 (R over the canvas), then segments the whole stack again
    viewer.layers.selection.active = labels
    viewer.dims.set_current_step(0, 4)
    _key(viewer, qtbot, Qt.Key_R)
    tracker = segment.session.tracker_for_labels(labels)
    assert tracker.reviewed == {(4,)}
    _click(qtbot, segment.run_button)
    qtbot.waitUntil(lambda: not segment.running, timeout=600000)
    assert segment.last_outcome.ok, segment.last_outcome.message
    assert segment.last_run.todo == [(z,) for z in range(8) if z != 4]
    again = np.asarray(labels.data)
    np.testing.assert_array_equal(again[4], first[4])  # the reviewed slice is kept as it was
    # still 3D objects, joined to the kept slice's ids: the same objects run through slices 3-4-5 with the
    # ids the user reviewed (not per-plane pieces sharing no id with their neighbours)
    assert _ids(again[3]) & _ids(again[4]) & _ids(again[5]) == through
    assert len(_ids(again)) <= len(_ids(first)) + 2, (len(_ids(again)), len(_ids(first)))
    assert not any(kind == "show_error" for kind, _ in errors)


# ---------------------------------------------------------------- napari's own way: napari.utils.progress


def test_a_running_job_shows_in_naparis_activity_panel(make_napari_viewer, qtbot, user_model, nuclei_stack):
    """Issue 13, "in napari's own way ... napari.utils.progress": a job clicked in a widget is also a napari
    progress bar in the window's activity panel (besides the widget's own bar), named after the job, and
    leaves the panel when the job ends."""
    from napari._qt.widgets.qt_progress_bar import QtLabeledProgressBar

    from napari_segtool.plugin import _warmup
    from napari_segtool.plugin import segment_widget as sw

    image, _ = nuclei_stack
    viewer = make_napari_viewer(show=True)
    segment = _dock(viewer, qtbot, "Segment")
    viewer.add_image(image, name="stack")
    _choose_text(segment.scope_combo, sw.SCOPE_STACK)
    panel = viewer.window._qt_window._activity_dialog

    def bars():
        return [bar.description_label.text() for bar in panel.findChildren(QtLabeledProgressBar)]

    qtbot.waitUntil(_warmup.is_warm, timeout=600000)
    qtbot.waitUntil(lambda: bars() == [], timeout=10000)  # the warm-up's own bar (napari's first) is gone
    _click(qtbot, segment.run_button)
    assert segment.running
    assert bars() == ["segmenting stack: "]
    qtbot.waitUntil(lambda: not segment.running, timeout=600000)
    assert segment.last_outcome.ok, segment.last_outcome.message
    qtbot.waitUntil(lambda: bars() == [], timeout=10000)


# ---------------------------------------------------------------- item 5 (+10): deletions are training data


def test_del_undo_del_then_train_on_the_deletion(make_napari_viewer, qtbot, user_model, errors):
    from napari_segtool.sim import simulate_nuclei

    sim = simulate_nuclei((96, 96), seed=4, snr=20.0)
    viewer, labels, tracker, correct = _correct_setup(make_napari_viewer, qtbot, sim.labels.astype(np.int32),
                                                      image=sim.image)
    train = _dock(viewer, qtbot, "Train")
    viewer.layers.selection.active = labels
    ids, counts = np.unique(sim.labels[sim.labels > 0], return_counts=True)
    victim = int(ids[np.argmax(counts)])
    ys, xs = np.nonzero(sim.labels == victim)
    inside = (int(ys[len(ys) // 2]), int(xs[len(xs) // 2]))
    assert sim.labels[inside] == victim
    _hover(viewer, qtbot, labels, inside)
    _key(viewer, qtbot, Qt.Key_Delete)
    assert not (np.asarray(labels.data) == victim).any()
    assert tracker.edited[sim.labels == victim].all() and tracker.edited.sum() == (sim.labels == victim).sum()
    _key(viewer, qtbot, Qt.Key_Z, Qt.ControlModifier)  # napari's undo
    qtbot.waitUntil(lambda: (np.asarray(labels.data) == victim).sum() == len(ys), timeout=5000)
    qtbot.waitUntil(lambda: not tracker.edited.any(), timeout=5000)  # undone: no longer an edit
    assert "0 edited" not in correct.summary.text() and tracker.plane_status() == {(): ""}
    # delete it for good: the only correction is a deletion, and it is training data
    _key(viewer, qtbot, Qt.Key_Delete)
    assert tracker.edited.sum() == len(ys)
    qtbot.waitUntil(lambda: tracker.saves > 0 and not tracker.dirty, timeout=10000)
    qtbot.waitUntil(lambda: train.data_label.text().startswith("1 image(s) with annotations"), timeout=5000)
    _type_value(train.epochs_spin, "1")
    _type_value(train.steps_spin, "2")
    _type_value(train.batch_spin, "2")
    _type_value(train.patch_spin, "64")
    QTest.mouseClick(train.repredict_check, Qt.LeftButton, pos=train.repredict_check.rect().center())
    assert not train.repredict_check.isChecked()
    _click(qtbot, train.train_button)
    qtbot.waitUntil(lambda: train.worker is None, timeout=1200000)  # a child process imports torch, then trains
    outcome = train.last_outcome
    assert outcome.ok, outcome.message
    assert outcome.result.n_examples == 1 and outcome.result.path is not None
    assert train.status_label.text().startswith("saved"), train.status_label.text()
    assert not any(kind == "show_error" for kind, _ in errors)


# ---------------------------------------------------------------- item 4: a project folder brings its model back


def test_opening_a_copied_project_restores_its_model_and_keeps_it(make_napari_viewer, qtbot, tmp_path,
                                                                    shipped_models, errors):
    import json
    import shutil

    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.project import Project

    first = Project(tmp_path / "first")
    first.save_model(load_model(str(shipped_models / "nuclei")), "mine")
    viewer = make_napari_viewer(show=True)
    segment = _dock(viewer, qtbot, "Segment")
    train = _dock(viewer, qtbot, "Train")

    def open_project(path):
        train.project_edit.setFocus()
        train.project_edit.selectAll()
        QTest.keyClicks(train.project_edit, str(path))
        QTest.keyClick(train.project_edit, Qt.Key_Return)
        qtbot.wait(20)

    open_project(first.root)
    _choose_model(qtbot, segment.model_combo, "first/models/mine")
    settings = json.loads((first.root / "project.json").read_text())["settings"]
    assert settings["model"] == "models/mine"  # relative to the project

    # the user goes back to the default project, then copies the first one elsewhere and deletes it
    open_project(tmp_path / "other")
    assert not segment.current_model_ref().startswith(str(first.root))
    shutil.copytree(first.root, tmp_path / "copy")
    shutil.rmtree(first.root)
    open_project(tmp_path / "copy")
    assert segment.current_model_ref() == str((tmp_path / "copy" / "models" / "mine").resolve())
    settings = json.loads((tmp_path / "copy" / "project.json").read_text())["settings"]
    assert settings["model"] == "models/mine"  # never overwritten with the shipped model
    assert not any(kind == "show_error" for kind, _ in errors)


def test_project_written_with_absolute_model_paths_still_finds_its_model(make_napari_viewer, qtbot, tmp_path,
                                                                          shipped_models):
    """Projects saved by earlier versions hold absolute paths: a copy finds the model in its own models/."""
    import shutil

    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.project import Project

    old = Project(tmp_path / "old")
    path = old.save_model(load_model(str(shipped_models / "nuclei")), "mine")
    old.update_settings(model=str(path))
    shutil.copytree(old.root, tmp_path / "moved")
    shutil.rmtree(old.root)
    viewer = make_napari_viewer(show=True)
    segment = _dock(viewer, qtbot, "Segment")
    train = _dock(viewer, qtbot, "Train")
    train.project_edit.setFocus()
    train.project_edit.selectAll()
    QTest.keyClicks(train.project_edit, str(tmp_path / "moved"))
    QTest.keyClick(train.project_edit, Qt.Key_Return)
    assert segment.current_model_ref() == str((tmp_path / "moved" / "models" / "mine").resolve())


# ---------------------------------------------------------------- item 10: re-predict after the labels are gone


def test_deleting_the_labels_during_training_says_repredict_was_skipped(make_napari_viewer, qtbot, user_model,
                                                                        errors):
    from napari_segtool.sim import simulate_nuclei

    sim = simulate_nuclei((96, 96), seed=2)
    viewer = make_napari_viewer(show=True)
    train = _dock(viewer, qtbot, "Train")
    img = viewer.add_image(sim.image, name="cells")
    labels = train.session.annotation_layer(img)
    idx = np.nonzero(sim.labels)
    labels.data_setitem(idx, sim.labels[idx])  # a corrected image
    for spin, value in ((train.epochs_spin, "1"), (train.steps_spin, "2"), (train.batch_spin, "2"),
                        (train.patch_spin, "64")):
        _type_value(spin, value)
    assert train.repredict_check.isChecked()
    _click(qtbot, train.train_button)
    assert train.worker is not None
    # the user deletes the labels layer with the layer list's bin while the model trains
    viewer.layers.selection.active = labels
    QTest.mouseClick(viewer.window._qt_viewer.layerButtons.deleteButton, Qt.LeftButton)
    assert "cells labels" not in viewer.layers
    qtbot.waitUntil(lambda: train.worker is None, timeout=1200000)  # a child process imports torch, then trains
    assert train.last_outcome.ok, train.last_outcome.message
    warnings = [m for kind, m in errors if kind == "show_warning" and "re-predict" in m]
    assert len(warnings) == 1 and "re-predict skipped" in warnings[0] and "'cells labels'" in warnings[0]
    assert "re-predict skipped" in train.status_label.text()


# ---------------------------------------------------------------- item 10: Batch progress and result in one unit


def test_batch_progress_and_result_count_the_same_steps(make_napari_viewer, qtbot, blob_model, errors):
    """The issue saw "5/32 steps" while running and then "16 chunks": progress and result now both count steps
    (a chunk in one pass), the chunk count beside them."""
    import re

    from napari_segtool.sim import simulate_nuclei

    viewer = make_napari_viewer(show=True)
    batch = _dock(viewer, qtbot, "Batch")
    viewer.add_image(simulate_nuclei((256, 256), seed=1).image, name="cells")
    assert str(batch.model_combo.currentData()).endswith("blobs")
    _type_value(batch.chunk_spin, "64")  # 16 chunks
    seen = []

    def finished():
        seen.append(batch.status_label.text())
        return not batch.running

    _click(qtbot, batch.run_button)
    qtbot.waitUntil(finished, timeout=600000)
    assert batch.last_outcome.ok, batch.last_outcome.message
    assert batch.last_outcome.result.n_chunks == 16
    final = batch.status_label.text()
    found = re.search(r"(\d+) steps \(16 chunks\)", final)
    assert found, final
    steps = int(found.group(1))
    assert steps in (16, 32)  # one pass, or two for an instance model (predict, then join across chunk borders)
    progress = {t for t in seen if re.search(r"\d+/\d+", t) and not t.startswith("done")}
    assert all(re.fullmatch(rf"step \d+/{steps}", t) for t in progress), progress
    assert not any(kind == "show_error" for kind, _ in errors)


# ---------------------------------------------------------------- object size (core.predict's diameter option)


def test_object_size_is_passed_and_the_estimate_shown(make_napari_viewer, qtbot, user_model, errors):
    from napari_segtool.sim import simulate_nuclei

    viewer = make_napari_viewer(show=True)
    segment = _dock(viewer, qtbot, "Segment")
    viewer.add_image(simulate_nuclei((96, 96), seed=1).image, name="cells")
    assert segment.diameter_spin.value() == 0 and segment.diameter_spin.text() == "auto"
    _click(qtbot, segment.run_button)
    qtbot.waitUntil(lambda: not segment.running, timeout=60000)
    assert segment.last_outcome.ok, segment.last_outcome.message
    assert segment.last_run.diameter is None
    estimated = segment.last_outcome.result.diameter
    assert estimated and estimated > 0
    assert segment.diameter_spin.text() == f"auto (last: {estimated:.0f})"  # the estimate, where it is set
    assert f"{estimated:.1f} px" in segment.status_label.text()
    _type_value(segment.diameter_spin, "20")
    _click(qtbot, segment.run_button)
    qtbot.waitUntil(lambda: not segment.running, timeout=60000)
    assert segment.last_outcome.ok, segment.last_outcome.message
    assert segment.last_run.diameter == 20.0 and segment.last_outcome.result.diameter == 20.0
    assert "object size 20 px (given)" in segment.status_label.text()
    assert not any(kind == "show_error" for kind, _ in errors)


# ---------------------------------------------------------------- item 10: File ▸ Open does not ask "Choose reader"


def _file_open(viewer, qtbot, monkeypatch, path):
    """File ▸ Open File(s)… from the real menu bar, the file dialog answering ``path``."""
    qt_viewer = viewer.window._qt_viewer
    monkeypatch.setattr(type(qt_viewer), "_open_file_dialog_uni", lambda self, *a, **k: [str(path)])
    action = next(a for a in viewer.window.file_menu.actions() if a.text().replace("&", "").startswith("Open File"))
    action.trigger()
    qtbot.wait(20)


def _sample_files(tmp_path):
    import tifffile
    from astropy.io import fits

    rng = np.random.default_rng(0)
    tif = tmp_path / "cells.tif"
    tifffile.imwrite(tif, rng.normal(100, 5, (3, 32, 32)).astype(np.float32), imagej=True,
                     metadata={"axes": "ZYX"})
    sky = tmp_path / "field.fits"
    fits.PrimaryHDU(rng.normal(10, 1, (32, 32)).astype(np.float32)).writeto(sky)
    return tif, sky


def test_file_open_of_tif_and_fits_uses_our_reader_without_asking(make_napari_viewer, qtbot, tmp_path,
                                                                   monkeypatch, user_model):
    import napari._qt.qt_viewer as qv
    from napari.settings import get_settings

    asked = []
    monkeypatch.setattr(qv, "handle_gui_reading", lambda paths, *a, **k: asked.append(paths))
    tif, sky = _sample_files(tmp_path)
    viewer = make_napari_viewer(show=True)
    assert not get_settings().plugins.extension2reader  # a user who never chose a reader
    _dock(viewer, qtbot, "Segment")  # the plugin is used: it becomes the reader of its files
    for path in (tif, sky):
        _file_open(viewer, qtbot, monkeypatch, path)
    assert asked == []  # no "Choose reader" dialog
    assert viewer.layers["cells"].metadata["segtool"]["axes"] == "ZYX"   # read by napari-segtool
    assert "fits_header" in viewer.layers["field"].metadata
    prefs = get_settings().plugins.extension2reader
    assert prefs["*.tif"] == prefs["*.fits"] == "napari-segtool"


def test_a_reader_the_user_chose_is_kept(make_napari_viewer, qtbot, tmp_path, monkeypatch, user_model):
    import napari._qt.qt_viewer as qv
    from napari.settings import get_settings

    asked = []
    monkeypatch.setattr(qv, "handle_gui_reading", lambda paths, *a, **k: asked.append(paths))
    tif, _sky = _sample_files(tmp_path)
    viewer = make_napari_viewer(show=True)
    get_settings().plugins.extension2reader = {"*.TIF": "napari"}  # chosen once, "remember my choice"
    _dock(viewer, qtbot, "Segment")
    prefs = get_settings().plugins.extension2reader
    assert prefs["*.TIF"] == "napari" and "*.tif" not in prefs and prefs["*.fits"] == "napari-segtool"


# ---------------------------------------------------------------- item 7: the first widget and the sample off the GUI thread

_FIRST_OPEN = r'''
import sys, threading, time
importers = {}

class Spy:  # records the thread that first imports torch
    def find_spec(self, name, path=None, target=None):
        if name in ("torch", "napari_segtool.sim.nuclei") and name not in importers:
            importers[name] = threading.current_thread().name
        return None

sys.meta_path.insert(0, Spy())
import napari
from qtpy.QtWidgets import QApplication

viewer = napari.Viewer(show=True)
app = QApplication.instance()
menu = next(a.menu() for a in viewer.window.plugins_menu.actions()
            if a.menu() is not None and a.text().replace("&", "") == "napari-segtool")
next(a for a in menu.actions() if a.text().startswith("Segment")).trigger()  # Plugins > napari-segtool > Segment
from napari_segtool.plugin.segment_widget import SegmentWidget
segment = next(w for w in viewer.window._qt_window.findChildren(SegmentWidget))
print("after open:", "torch" in sys.modules and importers.get("torch"), segment.model_combo.currentText())
end = time.time() + 120
from napari_segtool.plugin import _warmup
while not _warmup.is_warm() and time.time() < end:
    app.processEvents(); time.sleep(0.01)
for _ in range(20):
    app.processEvents(); time.sleep(0.01)
print("models:", segment.model_combo.count(), segment.model_combo.currentText())
print("torch imported by:", importers.get("torch"))
print("simulated by:", importers.get("napari_segtool.sim.nuclei"))
viewer.open_sample("napari-segtool", "nuclei-3d")
print("sample:", viewer.layers[-1].data.shape)
print("simulated by (after opening the sample):", importers.get("napari_segtool.sim.nuclei"))
viewer.close()
'''


def test_first_widget_open_and_the_nuclei_sample_leave_torch_and_simulation_to_a_thread(tiny_model_dir, tmp_path):
    """A fresh napari: opening Segment from the Plugins menu imports no torch on the GUI thread; the model
    list fills in when the warm-up thread is done, and the nuclei sample is read from the cache it filled."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, SEGTOOL_CACHE_DIR=str(tmp_path / "cache"), SEGTOOL_PROJECT_DIR=str(tmp_path / "p"),
               SEGTOOL_MODELS_DIR=str(tiny_model_dir), SEGTOOL_NUM_THREADS="1", QT_QPA_PLATFORM="xcb",
               NAPARI_CONFIG=str(tmp_path / "napari-settings.yaml"))
    run = subprocess.run([sys.executable, "-c", _FIRST_OPEN], env=env, capture_output=True, text=True, timeout=300)
    out = run.stdout
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    opened_with = lines["after open"].split(maxsplit=1)
    assert opened_with[0] in ("False", "segtool-warmup"), out  # never the GUI thread
    assert opened_with[1] == "loading models…" or opened_with[0] == "segtool-warmup", out
    assert lines["torch imported by"] == "segtool-warmup", out
    assert lines["simulated by"] == "segtool-warmup", out
    assert lines["simulated by (after opening the sample)"] == "segtool-warmup", out  # read from the cache
    assert lines["sample"] == "(16, 256, 256)", out
    assert int(lines["models"].split()[0]) >= 3 and "loading" not in lines["models"], out  # filled in
    assert list((tmp_path / "cache" / "samples").glob("nuclei-16x256x256-7.npz"))
