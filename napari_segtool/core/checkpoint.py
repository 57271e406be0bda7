"""Saving and loading models as safetensors weights + JSON metadata.

A model is either a folder ``NAME/`` holding ``model.safetensors``, ``model.json``
and optionally ``card.md``, or a single ``NAME.safetensors`` file whose header
metadata carries the same JSON under the key ``segtool``. Loading only ever parses
safetensors and JSON: nothing is unpickled, so a model file cannot run code.

Models are found by name in the shipped zoo (``napari_segtool/zoo``) and in the user
model folder (``$SEGTOOL_MODELS_DIR``, default ``~/.local/share/napari-segtool/models``).

Loading validates before it allocates: ``model.json`` is checked field by field
(known architecture, task, types, ranges), then the network is built on torch's
``meta`` device (no memory) and its parameter names and shapes are compared with
the tensor shapes in the safetensors header; only a model that fits is built for
real and filled. Every failure is a :class:`ModelLoadError` (a
:class:`~napari_segtool.kernel.errors.ModelError`) with one line.

Saving is crash-safe: the new model is written to a hidden temporary folder
(``.NAME.<pid>-<random>.tmp``), each file fsynced, then swapped with the old
folder in one atomic exchange (see :func:`napari_segtool.io.atomic.replace_dir`),
so ``NAME`` always holds the old or the new complete model. Temporaries left by
killed processes are removed by the next save of the same name.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from napari_segtool.core.model import ModelMeta, SegModel
from napari_segtool.io.atomic import clean_stale_temps, recover_dir, replace_dir, temp_prefix
from napari_segtool.kernel.errors import ModelError
from napari_segtool.kernel.params import Param, check_settings

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
CARD_FILE = "card.md"
ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"


class ModelLoadError(ModelError):
    """A model name or path could not be turned into a usable model."""


def user_models_dir() -> Path:
    """Folder where user-trained models are looked up by name."""
    env = os.environ.get("SEGTOOL_MODELS_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".local" / "share" / "napari-segtool" / "models"


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("napari-segtool")
    except Exception:  # not installed (running from a checkout)
        return "0+unknown"


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _clean_leftovers(path: Path) -> None:
    """Temporaries of killed saves of ``path``, and the ``NAME.old`` backup older versions left."""
    clean_stale_temps(path.parent, path.name)
    legacy = path.with_name(path.name + ".old")
    if _is_model_dir(path) and _is_model_dir(legacy):
        _rmtree(legacy)


def _is_model_dir(path: Path) -> bool:
    return path.is_dir() and (path / WEIGHTS_FILE).is_file() and (path / META_FILE).is_file()


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _default_mode(directory: bool) -> int:
    """Permissions a plain ``open``/``mkdir`` would give (temp files and folders are private)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}


def save_model(model: SegModel, path: str | os.PathLike) -> Path:
    """Write ``model`` atomically to a folder, or to one file if ``path`` ends in ``.safetensors``.

    Whatever ``path`` held is replaced (check it first, e.g. with
    :func:`napari_segtool.io.outputs.check_model_output`); at no instant is it
    missing or partly written, even if the process is killed (see module doc).
    """
    path = Path(path).expanduser()
    meta = model.meta
    if not meta.version:
        meta.version = _package_version()
    meta.halo = model.architecture.measure_halo(model.net, meta)  # a property of these weights, kept with them
    meta_json = json.dumps(meta.to_dict(), indent=2, sort_keys=True)
    tensors = _state_dict(model.net)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(path)
    if path.suffix == ".safetensors":
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        try:
            save_file(tensors, str(tmp), metadata={"segtool": meta_json})
            _fsync_file(tmp)
            os.chmod(tmp, _default_mode(directory=False))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return path
    tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp"))
    try:
        os.chmod(tmp_dir, _default_mode(directory=True))
        save_file(tensors, str(tmp_dir / WEIGHTS_FILE), metadata={"segtool": meta_json})
        (tmp_dir / META_FILE).write_text(meta_json, encoding="utf-8")
        if meta.card:
            (tmp_dir / CARD_FILE).write_text(meta.card, encoding="utf-8")
        for item in tmp_dir.iterdir():
            os.chmod(item, _default_mode(directory=False))
            _fsync_file(item)
        replace_dir(tmp_dir, path)
    except BaseException:
        _rmtree(tmp_dir)
        raise
    return path


