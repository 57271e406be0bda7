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
