"""Crash-safety of the atomic writers: the old file survives a failing write."""

import json
import os

import numpy as np
import pytest
import tifffile

from napari_segtool.io.atomic import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_write_tiff,
)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_write_bytes_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "file.bin"
    assert atomic_write_bytes(target, b"one") == target
    assert target.read_bytes() == b"one"
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert _leftovers(target.parent) == []


def test_failing_write_keeps_old_file(tmp_path):
    target = tmp_path / "state.txt"
    atomic_write_text(target, "old content")

    def boom(fh):
        fh.write(b"half of the new cont")
        raise RuntimeError("crash in the middle")

    with pytest.raises(RuntimeError, match="crash"):
        atomic_write(target, boom)
    assert target.read_text() == "old content"
    assert _leftovers(tmp_path) == []


def test_failing_write_creates_nothing(tmp_path):
    target = tmp_path / "new.txt"
    with pytest.raises(ZeroDivisionError):
        atomic_write(target, lambda fh: 1 / 0)
    assert not target.exists()
    assert _leftovers(tmp_path) == []


def test_json_sorted_indented_and_unserialisable_is_harmless(tmp_path):
    target = tmp_path / "cfg.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    text = target.read_text()
    assert json.loads(text) == {"a": [1, 2], "b": 1}
    assert text.index('"a"') < text.index('"b"') and '\n  "a"' in text
    with pytest.raises(TypeError):
        atomic_write_json(target, {"x": object()})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}


def test_permissions_of_replaced_file_are_kept(tmp_path):
    target = tmp_path / "p.txt"
    atomic_write_text(target, "x")
    os.chmod(target, 0o640)
    atomic_write_text(target, "y")
    assert (target.stat().st_mode & 0o777) == 0o640


def test_tiff_round_trip_and_failure(tmp_path):
    target = tmp_path / "img.tif"
    data = np.arange(12, dtype=np.uint16).reshape(3, 4)
    atomic_write_tiff(target, data, compression="zlib")
    np.testing.assert_array_equal(tifffile.imread(target), data)
    with pytest.raises(Exception):
        atomic_write_tiff(target, np.zeros((2, 2), dtype=object))
    np.testing.assert_array_equal(tifffile.imread(target), data)
    assert _leftovers(tmp_path) == []


# ----------------------------------------------------------------------------- temporaries and folder swaps
def test_stale_temporaries_of_dead_processes_are_cleaned_on_the_next_write(tmp_path):
    import subprocess
    import sys

    from napari_segtool.io.atomic import clean_stale_temps

    pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                             text=True).stdout)
    dead = tmp_path / f".f.json.{pid}-abc123.tmp"
    dead.write_text("half")
    live = tmp_path / f".f.json.{os.getpid()}-abc123.tmp"
    live.write_text("being written")
    old = tmp_path / ".f.json.k2j3h4g5.tmp"  # older naming, no pid: removed once over an hour old
    old.write_text("x")
    os.utime(old, (0, 0))
    young = tmp_path / ".f.json.a1b2c3d4.tmp"
    young.write_text("x")
    other = tmp_path / ".g.json.99999999-abc.tmp"
    other.write_text("another file's temp")
    assert sorted(p.name for p in clean_stale_temps(tmp_path, "f.json")) == sorted([dead.name, old.name])
    assert live.exists() and young.exists() and other.exists()


def test_replace_dir_swaps_folders_and_keeps_nothing_of_the_old(tmp_path):
    from napari_segtool.io.atomic import replace_dir

    final = tmp_path / "out"
    for content in ("one", "two"):
        tmp = tmp_path / f".out.{content}.tmp"
        tmp.mkdir()
        (tmp / "data").write_text(content)
        replace_dir(tmp, final)
        assert (final / "data").read_text() == content and not tmp.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_write_cleans_the_folder_of_dead_processes_temporaries_once(tmp_path):
    import subprocess
    import sys

    from napari_segtool.io.atomic import atomic_write_text

    pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                             text=True).stdout)
    for name in ("a.npz", "b.json"):
        (tmp_path / f".{name}.{pid}-x1y2z3.tmp").write_text("torn")
    (tmp_path / ".user-file.tmp").write_text("not ours")
    atomic_write_text(tmp_path / "c.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".user-file.tmp", "c.json"]
