"""The Segment widget: run a model on an image layer, in the background, into a Labels layer."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QSpinBox,
    QWidget,
)

from napari_segtool.plugin import _layers as L
from napari_segtool.plugin._components import LayerCombo, ModelCombo, ParamControls, choice_combo
from napari_segtool.plugin._docking import scroll_layout
from napari_segtool.plugin.object_size import ObjectSizeRow
from napari_segtool.plugin._jobs import JobWidget, UserError
from napari_segtool.plugin.astro import fits_features
from napari_segtool.plugin._warmup import models_ready, when_models_ready
from napari_segtool.plugin.state import DEFAULT_MODELS, LOAD_FROM_DISK, SavesWithWindow, worker_threads
from napari_segtool.plugin.workers import JobOutcome, Throttle


SCOPE_SLICE = "current slice"
SCOPE_VIEW = "visible field of view"
SCOPE_STACK = "whole stack (unreviewed slices)"
AUTO_OUTPUT = "annotation layer (auto)"
#: "Load from disk": a model folder (its model.json / model.safetensors), a weights file, or a
#: bioimage.io package napari-segtool exported (core.checkpoint.load_bioimageio reads it back)
MODEL_FILE_FILTER = "Models (*.safetensors model.json *.zip);;All files (*)"


@dataclass
class SegmentJob:
    """Everything one Segment run needs, collected on the GUI thread before it starts."""

    image: Image
    model_ref: str
    target: Labels | None        # the labels layer to write into (None: the annotation layer, made at the end)
    scope: str
    tile_size: int | None
    diameter: float | None       # object size given by the user (None: estimated)
    postprocess: dict[str, Any]  # the settings the user changed, among the model's
    shape: tuple[int, ...]       # spatial shape of the labels
    n_stack: int
    data: Any = None             # what iter_predict reads: the whole layer, or one (cropped) plane YXC
    axes: str = "YXC"
    planes: list[tuple[int, ...]] | None = None  # whole stack: the planes to predict (None: all)
    out: np.ndarray | None = None                # whole stack: labels to fill (reviewed planes kept), made in the worker
    todo: list[tuple[int, ...]] = field(default_factory=list)
    total: int = 1
    crop: tuple[slice, slice] | None = None      # one plane: the (Y, X) region predicted
    index: tuple[int, ...] = ()                  # one plane: its stack index
    probabilities: bool = False                  # asked of the model (2D runs: kept for the prompt tools)
    show_probabilities: bool = False             # and shown as a layer
    task: str = "instance"                       # the model's, known once it is loaded
    layout: Any = None                           # its ProbabilityLayout (kernel.params), known once it is loaded
    n_objects: int | None = None                 # whole stack: objects in the result, counted in the worker
    # whole stack into a new annotation layer: the edit tracker's two snapshots of the result (what the labels
    # were before any edit), copied in the worker so the GUI thread copies nothing when the layer appears
    snapshots: tuple[np.ndarray, np.ndarray] | None = None


class SegmentWidget(SavesWithWindow, JobWidget):
    """Choose image, model, scope, tile size and thresholds; Run / Cancel."""

    busy_message = "a segmentation is already running; cancel it first"

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(napari_viewer, parent)
        self.last_run: SegmentJob | None = None
        self._meta_cache: dict[str, Any] = {}
        self._build()
        self.throttle = Throttle(self._show_progress, 250, self)
        when_models_ready(self._on_models_ready)
        self.viewer.layers.events.inserted.connect(self._on_layer_inserted)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self.image_combo.currentTextChanged.connect(self._on_image_changed)
        self.image_combo.refreshed.connect(self.object_size.image_changed)  # the first image arrives silently
        self.session.predict_requested.connect(self._on_predict_requested)

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        layout = scroll_layout(self)
        form = QFormLayout()
        self.image_combo = LayerCombo(self.viewer, Image, tip="Image layer to segment")
        form.addRow("Image", self.image_combo)
        self.model_combo = ModelCombo(self.session, load_from_disk=True,
                                      tip="Project models, shipped models, your models, or a file")
        self.model_combo.selected.connect(self._update_model_info)
        self.model_combo.load_requested.connect(self._on_load_requested)
        form.addRow("Model", self.model_combo)
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        self.model_info.setStyleSheet("color: gray;")
        form.addRow("", self.model_info)
        self.scope_combo = choice_combo([SCOPE_SLICE, SCOPE_VIEW, SCOPE_STACK],
                                        "What to segment. Reviewed slices are never overwritten; your edits are kept.")
        form.addRow("Scope", self.scope_combo)
        self.output_combo = LayerCombo(self.viewer, Labels, first_item=AUTO_OUTPUT, prefer_active=False,
                                       tip="Labels layer that receives the result")
        form.addRow("Output", self.output_combo)
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 4096)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setSpecialValueText("model default")
        self.tile_spin.setToolTip("Tile edge in pixels; smaller uses less memory")
        form.addRow("Tile size", self.tile_spin)
        self.object_size = ObjectSizeRow(self.viewer, self.session, self.current_image)
        self.diameter_spin = self.object_size.spin
        form.addRow("Object size", self.object_size)
        layout.addLayout(form)

        # the selected model's post-processing settings, built from its architecture's schema
        # (Architecture.postprocess_params: ranges, choices, help): "model default" until the user sets one;
        # hidden until a model is chosen
        self.pp_box, self.pp_form = ParamControls.group("Post-processing (this model)", layout, optional=True)

        self.prob_check = QCheckBox("also show probabilities (2D runs)")
        layout.addWidget(self.prob_check)
        self.add_job_controls(layout, "Segment", self.run)
        layout.addStretch(1)

    @property
    def pp_controls(self) -> dict[str, tuple[QLabel, Any]]:
        """Setting name -> (label, control) of every post-processing control made so far (shown or not)."""
        return {name: (c.label, c.widget) for name, c in self.pp_form.controls.items()}

    def pp_control(self, name: str) -> Any:
        """The control of post-processing setting ``name`` (made from the first registered architecture that
        declares it, if no model needed it yet)."""
        if name not in self.pp_form.controls:
            from napari_segtool.models.registry import available_architectures, get_architecture

            param = next((p for a in available_architectures() for p in get_architecture(a).postprocess_params
                          if p.name == name), None)
            if param is None or self.pp_form.control(param) is None:
                raise KeyError(f"no architecture has a post-processing setting '{name}'")
        return self.pp_form.controls[name].widget

    # the controls of the shipped architectures' settings, by their old names (scripts, tests)
    fg_spin = property(lambda self: self.pp_control("fg_threshold"))
    seed_spin = property(lambda self: self.pp_control("seed_threshold"))
    score_spin = property(lambda self: self.pp_control("score_threshold"))
    mask_spin = property(lambda self: self.pp_control("mask_threshold"))
    min_size_spin = property(lambda self: self.pp_control("min_size"))

    # --------------------------------------------------------------- combos
    def refresh_layers(self, event: Any = None) -> None:
        self.image_combo.refresh()
        self.output_combo.refresh()

    def current_image(self) -> Image | None:
        return self.image_combo.layer()

    def _on_models_ready(self) -> None:
        self.model_combo.refresh()
        self._propose_model(self.current_image())

    def _on_layer_inserted(self, event: Any = None) -> None:
        """A new image (File ▸ Open, a sample, a script) becomes the image to segment."""
        layer = getattr(event, "value", None)
        if _is_input_image(layer) and self.image_combo.findText(layer.name) >= 0:
            self.image_combo.setCurrentText(layer.name)

    def _on_active_layer(self, event: Any = None) -> None:
        """Selecting an image in the layer list selects it here too (labels and other layers do not)."""
        layer = self.viewer.layers.selection.active
        if _is_input_image(layer) and self.image_combo.findText(layer.name) >= 0:
            self.image_combo.setCurrentText(layer.name)

    def _on_image_changed(self, name: str) -> None:
        self._propose_model(self.current_image())
        self.object_size.image_changed()

    def _propose_model(self, layer: Image | None) -> None:
        """Propose the shipped model for this kind of image (``astro-sources`` for FITS / sky images).

        Only the shipped default of another kind of image is swapped: a project, user or file
        model, or another shipped model the user chose (``nuclei-maskrcnn``), stays selected.
        """
        if layer is None or self.running or not models_ready():
            return
        ref = self.model_combo.currentData()
        sources = {c.ref: c.source for c in self.session.model_choices()}
        kind = L.image_kind(layer)
        if ref not in (None, LOAD_FROM_DISK):
            name = Path(ref).name.removesuffix(".safetensors")
            others = {n for k, names in DEFAULT_MODELS.items() if k != kind for n in names}
            if sources.get(ref) != "shipped" or name not in others:
                return
        wanted = self.session.default_model_ref(kind)
        if wanted and wanted != ref and sources.get(wanted) == "shipped" and self.model_combo.findData(wanted) >= 0:
            self.select_model(wanted)
            self.status_label.setText(f"model {Path(wanted).name} proposed for '{layer.name}'")

    def select_model(self, ref: str | None) -> None:
        self.model_combo.select(ref)

    def _on_load_requested(self) -> None:
        path = self._ask_model_path()
        if path:
            self.load_model_file(path)
        else:
            self.select_model(self.session.current_model)

    def _ask_model_path(self) -> str:
        path, _ = QFileDialog.getOpenFileName(self, "Load a napari-segtool model", str(Path.home()),
                                              MODEL_FILE_FILTER)
        if path.endswith("model.json") or path.endswith("model.safetensors"):
            path = str(Path(path).parent)
        return path

    def load_model_file(self, path: str) -> bool:
        try:
            choice = self.session.add_model_file(path)
        except Exception as exc:
            show_error(f"cannot load model {path}: {exc}")
            self.select_model(self.session.current_model)
            return False
        self.select_model(choice.ref)
        return True

    def _update_model_info(self, *_args: Any) -> None:
        ref = self.model_combo.currentData()
        self._show_model_controls(self._model_meta(ref))
        if ref in (None, LOAD_FROM_DISK):
            self.model_info.setText("no model yet — train one in the Train widget" if ref is None else "")
            return
        self.session.select_model(ref)
        for choice in self.session.model_choices():
            if choice.ref == ref:
                self.model_info.setText(choice.summary)
                return

    def current_model_ref(self) -> str | None:
        return self.model_combo.current_ref()

    def postprocess_overrides(self) -> dict[str, Any]:
        """The settings the user changed, among those the selected model has."""
        return self.pp_form.values()

    def _show_model_controls(self, meta: Any) -> None:
        """Show the controls of the post-processing settings that act on this model: its architecture's
        (``postprocess_params``) for its task, without the advanced ones; "model default" shows its value."""
        params: tuple = ()
        if meta is not None:
            from napari_segtool.models.registry import get_architecture

            try:
                params = get_architecture(meta.arch).params_for(meta.task, advanced=False)
            except ValueError:  # an architecture this installation lacks: the run reports it
                params = ()
        defaults = dict(getattr(meta, "postprocess", None) or {})
        shown = self.pp_form.show(params, defaults)
        self.pp_box.setVisible(bool(shown))
        arch = getattr(meta, "arch", "")
        self.pp_box.setTitle(f"Post-processing ({arch})" if arch else "Post-processing")

    def _model_meta(self, ref: str | None) -> Any:
        if ref in (None, LOAD_FROM_DISK):
            return None
        if ref not in self._meta_cache:
            from napari_segtool.core.checkpoint import read_meta

            try:
                self._meta_cache[ref] = read_meta(ref)
            except Exception:  # unreadable: the run reports why
                self._meta_cache[ref] = None
        return self._meta_cache[ref]

    # ------------------------------------------------------------------ run
    def run(self, image_layer: Image | None = None, scope: str | None = None) -> Any:
        """Start segmentation; returns the worker, or ``None`` (with a message) when it cannot start."""
        job = self.begin(lambda: self._prepare(image_layer, scope))
        if job is None:
            return None
        self.last_run = job
        self.progress_bar.setRange(0, max(1, job.total))
        self.progress_bar.setValue(0)
        session = self.session

        def make_job(cancel, tile_callback):
            from napari_segtool.kernel.events import Progress
            from napari_segtool.core.predict import iter_predict

            yield Progress("load", 0, 1, "loading model")
            if job.crop is None:  # whole stack: the array to fill is made here, never on the GUI thread
                job.out = _stack_labels(job)
            model = session.get_model(job.model_ref)
            job.task = model.meta.task
            if job.task == "regression":  # bulge/disk decomposition: component images, no labels
                return _decompose(model, job, cancel, tile_callback)
            job.layout = model.architecture.probability_layout(model.meta)
            prediction = yield from iter_predict(
                model, job.data, axes=job.axes, planes=job.planes, out=job.out,
                tile_size=job.tile_size, return_probabilities=job.probabilities, cancel=cancel,
                tile_callback=tile_callback, num_threads=worker_threads(), diameter=job.diameter,
                **job.postprocess)
            if job.crop is None:
                job.n_objects = int(len(np.unique(prediction.labels))) - 1  # a sort: seconds on 2048² stacks
                if job.target is None:  # the new layer's array (uint16 while the ids fit) and its snapshots
                    prediction.labels = L.compact_labels(prediction.labels)
                    job.snapshots = (prediction.labels.copy(), prediction.labels.copy())
            return prediction

        return self.launch(make_job, status="loading model…", progress_total=max(1, job.total),
                           progress_desc=f"segmenting {job.image.name}", on_event=self._on_event,
                           on_tiles=self._on_tiles)

    def _prepare(self, image_layer: Image | None, scope: str | None) -> SegmentJob:
        image_layer, axes = self.input_image(image_layer, self.current_image())
        ref = self.current_model_ref()
        if ref is None:
            raise UserError("no model yet — train one in the Train widget, or load one from disk")
        scope = scope or self.scope_combo.currentText()
        shape = L.spatial_shape(image_layer)
        n_stack = len(shape) - 2
        target = self._target_layer(image_layer, shape)  # None: the annotation layer is made with the result
        tracker = self.session.tracker_for_labels(target) if target is not None else None
        reviewed = tracker.reviewed if tracker is not None else set()
        job = SegmentJob(image=image_layer, model_ref=ref, target=target, scope=scope,
                         tile_size=self.tile_spin.value() or None,
                         diameter=self.object_size.diameter_px(),
                         postprocess=self.postprocess_overrides(), shape=shape, n_stack=n_stack)
        if scope == SCOPE_STACK and n_stack > 0:
            all_planes = [tuple(int(i) for i in p) for p in np.ndindex(*shape[:n_stack])]
            todo = [p for p in all_planes if p not in reviewed]
            if not todo:
                raise UserError("every slice is reviewed: nothing to segment")
            job.data, job.axes, job.todo, job.total = L.layer_data(image_layer), axes, todo, len(todo)
            job.planes = None if len(todo) == len(all_planes) else todo
            job.postprocess.setdefault("z_scale", L.z_anisotropy(image_layer))  # 3D watershed of stacks
            return job
        # a single plane (current slice, or its visible part)
        data, _canon = L.canonical(image_layer)
        index = L.current_plane(self.viewer, target) if target is not None else \
            _plane_of(self.viewer, image_layer, n_stack)
        if index in reviewed:
            raise UserError(f"slice {index} is marked reviewed; unmark it (R) to segment it again")
        crop = (slice(0, shape[-2]), slice(0, shape[-1]))
        if scope == SCOPE_VIEW:
            region = L.visible_region(self.viewer, image_layer)
            if region is None:
                raise UserError("the visible field of view needs the 2D view with the image on screen")
            crop = region
        plane = data[index] if index else data
        job.data, job.todo, job.crop, job.index = plane[crop], [index], crop, index
        job.probabilities = True  # the session keeps the maps: the Correct widget's prompt tools act on them
        job.show_probabilities = self.prob_check.isChecked()
        return job

    def _target_layer(self, image_layer: Image, shape: tuple[int, ...]) -> Labels | None:
        """The labels layer to write into, or ``None`` to create the annotation layer at the end."""
        choice = self.output_combo.currentText()
        if choice and choice != AUTO_OUTPUT and choice in self.viewer.layers:
            layer = self.viewer.layers[choice]
            if tuple(layer.data.shape) != tuple(shape):
                raise UserError(f"labels layer '{choice}' has shape {tuple(layer.data.shape)}, "
                                 f"the image needs {tuple(shape)}")
            tracker = self.session.tracker_for_labels(layer)
            if tracker is None or tracker.image_layer is not image_layer:
                self.session.track(layer, image_layer)
            return layer
        existing = self.session.annotation_layer(image_layer, create=False)
        if existing is not None:
            return existing
        if self._has_stored(image_layer, shape):  # reopen the stored corrections first
            return self.session.annotation_layer(image_layer)
        return None

    def _has_stored(self, image_layer: Image, shape: tuple[int, ...]) -> bool:
        project = self.session.project
        return project is not None and project.find(image_layer.name, L.source_of(image_layer), shape) is not None

    # --------------------------------------------------------------- events
    def _on_event(self, event: Any) -> None:
        stage = getattr(event, "stage", "")
        if stage == "load":
            self.throttle.push(0, 1, "segmenting…")
            return
        done, total = getattr(event, "done", 0), getattr(event, "total", 1)
        self.throttle.push(done, total, f"{event.message or 'segmenting'}: {done}/{total}")

    def _on_tiles(self, done: int, total: int) -> None:
        if (self.last_run is None or self.last_run.total == 1) and total:
            self.throttle.push(done, total, f"tiles {done}/{total}")

    def _show_progress(self, done: int, total: int, text: str) -> None:
        """Progress bar, napari's activity progress and the status line (throttled to 4 Hz)."""
        if self.worker is None:
            return
        self.progress_bar.setRange(0, max(1, total))
        self.progress_bar.setValue(done)
        bar = self.napari_progress
        if bar is not None:
            if bar.total != max(1, total):
                bar.total = max(1, total)
            bar.n = done
            bar.refresh()
        self.status_label.setText(text)

    def on_job_done(self, outcome: JobOutcome) -> None:
        self.finish_job(outcome, what="segmentation", nothing_done="nothing was changed",
                        result_name="segmentation", apply=self._apply)

    def _apply(self, prediction: Any) -> None:
        job = self.last_run
        image = job.image
        if image not in self.viewer.layers:
            raise RuntimeError(f"image layer '{image.name}' was removed meanwhile")
        if job.task == "regression":
            return self._show_components(prediction, image, job)
        target = job.target
        if target is None or target not in self.viewer.layers:
            target = self.session.annotation_layer(image, create=False)
        fresh = None  # the annotation layer is made once, holding the result: no zeros to fill, no merge
        if target is None:
            fresh = _new_labels(job, prediction)
            target = self.session.annotation_layer(image, data=fresh, snapshots=job.snapshots, next_turn=True)
        fresh = fresh is not None and target.data is fresh  # (not when the project had stored labels)
        tracker = self.session.tracker_for_labels(target) or self.session.track(target, image)
        rows = fits_features(image, target, job.data, job.crop, prediction)  # FITS: catalogue, NaN unlabelled
        instance = job.task == "instance"
        if job.crop is None:  # whole stack: `out` holds new planes, ids already made unique
            labels = prediction.labels
            updates = {p: ((slice(None), slice(None)), np.asarray(labels[p])) for p in job.todo}
        else:
            pred = np.asarray(prediction.labels).astype(np.int32)
            offset = 0
            if instance and pred.max() > 0 and not fresh:
                offset = int(np.asarray(target.data).max())
                pred = np.where(pred > 0, pred + offset, 0)
            updates = {job.index: (job.crop, pred)}
            self._show_table(target, rows, offset, job.crop)
        written = list(updates) if fresh else tracker.apply_prediction(updates, instance=instance)
        if prediction.probabilities is not None and job.crop is not None:
            if instance:
                self.session.keep_maps(image, job.index, job.crop, prediction.probabilities, job.layout)
            if job.show_probabilities:
                self._show_probabilities(prediction.probabilities, image, job, instance)
        n = job.n_objects if job.n_objects is not None else \
            len(np.unique(np.asarray(target.data)[job.index] if job.index else np.asarray(target.data))) - 1
        notes = "; ".join(prediction.notes)
        kept = len(tracker.reviewed) if job.crop is None else 0
        edited = int(tracker.edited.any())
        msg = f"done: {n} objects in '{target.name}' ({len(written)} slice(s) written" + \
            (f", {kept} reviewed slice(s) kept" if kept else "") + \
            (", your edits kept" if edited else "") + ")"
        size = getattr(prediction, "diameter", None)  # an estimate is also in the core's notes
        if job.diameter:
            msg += f" · object size {job.diameter:.0f} px (given)"
        elif size:
            self.object_size.show_estimate(size)
        self.status_label.setText(msg + (f" — {notes}" if notes else ""))
        self.viewer.layers.selection.active = target
        self.refresh_layers()

    @staticmethod
    def _show_table(target: Labels, rows: list[dict[str, Any]], offset: int, crop: tuple[slice, slice]) -> None:
        """Per-object rows (Mask R-CNN scores, astronomy source catalogue) become the layer's features:
        napari shows them for the object under the cursor, and ``layer.features`` is a DataFrame."""
        if not rows or "label" not in rows[0]:
            return
        import pandas as pd

        table = pd.DataFrame(rows)
        table.insert(0, "index", table.pop("label").astype(int) + offset)
        for axis, sl in zip("yx", crop):  # positions in the whole plane, not the predicted region
            if axis in table:
                table[axis] += sl.start or 0
        old = target.features
        if len(old) and "index" in old:  # keep the rows of objects from earlier runs (other slices/regions)
            table = pd.concat([old[~old["index"].isin(table["index"])], table], ignore_index=True)
        target.features = table

    def _show_probabilities(self, probs: np.ndarray, image: Image, job: SegmentJob, instance: bool) -> None:
        crop = job.crop
        scale = L.spatial_scale(image)[-2:]
        translate = np.asarray(L.spatial_translate(image)[-2:]) + np.asarray(
            [crop[0].start, crop[1].start]) * np.asarray(scale)
        layout = job.layout  # what the architecture's maps are (Mask R-CNN: one; U-Net: interior + boundary...)
        if layout is not None and layout.has_foreground:
            data = layout.foreground(probs).astype(np.float32)
            name = f"{image.name} object probability"
        else:
            data = probs.astype(np.float32)
            name = f"{image.name} class probabilities"
        kwargs = dict(name=name, colormap="magma", opacity=0.6, blending="additive",
                      contrast_limits=(0.0, 1.0), metadata={L.META_KEY: {"derived_from": image.name}})
        if data.ndim == 3:
            scale, translate = (1.0,) + tuple(scale), (0.0,) + tuple(translate)
        # the next run's map replaces this one's in the same layer: only the first run adds it
        L.show_in_layer(self.viewer, Image, data, scale=tuple(scale), translate=tuple(translate), **kwargs)

    def _show_components(self, result: Any, image: Image, job: SegmentJob) -> None:
        """A bulge/disk decomposition (``core.decompose``): one image layer per component, over the region run."""
        scale = L.spatial_scale(image)[-2:]
        translate = np.asarray(L.spatial_translate(image)[-2:]) + np.asarray(
            [job.crop[0].start, job.crop[1].start]) * np.asarray(scale)
        for component, flux in result.layers().items():
            name = f"{image.name} {component}"
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.viewer.add_image(flux, name=name, scale=scale, translate=translate, colormap="gray",
                                  metadata={L.META_KEY: {"derived_from": image.name}})
        self.status_label.setText(f"done: bulge and disk images of '{image.name}' (sky {result.sky:.4g} subtracted"
                                  + (f"; {result.psf_note()})" if result.psf_note() else ")"))

    def _on_predict_requested(self, image_layer: Any) -> None:
        if image_layer is None or image_layer not in self.viewer.layers:
            return
        self.image_combo.setCurrentText(image_layer.name)
        shape = L.spatial_shape(image_layer)
        scope = SCOPE_STACK if len(shape) > 2 else SCOPE_SLICE
        tracker = self.session.tracker_for_image(image_layer)
        n_planes = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
        if tracker is not None and len(tracker.reviewed) >= n_planes:
            self.status_label.setText("every slice is reviewed: nothing to re-predict")
            return
        self.run(image_layer, scope)


