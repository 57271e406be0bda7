"""Issue 14: the prompt tools and "correct next" driven through the docked Correct widget with real Qt input
(mouse moves and clicks on the canvas, keys), on the model's maps kept by the Segment run."""
from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt
from qtpy.QtTest import QTest
from scipy import ndimage as ndi

from tests.scenes import disc, iou, nuclei_scene
from tests.plugin.test_user_loop import _canvas, _click, _correct_setup, _dock, _hover, _key
from napari_segtool.models.unet import INSTANCE_LAYOUT

pytestmark = pytest.mark.gui


def _scene(shape=(120, 160)):
    return nuclei_scene(shape, isolated=True)


def _probs(gt):
    """What a good instance U-Net outputs for ``gt``: background, interior, boundary, distance."""
    from skimage.segmentation import find_boundaries

    from napari_segtool.models.unet import instance_targets

    boundary = (find_boundaries(gt, mode="inner") & (gt > 0)).astype(np.float32)
    fg = ndi.gaussian_filter((gt > 0).astype(np.float32), 1.0)
    interior = np.clip(fg - boundary, 0, 1)
    _, dist = instance_targets(gt)
    return np.stack([1 - fg, interior, fg - interior, dist]).astype(np.float32)


def _setup(make_napari_viewer, qtbot, plane, gt, probs=None):
    viewer, labels, tracker, correct = _correct_setup(make_napari_viewer, qtbot, plane)
    h, w = gt.shape
    correct.session.keep_maps(tracker.image_layer, (), (slice(0, h), slice(0, w)),
                              _probs(gt) if probs is None else probs, INSTANCE_LAYOUT)
    qtbot.wait(20)
    assert "from the last Segment run" in correct.maps_label.text()
    return viewer, labels, tracker, correct


def _undo(viewer, qtbot, labels, before):
    _key(viewer, qtbot, Qt.Key_Z, Qt.ControlModifier)
    qtbot.waitUntil(lambda: np.array_equal(np.asarray(labels.data), before), timeout=5000)


def test_segment_run_keeps_the_maps_and_prompts_say_when_there_are_none(make_napari_viewer, qtbot, user_model,
                                                                       errors):
    from napari_segtool.sim import simulate_nuclei

    sim = simulate_nuclei((96, 96), seed=4, snr=20.0)
    viewer = make_napari_viewer(show=True)
    segment = _dock(viewer, qtbot, "Segment")
    correct = _dock(viewer, qtbot, "Correct")
    img = viewer.add_image(sim.image, name="cells")
    qtbot.waitUntil(lambda: segment.model_combo.findData(str(user_model)) >= 0 or segment.current_model_ref(),
                    timeout=30000)
    session = correct.session
    assert session.maps_for(img, ()) is None
    _click(qtbot, segment.run_button)
    qtbot.waitUntil(lambda: not segment.running, timeout=60000)
    assert segment.last_outcome.ok, segment.last_outcome.message
    maps = session.maps_for(img, ())
    assert maps is not None and maps.shape == sim.image.shape
    assert "cells object probability" not in viewer.layers  # kept, not shown (the check box is off)
    labels = viewer.layers["cells labels"]
    correct.refresh_layers()
    assert "from the last Segment run" in correct.maps_label.text()
    # a prompt on a plane without maps says what to do instead of failing
    session.maps.clear()
    viewer.layers.selection.active = labels
    viewer.reset_view()
    qtbot.wait(50)
    _hover(viewer, qtbot, labels, (48, 48))
    _key(viewer, qtbot, Qt.Key_A)
    assert "run Segment" in correct.prompt_label.text()


def test_a_adds_the_missed_object_under_the_cursor_undoable_and_training_data(make_napari_viewer, qtbot):
    gt = _scene()
    plane = np.where(gt == 2, 0, gt)
    viewer, labels, tracker, correct = _setup(make_napari_viewer, qtbot, plane, gt)
    before = np.array(labels.data, copy=True)
    _hover(viewer, qtbot, labels, (30, 80))
    _key(viewer, qtbot, Qt.Key_A)
    out = np.asarray(labels.data)
    new = int(out[30, 80])
    assert new > 0 and iou(out == new, gt == 2) > 0.85, correct.prompt_label.text()
    assert (out[gt == 1] == 1).all()
    assert tracker.edited[out == new].all() and "added" in correct.prompt_label.text()
    _undo(viewer, qtbot, labels, before)
    qtbot.waitUntil(lambda: not tracker.edited.any(), timeout=5000)  # undone: no longer training data


