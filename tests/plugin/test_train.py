"""The Train widget: trains on the project's corrections in a worker, saves, swaps, re-predicts."""
import contextlib
import faulthandler
import json
import os
import time
import warnings

import numpy as np
import pytest

from tests.core.test_model_versions import _semantic_blob_model
from tests.plugin.test_user_loop import _dock

pytestmark = pytest.mark.gui


def _viewer_with_widgets(make_napari_viewer):
    from napari_segtool.plugin.segment_widget import SegmentWidget
    from napari_segtool.plugin.train_widget import TrainWidget

    viewer = make_napari_viewer()
    segment = SegmentWidget(viewer)
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment")
    viewer.window.add_dock_widget(train, name="Train")
    return viewer, segment, train


def _tiny_config():
    from napari_segtool.core.train import TrainConfig

    return TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=64, num_threads=1)


def test_train_without_corrections_explains(make_napari_viewer, qtbot, errors):
    viewer, segment, train = _viewer_with_widgets(make_napari_viewer)
    train.init_combo.setCurrentIndex(1)  # from scratch
    assert train.train(_tiny_config()) is not None
    qtbot.waitUntil(lambda: train.worker is None, timeout=180000)  # the training process imports torch first
    assert train.last_outcome.status == "error"
    assert "no training data yet" in train.last_outcome.message
    assert train.train_button.isEnabled()


def test_correct_train_swap_repredict(make_napari_viewer, qtbot, user_model, nuclei_stack, errors):
    image, truth = nuclei_stack
    viewer, segment, train = _viewer_with_widgets(make_napari_viewer)
    img = viewer.add_image(image, name="stack")
    session = segment.session
    labels = session.annotation_layer(img)
    tracker = session.tracker_for_labels(labels)
    # the user corrects slice 0 completely (as napari's tools would: data_setitem emits `paint`)
    gt = truth[0]
    idx = np.nonzero(gt)
    labels.data_setitem((np.zeros(idx[0].size, np.intp),) + idx, gt[idx])
    assert tracker.edited[0].any()
    tracker.set_reviewed((0,))
    train.init_combo.setCurrentIndex(0)  # fine-tune the selected (user) model
    assert session.current_model.endswith("tiny")
    assert train.train(_tiny_config()) is not None
    qtbot.waitUntil(lambda: train.worker is None, timeout=300000)
    outcome = train.last_outcome
    assert outcome.ok, outcome.message
    result = outcome.result
    assert result.path is not None and result.path.parent == session.project.models_dir
    assert (result.path / "model.safetensors").exists()
    assert train.plot.steps and train.plot.epochs
    # swapped into the Segment widget...
    assert segment.current_model_ref() == str(result.path)
    assert session.current_model == str(result.path)
    # ...and the unreviewed slices are re-predicted
    qtbot.waitUntil(lambda: not segment.running and segment.last_outcome is not None, timeout=60000)
    assert segment.last_outcome.ok, segment.last_outcome.message
    assert segment.last_run.todo == [(1,), (2,), (3,)]
    np.testing.assert_array_equal(labels.data[0], gt)  # the corrected slice is untouched
    history = json.loads((session.project.root / "history.json").read_text())
    assert history[-1]["model"] == result.name and len(history[-1]["epochs"]) == 1
    assert not any(kind == "show_error" for kind, _ in errors)


