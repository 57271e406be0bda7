"""Guards for output paths: never overwrite what this program did not create.

Every writer of the command line (and any other front end) checks its outputs
here *before* any work starts:

* :func:`check_model_output` — a model's ``--out``: refused when it is (or holds) an
  input, when it is an existing file or folder that is not a model, unless
  ``overwrite``.
* :func:`plan_label_outputs` — one output per input in a folder: names made unique
  when two inputs share a stem, refused when an output would replace an input
  or an existing file (unless ``overwrite``).
* :func:`check_output_path` — one output path (e.g. a ``.zarr``) for some inputs:
  refused when it is, contains or lies inside an input, or exists (unless
  ``overwrite``).
* :func:`made_dirs` / :func:`remove_empty_dirs` — create an output folder and take
  back the folders this run created when it fails before writing anything.

All refusals raise :class:`~napari_segtool.kernel.errors.OutputError` with one line.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from ..kernel.errors import OutputError

__all__ = [
    "MODEL_FILES",
    "is_model_folder",
    "is_model_file",
    "check_model_output",
    "check_output_path",
    "check_writable",
    "plan_label_outputs",
    "unique_stems",
    "made_dirs",
    "remove_empty_dirs",
]

#: A folder holding both is a model written by :func:`napari_segtool.core.checkpoint.save_model`.
MODEL_FILES = ("model.json", "model.safetensors")


def _real(path: str | os.PathLike) -> Path:
    """Absolute path with symlinks resolved (for the parts that exist)."""
    return Path(os.path.realpath(Path(path).expanduser()))


def _same_or_inside(a: Path, b: Path) -> bool:
    """True when ``a`` is ``b`` or lies inside folder ``b`` (both resolved)."""
    return a == b or b in a.parents


def is_model_folder(path: str | os.PathLike) -> bool:
    """A folder that holds a model (``model.json`` and ``model.safetensors``)."""
    path = Path(path)
    return path.is_dir() and all((path / name).is_file() for name in MODEL_FILES)


def is_model_file(path: str | os.PathLike) -> bool:
    """A ``.safetensors`` file whose header carries segtool metadata."""
    path = Path(path)
    if not (path.is_file() and path.name.endswith(".safetensors")):
        return False
    try:
        import json
        import struct

        with open(path, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > 100_000_000:
                return False
            header = json.loads(fh.read(n))
        return "segtool" in (header.get("__metadata__") or {})
    except (OSError, ValueError, struct.error, AttributeError):
        return False


def check_writable(path: str | os.PathLike, show: str | os.PathLike | None = None) -> None:
    """Refuse an output whose folder (``path``'s parent) cannot be created or written.

    Probes by creating and removing an empty folder in the nearest existing
    ancestor, so nothing is left behind.
    """
    path = Path(path).expanduser()
    probe = path.parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise OutputError(f"cannot write {show or path}: {probe} is a file, not a folder")
    try:
        tmp = tempfile.mkdtemp(prefix=".segtool-probe.", dir=probe)
    except OSError as exc:
        raise OutputError(f"cannot write {show or path}: {exc.strerror or exc} ({probe})") from None
    os.rmdir(tmp)


def check_model_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                       overwrite: bool = False) -> Path:
    """Check that a model may be saved to ``out`` (a folder, or a ``.safetensors`` file).

    Refused, whatever ``overwrite`` says: ``out`` is an input, or an input lies
    inside it (replacing the folder would delete it). Refused unless ``overwrite``:
    ``out`` exists and is not a model (a folder without ``model.json`` +
    ``model.safetensors``, any other file). An existing model is replaced, which
    is what training to the same name means.
    """
    out = Path(out).expanduser()
    real = _real(out)
    for item in inputs:
        src = _real(item)
        if _same_or_inside(src, real):
            what = "is" if src == real else "contains"
            raise OutputError(f"--out {out} {what} an input ({item}); choose another output")
    if out.is_symlink() and not out.exists():
        raise OutputError(f"--out {out} is a broken symbolic link")
    if out.exists():
        if out.name.endswith(".safetensors"):
            ok = is_model_file(out)
        else:
            ok = is_model_folder(out)
        if not ok and not overwrite:
            kind = "folder" if out.is_dir() else "file"
            raise OutputError(f"--out {out} is an existing {kind} that is not a model; "
                              f"choose a new name or pass --overwrite to replace it")
        if out.is_dir() and out.name.endswith(".safetensors"):
            raise OutputError(f"--out {out} is a folder; a .safetensors output must be a file")
    check_writable(out)
    return out


def check_output_path(out: str | os.PathLike, inputs: Iterable[str | os.PathLike] = (),
                      overwrite: bool = False) -> Path:
    """Check one output path (file or folder, e.g. a ``.zarr``) against the inputs.

    Refused, whatever ``overwrite`` says: ``out`` is an input, lies inside one, or
    contains one. Refused unless ``overwrite``: ``out`` already exists. This is the
    guard for :func:`napari_segtool.core.batch.predict_to_zarr` outputs.
    """
    out = Path(out).expanduser()
    real = _real(out)
    for item in inputs:
        src = _real(item)
        if _same_or_inside(src, real) or _same_or_inside(real, src):
            raise OutputError(f"output {out} would overwrite the input {item}; choose another output")
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise OutputError(f"output {out} exists; pass --overwrite to replace it")
    check_writable(out)
    return out


def unique_stems(stems: Sequence[str]) -> list[str]:
    """The stems, with ``-2``, ``-3``... appended where one repeats (first one kept as is)."""
    taken = set(stems)
    seen: set[str] = set()
    out = []
    for stem in stems:
        name = stem
        if stem in seen:
            i = 2
            while f"{stem}-{i}" in taken or f"{stem}-{i}" in seen:
                i += 1
            name = f"{stem}-{i}"
        seen.add(name)
        out.append(name)
    return out


def plan_label_outputs(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, stems: Sequence[str],
                       suffixes: Sequence[str] = ("_labels.tif",), overwrite: bool = False) -> list[list[Path]]:
    """Output paths ``out_dir/<stem><suffix>`` per input, checked before anything is written.

    ``stems`` are the inputs' stems; repeated ones get ``-2``, ``-3``... (see
    :func:`unique_stems`). Refused: ``out_dir`` exists and is not a folder; an
    output is an input (whatever ``overwrite`` says); an output already exists
    (unless ``overwrite``). Returns, per input, the paths for each suffix.
    """
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} is a file; give a folder for the results")
    real_inputs = {_real(p): p for p in inputs}
    plans = [[out_dir / f"{stem}{suffix}" for suffix in suffixes] for stem in unique_stems(list(stems))]
    existing = []
    for paths in plans:
        for path in paths:
            real = _real(path)
            for src, given in real_inputs.items():
                if _same_or_inside(real, src) or _same_or_inside(src, real):
                    raise OutputError(f"output {path} would overwrite the input {given}; choose another --out")
            if path.is_dir():
                raise OutputError(f"output {path} is a folder; move it away or choose another --out")
            if path.exists() or path.is_symlink():
                existing.append(path)
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise OutputError(f"output {existing[0]} exists{more}; pass --overwrite to replace")
    check_writable(out_dir / "x", show=out_dir)
    return plans


def made_dirs(folder: str | os.PathLike) -> list[Path]:
    """``mkdir -p folder``; returns the folders it created, deepest first."""
    folder = Path(folder).expanduser()
    missing = []
    probe = folder
    while not probe.exists() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def remove_empty_dirs(folders: Iterable[str | os.PathLike]) -> None:
    """Remove the given folders, deepest first, where they are (still) empty."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            pass