def test_b_twice_redraws_the_object_inside_the_box(make_napari_viewer, qtbot):
    gt = _scene()
    plane = gt.copy()
    plane[disc(gt.shape, (30, 97), 6) & (gt == 0)] = 2      # bleeds to the right
    plane[(gt == 2) & (np.arange(gt.shape[1])[None, :] < 74)] = 0  # and misses its left part
    viewer, labels, tracker, correct = _setup(make_napari_viewer, qtbot, plane, gt)
    _hover(viewer, qtbot, labels, (15, 65))
    _key(viewer, qtbot, Qt.Key_B)
    assert "box corner 1" in correct.selection_label.text()
    _hover(viewer, qtbot, labels, (45, 95))
    _key(viewer, qtbot, Qt.Key_B)
    out = np.asarray(labels.data)
    assert iou(out == 2, gt == 2) > 0.9, correct.prompt_label.text()
    assert tracker.edited[out == 2].all()


def test_shift_g_grows_and_shift_s_shrinks(make_napari_viewer, qtbot):
    gt = _scene()
    plane = gt.copy()
    plane[(gt == 2) & (np.arange(gt.shape[1])[None, :] > 84)] = 0       # object 2 misses its right part
    bleed = disc(gt.shape, (40, 118), 5) & (gt == 0)
    plane[bleed] = 5                                                    # object 5 bleeds to the left
    viewer, labels, tracker, correct = _setup(make_napari_viewer, qtbot, plane, gt)
    _hover(viewer, qtbot, labels, (30, 89))
    _key(viewer, qtbot, Qt.Key_G, Qt.ShiftModifier)
    out = np.asarray(labels.data)
    assert iou(out == 2, gt == 2) > 0.9, correct.prompt_label.text()
    before = np.array(out, copy=True)
    _hover(viewer, qtbot, labels, (40, 116))
    _key(viewer, qtbot, Qt.Key_S, Qt.ShiftModifier)
    out = np.asarray(labels.data)
    assert iou(out == 5, gt == 5) > 0.9 and not (out[bleed] == 5).any(), correct.prompt_label.text()
    assert tracker.edited[bleed].all()   # the removed part is annotated background
    _undo(viewer, qtbot, labels, before)


def _screen(viewer, layer, yx):
    native = _canvas(viewer)
    world = np.asarray(layer.data_to_world(list(yx)), float)[-2:]
    centre = np.asarray(viewer.camera.center, float)[-2:]
    ratio = native.devicePixelRatioF() if hasattr(native, "devicePixelRatioF") else 1.0
    x = (world[1] - centre[1]) * viewer.camera.zoom / ratio + native.width() / 2
    y = (world[0] - centre[0]) * viewer.camera.zoom / ratio + native.height() / 2
    return QPoint(int(round(x)), int(round(y)))


def test_a_scribble_drawn_on_the_canvas_splits_merged_nuclei(make_napari_viewer, qtbot):
    gt = _scene()
    plane = np.where(gt == 4, 3, gt)   # 3 and 4 merged
    viewer, labels, tracker, correct = _setup(make_napari_viewer, qtbot, plane, gt)
    _click(qtbot, correct.scribble_button)
    shapes = viewer.layers["scribble"]
    assert viewer.layers.selection.active is shapes and shapes.mode == "add_path"
    # napari's path tool: a click starts the stroke, moving the mouse draws it, a click ends it
    native = _canvas(viewer)
    stroke = [(85, 52), (84, 64), (85, 76), (86, 88)]
    start = _screen(viewer, labels, stroke[0])
    QTest.mouseMove(native, start)
    qtbot.wait(20)
    QTest.mouseClick(native, Qt.LeftButton, pos=start)
    for a, b in zip(stroke[:-1], stroke[1:]):
        for t in np.linspace(0, 1, 8)[1:]:
            QTest.mouseMove(native, _screen(viewer, labels, (a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1]))))
            qtbot.wait(10)
    QTest.mouseClick(native, Qt.LeftButton, pos=_screen(viewer, labels, stroke[-1]))
    qtbot.waitUntil(lambda: len(np.unique(np.asarray(labels.data)[(gt == 3) | (gt == 4)])) == 2, timeout=5000)
    out = np.asarray(labels.data)
    a, b = out == out[85, 58], out == out[85, 84]
    assert out[85, 58] != out[85, 84]
    assert iou(a, gt == 3) > 0.8 and iou(b, gt == 4) > 0.8
    assert len(shapes.data) == 0          # the stroke is consumed
    assert tracker.edited[(gt == 3) | (gt == 4)].all()


