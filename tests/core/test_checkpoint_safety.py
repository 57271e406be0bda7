"""Models on disk: replaced atomically (kill -9 at every system call of a save), validated before allocation."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from napari_segtool.core.checkpoint import ModelLoadError, list_models, load_model, read_meta, save_model
from napari_segtool.core.train import new_model
from napari_segtool.io import atomic
from napari_segtool.kernel.errors import ConfigError, ModelError

REPO = Path(__file__).resolve().parents[2]


def _model(description: str, width: int = 4):
    m = new_model("unet", "instance", 1, depth=1, width=width)
    m.meta.description = description
    return m


def _description(path: Path) -> str:
    return load_model(path).meta.description


def _leftovers(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != name and name in p.name)


# --------------------------------------------------------------------------- atomic replacement
def test_save_replaces_a_model_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "M"
    save_model(_model("old"), target)
    save_model(_model("new"), target)
    assert _description(target) == "new"
    assert _leftovers(tmp_path, "M") == []
    single = tmp_path / "one.safetensors"
    save_model(_model("old"), single)
    save_model(_model("new"), single)
    assert _description(single) == "new" and _leftovers(tmp_path, "one.safetensors") == []


def test_exchange_keeps_the_name_at_every_instant(tmp_path):
    """The swap is one rename(2) of both folders: the name never disappears."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "f").write_text("A"), (b / "f").write_text("B")
    if not atomic.exchange_paths(a, b):
        pytest.skip("this file system cannot exchange paths")
    assert (a / "f").read_text() == "B" and (b / "f").read_text() == "A"


def test_fallback_without_exchange_recovers_the_old_model_after_a_crash(tmp_path, monkeypatch):
    """Where the kernel cannot exchange, a crash between the two renames leaves the old model findable."""
    target = tmp_path / "M"
    save_model(_model("old"), target)
    monkeypatch.setattr(atomic, "exchange_paths", lambda a, b: False)
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # after M -> .M.segtool-old, before tmp -> M: the process "dies"
            raise KeyboardInterrupt
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        save_model(_model("new"), target)
    monkeypatch.setattr(os, "rename", real_rename)
    assert not target.exists()
    assert _description(target) == "old"  # found through the backup
    save_model(_model("newer"), target)
    assert _description(target) == "newer"


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    target = tmp_path / "M"
    save_model(_model("old"), target)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".M.{pid}-abcdef.tmp"
    stale.mkdir()
    (stale / "model.json").write_text("{}")
    legacy = tmp_path / "M.old"
    shutil.copytree(target, legacy)
    mine = tmp_path / f".M.{os.getpid()}-zzzzzz.tmp"  # a live process's temp is left alone
    mine.mkdir()
    save_model(_model("new"), target)
    assert _leftovers(tmp_path, "M") == [mine.name]


def test_legacy_backup_is_used_when_the_model_went_missing(tmp_path):
    """Older versions renamed M to M.old first; a kill there left M missing."""
    save_model(_model("old"), tmp_path / "M.old")
    assert _description(tmp_path / "M") == "old"


#: System calls that change the file system (openat/write also run at import and for output: left out).
_SYSCALLS = ("mkdir", "mkdirat", "chmod", "fchmodat", "ftruncate", "rename", "renameat", "renameat2",
             "unlink", "unlinkat", "rmdir", "fsync", "fdatasync")
_TRAIN = ["-m", "napari_segtool.cli", "-q", "train", "img.tif", "lab.tif", "--epochs", "1", "--steps-per-epoch", "1",
          "--batch-size", "1", "--patch-size", "16", "--out", "M"]