def test_cancel_training_keeps_viewer_usable(make_napari_viewer, qtbot):
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    from napari_segtool.core.train import TrainConfig
    from napari_segtool.sim import simulate_nuclei

    sim = simulate_nuclei((96, 96), seed=2)
    viewer, segment, train = _viewer_with_widgets(make_napari_viewer)
    img = viewer.add_image(sim.image, name="cells")
    labels = segment.session.annotation_layer(img)
    idx = np.nonzero(sim.labels)
    labels.data_setitem(idx, sim.labels[idx])
    train.init_combo.setCurrentIndex(1)
    train.repredict_check.setChecked(False)
    assert train.train(TrainConfig(epochs=50, steps_per_epoch=50, batch_size=2, patch_size=64)) is not None
    qtbot.waitUntil(lambda: len(train.plot.steps) >= 1, timeout=300000)
    # the steps come from a child process (issue 13 item 6: a training thread starved the GUI of the GIL)
    import multiprocessing
    import os

    children = [p for p in multiprocessing.active_children() if p.name == "segtool-training"]
    assert len(children) == 1 and children[0].pid != os.getpid()
    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, children[0].pid) > ours or ours == 19  # (19: already the lowest)
    QTest.mouseClick(train.cancel_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: train.worker is None, timeout=120000)
    assert train.last_outcome.status in ("ok", "cancelled")
    if train.last_outcome.ok:
        assert train.last_outcome.result.stop_reason == "cancelled"
    assert train.train_button.isEnabled() and not train.cancel_button.isEnabled()
    assert not children[0].is_alive()


def test_architecture_and_network_controls_come_from_the_registry(make_napari_viewer, qtbot, errors):
    """The architecture combo lists the registry; each shows its own tasks and network settings (its schema's
    ranges and help); a new model is trained with the settings the user changed."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    from napari_segtool.core.checkpoint import read_meta
    from napari_segtool.models.registry import available_architectures, get_architecture
    from napari_segtool.sim import simulate_nuclei

    viewer, segment, train = _viewer_with_widgets(make_napari_viewer)
    names = [train.arch_combo.itemText(i) for i in range(train.arch_combo.count())]
    assert names == available_architectures() and names[0] == "unet" and "maskrcnn" in names

    def shown():
        return {n for n, c in train.arch_form.controls.items() if c.widget.isVisibleTo(train)}

    def tasks():
        return [train.task_combo.itemText(i) for i in range(train.task_combo.count())]

    unet = get_architecture("unet")
    assert shown() == {p.name for p in unet.arch_params if not p.advanced} == {"depth", "width"}
    assert tasks() == ["instance", "semantic"]
    depth = train.arch_form.controls["depth"]
    assert (depth.widget.minimum(), depth.widget.maximum(), depth.widget.value()) == (1, 6, 3)
    assert depth.widget.toolTip() == next(p.help for p in unet.arch_params if p.name == "depth")
    train.arch_combo.setCurrentText("maskrcnn")
    assert tasks() == ["instance"]
    assert shown() == {"fpn_channels", "representation_size"}
    train.arch_combo.setCurrentText("unet")
    assert tasks() == ["instance", "semantic"] and shown() == {"depth", "width"}

    # a new U-Net two levels deep and 8 wide, trained on a correction
    sim = simulate_nuclei((96, 96), seed=2)
    img = viewer.add_image(sim.image, name="cells")
    labels = segment.session.annotation_layer(img)
    idx = np.nonzero(sim.labels)
    labels.data_setitem(idx, sim.labels[idx])
    train.init_combo.setCurrentIndex(1)  # from scratch
    train.repredict_check.setChecked(False)
    for name, text in (("depth", "2"), ("width", "8")):
        spin = train.arch_form.controls[name].widget
        spin.setFocus()
        spin.selectAll()
        QTest.keyClicks(spin, text)
        QTest.keyClick(spin, Qt.Key_Enter)
    assert train.arch_form.values(changed_only=True) == {"depth": 2, "width": 8}
    assert train.train(_tiny_config()) is not None
    qtbot.waitUntil(lambda: train.worker is None, timeout=300000)
    outcome = train.last_outcome
    assert outcome.ok, outcome.message
    meta = read_meta(outcome.result.path)
    assert meta.arch == "unet" and meta.arch_kwargs["depth"] == 2 and meta.arch_kwargs["width"] == 8
    assert not any(kind == "show_error" for kind, _ in errors)


def test_export_button_writes_the_selected_model(make_napari_viewer, qtbot, user_model, tmp_path, monkeypatch,
                                                 errors):
    """Export… (issue 15): the save dialog's type picks the format, the suffix is added, the export runs
    in the background and the file computes what the model computes; an existing file is refused with the
    user error's own message (kernel.errors.SegtoolError), not a type name."""
    import torch
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest
    from qtpy.QtWidgets import QFileDialog

    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.export import example_input, export_network, run_network

    viewer, segment, train = _viewer_with_widgets(make_napari_viewer)
    assert train.session.current_model.endswith("tiny")
    asked = []

    def dialog(parent, caption, start, filters):
        asked.append(filters.split(";;"))
        return str(tmp_path / "tiny-for-fiji"), "TorchScript (*.pt)"

    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(dialog))
    QTest.mouseClick(train.export_button, Qt.LeftButton)
    assert asked and "bioimage.io package (*.zip)" in asked[0] and "ONNX (*.onnx)" in asked[0]
    assert not train.export_button.isEnabled()
    qtbot.waitUntil(lambda: train.export_worker is None, timeout=180000)
    out = tmp_path / "tiny-for-fiji.pt"
    assert train.export_label.text() == f"exported to {out}", train.export_label.text()
    assert train.export_button.isEnabled()
    model = load_model(user_model)
    x = example_input(model)
    expected = run_network(export_network(model), model, x)
    with warnings.catch_warnings():  # torch.jit.load's deprecation notice: TorchScript is what Fiji runs
        warnings.simplefilter("ignore", FutureWarning)
        got = run_network(torch.jit.load(str(out)), model, x)
    for a, b in zip(expected, got):
        np.testing.assert_allclose(a, b, atol=1e-4)
    assert not any(kind == "show_error" for kind, _ in errors)

    before = out.read_bytes()
    assert train.export_model(str(out)) is not None  # not through the dialog: no permission to replace it
    qtbot.waitUntil(lambda: train.export_worker is None, timeout=60000)
    assert train.export_label.text() == f"export failed: output {out} exists; pass --overwrite to replace it"
    assert out.read_bytes() == before



