"""The Correct widget: correction tools, the reviewed-slices strip, and what becomes training data."""
from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import QRectF, QSize, Signal
from qtpy.QtGui import QColor, QPainter, QPen
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QListWidget,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_segtool.plugin import _layers as L
from napari_segtool.plugin._docking import DocksAsTabs, scroll_layout
from napari_segtool.plugin._warmup import schedule_warm
from napari_segtool.plugin.state import SavesWithWindow, get_session

log = logging.getLogger(__name__)

COLORS = {"reviewed": QColor(60, 190, 90), "edited": QColor(235, 160, 40), "": QColor(80, 80, 80)}
KEYS_HELP = ("<b>Keys</b> (on the labels layer, at the mouse cursor): "
             "<b>R</b> reviewed on/off · <b>Del</b> delete object · <b>S</b> select for merge · "
             "<b>G</b> merge selected · <b>K</b> twice: split between two points · <b>H</b> fill holes. "
             "<b>Prompts</b> (on the model's maps of the last Segment run of the slice): <b>A</b> add the object "
             "under the cursor · <b>B</b> twice: box corners, the object redrawn inside · <b>Shift-G</b> grow the "
             "nearest object to the cursor · <b>Shift-S</b> shrink: remove the part under the cursor · draw a "
             "path in the 'scribble' layer across merged nuclei to split them · <b>N</b> correct next · "
             "<b>Shift-N</b> the object shown is right: mark it reviewed (training data) and go on. "
             "napari's paint (P), erase (E), fill (F), picker (L) and Ctrl-Z work as usual; every edit "
             "becomes training data.")


class ReviewStrip(QWidget):
    """One cell per slice: green reviewed, orange edited, grey untouched; the current one outlined."""

    clicked = Signal(object)  # plane index

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.status: list[tuple[tuple[int, ...], str]] = []
        self.current: tuple[int, ...] | None = None
        self.setMinimumHeight(22)
        self.setSizePolicy(QSizePolicy.Expanding, QSizePolicy.Fixed)
        self.setToolTip("Slices: green = reviewed, orange = edited, grey = not yet. Click to go there.")

    def sizeHint(self) -> QSize:
        return QSize(240, 22)

    def set_status(self, status: dict[tuple[int, ...], str], current: tuple[int, ...] | None) -> None:
        self.status = sorted(status.items())
        self.current = current
        self.update()

    def paintEvent(self, event: Any) -> None:
        painter = QPainter(self)
        n = len(self.status)
        if n == 0:
            painter.end()
            return
        w = self.width() / n
        h = self.height()
        for i, (index, state) in enumerate(self.status):
            painter.fillRect(QRectF(i * w + 0.5, 2, max(1.0, w - 1), h - 4), COLORS.get(state, COLORS[""]))
        if self.current is not None:
            for i, (index, _) in enumerate(self.status):
                if index == self.current:
                    painter.setPen(QPen(QColor(255, 255, 255), 2))
                    painter.drawRect(QRectF(i * w + 1, 1, max(2.0, w - 2), h - 2))
        painter.end()

    def mousePressEvent(self, event: Any) -> None:
        n = len(self.status)
        if n:
            x = event.pos().x()
            i = int(np.clip(x / max(1, self.width()) * n, 0, n - 1))
            self.clicked.emit(self.status[i][0])


