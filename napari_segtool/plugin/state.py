"""Per-viewer session shared by the Segment, Correct and Train widgets.

One :class:`Session` per napari viewer holds the open project folder, the model
choices and the loaded-model cache, and the :class:`~.correct.LabelsTracker` of
every labels layer whose edits become training data. Widgets talk to each other
only through its Qt signals.
"""
from __future__ import annotations

import logging
import os
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from napari.utils.notifications import show_warning
from qtpy.QtCore import QObject, QTimer, Signal

from napari_segtool.core.project import DEFAULT_PROJECT_DIR, Project, ProjectError

log = logging.getLogger(__name__)

LOAD_FROM_DISK = "load from disk…"
NO_MODEL = "no model yet — train one"
#: shipped models proposed for each kind of image, best first
DEFAULT_MODELS = {"microscopy": ("nuclei",), "astro": ("astro-sources",)}


@dataclass
class ModelChoice:
    """One entry of the model drop-down."""

    label: str
    ref: str        # name (shipped/user) or path
    source: str     # "project", "user", "shipped", "file"
    summary: str = ""


def _model_summary(meta: Any) -> str:
    if meta is None:
        return ""
    first = (meta.description or meta.card or "").strip().splitlines()
    text = first[0].lstrip("# ").strip() if first else ""
    classes = ", ".join(meta.classes[1:]) if meta.task == "semantic" else ""
    bits = [f"{meta.arch} · {meta.task}", f"{meta.in_channels} channel(s)"]
    if classes:
        bits.append(f"classes: {classes}")
    if text:
        bits.append(text)
    return " — ".join(bits)


