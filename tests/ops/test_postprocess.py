"""Stack post-processing: linking planes into 3D objects and cutting chains of stacked nuclei."""
import numpy as np
import pytest
from skimage.draw import disk

from napari_segtool.ops.postprocess import link_stack, split_z_chains


def stacked_nuclei(radii, centre=(20, 20), shape=(40, 40)):
    """One disc per plane with the given radii (0 = nothing): a Z profile of overlapping nuclei."""
    stack = np.zeros((len(radii), *shape), np.int32)
    for z, r in enumerate(radii):
        if r:
            rr, cc = disk(centre, r, shape=shape)
            stack[z, rr, cc] = z + 1  # a different id per plane, as plane-by-plane prediction gives
    return stack


def test_two_nuclei_stacked_in_z_are_linked_then_cut_at_the_neck():
    radii = [6, 8, 8, 7, 5, 3, 5, 7, 8, 8, 6]
    linked = link_stack(stacked_nuclei(radii))
    assert len(np.unique(linked[linked > 0])) == 1      # overlap linking chains them into one object
    split = split_z_chains(linked, dip=0.5)
    ids = [int(np.unique(split[z][split[z] > 0])[0]) for z in range(len(radii))]
    assert len(set(ids)) == 2                            # two nuclei ...
    first, second = ids[0], ids[-1]
    assert ids[:5] == [first] * 5 and ids[6:] == [second] * 5   # ... cut at the neck (plane 5)
    assert (split > 0).sum() == (linked > 0).sum()       # no voxel lost


def test_single_nucleus_and_short_objects_are_left_alone():
    one = link_stack(stacked_nuclei([3, 6, 8, 8, 8, 6, 3]))   # tapering ends are not necks
    np.testing.assert_array_equal(split_z_chains(one, dip=0.7), one)
    short = link_stack(stacked_nuclei([8, 2, 8]))              # too few planes on each side
    np.testing.assert_array_equal(split_z_chains(short, dip=0.7, min_planes=2), short)


def test_three_stacked_nuclei_give_three_objects():
    radii = [8, 8, 8, 5, 8, 8, 8, 5, 8, 8, 8]      # necks still overlap enough to be linked
    split = split_z_chains(link_stack(stacked_nuclei(radii)), dip=0.5)
    assert len(np.unique(split[split > 0])) == 3


# ----------------------------------------------------------------------------- 3D watershed of stacked maps
def ball_maps(centres, radius=8.0, shape=(24, 48, 48), z_scale=2.0):
    """Foreground and per-plane normalised distance maps of touching balls (Z voxels ``z_scale`` thick)."""
    from scipy import ndimage as ndi

    zz, yy, xx = np.indices(shape, dtype=np.float32)
    fg = np.zeros(shape, bool)
    truth = np.zeros(shape, np.int32)
    for i, (cz, cy, cx) in enumerate(centres, start=1):
        inside = ((zz - cz) * z_scale) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        truth[inside & ~fg] = i
        fg |= inside
    dist = np.zeros(shape, np.float32)
    for z in range(shape[0]):  # what a 2D network predicts: distance to the border within each plane
        d = ndi.distance_transform_edt(fg[z])
        dist[z] = d / max(d.max(), 1.0)
    return fg.astype(np.float32), dist, truth


def test_3d_watershed_splits_nuclei_touching_along_z_where_linking_chains_them():
    from napari_segtool.ops.metrics import instance_scores
    from napari_segtool.ops.postprocess import split_by_shape

    fg, dist, truth = ball_maps([(7, 24, 24), (12, 24, 24)], z_scale=3.0)   # stacked, touching along Z
    plane_objects = np.stack([measure_label(p > 0.5) for p in fg])
    linked = link_stack(plane_objects)
    assert len(np.unique(linked[linked > 0])) == 1                 # linking: one chained object
    labels = split_by_shape(fg, dist, diameter=16.0, z_scale=3.0)
    assert labels.max() == 2
    assert instance_scores(labels, truth)["ap50"] == 1.0
    assert np.array_equal(labels > 0, fg > 0.5)                     # no voxel lost or added


def test_3d_watershed_z_scale_is_what_makes_the_neck():
    from napari_segtool.ops.postprocess import split_by_shape

    fg, dist, _ = ball_maps([(7, 24, 24), (12, 24, 24)], z_scale=3.0)
    assert split_by_shape(fg, dist, diameter=16.0, z_scale=3.0).max() == 2
    # read as isotropic, the same voxels are one elongated blob whose waist is too shallow to seed twice
    assert split_by_shape(fg, dist, diameter=16.0, z_scale=1.0).max() == 1


