"""Simulators of microscopy nuclei images and astronomical fields with exact ground truth.

Pure numpy/scipy/scikit-image (+ GalSim for astronomy, imported lazily).
"""

from .astro import AstroField, draw_source, simulate_astro_dataset, simulate_astro_field
from .nuclei import SimulatedImage, simulate_nuclei, simulate_nuclei_dataset

__all__ = [
    "SimulatedImage",
    "simulate_nuclei",
    "simulate_nuclei_dataset",
    "AstroField",
    "simulate_astro_field",
    "simulate_astro_dataset",
    "draw_source",
]