class Session(QObject):
    """State shared by the plugin's widgets for one viewer."""

    project_changed = Signal(object)      # Project
    models_changed = Signal()             # the list of available models changed
    model_selected = Signal(str)          # a model ref the widgets should select
    trackers_changed = Signal()
    reviewed_changed = Signal(object)     # LabelsTracker
    predict_requested = Signal(object)    # image layer to re-predict (after training)
    status = Signal(str)
    saved = Signal()                      # corrections were written to the project (emitted from the saver)
    closing = Signal()                    # the viewer window is closing: stop background jobs
    maps_changed = Signal()               # the model's maps of a plane were kept (prompt tools, correct next)

    def __init__(self, viewer: Any, project_dir: str | os.PathLike | None = None):
        super().__init__()
        self._viewer_ref = weakref.ref(viewer)
        self.trackers: dict[int, Any] = {}          # id(labels layer) -> LabelsTracker
        self.extra_models: list[ModelChoice] = []   # loaded from disk during this session
        self._model_cache: dict[str, Any] = {}
        self._cache_lock = threading.Lock()
        self._saver = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segtool-save")
        self.current_model: str | None = None
        # the model's maps of the last single-plane Segment runs: (id(image layer), plane index) -> PromptMaps
        self.maps: dict[tuple[int, tuple[int, ...]], Any] = {}
        self._closed = False
        self._window_closed = False  # the viewer's window got its Close event
        self._watched: list[weakref.ref] = []  # weakly: a session must not keep a closed window alive
        root = project_dir or os.environ.get("SEGTOOL_PROJECT_DIR") or DEFAULT_PROJECT_DIR
        self.project: Project | None = None
        try:
            self.project = Project(root)
        except (ProjectError, OSError) as exc:
            log.warning("cannot open project %s: %s", root, exc)
        self._warn_if_shared()
        viewer.layers.events.inserted.connect(self._on_layer_inserted)
        viewer.layers.events.removed.connect(self._on_layer_removed)

    # ----------------------------------------------------------------- viewer
    @property
    def viewer(self) -> Any:
        viewer = self._viewer_ref()
        if viewer is None:
            raise RuntimeError("the viewer was closed")
        return viewer

    # ---------------------------------------------------------------- project
    def set_project(self, root: str | os.PathLike) -> Project:
        """Switch to another project folder: flush saves, then restore what it holds."""
        new = Project(root)
        self.save_all(wait=True)
        self.project = new
        self._warn_if_shared()
        stored = self.stored_model_ref()  # read before any widget re-selects (and so re-saves) a model
        if stored is not None:
            self.current_model = stored
        for tracker in list(self.trackers.values()):
            tracker.attach_project(new)
        self.restore_open_images()
        self.project_changed.emit(new)
        self.models_changed.emit()  # widgets refresh their lists and select ``current_model``
        if stored is not None:
            self.model_selected.emit(stored)
        return new

    def _warn_if_shared(self) -> None:
        """One napari warning when another live session holds this project: another process
        (``Project.other_sessions``) or another open viewer of this one. Both windows' corrections
        are kept (the store locks every write), but neither shows the other's until reopened."""
        project = self.project
        if project is None:
            return
        others = [f"process {name}" for name in project.other_sessions()]
        root = project.root.resolve()
        others += ["another viewer of this process" for ref, session in list(_SESSIONS.values())
                   if session is not self and ref() is not None and not session._closed
                   and not session._window_closed and session.project is not None
                   and session.project.root.resolve() == root]
        if others:
            show_warning(f"project {project.root} is also open in {', '.join(others[:3])}: corrections of both "
                         "are kept, but each window shows the other's only after the image is opened again")

    def submit_save(self, fn: Callable[[], Any]) -> Future:
        """Run a save job on the single background saver thread (in order)."""
        return self._saver.submit(fn)

    def save_all(self, wait: bool = False, full_check: bool = True) -> None:
        futures = [t.save(full_check=full_check) for t in list(self.trackers.values())]
        if wait:
            for f in futures:
                if f is not None:
                    f.result()

    # ----------------------------------------------------------------- models
    def model_choices(self) -> list[ModelChoice]:
        """Project, shipped, user and loaded models; none until the warm-up has imported the core (torch)."""
        from napari_segtool.plugin._warmup import models_ready

        if not models_ready():
            return []
        from napari_segtool.core.checkpoint import list_models, read_meta

        choices: list[ModelChoice] = []
        if self.project is not None:
            for name, path in self.project.list_models():
                try:
                    summary = _model_summary(read_meta(path))
                except Exception as exc:  # unreadable model: still listed, with the reason
                    summary = f"unreadable: {exc}"
                choices.append(ModelChoice(f"{name}  (project)", str(path), "project", summary))
        for info in list_models():
            summary = _model_summary(info.meta) if info.meta is not None else f"unreadable: {info.error}"
            choices.append(ModelChoice(f"{info.name}  ({info.source})", str(info.path), info.source, summary))
        seen = {c.ref for c in choices}
        choices.extend(c for c in self.extra_models if c.ref not in seen)
        return choices

    def add_model_file(self, path: str | os.PathLike) -> ModelChoice:
        from napari_segtool.core.checkpoint import read_meta, resolve_model_path

        resolved = resolve_model_path(path)
        meta = read_meta(resolved)  # raises ModelLoadError with a clear message
        choice = ModelChoice(f"{resolved.name.removesuffix('.safetensors')}  (file)", str(resolved), "file",
                             _model_summary(meta))
        if all(c.ref != choice.ref for c in self.extra_models):
            self.extra_models.append(choice)
        self.models_changed.emit()
        return choice

    def default_model_ref(self, kind: str = "microscopy") -> str | None:
        """The shipped model to propose for an image of ``kind`` (see ``_layers.image_kind``)."""
        choices = self.model_choices()
        for wanted in DEFAULT_MODELS.get(kind, DEFAULT_MODELS["microscopy"]):
            for c in choices:
                if c.source == "shipped" and Path(c.ref).name.removesuffix(".safetensors") == wanted:
                    return c.ref
        return choices[0].ref if choices else None

    def get_model(self, ref: str) -> Any:
        """Load (or reuse) the model ``ref``; safe to call from a worker thread."""
        from napari_segtool.core.checkpoint import load_model

        path = Path(ref)
        try:
            stamp = path.stat().st_mtime if path.exists() else 0
            if path.is_dir():
                stamp = max([stamp] + [p.stat().st_mtime for p in path.iterdir()])
        except OSError:
            stamp = 0
        key = f"{ref}@{stamp}"
        with self._cache_lock:
            model = self._model_cache.get(key)
        if model is None:
            model = load_model(ref)
            with self._cache_lock:
                self._model_cache = {k: v for k, v in self._model_cache.items() if not k.startswith(f"{ref}@")}
                self._model_cache[key] = model
        return model

    def put_model(self, ref: str, model: Any) -> None:
        path = Path(ref)
        try:
            stamp = max([path.stat().st_mtime] + [p.stat().st_mtime for p in path.iterdir()]) \
                if path.is_dir() else path.stat().st_mtime
        except OSError:
            stamp = 0
        with self._cache_lock:
            self._model_cache[f"{ref}@{stamp}"] = model

    def select_model(self, ref: str | None) -> None:
        self.current_model = ref
        if self.project is not None and ref:
            stored = self.project.settings.get("model")
            value = self._portable_ref(ref)
            if stored == value:
                return
            try:
                self.project.update_settings(model=value)
            except OSError:
                pass

    def _portable_ref(self, ref: str) -> str:
        """How a model is written in the project settings: relative to the project folder for the
        project's own models (a copied or moved project keeps them), a name for shipped and user
        models, else the path."""
        from napari_segtool.core.checkpoint import ZOO_DIR, user_models_dir

        path = Path(ref)
        if self.project is not None:
            try:
                return path.resolve().relative_to(self.project.root).as_posix()
            except ValueError:
                pass
        for root in (ZOO_DIR, user_models_dir()):
            try:
                if path.resolve().parent == Path(root).resolve():
                    return path.name.removesuffix(".safetensors")
            except OSError:
                pass
        return ref

    def stored_model_ref(self) -> str | None:
        """The model the project was last used with, as a ref of this machine, or ``None``.

        Accepts what older versions wrote too: an absolute path into a project's ``models/``
        folder that no longer exists (the project was copied) finds the same model here.
        """
        from napari_segtool.core.checkpoint import ModelLoadError, resolve_model_path

        project = self.project
        value = project.settings.get("model") if project is not None else None
        if not value or not isinstance(value, str):
            return None
        path = Path(value)
        candidates = [project.root / path] if not path.is_absolute() else [path]
        if path.is_absolute() and path.parent.name == "models":
            candidates.append(project.models_dir / path.name)
        for candidate in candidates:
            if candidate.exists():
                return str(candidate)
        try:
            return str(resolve_model_path(value))
        except (ModelLoadError, OSError):
            return None

    # ------------------------------------------------------------------- maps
    MAX_MAPS = 4

    def keep_maps(self, image_layer: Any, index: tuple[int, ...], crop: tuple[slice, slice],
                  probabilities: Any, layout: Any) -> Any:
        """Keep an instance model's maps of one plane (or region of it) for the prompt tools;
        ``layout`` is the model's :class:`~napari_segtool.kernel.params.ProbabilityLayout`.

        A region predicted later replaces the maps of that plane; only the last
        :attr:`MAX_MAPS` planes are kept (a 2048² plane costs 32 MB).
        """
        from napari_segtool.core.prompts import PromptMaps

        try:
            maps = PromptMaps.from_probabilities(probabilities, layout, origin=(crop[0].start or 0, crop[1].start or 0))
        except ValueError as exc:  # not the maps of an instance model
            log.debug("maps not kept: %s", exc)
            return None
        _prefetch_prompt_imports()
        key = (id(image_layer), tuple(int(i) for i in index))
        self.maps.pop(key, None)
        self.maps[key] = maps
        while len(self.maps) > self.MAX_MAPS:
            self.maps.pop(next(iter(self.maps)))
        self.maps_changed.emit()
        return maps

    def maps_for(self, image_layer: Any, index: tuple[int, ...]) -> Any | None:
        """The kept maps of a plane of ``image_layer``, or ``None`` (run Segment on that plane first)."""
        return self.maps.get((id(image_layer), tuple(int(i) for i in index)))

    # --------------------------------------------------------------- trackers
    def tracker_for_labels(self, layer: Any) -> Any | None:
        return self.trackers.get(id(layer))

    def tracker_for_image(self, image_layer: Any) -> Any | None:
        for tracker in self.trackers.values():
            if tracker.image_layer is image_layer:
                return tracker
        return None

    def track(self, labels_layer: Any, image_layer: Any, restore: bool = False, snapshots: Any = None) -> Any:
        """Start turning the edits of ``labels_layer`` into training data for ``image_layer``.

        ``snapshots``: two copies of the layer's data made elsewhere (a worker), for the tracker to keep.
        """
        from napari_segtool.plugin.correct import LabelsTracker

        old = self.tracker_for_image(image_layer)
        if old is not None and old.labels_layer is not labels_layer:
            old.save(full_check=True)
            self.untrack(old.labels_layer)
        tracker = self.trackers.get(id(labels_layer))
        if tracker is not None and tracker.image_layer is image_layer:
            return tracker
        if tracker is not None:
            self.untrack(labels_layer)
        tracker = LabelsTracker(self, labels_layer, image_layer, restore=restore, snapshots=snapshots)
        self.trackers[id(labels_layer)] = tracker
        self.trackers_changed.emit()
        return tracker

    def untrack(self, labels_layer: Any) -> None:
        tracker = self.trackers.pop(id(labels_layer), None)
        if tracker is not None:
            tracker.close()
            self.trackers_changed.emit()

    def annotation_layer(self, image_layer: Any, create: bool = True, data: Any = None,
                         snapshots: Any = None, next_turn: bool = False) -> Any | None:
        """The tracked labels layer of an image: existing, restored from the project, or new (holding
        ``data``, e.g. a finished prediction, else zeros: a layer is made once, with its final array).
        ``snapshots``: two copies of ``data`` made off the GUI thread, kept by the edit tracker.
        ``next_turn``: a new layer is added hidden and shown on the next turn (``plugin/_reveal.py``; napari
        cannot ``data_setitem`` a layer before it was first shown, so only for a layer nothing edits at once)."""
        from napari_segtool.plugin import _layers as L

        tracker = self.tracker_for_image(image_layer)
        if tracker is not None and tracker.labels_layer in self.viewer.layers:
            return tracker.labels_layer
        if not create:
            return None
        import numpy as np

        shape = L.spatial_shape(image_layer)
        stored = None
        if self.project is not None:
            entry = self.project.find(image_layer.name, L.source_of(image_layer), shape)
            if entry is not None:
                stored = self.project.load(entry.key)
        if stored is not None or data is None:  # uint16 while the ids fit (L.COMPACT_LABELS)
            data = L.compact_labels(stored.labels) if stored is not None else np.zeros(shape, L.COMPACT_LABELS)
            snapshots = None
        from napari.layers import Labels

        from napari_segtool.plugin._reveal import add_then_show

        properties = dict(name=f"{image_layer.name} labels", scale=L.spatial_scale(image_layer),
                          translate=L.spatial_translate(image_layer),
                          metadata={L.META_KEY: {"axes": L.labels_axes(L.image_axes(image_layer)),
                                                 "image": image_layer.name}})
        layer = add_then_show(self.viewer, Labels, data, **properties) if next_turn else \
            self.viewer.add_labels(data, **properties)
        self.track(layer, image_layer, restore=stored is not None, snapshots=snapshots)
        return layer

    def restore_open_images(self) -> list[Any]:
        """Open the stored annotations of every image in the viewer that the project knows."""
        restored = []
        if self.project is None:
            return restored
        from napari.layers import Image

        from napari_segtool.plugin import _layers as L

        for layer in list(self.viewer.layers):
            if not isinstance(layer, Image) or self.tracker_for_image(layer) is not None:
                continue
            try:
                entry = self.project.find(layer.name, L.source_of(layer), L.spatial_shape(layer))
            except Exception:
                continue
            if entry is not None:
                restored.append(self.annotation_layer(layer))
        return restored

    def _on_layer_inserted(self, event: Any) -> None:
        from napari.layers import Image

        if isinstance(event.value, Image) and self.project is not None:
            QTimer.singleShot(0, self.restore_open_images)

    def _on_layer_removed(self, event: Any) -> None:
        layer = event.value
        for key in [k for k in self.maps if k[0] == id(layer)]:
            self.maps.pop(key, None)
        for tracker in list(self.trackers.values()):
            if tracker.labels_layer is layer or tracker.image_layer is layer:
                future = tracker.save(full_check=True)
                self.untrack(tracker.labels_layer)
                if future is not None:  # the layer is going away: make sure it is on disk
                    try:
                        future.result(timeout=60)
                    except Exception:
                        log.exception("saving %s failed", tracker.labels_layer.name)

    def watch_window(self, window: Any) -> None:
        """Flush saves and stop jobs when ``window`` (the viewer's main window) closes."""
        self._watched = [ref for ref in self._watched if ref() is not None]
        if window is None or any(ref() is window for ref in self._watched):
            return
        self._watched.append(weakref.ref(window))
        window.installEventFilter(self)

    def eventFilter(self, obj: Any, event: Any) -> bool:
        from qtpy.QtCore import QEvent

        if event.type() == QEvent.Close and not self._closed:
            self._window_closed = True
            self.closing.emit()
            try:
                self.save_all(wait=True)
            except Exception:  # never block closing the window
                log.exception("final save failed")
        return False

    def close(self) -> None:
        if self._closed:
            return
        self.save_all(wait=True)
        self._closed = True
        self._saver.shutdown(wait=True)


