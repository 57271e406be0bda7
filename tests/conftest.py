"""Shared fixtures: small synthetic data and a tiny trained model (trained once per session)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.draw import ellipse

torch.set_num_threads(2)


def draw_objects(shape=(128, 128), n=12, seed=0, radius=(5, 9), touching=True):
    """Bright ellipses on a noisy background, some pairs touching; exact instance labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    k = 1
    for _ in range(n * 4):
        if k > n:
            break
        r = rng.uniform(*radius, size=2)
        cy, cx = rng.uniform(r.max() + 1, np.array(shape) - r.max() - 1)
        if touching and k > 1 and rng.random() < 0.3:
            ys, xs = np.nonzero(labels == k - 1)
            cy, cx = ys.mean() + 2 * r[0] * 0.9, xs.mean()
            if cy > shape[0] - r[0] - 1:
                continue
        rr, cc = ellipse(cy, cx, r[0], r[1], shape=shape, rotation=rng.uniform(0, np.pi))
        free = labels[rr, cc] == 0
        if free.sum() < 0.8 * rr.size:
            continue
        labels[rr[free], cc[free]] = k
        k += 1
    image = np.where(labels > 0, 120.0, 20.0) + rng.normal(0, 12, shape)
    return image.astype(np.float32), labels


@pytest.fixture(scope="session")
def objects_pair():
    return draw_objects((160, 160), n=20, seed=1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A U-Net instance model trained for a few seconds on synthetic ellipses, saved to disk."""
    from napari_segtool.core.checkpoint import save_model
    from napari_segtool.core.data import make_example
    from napari_segtool.core.train import TrainConfig, train

    examples = [make_example(*draw_objects((160, 160), n=16, seed=s, touching=False)) for s in range(3)]
    config = TrainConfig(epochs=10, steps_per_epoch=20, batch_size=4, patch_size=64, lr=3e-3, seed=0,
                         val_fraction=0.0)
    result = train(examples, config=config, arch_kwargs={"depth": 2, "width": 8})
    path = tmp_path_factory.mktemp("models") / "tiny"
    save_model(result.model, path)
    return path
