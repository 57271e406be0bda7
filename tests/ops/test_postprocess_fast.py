"""The fast shape/flux splits (``ops.flood``, one-count relabelling) give exactly the reference's labels.

The reference is what ``ops.postprocess`` ran before: scikit-image's ``peak_local_max(labels=...)``
(one Python iteration per connected component), one ``watershed`` of the whole image, and
``relabel_sequential(remove_small(...))``. Compared with ``np.array_equal`` (ids included) on the
shipped nuclei model's maps of the real nuclei image (simulated nuclei when the stardist wheel is not
cached) and of the real 3D stack, on a simulated sky for the flux split, and on random scenes with the
awkward cases: plateaus and ties, flat and one-pixel components, diagonal-only connections, objects on
the image border, empty images. The threaded path (``ops.parallel``: filters on bands of rows, watersheds
side by side) gives the serial path's labels on the same kinds of input, and a band-split gaussian is the
whole one to the bit.
"""
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import feature, measure, segmentation

from napari_segtool.ops import postprocess
from napari_segtool.ops.flood import component_peaks, flood_from_peaks
from napari_segtool.ops.postprocess import remove_small, split_by_flux, split_by_shape

ROOT = Path(__file__).resolve().parents[2]


def reference_peaks(relief: np.ndarray, components: np.ndarray, half) -> np.ndarray:
    return feature.peak_local_max(relief, min_distance=min(half), footprint=np.ones([2 * h + 1 for h in half], bool),
                                  labels=components, exclude_border=False).reshape(-1, relief.ndim)