_PREFETCHED = False


def _prefetch_prompt_imports() -> None:
    """Import what the prompt tools need (scikit-image's watershed, ~0.1 s) in a thread, once: the first
    prompt then takes milliseconds, not a first-import pause on the GUI thread."""
    global _PREFETCHED
    if _PREFETCHED:
        return
    _PREFETCHED = True

    def job() -> None:
        import napari_segtool.ops.postprocess  # noqa: F401  (split_by_shape: ops.flood, skimage.segmentation)
        import skimage.draw  # noqa: F401
        import skimage.filters  # noqa: F401
        import skimage.morphology  # noqa: F401
        import skimage.segmentation  # noqa: F401

    threading.Thread(target=job, name="segtool-prompt-imports", daemon=True).start()


def worker_threads() -> int:
    """CPU threads for torch in background jobs: all cores but one, so the viewer stays fluid.

    ``SEGTOOL_NUM_THREADS`` overrides it (as it does everywhere in napari-segtool).
    """
    env = os.environ.get("SEGTOOL_NUM_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS / Windows
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


class SavesWithWindow:
    """Mixin for a dock widget with a ``session``: saves flush when the viewer window closes or the widget hides.

    Put it before ``QWidget`` in the bases so its Qt event handlers run first.
    """

    session: Session

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)  # type: ignore[misc]
        self.session.watch_window(self.window())  # type: ignore[attr-defined]

    def hideEvent(self, event: Any) -> None:
        super().hideEvent(event)  # type: ignore[misc]
        self.session.save_all(wait=False, full_check=False)


