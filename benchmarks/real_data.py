"""Real annotated images for benchmarks, taken from a package on PyPI (nothing is committed).

The ``stardist`` wheel (BSD-3) ships two real fluorescence-nuclei images with
hand-made instance labels: ``img2d.tif``/``mask2d.tif`` (512×512, 125 nuclei, a
DSB2018-style image) and ``img3d.tif``/``mask3d.tif`` (31×61×57 stack). We fetch the
wheel with ``pip download`` once into ``benchmarks/.cache`` and read the TIFFs
straight out of the zip. The project never trains its shipped models on them, so
they are honest held-out real data.
"""
from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import tifffile

CACHE = Path(__file__).resolve().parent / ".cache"
WHEEL_SPEC = "stardist==0.9.2"


def _wheel() -> Path:
    found = sorted(CACHE.glob("stardist-*.whl"))
    if not found:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(CACHE), WHEEL_SPEC],
                       check=True)
        found = sorted(CACHE.glob("stardist-*.whl"))
    return found[-1]


def _read(name: str) -> np.ndarray:
    with zipfile.ZipFile(_wheel()) as zf:
        return tifffile.imread(io.BytesIO(zf.read(f"stardist/data/images/{name}.tif")))


def nuclei_2d() -> tuple[np.ndarray, np.ndarray]:
    """Real 512×512 fluorescence nuclei image and its instance labels."""
    return _read("img2d"), _read("mask2d").astype(np.int32)


def nuclei_3d() -> tuple[np.ndarray, np.ndarray]:
    """Real ZYX nuclei stack and its 3D instance labels."""
    return _read("img3d"), _read("mask3d").astype(np.int32)
