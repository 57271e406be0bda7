"""Saving and loading models as safetensors weights + JSON metadata.

A model is either a folder ``NAME/`` holding ``model.safetensors``, ``model.json``
and optionally ``card.md``, or a single ``NAME.safetensors`` file whose header
metadata carries the same JSON under the key ``segtool``. Loading only ever parses
safetensors and JSON: nothing is unpickled, so a model file cannot run code.

Models are found by name in the shipped zoo (``napari_segtool/zoo``) and in the user
model folder (``$SEGTOOL_MODELS_DIR``, default ``~/.local/share/napari-segtool/models``).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from safetensors import safe_open

from napari_segtool.core.model import ModelMeta, SegModel

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
CARD_FILE = "card.md"
ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"


class ModelLoadError(ValueError):
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


def _atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written temp folder into place, keeping the old one until then."""
    if final.exists():
        backup = final.with_name(final.name + ".old")
        if backup.exists():
            _rmtree(backup)
        os.replace(final, backup)
        os.replace(tmp, final)
        _rmtree(backup)
    else:
        os.replace(tmp, final)


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
    """Write ``model`` atomically to a folder, or to one file if ``path`` ends in ``.safetensors``."""
    path = Path(path).expanduser()
    meta = model.meta
    if not meta.version:
        meta.version = _package_version()
    meta_json = json.dumps(meta.to_dict(), indent=2, sort_keys=True)
    tensors = _state_dict(model.net)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        save_file(tensors, tmp, metadata={"segtool": meta_json})
        os.chmod(tmp, _default_mode(directory=False))
        os.replace(tmp, path)
        return path
    tmp_dir = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    os.chmod(tmp_dir, _default_mode(directory=True))
    save_file(tensors, str(tmp_dir / WEIGHTS_FILE), metadata={"segtool": meta_json})
    os.chmod(tmp_dir / WEIGHTS_FILE, _default_mode(directory=False))
    (tmp_dir / META_FILE).write_text(meta_json)
    if meta.card:
        (tmp_dir / CARD_FILE).write_text(meta.card)
    _atomic_replace_dir(tmp_dir, path)
    return path


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """Find a model by path, or by name in the user folder, then in the shipped zoo."""
    candidate = Path(name_or_path).expanduser()
    if candidate.exists():
        return candidate
    name = str(name_or_path)
    for root in (user_models_dir(), ZOO_DIR):
        for option in (root / name, root / f"{name}.safetensors"):
            if option.exists():
                return option
    known = ", ".join(m.name for m in list_models()) or "none"
    raise ModelLoadError(f"unknown model '{name}' (known models: {known})")


def read_meta(path: Path) -> ModelMeta:
    """Read a model's metadata without loading its weights."""
    try:
        if path.is_dir():
            meta_path = path / META_FILE
            if meta_path.exists():
                data = json.loads(meta_path.read_text())
            else:
                data = _header_meta(path / WEIGHTS_FILE)
            meta = ModelMeta.from_dict(data)
            card = path / CARD_FILE
            if card.exists() and not meta.card:
                meta.card = card.read_text()
            return meta
        return ModelMeta.from_dict(_header_meta(path))
    except (OSError, json.JSONDecodeError, SafetensorError, TypeError) as exc:
        raise ModelLoadError(f"cannot read model metadata from {path}: {exc}") from exc


def _header_meta(weights: Path) -> dict:
    with safe_open(str(weights), framework="pt") as f:
        header = f.metadata() or {}
    if "segtool" not in header:
        raise ModelLoadError(f"{weights} has no segtool metadata")
    return json.loads(header["segtool"])


def load_model(name_or_path: str | os.PathLike, device: str | torch.device | None = None) -> SegModel:
    """Load a model by shipped/user name or path; weights via safetensors only."""
    from napari_segtool.models.registry import get_architecture

    path = resolve_model_path(name_or_path)
    meta = read_meta(path)
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    try:
        state = load_file(str(weights), device="cpu")
    except (OSError, SafetensorError) as exc:
        raise ModelLoadError(f"cannot read weights {weights}: {exc}") from exc
    arch = get_architecture(meta.arch)
    net = arch.build(meta)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(f"weights in {weights} do not fit architecture '{meta.arch}': {exc}") from exc
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
        for entry in sorted(root.iterdir()):
            is_model = (entry.is_dir() and (entry / WEIGHTS_FILE).exists()) or entry.suffix == ".safetensors"
            if not is_model:
                continue
            name = entry.name.removesuffix(".safetensors")
            try:
                infos.append(ModelInfo(name, entry, source, read_meta(entry)))
            except ModelLoadError as exc:
                infos.append(ModelInfo(name, entry, source, None, str(exc)))
    return infos