def _strace(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "SEGTOOL_NUM_THREADS": "1", "SEGTOOL_LOG_DIR": str(cwd / "logs")}
    return subprocess.run(["strace", "-f", "-qq", *args, sys.executable, *_TRAIN],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _workspace(folder: Path) -> None:
    import numpy as np
    import tifffile

    labels = np.zeros((24, 24), np.uint16)
    labels[4:12, 4:12] = 1
    tifffile.imwrite(folder / "img.tif", (labels * 50.0 + 5).astype(np.float32))
    tifffile.imwrite(folder / "lab.tif", labels)
    save_model(_model("old"), folder / "M")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (apt-get install strace)")
def test_kill_at_every_syscall_of_train_out_leaves_the_old_or_the_new_model(tmp_path):
    """``segtool train --out M`` over an existing model, killed (SIGKILL) at each file-system system call.

    A dry run under strace counts the calls of each kind the whole command makes
    (the output check, the save); then one run per call is killed by strace right
    at that call. Each time ``M`` must load, as exactly the old or the new model
    (nothing else, nothing torn), and the next save removes what the dead
    process left.
    """
    _workspace(tmp_path)
    dry = _strace(["-o", str(tmp_path / "trace.log"), "-e", "trace=" + ",".join(_SYSCALLS)], tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert len(_description_history(tmp_path / "M")[1]) == 1  # the dry run trained and replaced M
    lines = (tmp_path / "trace.log").read_text().splitlines()
    trials = []
    for name in _SYSCALLS:
        pattern = re.compile(rf"^\d+\s+{name}\(")
        trials += [(name, k) for k in range(1, 1 + sum(1 for line in lines if pattern.match(line)))]
    assert len(trials) >= 8  # probe, mkdir, chmod, renames, fsyncs, unlinks, rmdir...
    assert ("renameat2", 1) in trials or ("rename", 1) in trials, trials

    def trial(case):
        name, k = case
        folder = tmp_path / f"{name}-{k}"
        folder.mkdir()
        _workspace(folder)
        run = _strace(["-o", "/dev/null", "-e", f"inject={name}:signal=SIGKILL:when={k}"], folder)
        return case, folder, run.returncode

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(trial, trials))
    outcomes = set()
    for (name, k), folder, code in results:
        assert code != 0, f"not killed at {name} #{k}"
        assert (folder / "M").is_dir(), f"M missing after a kill at {name} #{k}"
        description, history = _description_history(folder / "M")
        assert (description, len(history)) in {("old", 0), ("", 1)}, f"kill at {name} #{k}"
        outcomes.add(len(history))
        save_model(_model("after"), folder / "M")  # the next save removes the dead process's temporaries
        assert _leftovers(folder, "M") == [], f"left after a kill at {name} #{k}"
    assert outcomes == {0, 1}  # some kills came before the swap, some after


def _description_history(path: Path):
    meta = load_model(path).meta
    return meta.description, meta.history


# --------------------------------------------------------------------------- validation before allocation
@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "m"
    save_model(_model("ok"), path)
    return path


def _edit(path: Path, **changes) -> None:
    meta = json.loads((path / "model.json").read_text())
    for key, value in changes.items():
        if value is _DROP:
            meta.pop(key, None)
        else:
            meta[key] = value
    (path / "model.json").write_text(json.dumps(meta))


_DROP = object()


@pytest.mark.parametrize("changes,message", [
    ({"arch": "evil"}, "unknown architecture"),
    ({"arch": 3}, "'arch' must be a string"),
    ({"task": "evil"}, "'task' must be"),
    ({"in_channels": "1"}, "'in_channels' must be an integer"),
    ({"in_channels": True}, "'in_channels' must be an integer"),
    ({"in_channels": 0}, "in_channels"),
    ({"arch": _DROP}, "lacks arch"),
    ({"task": _DROP}, "lacks task"),
    ({"classes": "ab"}, "'classes' must be a list"),
    ({"classes": ["only"]}, "'classes'"),
    ({"tile_size": 0}, "tile_size"),
    ({"arch_kwargs": []}, "'arch_kwargs' must be an object"),
    ({"arch_kwargs": {"depth": 1, "width": 100000, "out_channels": 4}}, "out of range"),
    ({"arch_kwargs": {"depth": 1, "width": 5000, "out_channels": 4}}, "do not fit"),
    ({"arch_kwargs": {"depth": 60, "width": 4, "out_channels": 4}}, "valid 'unet' network"),
    ({"arch_kwargs": {"depth": 2, "width": 4, "out_channels": 4}}, "do not fit"),
    ({"arch_kwargs": {"depth": 1, "width": 4, "out_channels": 4, "evil": 1}}, "valid 'unet' network"),
    ({"arch_kwargs": {"depth": 1, "width": float("nan")}}, "finite"),
])
def test_bad_model_json_is_a_model_error_before_anything_is_allocated(saved, changes, message, monkeypatch):
    _edit(saved, **changes)
    built = []
    from napari_segtool.models.unet import UNetArchitecture

    real_build = UNetArchitecture.build
    monkeypatch.setattr(UNetArchitecture, "build",
                        lambda self, meta: built.append(torch.empty(0).device.type) or real_build(self, meta))
    with pytest.raises(ModelLoadError, match=re.escape(message)) as info:
        load_model(saved)
    assert isinstance(info.value, ModelError) and "\n" not in str(info.value)
    assert set(built) <= {"meta"}  # only ever built on the meta device (no memory)


def test_non_utf8_and_non_object_metadata(saved, tmp_path, monkeypatch):
    (saved / "model.json").write_bytes(b"\xff\xfe{not utf-8")
    with pytest.raises(ModelLoadError, match="UTF-8"):
        read_meta(saved)
    (saved / "model.json").write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="JSON object"):
        read_meta(saved)


def test_models_lists_a_broken_user_model_instead_of_crashing(saved, tmp_path, monkeypatch):
    user = tmp_path / "user"
    user.mkdir()
    shutil.copytree(saved, user / "good")
    shutil.copytree(saved, user / "bad")
    (user / "bad" / "model.json").write_bytes(b"\xff\xfe\x00garbage")
    monkeypatch.setenv("SEGTOOL_MODELS_DIR", str(user))
    infos = {i.name: i for i in list_models() if i.source == "user"}
    assert infos["good"].meta is not None
    assert infos["bad"].meta is None and "UTF-8" in infos["bad"].one_line()


def test_every_shipped_model_validates():
    shipped = [i for i in list_models() if i.source == "shipped"]
    assert shipped and all(i.meta is not None for i in shipped), [i.error for i in shipped]


def test_unavailable_device_is_a_config_error(saved):
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="not available"):
            load_model(saved, device="cuda")
    with pytest.raises(ConfigError, match="unsupported device"):
        load_model(saved, device="meta")
    with pytest.raises(ConfigError):
        load_model(saved, device="gpu please")