def _existing(path: Path) -> Path | None:
    """``path``, or what an interrupted swap left of it (hidden backup, legacy ``NAME.old``)."""
    found = recover_dir(path)
    if found is not None:
        return found
    legacy = path.with_name(path.name + ".old")
    return legacy if _is_model_dir(legacy) else None


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """Find a model by path, or by name in the user folder, then in the shipped zoo."""
    if not str(name_or_path).strip():
        raise ModelLoadError("empty model name")
    candidate = Path(name_or_path).expanduser()
    found = _existing(candidate)
    if found is not None:
        return found
    name = str(name_or_path)
    if "/" not in name and os.sep not in name:
        for root in (user_models_dir(), ZOO_DIR):
            for option in (root / name, root / f"{name}.safetensors"):
                found = _existing(option)
                if found is not None:
                    return found
    known = ", ".join(m.name for m in list_models()) or "none"
    raise ModelLoadError(f"unknown model '{name}' (known models: {known})")


#: Field -> accepted JSON types of ``model.json`` (bool is never an int here).
_META_TYPES: dict[str, tuple[type, ...]] = {
    "arch": (str,), "task": (str,), "in_channels": (int,), "arch_kwargs": (dict,), "classes": (list,),
    "normalization": (dict,), "postprocess": (dict,), "receptive_field": (int, float), "tile_size": (int,),
    "name": (str,), "description": (str,), "card": (str,), "history": (list,), "training": (dict,),
    "version": (str,), "scale": (dict,),
}
_REQUIRED = ("arch", "task", "in_channels")
#: ``normalization``: the keyword arguments of :func:`napari_segtool.ops.normalize.fit_normalizer`.
_NORMALIZATION_PARAMS = (
    Param("method", str, "percentile", choices=("percentile", "asinh"), help="intensity normalisation"),
    Param("low", float, 1.0, 0.0, 100.0, help="percentile mapped to 0"),
    Param("high", float, 99.8, 0.0, 100.0, help="percentile mapped to 1"),
    Param("softening", float, 3.0, 1e-6, 1e6, help="asinh softening, in noise sigmas"),
)
_MAX_KWARG_INT = 2**16
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object", list: "a list"}


def _check_kwarg_value(key: str, value: Any, depth: int = 0) -> None:
    if depth > 3:
        raise ValueError(f"arch_kwargs['{key}'] is nested too deeply")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, int):
        if not -_MAX_KWARG_INT <= value <= _MAX_KWARG_INT:
            raise ValueError(f"arch_kwargs['{key}'] = {value} is out of range (|value| <= {_MAX_KWARG_INT})")
    elif isinstance(value, float):
        if not math.isfinite(value) or abs(value) > _MAX_KWARG_INT:
            raise ValueError(f"arch_kwargs['{key}'] = {value} is not a finite number <= {_MAX_KWARG_INT}")
    elif isinstance(value, str):
        if len(value) > 200:
            raise ValueError(f"arch_kwargs['{key}'] is a string of {len(value)} characters")
    elif isinstance(value, list):
        if len(value) > 64:
            raise ValueError(f"arch_kwargs['{key}'] is a list of {len(value)} items (at most 64)")
        for item in value:
            _check_kwarg_value(key, item, depth + 1)
    else:
        raise ValueError(f"arch_kwargs['{key}'] has unsupported type {type(value).__name__}")


