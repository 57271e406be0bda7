"""What keeps the GUI thread free (issue 13, benchmarks/gui_stall.py): each test pins one stall fix.

The timings live in the benchmark; these tests check the behaviour that removes each stall, on
widgets docked by napari and driven with Qt clicks.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
from qtpy.QtCore import Qt
from qtpy.QtTest import QTest

from napari_segtool.plugin import segment_widget as sw

pytestmark = pytest.mark.gui


def _docked(viewer, qtbot, name):
    """The widget napari docks for ``name``, once the warm-up has listed the models."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-segtool", name)
    qtbot.waitUntil(lambda: widget.model_combo.current_ref() is not None, timeout=600000)
    return widget


def _on_gui_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def test_first_segment_click_adds_no_layer_and_the_result_layer_is_made_once_with_it(
        make_napari_viewer, qtbot, user_model, nuclei_stack, monkeypatch):
    """The first Segment click used to add a zero labels layer, build its tracker and copy the stack on
    the GUI thread (0.4 s at 16x256², 1 s at 2x2048²), then fill it in: now the click only starts the
    worker, which allocates the labels; the layer is added once, holding the worker's array."""
    image, _ = nuclei_stack
    viewer = make_napari_viewer(show=True)
    segment = _docked(viewer, qtbot, "Segment")
    viewer.add_image(image, name="nuclei", scale=(2, 1, 1))
    segment.fg_spin.setValue(0.3)  # the tiny test model is barely trained
    segment.scope_combo.setCurrentText(sw.SCOPE_STACK)
    inserted = []
    viewer.layers.events.inserted.connect(
        lambda event: inserted.append((event.value.name, int(np.asarray(event.value.data).max()))))

    QTest.mouseClick(segment.run_button, Qt.LeftButton)
    assert segment.running
    assert "nuclei labels" not in viewer.layers  # nothing made (nor copied) on the GUI thread by the click
    qtbot.waitUntil(lambda: not segment.running, timeout=600000)
    outcome = segment.last_outcome
    assert outcome.ok, outcome.message

    labels = viewer.layers["nuclei labels"]
    assert [name for name, _ in inserted] == ["nuclei labels"]
    assert inserted[0][1] > 0                     # added holding the result, not zeros filled in afterwards
    assert labels.data is outcome.result.labels   # the array the worker made: no copy on the GUI thread
    assert tuple(labels.scale) == (2, 1, 1)
    n = len(np.unique(labels.data)) - 1           # the worker's count is the layer's
    assert segment.status_label.text().startswith(f"done: {n} objects in 'nuclei labels'")
    tracker = segment.session.tracker_for_labels(labels)
    assert tracker is not None and not tracker.edited.any()  # a prediction, not an edit
    # the tracker's snapshots (what the labels were before any edit) are the worker's copies: none made
    # on the GUI thread when the layer appeared, and each a private array equal to the layer's
    shadow, base = segment.last_run.snapshots
    assert tracker.shadow is shadow and tracker.base is base
    assert shadow is not labels.data and base is not labels.data and shadow is not base
    np.testing.assert_array_equal(base, labels.data)

    # a second run writes into the same layer; the copy it fills is made in the worker
    copies = []
    real = sw._stack_labels
    monkeypatch.setattr(sw, "_stack_labels", lambda job: copies.append(_on_gui_thread()) or real(job))
    QTest.mouseClick(segment.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not segment.running, timeout=600000)
    assert segment.last_outcome.ok and copies == [False]
    assert [l.name for l in viewer.layers] == ["nuclei", "nuclei labels"]


def test_batch_result_is_opened_in_the_worker(make_napari_viewer, qtbot, user_model, tmp_path, monkeypatch):
    """Adding the Batch result opened the zarr (and imported dask.array) on the GUI thread: now the worker
    opens it and the GUI thread only adds the lazy layer."""
    import dask.array as da

    calls = []
    real = da.from_zarr
    monkeypatch.setattr(da, "from_zarr", lambda *a, **k: calls.append(_on_gui_thread()) or real(*a, **k))
    viewer = make_napari_viewer(show=True)
    batch = _docked(viewer, qtbot, "Batch")
    viewer.add_image(np.random.default_rng(0).normal(10, 1, (96, 96)).astype(np.float32), name="cells")
    batch.path_edit.setText(str(tmp_path / "out.zarr"))
    batch.chunk_spin.setValue(64)
    QTest.mouseClick(batch.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not batch.running, timeout=600000)
    assert batch.last_outcome.ok, batch.last_outcome.message
    layer = viewer.layers["cells labels (batch)"]
    assert isinstance(layer.data, da.Array) and layer.data.shape == (96, 96)
    assert calls == [False]


def test_widget_modules_import_neither_tifffile_nor_torch():
    """napari imports a widget's module on the GUI thread when the user opens it from the Plugins menu:
    the project store's atomic writers pulled in tifffile (0.1-0.5 s) through ``napari_segtool.io``;
    torch is the warm-up thread's job."""
    import subprocess
    import sys

    code = ("import sys, napari, napari.qt\n"
            "from napari_segtool.plugin import batch_widget, correct_widget, segment_widget, train_widget\n"
            "print(sorted(m for m in ('tifffile', 'torch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
    from napari_segtool.io import read_image  # the package's readers are still there, imported on first use

    assert callable(read_image)


def test_nuclei_sample_opens_from_the_cache_without_sorting_the_stack(make_napari_viewer, monkeypatch):
    """Opening the sample computed its contrast limits (percentiles: a sort of the whole stack) on the GUI
    thread; the warm-up thread's cache now holds them."""
    from napari_segtool.plugin import samples

    samples.prepare_cache()  # what the warm-up thread does
    expected = tuple(float(v) for v in np.percentile(samples._simulated_nuclei(samples.NUCLEI_SHAPE,
                                                                               samples.NUCLEI_SEED)[0], [0.5, 99.8]))
    sorts = []
    real = np.percentile
    monkeypatch.setattr(np, "percentile", lambda *a, **k: sorts.append(_on_gui_thread()) or real(*a, **k))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-segtool", "nuclei-3d")
    layer = viewer.layers["nuclei (simulated)"]
    assert sorts == []
    np.testing.assert_allclose(layer.contrast_limits, expected)