def test_3d_watershed_of_empty_maps_and_bad_shapes():
    from napari_segtool.ops.postprocess import split_by_shape

    empty = np.zeros((4, 16, 16), np.float32)
    assert split_by_shape(empty, empty, diameter=8.0).max() == 0
    with pytest.raises(ValueError, match="ZYX"):
        split_by_shape(empty, empty[:2], diameter=8.0)


def test_shape_seeds_split_touching_discs_that_show_no_dividing_line():
    from scipy import ndimage as ndi
    from skimage.draw import disk as draw_disk

    from napari_segtool.ops.metrics import instance_scores
    from napari_segtool.ops.postprocess import instances_from_maps

    truth = np.zeros((64, 80), np.int32)
    truth[draw_disk((32, 27), 12, shape=truth.shape)] = 1
    second = np.zeros_like(truth, bool)
    second[draw_disk((32, 50), 12, shape=truth.shape)] = True
    truth[second & (truth == 0)] = 2
    fg = (truth > 0).astype(np.float32)          # the network saw no boundary between them: interior == foreground
    edt = ndi.distance_transform_edt(fg)
    dist = (edt / edt.max()).astype(np.float32)
    merged = instances_from_maps(fg, fg, dist, min_size=10)
    assert merged.max() == 1
    split = instances_from_maps(fg, fg, dist, min_size=10, seed_mode="shape")
    assert split.max() == 2 and instance_scores(split, truth)["ap50"] == 1.0
    with pytest.raises(ValueError, match="seed_mode"):
        instances_from_maps(fg, fg, dist, seed_mode="magic")


def measure_label(mask):
    from skimage.measure import label

    return label(mask)


def test_flux_seeds_deblend_sources_whose_joint_footprint_has_no_waist():
    from napari_segtool.ops.postprocess import instances_from_maps

    yy, xx = np.mgrid[:64, :64].astype(np.float32)
    bright = 100 * np.exp(-((yy - 32) ** 2 + (xx - 28) ** 2) / (2 * 3.0 ** 2))
    faint = 30 * np.exp(-((yy - 32) ** 2 + (xx - 39) ** 2) / (2 * 2.0 ** 2))
    image = bright + faint
    fg = (((yy - 32) / 6) ** 2 + ((xx - 33) / 10) ** 2 < 1).astype(np.float32)  # one oval footprint around both
    edt = ndimage_edt(fg)
    dist = (edt / edt.max()).astype(np.float32)
    assert instances_from_maps(fg, fg, dist, min_size=4, seed_mode="shape").max() == 1
    labels = instances_from_maps(fg, fg, dist, min_size=4, seed_mode="flux", image=image)
    assert labels.max() == 2
    assert labels[32, 28] != labels[32, 39] and labels[32, 28] > 0 and labels[32, 39] > 0
    with pytest.raises(ValueError, match="needs the image"):
        instances_from_maps(fg, fg, dist, seed_mode="flux")


def ndimage_edt(mask):
    from scipy import ndimage as ndi

    return ndi.distance_transform_edt(mask)


def per_object_fill(labels: np.ndarray) -> np.ndarray:
    """The definition: each object's mask hole-filled on its own; filled background takes the (first) label."""
    from scipy import ndimage as ndi
    from skimage import measure

    out = labels.copy()
    for region in measure.regionprops(labels):
        patch = out[region.slice]
        patch[ndi.binary_fill_holes(region.image) & (patch == 0)] = region.label
    return out


@pytest.mark.parametrize("seed", range(12))
def test_vectorised_fill_holes_equals_filling_each_object(seed):
    from scipy import ndimage as ndi
    from skimage import measure

    from napari_segtool.ops.postprocess import fill_holes

    rng = np.random.default_rng(seed)
    shape = (10, 24, 24) if seed % 4 == 0 else (80, 80)
    labels = measure.label(ndi.binary_opening(rng.random(shape) < 0.6)).astype(np.int32)
    labels[rng.random(shape) < 0.08] = 0  # holes inside objects and between touching objects
    filled = fill_holes(labels)
    assert (filled != labels).any()
    np.testing.assert_array_equal(filled, per_object_fill(labels))


def test_fill_holes_of_a_ring_around_another_object():
    from napari_segtool.ops.postprocess import fill_holes

    labels = np.zeros((20, 20), np.int32)
    labels[2:18, 2:18] = 1
    labels[5:15, 5:15] = 0
    labels[8:12, 8:12] = 2  # an object inside the ring's hole
    labels[3, 3] = 0  # and a one-pixel hole in the ring
    np.testing.assert_array_equal(fill_holes(labels), per_object_fill(labels))
    assert fill_holes(labels)[6, 6] == 1 and fill_holes(labels)[3, 3] == 1


