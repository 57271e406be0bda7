"""The wheel a user installs: built from the sources, holds the zoo, and `segtool predict nuclei` runs from it.

The wheel is installed with ``--no-deps`` into a fresh virtual environment that reuses this
environment's packages through a path entry (torch alone is gigabytes; nothing is downloaded).
The path entry adds the directory only, so this checkout's editable install is not seen: the
package must come from the wheel.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, **kwargs):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.mark.slow
def test_wheel_holds_the_zoo_installs_and_predicts(tmp_path):
    pytest.importorskip("build")
    # build from a copy, so no build/ or egg-info lands in the checkout
    src = tmp_path / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".*.tmp")
    shutil.copytree(ROOT / "napari_segtool", src / "napari_segtool", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    dist = tmp_path / "dist"
    # no isolation: nothing downloaded; setuptools >= 70.1 builds wheels without the "wheel" package
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check", "--outdir", dist, src])
    (wheel,) = dist.glob("napari_segtool-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for model in ("nuclei", "nuclei-maskrcnn", "astro-sources"):
        for part in ("model.safetensors", "model.json", "card.md"):
            assert f"napari_segtool/zoo/{model}/{part}" in names
    assert "napari_segtool/napari.yaml" in names and "napari_segtool/core/export.py" in names
    assert not any("tests/" in n for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv])
    py = venv / "bin" / "python"
    site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "reuse_test_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([py, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel])

    work = tmp_path / "work"
    work.mkdir()
    where = _run([py, "-c", "import napari_segtool, sys; print(napari_segtool.__file__)"], cwd=work).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel, not this checkout
    from napari_segtool.sim.nuclei import simulate_nuclei

    tifffile.imwrite(work / "cells.tif", simulate_nuclei((128, 128), seed=4, snr=20.0).image.astype(np.float32))
    models = _run([venv / "bin" / "segtool", "models"], cwd=work).stdout
    assert "nuclei" in models and "shipped" in models
    out = _run([venv / "bin" / "segtool", "-q", "predict", "nuclei", "cells.tif", "--out", "results"], cwd=work)
    assert "objects" in out.stdout
    labels = tifffile.imread(work / "results" / "cells_labels.tif")
    assert labels.shape == (128, 128) and labels.max() > 0
