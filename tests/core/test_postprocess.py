"""Stack post-processing: linking planes into 3D objects and cutting chains of stacked nuclei."""
import numpy as np
from skimage.draw import disk

from napari_segtool.core.postprocess import link_stack, split_z_chains


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