# ---- fill_holes and the shape/flux splits give the labels they gave before #18's batched hole test ----------------

def reference_fill_holes(labels: np.ndarray, background=None) -> np.ndarray:
    """``fill_holes`` as it was (b2934b1), kept as the reference: a hole bordered by several objects is tested with
    one ``binary_fill_holes`` per candidate object on its bounding box, in id order. (``background``, a labelling
    the new one may be handed, is not used.)"""
    from scipy import ndimage as ndi

    from napari_segtool.ops.postprocess import _touching_ids

    background, n = ndi.label(labels == 0)
    hole = np.ones(n + 1, bool)
    hole[0] = False
    for axis in range(labels.ndim):
        for end in (0, -1):
            hole[np.take(background, end, axis=axis)] = False
    n = int(hole.sum())
    holes = ((np.cumsum(hole) * hole).astype(background.dtype))[background]
    if n == 0:
        return labels.copy()
    where = np.flatnonzero(holes)
    hole_ids, object_ids = _touching_ids(holes.ravel()[where], where, labels)
    pairs = np.unique(np.stack([hole_ids, object_ids]), axis=1)
    count = np.bincount(pairs[0], minlength=n + 1)
    fill = np.zeros(n + 1, labels.dtype)
    single = count[pairs[0]] == 1
    fill[pairs[0][single]] = pairs[1][single]
    boxes, hole_boxes = ndi.find_objects(labels), ndi.find_objects(holes)
    for shared in np.flatnonzero(count > 1):
        for obj in sorted(pairs[1][pairs[0] == shared]):
            box = boxes[obj - 1]
            if all(o.start <= h.start and h.stop <= o.stop for o, h in zip(box, hole_boxes[shared - 1])) and \
                    not (ndi.binary_fill_holes(labels[box] == obj) < (holes[box] == shared)).any():
                fill[shared] = obj
                break
    out = labels.copy()
    out.ravel()[where] = fill[holes.ravel()[where]]
    return out


def same_fill(labels: np.ndarray) -> np.ndarray:
    """``fill_holes(labels)``, asserted bit-identical (ids, dtype) to the reference with one and with two workers."""
    from napari_segtool.ops import parallel
    from napari_segtool.ops.postprocess import fill_holes

    expected = reference_fill_holes(labels)
    for workers in (1, 2):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(parallel, "worker_count", lambda: workers)
            filled = fill_holes(labels)
        assert filled.dtype == expected.dtype and np.array_equal(filled, expected), workers
    return expected


