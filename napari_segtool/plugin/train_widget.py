"""The Train widget: fine-tune (or train from scratch) on every correction in the project folder."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from napari.layers import Labels
from qtpy.QtCore import Qt
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)

from napari_segtool.plugin._components import ParamControls, choice_combo, spin_box
from napari_segtool.plugin._docking import scroll_layout
from napari_segtool.plugin._jobs import JobWidget, UserError
from napari_segtool.plugin._warmup import models_ready, when_models_ready
from napari_segtool.plugin.plot import LossPlot
from napari_segtool.plugin.state import SavesWithWindow, worker_threads
from napari_segtool.plugin.workers import JobOutcome, Throttle, start_job

log = logging.getLogger(__name__)

FINE_TUNE = "fine-tune the selected model"
SCRATCH = "new model (from scratch)"
#: the Export dialog's file types and the ``core.export`` format each one writes
EXPORT_FILTERS = {"bioimage.io package (*.zip)": "bioimageio", "ONNX (*.onnx)": "onnx",
                  "TorchScript (*.pt)": "torchscript"}


class TrainWidget(SavesWithWindow, JobWidget):
    """Project folder, training settings, live loss plot, Train / Cancel."""

    busy_message = "training is already running"
    cancel_message = "stopping after this step…"
    cancel_on_close = False  # closing the dock leaves the training running (its Cancel keeps the best model)

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self._t0 = 0.0
        self._cfg: Any = None
        self._repredict_planned = ""  # the labels layer a finished run will re-predict into
        self._build()
        when_models_ready(self._on_arch_changed)  # the architectures' settings need torch: imported off the GUI thread
        self.throttle = Throttle(self._refresh_ui, 250, self)
        self.session.project_changed.connect(self._show_project)
        self.session.models_changed.connect(self._suggest_name)
        self.session.models_changed.connect(self.refresh_versions)
        self.session.saved.connect(self.update_data_summary)
        self._show_project()

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        layout = scroll_layout(self)
        row = QHBoxLayout()
        self.project_edit = QLineEdit()
        self.project_edit.setToolTip("Corrections, reviewed slices, models and training history live here; "
                                     "reopening the folder restores everything")
        self.project_edit.returnPressed.connect(lambda: self.set_project(self.project_edit.text()))
        browse = QPushButton("Open…")
        browse.clicked.connect(self._browse_project)
        row.addWidget(QLabel("Project"))
        row.addWidget(self.project_edit, 1)
        row.addWidget(browse)
        layout.addLayout(row)
        self.data_label = QLabel("")
        self.data_label.setWordWrap(True)
        self.data_label.setStyleSheet("color: gray;")
        layout.addWidget(self.data_label)

        form = QFormLayout()
        self.init_combo = choice_combo([FINE_TUNE, SCRATCH])
        form.addRow("Start from", self.init_combo)
        from napari_segtool.models.registry import available_architectures  # names only: no torch

        self.arch_combo = choice_combo(available_architectures(),
                                       "Architecture of a new model (fine-tuning keeps the model's)")
        self.arch_combo.currentTextChanged.connect(self._on_arch_changed)
        form.addRow("Architecture", self.arch_combo)
        self.task_combo = choice_combo(["instance", "semantic"], "Task of a new model (fine-tuning keeps the model's task)")
        form.addRow("Task", self.task_combo)
        self.epochs_spin = spin_box(1, 10000, 20)
        form.addRow("Epochs", self.epochs_spin)
        self.budget_spin = spin_box(0, 24 * 60, 2.0, decimals=1, suffix=" min", special="no limit",
                                    tip="Stop after this much time (the best model so far is kept)")
        form.addRow("Time budget", self.budget_spin)
        self.steps_spin = spin_box(1, 10000, 25)
        form.addRow("Steps per epoch", self.steps_spin)
        self.patch_spin = spin_box(32, 1024, 128, step=32)
        form.addRow("Patch size", self.patch_spin)
        self.batch_spin = spin_box(1, 64, 4)
        form.addRow("Batch size", self.batch_spin)
        self.name_edit = QLineEdit()
        self.name_edit.setToolTip("Name of the trained model in the project")
        form.addRow("Save as", self.name_edit)
        layout.addLayout(form)
        # the new model's network settings, built from the architecture's schema (Architecture.arch_params);
        # hidden until the architectures are loaded
        self.arch_box, self.arch_form = ParamControls.group("Network (new model)", layout, optional=False)
        self.repredict_check = QCheckBox("re-predict unreviewed slices when done")
        self.repredict_check.setChecked(True)
        layout.addWidget(self.repredict_check)

        self.plot = LossPlot()
        self.add_job_controls(layout, "Train", self.train, progress_range=1000, between=self.plot,
                              cancel_tip="Stop now; the best model so far is saved")
        self.train_button = self.run_button
        # model QC (core.model_versions): every model trained in the project, scored on held-out reviewed
        # regions, on a row of its own (name, score and parent stay readable in a 1400x900 window's dock);
        # Roll back and Export below it
        self.versions_combo = QComboBox()
        self.versions_combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
        self.versions_combo.setMinimumContentsLength(12)  # long names elide: the dock stays narrow
        self.versions_combo.setToolTip("Model versions of this project, oldest first, scored on the held-out part "
                                       "of the reviewed slices (never trained on): AP@0.5 and F1 of instance "
                                       "models, mIoU of semantic ones; ● the current model")
        self.rollback_button = QPushButton("Roll back")
        self.rollback_button.setToolTip("Use the chosen version again (Segment selects it; later versions stay "
                                        "in the project)")
        self.rollback_button.clicked.connect(self._on_rollback_clicked)
        self.export_button = QPushButton("Export…")
        self.export_button.setToolTip("Save the selected model as a bioimage.io package (.zip), ONNX or "
                                      "TorchScript for other tools (runs in the background)")
        self.export_button.clicked.connect(self._on_export_clicked)
        layout.addWidget(self.versions_combo)
        row = QHBoxLayout()
        row.addWidget(self.rollback_button)
        row.addWidget(self.export_button)
        layout.addLayout(row)
        self.export_label = QLabel("")
        self.export_label.setWordWrap(True)
        self.export_label.setVisible(False)  # shown with the first export's status
        layout.addWidget(self.export_label)
        self.export_worker: Any = None

    def _on_arch_changed(self, *_args: Any) -> None:
        """Show the chosen architecture's tasks and network settings (once torch is imported)."""
        name = self.arch_combo.currentText()
        if not name or not models_ready():
            return
        from napari_segtool.models.registry import get_architecture

        arch = get_architecture(name)
        task = self.task_combo.currentText()
        self.task_combo.blockSignals(True)
        self.task_combo.clear()
        self.task_combo.addItems(list(arch.tasks))
        if task in arch.tasks:
            self.task_combo.setCurrentText(task)
        self.task_combo.blockSignals(False)
        shown = self.arch_form.show(p for p in arch.arch_params if not p.advanced)
        self.arch_box.setTitle(f"Network (new {name} model)")
        self.arch_box.setVisible(bool(shown))

    # -------------------------------------------------------------- project
    def _browse_project(self) -> None:  # pragma: no cover - interactive
        start = str(self.session.project.root) if self.session.project else str(Path.home())
        path = QFileDialog.getExistingDirectory(self, "Project folder", start)
        if path:
            self.set_project(path)

    def set_project(self, path: str) -> bool:
        if not path:
            return False
        try:
            self.session.set_project(path)
        except Exception as exc:
            show_error(f"cannot use {path} as a project folder: {exc}")
            self._show_project()
            return False
        show_info(f"project folder: {self.session.project.root}")
        return True

    def _show_project(self, *args: Any) -> None:
        project = self.session.project
        self.project_edit.setText(str(project.root) if project else "")
        self.update_data_summary()
        self._suggest_name()
        self.refresh_versions()

    def update_data_summary(self) -> None:
        project = self.session.project
        if project is None:
            self.data_label.setText("no project folder: corrections cannot be saved")
            return
        live = {t.key: t for t in self.session.trackers.values() if t.project is project}
        def annotated(entry: Any) -> bool:
            tracker = live.get(entry.key)
            if tracker is not None:  # an open image: what it holds now (its saves are on the way)
                return bool(tracker.reviewed) or bool(tracker.edited.any())
            return bool(entry.reviewed) or bool(project.annotated_planes(entry.key))

        entries = [e for e in project.entries() if annotated(e)]
        runs = len(project.history())
        models = len(project.list_models())
        self.data_label.setText(f"{len(entries)} image(s) with annotations · {models} model(s) · "
                                f"{runs} training run(s) in this project")

    def _suggest_name(self, *args: Any) -> None:
        if self.worker is not None or self.session.project is None:
            return
        ref = self.session.current_model
        base = Path(ref).name.removesuffix(".safetensors") if ref else "model"
        base = base.split("-ft")[0]
        self.name_edit.setPlaceholderText(self.session.project.unique_model_name(f"{base}-ft"))

    # ----------------------------------------------------------------- train
    def config(self) -> Any:
        from napari_segtool.core.train import TrainConfig

        budget = self.budget_spin.value() * 60.0
        return TrainConfig(epochs=self.epochs_spin.value(), steps_per_epoch=self.steps_spin.value(),
                           batch_size=self.batch_spin.value(), patch_size=self.patch_spin.value(),
                           time_budget=budget if budget > 0 else None)

    def _prepare(self, config: Any) -> Any:
        project = self.session.project
        if project is None:
            raise UserError("choose a project folder first: that is where the corrections are")
        finetune = self.init_combo.currentText() == FINE_TUNE
        ref = self.session.current_model
        if finetune and not ref:
            show_warning("no model selected to fine-tune: training a new model from scratch")
            finetune = False
        self.session.save_all(wait=True)  # autosave on train start: every edit is on disk
        cfg = config or self.config()
        if cfg.num_threads is None:
            cfg.num_threads = worker_threads()  # leave a core to the viewer
        name = self.name_edit.text().strip() or self.name_edit.placeholderText() or "model"
        arch_kwargs = {} if finetune else self.arch_form.values(changed_only=True)
        from napari_segtool.core.train_project import ProjectTrainJob

        return ProjectTrainJob(project.root, ref if finetune else None, self.task_combo.currentText(), cfg, name,
                               arch=self.arch_combo.currentText() or "unet", arch_kwargs=arch_kwargs)

    def train(self, config: Any = None) -> Any:
        """Start training in the background; returns the worker, or ``None`` with a message."""
        job = self.begin(lambda: self._prepare(config))
        if job is None:
            return None
        self._cfg = job.config
        session = self.session

        def make_job(cancel, _tiles):
            from napari_segtool.core.train_project import iter_train_project
            from napari_segtool.kernel.subprocess_jobs import iter_in_process

            # a separate process, at a lower priority: the training loop never competes with the viewer for
            # the GIL, and the viewer gets the CPU first
            result = yield from iter_in_process(iter_train_project, job, cancel=cancel, name="training", nice=10)
            if result.path is not None:
                session.get_model(str(result.path))  # into the session's cache here, off the GUI thread
            return result

        self.plot.clear()
        self.progress_bar.setValue(0)
        self._t0 = time.perf_counter()
        planned = self._tracker_to_repredict()
        self._repredict_planned = planned.labels_layer.name if planned is not None else ""
        return self.launch(make_job, status="collecting corrections…", progress_total=1000, progress_desc="training",
                           on_event=self._on_event)

    def _set_progress(self, fraction: float) -> None:
        value = int(1000 * min(1.0, max(0.0, fraction)))
        self.progress_bar.setValue(value)
        if self.napari_progress is not None:
            self.napari_progress.n = value
            self.napari_progress.refresh()

    def _on_event(self, event: Any) -> None:
        from napari_segtool.kernel.events import Progress, TrainEpoch, TrainStep

        cfg = self._cfg
        if isinstance(event, Progress):
            self.throttle.push(None, event.message)
        elif isinstance(event, TrainStep):
            self.plot.add_step(event.step, event.loss, redraw=False)  # drawn with the next throttled update
            fraction = event.step / event.total_steps if event.total_steps else 0.0
            if cfg is not None and cfg.time_budget:
                fraction = max(fraction, event.elapsed / cfg.time_budget)
            self.throttle.push(fraction, f"epoch {event.epoch + 1} · step {event.step} · loss {event.loss:.3f} · "
                                    f"{event.elapsed:.0f} s")
        elif isinstance(event, TrainEpoch):
            step = self.plot.steps[-1][0] if self.plot.steps else 0
            self.plot.add_epoch(step, event.val_metric, event.metric_name, redraw=False)
            best = " (best)" if event.is_best else ""
            self.throttle.push(None, f"epoch {event.epoch + 1}: loss {event.train_loss:.3f}, "
                                f"{event.metric_name} {event.val_metric:.3f}{best}")

    def _refresh_ui(self, fraction: float | None, text: str) -> None:
        """Progress, status and plot, at most 4 times a second (repaints are not free)."""
        if fraction is not None:
            self._set_progress(fraction)
        self.status_label.setText(text)
        self.plot.update()

    def on_job_done(self, outcome: JobOutcome) -> None:
        self.throttle.flush()
        self.end_job(outcome)
        self.update_data_summary()
        if outcome.status == "error":
            self.status_label.setText(f"failed: {outcome.message}")
            show_error(f"training failed: {outcome.message}")
            return
        if outcome.status == "cancelled" or outcome.result is None:
            self.status_label.setText("cancelled")
            return
        out = outcome.result  # core.train_project.ProjectTrainResult
        if out.path is None:
            self.status_label.setText(f"stopped ({out.stop_reason}) before the first epoch: nothing saved")
            return
        self._set_progress(1.0)
        best = next((e for e in out.epochs if e.is_best), None)
        best_txt = f", best {best.metric_name} {max(e.val_metric for e in out.epochs):.3f}" if best else ""
        self.status_label.setText(f"saved '{out.name}' ({out.stop_reason}, {out.steps} steps, "
                                  f"{out.seconds:.0f} s, {out.n_examples} planes{best_txt})")
        if out.score is not None:  # AP@0.5 of an instance model, mIoU of a semantic one
            parent = out.parent_score
            was = (f" (was {parent.value:.2f} for {out.parent})"
                   if parent is not None and parent.metric == out.score.metric else "")
            self.status_label.setText(self.status_label.text() +
                                      f" — held-out {out.score.metric} {out.score.value:.2f}{was}")
        self._use_model(out.path)
        self.name_edit.clear()
        self._suggest_name()
        if self.repredict_check.isChecked():
            tracker = self._tracker_to_repredict()
            if tracker is not None:
                self.session.predict_requested.emit(tracker.image_layer)
                return
            planned = self._repredict_planned
            why = (f"the labels layer '{planned}' was deleted during training" if planned
                   else "no image with a labels layer is open")
            self.status_label.setText(self.status_label.text() + f" — re-predict skipped: {why}")
            show_warning(f"model saved; re-predict skipped: {why}")

    def _use_model(self, path: Path) -> None:
        """Make a project model the selected one everywhere (Segment, the project settings, this list)."""
        self.session.models_changed.emit()
        self.session.model_selected.emit(str(path))
        self.session.select_model(str(path))
        self.refresh_versions()

    # -------------------------------------------------------------- versions
    def refresh_versions(self, *args: Any) -> None:
        """List the project's model versions with their held-out scores as recorded (no scoring here: GUI thread).

        A score taken on other held-out regions than the newest version's is marked with * (training
        scores every version again on today's regions, in its process).
        """
        from napari_segtool.core.model_versions import current_version, versions

        combo = self.versions_combo
        combo.clear()
        project = self.session.project
        items = versions(project, rescore=False) if project is not None else []
        current = current_version(project) if project is not None else None
        newest = next((v.score.heldout for v in reversed(items) if v.score is not None), None)
        for v in items:
            stale = v.score is not None and v.score.heldout != newest
            star = "*" if stale else ""
            score = (" ".join(f"{name} {value:.2f}{star}" for name, value in v.score.figures())
                     if v.score is not None else "no held-out objects")
            mark = "● " if v.name == current else ""
            combo.addItem(f"{mark}{v.name} · {score}", v.name)  # the parent is in the tooltip: the text fits the dock
            combo.setItemData(combo.count() - 1, self._version_tip(v, stale), Qt.ToolTipRole)
        if not items:
            combo.addItem("no trained versions yet", None)
        combo.view().setMinimumWidth(combo.view().sizeHintForColumn(0) + 24)  # the open list shows whole lines
        index = combo.findData(current)
        combo.setCurrentIndex(index if index >= 0 else combo.count() - 1)
        self.rollback_button.setEnabled(bool(items))

    @staticmethod
    def _version_tip(version: Any, stale: bool) -> str:
        """A version's tooltip: its origin, and for a semantic model the IoU of each class."""
        origin = f"fine-tuned from {version.parent}" if version.parent else "trained from scratch"
        tip = f"{version.name}: {origin}, {version.created}"
        score = version.score
        if score is not None and score.class_iou:
            tip += "\nheld-out IoU: " + ", ".join(f"{name} {iou:.2f}" for name, iou in score.class_iou.items())
        return tip + (" (* scored on earlier held-out regions)" if stale else "")

    def _on_rollback_clicked(self) -> None:
        name = self.versions_combo.currentData()
        if name:
            self.roll_back(name)

    def roll_back(self, name: str) -> bool:
        """Make the project version ``name`` the project's model and select it for Segment."""
        from napari_segtool.core.model_versions import VersionError, roll_back

        project = self.session.project
        if project is None:
            show_error("no project folder")
            return False
        try:
            version = roll_back(project, name)
        except VersionError as exc:
            show_error(str(exc))
            return False
        self._use_model(project.model_path(version.name))
        self.status_label.setText(f"rolled back to '{version.name}'")
        return True

    # ---------------------------------------------------------------- export
    def _on_export_clicked(self) -> None:
        path, fmt = self._ask_export_path()
        if path:
            self.export_model(path, fmt, overwrite=True)  # the save dialog asked before replacing a file

    def _ask_export_path(self) -> tuple[str, str]:  # pragma: no cover - interactive
        ref = self.session.current_model
        name = Path(ref).name.removesuffix(".safetensors").removesuffix(".zip") if ref else "model"
        path, chosen = QFileDialog.getSaveFileName(self, f"Export model '{name}'", str(Path.home() / f"{name}.zip"),
                                                   ";;".join(EXPORT_FILTERS))
        return path, EXPORT_FILTERS.get(chosen, "")

    def export_model(self, path: str, fmt: str = "", overwrite: bool = False) -> Any:
        """Export the selected model to ``path`` (format ``fmt``, else from the suffix) in a child process.

        Returns the worker, or ``None`` with a message. A missing suffix is added; an existing
        file is kept unless ``overwrite``. The result is reported in the label next to the button.
        """
        ref = self.session.current_model
        if not ref:
            show_error("no model selected: choose one in the Segment widget or train one")
            return None
        if self.export_worker is not None:
            show_warning("an export is already running")
            return None
        name = Path(ref).name

        def make_job(cancel, _tiles):
            from napari_segtool.core.checkpoint import resolve_model_path
            from napari_segtool.core.export import FORMATS, SUFFIXES, ExportError, export_model
            from napari_segtool.io.outputs import check_output_path
            from napari_segtool.kernel.subprocess_jobs import call_in_process

            out = Path(path).expanduser()
            kind = fmt or next((f for f, suffix in SUFFIXES.items() if out.suffix.lower() == suffix), "")
            if kind not in FORMATS:
                raise ExportError(f"cannot tell the export format of {out.name}: end it in "
                                  f"{', '.join(SUFFIXES.values())}")
            if out.suffix.lower() != SUFFIXES[kind]:
                out = out.with_name(out.name + SUFFIXES[kind])
            check_output_path(out, [resolve_model_path(ref)], overwrite=overwrite)
            yield kind
            # a process of its own: bioimage.io validation and ONNX tracing hold the GIL for seconds
            return (yield from call_in_process(export_model, ref, kind, str(out), cancel=cancel, name="export"))

        def on_event(kind: str) -> None:
            self._export_status(f"exporting {name} ({kind})…")

        self.export_button.setEnabled(False)
        self._export_status(f"exporting {name}…")
        self.export_worker, _ = start_job(make_job, on_event=on_event, on_done=self._on_export_done)
        return self.export_worker

    def _export_status(self, text: str) -> None:
        self.export_label.setText(text)
        self.export_label.setVisible(True)

    def _on_export_done(self, outcome: JobOutcome) -> None:
        self.export_worker = None
        self.export_button.setEnabled(True)
        if outcome.ok:
            self._export_status(f"exported to {outcome.result}")
            show_info(f"model exported to {outcome.result}")
        else:
            self._export_status(f"export failed: {outcome.message}")
            show_error(f"export failed: {outcome.message}")

    def _tracker_to_repredict(self) -> Any:
        """The tracker (labels + image) whose unreviewed slices a finished training re-predicts."""
        active = self.viewer.layers.selection.active
        trackers = [t for t in self.session.trackers.values()
                    if t.labels_layer in self.viewer.layers and t.image_layer in self.viewer.layers]
        if isinstance(active, Labels):
            tracker = self.session.tracker_for_labels(active)
            if tracker is not None and tracker in trackers:
                return tracker
        return trackers[-1] if trackers else None

    def _image_to_repredict(self) -> Any:
        tracker = self._tracker_to_repredict()
        return tracker.image_layer if tracker is not None else None
