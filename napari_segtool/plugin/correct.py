"""Turning edits of a napari Labels layer into training data, and the correction tools.

:class:`LabelsTracker` watches one labels layer that belongs to one image layer.
Every pixel the user changes (napari's own paint / erase / fill / polygon, undo,
redo, or this plugin's tools) and every object such a change touches becomes
*annotated*; marking a slice *reviewed* annotates the whole slice. The tracker
keeps a shadow copy of the labels to find out exactly what changed, and saves
dirty planes to the project folder (debounced, on a background thread, written
atomically), so there is no export step and a crash loses nothing that was saved.

The correction tools (delete, merge, split, fill holes, renumber) are plain
functions on arrays plus thin wrappers that apply their result through
``Labels.data_setitem``: undoable with Ctrl-Z and tracked like any brush stroke.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
from typing import Any

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

# the edits are core's (the HITL benchmark's simulated annotator runs the very same functions), and so is
# the merge of re-predictions with edits; re-exported here under the names the tools always had
from napari_segtool.core.edits import (  # noqa: F401
    bbox,
    delete_object,
    edited_pixels,
    fill_object_holes,
    merge_objects,
    merge_prediction,
    renumber,
    split_object_line,
    split_object_points,
    split_object_points_in_window,
)
from napari_segtool.core.project import ImageEntry, Project, image_key
from napari_segtool.plugin import _layers as L
from napari_segtool.plugin._reveal import show_now

log = logging.getLogger(__name__)

AUTOSAVE_MS = 1500
CHECK_MS = 300

Index = tuple[int, ...]


# ============================================================== tracker


def _atom_region(atom: Any, shape: tuple[int, ...]) -> tuple[slice, ...] | None:
    """Bounding box (full-dimensional slices) of one napari paint-history atom."""
    key = getattr(atom, "slice_key", None)
    if key is not None:
        return tuple(key) + (slice(None),) * (len(shape) - len(key))
    try:
        indices = atom[0]
        if isinstance(indices, tuple) and len(indices) == len(shape):
            arrs = [np.asarray(i).ravel() for i in indices]
            if arrs[0].size == 0:
                return None
            return tuple(slice(int(a.min()), int(a.max()) + 1) for a in arrs)
    except (TypeError, IndexError):
        pass
    return None


class LabelsTracker(QObject):
    """Turns edits of ``labels_layer`` into annotations of ``image_layer`` in the project."""

    changed = Signal()          # edited / reviewed state changed
    selection_changed = Signal()
    message = Signal(str)       # what a prompt tool did, or why it could not
    queue_changed = Signal()    # the "correct next" list was recomputed or moved on

    def __init__(self, session: Any, labels_layer: Any, image_layer: Any, restore: bool = False,
                 snapshots: tuple[np.ndarray, np.ndarray] | None = None):
        """``snapshots``: two private copies of ``labels_layer.data`` made off the GUI thread (a worker
        that produced the data); without them the tracker copies the data twice here."""
        super().__init__()
        self.session = session
        self.labels_layer = labels_layer
        self.image_layer = image_layer
        self.image_axes = L.image_axes(image_layer)
        self.axes = L.labels_axes(self.image_axes)
        self.shape = tuple(labels_layer.data.shape)
        if self.shape != L.spatial_shape(image_layer):
            raise ValueError(f"labels {self.shape} do not fit image '{image_layer.name}' "
                             f"{L.spatial_shape(image_layer)}")
        self.n_stack = len(self.shape) - 2
        self.edited = np.zeros(self.shape, bool)
        self.reviewed: set[Index] = set()
        self.dirty: set[Index] = set()
        self.selected: list[int] = []
        self.split_seeds: list[tuple[Index, tuple[int, int]]] = []
        self.box_corners: list[tuple[Index, tuple[int, int]]] = []
        self.queue: list[Any] = []          # "correct next": core.prompts.Uncertain, worst first
        self.queue_pos = -1
        self._queue_key: Any = None
        self.version = 0                    # bumped by every change of the labels
        self.last_error = ""
        self.saves = 0
        self._suppress = 0
        usable = snapshots is not None and all(s.shape == self.shape and s is not labels_layer.data
                                                for s in snapshots) and snapshots[0] is not snapshots[1]
        self.shadow = snapshots[0] if usable else np.array(labels_layer.data, copy=True)
        # what the labels were before the user touched them (predictions, restored corrections) and
        # the regions marked annotated outright: ``edited`` is recomputed from these, so undoing an
        # edit (Ctrl-Z) also undoes its annotation
        self.base = snapshots[1] if usable else self.shadow.copy()
        self.marks = np.zeros(self.shape, bool)
        self.project: Project | None = None
        self.key = ""
        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(AUTOSAVE_MS)
        self._save_timer.timeout.connect(lambda: self.save())
        self._check_timer = QTimer(self)
        self._check_timer.setSingleShot(True)
        self._check_timer.setInterval(CHECK_MS)
        self._check_timer.timeout.connect(self.check_current_plane)
        self.attach_project(session.project, restore=restore)
        ev = labels_layer.events
        ev.paint.connect(self._on_paint)
        ev.data.connect(self._on_data)
        ev.set_data.connect(self._on_set_data)
        self._bind_keys()

    # ------------------------------------------------------------- identity
    @property
    def planes(self) -> list[Index]:
        return [tuple(int(i) for i in idx) for idx in np.ndindex(*self.shape[: self.n_stack])] \
            if self.n_stack else [()]

    def attach_project(self, project: Project | None, restore: bool = True) -> None:
        """Use ``project`` from now on; load what it holds for this image, else save everything there."""
        self.project = project
        if project is None:
            return
        source = L.source_of(self.image_layer)
        entry = project.find(self.image_layer.name, source, self.shape)
        self.key = entry.key if entry is not None else image_key(self.image_layer.name, source, self.shape)
        stored = project.load(self.key) if entry is not None else None
        if stored is not None and restore:
            with self.programmatic():
                if not np.array_equal(np.asarray(self.labels_layer.data), stored.labels):
                    self.labels_layer.data[...] = stored.labels
                    self.labels_layer.refresh()
            self.shadow = np.array(self.labels_layer.data, copy=True)
            self.base = self.shadow.copy()
            self.edited = stored.edited
            self.marks = stored.edited.copy()
            self.reviewed = set(stored.reviewed)
            self.dirty = set()
        else:
            has_content = [p for p in self.planes if self.edited[p].any() or p in self.reviewed
                           or np.any(self.shadow[p])]
            self.dirty = set(has_content)
            if self.dirty:
                self.schedule_save()
        self.changed.emit()

    # ---------------------------------------------------------------- events
    @contextlib.contextmanager
    def programmatic(self):
        """Changes made inside this block are predictions, not user edits."""
        self._suppress += 1
        try:
            yield
        finally:
            self._suppress -= 1

    def _on_paint(self, event: Any) -> None:
        # napari emits ``paint`` before it writes the data: replay the atoms on the shadow copy
        if self._suppress:
            return
        for atom in event.value or ():
            region = _atom_region(atom, self.shape)
            if region is None:
                continue
            before = self.shadow[region].copy()
            if not self._apply_atom(atom):
                self.diff_region(region)
                continue
            self._mark_changes(region, before, self.shadow[region], self.shadow)
        QTimer.singleShot(0, self.check_current_plane)  # and make sure the data agrees

    def _apply_atom(self, atom: Any) -> bool:
        """Apply one paint-history atom to the shadow copy; False if its form is unknown."""
        try:
            key = getattr(atom, "slice_key", None)
            if key is not None:
                view = self.shadow[tuple(key)]
                if atom.mask is None:
                    view[...] = atom.new_value
                else:
                    view[atom.mask] = atom.new_value
                return True
            indices, _old, new = atom
            self.shadow[indices] = new
            return True
        except Exception:
            return False

    def _on_data(self, event: Any = None) -> None:
        if self._suppress:
            return
        data = self.labels_layer.data
        if tuple(data.shape) != self.shape:
            log.info("labels layer %s changed shape; no longer tracked", self.labels_layer.name)
            self.session.untrack(self.labels_layer)
            return
        self.check_all()

    def _on_set_data(self, event: Any = None) -> None:
        if not self._suppress:
            self._check_timer.start()

    def check_current_plane(self) -> None:
        """Catch edits that emit no paint event (undo/redo, direct writes) in the visible plane."""
        if self._suppress or self.labels_layer not in self.session.viewer.layers:
            return
        index = L.current_plane(self.session.viewer, self.labels_layer)
        self.diff_region(tuple(slice(i, i + 1) for i in index) + (slice(None), slice(None)))

    def check_all(self) -> None:
        self.diff_region((slice(None),) * len(self.shape))

    def diff_region(self, region: tuple[slice, ...]) -> bool:
        """Compare a region of the layer with the shadow copy; what changed becomes annotated."""
        new = np.asarray(self.labels_layer.data[region])
        old = self.shadow[region]
        if np.array_equal(new, old):
            return False
        old = old.copy()
        self.shadow[region] = new
        return self._mark_changes(region, old, new, self.labels_layer.data)

    def _mark_changes(self, region: tuple[slice, ...], old: np.ndarray, new: np.ndarray, source: Any) -> bool:
        """Re-derive the annotated pixels of every plane the change touched.

        A plane's annotated pixels are those that differ from what was predicted (``base``)
        plus the whole (in-plane) extent of every object such a pixel belongs to, before or
        after, plus what was marked outright (``marks``). Undoing an edit therefore removes
        its annotation again.
        """
        changed = old != new
        if not changed.any():
            return False
        self.version += 1
        starts = [s.indices(n)[0] for s, n in zip(region, self.shape)]
        stack_ranges = [range(s.indices(n)[0], s.indices(n)[1]) for s, n in
                        zip(region[: self.n_stack], self.shape[: self.n_stack])]
        for index in itertools.product(*stack_ranges) if self.n_stack else [()]:
            local = tuple(i - s for i, s in zip(index, starts))
            if not changed[local].any():
                continue
            current = np.asarray(source[index] if index else source)
            self._derive_edited(index, current)
            self.dirty.add(index)
        self.schedule_save()
        self.changed.emit()
        return True

    def _derive_edited(self, index: Index, current: np.ndarray) -> None:
        base = self.base[index] if index else self.base
        mask = edited_pixels(base, current, self.marks[index] if index else self.marks)
        if index:
            self.edited[index] = mask
        else:
            self.edited[...] = mask

    # ----------------------------------------------------------- predictions
    def apply_prediction(self, updates: dict[Index, tuple[tuple[slice, slice], np.ndarray]],
                         instance: bool = True) -> list[Index]:
        """Write predicted labels into planes (or crops) that are not reviewed, keeping edits.

        ``updates`` maps a plane index to ``((y slice, x slice), labels)``. Returns the
        planes that were written.
        """
        self.check_all()  # edits made while the prediction ran are kept too
        self.fit_ids(max((int(np.max(pred, initial=0)) for _yx, pred in updates.values()), default=0))
        written = []
        data = self.labels_layer.data
        with self.programmatic():
            for index, (yx, pred) in updates.items():
                if index in self.reviewed:
                    continue
                key = tuple(index) + tuple(yx)
                merged = merge_prediction(np.asarray(data[key]), pred, self.edited[key], instance)
                data[key] = merged
                self.shadow[key] = merged
                self.base[key] = np.where(self.edited[key], self.base[key], merged)
                self.dirty.add(index)
                written.append(index)
            self.labels_layer.refresh()
        if written:
            self.version += 1
            self.schedule_save()
            self.changed.emit()
        return written

    def replace_all(self, labels: np.ndarray) -> None:
        """Write labels without marking them edited (e.g. renumbering)."""
        self.fit_ids(int(np.max(labels, initial=0)))
        with self.programmatic():
            self.labels_layer.data[...] = labels
            self.labels_layer.refresh()
        changed_planes = [p for p in self.planes if not np.array_equal(self.shadow[p], labels[p])]
        self.shadow = np.array(labels, copy=True)
        self.marks |= self.edited  # ids changed: what was annotated stays so, from here on
        self.base = self.shadow.copy()
        self.dirty.update(changed_planes)
        self.schedule_save()

    def fit_ids(self, max_id: int) -> bool:
        """Widen the layer's labels (and the tracker's copies) to int32 before an id their dtype cannot hold is
        written; True if they were widened.

        Annotation layers hold uint16 labels while the ids fit (``_layers.COMPACT_LABELS``: napari then
        shows each slice without re-coding it); predictions and edits add ids above the largest, so an id past
        65535 must widen the array first instead of wrapping round to an existing object's id.
        """
        data = self.labels_layer.data
        if max_id <= np.iinfo(data.dtype).max:
            return False
        with self.programmatic():  # the same labels, wider: not an edit
            self.labels_layer.data = np.asarray(data).astype(L.WIDE_LABELS)
        self.shadow = self.shadow.astype(L.WIDE_LABELS)
        self.base = self.base.astype(L.WIDE_LABELS)
        return True

    # -------------------------------------------------------------- reviewed
    def current_plane(self) -> Index:
        return L.current_plane(self.session.viewer, self.labels_layer)

    def set_reviewed(self, index: Index, value: bool = True) -> None:
        index = tuple(int(i) for i in index)
        self.check_all()
        if value:
            self.reviewed.add(index)
        else:
            self.reviewed.discard(index)
        self.dirty.add(index)
        self.schedule_save(soon=True)
        self.changed.emit()
        self.session.reviewed_changed.emit(self)

    def toggle_reviewed(self, index: Index | None = None) -> bool:
        index = self.current_plane() if index is None else index
        value = index not in self.reviewed
        self.set_reviewed(index, value)
        return value

    def mark_region_reviewed(self, index: Index, yx: tuple[slice, slice]) -> None:
        self.check_all()
        self.edited[tuple(index) + tuple(yx)] = True
        self.marks[tuple(index) + tuple(yx)] = True
        self.dirty.add(tuple(index))
        self.schedule_save(soon=True)
        self.changed.emit()
        self.session.reviewed_changed.emit(self)

    def plane_status(self) -> dict[Index, str]:
        """``"reviewed"`` / ``"edited"`` / ``""`` for every plane."""
        status = {}
        edited_any = self.edited.reshape(self.edited.shape[: self.n_stack] + (-1,)).any(axis=-1) \
            if self.n_stack else np.array(self.edited.any())
        for p in self.planes:
            status[p] = "reviewed" if p in self.reviewed else ("edited" if bool(edited_any[p]) else "")
        return status

    # ------------------------------------------------------------------ save
    def schedule_save(self, soon: bool = False) -> None:
        if soon:
            self._save_timer.start(200)
        else:
            self._save_timer.start(AUTOSAVE_MS)

    def save(self, full_check: bool = False) -> Any:
        """Write dirty planes + the entry to the project on the saver thread; returns a Future."""
        self._save_timer.stop()
        if full_check:
            self.check_all()
        project = self.project
        if project is None or not self.key:
            return None
        planes = sorted(self.dirty)
        self.dirty.clear()
        entry = ImageEntry(key=self.key, name=self.image_layer.name, shape=self.shape, axes=self.axes,
                           source=L.source_of(self.image_layer), reviewed=sorted(self.reviewed),
                           extra={"labels_layer": self.labels_layer.name})
        payload = [(p, np.array(self.labels_layer.data[p] if p else self.labels_layer.data, copy=True),
                    self.edited[p].copy(), p in self.reviewed or bool(self.edited[p].any()))
                   for p in planes]
        image_layer = self.image_layer
        key = self.key

        def job():
            try:
                for index, labels, edited, needs_image in payload:
                    image = None
                    if needs_image and not project.has_image_plane(key, index):
                        image = L.image_plane(image_layer, index)
                    project.save_plane(key, index, labels, edited, image=image)
                project.save_entry(entry)
                self.saves += 1
                self.session.saved.emit()  # queued to the GUI thread: the Train widget's summary
            except Exception as exc:  # disk full, permissions...: keep the planes dirty, say so
                log.exception("autosave failed")
                self.last_error = f"autosave to {project.root} failed: {exc}"
                self.session.status.emit(self.last_error)
                self.dirty.update(p for p, *_ in payload)

        return self.session.submit_save(job)

    def close(self) -> None:
        self._save_timer.stop()
        self._check_timer.stop()
        ev = self.labels_layer.events
        for emitter, cb in ((ev.paint, self._on_paint), (ev.data, self._on_data), (ev.set_data, self._on_set_data)):
            try:
                emitter.disconnect(cb)
            except Exception:
                pass

    # ----------------------------------------------------------------- tools
    def _bind_keys(self) -> None:
        layer = self.labels_layer
        bindings = {
            "r": lambda _l: self.toggle_reviewed(),
            "Delete": lambda _l: self.delete_under_cursor(),
            "Backspace": lambda _l: self.delete_under_cursor(),
            "s": lambda _l: self.toggle_select_under_cursor(),
            "g": lambda _l: self.merge_selected(),
            "k": lambda _l: self.add_split_seed_at_cursor(),
            "h": lambda _l: self.fill_holes_under_cursor(),
            # prompt tools on the model's maps (core.prompts)
            "a": lambda _l: self.add_at_cursor(),
            "b": lambda _l: self.box_corner_at_cursor(),
            "Shift-G": lambda _l: self.grow_at_cursor(),
            "Shift-S": lambda _l: self.shrink_at_cursor(),
            "n": lambda _l: self.correct_next(),
            "Shift-N": lambda _l: self.correct_next(accept=True),
        }
        for key, fn in bindings.items():
            try:
                layer.bind_key(key, fn, overwrite=True)
            except Exception as exc:  # pragma: no cover - napari API drift
                log.debug("cannot bind %s: %s", key, exc)

    def cursor_position(self) -> tuple[Index, tuple[int, int]] | None:
        """(plane index, (y, x)) of the mouse cursor in the labels layer, if inside."""
        pos = self.labels_layer.world_to_data(self.session.viewer.cursor.position)
        ints = [int(round(float(v))) for v in pos]
        if any(i < 0 or i >= n for i, n in zip(ints, self.shape)):
            return None
        return tuple(ints[: self.n_stack]), (ints[-2], ints[-1])

    def label_at(self, index: Index, yx: tuple[int, int]) -> int:
        return int(self.labels_layer.data[tuple(index) + tuple(yx)])

    def apply_plane_edit(self, index: Index, new_plane: np.ndarray, sl: tuple[slice, slice] | None = None) -> int:
        """Write a changed plane (or crop) through ``data_setitem``: undoable, tracked. Returns #pixels."""
        show_now(self.labels_layer)  # a layer added this turn is not sliced yet (plugin/_reveal.py)
        sl = sl or (slice(0, self.shape[-2]), slice(0, self.shape[-1]))
        old = np.asarray(self.labels_layer.data[tuple(index) + tuple(sl)])
        changed = old != new_plane
        if not changed.any():
            return 0
        ys, xs = np.nonzero(changed)
        self.fit_ids(int(new_plane[changed].max()))
        indices = tuple(np.full(ys.size, i, dtype=np.intp) for i in index) + (ys + sl[0].start, xs + sl[1].start)
        self.labels_layer.data_setitem(indices, new_plane[changed].astype(self.labels_layer.data.dtype))
        return int(changed.sum())

    def _plane(self, index: Index) -> np.ndarray:
        return np.asarray(self.labels_layer.data[tuple(index)] if index else self.labels_layer.data)

    def next_label(self) -> int:
        """The id a new object gets (one above the largest); the labels are widened first when their dtype
        cannot hold it, so take it before reading the plane the edit works on."""
        new = int(np.asarray(self.labels_layer.data).max()) + 1
        self.fit_ids(new)
        return new

    def delete_object(self, index: Index, label: int) -> int:
        if label <= 0:
            return 0
        plane = self._plane(index)
        mask = plane == label
        sl = bbox(mask)
        if sl is None:
            return 0
        return self.apply_plane_edit(index, delete_object(plane[sl], label), sl)

    def delete_under_cursor(self) -> int:
        where = self.cursor_position()
        if where is None:
            return 0
        return self.delete_object(where[0], self.label_at(*where))

    def toggle_select(self, label: int) -> None:
        if label <= 0:
            return
        if label in self.selected:
            self.selected.remove(label)
        else:
            self.selected.append(label)
        self.selection_changed.emit()

    def toggle_select_under_cursor(self) -> None:
        where = self.cursor_position()
        if where is not None:
            self.toggle_select(self.label_at(*where))

    def merge_selected(self, index: Index | None = None) -> int:
        ids = list(self.selected)
        if len(ids) < 2:
            return 0
        index = self.current_plane() if index is None else index
        n = self.apply_plane_edit(index, merge_objects(self._plane(index), ids))
        self.selected = []
        self.selection_changed.emit()
        return n

    def split_points(self, index: Index, p1: tuple[int, int], p2: tuple[int, int]) -> int:
        new = self.next_label()
        sl, labels = split_object_points_in_window(self._plane(index), p1, p2, new)
        return self.apply_plane_edit(index, labels, sl)  # the object's window only

    def add_split_seed_at_cursor(self) -> str:
        where = self.cursor_position()
        if where is None:
            return "cursor outside the labels"
        self.split_seeds.append(where)
        self.split_seeds = self.split_seeds[-2:]
        self.selection_changed.emit()
        if len(self.split_seeds) < 2:
            return "first split point set; press K on a second point of the same object"
        (i1, a), (i2, b) = self.split_seeds
        self.split_seeds = []
        self.selection_changed.emit()
        if i1 != i2:
            return "split points must be on the same slice"
        try:
            self.split_points(i1, a, b)
        except ValueError as exc:
            return str(exc)
        return "split"

    def split_line(self, index: Index, line_yx: np.ndarray) -> int:
        new = self.next_label()
        return self.apply_plane_edit(index, split_object_line(self._plane(index), line_yx, new))

    def fill_holes(self, index: Index, label: int | None = None) -> int:
        return self.apply_plane_edit(index, fill_object_holes(self._plane(index), label))

    def fill_holes_under_cursor(self) -> int:
        where = self.cursor_position()
        if where is None:
            return 0
        label = self.label_at(*where)
        return self.fill_holes(where[0], label if label > 0 else None)

    def renumber(self) -> None:
        self.check_all()
        data = np.asarray(self.labels_layer.data)
        self.replace_all(renumber(data))

    # ------------------------------------------------------- prompt tools
    def maps(self, index: Index) -> Any | None:
        """The model's maps of a plane, kept from the last Segment run on it (``None``: none yet)."""
        return self.session.maps_for(self.image_layer, index)

    def _say(self, text: str) -> str:
        self.message.emit(text)
        return text

    def _prompt(self, index: Index, make: Any) -> str:
        """Run a core prompt tool on a plane with its maps and write its window back (undoable, tracked)."""
        from napari_segtool.core.prompts import PromptError

        maps = self.maps(index)
        if maps is None:
            return self._say("no model maps for this slice: run Segment on it (current slice or visible region) "
                             "first; the prompt tools act on the model's maps")
        plane = self._plane(index)
        try:
            edit = make(plane, maps)
        except PromptError as exc:
            return self._say(str(exc))
        n = self.apply_plane_edit(index, edit.labels, edit.slices)
        return self._say(f"{edit.message} (label {edit.label}, {n} pixels)" if n else "nothing changed")

    def prompt_add(self, index: Index, yx: tuple[int, int]) -> str:
        from napari_segtool.core.prompts import add_object

        new = self.next_label()
        return self._prompt(index, lambda plane, maps: add_object(plane, maps, yx, new))

    def prompt_box(self, index: Index, corner1: tuple[int, int], corner2: tuple[int, int]) -> str:
        from napari_segtool.core.prompts import redraw_in_box

        new = self.next_label()
        return self._prompt(index, lambda plane, maps: redraw_in_box(plane, maps, tuple(corner1) + tuple(corner2),
                                                                     new))

    def prompt_grow(self, index: Index, yx: tuple[int, int], label: int | None = None) -> str:
        from napari_segtool.core.prompts import grow_object

        return self._prompt(index, lambda plane, maps: grow_object(plane, maps, yx, label))

    def prompt_shrink(self, index: Index, yx: tuple[int, int]) -> str:
        from napari_segtool.core.prompts import shrink_object

        return self._prompt(index, lambda plane, maps: shrink_object(plane, maps, yx))

    def prompt_scribble(self, index: Index, points_yx: np.ndarray) -> str:
        from napari_segtool.core.prompts import split_by_scribble

        new = self.next_label()
        return self._prompt(index, lambda plane, maps: split_by_scribble(plane, maps, points_yx, new))

    def add_at_cursor(self) -> str:
        where = self.cursor_position()
        return self.prompt_add(*where) if where is not None else self._say("cursor outside the labels")

    def grow_at_cursor(self) -> str:
        where = self.cursor_position()
        return self.prompt_grow(*where) if where is not None else self._say("cursor outside the labels")

    def shrink_at_cursor(self) -> str:
        where = self.cursor_position()
        return self.prompt_shrink(*where) if where is not None else self._say("cursor outside the labels")

    def box_corner_at_cursor(self) -> str:
        where = self.cursor_position()
        if where is None:
            return self._say("cursor outside the labels")
        self.box_corners = (self.box_corners + [where])[-2:]
        self.selection_changed.emit()
        if len(self.box_corners) < 2:
            return self._say("first box corner set; press B at the opposite corner")
        (i1, a), (i2, b) = self.box_corners
        self.box_corners = []
        self.selection_changed.emit()
        if i1 != i2:
            return self._say("box corners must be on the same slice")
        return self.prompt_box(i1, a, b)

    # -------------------------------------------------------- correct next
    def rank(self, index: Index | None = None, top: int = 20) -> list[Any]:
        """Recompute the "correct next" list of a plane: objects and missed regions the model is least sure of,
        leaving out what was already edited (:func:`napari_segtool.core.prompts.rank_uncertain`)."""
        from napari_segtool.core.prompts import rank_uncertain

        index = self.current_plane() if index is None else tuple(index)
        maps = self.maps(index)
        self.queue, self.queue_pos = [], -1
        if maps is not None:
            edited = self.edited[index] if index else self.edited
            self.queue = rank_uncertain(self._plane(index), maps, top=top, exclude=edited)
        self._queue_key = (index, self.version, id(maps))
        self.queue_changed.emit()
        return self.queue

    def correct_next(self, accept: bool = False) -> str:
        """Jump to the next object the model is least sure of (the list is recomputed after any edit).

        ``accept`` (Shift-N): the object shown now is right as it is, so it is marked reviewed and becomes
        training data before moving on. Plain N only moves on: skipping an object asserts nothing about it.
        """
        index = self.current_plane()
        maps = self.maps(index)
        if maps is None:
            return self._say("no model maps for this slice: run Segment on it first")
        if self._queue_key != (index, self.version, id(maps)):
            self.rank(index)
        elif accept and 0 <= self.queue_pos < len(self.queue):
            from napari_segtool.core.prompts import accepted_pixels

            accepted = accepted_pixels(self._plane(index), self.queue[self.queue_pos])
            self.marks[index] |= accepted
            self.edited[index] |= accepted
            self.dirty.add(index)
            self.schedule_save()
        if not self.queue:
            return self._say("nothing uncertain left on this slice")
        self.queue_pos = (self.queue_pos + 1) % len(self.queue)
        self.queue_changed.emit()
        return self.go_to_item(self.queue_pos)

    def go_to_item(self, position: int) -> str:
        item = self.queue[position]
        self.queue_pos = position
        index = self._queue_key[0] if self._queue_key else self.current_plane()
        viewer = self.session.viewer
        world = np.asarray(self.labels_layer.data_to_world(list(index) + list(item.yx)), float)
        viewer.camera.center = tuple(world[-2:]) if viewer.dims.ndisplay == 2 else tuple(world[-3:])
        if item.label:
            self.labels_layer.selected_label = int(item.label)
        what = f"object {item.label}" if item.kind == "object" else "unlabelled foreground (missed object?)"
        return self._say(f"next {position + 1}/{len(self.queue)}: {what} at y={item.yx[0]}, x={item.yx[1]} "
                         f"(uncertainty {item.score:.2f})")