def hole_scene(rng: np.random.Generator, k: int) -> np.ndarray:
    """Random labels with holes of every kind: inside one object, between touching objects, rings around other
    objects (nested), diagonal-only walls, objects on the edges, disconnected objects; 2D and 3D."""
    from scipy import ndimage as ndi
    from skimage import measure

    ndim = 3 if k % 5 == 0 else 2
    shape = tuple(int(s) for s in rng.integers(3, 14 if ndim == 3 else 60, size=ndim))
    kind = k % 4
    if kind == 0:  # touching blobs, speckled with background
        labels = measure.label(ndi.binary_opening(rng.random(shape) < rng.uniform(0.5, 0.8)))
        labels[rng.random(shape) < rng.uniform(0.02, 0.15)] = 0
    elif kind == 1:  # few ids scattered: disconnected objects, shared holes
        labels = rng.integers(0, 4, shape) * (rng.random(shape) < rng.uniform(0.6, 0.95))
    elif kind == 2:  # rings with objects and holes inside, nested
        labels = np.zeros(shape, np.int64)
        for ring in range(1, 5):
            lo = [int(rng.integers(0, max(1, s // 2))) for s in shape]
            hi = [int(rng.integers(l + 1, s + 1)) for l, s in zip(lo, shape)]
            box = tuple(slice(l, h) for l, h in zip(lo, hi))
            labels[box] = ring
            inner = tuple(slice(l + 1, max(l + 1, h - 1)) for l, h in zip(lo, hi))
            labels[inner] = 0 if rng.random() < 0.6 else ring + 10
        labels[rng.random(shape) < 0.05] = 0
    else:  # watershed-like tiling of blobs with diagonal gaps
        labels = measure.label(rng.random(shape) < 0.7, connectivity=1)
        labels[(np.indices(shape).sum(axis=0) % int(rng.integers(3, 7))) == 0] = 0
    return labels.astype([np.int32, np.int64, np.uint16][k % 3])


def test_fill_holes_is_the_reference_on_random_scenes():
    from scipy import ndimage as ndi

    from napari_segtool.ops.postprocess import enclosed_background

    rng = np.random.default_rng(18)
    shared = 0
    for k in range(400):
        labels = hole_scene(rng, k)
        same_fill(labels)
        holes, n = enclosed_background(labels > 0)
        shared += any(np.unique(labels[ndi.binary_dilation(holes == h) & (labels > 0)]).size > 1 for h in range(1, n + 1))
    assert shared > 50  # scenes with holes bordered by several objects, where the batched test runs


def test_fill_holes_of_objects_nested_in_holes_is_the_reference():
    labels = np.zeros((30, 30), np.int32)
    labels[2:28, 2:28] = 5
    labels[5:25, 5:25] = 0          # ring 5 ...
    labels[8:22, 8:22] = 3
    labels[11:19, 11:19] = 0        # ... around ring 3 ...
    labels[14:16, 14:16] = 7        # ... around object 7: the gap between 3 and 7 is 3's alone
    labels[6, 6] = 9                # an object in 5's hole next to 3's border: the hole is shared by 5, 3 and 9
    filled = same_fill(labels)
    assert filled[12, 12] == 3 and filled[6, 7] == 5 and (filled > 0).all() == (labels[0, 0] > 0)


@pytest.fixture(scope="module")
def real_plane_maps():
    from tests.ops.test_postprocess_fast import nuclei_planes, real_or_simulated

    return nuclei_planes(real_or_simulated(2))


def shape_split_labels_before_filling(fg: np.ndarray, distance: np.ndarray, diameter: float) -> np.ndarray:
    """The labels ``split_by_shape`` hands to ``fill_holes``."""
    from napari_segtool.ops import postprocess

    seen = []
    real = postprocess.fill_holes
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(postprocess, "fill_holes", lambda labels, *more: seen.append(labels) or real(labels, *more))
        postprocess.split_by_shape(fg, distance, diameter)
    return seen[0]


@pytest.mark.parametrize("tiles", [1, 3, 8])
def test_shape_split_of_the_real_plane_is_the_reference(real_plane_maps, tiles):
    """The nuclei model's maps of the real image, alone, tiled 3x3 and 8x8 (4096², the speed benchmark's
    size; objects cut at the seams touch): ``split_by_shape``'s labels equal the ones with the reference fill."""
    from napari_segtool.ops import postprocess

    from napari_segtool.ops import parallel

    fg, distance = (np.tile(m, (tiles, tiles)) for m in real_plane_maps)
    with pytest.MonkeyPatch.context() as patch:  # threads: labellings in the background, bands, boxes, counts
        patch.setattr(parallel, "worker_count", lambda: 2)
        fast = postprocess.split_by_shape(fg, distance, 14.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(postprocess, "fill_holes", reference_fill_holes)
        reference = postprocess.split_by_shape(fg, distance, 14.0)
    assert fast.dtype == reference.dtype and np.array_equal(fast, reference)
    if tiles == 3:  # and fill_holes alone on those labels, one and two workers; holes shared by several objects
        labels = shape_split_labels_before_filling(fg, distance, 14.0)
        same_fill(labels)
        assert (labels != reference_fill_holes(labels)).any()


def test_fill_holes_of_the_real_stack_and_a_sky_is_the_reference():
    """3D labels (the nuclei model's split of the real stack, holes punched) and a simulated sky's sources."""
    from napari_segtool.ops.postprocess import split_by_flux, split_by_shape
    from napari_segtool.sim import simulate_astro_field
    from tests.ops.test_postprocess_fast import nuclei_planes, real_or_simulated

    fg, distance = nuclei_planes(real_or_simulated(3))
    stack = split_by_shape(fg, distance, 10.0, z_scale=2.0)
    punched = stack.copy()
    punched[np.random.default_rng(0).random(stack.shape) < 0.05] = 0
    for labels in (stack, punched):
        same_fill(labels)
    field = simulate_astro_field((256, 256), seed=1)
    image = np.arcsinh((field.image - field.sky_level) / field.noise_sigma).astype(np.float32)
    from scipy import ndimage as ndi

    sky = split_by_flux(image, ndi.gaussian_filter((field.labels > 0).astype(np.float32), 1.0), 6.0)
    assert sky.max() > 10
    same_fill(sky)
    same_fill(np.where(np.random.default_rng(1).random(sky.shape) < 0.1, 0, sky))