def validate_meta_dict(data: Any) -> ModelMeta:
    """Check ``model.json`` content field by field and return its :class:`ModelMeta`.

    Required: ``arch`` (a registered architecture), ``task`` (``"instance"``, ``"regression"`` or
    ``"semantic"``), ``in_channels`` (1..4096). Every other known field must have
    its JSON type; ``classes`` is a list of at least two strings; ``tile_size``
    16..16384; ``arch_kwargs`` holds only numbers (|value| <= 65536), strings,
    booleans and short lists of them. Unknown fields are ignored. Raises
    :class:`ValueError` with one line saying what is wrong.
    """
    from napari_segtool.models.registry import available_architectures

    if not isinstance(data, dict):
        raise ValueError(f"the metadata must be a JSON object, not {type(data).__name__}")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"the metadata lacks {', '.join(missing)}")
    for key, types in _META_TYPES.items():
        if key not in data:
            continue
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ValueError(f"'{key}' must be {_TYPE_NAMES[types[0]]}, got {json.dumps(value)[:40]}")
    if data["arch"] not in available_architectures():
        raise ValueError(f"unknown architecture '{data['arch'][:40]}' (known: {', '.join(available_architectures())})")
    if data["task"] not in ("instance", "semantic", "regression"):
        raise ValueError(f"'task' must be 'instance', 'semantic' or 'regression', got '{data['task'][:40]}'")
    if not 1 <= data["in_channels"] <= 4096:
        raise ValueError(f"'in_channels' must be 1..4096, got {data['in_channels']}")
    if "tile_size" in data and not 16 <= data["tile_size"] <= 16384:
        raise ValueError(f"'tile_size' must be 16..16384, got {data['tile_size']}")
    if "receptive_field" in data and not (math.isfinite(data["receptive_field"]) and
                                          0 <= data["receptive_field"] <= 1_000_000):
        raise ValueError(f"'receptive_field' must be 0..1000000, got {data['receptive_field']}")
    if "classes" in data:
        classes = data["classes"]
        if len(classes) < 2 or not all(isinstance(c, str) for c in classes) or len(classes) > 65536:
            raise ValueError("'classes' must be a list of 2..65536 class names (strings)")
    for key, value in data.get("arch_kwargs", {}).items():
        _check_kwarg_value(str(key), value)
    _check_nested(data)
    for key, value in data.get("scale", {}).items():
        if key == "auto":
            if not isinstance(value, bool):
                raise ValueError(f"'scale.auto' must be true or false, got {json.dumps(value)[:40]}")
        elif key in ("diameter", "low", "high"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                    math.isfinite(value) and 0 <= value <= 1_000_000):
                raise ValueError(f"'scale.{key}' must be a number 0..1000000, got {json.dumps(value)[:40]}")
    try:
        return ModelMeta.from_dict(data)
    except (TypeError, AttributeError) as exc:
        raise ValueError(" ".join(str(exc).split())) from None


def _check_nested(data: dict) -> None:
    """The contents of ``normalization``, ``training.object_size`` and ``history`` (read at run time)."""
    norm = data.get("normalization", {})
    check_settings(norm, _NORMALIZATION_PARAMS, "normalization.")
    if norm.get("low", 0.0) >= norm.get("high", 100.0):
        raise ValueError(f"'normalization.low' ({norm['low']}) must be below 'normalization.high' ({norm['high']})")
    sizes = data.get("training", {}).get("object_size", {})
    if not isinstance(sizes, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
            for v in sizes.values()):
        raise ValueError(f"'training.object_size' must map names to numbers >= 0, got {json.dumps(sizes)[:40]}")
    if not all(isinstance(entry, dict) for entry in data.get("history", [])):
        raise ValueError("'history' must be a list of objects (one per training run)")


def _load_json(path: Path) -> Any:
    text = path.read_bytes()
    if len(text) > 64 * 2**20:
        raise ValueError(f"{path.name} is {len(text) >> 20} MiB; model metadata is small JSON")
    return json.loads(text.decode("utf-8"))