@contextlib.contextmanager
def _run_ends_if_the_gui_thread_hangs(capsys, after_s: float = 120.0):
    """End the test run (exit 1, every thread's stack on the terminal) once the GUI thread has not come back
    for ``after_s`` seconds, instead of hanging.

    Before issue 13 item 6's fix, under PyQt5, the GUI thread waited inside Qt's image conversion (repainting
    the window), holding the GIL, for a thread of Qt's global pool; the jobs' pool threads waited for the GIL:
    a deadlock, so the test never got control back to fail. faulthandler's watchdog needs no GIL; the GUI
    thread re-arms it every second."""
    from qtpy.QtCore import QTimer

    with capsys.disabled():  # the real stderr, not pytest's capture file (lost when the process exits)
        terminal = os.fdopen(os.dup(2), "w")
    rearm = QTimer()
    rearm.timeout.connect(lambda: faulthandler.dump_traceback_later(after_s, exit=True, file=terminal))
    faulthandler.dump_traceback_later(after_s, exit=True, file=terminal)
    rearm.start(1000)
    try:
        yield
    finally:
        rearm.stop()
        faulthandler.cancel_dump_traceback_later()
        terminal.close()


def test_segment_and_train_at_once_keep_the_window_responsive(make_napari_viewer, qtbot, user_model, capsys):
    """Issue 13 item 6: Segment and Train clicked together froze the window 5.7-12.3 s (each alone < 100 ms).

    A 10 ms ``QTimer`` on the GUI thread (the probe of ``benchmarks/gui_stall.py``) ticks from the Train
    click, through Segment clicked while the model trains, to the end of both; its largest gap must stay well
    under the issue's 5.7 s (1 s: generous for a loaded 2-core machine; the benchmark holds the 100 ms
    target). Under PyQt5 a repaint of the window converts its backing store on Qt's global thread pool (two
    threads on 2 cores) and waits for it holding the GIL; the two jobs held both threads, so the window froze
    until Segment ended, or for good (before the fix, 352ff3f: no tick for 120 s, the GUI thread in napari's
    ``QMainWindow.event`` under the Train widget's progress update). Each job start now keeps two pool
    threads free, and training runs in a child process at a lower priority."""
    from qtpy.QtCore import QThreadPool

    from benchmarks.gui_stall import Probe
    from napari_segtool.plugin import _warmup
    from napari_segtool.plugin import segment_widget as sw
    from napari_segtool.sim import simulate_nuclei
    from tests.plugin.test_user_loop import _choose_text, _click, _type_value

    sim = simulate_nuclei((16, 256, 256), seed=3, anisotropy=2.0, snr=20.0)  # the nuclei sample's size
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)  # a laptop screen's window (issue 13 item 9)
    train = _dock(viewer, qtbot, "Train")
    segment = _dock(viewer, qtbot, "Segment")
    img = viewer.add_image(sim.image, name="stack")
    labels = segment.session.annotation_layer(img)
    idx = np.nonzero(sim.labels[0])
    labels.data_setitem((np.zeros(idx[0].size, np.intp),) + idx, sim.labels[0][idx])  # slice 0 corrected
    # a run long enough to overlap the whole Segment job; cancelled once Segment is done
    for spin, value in ((train.epochs_spin, "50"), (train.steps_spin, "50"), (train.batch_spin, "2"),
                        (train.patch_spin, "64")):
        _type_value(spin, value)
    train.repredict_check.setChecked(False)
    _choose_text(segment.scope_combo, sw.SCOPE_STACK)
    pool = QThreadPool.globalInstance()
    pool.setMaxThreadCount(2)  # a 2-core laptop
    qtbot.waitUntil(_warmup.is_warm, timeout=600000)  # the warm-up's imports are item 7, not this item
    probe = Probe()
    qtbot.wait(300)

    with _run_ends_if_the_gui_thread_hangs(capsys):
        t0 = time.perf_counter()
        _click(qtbot, train.train_button)
        qtbot.waitUntil(lambda: len(train.plot.steps) >= 1, timeout=1200000)  # the child imports torch first
        _click(qtbot, segment.run_button)
        t_segment = time.perf_counter()
        assert train.worker is not None and segment.running
        qtbot.waitUntil(lambda: pool.activeThreadCount() >= 2, timeout=10000)
        spare_threads = pool.maxThreadCount() - pool.activeThreadCount()  # checked after the probe's verdict
        qtbot.waitUntil(lambda: not segment.running, timeout=1200000)
        t_segment = time.perf_counter() - t_segment
        assert train.worker is not None, "training ended before Segment: the jobs did not run together"
        steps_during_segment = len(train.plot.steps)
        _click(qtbot, train.cancel_button)
        qtbot.waitUntil(lambda: train.worker is None, timeout=1200000)
        t1 = time.perf_counter()
    probe.timer.stop()

    assert segment.last_outcome.ok, segment.last_outcome.message
    assert train.last_outcome.status in ("ok", "cancelled"), train.last_outcome.message
    assert steps_during_segment >= 1
    gaps = probe.gaps_between(t0, t1)
    assert len(gaps) > 10
    worst = sorted(gaps)[-3:]
    print(f"\nSegment + Train at once: {t1 - t0:.1f} s, {len(gaps)} gaps, largest {[round(g) for g in worst]} ms; Segment "
          f"{t_segment:.1f} s, {steps_during_segment} training steps by its end")
    assert max(gaps) < 1000.0, f"the window froze: largest gaps {[round(g) for g in worst]} ms in {t1 - t0:.1f} s"
    assert spare_threads >= 2


