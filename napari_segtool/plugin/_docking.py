"""The four widgets share one dock area as tabs, however napari docked them.

napari's Plugins menu docks each widget with ``add_dock_widget(widget, name=...)``
(no ``tabify``): four tall widgets stacked in one column make the window taller
than a laptop screen. Each widget therefore, when its dock is first shown, joins
the tab group of the other napari-segtool docks of the same main window and dock
area (``QMainWindow.tabifyDockWidget``, which is what napari's ``tabify=True``
does). A widget the user has floated or moved to another area is left alone.
"""
from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QDockWidget, QFrame, QMainWindow, QScrollArea, QVBoxLayout, QWidget

#: attribute that marks a napari-segtool dock widget's inner widget
MARK = "_segtool_tab"


def scroll_layout(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a frameless vertical scroll area and return the layout inside it.

    A dock widget's minimum height is then small: docked in a column, next to other
    plugins or on a short screen, it scrolls instead of growing the window.
    """
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    area = QScrollArea(widget)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.NoFrame)
    inner = QWidget(area)
    area.setWidget(inner)
    outer.addWidget(area)
    widget.scroll_area = area  # type: ignore[attr-defined]
    return QVBoxLayout(inner)


def dock_of(widget: QWidget) -> QDockWidget | None:
    """The QDockWidget that holds ``widget`` (napari wraps it in a few layers), or ``None``."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def _is_ours(dock: QDockWidget) -> bool:
    inner = dock.widget()
    if inner is None:
        return False
    if getattr(inner, MARK, False):
        return True
    return any(getattr(w, MARK, False) for w in inner.findChildren(QWidget))


def join_tabs(widget: QWidget) -> bool:
    """Tabify ``widget``'s dock with the other napari-segtool docks of its window; True if it moved."""
    dock = dock_of(widget)
    if dock is None or dock.isFloating():
        return False
    window = dock.parentWidget()
    if not isinstance(window, QMainWindow):
        return False
    area = window.dockWidgetArea(dock)
    others = [d for d in window.findChildren(QDockWidget)
              if d is not dock and _is_ours(d) and not d.isFloating() and d.isVisible()
              and window.dockWidgetArea(d) == area]
    if not others:
        return False
    tabbed = set(map(id, window.tabifiedDockWidgets(dock)))
    if all(id(d) in tabbed for d in others):
        return False
    window.tabifyDockWidget(others[-1], dock)
    dock.show()
    dock.raise_()
    return True


class DocksAsTabs:
    """Mixin (before ``QWidget`` in the bases): on first show, join the other napari-segtool docks as a tab."""

    _segtool_tab = True
    _joined_tabs = False

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)  # type: ignore[misc]
        if not self._joined_tabs:
            self._joined_tabs = True
            self._join_tabs()

    def _join_tabs(self) -> None:
        try:
            join_tabs(self)  # type: ignore[arg-type]
        except RuntimeError:  # the widget was deleted meanwhile
            pass
