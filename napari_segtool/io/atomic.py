"""Crash-safe file writing.

Every writer here produces its output in a temporary file next to the
destination, flushes it to disk (``fsync``) and then moves it into place with
:func:`os.replace`, which is atomic on POSIX and Windows when both paths are on
the same file system.  A crash, a full disk or an exception raised by the
writing code therefore never leaves a half-written file behind: readers see
either the old file or the complete new one.

Temporary names are ``.<name>.<pid>-<random>.tmp``: a process killed mid-write
leaves one behind, and the next write of the same name by any process removes
those whose process is gone (:func:`clean_stale_temps`).

Folders (models, zarr arrays) are replaced with :func:`replace_dir`: on Linux
one ``renameat2(RENAME_EXCHANGE)`` swaps the new folder and the old one, so the
name always refers to a complete folder, the old or the new one, at every
instant; the old one is then deleted. Where the kernel or file system cannot
exchange (other systems, some network file systems) the old folder is first
renamed to ``.<name>.segtool-old`` and readers that find the name missing look
there (:func:`recover_dir`).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_tiff",
    "temp_prefix",
    "clean_stale_temps",
    "exchange_paths",
    "replace_dir",
    "recover_dir",
    "BACKUP_SUFFIX",
]

#: Suffix of the hidden backup name used by :func:`replace_dir` where no exchange exists.
BACKUP_SUFFIX = ".segtool-old"
_STALE_AGE = 3600.0  # seconds after which a temp file without a pid is stale
_cleaned: set[tuple[str, str]] = set()


def temp_prefix(name: str) -> str:
    """Prefix of this process's temporary files for destination ``name``."""
    return f".{name}.{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    except OSError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            path.unlink()
        except OSError:
            pass


def clean_stale_temps(folder: str | os.PathLike, name: str | None = None, *, once: bool = False) -> list[Path]:
    """Remove temporary files/folders left in ``folder`` by killed processes.

    A temp whose name carries a pid (``.<name>.<pid>-<random>.tmp``) is stale
    when that process no longer exists. With ``name``, temps of that destination
    without a pid (older versions: ``.<name>.<random>.tmp``, ``.<name>.<random>``)
    are stale too when over an hour old. ``name=None`` checks the pid-tagged
    temps of every destination in the folder. With ``once``, a (folder, name)
    pair is checked only once per process. Returns what was removed.
    """
    folder = Path(folder)
    key = (str(folder), name or "")
    if once and key in _cleaned:
        return []
    _cleaned.add(key)
    removed = []
    stem = re.escape(name) if name is not None else ".+"
    with_pid = re.compile(rf"^\.{stem}\.(\d+)-[^/]+\.tmp$")
    without_pid = re.compile(rf"^\.{stem}\.[A-Za-z0-9_]{{6,12}}(\.tmp)?$") if name is not None else None
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.name.startswith("." if name is None else f".{name}."):
            continue
        match = with_pid.match(entry.name)
        if match:
            stale = not _pid_alive(int(match.group(1)))
        elif without_pid is not None and without_pid.match(entry.name):
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > _STALE_AGE
            except OSError:
                stale = False
        else:
            stale = False
        if stale:
            _remove(Path(entry.path))
            removed.append(Path(entry.path))
    return removed


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange_paths(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2(RENAME_EXCHANGE)``).

    Returns ``False`` when this system or file system cannot exchange (nothing
    changed then); raises :class:`OSError` for other failures.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def recover_dir(path: str | os.PathLike) -> Path | None:
    """The folder to read for ``path``: itself, or its backup if a swap was interrupted.

    Only needed where :func:`replace_dir` had to fall back to two renames and the
    process died between them; returns ``None`` when neither exists.
    """
    path = Path(path)
    if path.exists():
        return path
    backup = path.with_name(f".{path.name}{BACKUP_SUFFIX}")
    return backup if backup.is_dir() else None


def replace_dir(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move the complete folder ``tmp`` to ``final``, replacing what is there.

    With an existing ``final`` the two are exchanged atomically (Linux), then the
    old content (now at ``tmp``) is deleted: at every instant ``final`` is the old
    or the new folder. Elsewhere: ``final`` -> ``.<name>.segtool-old``,
    ``tmp`` -> ``final``, backup deleted (see :func:`recover_dir`).
    """
    tmp, final = Path(tmp), Path(final)
    if not (final.exists() or final.is_symlink()):
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        return final
    if exchange_paths(tmp, final):
        _fsync_dir(final.parent)
        _remove(tmp)
        return final
    backup = final.with_name(f".{final.name}{BACKUP_SUFFIX}")
    if backup.exists() or backup.is_symlink():
        _remove(backup)
    os.rename(final, backup)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    _remove(backup)
    return final


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
    clean_stale_temps(folder, once=True)  # any destination's temps of dead processes, once per folder
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=".tmp", dir=folder)
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
