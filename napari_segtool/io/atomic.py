"""Crash-safe file writing.

Every writer here produces its output in a temporary file next to the
destination, flushes it to disk (``fsync``) and then moves it into place with
:func:`os.replace`, which is atomic on POSIX and Windows when both paths are on
the same file system.  A crash, a full disk or an exception raised by the
writing code therefore never leaves a half-written file behind: readers see
either the old file or the complete new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_tiff",
]


def _fsync_dir(folder: Path) -> None:
    """Persist the rename itself (the directory entry); best effort, POSIX only."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write_fn: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` atomically.

    ``write_fn`` receives a binary file object opened on a temporary file in the
    destination folder and writes the whole content into it.  When it returns,
    the temporary file is flushed, fsynced and renamed over ``path``.  If it
    raises, the temporary file is removed, the exception propagates and any
    existing ``path`` is left untouched.  Parent folders are created.

    Returns the destination as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    os.close(fd)  # reopen by name: some writers (tifffile) need ``fh.name`` to be a path
    try:
        with open(tmp, "wb") as fh:
            write_fn(fh)
            fh.flush()
            os.fsync(fh.fileno())
        _keep_permissions(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(folder)
    return path


def _keep_permissions(path: Path, tmp: Path) -> None:
    """Give the new file the mode of the file it replaces, or the usual default.

    ``mkstemp`` creates files readable by the owner only; a replaced file should
    keep its permissions and a new file should honour the umask like ``open``.
    """
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    try:
        os.chmod(tmp, mode)
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Atomically replace ``path`` with ``text`` encoded as ``encoding``."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, **json_kwargs: Any) -> Path:
    """Atomically write ``obj`` as JSON (indent 2, sorted keys, trailing newline).

    The object is serialised *before* the file is touched, so an object that
    cannot be serialised raises without creating or damaging anything.
    Extra keyword arguments go to :func:`json.dumps` (e.g. ``default=str``).
    """
    json_kwargs.setdefault("indent", 2)
    json_kwargs.setdefault("sort_keys", True)
    text = json.dumps(obj, **json_kwargs) + "\n"
    return atomic_write_text(path, text)


def atomic_write_tiff(path: str | os.PathLike, array: Any, **tifffile_kwargs: Any) -> Path:
    """Atomically write ``array`` as a TIFF with :func:`tifffile.imwrite`.

    Keyword arguments are passed to ``tifffile.imwrite`` unchanged (``imagej``,
    ``metadata``, ``compression``, ``resolution``, ...).
    """
    import tifffile

    return atomic_write(path, lambda fh: tifffile.imwrite(fh, array, **tifffile_kwargs))
