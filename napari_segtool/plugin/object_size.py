"""The Segment widget's *Object size* row: type it, measure it on the canvas, in pixels or the file's units.

A model runs at the object size it was trained for (:mod:`napari_segtool.core.scale`); the
image's size is estimated unless the user gives it. Here the user can

* type a diameter, in image pixels or, when the image layer has a physical pixel size (its
  ``scale``, from the file's metadata), in that unit (µm...);
* press **Measure** and draw lines across a few objects on the canvas: a Shapes layer in
  line mode, whose lines' median length (in image pixels) becomes the size;
* find the value again next time: it is remembered per image in the project
  (:meth:`~napari_segtool.core.project.Project.remember_object_size`).

The row converts to pixels itself: :meth:`ObjectSizeRow.diameter_px` is what the engine gets.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QHBoxLayout, QPushButton, QWidget

from napari_segtool.plugin import _layers as L

PIXELS = "px"
RULER_SUFFIX = "object size"


def pixel_size(layer: Any) -> tuple[float, str] | None:
    """``(size of one XY pixel, unit)`` of an image layer with a physical scale, else ``None``."""
    if layer is None:
        return None
    axes = [a for a in L.image_axes(layer) if a != "C"]
    scale = L.spatial_scale(layer)
    yx = [scale[axes.index(a)] for a in "YX" if a in axes]
    units = getattr(layer, "units", None)
    if not yx or all(s == 1.0 for s in yx) or min(yx) <= 0:
        return None
    unit = ""
    if units:
        unit = format(units[-1], "~")
    return float(np.mean(yx)), unit or "units"


def line_lengths(shapes: Any) -> list[float]:
    """Lengths (in the layer's data pixels, YX only) of the line shapes of a Shapes layer."""
    lengths = []
    for kind, vertices in zip(shapes.shape_type, shapes.data):
        if kind in ("line", "path") and len(vertices) >= 2:
            yx = np.asarray(vertices, float)[:, -2:]
            lengths.append(float(np.linalg.norm(np.diff(yx, axis=0), axis=1).sum()))
    return lengths


class ObjectSizeRow(QWidget):
    """Spin box (``0`` = auto) + unit + Measure; remembers each image's value in the session's project."""

    def __init__(self, viewer: Any, session: Any, current_image: Callable[[], Any], parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self.session = session
        self.current_image = current_image
        self.ruler: Any = None
        self._image: Any = None  # the image whose size is shown
        self._restoring = False
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.spin = QDoubleSpinBox()
        self.spin.setRange(0, 100000)
        self.spin.setDecimals(1)
        self.spin.setSpecialValueText("auto")
        # the value counts (and is written to the project) when typing ends (Enter, focus out), not per key
        self.spin.setKeyboardTracking(False)
        self.spin.setToolTip("Typical object diameter; the model runs at the scale it was trained at. 'auto' "
                             "estimates it (the estimate is shown after a run). Remembered per image in the project.")
        self.unit_combo = QComboBox()
        self.unit_combo.addItem(PIXELS)
        self.unit_combo.setToolTip("Pixels, or the image's physical unit (from its pixel size)")
        self.measure_button = QPushButton("Measure")
        self.measure_button.setToolTip("Draw lines across a few objects on the canvas: their median length "
                                       "becomes the object size")
        row.addWidget(self.spin, 1)
        row.addWidget(self.unit_combo)
        row.addWidget(self.measure_button)
        self.spin.valueChanged.connect(self._on_value)
        self.unit_combo.currentTextChanged.connect(self._on_unit)
        self.measure_button.clicked.connect(self.start_measuring)
        self._unit = PIXELS

    # ---------------------------------------------------------------- value
    def diameter_px(self) -> float | None:
        """The diameter the user gave, in image pixels; ``None`` for auto."""
        value = float(self.spin.value())
        if value <= 0:
            return None
        return value / self._per_pixel() if self._unit != PIXELS else value

    def set_diameter_px(self, diameter: float | None) -> None:
        """Show ``diameter`` (image pixels; ``None``: auto) in the current unit."""
        value = 0.0 if not diameter else diameter * (self._per_pixel() if self._unit != PIXELS else 1.0)
        self.spin.setValue(value)

    def show_estimate(self, diameter_px: float) -> None:
        """After an automatic run: 'auto (last: N unit)'."""
        shown = diameter_px * (self._per_pixel() if self._unit != PIXELS else 1.0)
        self.spin.setSpecialValueText(f"auto (last: {shown:.0f})" if self._unit == PIXELS
                                      else f"auto (last: {shown:.3g} {self._unit})")

    def _per_pixel(self) -> float:
        size = pixel_size(self.current_image())
        return size[0] if size else 1.0

    # ---------------------------------------------------------------- image
    def image_changed(self) -> None:
        """Another image to segment: its units, and the size remembered for it (else auto)."""
        layer = self.current_image()
        if layer is self._image:
            return
        self._image = layer
        size = pixel_size(layer)
        self._restoring = True
        try:
            self.unit_combo.blockSignals(True)
            self.unit_combo.clear()
            self.unit_combo.addItem(PIXELS)
            if size:
                self.unit_combo.addItem(size[1])
            self.unit_combo.blockSignals(False)
            self._unit = PIXELS
            self.spin.setSpecialValueText("auto")
            self.set_diameter_px(self._remembered(layer))
        finally:
            self._restoring = False

    def _remembered(self, layer: Any) -> float | None:
        project = self.session.project
        if layer is None or project is None:
            return None
        return project.object_size(layer.name, L.source_of(layer), L.spatial_shape(layer))

    def _on_value(self, _value: float) -> None:
        if self._restoring:
            return
        diameter = self.diameter_px()
        layer, project = self.current_image(), self.session.project
        if layer is not None and project is not None:
            project.remember_object_size(layer.name, L.source_of(layer), L.spatial_shape(layer), diameter)

    def _on_unit(self, unit: str) -> None:
        if not unit:
            return
        diameter = self.diameter_px()  # in the previous unit
        self._unit = unit
        self._restoring = True
        try:
            self.set_diameter_px(diameter)
        finally:
            self._restoring = False

    # -------------------------------------------------------------- measure
    def start_measuring(self) -> Any:
        """A Shapes layer over the image in line mode; each line drawn updates the size (median length)."""
        from napari.layers import Shapes

        image = self.current_image()
        if image is None:
            return None
        name = f"{image.name} {RULER_SUFFIX}"
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Shapes):
            ruler = self.viewer.layers[name]
        else:
            axes = [a for a in L.image_axes(image) if a != "C"]
            scale, translate = L.spatial_scale(image), L.spatial_translate(image)
            yx = [axes.index(a) for a in "YX"]
            ruler = self.viewer.add_shapes(ndim=2, name=name, edge_color="yellow", edge_width=1.5,
                                           scale=[scale[i] for i in yx], translate=[translate[i] for i in yx])
            ruler.events.data.connect(self._on_ruler)
        self.ruler = ruler
        self.viewer.layers.selection.active = ruler
        ruler.mode = "add_line"
        return ruler

    def _on_ruler(self, event: Any = None) -> None:
        if self.ruler is None:
            return
        lengths = line_lengths(self.ruler)
        if lengths:
            self.set_diameter_px(float(np.median(lengths)))