def reference_flood(relief: np.ndarray, foreground: np.ndarray, spacing: float, z_scale: float = 1.0,
                    labelled=None) -> np.ndarray:
    """The seeded flood before ``ops.flood``: scikit-image's peaks per component, one watershed of the image."""
    peaks = reference_peaks(relief, measure.label(foreground), postprocess._peak_box(spacing, z_scale, relief.ndim))
    seeds = np.zeros(foreground.shape, np.int32)
    seeds[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return segmentation.watershed(-relief, markers=seeds, mask=foreground)


def reference_finished(labels: np.ndarray, min_size: int) -> np.ndarray:
    return segmentation.relabel_sequential(remove_small(labels, min_size))[0].astype(np.int32)


def same_as_reference(monkeypatch, split, *args, **kwargs) -> np.ndarray:
    """``split(*args, **kwargs)``, asserted equal to the same call on the reference path; returns the labels."""
    fast = split(*args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(postprocess, "_flood_from_peaks", reference_flood)
        patch.setattr(postprocess, "_finished", reference_finished)
        reference = split(*args, **kwargs)
    assert fast.dtype == reference.dtype and np.array_equal(fast, reference)
    return fast


def nuclei_planes(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground probability and distance maps of the shipped nuclei model, plane by plane (``YX`` or ``ZYX``)."""
    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.models.unet import INSTANCE_LAYOUT

    model = load_model("nuclei")
    low, high = np.percentile(image, [1, 99.8])
    planes = ((image.astype(np.float32) - low) / (high - low)).reshape((-1,) + image.shape[-2:])
    fg, distance = [], []
    for plane in planes:
        probs = model.architecture.predict_plane(model.net, plane[:, :, None], model.meta, device="cpu",
                                                 return_probabilities=True).probabilities
        fg.append(INSTANCE_LAYOUT.foreground(probs))
        distance.append(probs[INSTANCE_LAYOUT.distance_channel])
    return np.stack(fg).reshape(image.shape), np.stack(distance).reshape(image.shape)


def real_or_simulated(ndim: int) -> np.ndarray:
    if list((ROOT / "benchmarks" / ".cache").glob("stardist-*.whl")):
        import sys

        sys.path.insert(0, str(ROOT / "benchmarks"))
        from real_data import nuclei_2d, nuclei_3d

        return (nuclei_2d if ndim == 2 else nuclei_3d)()[0]
    from napari_segtool.sim import simulate_nuclei

    return simulate_nuclei((512, 512) if ndim == 2 else (24, 64, 64), touching=0.6, seed=3).image


@pytest.fixture(scope="module")
def plane_maps():
    return nuclei_planes(real_or_simulated(2))


@pytest.fixture(scope="module")
def stack_maps():
    return nuclei_planes(real_or_simulated(3))


@pytest.mark.parametrize("diameter", [8.0, 14.0, 24.0])
def test_shape_split_of_the_nuclei_model_maps_is_the_reference(monkeypatch, plane_maps, diameter):
    fg, distance = plane_maps
    labels = same_as_reference(monkeypatch, split_by_shape, fg, distance, diameter)
    components = measure.label(fg > 0.5)
    pairs = np.unique(np.stack([components[labels > 0], labels[labels > 0]]), axis=1)
    objects = np.bincount(pairs[0])[1:]  # objects per connected component of the foreground
    assert labels.max() > 50 and (objects == 1).any() and (objects > 1).any()  # whole ones and split ones


def test_shape_split_of_the_x3_real_plane_is_the_reference(monkeypatch, plane_maps):
    fg, distance = (np.tile(m, (3, 3)) for m in plane_maps)  # objects cut at the tiles' seams touch each other
    same_as_reference(monkeypatch, split_by_shape, fg, distance, 14.0)


@pytest.mark.parametrize("z_scale", [1.0, 2.0, 1.3])
def test_shape_split_of_a_stack_is_the_reference(monkeypatch, stack_maps, z_scale):
    fg, distance = stack_maps
    labels = same_as_reference(monkeypatch, split_by_shape, fg, distance, 10.0, z_scale=z_scale)
    assert labels.max() > 5


@pytest.mark.parametrize("seed", [0, 1])
def test_flux_split_of_a_simulated_sky_is_the_reference(monkeypatch, seed):
    from napari_segtool.sim import simulate_astro_field

    field = simulate_astro_field((256, 256), seed=seed)
    image = np.arcsinh((field.image - field.sky_level) / field.noise_sigma).astype(np.float32)
    p_foreground = ndi.gaussian_filter((field.labels > 0).astype(np.float32), 1.0)
    for contrast in (0.0, 0.005):
        labels = same_as_reference(monkeypatch, split_by_flux, image, p_foreground, 6.0, contrast=contrast)
        assert labels.max() > 10


def test_flux_split_with_saturated_plateaus_is_the_reference(monkeypatch):
    """Flat-topped stars: the candidates of a plateau are thinned by the spacing, seeds of one component share
    their height (the whole image is then flooded as the reference)."""
    yy, xx = np.mgrid[:96, :96].astype(np.float32)
    image = np.zeros((96, 96), np.float32)
    for cy, cx, flux in ((30, 30, 50), (30, 42, 50), (70, 60, 20), (71, 70, 35), (12, 80, 50)):
        image += flux * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 3.0 ** 2))
    image = np.minimum(image, 18.0)
    p_foreground = (image > 1.0).astype(np.float32)
    for smooth in (0.0, 1.0):
        same_as_reference(monkeypatch, split_by_flux, image, p_foreground, 8.0, smooth=smooth, contrast=0.0)


def test_edge_cases_are_the_reference(monkeypatch):
    diagonal = np.zeros((12, 12), np.float32)
    diagonal[np.arange(12), np.arange(12)] = 1.0  # connected through corners only
    diagonal[:4, 6:] = 1.0                       # an object on the border
    one = np.zeros((9, 9), np.float32)
    one[4, 4] = 1.0
    for fg in (diagonal, one, np.zeros((16, 16), np.float32), np.ones((10, 14), np.float32), one[None]):
        distance = ndi.gaussian_filter(fg, 1.0)
        same_as_reference(monkeypatch, split_by_shape, fg, distance, 8.0, min_size=0)
        if fg.ndim == 2:
            same_as_reference(monkeypatch, split_by_flux, distance, fg, 8.0, min_size=0)


def random_scene(rng: np.random.Generator, k: int) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """A random mask and relief: 2D and 3D, blobs or speckle, smooth, noisy, terraced or flat reliefs."""
    ndim = 3 if k % 4 == 0 else 2
    shape = tuple(int(s) for s in rng.integers(1, 14 if ndim == 3 else 48, size=ndim))
    blobs = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.5, 2.0)) > rng.uniform(0.45, 0.55)
    mask = blobs if k % 3 else rng.random(shape) < 0.6
    relief = rng.random(shape).astype(np.float32)
    relief = [np.round(relief * 3), relief, ndi.gaussian_filter(relief, 1.5), mask.astype(np.float32)][k % 4]
    half = (int(rng.integers(1, 3)), *[int(rng.integers(2, 5))] * 2) if ndim == 3 else (int(rng.integers(2, 5)),) * 2
    return mask, relief.astype(np.float32), half


def test_component_peaks_and_flood_are_scikit_images_on_random_scenes():
    rng = np.random.default_rng(0)
    fallbacks = 0
    for k in range(300):
        mask, relief, half = random_scene(rng, k)
        components = measure.label(mask)
        peaks = component_peaks(relief, components, half)
        expected = reference_peaks(relief, components, half)
        assert np.array_equal(peaks, expected), (k, mask.shape, half)
        seeds = np.zeros(mask.shape, np.int32)
        seeds[tuple(expected.T)] = np.arange(1, len(expected) + 1)
        assert np.array_equal(flood_from_peaks(relief, components, peaks),
                              segmentation.watershed(-relief, markers=seeds, mask=mask)), (k, mask.shape, half)
        owner, heights = components[tuple(peaks.T)], relief[tuple(peaks.T)]
        fallbacks += len(set(zip(owner, heights))) < len(owner)
    assert fallbacks > 5  # seeds of one component at one height: the whole-image flood ran too


def test_finished_is_relabel_sequential_of_remove_small():
    rng = np.random.default_rng(1)
    for k in range(40):
        labels = rng.choice(np.array([0, 0, 0, 1, 2, 5, 9, 40]), size=(int(rng.integers(1, 30)), 17))
        labels[labels == 40] = rng.integers(10, 60, size=int((labels == 40).sum()))  # small and gapped ids
        for min_size in (0, 1, 3, 8):
            assert np.array_equal(postprocess._finished(labels.astype(np.int32), min_size),
                                  reference_finished(labels.astype(np.int32), min_size))


@pytest.mark.parametrize("sampling", [None, (1.0, 1.0, 1.0), (2.0, 1.0, 1.0), (1.3, 1.0, 1.0)])
def test_distance_inside_is_scipys_edt(sampling):
    """The shape split's distance transform (the ``edt`` package) gives scipy's values: to the bit for
    pixels and integer voxel sizes, to float32 rounding otherwise; the image edge is not background."""
    from scipy import ndimage as ndi

    from napari_segtool.ops.postprocess import distance_inside

    rng = np.random.default_rng(7)
    shape = (300, 257) if sampling is None else (10, 90, 77)
    masks = [ndi.gaussian_filter(rng.random(shape), 3) > 0.5 for _ in range(3)]
    masks += [np.ones(shape, bool), np.zeros(shape, bool)]
    masks[0][(slice(None),) * (len(shape) - 1) + (slice(0, 20),)] = True  # objects cut by the edge
    for mask in masks:
        ref = ndi.distance_transform_edt(mask, sampling=sampling).astype(np.float32)
        got = distance_inside(mask, sampling)
        assert got.dtype == np.float32 and got.shape == mask.shape
        if sampling is None or all(float(s).is_integer() for s in sampling):
            assert np.array_equal(got, ref)
        else:
            np.testing.assert_allclose(got, ref, rtol=1e-6)


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.3, 2.5, 4.0])
def test_gaussian_radius_is_scipys(sigma):
    """The margin of a band is scipy's kernel radius: an impulse spreads exactly that far."""
    from napari_segtool.ops.parallel import gaussian_radius

    impulse = np.zeros(41)
    impulse[20] = 1.0
    reach = np.flatnonzero(ndi.gaussian_filter1d(impulse, sigma))
    assert gaussian_radius(sigma) == 20 - reach.min() == reach.max() - 20


@pytest.mark.parametrize("workers", [2, 3, 7])
def test_band_split_gaussian_is_the_whole_gaussian_to_the_bit(workers):
    """Gaussians (the shape split's smoothing of a product of smoothings, the flux split's) on bands of rows with a
    margin of scipy's radius give the whole array's values to the bit, 2D and 3D, in float32 and float64; a margin
    one row short of one gaussian's radius does not."""
    from napari_segtool.ops.parallel import gaussian_radius, in_bands

    rng = np.random.default_rng(workers)
    calls = []
    for shape, sigma, dtype in (((517, 300), 1.0, np.float32), ((400, 77), 2.5, np.float64),
                                ((6, 300, 41), (0.5, 1.0, 1.0), np.float32), ((260, 9), 0.7, np.float32)):
        a, b = rng.random(shape).astype(dtype), rng.random(shape).astype(dtype)

        def smoothed(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            calls.append(x.shape)
            return ndi.gaussian_filter(x * (0.5 + ndi.gaussian_filter(y, sigma)), sigma)

        margin = 2 * gaussian_radius(sigma)
        whole = smoothed(a, b)
        calls.clear()
        banded = in_bands(smoothed, a, b, margin=margin, workers=workers)
        assert 1 < len(calls) <= workers and sum(c[-2] for c in calls) > shape[-2]  # really split, with margins
        assert banded.dtype == whole.dtype and np.array_equal(banded, whole)
        for radius in (gaussian_radius(sigma), gaussian_radius(sigma) - 1):
            single = in_bands(lambda x: ndi.gaussian_filter(x, sigma), a, margin=radius, workers=workers)
            assert np.array_equal(single, ndi.gaussian_filter(a, sigma)) == (radius == gaussian_radius(sigma))


def same_on_threads(monkeypatch, split, *args, **kwargs) -> np.ndarray:
    """``split(*args, **kwargs)`` on 1 thread (the serial path), asserted equal (ids, dtype) on 3 and 4 threads."""
    monkeypatch.setenv("SEGTOOL_NUM_THREADS", "1")
    serial = split(*args, **kwargs)
    for threads in ("3", "4"):
        monkeypatch.setenv("SEGTOOL_NUM_THREADS", threads)
        parallel = split(*args, **kwargs)
        assert parallel.dtype == serial.dtype and np.array_equal(parallel, serial), threads
    return serial


def test_parallel_shape_split_of_the_real_plane_is_the_serial_one(monkeypatch, plane_maps):
    fg, distance = (np.tile(m, (2, 2)) for m in plane_maps)
    for diameter in (8.0, 14.0):
        assert same_on_threads(monkeypatch, split_by_shape, fg, distance, diameter).max() > 100


@pytest.mark.parametrize("z_scale", [1.0, 2.0])
def test_parallel_shape_split_of_a_stack_is_the_serial_one(monkeypatch, stack_maps, z_scale):
    fg, distance = (np.tile(m, (1, 3, 2)) for m in stack_maps)  # rows enough for bands
    assert same_on_threads(monkeypatch, split_by_shape, fg, distance, 10.0, z_scale=z_scale).max() > 5


def test_parallel_flux_split_of_a_sky_is_the_serial_one(monkeypatch):
    from napari_segtool.sim import simulate_astro_field

    field = simulate_astro_field((384, 384), seed=2)
    image = np.arcsinh((field.image - field.sky_level) / field.noise_sigma).astype(np.float32)
    p_foreground = ndi.gaussian_filter((field.labels > 0).astype(np.float32), 1.0)
    for contrast in (0.0, 0.005):
        assert same_on_threads(monkeypatch, split_by_flux, image, p_foreground, 6.0, contrast=contrast).max() > 10


def test_parallel_splits_of_edge_cases_are_the_serial_ones(monkeypatch):
    """Tiny, empty, full and thin arrays (one band or bands barely taller than their margin), NaN in a sky, and
    seeds of one component at one height (the whole-image flood)."""
    rng = np.random.default_rng(3)
    speckle = (ndi.gaussian_filter(rng.random((200, 130)), 2.0) > 0.5).astype(np.float32)
    plateau = np.minimum(ndi.gaussian_filter(rng.random((300, 64)), 4.0) * 8, 4.2).astype(np.float32)
    for fg in (np.zeros((16, 16), np.float32), np.ones((260, 14), np.float32), speckle, np.ones((1, 300, 3)),
               speckle[None].repeat(3, axis=0)):
        same_on_threads(monkeypatch, split_by_shape, fg, ndi.gaussian_filter(fg, 1.0), 8.0, min_size=0)
    sky = plateau.copy()
    sky[100:103, 10:20] = np.nan
    for smooth in (0.0, 1.0):
        same_on_threads(monkeypatch, split_by_flux, sky, (plateau > 3.0).astype(np.float32), 8.0, smooth=smooth,
                        contrast=0.0)
