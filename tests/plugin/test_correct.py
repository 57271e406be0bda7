"""Corrections become training data: tools, edit tracking, reviewed slices, autosave and reopening."""
import numpy as np
import pytest

from napari_segtool.core.project import Project
from napari_segtool.plugin import correct as C

# ---------------------------------------------------------------- array tools (no viewer)


def _two_blobs():
    plane = np.zeros((40, 60), np.int32)
    yy, xx = np.mgrid[:40, :60]
    plane[(yy - 20) ** 2 + (xx - 18) ** 2 <= 81] = 1
    plane[(yy - 20) ** 2 + (xx - 34) ** 2 <= 81] = 1  # one object made of two touching disks
    plane[5:9, 50:56] = 2
    return plane


def test_merge_prediction_keeps_edits():
    from napari_segtool.core import edits

    assert C.merge_prediction is edits.merge_prediction  # one merge rule, in core (the benchmark's too)
    old = np.zeros((10, 10), np.int32)
    old[2:5, 2:5] = 7
    edited = np.zeros((10, 10), bool)
    edited[1:6, 1:6] = True
    pred = np.zeros((10, 10), np.int32)
    pred[1:6, 2:7] = 20  # mostly on the edited region: dropped
    pred[5:8, 5:8] = 22  # one pixel on it: trimmed, kept
    pred[8:10, 0:2] = 21
    out = C.merge_prediction(old, pred, edited)
    assert (out[2:5, 2:5] == 7).all() and not (out == 20).any() and (out[8:10, 0:2] == 21).all()
    assert out[5, 5] == 0 and (out == 22).sum() == 8


def test_split_by_points_and_line():
    plane = _two_blobs()
    out = C.split_object_points(plane, (20, 14), (20, 38), new_label=5)
    assert set(np.unique(out)) == {0, 1, 2, 5}
    assert out[20, 14] == 1 and out[20, 38] == 5
    with pytest.raises(ValueError):
        C.split_object_points(plane, (20, 14), (6, 52), new_label=5)
    line = np.array([[0, 26], [39, 26]])
    out = C.split_object_line(plane, line, first_new_label=9)
    assert set(np.unique(out)) == {0, 1, 2, 9}
    assert (out == 1).sum() + (out == 9).sum() == (plane == 1).sum()  # cut pixels reassigned


def test_merge_fill_renumber():
    plane = _two_blobs()
    merged = C.merge_objects(plane, [2, 1])
    assert set(np.unique(merged)) == {0, 1}
    holed = plane.copy()
    holed[19:22, 17:20] = 0
    assert (C.fill_object_holes(holed, 1) == plane).all()
    assert (C.fill_object_holes(holed) == plane).all()
    assert set(np.unique(C.renumber(np.where(plane == 2, 40, plane)))) == {0, 1, 2}


# ---------------------------------------------------------------- in a viewer


def _setup(make_napari_viewer, image):
    from napari_segtool.plugin.correct_widget import CorrectWidget
    from napari_segtool.plugin.state import get_session

    viewer = make_napari_viewer()
    img = viewer.add_image(image, name="cells")
    session = get_session(viewer)
    labels = session.annotation_layer(img)
    widget = CorrectWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Correct")
    return viewer, img, labels, session.tracker_for_labels(labels), widget, session


