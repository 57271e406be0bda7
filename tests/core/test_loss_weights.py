"""Per-pixel loss weights from the truth labels (core.data.loss_weights) and their way through patches."""
import numpy as np
from scipy import ndimage as ndi

from napari_segtool.core.augment import AugmentConfig, augment
from napari_segtool.core.data import LossWeights, crop_patch, loss_weights, make_example, touching_distances


def _blobs(seed: int = 0, n: int = 12, shape: tuple[int, int] = (64, 64)) -> np.ndarray:
    """Random discs, later ones painted over earlier ones: touching and overlapping objects."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(2, 7)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    return labels


def test_touching_distances_are_the_two_nearest_objects_within_reach():
    labels = _blobs()
    reach = 9.0
    d1, d2 = touching_distances(labels, reach)
    ids = [i for i in np.unique(labels) if i]
    each = np.sort(np.stack([ndi.distance_transform_edt(labels != i) for i in ids]), axis=0)
    each[each > reach] = np.inf
    np.testing.assert_allclose(d1, each[0], rtol=1e-6)
    np.testing.assert_allclose(d2, each[1], rtol=1e-6)


def test_touching_term_marks_where_two_objects_meet():
    labels = np.zeros((40, 60), np.int32)
    labels[10:30, 10:30] = 1
    labels[10:30, 30:50] = 2  # touches object 1 along x = 29 | 30
    lone = np.zeros_like(labels)
    lone[10:30, 10:30] = 1
    cfg = LossWeights(touching=10.0, sigma=2.0)
    w = loss_weights(labels, cfg)
    assert w.dtype == np.float32
    meet = 1 + 10 * np.exp(-1 / 8)  # a pixel of one object beside the other: d1 = 0, d2 = 1
    np.testing.assert_allclose(w[20, 29], meet, rtol=1e-5)
    np.testing.assert_allclose(w[20, 30], meet, rtol=1e-5)
    assert w[20, 20] < 1.01 and w[2, 2] == 1.0  # far inside and far outside: the plain weight
    np.testing.assert_array_equal(loss_weights(lone, cfg), 1.0)  # one object: nothing to separate


def test_balance_weighs_objects_by_median_area_over_their_area():
    labels = np.zeros((64, 64), np.int32)
    labels[2:4, 2:4] = 1        # 4 px
    labels[10:14, 10:14] = 2    # 16 px (the median)
    labels[30:62, 30:62] = 3    # 1024 px
    w = loss_weights(labels, LossWeights(touching=0.0, balance=1.0, clip=(0.1, 10.0)))
    assert w[3, 3] == 4.0 and w[12, 12] == 1.0 and np.isclose(w[40, 40], 0.1)  # 16/1024 clipped to 0.1
    assert w[0, 0] == 1.0
    half = loss_weights(labels, LossWeights(touching=0.0, balance=0.5))
    assert half[3, 3] == 2.0 and np.isclose(half[40, 40], 0.125)
    np.testing.assert_array_equal(loss_weights(labels, LossWeights(touching=0.0)), 1.0)


def test_patches_carry_the_weight_where_annotated_and_stay_boolean_without():
    labels = _blobs(1, shape=(48, 48))
    image = np.random.default_rng(0).normal(size=(48, 48)).astype(np.float32)
    annotated = np.ones(labels.shape, bool)
    annotated[:, :10] = False
    plain = make_example(image, labels, annotated)
    weighted = make_example(image, labels, annotated, weights=LossWeights(sigma=2.0))
    assert plain.weight is None
    np.testing.assert_array_equal(weighted.weight, loss_weights(labels, LossWeights(sigma=2.0)))
    p, q = crop_patch(plain, 0, 0, 64), crop_patch(weighted, 0, 0, 64)  # padded: 48 -> 64
    assert p.annotated.dtype == bool and q.annotated.dtype == np.float32
    np.testing.assert_array_equal(q.annotated > 0, p.annotated)
    np.testing.assert_array_equal(q.annotated[:48, 10:48], weighted.weight[:, 10:])


def test_augmentation_moves_the_weight_with_the_labels():
    """The same draws give the same geometry: the weighted patch's nonzero pixels are the boolean patch's mask,
    and each weight is still its object's (here a function of the id)."""
    labels = _blobs(2, n=20, shape=(96, 96))
    annotated = np.ones(labels.shape, bool)
    annotated[60:] = False
    image = labels[..., None].astype(np.float32)
    weight = (1.0 + 0.25 * labels).astype(np.float32)
    cfg = AugmentConfig(p_similarity=1.0, p_context=1.0, p_intensity=0.0)
    for seed in range(8):
        plain = make_example(image, labels, annotated)
        p = augment(crop_patch(plain, 0, 0, 96), 64, np.random.default_rng(seed), cfg)
        plain.weight = weight
        q = augment(crop_patch(plain, 0, 0, 96), 64, np.random.default_rng(seed), cfg)
        assert q.annotated.dtype == np.float32
        np.testing.assert_array_equal(q.labels, p.labels)
        np.testing.assert_array_equal(q.annotated > 0, p.annotated)
        inside = (q.annotated > 0) & (q.labels > 0)
        np.testing.assert_allclose(q.annotated[inside], 1.0 + 0.25 * q.labels[inside])
