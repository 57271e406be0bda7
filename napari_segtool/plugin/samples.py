"""Sample data: simulated nuclei stack, simulated galaxy field, and the real Hubble Deep Field.

napari calls sample providers on the GUI thread. Simulating the nuclei stack takes
1.5-2 s, so it is simulated once, in the warm-up thread the first widget starts
(:func:`prepare_cache`), and kept in the user's cache folder
(``$SEGTOOL_CACHE_DIR``, else ``$XDG_CACHE_HOME/napari-segtool`` or ``~/.cache/napari-segtool``);
opening the sample then reads a 4 MB file. Each sample layer is added hidden and shown on the next
turn of the event loop (``plugin/_reveal.py``), so napari's layer building and its first slicing and
drawing do not freeze the window in one piece.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np

from napari_segtool.plugin._layers import META_KEY

NUCLEI_SHAPE = (16, 256, 256)
NUCLEI_SEED = 7
_cache_lock = threading.Lock()  # the warm-up thread and the GUI thread never simulate the same stack twice


def cache_dir() -> Path:
    root = os.environ.get("SEGTOOL_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "napari-segtool"


def _cache_path(shape: tuple[int, ...], seed: int) -> Path:
    return cache_dir() / "samples" / f"nuclei-{'x'.join(map(str, shape))}-{seed}.npz"


def _contrast_limits(image: np.ndarray) -> tuple[float, float]:
    """The sample's display range (0.5-99.8 percentiles: a sort of the stack, ~0.1 s, kept in the cache)."""
    lo, hi = np.percentile(image, [0.5, 99.8])
    return float(lo), float(hi)


def _simulated_nuclei(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, dict, tuple[float, float]]:
    """The stack, its simulation metadata and its contrast limits: from the cache, else simulated (and cached)."""
    path = _cache_path(shape, seed)
    with _cache_lock:
        try:
            with np.load(path, allow_pickle=False) as npz:
                # a cache file without limits (written by an older version) is simulated again, in the warm-up
                limits = (float(npz["limits"][0]), float(npz["limits"][1]))
                return npz["image"], json.loads(str(npz["meta"])), limits
        except (OSError, KeyError, ValueError):
            pass
        from napari_segtool.sim import simulate_nuclei

        sim = simulate_nuclei(shape, seed=seed, anisotropy=2.0, snr=20.0)
        image = np.asarray(sim.image)
        meta = json.loads(json.dumps(sim.meta, default=_plain))
        limits = _contrast_limits(image)
        try:  # atomic: write a temporary in the folder, then rename
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.npz")
            np.savez(tmp, image=image, meta=np.array(json.dumps(meta)), limits=np.array(limits))
            os.replace(tmp, path)
        except OSError:
            pass
        return image, meta, limits


def _plain(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def prepare_cache() -> None:
    """Simulate (once) what the sample menu's nuclei stack shows; run from the warm-up thread."""
    _simulated_nuclei(NUCLEI_SHAPE, NUCLEI_SEED)


def nuclei_stack(shape: tuple[int, int, int] = NUCLEI_SHAPE, seed: int = NUCLEI_SEED) -> list[tuple]:
    """A simulated fluorescence stack of nuclei (Z spacing 2x the XY pixel size)."""
    image, sim_meta, limits = _simulated_nuclei(tuple(shape), seed)
    meta = {META_KEY: {"axes": "ZYX", "source": f"sim:nuclei:{tuple(shape)}:{seed}"}, "simulation": sim_meta}
    return _revealed([(image, {"name": "nuclei (simulated)", "scale": (2.0, 1.0, 1.0), "metadata": meta,
                     "axis_labels": ("z", "y", "x"), "contrast_limits": limits}, "image")])


def galaxy_field(shape: tuple[int, int] = (384, 384), seed: int = 11) -> list[tuple]:
    """A simulated sky exposure of galaxies and stars (zscale contrast)."""
    from napari_segtool.plugin.readers import _finite_limits
    from napari_segtool.sim.astro import simulate_astro_field

    sim = simulate_astro_field(shape, seed=seed)
    meta = {META_KEY: {"axes": "YX", "source": f"sim:astro:{shape}:{seed}"},
            "noise_sigma": sim.noise_sigma, "sky_level": sim.sky_level}
    return _revealed([(sim.image, {"name": "galaxies (simulated)", "metadata": meta, "colormap": "gray",
                                   "axis_labels": ("y", "x"),
                                   "contrast_limits": _finite_limits(sim.image, zscale=True)}, "image")])


def _hubble() -> np.ndarray:
    from skimage import data

    return data.hubble_deep_field()


def hubble_deep_field() -> list[tuple]:
    """The Hubble Deep Field (NASA/ESA) as shipped with scikit-image: RGB, as is."""
    rgb = _hubble()
    meta = {META_KEY: {"axes": "YXC", "source": "skimage:hubble_deep_field"},
            "credit": "NASA, ESA, R. Williams (STScI); via scikit-image"}
    return _revealed([(rgb, {"name": "Hubble Deep Field", "rgb": True, "metadata": meta}, "image")])


def hubble_deep_field_grey() -> list[tuple]:
    """The Hubble Deep Field as a grey float image (the mean of its channels), zscale contrast."""
    from napari_segtool.plugin.readers import _finite_limits

    grey = _hubble().astype(np.float32).mean(axis=-1)
    meta = {META_KEY: {"axes": "YX", "source": "skimage:hubble_deep_field:grey"},
            "credit": "NASA, ESA, R. Williams (STScI); via scikit-image"}
    return _revealed([(grey, {"name": "Hubble Deep Field (grey)", "metadata": meta, "colormap": "gray",
                              "contrast_limits": _finite_limits(grey, zscale=True)}, "image")])


def _revealed(layers: list[tuple]) -> list[tuple]:
    """The layer data, added hidden by napari and shown on the next turn when a viewer is open to add them."""
    from napari_segtool.plugin._reveal import reveal_next_added

    if reveal_next_added(len(layers)):
        for _data, kwargs, _kind in layers:
            kwargs["visible"] = False
    return layers