class CorrectWidget(DocksAsTabs, SavesWithWindow, QWidget):
    """Correction tools for the annotation (labels) layer of an image."""

    def __init__(self, napari_viewer: Any, parent: QWidget | None = None):
        super().__init__(parent)
        schedule_warm()  # torch and the core are imported in a thread, never on the GUI thread
        self.session = get_session(napari_viewer)
        self.viewer = self.session.viewer  # the real viewer, not napari's per-widget proxy
        self._tracker: Any = None
        self._build()
        self.refresh_layers()
        self.viewer.layers.events.inserted.connect(self.refresh_layers)
        self.viewer.layers.events.removed.connect(self.refresh_layers)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
        self.viewer.dims.events.current_step.connect(self.update_status)
        self.session.trackers_changed.connect(self.refresh_layers)
        self.session.reviewed_changed.connect(self.update_status)
        self.session.maps_changed.connect(self.update_status)

    # ------------------------------------------------------------------ UI
    def _build(self) -> None:
        layout = scroll_layout(self)
        form = QFormLayout()
        self.labels_combo = QComboBox()
        self.labels_combo.currentTextChanged.connect(self._on_labels_changed)
        form.addRow("Labels", self.labels_combo)
        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The image these labels annotate (its edits become its training data)")
        self.image_combo.activated.connect(self._on_link_image)
        form.addRow("Image", self.image_combo)
        layout.addLayout(form)

        review = QGroupBox("Reviewed slices")
        rl = QVBoxLayout(review)
        self.strip = ReviewStrip()
        self.strip.clicked.connect(self.go_to_plane)
        rl.addWidget(self.strip)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        rl.addWidget(self.summary)
        row = QGridLayout()
        self.review_button = QPushButton("Mark slice reviewed  [R]")
        self.review_button.clicked.connect(self.toggle_reviewed)
        self.region_button = QPushButton("Mark visible region reviewed")
        self.region_button.clicked.connect(self.mark_visible_region)
        row.addWidget(self.review_button, 0, 0)
        row.addWidget(self.region_button, 0, 1)
        rl.addLayout(row)
        layout.addWidget(review)

        tools = QGroupBox("Tools")
        grid = QGridLayout(tools)
        self.delete_button = QPushButton("Delete selected label")
        self.delete_button.setToolTip("Delete the label chosen with napari's picker (L); Del deletes at the cursor")
        self.delete_button.clicked.connect(self.delete_selected_label)
        self.add_button = QPushButton("Add label to merge list")
        self.add_button.clicked.connect(self.add_selected_label)
        self.merge_button = QPushButton("Merge  [G]")
        self.merge_button.clicked.connect(self.merge)
        self.split_button = QPushButton("Split along line")
        self.split_button.setToolTip("Draw a line or path in the 'split line' Shapes layer across objects, "
                                     "then press this. Or press K on two points of one object.")
        self.split_button.clicked.connect(self.split_along_line)
        self.fill_button = QPushButton("Fill holes (slice)")
        self.fill_button.clicked.connect(self.fill_holes)
        self.renumber_button = QPushButton("Renumber")
        self.renumber_button.setToolTip("Relabel objects 1..N (not counted as an edit)")
        self.renumber_button.clicked.connect(self.renumber)
        for i, b in enumerate([self.delete_button, self.add_button, self.merge_button, self.split_button,
                               self.fill_button, self.renumber_button]):
            grid.addWidget(b, i // 2, i % 2)
        self.selection_label = QLabel("merge list: (empty)")
        grid.addWidget(self.selection_label, 3, 0, 1, 2)
        layout.addWidget(tools)

        prompts = QGroupBox("Prompts and correct next (the model's maps)")
        pl = QGridLayout(prompts)
        self.maps_label = QLabel("")
        self.maps_label.setWordWrap(True)
        self.maps_label.setStyleSheet("color: gray;")
        pl.addWidget(self.maps_label, 0, 0, 1, 2)
        self.scribble_button = QPushButton("Scribble to split")
        self.scribble_button.setToolTip("Draw a path across merged nuclei in the 'scribble' layer (click points, "
                                        "Esc or double-click to finish): each nucleus it crosses becomes an object")
        self.scribble_button.clicked.connect(self.start_scribble)
        self.next_button = QPushButton("Correct next  [N]")
        self.next_button.setToolTip("Jump to the object (or missed region) the model is least sure of")
        self.next_button.clicked.connect(self.correct_next)
        self.overlay_button = QPushButton("Uncertainty overlay")
        self.overlay_button.setToolTip("Show where the model hesitates between object and background "
                                       "(1 - |p - 0.5| x 2) over the slice")
        self.overlay_button.clicked.connect(self.show_uncertainty)
        pl.addWidget(self.scribble_button, 1, 0)
        pl.addWidget(self.next_button, 1, 1)
        pl.addWidget(self.overlay_button, 4, 0)
        self.queue_list = QListWidget()
        self.queue_list.setMaximumHeight(110)
        self.queue_list.setToolTip("Least certain first (1 - foreground margin + boundary inside); click to go there")
        self.queue_list.itemClicked.connect(lambda item: self._go_to_queue_row(self.queue_list.row(item)))
        pl.addWidget(self.queue_list, 2, 0, 1, 2)
        self.prompt_label = QLabel("")
        self.prompt_label.setWordWrap(True)
        pl.addWidget(self.prompt_label, 3, 0, 1, 2)
        layout.addWidget(prompts)
        self.training_label = QLabel("")
        self.training_label.setWordWrap(True)
        layout.addWidget(self.training_label)
        help_label = QLabel(KEYS_HELP)
        help_label.setWordWrap(True)
        help_label.setStyleSheet("color: gray;")
        layout.addWidget(help_label)
        layout.addStretch(1)

    # --------------------------------------------------------------- layers
    def refresh_layers(self, event: Any = None) -> None:
        current = self.labels_combo.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Labels)]
        self.labels_combo.blockSignals(True)
        self.labels_combo.clear()
        self.labels_combo.addItems(names)
        tracked = [t.labels_layer.name for t in self.session.trackers.values()]
        if current in names:
            self.labels_combo.setCurrentText(current)
        elif tracked and tracked[-1] in names:
            self.labels_combo.setCurrentText(tracked[-1])
        self.labels_combo.blockSignals(False)
        self._on_labels_changed(self.labels_combo.currentText())

    def _on_active_layer(self, event: Any = None) -> None:
        layer = self.viewer.layers.selection.active
        if isinstance(layer, Labels) and layer.name != self.labels_combo.currentText():
            self.labels_combo.setCurrentText(layer.name)

    @property
    def labels_layer(self) -> Labels | None:
        name = self.labels_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    @property
    def tracker(self) -> Any:
        layer = self.labels_layer
        return self.session.tracker_for_labels(layer) if layer is not None else None

    def _on_labels_changed(self, name: str) -> None:
        layer = self.labels_layer
        self.image_combo.clear()
        self.image_combo.addItem("(not linked: edits are not training data)", None)
        if layer is not None:
            for img in self.viewer.layers:
                if isinstance(img, Image):
                    try:
                        fits = L.spatial_shape(img) == tuple(layer.data.shape)
                    except Exception:
                        fits = False
                    if fits:
                        self.image_combo.addItem(img.name, img.name)
        tracker = self.tracker
        if tracker is not None:
            self.image_combo.setCurrentIndex(max(0, self.image_combo.findData(tracker.image_layer.name)))
        if self._tracker is not tracker:
            if self._tracker is not None:
                for sig, slot in ((self._tracker.changed, self.update_status),
                                  (self._tracker.selection_changed, self._update_selection),
                                  (self._tracker.message, self.prompt_label.setText),
                                  (self._tracker.queue_changed, self._update_queue)):
                    try:
                        sig.disconnect(slot)
                    except (TypeError, RuntimeError):
                        pass
            self._tracker = tracker
            if tracker is not None:
                tracker.changed.connect(self.update_status)
                tracker.selection_changed.connect(self._update_selection)
                tracker.message.connect(self.prompt_label.setText)
                tracker.queue_changed.connect(self._update_queue)
        self.update_status()
        self._update_selection()

    def _on_link_image(self, index: int) -> None:
        layer = self.labels_layer
        name = self.image_combo.itemData(index)
        if layer is None:
            return
        if name is None:
            self.session.untrack(layer)
        else:
            try:
                self.session.track(layer, self.viewer.layers[name])
            except ValueError as exc:
                show_warning(str(exc))
        self._on_labels_changed(layer.name)

    # --------------------------------------------------------------- status
    def update_status(self, *args: Any) -> None:
        tracker = self.tracker
        if tracker is None or tracker.labels_layer not in self.viewer.layers:
            self.strip.set_status({}, None)
            self.summary.setText("Select a labels layer made by the Segment widget "
                                 "(or link one to its image above).")
            self.training_label.setText("")
            self.maps_label.setText("")
            self._set_overlay("")
            return
        status = tracker.plane_status()
        current = tracker.current_plane()
        self.strip.set_status(status, current)
        n_rev = sum(1 for s in status.values() if s == "reviewed")
        n_edit = sum(1 for s in status.values() if s == "edited")
        here = status.get(current, "")
        where = f"slice {current[0] if len(current) == 1 else current}" if current else "image"
        self.summary.setText(f"{where}: {here or 'not reviewed'} · {n_rev}/{len(status)} reviewed"
                             + (f" · {n_edit} edited" if n_edit else ""))
        self.review_button.setText("Unmark slice  [R]" if here == "reviewed" else "Mark slice reviewed  [R]")
        pixels = int(tracker.edited.sum()) + sum(int(np.prod(tracker.shape[-2:])) for _ in tracker.reviewed)
        project = self.session.project
        self.training_label.setText(
            f"Training data from this image: {pixels:,} annotated pixels"
            + (f" — saved in {project.root}" if project is not None else " — no project folder!"))
        maps = tracker.maps(current)
        self.maps_label.setText(
            f"model maps of this {'slice' if current else 'image'}: "
            + (f"{maps.shape[0]}×{maps.shape[1]} px from the last Segment run" if maps is not None
               else "none — run Segment on it (current slice or visible region) to use the prompt keys"))
        mark = "✓ reviewed" if here == "reviewed" else ("edited" if here == "edited" else "not reviewed")
        self._set_overlay(f"{tracker.labels_layer.name} · {where}: {mark} · {n_rev}/{len(status)} reviewed")

    def _set_overlay(self, text: str) -> None:
        try:
            overlay = self.viewer.text_overlay
            overlay.text = text
            overlay.visible = bool(text)
            overlay.position = "top_left"
            overlay.font_size = 10
        except Exception:  # pragma: no cover - overlay API drift
            pass

    def _update_selection(self) -> None:
        tracker = self.tracker
        if tracker is None:
            self.selection_label.setText("merge list: (empty)")
            return
        ids = ", ".join(str(i) for i in tracker.selected) or "(empty)"
        seeds = f" · split point 1 set at {tracker.split_seeds[0][1]}" if tracker.split_seeds else ""
        corner = f" · box corner 1 set at {tracker.box_corners[0][1]}" if tracker.box_corners else ""
        self.selection_label.setText(f"merge list: {ids}{seeds}{corner}")

    def go_to_plane(self, index: tuple[int, ...]) -> None:
        layer = self.labels_layer
        if layer is None or not index:
            return
        world = np.asarray(layer.data_to_world(list(index) + [0, 0]))
        offset = self.viewer.dims.ndim - layer.ndim
        step = list(self.viewer.dims.point)
        for i in range(len(index)):
            step[offset + i] = world[i]
        self.viewer.dims.point = step

    # ---------------------------------------------------------------- tools
    def _need_tracker(self) -> Any:
        tracker = self.tracker
        if tracker is None:
            show_warning("choose a labels layer linked to its image first")
        return tracker

    def _on_tracker(self, act: Callable[[Any], Any]) -> Any:
        """``act(tracker)`` when a labels layer is linked to its image (else a warning); its result."""
        tracker = self._need_tracker()
        return None if tracker is None else act(tracker)

    def toggle_reviewed(self) -> None:
        self._on_tracker(lambda t: t.toggle_reviewed())

    def mark_visible_region(self) -> None:
        tracker = self._need_tracker()
        if tracker is None:
            return
        region = L.visible_region(self.viewer, tracker.labels_layer)
        if region is None:
            show_warning("the visible region needs the 2D view with the labels on screen")
            return
        tracker.mark_region_reviewed(tracker.current_plane(), region)

    def delete_selected_label(self) -> None:
        n = self._on_tracker(lambda t: t.delete_object(t.current_plane(), int(t.labels_layer.selected_label)))
        if n == 0:
            show_info(f"label {self.tracker.labels_layer.selected_label} is not on this slice")

    def add_selected_label(self) -> None:
        self._on_tracker(lambda t: t.toggle_select(int(t.labels_layer.selected_label)))

    def merge(self) -> None:
        tracker = self._need_tracker()
        if tracker is None:
            return
        if len(tracker.selected) < 2:
            show_info("put at least two objects on the merge list (S at the cursor, or the picker + 'Add')")
            return
        tracker.merge_selected()

    def split_line_layer(self) -> Shapes:
        name = "split line"
        if name in self.viewer.layers:
            return self.viewer.layers[name]
        layer = self.viewer.add_shapes(name=name, edge_color="yellow", edge_width=1, ndim=self.viewer.dims.ndim)
        layer.mode = "add_path"
        return layer

    def split_along_line(self) -> None:
        tracker = self._need_tracker()
        if tracker is None:
            return
        shapes = self.viewer.layers["split line"] if "split line" in self.viewer.layers else None
        if shapes is None or len(shapes.data) == 0:
            self.split_line_layer()
            show_info("draw a line across the object(s) in the 'split line' layer, then press Split again")
            return
        line = np.asarray(shapes.data[-1], float)
        world = np.array([shapes.data_to_world(p) for p in line])
        in_labels = np.array([tracker.labels_layer.world_to_data(p) for p in world])
        n = tracker.split_line(tracker.current_plane(), in_labels[:, -2:])
        shapes.data = shapes.data[:-1]
        if not n:
            show_info("the line does not cut any object in two")

    def fill_holes(self) -> None:
        self._on_tracker(lambda t: t.fill_holes(t.current_plane()))

    def renumber(self) -> None:
        self._on_tracker(lambda t: t.renumber())

    # -------------------------------------------------------- prompts, correct next
    def correct_next(self) -> None:
        self._on_tracker(lambda t: t.correct_next())

    def _update_queue(self) -> None:
        tracker = self.tracker
        self.queue_list.blockSignals(True)
        self.queue_list.clear()
        if tracker is not None:
            for item in tracker.queue:
                what = f"object {item.label}" if item.kind == "object" else "missed region"
                self.queue_list.addItem(f"{what} · uncertainty {item.score:.2f} · {item.area} px")
            if 0 <= tracker.queue_pos < self.queue_list.count():
                self.queue_list.setCurrentRow(tracker.queue_pos)
        self.queue_list.blockSignals(False)

    def _go_to_queue_row(self, row: int) -> None:
        tracker = self.tracker
        if tracker is not None and 0 <= row < len(tracker.queue):
            tracker.go_to_item(row)
            self._update_queue()

    SCRIBBLE = "scribble"

    def scribble_layer(self) -> Shapes:
        """The Shapes layer whose paths split the objects they cross (made on first use, path mode)."""
        if self.SCRIBBLE in self.viewer.layers:
            return self.viewer.layers[self.SCRIBBLE]
        layer = self.viewer.add_shapes(name=self.SCRIBBLE, edge_color="cyan", edge_width=1,
                                       ndim=self.viewer.dims.ndim)
        layer.events.data.connect(self._on_scribble)
        return layer

    def start_scribble(self) -> None:
        if self._need_tracker() is None:
            return
        layer = self.scribble_layer()
        self.viewer.layers.selection.active = layer
        layer.mode = "add_path"
        self.prompt_label.setText("draw a path across the merged nuclei (click points; Esc or double-click ends it)")

    def _on_scribble(self, event: Any) -> None:
        if str(getattr(event, "action", "")) not in ("added", "ActionType.ADDED"):
            return
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, self._apply_scribble)

    def _apply_scribble(self) -> None:
        tracker = self.tracker
        if tracker is None or self.SCRIBBLE not in self.viewer.layers:
            return
        shapes = self.viewer.layers[self.SCRIBBLE]
        if not len(shapes.data):
            return
        line = np.asarray(shapes.data[-1], float)
        world = np.array([shapes.data_to_world(p) for p in line])
        in_labels = np.array([tracker.labels_layer.world_to_data(p) for p in world])
        tracker.prompt_scribble(tracker.current_plane(), in_labels[:, -2:])
        shapes.data = shapes.data[:-1]

    def show_uncertainty(self) -> Any:
        """An image layer over the labels: the model's per-pixel uncertainty on the current slice."""
        from napari_segtool.core.prompts import uncertainty_map

        tracker = self._need_tracker()
        if tracker is None:
            return None
        index = tracker.current_plane()
        maps = tracker.maps(index)
        if maps is None:
            self.prompt_label.setText("no model maps for this slice: run Segment on it first")
            return None
        data = uncertainty_map(maps)
        layer = tracker.labels_layer
        scale = np.asarray(layer.scale, float)
        translate = np.asarray(layer.translate, float).copy()
        n_stack = len(index)
        origin = np.asarray(list(index) + list(maps.origin), float)
        translate = translate + origin * scale
        data = data.reshape((1,) * n_stack + data.shape)
        name = f"{tracker.image_layer.name} uncertainty"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        out = self.viewer.add_image(data, name=name, scale=scale, translate=translate, colormap="inferno",
                                    opacity=0.5, blending="additive", contrast_limits=(0.0, 1.0),
                                    metadata={L.META_KEY: {"derived_from": tracker.image_layer.name}})
        self.viewer.layers.selection.active = layer  # the keys stay on the labels
        return out