def test_n_jumps_to_the_least_certain_objects_and_the_list_follows_edits(make_napari_viewer, qtbot):
    gt = _scene()
    plane = np.where(gt == 4, 3, gt)            # 3+4 merged: a boundary runs inside it
    probs = _probs(gt)
    doubt = gt == 5
    probs[1][doubt], probs[2][doubt] = 0.45, 0.1   # the model hesitates on object 5
    viewer, labels, tracker, correct = _setup(make_napari_viewer, qtbot, plane, gt, probs)
    viewer.camera.zoom *= 2
    viewer.layers.selection.active = labels
    _hover(viewer, qtbot, labels, (60, 60))
    _key(viewer, qtbot, Qt.Key_N)
    assert correct.queue_list.count() >= 3 and correct.queue_list.currentRow() == 0
    first = tracker.queue[0]
    assert first.label == 3                     # the merged pair: doubtful and twice the usual size
    centre = np.asarray(viewer.camera.center)[-2:]
    assert np.allclose(centre, labels.data_to_world(list(first.yx))[-2:], atol=0.5)
    assert labels.selected_label == 3 and "next 1/" in correct.prompt_label.text()
    _key(viewer, qtbot, Qt.Key_N)
    assert tracker.queue_pos == 1 and tracker.queue[1].label == 5   # the one the model hesitates on next
    # deleting object 5 (an edit) takes it off the list
    viewer.reset_view()
    _hover(viewer, qtbot, labels, (40, 130))
    _key(viewer, qtbot, Qt.Key_Delete)
    _key(viewer, qtbot, Qt.Key_N)
    assert all(item.label != 5 for item in tracker.queue) and tracker.queue_pos == 0
    # a click in the list jumps there
    row = correct.queue_list.count() - 1
    item = correct.queue_list.item(row)
    rect = correct.queue_list.visualItemRect(item)
    QTest.mouseClick(correct.queue_list.viewport(), Qt.LeftButton, pos=rect.center())
    assert tracker.queue_pos == row


def test_shift_n_accepts_the_shown_object_as_training_data_and_n_only_skips(make_napari_viewer, qtbot):
    """Shift-N: the object correct next shows is right, so it is marked reviewed; N and list clicks skip."""
    gt = _scene()
    probs = _probs(gt)
    probs[1][gt == 5], probs[2][gt == 5] = 0.45, 0.1   # the model hesitates on object 5: shown first
    viewer, labels, tracker, correct = _setup(make_napari_viewer, qtbot, gt.copy(), gt, probs)
    viewer.layers.selection.active = labels
    _hover(viewer, qtbot, labels, (60, 60))
    _key(viewer, qtbot, Qt.Key_N)
    shown = tracker.queue[0].label
    assert shown == 5 and not tracker.edited.any()
    _key(viewer, qtbot, Qt.Key_N)                       # N past it: a skip, nothing asserted
    assert not tracker.edited.any() and tracker.queue_pos == 1
    rect = correct.queue_list.visualItemRect(correct.queue_list.item(2))
    QTest.mouseClick(correct.queue_list.viewport(), Qt.LeftButton, pos=rect.center())   # jumped away: a skip
    assert not tracker.edited.any()
    left = tracker.queue[2].label
    _key(viewer, qtbot, Qt.Key_N, Qt.ShiftModifier)     # Shift-N: it is right
    assert tracker.edited[gt == left].all() and tracker.marks[gt == left].all()
    assert tracker.edited.sum() == (gt == left).sum() and not tracker.edited[gt == shown].any()
    assert tracker.queue_pos == 3


def test_uncertainty_overlay_button_shows_the_models_doubt_over_the_slice(make_napari_viewer, qtbot):
    gt = _scene()
    probs = _probs(gt)
    probs[1][gt == 5], probs[2][gt == 5] = 0.45, 0.1
    viewer, labels, tracker, correct = _setup(make_napari_viewer, qtbot, gt.copy(), gt, probs)
    _click(qtbot, correct.overlay_button)
    layer = viewer.layers["cells uncertainty"]
    data = np.asarray(layer.data)
    assert data.shape == gt.shape and data[gt == 5].mean() > 0.8 and data[gt == 1].mean() < 0.2
    assert viewer.layers.selection.active is labels
    # it lies exactly over the labels
    assert np.allclose(layer.data_to_world([40, 130]), labels.data_to_world([40, 130]))