def read_meta(path: Path) -> ModelMeta:
    """Read and validate a model's metadata without loading its weights."""
    path = Path(path)
    if path.suffix.lower() == ".zip":
        return read_bioimageio_meta(path)  # a bioimage.io package we exported
    try:
        if path.is_dir():
            meta_path = path / META_FILE
            if meta_path.exists():
                data = _load_json(meta_path)
            elif (path / WEIGHTS_FILE).exists():
                data = _header_meta(path / WEIGHTS_FILE)
            else:
                raise ModelLoadError(f"{path} is not a model folder (no {META_FILE} or {WEIGHTS_FILE})")
            meta = validate_meta_dict(data)
            card = path / CARD_FILE
            if card.exists() and not meta.card:
                meta.card = card.read_text(encoding="utf-8", errors="replace")
            return meta
        return validate_meta_dict(_header_meta(path))
    except ModelLoadError:
        raise
    except (OSError, ValueError, SafetensorError, TypeError, RecursionError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if isinstance(exc, UnicodeDecodeError):
            reason = "not UTF-8 text"
        raise ModelLoadError(f"cannot read model metadata from {path}: {reason}") from None


def _header_meta(weights: Path) -> dict:
    with safe_open(str(weights), framework="pt") as f:
        header = f.metadata() or {}
    if "segtool" not in header:
        raise ModelLoadError(f"{weights} has no segtool metadata")
    return json.loads(header["segtool"])


def weight_shapes(weights: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (nothing is loaded)."""
    with safe_open(str(weights), framework="pt") as f:
        return {k: tuple(int(d) for d in f.get_slice(k).get_shape()) for k in f.keys()}


def check_weights_fit(meta: ModelMeta, weights: str | os.PathLike) -> None:
    """Raise :class:`ModelLoadError` unless ``weights`` has exactly the tensors ``meta``'s network has
    (and ``meta.postprocess`` holds only valid settings of its architecture and the core).

    The network is built on torch's ``meta`` device, which allocates nothing, so
    absurd ``arch_kwargs`` (huge widths, depths) are caught before any memory is used.
    """
    from napari_segtool.models.registry import get_architecture

    try:
        shapes = weight_shapes(weights)
    except (OSError, SafetensorError) as exc:
        raise ModelLoadError(f"cannot read weights {weights}: {' '.join(str(exc).split())}") from None
    try:  # post-processing settings typed by the architecture's schema and the core's
        get_architecture(meta.arch).check_postprocess(meta.postprocess)
    except ValueError as exc:
        raise ModelLoadError(f"model metadata of {weights}: {' '.join(str(exc).split())[:200]}") from None
    try:
        with torch.device("meta"):
            net = get_architecture(meta.arch).build(meta)
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    except Exception as exc:  # any failure to build means the metadata is unusable
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ModelLoadError(f"model metadata of {weights} does not describe a valid '{meta.arch}' network "
                             f"(arch_kwargs {json.dumps(meta.arch_kwargs)[:120]}): {reason}") from None
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    wrong = [k for k in expected if k in shapes and expected[k] != shapes[k]]
    if missing or extra or wrong:
        if wrong:
            k = wrong[0]
            detail = f"'{k}' is {list(shapes[k])} in the file but {list(expected[k])} for the metadata"
        elif missing:
            detail = f"{len(missing)} tensor(s) missing, e.g. '{missing[0]}'"
        else:
            detail = f"{len(extra)} unexpected tensor(s), e.g. '{extra[0]}'"
        raise ModelLoadError(f"weights in {weights} do not fit architecture '{meta.arch}' with arch_kwargs "
                             f"{json.dumps(meta.arch_kwargs)[:120]}: {detail}")


def load_model(name_or_path: str | os.PathLike, device: str | torch.device | None = None) -> SegModel:
    """Load a model by shipped/user name or path; weights via safetensors only.

    Raises :class:`ModelLoadError` (unknown, unreadable, invalid metadata, weights
    that do not fit) or :class:`~napari_segtool.kernel.errors.ConfigError` (a
    device that is not available).
    """
    from napari_segtool.core.validate import check_device
    from napari_segtool.models.registry import get_architecture

    if device is not None:
        device = check_device(device)
    path = resolve_model_path(name_or_path)
    if path.suffix.lower() == ".zip" or path.name.endswith(("rdf.yaml", "bioimageio.yaml")):
        return load_bioimageio(path, device=device)  # a bioimage.io package we exported
    meta = read_meta(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    check_weights_fit(meta, weights)
    try:
        state = load_file(str(weights), device="cpu")
    except (OSError, SafetensorError) as exc:
        raise ModelLoadError(f"cannot read weights {weights}: {' '.join(str(exc).split())}") from None
    arch = get_architecture(meta.arch)
    try:
        net = arch.build(meta)
        net.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelLoadError(f"weights in {weights} do not fit architecture '{meta.arch}': "
                             f"{' '.join(str(exc).split())[:300]}") from None
    net.eval()
    if not meta.name:
        meta.name = path.name.removesuffix(".safetensors")
    model = SegModel(net=net, meta=meta)
    if device is not None:
        model.to(device)
    return model


@dataclass
class ModelInfo:
    """One line of ``segtool models``."""

    name: str
    path: Path
    source: str  # "shipped" or "user"
    meta: ModelMeta | None
    error: str = ""

    def one_line(self) -> str:
        if self.meta is None:
            return f"{self.name:<18} {self.source:<8} unreadable: {self.error}"
        m = self.meta
        summary = m.description.splitlines()[0] if m.description else ""
        return (f"{self.name:<18} {self.source:<8} {m.arch:<9} {m.task:<9} "
                f"in={m.in_channels} classes={len(m.classes)} rf={m.receptive_field}px  {summary}")


def list_models() -> list[ModelInfo]:
    """Shipped and user models, each with its metadata (or the error reading it)."""
    infos: list[ModelInfo] = []
    for source, root in (("shipped", ZOO_DIR), ("user", user_models_dir())):
        if not root.is_dir():
            continue
        try:
            entries = sorted(root.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue  # temporaries of a save in progress
            is_model = (entry.is_dir() and (entry / WEIGHTS_FILE).exists()) or entry.suffix == ".safetensors"
            if not is_model:
                continue
            name = entry.name.removesuffix(".safetensors")
            try:
                infos.append(ModelInfo(name, entry, source, read_meta(entry)))
            except ModelLoadError as exc:
                infos.append(ModelInfo(name, entry, source, None, str(exc)))
    return infos


# --- bioimage.io packages that core.export wrote: read back through the same checks, never unpickled ---

#: Names of our own model inside a bioimage.io package (see :func:`load_bioimageio`).
PACKAGE_WEIGHTS = "model.safetensors"
PACKAGE_META = "model.json"
MAX_MEMBER_BYTES = 4 << 30  # a model file in a package larger than this is refused (zip bombs)


def _read_member(path: Path, name: str) -> bytes | None:
    """The bytes of file ``name`` of a package (zip, folder, or the folder of its yaml); ``None`` if absent."""
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            try:
                info = zf.getinfo(name)
            except KeyError:
                return None
            if info.file_size > MAX_MEMBER_BYTES:
                raise ModelError(f"{name} in {path} is {info.file_size >> 20} MiB; refusing to unpack it")
            return zf.read(info)
    if path.is_file() and not path.name.endswith(("rdf.yaml", "bioimageio.yaml")):
        raise zipfile.BadZipFile("not a zip file")
    folder = path if path.is_dir() else path.parent
    member = folder / name
    return member.read_bytes() if member.is_file() else None


def read_bioimageio_meta(path: str | os.PathLike):
    """The :class:`~napari_segtool.kernel.meta.ModelMeta` of a package napari-segtool exported (no weights read)."""
    path = Path(path).expanduser()
    try:
        data = _read_member(path, PACKAGE_META)
        if data is None:
            raise ModelLoadError(f"{path} is not a bioimage.io package exported by napari-segtool (no {PACKAGE_META})")
        if len(data) > 64 * 2**20:
            raise ModelLoadError(f"{PACKAGE_META} in {path} is {len(data) >> 20} MiB; model metadata is small JSON")
        meta = validate_meta_dict(json.loads(data.decode("utf-8")))
    except ModelLoadError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, ModelError) as exc:
        raise ModelLoadError(f"cannot read model metadata from {path}: {' '.join(str(exc).split())}") from None
    if not meta.name:
        meta.name = path.name.removesuffix(".zip")
    return meta


def load_bioimageio(path: str | os.PathLike, device: str | torch.device | None = None) -> SegModel:
    """Load a bioimage.io package that napari-segtool exported as a :class:`SegModel`.

    Reads the package's ``model.safetensors`` (weights + JSON metadata) with the same checks as
    :func:`napari_segtool.core.checkpoint.load_model`; the pickled ``weights.pt`` and the
    architecture source in the package are never loaded or run. Packages from other tools
    (no ``model.safetensors``) raise :class:`~napari_segtool.core.checkpoint.ModelLoadError`.
    """
    path = Path(path).expanduser()
    try:
        data = _read_member(path, PACKAGE_WEIGHTS)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelLoadError(f"cannot read bioimage.io package {path}: {' '.join(str(exc).split())}") from None
    if data is None:
        raise ModelLoadError(f"{path} is a bioimage.io package that napari-segtool did not export (no "
                             f"{PACKAGE_WEIGHTS}); only packages made by `segtool export` can be loaded")
    with tempfile.TemporaryDirectory(prefix="segtool-import-") as tmp:
        weights = Path(tmp) / PACKAGE_WEIGHTS
        weights.write_bytes(data)
        model = load_model(weights, device=device)
    if not model.meta.name or model.meta.name == "model":
        model.meta.name = path.name.removesuffix(".zip")
    return model
