"""The two-click split (core.edits.split_object_points) works in the object's window and gives the whole-plane answer."""

import numpy as np
import pytest

from napari_segtool.core.edits import object_window, split_mask_at_neck, split_object_points
from tests.scenes import disc


def _merged_pair(shape=(600, 700)):
    plane = np.zeros(shape, np.int32)
    plane[disc(shape, (300, 330), 14) | disc(shape, (300, 356), 14)] = 7
    plane[disc(shape, (40, 40), 10)] = 7          # the same id elsewhere (a disconnected piece): left alone
    plane[disc(shape, (500, 600), 12)] = 3
    return plane


def test_two_clicks_split_at_the_neck_as_the_whole_plane_would():
    plane = _merged_pair()
    out = split_object_points(plane, (300, 330), (300, 356), 9)
    whole = np.where(split_mask_at_neck(plane == 7, (300, 330), (300, 356)) == 2, 9, plane)
    np.testing.assert_array_equal(out, whole)
    left, right = (out == 7) & disc(plane.shape, (300, 343), 40), out == 9
    assert abs(int(left.sum()) - int(right.sum())) < 0.1 * right.sum()
    assert out[300, 330] == 7 and out[300, 356] == 9 and (out[40, 40] == 7) and (out == 3).sum() == (plane == 3).sum()
    assert (plane == 7).sum() == ((out == 7) | (out == 9)).sum()  # nothing lost, nothing added


def test_the_object_window_holds_the_object_and_grows_for_large_ones():
    plane = np.zeros((900, 900), np.int32)
    plane[disc(plane.shape, (450, 450), 200)] = 1
    sl = object_window(plane, 1, (450, 450), 48)
    assert (plane[sl] == 1).sum() == (plane == 1).sum()
    out = split_object_points(plane, (450, 300), (450, 600), 2)
    assert (out == 2).sum() > 0.3 * (plane == 1).sum() and (out == 1).sum() > 0.3 * (plane == 1).sum()


def test_points_on_different_objects_are_refused():
    plane = _merged_pair()
    with pytest.raises(ValueError):
        split_object_points(plane, (300, 330), (500, 600), 9)


def test_the_window_version_changes_only_the_objects_window():
    """What the Correct widget writes: the window and its labels; pasted into the plane, the whole-plane answer."""
    from napari_segtool.core.edits import split_object_points_in_window

    plane = np.zeros((600, 700), np.int32)
    yy, xx = np.mgrid[:600, :700]
    plane[(yy - 300) ** 2 + (xx - 330) ** 2 < 15 ** 2] = 4
    plane[(yy - 300) ** 2 + (xx - 356) ** 2 < 15 ** 2] = 4
    plane[10:20, 10:20] = 7
    sl, labels = split_object_points_in_window(plane, (300, 330), (300, 356), 9)
    assert labels.shape == plane[sl].shape and labels.size < plane.size / 20
    pasted = plane.copy()
    pasted[sl] = labels
    np.testing.assert_array_equal(pasted, split_object_points(plane, (300, 330), (300, 356), 9))
    assert (labels == 9).sum() > 300 and (labels == 4).sum() > 300