def test_model_versions_list_scores_and_rolls_back(make_napari_viewer, qtbot, user_model, tmp_path, errors):
    """Model QC (issue 14): a training run records the new model as a version scored on the held-out stripe
    of the reviewed image, next to the model it was fine-tuned from; choosing the earlier version and clicking
    Roll back makes it the project's model and Segment's."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.model_versions import current_version, record_version, versions
    from napari_segtool.sim import simulate_nuclei

    sim = simulate_nuclei((96, 192), seed=2)  # 192 px wide: a 38 px held-out stripe
    viewer, segment, train = _viewer_with_widgets(make_napari_viewer)
    session = train.session
    project = session.project
    img = viewer.add_image(sim.image, name="cells")
    labels = session.annotation_layer(img)
    idx = np.nonzero(sim.labels)
    labels.data_setitem(idx, sim.labels[idx])
    session.tracker_for_labels(labels).set_reviewed(())
    session.save_all(wait=True)
    # an earlier version of the project's model: the user model, recorded as the project's first
    project.save_model(load_model(user_model), "v0")
    first = record_version(project, "v0")
    assert first.score is not None and first.score.n_objects > 0
    session.models_changed.emit()
    session.model_selected.emit(str(project.model_path("v0")))
    session.select_model(str(project.model_path("v0")))
    assert [train.versions_combo.itemData(i) for i in range(train.versions_combo.count())] == ["v0"]

    train.init_combo.setCurrentIndex(0)  # fine-tune v0
    train.repredict_check.setChecked(False)
    assert train.train(_tiny_config()) is not None
    qtbot.waitUntil(lambda: train.worker is None, timeout=1200000)
    outcome = train.last_outcome
    assert outcome.ok, outcome.message
    result = outcome.result
    assert result.parent == "v0" and result.score is not None and result.parent_score == first.score
    assert f"held-out AP@0.5 {result.score.ap50:.2f} (was {first.score.ap50:.2f} for v0)" in train.status_label.text()
    combo = train.versions_combo
    assert [combo.itemData(i) for i in range(combo.count())] == ["v0", result.name]
    assert combo.currentData() == result.name
    assert combo.currentText() == f"● {result.name} · AP50 {result.score.ap50:.2f} F1 {result.score.f1:.2f}"
    assert "fine-tuned from v0" in combo.itemData(1, Qt.ToolTipRole)
    assert current_version(project) == result.name
    assert [v.name for v in versions(project, rescore=False)] == ["v0", result.name]

    combo.setCurrentIndex(0)
    QTest.mouseClick(train.rollback_button, Qt.LeftButton)
    assert current_version(project) == "v0"
    assert session.current_model == segment.current_model_ref() == str(project.model_path("v0"))
    assert combo.currentData() == "v0" and combo.currentText().startswith("● v0")
    assert project.model_path(result.name).exists()  # rolling back deletes nothing
    # reopening projects lists their own versions
    assert train.set_project(str(tmp_path / "other"))
    assert combo.count() == 1 and combo.currentData() is None and not train.rollback_button.isEnabled()
    assert train.set_project(str(project.root))
    assert [combo.itemData(i) for i in range(combo.count())] == ["v0", result.name] and combo.currentData() == "v0"
    assert not any(kind == "show_error" for kind, _ in errors)


def test_semantic_model_versions_show_held_out_miou(make_napari_viewer, qtbot, tmp_path, errors):
    """Model QC of a semantic (binary: background / nucleus) model, by clicks and keys: the versions list and the
    status line name the metric that means something for a class map (mIoU, each class's IoU in the tooltip),
    not instance AP@0.5."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    from napari_segtool.core.model_versions import record_version
    from tests.conftest import draw_objects

    image, objects = draw_objects((96, 192), n=16, seed=3, touching=False)  # 192 px wide: a 38 px held-out stripe
    classes = np.where(objects > 0, 2, 1).astype(np.int32)
    viewer = make_napari_viewer(show=True)  # clicks reach shown widgets: the docks as the Plugins menu opens them
    _dock(viewer, qtbot, "Segment")
    train = _dock(viewer, qtbot, "Train")  # opened last: in front
    session = train.session
    project = session.project
    img = viewer.add_image(image, name="cells")
    labels = session.annotation_layer(img)
    labels.data_setitem(np.nonzero(classes), classes[np.nonzero(classes)])  # the user's class map
    session.tracker_for_labels(labels).set_reviewed(())
    session.save_all(wait=True)
    project.save_model(_semantic_blob_model(), "v0")
    first = record_version(project, "v0")
    assert first.score.metric == "mIoU"
    session.select_model(str(project.model_path("v0")))
    session.models_changed.emit()  # the lists refresh, v0 the project's model
    combo = train.versions_combo
    assert combo.currentText() == f"● v0 · mIoU {first.score.miou:.2f}"
    assert "held-out IoU: background" in combo.itemData(0, Qt.ToolTipRole)

    train.init_combo.setFocus()
    QTest.keyClick(train.init_combo, Qt.Key_Home)  # fine-tune the selected model (v0)
    for spin, text in ((train.epochs_spin, "1"), (train.steps_spin, "2"), (train.batch_spin, "2"),
                       (train.patch_spin, "64")):
        spin.setFocus()
        spin.selectAll()
        QTest.keyClicks(spin, text)
        QTest.keyClick(spin, Qt.Key_Enter)
    QTest.mouseClick(train.repredict_check, Qt.LeftButton, pos=train.repredict_check.rect().center())
    assert not train.repredict_check.isChecked()
    QTest.mouseClick(train.train_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: train.worker is None, timeout=1200000)  # a child process imports torch, then trains
    outcome = train.last_outcome
    assert outcome.ok, outcome.message
    score, parent = outcome.result.score, outcome.result.parent_score
    assert score.metric == "mIoU" and score.ap50 is None and parent == first.score
    status = train.status_label.text()
    assert f"held-out mIoU {score.miou:.2f} (was {first.score.miou:.2f} for v0)" in status, status
    assert "AP" not in status
    assert [combo.itemData(i) for i in range(combo.count())] == ["v0", outcome.result.name]
    assert combo.currentText() == f"● {outcome.result.name} · mIoU {score.miou:.2f}"
    assert "fine-tuned from v0" in combo.itemData(1, Qt.ToolTipRole)
    assert not any(kind == "show_error" for kind, _ in errors)


def test_versions_list_is_readable_in_a_1400x900_window(make_napari_viewer, qtbot, user_model, errors):
    """The closed versions combo shows a whole entry (name, AP50, F1; the parent in its tooltip) in the Train tab of a 1400x900
    window, with the widget still fitting its dock without scrolling."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QStyle, QStyleOptionComboBox

    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.model_versions import record_version
    from napari_segtool.sim import simulate_nuclei
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1400, 900)
    for title in ("Segment", "Correct", "Batch"):
        _dock(viewer, qtbot, title)
    train = _dock(viewer, qtbot, "Train")  # the four widgets' tabs, Train in front
    sim = simulate_nuclei((96, 192), seed=2)
    session = train.session
    labels = session.annotation_layer(viewer.add_image(sim.image, name="cells"))
    labels.data_setitem(np.nonzero(sim.labels), sim.labels[np.nonzero(sim.labels)])
    session.tracker_for_labels(labels).set_reviewed(())
    session.save_all(wait=True)
    session.project.save_model(load_model(user_model), "nuclei-ft-2")
    version = record_version(session.project, "nuclei-ft-2", parent="nuclei")
    session.select_model(str(session.project.model_path("nuclei-ft-2")))
    session.models_changed.emit()
    qtbot.wait(50)
    combo = train.versions_combo
    text = combo.currentText()
    assert text == f"● nuclei-ft-2 · AP50 {version.score.ap50:.2f} F1 {version.score.f1:.2f}"
    assert "fine-tuned from nuclei" in combo.itemData(combo.currentIndex(), Qt.ToolTipRole)
    option = QStyleOptionComboBox()
    combo.initStyleOption(option)
    field = combo.style().subControlRect(QStyle.CC_ComboBox, option, QStyle.SC_ComboBoxEditField, combo)
    assert combo.fontMetrics().horizontalAdvance(text) <= field.width(), (field.width(), text)
    area = train.scroll_area
    assert area.widget().minimumSizeHint().height() <= area.viewport().height()  # still no need to scroll
    assert window.width() <= 1400 and window.height() <= 900
    assert not any(kind == "show_error" for kind, _ in errors)
