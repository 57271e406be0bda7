"""The Train widget: fine-tune (or train from scratch) on every correction in the project folder."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
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
from napari_segtool.plugin.workers import JobOutcome, Throttle

log = logging.getLogger(__name__)

FINE_TUNE = "fine-tune the selected model"
SCRATCH = "new model (from scratch)"


@dataclass
class TrainOutcome:
    """What a training job hands back to the GUI."""

    result: Any = None
    path: Path | None = None
    name: str = ""
    n_examples: int = 0
    notes: list[str] = field(default_factory=list)
    keep_when_cancelled: bool = True  # cancelling keeps the best weights so far


@dataclass
class TrainJob:
    """What one training run starts from, collected on the GUI thread."""

    project: Any          # the project folder whose corrections are the training data
    init_ref: str | None  # the model to fine-tune, or None to train a new one
    task: str             # of a new model (fine-tuning keeps the model's)
    config: Any           # core.train.TrainConfig
    name: str             # the trained model's name in the project
    arch: str = "unet"    # of a new model (fine-tuning keeps the model's)
    arch_kwargs: dict[str, Any] = field(default_factory=dict)  # of a new model: the settings changed


def _same_channels(examples: list[Any], channels: int | None) -> list[Any]:
    """Average channels where they do not match (a 1-channel model on RGB corrections...)."""
    from napari_segtool.core.data import Example

    if channels is None:
        counts = {ex.image.shape[-1] for ex in examples}
        if len(counts) == 1:
            return examples
        channels = 1
    out = []
    for ex in examples:
        if ex.image.shape[-1] != channels and channels == 1:
            ex = Example(ex.image.mean(axis=-1, keepdims=True).astype(np.float32), ex.labels, ex.annotated, ex.name)
        out.append(ex)
    return out


def _tapped(job: Any, on_event: Any) -> Any:
    """``job``'s events, each shown to ``on_event`` before it is passed on; returns ``job``'s result."""
    result = None

    def run() -> Any:
        nonlocal result
        result = yield from job

    for event in run():
        on_event(event)
        yield event
    return result


def project_examples(project: Any, task: str = "instance",
                     normalization: dict | None = None) -> tuple[list[Any], list[str]]:
    """Every correction of the project as training examples, deletions included.

    ``Project.training_examples`` skips a plane whose annotated pixels hold no object
    (``make_example`` refuses them). For an instance model such a plane is what the user
    said by deleting false objects: "there is nothing here". It is kept as a background
    example (the loss only sees its annotated pixels), so a correction that only
    deletes objects trains the model too.
    """
    from napari_segtool.core.data import Example
    from napari_segtool.ops.normalize import normalize

    examples, notes = project.training_examples(task=task, normalization=normalization)
    if task != "instance":
        return examples, notes
    have = {ex.name for ex in examples}
    for entry in project.entries():
        reviewed = {tuple(i) for i in entry.reviewed if len(i) == entry.n_stack}
        for index in project.annotated_planes(entry.key):
            name = f"{entry.name}" + (f" plane {index}" if index else "")
            if name in have:
                continue
            plane = project.load_plane(entry.key, index)
            image = project.load_image_plane(entry.key, index)
            if plane is None or image is None:
                continue
            labels, edited = plane
            annotated = np.ones_like(edited) if index in reviewed else np.asarray(edited, bool)
            if not annotated.any() or (labels[annotated] > 0).any() or image.shape[:2] != labels.shape:
                continue  # not a background-only plane: the project's note says why
            image = np.asarray(image, np.float32)
            image = image[..., None] if image.ndim == 2 else image
            try:
                img = normalize(image, **(normalization or {}))
            except ValueError:
                continue
            examples.append(Example(img.astype(np.float32), labels.astype(np.int32), annotated,
                                    name + " · background only"))
            notes = [n for n in notes if not (name in n and "no objects" in n)]
    return examples, notes


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
        form.addRow("Architecture (new model)", self.arch_combo)
        self.task_combo = choice_combo(["instance", "semantic"], "Task of a new model (fine-tuning keeps the model's task)")
        form.addRow("Task (new model)", self.task_combo)
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

    def _prepare(self, config: Any) -> TrainJob:
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
        return TrainJob(project, ref if finetune else None, self.task_combo.currentText(), cfg, name,
                        arch=self.arch_combo.currentText() or "unet", arch_kwargs=arch_kwargs)

    def train(self, config: Any = None) -> Any:
        """Start training in the background; returns the worker, or ``None`` with a message."""
        job = self.begin(lambda: self._prepare(config))
        if job is None:
            return None
        self._cfg = cfg = job.config
        project, ref, task, name = job.project, job.init_ref, job.task, job.name
        arch, arch_kwargs = job.arch, job.arch_kwargs
        finetune = ref is not None
        session = self.session

        def make_job(cancel, _tiles):
            from napari_segtool.core.data import DataError
            from napari_segtool.kernel.events import Progress, TrainEpoch
            from napari_segtool.core.train import iter_train

            yield Progress("data", 0, 1, "collecting corrections")
            init = session.get_model(ref) if finetune else None
            job_task = init.meta.task if init is not None else task
            norm = init.meta.normalization if init is not None else None
            examples, notes = project_examples(project, task=job_task, normalization=norm)
            if not examples:
                why = f" ({notes[0]})" if notes else ""
                raise DataError("no training data yet: correct some objects or mark slices reviewed (R) "
                                "in the Correct widget" + why)
            examples = _same_channels(examples, init.meta.in_channels if init is not None else None)
            yield Progress("data", 1, 1, f"{len(examples)} annotated plane(s)")
            run_id = project.record_run({
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "init": ref if finetune else None,
                "task": job_task, "examples": len(examples), "config": cfg.to_dict(), "epochs": []})
            gen = iter_train(examples, arch=init.meta.arch if init is not None else arch, task=job_task,
                             init=init, config=cfg, cancel=cancel, arch_kwargs=None if finetune else arch_kwargs)
            epochs: list[dict[str, Any]] = []

            def record(event: Any) -> None:
                if isinstance(event, TrainEpoch):
                    epochs.append(event.as_dict())
                    project.record_run({"id": run_id, "epochs": epochs})  # history autosave

            result = yield from _tapped(gen, record)
            outcome = TrainOutcome(result=result, n_examples=len(examples), notes=notes)
            if not result.epochs:
                project.record_run({"id": run_id, "stop_reason": result.stop_reason, "saved": None})
                return outcome
            model_name = project.unique_model_name(name)
            result.model.meta.description = (
                f"{'Fine-tuned from ' + Path(ref).name if finetune else 'Trained from scratch'} on "
                f"{len(examples)} corrected plane(s) in {project.root.name}")
            outcome.path = project.save_model(result.model, model_name)
            outcome.name = model_name
            project.record_run({"id": run_id, "model": model_name, "stop_reason": result.stop_reason,
                                "seconds": round(result.seconds, 1), "steps": result.steps,
                                "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
            session.put_model(str(outcome.path), result.model)
            return outcome

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
        out: TrainOutcome = outcome.result
        if out.path is None:
            self.status_label.setText(f"stopped ({out.result.stop_reason}) before the first epoch: nothing saved")
            return
        self._set_progress(1.0)
        best = next((e for e in out.result.epochs if e.is_best), None)
        best_txt = f", best {best.metric_name} {max(e.val_metric for e in out.result.epochs):.3f}" if best else ""
        self.status_label.setText(f"saved '{out.name}' ({out.result.stop_reason}, {out.result.steps} steps, "
                                  f"{out.result.seconds:.0f} s, {out.n_examples} planes{best_txt})")
        self.session.models_changed.emit()
        self.session.model_selected.emit(str(out.path))
        self.session.select_model(str(out.path))
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
