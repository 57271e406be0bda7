"""Sample data: simulated nuclei stack, simulated galaxy field, and the real Hubble Deep Field."""
from __future__ import annotations

import numpy as np

from napari_segtool.plugin._layers import META_KEY


def nuclei_stack(shape: tuple[int, int, int] = (16, 256, 256), seed: int = 7) -> list[tuple]:
    """A simulated fluorescence stack of nuclei (Z spacing 2x the XY pixel size)."""
    from napari_segtool.sim import simulate_nuclei

    sim = simulate_nuclei(shape, seed=seed, anisotropy=2.0, snr=20.0)
    meta = {META_KEY: {"axes": "ZYX", "source": f"sim:nuclei:{shape}:{seed}"}, "simulation": sim.meta}
    lo, hi = np.percentile(sim.image, [0.5, 99.8])
    return [(sim.image, {"name": "nuclei (simulated)", "scale": (2.0, 1.0, 1.0), "metadata": meta,
                         "axis_labels": ("z", "y", "x"), "contrast_limits": (float(lo), float(hi))}, "image")]


def galaxy_field(shape: tuple[int, int] = (384, 384), seed: int = 11) -> list[tuple]:
    """A simulated sky exposure of galaxies and stars (zscale contrast)."""
    from napari_segtool.plugin.readers import _finite_limits
    from napari_segtool.sim.astro import simulate_astro_field

    sim = simulate_astro_field(shape, seed=seed)
    meta = {META_KEY: {"axes": "YX", "source": f"sim:astro:{shape}:{seed}"},
            "noise_sigma": sim.noise_sigma, "sky_level": sim.sky_level}
    return [(sim.image, {"name": "galaxies (simulated)", "metadata": meta, "colormap": "gray",
                         "axis_labels": ("y", "x"),
                         "contrast_limits": _finite_limits(sim.image, zscale=True)}, "image")]


def _hubble() -> np.ndarray:
    from skimage import data

    return data.hubble_deep_field()


def hubble_deep_field() -> list[tuple]:
    """The Hubble Deep Field (NASA/ESA) as shipped with scikit-image: RGB, as is."""
    rgb = _hubble()
    meta = {META_KEY: {"axes": "YXC", "source": "skimage:hubble_deep_field"},
            "credit": "NASA, ESA, R. Williams (STScI); via scikit-image"}
    return [(rgb, {"name": "Hubble Deep Field", "rgb": True, "metadata": meta}, "image")]


def hubble_deep_field_grey() -> list[tuple]:
    """The Hubble Deep Field as a grey float image (the mean of its channels), zscale contrast."""
    from napari_segtool.plugin.readers import _finite_limits

    grey = _hubble().astype(np.float32).mean(axis=-1)
    meta = {META_KEY: {"axes": "YX", "source": "skimage:hubble_deep_field:grey"},
            "credit": "NASA, ESA, R. Williams (STScI); via scikit-image"}
    return [(grey, {"name": "Hubble Deep Field (grey)", "metadata": meta, "colormap": "gray",
                    "contrast_limits": _finite_limits(grey, zscale=True)}, "image")]
