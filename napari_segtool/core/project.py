"""The project folder: corrections, reviewed state, models and training history on disk.

A project is a plain folder that any session (the napari plugin, the CLI, a
script) can reopen. Everything is written atomically (temporary file + rename),
so a crash or ``kill -9`` at any moment leaves either the previous or the new
version of every file, never a torn one: saved corrections are never lost.

Layout::

    <root>/
      project.json                  format version, creation time, free-form settings
      images/<key>/entry.json       name, source path, label shape + axes, reviewed planes
      images/<key>/planes/<i>.npz   per plane: labels, edited mask (compressed)
      images/<key>/planes/<i>.img.npy  the image plane (YXC), kept once the plane has annotations
      images/<key>/object_size.json the object diameter the user set for the image (pixels), if any
      models/<name>/                trained models (see :mod:`napari_segtool.core.checkpoint`)
      history.json                  one record per training run (epochs, losses, scores)

Per image, labels have the image's *spatial* shape with the plane axes (``YX``)
last, e.g. ``ZYX`` or ``TZYX``; a *plane index* is the tuple of indices over the
leading stack axes (``()`` for a 2D image). The *annotated* mask used for
training is the union of the pixels the user edited and every reviewed plane.
Plane files are written per plane, so autosaving one corrected slice of a large
stack writes one small file. Image planes are stored with the annotations, so
later sessions can train on earlier corrections even when the source image has
moved.

Several processes (two napari windows, a script) may write one project at once:
every read-modify-write of ``project.json``, ``entry.json`` and ``history.json``
holds an exclusive lock on ``<root>/.segtool.lock`` (``fcntl.flock``; where that
is unavailable, only threads of one process are serialised) and re-reads the file
inside the lock, so no writer's changes are lost: settings are merged key by key,
reviewed planes by what each writer added or removed, runs by id. Plane files
are one per plane (the last save of a plane wins, as in one window). Each open
:class:`Project` also registers itself in ``<root>/.sessions/``;
:meth:`Project.other_sessions` lists the other live processes that have it open.

This module only uses numpy (and the core's data helpers); never Qt or napari.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

try:  # shared crash-safe writers
    from napari_segtool.io.atomic import atomic_write, atomic_write_json
except ImportError:  # pragma: no cover - fallback when io is unavailable
    import tempfile

    def atomic_write(path, write_fn):  # type: ignore[no-redef]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            with open(tmp, "wb") as fh:
                write_fn(fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def atomic_write_json(path, obj, **kw):  # type: ignore[no-redef]
        text = json.dumps(obj, indent=2, sort_keys=True, **kw) + "\n"
        return atomic_write(path, lambda fh: fh.write(text.encode()))


try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: thread locks only
    fcntl = None  # type: ignore[assignment]

from napari_segtool.kernel.errors import SegtoolError

FORMAT_VERSION = 1
PROJECT_FILE = "project.json"
HISTORY_FILE = "history.json"
LOCK_FILE = ".segtool.lock"
SESSIONS_DIR = ".sessions"
DEFAULT_PROJECT_DIR = Path.home() / "napari-segtool-projects" / "default"

Index = tuple[int, ...]


class ProjectError(SegtoolError):
    """The project folder cannot be used (message says why)."""


#: per image: the object diameter the user set (``images/<key>/object_size.json``)
OBJECT_SIZE_FILE = "object_size.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def plane_name(index: Sequence[int]) -> str:
    """File stem of a plane: ``"all"`` for a 2D image, else ``"3"``, ``"0_12"``..."""
    return "_".join(str(int(i)) for i in index) if len(index) else "all"


def parse_plane_name(name: str) -> Index:
    if name == "all":
        return ()
    return tuple(int(p) for p in name.split("_"))


def image_key(name: str, source: str | None, shape: Sequence[int]) -> str:
    """A stable folder name for an image: readable prefix + hash of source/name and shape."""
    ident = f"{source or name}|{tuple(int(s) for s in shape)}"
    digest = hashlib.sha1(ident.encode()).hexdigest()[:10]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", str(name)).strip("-.")[:40] or "image"
    return f"{slug}-{digest}"


@dataclass
class ImageEntry:
    """What the project knows about one image (``entry.json``)."""

    key: str
    name: str
    shape: tuple[int, ...]
    axes: str = ""
    source: str | None = None
    reviewed: list[Index] = field(default_factory=list)
    updated: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_stack(self) -> int:
        return max(0, len(self.shape) - 2)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        data["reviewed"] = [list(i) for i in self.reviewed]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImageEntry":
        return cls(key=data["key"], name=data.get("name", data["key"]), shape=tuple(data["shape"]),
                   axes=data.get("axes", ""), source=data.get("source"),
                   reviewed=[tuple(int(v) for v in i) for i in data.get("reviewed", [])],
                   updated=data.get("updated", ""), extra=dict(data.get("extra", {})))


@dataclass
class Annotation:
    """Everything stored for one image, assembled into full arrays."""

    entry: ImageEntry
    labels: np.ndarray          # spatial shape, int32
    edited: np.ndarray          # bool, pixels the user edited
    reviewed: set[Index]
    stored_planes: set[Index]   # planes that have a labels file

    @property
    def annotated(self) -> np.ndarray:
        mask = self.edited.copy()
        for index in self.reviewed:
            mask[index] = True
        return mask


class Project:
    """A project folder. Cheap to construct; thread-safe for concurrent saves."""

    def __init__(self, root: str | os.PathLike, *, create: bool = True):
        self.root = Path(root).expanduser().resolve()
        self._lock = threading.RLock()
        self._lock_depth = 0
        self._lock_fd: int | None = None
        self._seen_reviewed: dict[str, set[Index]] = {}
        self._session_file: Path | None = None
        info = self.root / PROJECT_FILE
        if info.exists():
            self.info = self._read_info()
        elif create:
            if self.root.exists() and not self.root.is_dir():
                raise ProjectError(f"{self.root} is a file, not a folder")
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                with self.locked():
                    if info.exists():  # another process created it meanwhile
                        self.info = self._read_info()
                    else:
                        self.info = {"format": FORMAT_VERSION, "created": _now(), "settings": {}}
                        atomic_write_json(info, self.info)
            except OSError as exc:
                raise ProjectError(f"cannot create a project in {self.root}: {exc}") from exc
        else:
            raise ProjectError(f"{self.root} is not a napari-segtool project (no {PROJECT_FILE})")
        self._register_session()

    def _read_info(self) -> dict[str, Any]:
        path = self.root / PROJECT_FILE
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ProjectError(f"cannot read {path}: {exc}") from exc
        if not isinstance(info, dict):
            raise ProjectError(f"cannot read {path}: not a JSON object")
        try:
            newer = int(info.get("format", 0)) > FORMAT_VERSION
        except (TypeError, ValueError):
            raise ProjectError(f"cannot read {path}: bad format version {info.get('format')!r}") from None
        if newer:
            raise ProjectError(f"{self.root} was written by a newer napari-segtool (format {info.get('format')})")
        return info

    # ---------------------------------------------------------------- locking
    @contextlib.contextmanager
    def locked(self):
        """Hold the project's lock: threads of this process and other processes wait.

        Re-entrant within one thread. Use it around any read-modify-write of the
        project's shared files.
        """
        with self._lock:
            if self._lock_depth == 0 and fcntl is not None:
                try:
                    fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
                except OSError:
                    fd = None  # read-only project: writes will fail with their own error
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    self._lock_fd = fd
            self._lock_depth += 1
            try:
                yield self
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0 and self._lock_fd is not None:
                    fd, self._lock_fd = self._lock_fd, None
                    try:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    finally:
                        os.close(fd)

    # --------------------------------------------------------------- sessions
    def _register_session(self) -> None:
        """Leave ``.sessions/<host>-<pid>`` so other processes can see this one has the project open."""
        import socket

        folder = self.root / SESSIONS_DIR
        name = f"{socket.gethostname()}-{os.getpid()}"
        try:
            folder.mkdir(exist_ok=True)
            path = folder / name
            if not path.exists():
                path.write_text(_now())
            self._session_file = path
        except OSError:
            self._session_file = None

    def other_sessions(self) -> list[str]:
        """Other live processes on this machine (``host-pid``) that have this project open.

        Entries of processes that no longer exist are removed. Processes on other
        machines are listed as long as their entry exists (they cannot be checked).
        """
        import socket

        folder = self.root / SESSIONS_DIR
        host = socket.gethostname()
        out = []
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            return out
        for path in entries:
            owner, _, pid = path.name.rpartition("-")
            if not pid.isdigit() or (owner == host and int(pid) == os.getpid()):
                continue
            if owner == host and not _pid_alive(int(pid)):
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            out.append(path.name)
        return out

    def close(self) -> None:
        """Unregister this session (optional: stale entries of dead processes are ignored)."""
        if self._session_file is not None:
            with contextlib.suppress(OSError):
                self._session_file.unlink()
            self._session_file = None

    # ------------------------------------------------------------------ paths
    def __repr__(self) -> str:
        return f"Project({str(self.root)!r})"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    def _image_dir(self, key: str) -> Path:
        return self.images_dir / key

    def _plane_file(self, key: str, index: Index) -> Path:
        return self._image_dir(key) / "planes" / f"{plane_name(index)}.npz"

    def _image_plane_file(self, key: str, index: Index) -> Path:
        return self._image_dir(key) / "planes" / f"{plane_name(index)}.img.npy"

    # --------------------------------------------------------------- settings
    @property
    def settings(self) -> dict[str, Any]:
        return dict(self.info.get("settings", {}))

    def update_settings(self, **values: Any) -> None:
        """Set some settings; other processes' settings written meanwhile are kept."""
        with self.locked():
            try:
                self.info = self._read_info()
            except ProjectError:
                pass  # unreadable on disk: rewrite it from what this session knows
            self.info.setdefault("settings", {}).update(values)
            atomic_write_json(self.root / PROJECT_FILE, self.info, default=str)

    # ----------------------------------------------------------------- images
    def entries(self) -> list[ImageEntry]:
        out = []
        if not self.images_dir.is_dir():
            return out
        for folder in sorted(self.images_dir.iterdir()):
            entry = self.entry(folder.name)
            if entry is not None:
                out.append(entry)
        return out

    def entry(self, key: str) -> ImageEntry | None:
        return self._read_entry(key)

    def _read_entry(self, key: str) -> ImageEntry | None:
        path = self._image_dir(key) / "entry.json"
        if not path.exists():
            return None
        try:
            return ImageEntry.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    def find(self, name: str, source: str | None, shape: Sequence[int]) -> ImageEntry | None:
        """The entry of an image, by its key, else by same source and shape (a layer renamed since).

        No other entry is read: a key ends in the hash of the image's source (or name) and shape, so
        the entry of a renamed layer is a folder ``*-<that hash>``, found by one read of the
        ``images/`` folder's names (only with a source: without one, the name is in the hash and an
        entry of the same name and shape has this very key). The Segment widget's Object size row
        asks on the GUI thread for every image shown, in projects of thousands of images.
        """
        shape = tuple(int(s) for s in shape)
        key = image_key(name, source, shape)
        entry = self.entry(key)
        if entry is not None or not source:
            return entry
        digest = key.rpartition("-")[2]
        for folder in sorted(self.images_dir.glob(f"*-{digest}")):
            entry = self.entry(folder.name)
            if entry is not None and entry.shape == shape and entry.source == source:
                return entry
        return None

    def save_entry(self, entry: ImageEntry) -> None:
        """Write an image's entry, merged with what other writers saved meanwhile.

        Reviewed planes: the planes this session added or removed since it last
        :meth:`load`-ed or saved the entry are applied to the entry on disk, so
        planes another process marked reviewed meanwhile are kept (a session that
        never loaded it only adds). ``entry.reviewed`` becomes the merged list.
        ``extra`` is merged key by key; the other fields are this session's.
        """
        with self.locked():
            on_disk = self._read_entry(entry.key)
            mine = set(entry.reviewed)
            if on_disk is not None:
                base = self._seen_reviewed.get(entry.key, set())
                added, removed = mine - base, base - mine
                merged = (set(on_disk.reviewed) - removed) | added
                entry.extra = {**on_disk.extra, **entry.extra}
            else:
                merged = mine
            entry.reviewed = sorted(merged)
            entry.updated = _now()
            atomic_write_json(self._image_dir(entry.key) / "entry.json", entry.to_dict(), default=str)
            self._seen_reviewed[entry.key] = mine

    def object_size(self, name: str, source: str | None, shape: Sequence[int]) -> float | None:
        """The object diameter (image pixels) the user set for this image, or ``None`` (estimate it)."""
        try:
            data = json.loads((self._image_dir(self._key_for(name, source, shape)) / OBJECT_SIZE_FILE).read_text())
            value = float(data["diameter_px"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return value if value > 0 else None

    def remember_object_size(self, name: str, source: str | None, shape: Sequence[int],
                             diameter: float | None) -> None:
        """Keep the object diameter (image pixels) the user set for this image; ``None`` forgets it.

        A file of its own per image (atomic; the last writer wins), apart from ``entry.json``, so a
        session holding an older entry in memory never writes an old size back.
        """
        path = self._image_dir(self._key_for(name, source, shape)) / OBJECT_SIZE_FILE
        if diameter is None or diameter <= 0:
            path.unlink(missing_ok=True)
            return
        atomic_write_json(path, {"diameter_px": float(diameter), "updated": _now()})

    def _key_for(self, name: str, source: str | None, shape: Sequence[int]) -> str:
        """The folder of an image's files: its key's when that exists (one stat), else a renamed layer's
        entry's (:meth:`find`), else its key's (to be made)."""
        key = image_key(name, source, shape)
        if self._image_dir(key).is_dir():
            return key
        entry = self.find(name, source, shape)
        return entry.key if entry is not None else key

    def save_plane(self, key: str, index: Sequence[int], labels: np.ndarray, edited: np.ndarray | None = None,
                   image: np.ndarray | None = None) -> None:
        """Store one plane's labels and edited mask; keep its image once it has annotations.

        ``image`` is the plane as ``YX`` or ``YXC``; it is written only the first time
        (the image itself never changes), so autosaves stay cheap.
        """
        index = tuple(int(i) for i in index)
        labels = np.asarray(labels)
        arrays: dict[str, np.ndarray] = {"labels": _compact(labels)}
        if edited is not None and np.any(edited):
            arrays["edited"] = np.packbits(np.asarray(edited, bool), axis=None)
        arrays["shape"] = np.asarray(labels.shape, np.int64)
        with self.locked():
            atomic_write(self._plane_file(key, index), lambda fh: np.savez_compressed(fh, **arrays))
            img_file = self._image_plane_file(key, index)
            if image is not None and not img_file.exists():
                img = np.asarray(image)
                if img.ndim == 2:
                    img = img[..., None]
                atomic_write(img_file, lambda fh: np.save(fh, img, allow_pickle=False))

    def save_image_plane(self, key: str, index: Sequence[int], image: np.ndarray, overwrite: bool = False) -> None:
        img_file = self._image_plane_file(key, tuple(index))
        if img_file.exists() and not overwrite:
            return
        img = np.asarray(image)
        if img.ndim == 2:
            img = img[..., None]
        with self.locked():
            atomic_write(img_file, lambda fh: np.save(fh, img, allow_pickle=False))

    def has_image_plane(self, key: str, index: Sequence[int]) -> bool:
        return self._image_plane_file(key, tuple(index)).exists()

    def stored_planes(self, key: str) -> list[Index]:
        folder = self._image_dir(key) / "planes"
        if not folder.is_dir():
            return []
        out = []
        for path in folder.glob("*.npz"):
            try:
                out.append(parse_plane_name(path.stem))
            except ValueError:
                continue
        return sorted(out)

    def load_plane(self, key: str, index: Sequence[int]) -> tuple[np.ndarray, np.ndarray] | None:
        """``(labels, edited)`` of one plane, or ``None`` when absent or unreadable."""
        path = self._plane_file(key, tuple(index))
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                labels = z["labels"].astype(np.int32)
                shape = tuple(int(s) for s in z["shape"])
                if "edited" in z.files:
                    edited = np.unpackbits(z["edited"], count=int(np.prod(shape))).reshape(shape).astype(bool)
                else:
                    edited = np.zeros(shape, bool)
        except (OSError, ValueError, KeyError, EOFError):
            return None
        return labels.reshape(shape), edited

    def load_image_plane(self, key: str, index: Sequence[int]) -> np.ndarray | None:
        path = self._image_plane_file(key, tuple(index))
        if not path.exists():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None

    def load(self, key: str) -> Annotation | None:
        """All stored labels/edits of an image assembled into full arrays."""
        entry = self.entry(key)
        if entry is None:
            return None
        labels = np.zeros(entry.shape, np.int32)
        edited = np.zeros(entry.shape, bool)
        stored = set()
        for index in self.stored_planes(key):
            plane = self.load_plane(key, index)
            if plane is None or len(index) != entry.n_stack:
                continue
            try:
                labels[index] = plane[0]
                edited[index] = plane[1]
            except (ValueError, IndexError):
                continue
            stored.add(index)
        reviewed = {i for i in entry.reviewed if len(i) == entry.n_stack}
        self._seen_reviewed[key] = set(entry.reviewed)  # the base this session's later saves are relative to
        return Annotation(entry, labels, edited, reviewed, stored)

    def remove_image(self, key: str) -> None:
        import shutil

        with self.locked():
            shutil.rmtree(self._image_dir(key), ignore_errors=True)
            self._seen_reviewed.pop(key, None)

    # --------------------------------------------------------------- training
    def annotated_planes(self, key: str) -> list[Index]:
        """Planes of an image that carry training signal (edited pixels or reviewed)."""
        entry = self.entry(key)
        if entry is None:
            return []
        out = set(i for i in entry.reviewed if len(i) == entry.n_stack)
        for index in self.stored_planes(key):
            plane = self.load_plane(key, index)
            if plane is not None and plane[1].any():
                out.add(index)
        return sorted(out)

    def training_mask(self, entry: ImageEntry, index: Index, labels: np.ndarray, edited: np.ndarray,
                      margin: int | None = None, holdout: bool = True) -> np.ndarray:
        """The pixels of one stored plane that training learns from.

        A plane marked reviewed counts whole (objects and background), less its held-out
        stripe (:func:`napari_segtool.core.edits.holdout_mask`: kept for scoring
        model versions, never trained on) unless ``holdout`` is False. Any other plane: its
        edited pixels (edited objects and regions marked reviewed) plus a ring of ``margin``
        px of background around each edited object (:func:`napari_segtool.core.edits.training_mask`;
        default :data:`~napari_segtool.core.edits.TRAINING_RING_PX`), without which fine-tuning
        on a few corrected objects teaches the model that everything is object.
        """
        from napari_segtool.core.edits import TRAINING_RING_PX, holdout_mask, training_mask

        index = tuple(int(i) for i in index)
        if index in {tuple(i) for i in entry.reviewed if len(i) == entry.n_stack}:
            mask = np.ones(np.shape(labels), bool)
            if holdout:
                mask &= ~holdout_mask(mask.shape)
            return mask
        return training_mask(labels, edited, TRAINING_RING_PX if margin is None else int(margin))

    def training_examples(self, task: str = "instance", keys: Iterable[str] | None = None,
                          normalization: dict | None = None, *, margin: int | None = None,
                          background_only: bool = False) -> tuple[list[Any], list[str]]:
        """Examples from every annotated plane of the project, and notes on skipped planes.

        The annotated mask of a plane is :meth:`training_mask` (edits + a background ring,
        or a reviewed plane less its held-out stripe). Planes that cannot become an
        example (no stored image, no object in the annotated region...) are skipped with a
        note; with ``background_only`` an instance plane whose annotated pixels hold no
        object (the user deleted false objects, or reviewed an empty plane) is kept as a
        background example instead ("there is nothing here"; the loss sees its annotated
        pixels only).
        """
        from napari_segtool.core.data import DataError, Example, make_example
        from napari_segtool.ops.normalize import normalize

        examples, notes = [], []
        entries = self.entries() if keys is None else [e for e in (self.entry(k) for k in keys) if e]
        for entry in entries:
            for index in self.annotated_planes(entry.key):
                where = f"{entry.name}" + (f" plane {index}" if index else "")
                plane = self.load_plane(entry.key, index)
                image = self.load_image_plane(entry.key, index)
                if plane is None:
                    notes.append(f"{where}: reviewed but no labels stored")
                    continue
                if image is None:
                    notes.append(f"{where}: image plane not stored")
                    continue
                labels, edited = plane
                if image.shape[:2] != labels.shape:
                    notes.append(f"{where}: image {image.shape[:2]} and labels {labels.shape} differ")
                    continue
                annotated = self.training_mask(entry, index, labels, edited, margin)
                if background_only and task == "instance" and annotated.any() and not (labels[annotated] > 0).any():
                    img = np.asarray(image, np.float32)
                    try:
                        img = normalize(img[..., None] if img.ndim == 2 else img, **(normalization or {}))
                    except ValueError as exc:
                        notes.append(f"{where}: {exc}")
                        continue
                    examples.append(Example(img.astype(np.float32), labels.astype(np.int32), annotated,
                                            where + " · background only"))
                    continue
                try:
                    examples.append(make_example(image, labels, annotated, task=task, name=where,
                                                 normalization=normalization))
                except DataError as exc:
                    notes.append(str(exc))
        return examples, notes

    # ----------------------------------------------------------------- models
    def model_path(self, name: str) -> Path:
        return self.models_dir / name

    def save_model(self, model: Any, name: str | None = None) -> Path:
        """Save a :class:`~napari_segtool.core.model.SegModel` atomically into ``models/``."""
        from napari_segtool.core.checkpoint import save_model

        name = name or model.meta.name or time.strftime("model-%Y%m%d-%H%M%S")
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
        model.meta.name = name
        with self.locked():
            return save_model(model, self.model_path(name))

    def unique_model_name(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "model"
        name, i = base, 2
        while self.model_path(name).exists():
            name, i = f"{base}-{i}", i + 1
        return name

    def list_models(self) -> list[tuple[str, Path]]:
        """``(name, path)`` of every model saved in the project, newest first."""
        from napari_segtool.core.checkpoint import WEIGHTS_FILE

        if not self.models_dir.is_dir():
            return []
        found = [(p.name, p) for p in self.models_dir.iterdir()
                 if p.is_dir() and not p.name.startswith(".") and (p / WEIGHTS_FILE).exists()]
        return sorted(found, key=lambda item: item[1].stat().st_mtime, reverse=True)

    # ---------------------------------------------------------------- history
    def history(self) -> list[dict[str, Any]]:
        path = self.root / HISTORY_FILE
        if not path.exists():
            return []
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return []
        return data if isinstance(data, list) else []

    def record_run(self, record: dict[str, Any]) -> str:
        """Add or update (by ``record["id"]``) a training run; returns its id (runs of other writers are kept)."""
        with self.locked():
            runs = self.history()
            run_id = str(record.get("id") or "")
            if not run_id:  # a new run: an id no other writer has taken
                taken = {str(run.get("id")) for run in runs}
                base = run_id = time.strftime("run-%Y%m%d-%H%M%S")
                i = 2
                while run_id in taken:
                    run_id, i = f"{base}-{i}", i + 1
            record = {**record, "id": run_id, "updated": _now()}
            for i, run in enumerate(runs):
                if run.get("id") == run_id:
                    runs[i] = {**run, **record}
                    break
            else:
                runs.append(record)
            atomic_write_json(self.root / HISTORY_FILE, runs, default=_json_default)
            return run_id


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _compact(labels: np.ndarray) -> np.ndarray:
    """Smallest unsigned dtype for label ids (smaller files, same values)."""
    labels = np.asarray(labels)
    top = int(labels.max()) if labels.size else 0
    if labels.size and int(labels.min()) < 0:
        return labels.astype(np.int32)
    if top < 2**16:
        return labels.astype(np.uint16)
    return labels.astype(np.uint32)


def open_project(root: str | os.PathLike | None = None) -> Project:
    """Open (creating if needed) a project folder; default ``~/napari-segtool-projects/default``."""
    return Project(root if root is not None else DEFAULT_PROJECT_DIR)