@pytest.mark.gui
def test_edits_reviewed_autosave_and_reopen(make_napari_viewer, qtbot, tmp_path):
    image = np.random.default_rng(0).normal(10, 1, (3, 40, 60)).astype(np.float32)
    viewer, img, labels, tracker, widget, session = _setup(make_napari_viewer, image)
    assert widget.labels_combo.currentText() == "cells labels"
    # a prediction (not an edit) in slice 1
    tracker.apply_prediction({(1,): ((slice(None), slice(None)), _two_blobs())})
    assert not tracker.edited.any() and labels.data[1].max() == 2

    # napari's own tools: a brush stroke in slice 0, then data_setitem (what the plugin tools use)
    viewer.dims.set_current_step(0, 0)
    labels.paint((0, 10, 10), 3)
    assert tracker.edited[0, 10, 10] and (tracker.edited[0] == (labels.data[0] == 3)).all()
    # delete object 2 in slice 1: its pixels become annotated background
    n = tracker.delete_object((1,), 2)
    assert n == 24 and tracker.edited[1, 5:9, 50:56].all() and labels.data[1, 5:9, 50:56].max() == 0
    # object 1 was not touched: not annotated
    assert not tracker.edited[1][labels.data[1] == 1].any()
    # split object 1 between two points: the whole object becomes annotated
    tracker.split_points((1,), (20, 14), (20, 38))
    assert tracker.edited[1][labels.data[1] > 0].all() and len(np.unique(labels.data[1])) == 3
    # undo is tracked too (no paint event: found by the diff check)
    labels.undo()
    tracker.check_all()
    assert len(np.unique(labels.data[1])) == 2
    # review slice 2 (keyboard R is bound on the layer)
    assert any(k.lower().endswith("r") for k in map(str, labels.keymap))
    viewer.dims.set_current_step(0, 2)
    assert tracker.toggle_reviewed() is True
    assert tracker.plane_status() == {(0,): "edited", (1,): "edited", (2,): "reviewed"}
    assert "1/3 reviewed" in widget.summary.text()
    assert "reviewed" in viewer.text_overlay.text
    # the strip shows it at a glance
    assert dict(widget.strip.status)[(2,)] == "reviewed"

    # autosave (debounced, background) writes everything to the project
    qtbot.waitUntil(lambda: tracker.saves > 0 and not tracker.dirty, timeout=10000)
    project = Project(session.project.root)
    stored = project.load(tracker.key)
    np.testing.assert_array_equal(stored.labels, labels.data)
    np.testing.assert_array_equal(stored.edited, tracker.edited)
    assert stored.reviewed == {(2,)}
    examples, notes = project.training_examples()
    assert len(examples) == 1  # slice 0 (painted); the core skips slices with no object
    assert sum("no objects" in n for n in notes) == 2
    from napari_segtool.core.train_project import project_examples

    examples, notes = project_examples(project)
    # + slice 1 (object 2 deleted; the undone split is not an edit) and slice 2 (reviewed, empty) as background
    assert sorted(ex.name.split(" · ")[0] for ex in examples) == ["cells plane (0,)", "cells plane (1,)",
                                                                 "cells plane (2,)"]
    assert not any("no objects" in n for n in notes)
    background = [ex for ex in examples if ex.name.startswith("cells plane (1,)")][0]
    assert background.annotated.sum() == 24 and background.labels[background.annotated].max() == 0

    # a new edit right before closing is flushed on close
    viewer.dims.set_current_step(0, 0)
    labels.paint((0, 30, 40), 4)
    expected = np.array(labels.data, copy=True)
    viewer.close()
    stored = Project(project.root).load(tracker.key)
    np.testing.assert_array_equal(stored.labels, expected)

    # reopening: the same image in a new viewer restores labels, edits and reviewed slices
    viewer2 = make_napari_viewer()
    from napari_segtool.plugin.state import get_session

    session2 = get_session(viewer2)
    img2 = viewer2.add_image(image, name="cells")
    qtbot.waitUntil(lambda: "cells labels" in viewer2.layers, timeout=5000)
    tracker2 = session2.tracker_for_image(img2)
    np.testing.assert_array_equal(viewer2.layers["cells labels"].data, expected)
    assert tracker2.reviewed == {(2,)} and tracker2.edited[0, 30, 40]


@pytest.mark.gui
def test_widget_buttons_and_merge(make_napari_viewer, qtbot, errors):
    image = np.random.default_rng(0).normal(10, 1, (40, 60)).astype(np.float32)
    viewer, img, labels, tracker, widget, session = _setup(make_napari_viewer, image)
    tracker.apply_prediction({(): ((slice(None), slice(None)), _two_blobs())})
    labels.selected_label = 1
    widget.add_selected_label()
    labels.selected_label = 2
    widget.add_selected_label()
    assert "1, 2" in widget.selection_label.text()
    widget.merge()
    assert set(np.unique(labels.data)) == {0, 1} and tracker.edited[labels.data == 1].all()
    # split along a line drawn in the 'split line' Shapes layer
    widget.split_along_line()  # creates the layer and explains
    shapes = viewer.layers["split line"]
    shapes.add_paths(np.array([[0.0, 26.0], [39.0, 26.0]]))
    widget.split_along_line()
    assert len(np.unique(labels.data)) == 4
    # renumber is not an edit
    before = tracker.edited.copy()
    labels.data[labels.data == 1] = 50
    tracker.shadow[tracker.shadow == 1] = 50
    widget.renumber()
    assert labels.data.max() == 3 and (tracker.edited == before).all()
    # the visible region can be marked reviewed
    viewer.reset_view()
    widget.mark_visible_region()
    assert tracker.edited.all()
    # unlinking: edits are no longer tracked
    widget.image_combo.setCurrentIndex(0)
    widget._on_link_image(0)
    assert session.tracker_for_labels(labels) is None
