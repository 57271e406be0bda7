"""Tests of the nuclei simulator: exact labels, realism sanity checks, determinism."""

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_segtool.sim import SimulatedImage, simulate_nuclei, simulate_nuclei_dataset


def _adjacent_pairs(labels: np.ndarray) -> set:
    """Pairs of different labels sharing a face (4/6-connectivity)."""
    pairs = set()
    for ax in range(labels.ndim):
        a = np.moveaxis(labels, ax, 0)
        p, q = a[:-1].ravel(), a[1:].ravel()
        m = (p != q) & (p > 0) & (q > 0)
        pairs.update(zip(np.minimum(p[m], q[m]).tolist(), np.maximum(p[m], q[m]).tolist()))
    return pairs


def _assert_exact_labels(labels: np.ndarray):
    ids = np.unique(labels)
    ids = ids[ids > 0]
    assert ids.size > 0
    np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))  # consecutive
    for lab, sl in enumerate(ndi.find_objects(labels), start=1):
        _, n = ndi.label(labels[sl] == lab)
        assert n == 1, f"label {lab} has {n} components"


@pytest.fixture(scope="module")
def img2d() -> SimulatedImage:
    return simulate_nuclei((128, 128), snr=20, touching=0.6, seed=1)


def test_2d_shapes_dtypes_meta(img2d):
    assert img2d.image.shape == img2d.labels.shape == (128, 128)
    assert img2d.image.dtype == np.float32 and img2d.labels.dtype == np.int32
    assert img2d.meta["seed"] == 1 and img2d.meta["n_nuclei"] == img2d.labels.max()
    assert np.isfinite(img2d.image).all()
    # photon-count scale, not normalised to [0, 1]
    assert img2d.image.max() > 5


def test_labels_exact_and_connected(img2d):
    _assert_exact_labels(img2d.labels)


def test_labels_where_image_is_bright(img2d):
    inside = img2d.image[img2d.labels > 0].mean()
    far = ~ndi.binary_dilation(img2d.labels > 0, iterations=4)
    assert inside > img2d.image[far].mean() + 3 * img2d.image[far].std()


def test_touching_nuclei_occur(img2d):
    assert len(_adjacent_pairs(img2d.labels)) >= 3


def test_no_touching_gives_fewer_contacts():
    lo = simulate_nuclei((128, 128), density=0.25, touching=0.0, seed=4)
    hi = simulate_nuclei((128, 128), density=0.25, touching=0.9, seed=4)
    assert len(_adjacent_pairs(hi.labels)) > len(_adjacent_pairs(lo.labels))


def test_determinism():
    a = simulate_nuclei((64, 64), seed=7)
    b = simulate_nuclei((64, 64), seed=7)
    c = simulate_nuclei((64, 64), seed=8)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.image, c.image)


def test_n_nuclei_and_density():
    few = simulate_nuclei((128, 128), n_nuclei=8, radius_range=(5, 7), seed=2)
    assert 6 <= few.meta["n_nuclei"] <= 8
    sparse = simulate_nuclei((128, 128), density=0.15, seed=2)
    dense = simulate_nuclei((128, 128), density=0.5, seed=2)
    assert 0.08 < sparse.meta["coverage"] < dense.meta["coverage"]
    assert dense.meta["coverage"] > 0.3


def test_snr_controls_contrast():
    def contrast(s):
        far = ~ndi.binary_dilation(s.labels > 0, iterations=5)
        bg = s.image[far]
        return (np.median(s.image[s.labels > 0]) - np.median(bg)) / bg.std()

    low = simulate_nuclei((128, 128), snr=4, seed=3)
    high = simulate_nuclei((128, 128), snr=40, seed=3)
    assert contrast(high) > 2 * contrast(low)


def test_3d_stack_and_anisotropy():
    iso = simulate_nuclei((24, 64, 64), anisotropy=1.0, density=0.3, snr=20, seed=5)
    aniso = simulate_nuclei((24, 64, 64), anisotropy=3.0, density=0.3, snr=20, seed=5)
    for s in (iso, aniso):
        assert s.image.shape == s.labels.shape == (24, 64, 64)
        assert s.image.dtype == np.float32 and s.labels.dtype == np.int32
        _assert_exact_labels(s.labels)
        assert s.image[s.labels > 0].mean() > s.image[s.labels == 0].mean()

    def z_over_y(lab):
        ext = [(sl[0].stop - sl[0].start) / (sl[1].stop - sl[1].start)
               for sl in ndi.find_objects(lab) if sl[1].stop - sl[1].start > 4]
        return np.median(ext)

    assert z_over_y(aniso.labels) < 0.6 * z_over_y(iso.labels)


def test_dataset_is_diverse():
    ds = simulate_nuclei_dataset(3, (64, 64), seed=0)
    assert len(ds) == 3 and all(isinstance(s, SimulatedImage) for s in ds)
    assert len({round(s.meta["snr"], 3) for s in ds}) == 3
    assert len({round(s.meta["radius_typ"], 3) for s in ds}) == 3


def test_bad_shape():
    with pytest.raises(ValueError):
        simulate_nuclei((4, 4, 4, 4))


def test_speed_2d():
    simulate_nuclei((256, 256), seed=0)  # warm-up imports
    t = time.perf_counter()
    simulate_nuclei((256, 256), seed=11)
    assert time.perf_counter() - t < 2.0  # ~0.2 s normally; generous for shared CPUs


def test_clump_is_off_by_default():
    """``clump`` is additive: left out or 0 it changes no pixel, label or meta entry (the shipped
    ``nuclei`` model's training data stay as they were)."""
    a = simulate_nuclei((96, 96), touching=0.5, seed=5)
    b = simulate_nuclei((96, 96), touching=0.5, seed=5, clump=0.0)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.meta == b.meta and "clump" not in a.meta
    for s, t in zip(simulate_nuclei_dataset(2, (64, 64), seed=3), simulate_nuclei_dataset(2, (64, 64), seed=3, clump=0.0)):
        np.testing.assert_array_equal(s.image, t.image)


def test_clump_presses_nuclei_together():
    """Clumped nuclei touch more neighbours, with the same acquisition style and exact labels."""
    plain = [simulate_nuclei((128, 128), density=0.3, touching=0.0, seed=s) for s in (4, 6)]
    clumped = [simulate_nuclei((128, 128), density=0.3, touching=0.0, clump=0.6, seed=s) for s in (4, 6)]
    assert sum(len(_adjacent_pairs(c.labels)) for c in clumped) > 2 * sum(len(_adjacent_pairs(p.labels)) for p in plain)
    for p, c in zip(plain, clumped):
        _assert_exact_labels(c.labels)
        assert c.meta["snr"] == p.meta["snr"] and c.meta["clump"] == 0.6
