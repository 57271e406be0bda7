"""The Batch widget: a whole image (dask-backed, larger than memory) chunk by chunk into a lazy Labels layer.

All the work is :func:`napari_segtool.core.batch.predict_to_zarr`, run in a
background worker (:func:`~napari_segtool.plugin.workers.start_job`) with its
progress relayed to the widget and a Cancel button; the result is read back
with ``dask.array.from_zarr``, so nothing is loaded whole.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari.layers import Image, Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)

from napari_segtool.core.project import DEFAULT_PROJECT_DIR
from napari_segtool.plugin import _layers as L
from napari_segtool.plugin._components import LayerCombo, ModelCombo, choice_combo, spin_box
from napari_segtool.plugin._docking import scroll_layout
from napari_segtool.plugin._jobs import JobWidget, UserError
from napari_segtool.plugin._warmup import when_models_ready
from napari_segtool.plugin.state import worker_threads
from napari_segtool.plugin.workers import JobOutcome, Throttle


SCHED_THREADS = "threads (this process)"
SCHED_LOCAL = "local cluster, N workers"
SCHED_ADDRESS = "cluster address tcp://…"


@dataclass
class BatchJob:
    """Everything one run needs, collected on the GUI thread before it starts."""

    image_name: str
    model_ref: str
    data: Any                    # the layer's (level 0) data, numpy or dask, as is
    axes: str
    out_path: Path
    chunk_size: int
    workers: int | None          # local cluster size
    scheduler: str | None        # cluster address
    threads_per_worker: int | None
    scale: tuple[float, ...]     # of the labels (the image's, without channels)
    translate: tuple[float, ...]
    labels_axes: str
    labels: Any = None           # the written zarr opened lazily, in the worker (dask's import, zarr's metadata)

    @property
    def layer_name(self) -> str:
        return f"{self.image_name} labels (batch)"


class BatchWidget(JobWidget):
    """Image, model, output .zarr, chunk size and scheduler; Run / Cancel."""

    busy_message = "a batch run is already going; cancel it first"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self.last_job: BatchJob | None = None
        self._auto_path = True  # follow the image's name until the user types a path
        self._steps_total = 0
        self._build()
        self.throttle = Throttle(self._show_progress, 250, self)
        self._update_default_path()
        when_models_ready(self.model_combo.refresh)
        self.image_combo.refreshed.connect(self._update_default_path)
        self.session.project_changed.connect(self._update_default_path)

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        layout = scroll_layout(self)
        form = QFormLayout()
        self.image_combo = LayerCombo(
            self.viewer, Image, tip="Image layer to segment whole (a dask-backed layer is read chunk by chunk)")
        self.image_combo.currentTextChanged.connect(self._update_default_path)
        form.addRow("Image", self.image_combo)
        self.model_combo = ModelCombo(self.session, follow_session=False,
                                      tip="The models of the Segment widget (load other files there)")
        form.addRow("Model", self.model_combo)
        self.path_edit = QLineEdit()
        self.path_edit.setToolTip("Output zarr folder (replaced only once the run is complete). "
                                  "Cluster workers must be able to write there.")
        self.path_edit.textEdited.connect(self._on_path_edited)
        browse = QPushButton("…")
        browse.setMaximumWidth(32)
        browse.setToolTip("Choose the output .zarr folder")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.path_edit)
        row.addWidget(browse)
        form.addRow("Output", row)
        self.chunk_spin = spin_box(64, 8192, 1024, step=128, suffix=" px",
                                   tip="YX edge of a chunk; memory per task grows with its square")
        form.addRow("Chunk size", self.chunk_spin)
        self.scheduler_combo = choice_combo([SCHED_THREADS, SCHED_LOCAL, SCHED_ADDRESS],
                                            "Where chunks run: threads here, worker processes started here, "
                                            "or a running dask scheduler")
        self.scheduler_combo.currentTextChanged.connect(self._update_scheduler_fields)
        form.addRow("Run on", self.scheduler_combo)
        self.workers_spin = QSpinBox()
        self.workers_spin.setRange(1, 256)
        self.workers_spin.setValue(2)
        self.workers_spin.setToolTip("Worker processes of the local cluster")
        form.addRow("Workers", self.workers_spin)
        self.address_edit = QLineEdit()
        self.address_edit.setPlaceholderText("tcp://host:8786")
        self.address_edit.setToolTip("Address of a running dask scheduler")
        form.addRow("Address", self.address_edit)
        layout.addLayout(form)

        self.add_job_controls(layout, "Run batch", self.run)
        self.progress_bar.setToolTip("Steps: one chunk in one pass. Instance models make two passes over the "
                                     "chunks (predict, then join objects cut by chunk borders).")
        layout.addStretch(1)
        self._update_scheduler_fields()

    def _update_scheduler_fields(self, _text: str = "") -> None:
        choice = self.scheduler_combo.currentText()
        self.workers_spin.setEnabled(choice == SCHED_LOCAL)
        self.address_edit.setEnabled(choice == SCHED_ADDRESS)

    # --------------------------------------------------------------- combos
    def refresh_layers(self, event: Any = None) -> None:
        """List the image layers, keeping the current choice (else the selected layer)."""
        self.image_combo.refresh()

    def select_model(self, ref: str | None) -> None:
        self.model_combo.select(ref)

    def default_output(self, image_name: str) -> Path:
        """``<project>/batch/<image>_labels.zarr``."""
        root = self.session.project.root if self.session.project is not None else \
            Path(DEFAULT_PROJECT_DIR).expanduser()
        safe = re.sub(r"[^\w.-]+", "_", image_name).strip("._") or "image"
        return root / "batch" / f"{safe}_labels.zarr"

    def _update_default_path(self, *_args: Any) -> None:
        name = self.image_combo.currentText()
        if self._auto_path and name:
            self.path_edit.setText(str(self.default_output(name)))

    def _on_path_edited(self, text: str) -> None:
        self._auto_path = not text.strip()

    def _browse(self) -> None:  # pragma: no cover - interactive
        start = self.path_edit.text() or str(self.default_output(self.image_combo.currentText() or "image"))
        path, _ = QFileDialog.getSaveFileName(self, "Output zarr folder", start, "Zarr (*.zarr)")
        if path:
            self.path_edit.setText(path if path.endswith(".zarr") else path + ".zarr")
            self._auto_path = False

    # ------------------------------------------------------------------ run
    def run(self, image_layer: Image | None = None) -> Any:
        """Start the batch run; returns the worker, or ``None`` (with a message) when it cannot start."""
        job = self.begin(lambda: self._prepare(image_layer))
        if job is None:
            return None
        self.last_job = job
        self.progress_bar.setRange(0, 0)  # busy until the first chunk reports
        self._steps_total = 0
        session = self.session
        cluster = job.workers is not None or job.scheduler is not None

        def make_job(cancel, progress):
            from napari_segtool.core.batch import predict_to_zarr
            from napari_segtool.kernel.events import Progress

            yield Progress("load", 0, 1, "loading model…")
            model = session.get_model(job.model_ref)
            yield Progress("start", 0, 1, "connecting to the cluster…" if cluster else "planning chunks…")
            report = predict_to_zarr(model, job.data, job.out_path, axes=job.axes, chunk_size=job.chunk_size,
                                     workers=job.workers, scheduler=job.scheduler,
                                     threads_per_worker=job.threads_per_worker, progress=progress, cancel=cancel)
            job.labels = _open_lazily(report.out_path)
            return report

        return self.launch(make_job, status="loading model…", progress_total=0, progress_desc=f"batch {job.image_name}",
                           on_event=self._on_event, on_tiles=self._on_steps)

    def _prepare(self, image_layer: Image | None) -> BatchJob:
        image_layer, axes = self.input_image(image_layer, self.image_combo.layer())
        ref = self.model_combo.current_ref()
        if not ref:
            raise UserError("no model yet — train one in the Train widget, or load one in the Segment widget")
        text = self.path_edit.text().strip()
        if not text.endswith(".zarr"):
            raise UserError("the output must be a folder ending in .zarr")
        out_path = Path(text).expanduser()
        source = L.source_of(image_layer)
        if source and Path(source).expanduser().resolve() == out_path.resolve():
            raise UserError("the output would replace the image it reads; choose another path")
        workers = scheduler = threads = None
        choice = self.scheduler_combo.currentText()
        if choice == SCHED_LOCAL:
            workers = int(self.workers_spin.value())
        elif choice == SCHED_ADDRESS:
            scheduler = self.address_edit.text().strip()
            if "://" not in scheduler:
                raise UserError("enter the dask scheduler's address, e.g. tcp://host:8786")
        else:  # torch threads of the one chunk running at a time (core.batch): the viewer keeps a core
            threads = worker_threads()
        return BatchJob(image_layer.name, ref, L.layer_data(image_layer), axes, out_path,
                        int(self.chunk_spin.value()), workers, scheduler, threads,
                        L.spatial_scale(image_layer), L.spatial_translate(image_layer), L.labels_axes(axes))

    # --------------------------------------------------------------- events
    def _on_event(self, event: Any) -> None:
        self.throttle.push(0, 0, getattr(event, "message", "") or "working…")

    def _on_steps(self, done: int, total: int) -> None:
        self._steps_total = total
        self.throttle.push(done, total, f"step {done}/{total}")

    def _show_progress(self, done: int, total: int, text: str) -> None:
        """Progress bar (busy while total is 0), napari's activity progress and the status line."""
        if self.worker is None:
            return
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(done)
        bar = self.napari_progress
        if bar is not None and total:
            bar.total = total
            bar.n = done
            bar.refresh()
        self.status_label.setText(text)

    def on_job_done(self, outcome: JobOutcome) -> None:
        # the bar's last value on a turn of its own: QProgressBar.setValue repaints the window synchronously
        # (60-80 ms on a software-rendered display), and this turn adds the result layer (plugin/_reveal.py)
        QTimer.singleShot(0, lambda: self._show_done(outcome.ok))
        self.finish_job(outcome, what="batch run", nothing_done="nothing was written", result_name="batch result",
                        apply=self._show_result)

    def _show_done(self, ok: bool) -> None:
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1 if ok else 0)

    def _show_result(self, report: Any) -> None:
        """Show the lazy Labels layer reading the written zarr (opened by the worker): added the first time,
        its data replaced when the same image is run again."""
        job = self.last_job
        data = job.labels if job.labels is not None else _open_lazily(report.out_path)
        layer, _ = L.show_in_layer(  # a re-run updates the layer it showed before: no new layer to build
            self.viewer, Labels, data, job.layer_name, scale=job.scale, translate=job.translate,
            metadata={L.META_KEY: {"axes": job.labels_axes, "image": job.image_name,
                                   "source": str(report.out_path)}})
        self.viewer.layers.selection.active = layer
        objects = f"{report.n_objects} objects, " if report.n_objects else ""
        steps = self._steps_total
        steps_text = f"{steps} steps ({report.n_chunks} chunks)" if steps else f"{report.n_chunks} chunks"
        self.status_label.setText(f"done: {objects}{steps_text} in {report.seconds:.1f} s "
                                  f"({report.mpx_per_s:.2f} Mpx/s) → {report.out_path}")


def _open_lazily(path: Path) -> Any:
    """The labels written to the zarr at ``path`` as a dask array: nothing is read until napari shows a slice.

    Called in the worker: the first ``import dask.array`` (~0.2 s) and zarr's metadata read would
    otherwise run on the GUI thread when the result layer is added.
    """
    import dask.array as da

    return da.from_zarr(str(path))
