"""The combo boxes the widgets share: a model chooser and a layer chooser that follow the session and the viewer.

Both are ``QComboBox`` subclasses (tests and scripts drive them like any combo box);
each wires itself to the events it follows, so a widget only places it and reads it.
"""
from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QSpinBox

from napari_segtool.plugin._warmup import models_ready
from napari_segtool.plugin.state import LOAD_FROM_DISK, NO_MODEL

LOADING = "loading models…"


class ModelCombo(QComboBox):
    """The session's model choices (project, shipped, user, loaded files), optionally "load from disk…".

    ``follow_session``: on refresh, the session's current model wins over this combo's own
    choice (the Segment widget, which sets it); otherwise this combo keeps its choice (Batch).
    Until the warm-up has imported the core (torch), the list says "loading models…".
    """

    selected = Signal(object)       # a ref (or None): selected by code or chosen by the user
    load_requested = Signal()       # the user chose "load from disk…"

    def __init__(self, session: Any, *, load_from_disk: bool = False, follow_session: bool = True,
                 tip: str = ""):
        super().__init__()
        self.session = session
        self._load_from_disk = load_from_disk
        self._follow_session = follow_session
        self.setToolTip(tip)
        self.activated.connect(self._on_activated)
        session.models_changed.connect(self.refresh)
        session.model_selected.connect(self.select)
        if not models_ready():
            self.addItem(LOADING, None)  # the owner refreshes the list when the warm-up is done

    def refresh(self) -> None:
        """List the choices again, keeping the model that should stay selected."""
        current = self.currentData()
        self.clear()
        if not models_ready():
            self.addItem(LOADING, None)
            return
        session = self.session
        choices = session.model_choices()
        for choice in choices:
            self.addItem(choice.label, choice.ref)
            self.setItemData(self.count() - 1, choice.summary, Qt.ToolTipRole)
        if not choices:
            self.addItem(NO_MODEL, None)
        if self._load_from_disk:
            self.addItem(LOAD_FROM_DISK, LOAD_FROM_DISK)
        if self._follow_session:
            wanted = session.current_model or current or session.stored_model_ref() or session.default_model_ref()
        else:
            wanted = current or session.current_model or session.default_model_ref()
        self.select(wanted)

    def select(self, ref: str | None) -> None:
        index = self.findData(ref) if ref else -1
        self.setCurrentIndex(max(index, 0))
        self.selected.emit(self.currentData())

    def current_ref(self) -> str | None:
        """The chosen model, or ``None`` (no model yet, still loading, or "load from disk…")."""
        ref = self.currentData()
        return None if ref in (None, LOAD_FROM_DISK) else ref

    def _on_activated(self, index: int) -> None:
        if self.itemData(index) == LOAD_FROM_DISK:
            self.load_requested.emit()
        else:
            self.selected.emit(self.itemData(index))


class LayerCombo(QComboBox):
    """The names of the viewer's layers of one type, refreshed when layers are added, removed or moved.

    The current choice is kept while its layer exists; otherwise (``prefer_active``) the
    selected layer of the layer list. ``first_item`` is a fixed entry before the layers
    (e.g. "annotation layer (auto)").
    """

    refreshed = Signal()

    def __init__(self, viewer: Any, layer_type: type, *, first_item: str = "", prefer_active: bool = True,
                 tip: str = ""):
        super().__init__()
        self.viewer = viewer
        self.layer_type = layer_type
        self.first_item = first_item
        self.prefer_active = prefer_active
        self.setToolTip(tip)
        self.refresh()
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed,
                      viewer.layers.events.reordered):
            event.connect(self.refresh)

    def names(self) -> list[str]:
        return [layer.name for layer in self.viewer.layers if isinstance(layer, self.layer_type)]

    def refresh(self, event: Any = None) -> None:
        current = self.currentText()
        names = self.names()
        self.blockSignals(True)
        self.clear()
        if self.first_item:
            self.addItem(self.first_item)
        self.addItems(names)
        active = self.viewer.layers.selection.active
        if current and self.findText(current) >= 0:
            self.setCurrentText(current)
        elif self.prefer_active and active is not None and active.name in names:
            self.setCurrentText(active.name)
        self.blockSignals(False)
        self.refreshed.emit()

    def layer(self) -> Any | None:
        """The chosen layer, or ``None`` (nothing chosen, the fixed entry, or a layer of another type)."""
        name = self.currentText()
        layer = self.viewer.layers[name] if name and name in self.viewer.layers else None
        return layer if isinstance(layer, self.layer_type) else None


def spin_box(lo: float, hi: float, value: float, *, step: float | None = None, decimals: int | None = None,
             suffix: str = "", special: str = "", tip: str = "") -> QSpinBox | QDoubleSpinBox:
    """A ``QSpinBox`` (or ``QDoubleSpinBox`` when ``decimals`` is given) set up in one call."""
    spin = QDoubleSpinBox() if decimals is not None else QSpinBox()
    if decimals is not None:
        spin.setDecimals(decimals)
    spin.setRange(lo, hi)
    if step is not None:
        spin.setSingleStep(step)
    spin.setValue(value)
    if suffix:
        spin.setSuffix(suffix)
    if special:
        spin.setSpecialValueText(special)
    if tip:
        spin.setToolTip(tip)
    return spin


def choice_combo(items: list[str], tip: str = "") -> QComboBox:
    """A combo box of fixed text choices."""
    combo = QComboBox()
    combo.addItems(items)
    if tip:
        combo.setToolTip(tip)
    return combo
