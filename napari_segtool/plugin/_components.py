"""The controls the widgets share: a model chooser and a layer chooser that follow the session and the viewer,
and :class:`ParamControls`, the controls of typed settings (:class:`~napari_segtool.kernel.params.Param`).

The combos are ``QComboBox`` subclasses (tests and scripts drive them like any combo box);
each wires itself to the events it follows, so a widget only places it and reads it.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from qtpy.QtCore import Qt, Signal
from qtpy.QtWidgets import QComboBox, QDoubleSpinBox, QGridLayout, QGroupBox, QLabel, QSpinBox, QWidget

from napari_segtool.kernel.params import Param

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
    """A combo box of fixed text choices.

    It may shrink below its longest choice (shown elided; the list opens at full width), so a
    long choice does not make the whole dock wider than a laptop window leaves it.
    """
    combo = QComboBox()
    combo.setSizeAdjustPolicy(QComboBox.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(10)
    combo.addItems(items)
    if tip:
        combo.setToolTip(tip)
    return combo


# ----------------------------------------------------------------------------- typed settings
_INT_MAX = 2**31 - 1


def _decimals(step: float) -> int:
    return max(0, min(6, -int(math.floor(math.log10(step))))) if step > 0 else 2


def _kind(param: Param) -> str:
    if param.choices or param.type in (bool, str):
        return "choice"
    if param.type in (int, float):
        return param.type.__name__
    return ""  # objects and lists have no control


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class ParamControl:
    """One setting's label and control: a spin box with the setting's range, or a combo box of its choices.

    ``optional``: the control starts at "model default (…)" (the spin box's minimum, one step below
    the range, or the combo's first item) and :meth:`value` is then ``None``; otherwise it starts at
    the setting's default and always has a value.
    """

    def __init__(self, param: Param, optional: bool):
        self.param, self.optional, self.kind = param, optional, _kind(param)
        self.label = QLabel(param.text)
        self.widget: QWidget
        if self.kind == "choice":
            self.widget = QComboBox()
        elif self.kind == "float":
            self.widget = QDoubleSpinBox()
        else:
            self.widget = QSpinBox()
        self.configure(param, param.default, reset=True)

    def fits(self, param: Param) -> bool:
        return _kind(param) == self.kind and (self.kind != "choice" or self._choices(param) == self._choices(self.param))

    @staticmethod
    def _choices(param: Param) -> tuple[Any, ...]:
        return tuple(param.choices) if param.choices else ((True, False) if param.type is bool else ())

    def configure(self, param: Param, default: Any, reset: bool = False) -> None:
        """Range, tooltip and "model default (…)" text of ``param`` (another architecture's may differ)."""
        self.param = param
        tip = param.help
        self.label.setText(param.text)
        self.label.setToolTip(tip)
        self.widget.setToolTip(tip)
        w = self.widget
        if self.kind == "choice":
            current = w.currentData() if w.count() else None
            w.blockSignals(True)
            w.clear()
            if self.optional:
                w.addItem(f"model default ({_format(default)})", None)
            choices = self._choices(param)
            if param.type is str and not choices:  # free text is not offered: only the model's value
                choices = (default,) if default is not None else ()
            for choice in choices:
                w.addItem(_format(choice), choice)
            keep = w.findData(current) if current is not None and not reset else -1
            if keep < 0 and not self.optional:
                keep = w.findData(default)
            w.setCurrentIndex(max(keep, 0))
            w.blockSignals(False)
            return
        step = float(param.step or (1 if self.kind == "int" else 0.05))
        lo = param.low if param.low is not None else (0 if self.kind == "int" else -1e6)
        hi = param.high if param.high is not None else (_INT_MAX - 1 if self.kind == "int" else 1e6)
        if self.kind == "float":
            w.setDecimals(max(2, _decimals(step)))
        bottom = lo - step if self.optional else lo
        if self.kind == "int":
            bottom, hi = int(max(-_INT_MAX, bottom)), int(min(_INT_MAX, hi))
        w.setRange(bottom, hi)
        w.setSingleStep(int(step) if self.kind == "int" else step)
        if self.optional:
            w.setSpecialValueText(f"model default ({_format(default)})" if default is not None else "model default")
            if reset:
                w.setValue(w.minimum())
        elif reset:
            start = default if default is not None else lo
            w.setValue(int(start) if self.kind == "int" else float(start))

    def value(self) -> Any:
        """The chosen value, or ``None`` for "model default" (``optional`` controls)."""
        w = self.widget
        if self.kind == "choice":
            return w.currentData()
        if self.optional and w.value() <= w.minimum():
            return None
        return int(w.value()) if self.kind == "int" else float(w.value())

    def set_visible(self, visible: bool) -> None:
        self.label.setVisible(visible)
        self.widget.setVisible(visible)


class ParamControls:
    """Rows of :class:`ParamControl` in a ``QGridLayout`` (hidden rows take no space), one per setting name.

    :meth:`show` shows the controls of the given settings (made on first need, reconfigured for another
    architecture's declaration of the same name) and hides the others; a value the user set stays while
    the control is hidden (like the model choice, it is the user's, not the model's).
    """

    def __init__(self, grid: QGridLayout, *, optional: bool):
        self.grid, self.optional = grid, optional
        self.controls: dict[str, ParamControl] = {}
        self.shown: list[str] = []
        grid.setColumnStretch(1, 1)

    @classmethod
    def group(cls, title: str, layout: Any, *, optional: bool) -> tuple[QGroupBox, "ParamControls"]:
        """A hidden group box titled ``title`` holding the controls, appended to ``layout``."""
        box = QGroupBox(title)
        controls = cls(QGridLayout(box), optional=optional)  # hidden grid rows take no space (form rows do)
        box.setVisible(False)
        layout.addWidget(box)
        return box, controls

    def control(self, param: Param, default: Any = None) -> ParamControl | None:
        """The control of ``param``'s name, made (hidden) or reconfigured for ``param``; ``None`` when its
        type has no control (objects, lists)."""
        if not _kind(param):
            return None
        default = param.default if default is None else default
        existing = self.controls.get(param.name)
        if existing is not None and existing.fits(param):
            existing.configure(param, default)
            return existing
        made = ParamControl(param, self.optional)
        made.configure(param, default, reset=True)
        if existing is not None:  # another type under the same name: replace it in its row
            index = self.grid.indexOf(existing.widget)
            row = self.grid.getItemPosition(index)[0]
            for old in (existing.label, existing.widget):
                self.grid.removeWidget(old)
                old.deleteLater()
        else:
            row = self.grid.rowCount() if self.controls else 0
        self.grid.addWidget(made.label, row, 0)
        self.grid.addWidget(made.widget, row, 1)
        made.set_visible(False)
        self.controls[param.name] = made
        return made

    def show(self, params: Iterable[Param], defaults: Mapping[str, Any] | None = None) -> list[str]:
        """Show the controls of ``params`` only; returns the names shown."""
        defaults = defaults or {}
        shown = []
        for param in params:
            ctl = self.control(param, defaults.get(param.name))
            if ctl is not None:
                shown.append(param.name)
        for name, ctl in self.controls.items():
            ctl.set_visible(name in shown)
        self.shown = shown
        return shown

    def values(self, *, changed_only: bool = False) -> dict[str, Any]:
        """The shown settings' values: ``optional`` controls leave out "model default"; ``changed_only`` leaves
        out values equal to the declared default."""
        out = {}
        for name in self.shown:
            ctl = self.controls[name]
            value = ctl.value()
            if value is None or (changed_only and value == ctl.param.default):
                continue
            out[name] = value
        return out
