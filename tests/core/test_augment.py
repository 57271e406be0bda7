"""Augmentations that imitate what the engine does to an image before the network sees it."""
import numpy as np

from napari_segtool.core.augment import AugmentConfig, augment, lower_resolution
from napari_segtool.core.data import Patch


def _texture(n: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(0.5, 0.2, (n, n, 1)).astype(np.float32)


def _fine_detail(img: np.ndarray) -> float:
    return float(np.abs(np.diff(img[..., 0], axis=1)).mean())


def test_lower_resolution_removes_fine_detail_but_keeps_grid_and_level():
    img = _texture()
    soft = lower_resolution(img, 2.0)
    assert soft.shape == img.shape and soft.dtype == np.float32
    assert _fine_detail(soft) < 0.5 * _fine_detail(img)
    assert abs(float(soft.mean()) - float(img.mean())) < 0.02


def test_lower_resolution_at_factor_one_is_the_image():
    img = _texture()
    assert lower_resolution(img, 1.0) is img


def test_resolution_augmentation_changes_only_the_image():
    img = _texture()
    labels = np.zeros(img.shape[:2], np.int32)
    labels[20:40, 20:40] = 1
    patch = Patch(img, labels, np.ones(labels.shape, bool))
    off = AugmentConfig(flips=False, p_similarity=0, p_elastic=0, p_intensity=0)
    on = AugmentConfig(flips=False, p_similarity=0, p_elastic=0, p_intensity=0,
                       p_resolution=1.0, resolution_range=(2.0, 2.0))
    plain = augment(patch, 64, np.random.default_rng(1), off)
    coarse = augment(patch, 64, np.random.default_rng(1), on)
    np.testing.assert_array_equal(plain.labels, coarse.labels)
    assert _fine_detail(coarse.image) < 0.5 * _fine_detail(plain.image)


def test_geometric_augmentation_keeps_each_pixels_label_and_mask_together():
    """Labels and the annotated mask are resampled at the same source pixel; pixels mapped from outside
    the source patch are unannotated background."""
    n = 96
    ids = np.arange(1, n * n + 1, dtype=np.int32).reshape(n, n)  # every source pixel its own id
    mask = np.random.default_rng(2).random((n, n)) < 0.5
    patch = Patch(_texture(n), ids, mask)
    cfg = AugmentConfig(p_similarity=1.0, scale_range=(0.7, 1.3), p_elastic=1.0, p_intensity=0)
    outside = 0
    for seed in range(6):
        out = augment(patch, 64, np.random.default_rng(seed), cfg)
        assert out.labels.dtype == ids.dtype and out.annotated.dtype == bool
        inside = out.labels > 0
        np.testing.assert_array_equal(out.annotated[inside], mask.ravel()[out.labels[inside] - 1])
        assert not out.annotated[~inside].any()
        outside += int((~inside).sum())
    assert outside > 0  # some draws reach beyond the source patch