_SESSIONS: dict[int, tuple[weakref.ref, Session]] = {}


def unwrap(obj: Any) -> Any:
    """The napari object behind a plugin proxy.

    napari hands plugin widgets its viewer wrapped in a ``PublicOnlyProxy`` (wrapt), and
    every layer reached through it comes back in a *new* proxy on each access. The
    session keys trackers and sessions by identity, so it works on the real objects.
    """
    return getattr(obj, "__wrapped__", obj)


def get_session(viewer: Any) -> Session:
    """The session of ``viewer`` (created on first use); ``session.viewer`` is the real viewer.

    Sessions are looked up by viewer identity and hold the viewer only weakly, so a
    closed viewer is never kept alive by the plugin.
    """
    viewer = unwrap(viewer)
    for key, (ref, session) in list(_SESSIONS.items()):
        if ref() is None:
            _SESSIONS.pop(key, None)
            session.close()
    entry = _SESSIONS.get(id(viewer))
    if entry is not None and entry[0]() is viewer:
        return entry[1]
    session = Session(viewer)
    _SESSIONS[id(viewer)] = (weakref.ref(viewer), session)
    _connect_quit()
    from napari_segtool.plugin._prefs import prefer_our_reader

    prefer_our_reader()  # File ▸ Open of .tif/.fits stops asking "Choose reader" (unless the user chose one)
    return session


def drop_session(viewer: Any) -> None:
    entry = _SESSIONS.pop(id(unwrap(viewer)), None)
    if entry is not None:
        entry[1].close()


def flush_all() -> None:
    """Write every pending correction of every session now (called when the app quits)."""
    for _ref, session in list(_SESSIONS.values()):
        try:
            session.save_all(wait=True)
        except Exception:
            log.exception("final save failed")


_QUIT_CONNECTED = False


def _connect_quit() -> None:
    global _QUIT_CONNECTED
    if _QUIT_CONNECTED:
        return
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(flush_all)
        _QUIT_CONNECTED = True
