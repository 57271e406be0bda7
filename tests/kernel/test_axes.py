"""Axes guessing, validation and canonical reordering (NumPy and Dask)."""

import itertools

import dask.array as da
import numpy as np
import pytest

from napari_segtool.kernel.axes import (
    AxesError,
    canonical_axes,
    from_canonical,
    guess_axes,
    iter_planes,
    n_planes,
    spatial_shape,
    to_canonical,
)


@pytest.mark.parametrize(
    "shape, expected",
    [
        ((64, 80), "YX"),
        ((64, 80, 3), "YXC"),
        ((64, 80, 4), "YXC"),
        ((5, 64, 80), "ZYX"),
        ((3, 64, 80), "ZYX"),
        ((10, 64, 80, 3), "ZYXC"),
        ((2, 10, 64, 80), "TZYX"),
        ((2, 10, 64, 80, 3), "TZYXC"),
        ((2, 10, 3, 64, 80), "TZCYX"),
        ((2, 10, 8, 64, 80), "TZYXC"),
    ],
)
def test_guess_table(shape, expected):
    assert guess_axes(shape) == expected


@pytest.mark.parametrize("shape", [(5,), (), (1, 2, 3, 4, 5, 6)])
def test_guess_impossible(shape):
    with pytest.raises(AxesError, match="cannot guess"):
        guess_axes(shape)


def test_given_axes_are_normalised():
    assert guess_axes((4, 5, 3), "yxs") == "YXC"
    assert guess_axes((2, 4, 5), "CYX") == "CYX"


@pytest.mark.parametrize(
    "shape, axes, message",
    [
        ((4, 5), "ZYX", "3 letters"),
        ((4, 5, 6), "YXQ", "unknown letter"),
        ((4, 5, 6), "YXX", "repeated"),
        ((4, 5, 6), "CSX", "repeated"),
        ((4, 5, 6), "TZX", "Y and X"),
    ],
)
def test_bad_axes(shape, axes, message):
    with pytest.raises(AxesError, match=message):
        guess_axes(shape, axes)
    assert issubclass(AxesError, ValueError)


SIZES = {"T": 2, "Z": 3, "Y": 5, "X": 7, "C": 4}
ORDERS = [
    "".join(p)
    for letters in ("YX", "CYX", "ZYX", "TYX", "ZCYX", "TZYX")
    for p in itertools.permutations(letters)
] + ["".join(p) for p in itertools.permutations("TZCYX")][::5]  # every 5th of the 120


@pytest.mark.parametrize("axes", ORDERS)
def test_canonical_round_trip(axes):
    shape = tuple(SIZES[a] for a in axes)
    data = np.arange(np.prod(shape)).reshape(shape)
    canon, canon_axes = to_canonical(data, axes)
    assert canon_axes == canonical_axes(axes)
    assert canon_axes.endswith("YXC") and canon.shape == tuple(
        SIZES[a] if a in axes else 1 for a in canon_axes
    )
    # the element at any index must be the same after reordering
    idx = {a: SIZES[a] - 1 for a in axes}
    idx["C"] = idx.get("C", 0)
    assert canon[tuple(idx[a] for a in canon_axes)] == data[tuple(idx[a] for a in axes)]
    # a per-pixel "label" derived from channel 0 maps back to the input's spatial layout
    labels = canon[..., 0]
    back = from_canonical(labels, canon_axes, axes)
    spatial = [a for a in axes if a != "C"]
    expected = data.take(0, axis=axes.index("C")) if "C" in axes else data
    assert back.shape == spatial_shape(data.shape, axes) == tuple(SIZES[a] for a in spatial)
    np.testing.assert_array_equal(back, expected)


@pytest.mark.parametrize("axes", ["CZYX", "YXC", "XYZT", "TZCYX"])
def test_canonical_on_dask_stays_lazy(axes):
    shape = tuple(SIZES[a] for a in axes)
    data = np.arange(np.prod(shape)).reshape(shape)
    lazy = da.from_array(data, chunks=2)
    canon, canon_axes = to_canonical(lazy, axes)
    assert isinstance(canon, da.Array)
    np.testing.assert_array_equal(canon.compute(), to_canonical(data, axes)[0])
    back = from_canonical(canon[..., 0], canon_axes, axes)
    assert isinstance(back, da.Array)
    assert back.shape == spatial_shape(shape, axes)


def test_s_is_channel():
    data = np.zeros((5, 7, 3))
    canon, axes = to_canonical(data, "YXS")
    assert axes == "YXC" and canon.shape == (5, 7, 3)
    assert spatial_shape((5, 7, 3), "YXS") == (5, 7)


def test_from_canonical_accepts_size_one_channel_and_rejects_mismatch():
    labels = np.zeros((3, 5, 7, 1), dtype=int)
    assert from_canonical(labels, "ZYXC", "YXZ").shape == (5, 7, 3)
    with pytest.raises(AxesError):
        from_canonical(np.zeros((3, 5, 7, 2)), "ZYXC", "ZYX")
    with pytest.raises(AxesError):
        from_canonical(np.zeros((5, 7)), "ZYXC", "ZYX")
    with pytest.raises(AxesError):
        from_canonical(np.zeros((3, 5, 7)), "ZYXC", "TYX")


def test_iter_planes():
    data = np.arange(2 * 3 * 4 * 5 * 1).reshape(2, 3, 4, 5, 1)
    planes = list(iter_planes(data, "TZYXC"))
    assert n_planes(data, "TZYXC") == n_planes(data.shape, "TZYXC") == 6 == len(planes)
    assert [i for i, _ in planes][:3] == [(0, 0), (0, 1), (0, 2)]
    for index, plane in planes:
        assert plane.shape == (4, 5, 1)
        np.testing.assert_array_equal(plane, data[index])
    single = list(iter_planes(np.zeros((4, 5, 3)), "YXC"))
    assert len(single) == 1 and single[0][0] == () and n_planes((4, 5, 3), "YXC") == 1
    with pytest.raises(AxesError):
        list(iter_planes(np.zeros((4, 5)), "YX"))


def test_axes_errors_are_input_errors_reported_in_one_line(tmp_path, capsys):
    """A wrong axes string is the user's input: an InputError (exit 2, one line in the CLI), not a bug."""
    import tifffile

    from napari_segtool.cli import main
    from napari_segtool.kernel.errors import InputError, user_errors

    with pytest.raises(InputError, match="has 3 letters"):
        guess_axes((4, 5), "ZYX")
    assert issubclass(AxesError, user_errors()) and issubclass(AxesError, ValueError)
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((8, 8), np.float32))
    capsys.readouterr()
    code = main(["-q", "predict", "nuclei", str(tmp_path / "img.tif"), "--axes", "ZYX", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("segtool: error: ") and "ZYX" in err[0], err
    assert not (tmp_path / "out").exists()
