"""A new layer in two turns of the event loop: built hidden, shown on the next turn.

Adding a layer makes napari build its Qt controls, vispy visual and overlays (on insertion), then slice,
colour and upload its data and draw it (because it is visible; the first layer of a kind also links its
shader programs). On a software-rendered display (Xvfb + llvmpipe) the two halves cost 70-150 ms each
and, run in one turn, froze the window 150-300 ms (docs/benchmarks/gui_stall.txt). napari does not slice
an invisible layer (``Layer.refresh`` is a no-op until ``visible`` is set), so a layer added hidden and
made visible from a short timer lets Qt repaint and take input between the halves: the user sees
the layer one frame later, with the same data, name, colours and contrast.
"""
from __future__ import annotations

import weakref
from typing import Any

from qtpy.QtCore import QTimer

#: how long after the addition a layer is shown: a real timer, so Qt first repaints, runs due timers and takes
#: input (a zero-delay single shot can run before them, in the same stretch of busy GUI thread)
SHOW_DELAY_MS = 15
#: layers added hidden whose first showing is still to come (they have no slice yet)
_pending: weakref.WeakSet = weakref.WeakSet()


def add_then_show(viewer: Any, layer_type: type, data: Any, **kwargs: Any) -> Any:
    """``viewer.add_<layer_type>(data, **kwargs)``, added hidden and made visible on the next turn.

    Returns the layer at once (hidden; ``visible=False`` in ``kwargs`` keeps it hidden).
    """
    visible = kwargs.pop("visible", True)
    add = getattr(viewer, f"add_{layer_type.__name__.lower()}")
    layer = add(data, visible=False, **kwargs)
    if visible:
        show_next_turn(viewer, layer)
    return layer


def show_next_turn(viewer: Any, layer: Any) -> None:
    """Make ``layer`` visible :data:`SHOW_DELAY_MS` later, once the event loop has run what is pending (paints,
    timers, input); nothing if it was removed meanwhile."""

    _pending.add(layer)

    def show() -> None:
        if layer in _pending and layer in viewer.layers:
            show_now(layer)

    QTimer.singleShot(SHOW_DELAY_MS, show)


def show_now(layer: Any) -> None:
    """Show a layer still waiting for its next-turn showing at once (an edit through napari's
    ``Labels.data_setitem`` needs the slice that only a visible layer has); nothing for any other layer."""
    if layer in _pending:
        _pending.discard(layer)
        layer.visible = True


def reveal_next_added(count: int = 1) -> bool:
    """For layer data a sample provider returns to napari with ``visible=False``: the next ``count`` layers the
    current viewer adds in this turn are shown on the next turn. False when there is no viewer (the caller
    then leaves its layers visible)."""
    import napari

    viewer = napari.current_viewer()
    if viewer is None:
        return False
    left = [count]

    def on_inserted(event: Any) -> None:
        if left[0] > 0 and not event.value.visible:
            left[0] -= 1
            show_next_turn(viewer, event.value)
        if left[0] <= 0:
            stop()

    def stop() -> None:  # also on the next turn: napari adds a provider's layers in the turn it calls it
        try:
            viewer.layers.events.inserted.disconnect(on_inserted)
        except (RuntimeError, TypeError, ValueError):
            pass

    viewer.layers.events.inserted.connect(on_inserted)
    QTimer.singleShot(0, stop)
    return True
