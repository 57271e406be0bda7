"""Small hand-made scenes shared by the tests of the prompt tools (core and widget)."""
from __future__ import annotations

import numpy as np


def disc(shape, centre, radius) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius * radius


def nuclei_scene(shape=(120, 160), isolated: bool = False) -> np.ndarray:
    """Ground truth: four nuclei, two of them touching (3, 4); ``isolated`` adds a fifth far from the rest."""
    gt = np.zeros(shape, np.int32)
    gt[disc(shape, (30, 30), 10)] = 1
    gt[disc(shape, (30, 80), 12)] = 2
    gt[disc(shape, (85, 60), 11) & (gt == 0)] = 3
    gt[disc(shape, (85, 80), 11) & (gt == 0)] = 4
    if isolated:
        gt[disc(shape, (40, 130), 9)] = 5
    return gt


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / max(1, (a | b).sum())