def _stack_labels(job: SegmentJob) -> np.ndarray:
    """What a whole-stack run fills (run in the worker): a copy of the target layer's labels, whose
    reviewed planes are kept, or zeros when the annotation layer is made at the end."""
    if job.target is not None:
        return np.array(job.target.data, dtype=np.int32, copy=True)
    return np.zeros(job.shape, np.int32)


def _new_labels(job: SegmentJob, prediction: Any) -> np.ndarray:
    """The whole array of a new annotation layer holding ``prediction`` (a whole stack: its labels as the
    worker left them; one plane or region: zeros elsewhere), uint16 while the ids fit (``L.labels_dtype``)."""
    if job.crop is None:
        return np.asarray(prediction.labels)
    pred = np.asarray(prediction.labels)
    labels = np.zeros(job.shape, L.labels_dtype(pred.max(initial=0)))
    labels[tuple(job.index) + tuple(job.crop)] = pred
    return labels


def _decompose(model: Any, job: SegmentJob, cancel: Any, tile_callback: Any) -> Any:
    """The worker's run of a bulge/disk model on the job's plane (or region)."""
    from napari_segtool.core.decompose import decompose
    from napari_segtool.plugin.astro import layer_psf_fwhm

    if job.crop is None:
        raise UserError("a bulge/disk model splits one plane: choose the current slice or the visible region")
    if job.diameter is not None:  # never silently ignored (#11)
        raise UserError("a bulge/disk model runs on the field's own pixels: set the Object size to auto")
    return decompose(model, np.asarray(job.data), tile_size=job.tile_size, progress=tile_callback, cancel=cancel,
                     psf_size=layer_psf_fwhm(job.image))


def _is_input_image(layer: Any) -> bool:
    """An image layer to segment: not one this plugin derived from another (a probability map)."""
    return isinstance(layer, Image) and not (layer.metadata.get(L.META_KEY) or {}).get("derived_from")


def _plane_of(viewer: Any, image_layer: Image, n_stack: int) -> tuple[int, ...]:
    if n_stack <= 0:
        return ()
    axes = L.image_axes(image_layer)
    point = image_layer.world_to_data(viewer.dims.point)
    shape = L.layer_data(image_layer).shape
    dims = [i for i, a in enumerate(axes) if a in "TZ"]
    return tuple(int(np.clip(round(float(point[d])), 0, shape[d] - 1)) for d in dims[:n_stack])
