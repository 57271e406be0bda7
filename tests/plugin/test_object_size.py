"""The Segment widget's object size (issue 11): typed, measured on the canvas, in the file's units,
remembered per image in the project; driven with Qt input on the docked widget."""
from __future__ import annotations

import numpy as np
from qtpy.QtCore import QPoint, Qt
from qtpy.QtTest import QTest

from napari_segtool.core.project import Project


def _docked(viewer, qtbot):
    _, widget = viewer.window.add_plugin_dock_widget("napari-segtool", "Segment")
    qtbot.waitUntil(lambda: widget.model_combo.current_ref() is not None, timeout=600000)
    return widget


def _type_value(spin, text):
    spin.setFocus()
    spin.selectAll()
    QTest.keyClicks(spin, text)
    QTest.keyClick(spin, Qt.Key_Enter)


def _cells(seed: int = 1) -> np.ndarray:
    from napari_segtool.sim import simulate_nuclei

    return simulate_nuclei((96, 96), seed=seed).image


def test_a_typed_size_is_remembered_per_image_in_the_project(make_napari_viewer, qtbot, user_model, tmp_path):
    viewer = make_napari_viewer(show=True)
    segment = _docked(viewer, qtbot)
    viewer.add_image(_cells(1), name="a")
    viewer.add_image(_cells(2), name="b")
    segment.image_combo.setCurrentText("a")
    writes = []
    project = segment.session.project
    real = project.remember_object_size
    project.remember_object_size = lambda *a: writes.append(a) or real(*a)
    _type_value(segment.diameter_spin, "23")
    assert len(writes) == 1  # written once, when typing ends, not once per key
    segment.image_combo.setCurrentText("b")
    assert segment.diameter_spin.text() == "auto"      # b has no size of its own
    segment.image_combo.setCurrentText("a")
    assert segment.object_size.diameter_px() == 23.0   # a's size comes back
    stored = Project(tmp_path / "project")             # and another session of the project finds it
    assert stored.object_size("a", None, (96, 96)) == 23.0
    assert stored.object_size("b", None, (96, 96)) is None
    _type_value(segment.diameter_spin, "0")            # back to auto: forgotten
    assert stored.object_size("a", None, (96, 96)) is None


def test_size_in_the_files_unit_reaches_the_engine_in_pixels(make_napari_viewer, qtbot, user_model):
    viewer = make_napari_viewer(show=True)
    segment = _docked(viewer, qtbot)
    viewer.add_image(_cells(), name="cells", scale=(0.5, 0.5), units=("um", "um"))
    combo = segment.object_size.unit_combo
    assert [combo.itemText(i) for i in range(combo.count())] == ["px", "µm"]
    combo.setCurrentText("µm")
    _type_value(segment.diameter_spin, "9")            # 9 µm at 0.5 µm per pixel
    assert segment.object_size.diameter_px() == 18.0
    QTest.mouseClick(segment.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not segment.running, timeout=600000)
    assert segment.last_outcome.ok, segment.last_outcome.message
    assert segment.last_run.diameter == 18.0 and segment.last_outcome.result.diameter == 18.0
    combo.setCurrentText("px")                         # the same size, shown in pixels
    assert segment.diameter_spin.value() == 18.0


def test_measure_draws_lines_on_the_canvas_and_takes_their_median(make_napari_viewer, qtbot, user_model):
    viewer = make_napari_viewer(show=True)
    segment = _docked(viewer, qtbot)
    viewer.add_image(_cells(), name="cells")
    QTest.mouseClick(segment.object_size.measure_button, Qt.LeftButton)
    ruler = viewer.layers["cells object size"]
    assert viewer.layers.selection.active is ruler and ruler.mode == "add_line"

    # a line dragged across the canvas with the mouse: press, move, release in line mode
    canvas = viewer.window._qt_viewer.canvas.native
    viewer.reset_view()
    qtbot.wait(50)
    start, end = _canvas_point(viewer, (40, 30)), _canvas_point(viewer, (40, 50))
    QTest.mousePress(canvas, Qt.LeftButton, Qt.NoModifier, start)
    for t in np.linspace(0, 1, 6)[1:]:
        QTest.mouseMove(canvas, start + (end - start) * float(t))
        qtbot.wait(10)
    QTest.mouseRelease(canvas, Qt.LeftButton, Qt.NoModifier, end)
    qtbot.waitUntil(lambda: len(ruler.data) == 1, timeout=5000)
    drawn = float(np.linalg.norm(np.diff(np.asarray(ruler.data[0])[:, -2:], axis=0)))
    assert 15 < drawn < 25                             # about the 20 px dragged
    assert abs(segment.object_size.diameter_px() - drawn) < 0.051

    ruler.add_lines([np.array([[10.0, 10.0], [10.0, 40.0]]), np.array([[60.0, 10.0], [60.0, 44.0]])])
    median = float(np.median([drawn, 30.0, 34.0]))
    assert abs(segment.object_size.diameter_px() - median) < 0.051


def _canvas_point(viewer, yx) -> QPoint:
    """Widget coordinates of data point ``yx`` (2D view, scale 1)."""
    canvas = viewer.window._qt_viewer.canvas.native
    camera = viewer.camera
    width, height = canvas.width(), canvas.height()
    zoom = camera.zoom
    cy, cx = camera.center[-2:]
    px = width / 2 + (yx[1] - cx) * zoom
    py = height / 2 + (yx[0] - cy) * zoom
    return QPoint(int(round(px)), int(round(py)))
