"""OME-Zarr (NGFF 0.4) labels: conformant metadata, round trip through read_image, the napari reader and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_segtool.io.images import read_image, read_labels
from napari_segtool.io.ome_zarr import is_ome_zarr_labels, ngff_unit, write_ome_zarr_labels

UDUNITS_SPACE = {"angstrom", "nanometer", "micrometer", "millimeter", "centimeter", "meter", "inch", "picometer"}
UDUNITS_TIME = {"second", "millisecond", "microsecond", "minute", "hour", "day"}


def _labels(shape, seed=0):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.int32)
    for k in range(1, 9):  # small boxes (at most 8 px per axis) at random places
        starts = [int(rng.integers(0, max(1, s - 8))) for s in shape]
        lab[tuple(slice(a, a + min(8, s)) for a, s in zip(starts, shape))] = k
    return lab


def _check_ngff(path, axes_names, n_levels=None):
    """The parts of the NGFF 0.4 label-image rules a reader relies on."""
    attrs = json.loads((path / ".zattrs").read_text())
    assert json.loads((path / ".zgroup").read_text())["zarr_format"] == 2
    (ms,) = attrs["multiscales"]
    assert ms["version"] == "0.4" and attrs["image-label"]["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == list(axes_names)
    types = [a["type"] for a in ms["axes"]]
    assert types == sorted(types, key=["time", "channel", "space"].index)  # time, channel, then space
    assert 2 <= types.count("space") <= 3
    for a in ms["axes"]:
        if "unit" in a:
            assert a["unit"] in (UDUNITS_TIME if a["type"] == "time" else UDUNITS_SPACE)
    shapes = []
    for level, ds in enumerate(ms["datasets"]):
        assert ds["path"] == str(level)
        (t,) = ds["coordinateTransformations"]
        assert t["type"] == "scale" and len(t["scale"]) == len(axes_names)
        zarray = json.loads((path / ds["path"] / ".zarray").read_text())
        assert zarray["dimension_separator"] == "/" and zarray["dtype"] in ("<u2", "<u4")
        shapes.append(zarray["shape"])
    for a, b in zip(shapes, shapes[1:]):  # Y/X halved, other axes kept
        assert b[:-2] == a[:-2] and b[-2:] == [(a[-2] + 1) // 2, (a[-1] + 1) // 2]
    if n_levels is not None:
        assert len(ms["datasets"]) == n_levels
    return ms


def test_zyx_labels_round_trip_with_scale_and_units(tmp_path):
    lab = _labels((4, 300, 260))
    path = write_ome_zarr_labels(tmp_path / "x.ome.zarr", lab, "ZYX", scale={"Z": 2.0, "Y": 0.5, "X": 0.5},
                                 units={"Z": "µm", "Y": "µm", "X": "um"}, attrs={"model": "nuclei"})
    ms = _check_ngff(path, "zyx", n_levels=3)  # 300x260 -> 150x130 -> 75x65 (>= 64)
    assert [a.get("unit") for a in ms["axes"]] == ["micrometer"] * 3
    assert ms["datasets"][2]["coordinateTransformations"][0]["scale"] == [2.0, 2.0, 2.0]
    image = read_image(path)
    assert image.axes == "ZYX" and image.metadata["format"] == "ome-zarr"
    assert image.metadata["scale"] == {"Z": 2.0, "Y": 0.5, "X": 0.5}
    assert image.metadata["units"] == {"Z": "micrometer", "Y": "micrometer", "X": "micrometer"}
    np.testing.assert_array_equal(read_labels(path), lab)
    assert is_ome_zarr_labels(path)
    coarse = np.asarray(__import__("zarr").open_group(str(path), mode="r")["1"])
    np.testing.assert_array_equal(coarse, lab[:, ::2, ::2])  # nearest: ids kept, no new values


def test_axes_are_put_in_ngff_order_and_unknown_units_left_out(tmp_path):
    lab = _labels((40, 3, 2, 50))  # Y T Z X
    path = write_ome_zarr_labels(tmp_path / "t.ome.zarr", lab, "YTZX", scale={"T": 5.0, "X": 0.2},
                                 units={"T": "sec", "X": "parsec-ish"})
    ms = _check_ngff(path, "tzyx", n_levels=1)
    assert ms["axes"][0]["unit"] == "second" and "unit" not in ms["axes"][3]
    image = read_image(path)
    assert image.axes == "TZYX"
    np.testing.assert_array_equal(np.asarray(image.data), lab.transpose(1, 2, 0, 3))


def test_big_ids_are_uint32_and_bad_input_is_refused(tmp_path):
    lab = np.zeros((70, 70), np.int64)
    lab[3:9, 3:9] = 70000
    path = write_ome_zarr_labels(tmp_path / "big.ome.zarr", lab, "YX")
    assert json.loads((path / "0" / ".zarray").read_text())["dtype"] == "<u4"
    assert read_labels(path).max() == 70000
    with pytest.raises(ValueError, match="axes"):
        write_ome_zarr_labels(tmp_path / "bad.ome.zarr", lab, "ZX")
    with pytest.raises(ValueError, match="negative"):
        write_ome_zarr_labels(tmp_path / "neg.ome.zarr", -np.ones((4, 4), np.int32), "YX")
    assert not (tmp_path / "bad.ome.zarr").exists() and not (tmp_path / "neg.ome.zarr").exists()


def test_rewrite_replaces_the_whole_group(tmp_path):
    path = write_ome_zarr_labels(tmp_path / "r.ome.zarr", _labels((300, 300)), "YX")
    assert (path / "2").exists()
    write_ome_zarr_labels(path, _labels((40, 40), seed=1), "YX")
    assert not (path / "2").exists()  # no stale level of the old pyramid
    np.testing.assert_array_equal(read_labels(path), _labels((40, 40), seed=1))


def test_units():
    assert ngff_unit("µm") == ngff_unit("micron") == "micrometer"
    assert ngff_unit("NM") == "nanometer" and ngff_unit("pixel") is None and ngff_unit(None) is None


def test_napari_reader_opens_ngff_labels_as_a_labels_layer(tmp_path):
    readers = pytest.importorskip("napari_segtool.plugin.readers")
    lab = _labels((2, 80, 90))
    path = write_ome_zarr_labels(tmp_path / "n.ome.zarr", lab, "ZYX", scale={"Z": 3.0, "Y": 1.0, "X": 1.0})
    assert readers.get_reader(str(path)) is not None
    (data, kwargs, kind), = readers.read_one(str(path))
    assert kind == "labels" and tuple(kwargs["scale"]) == (3.0, 1.0, 1.0)
    np.testing.assert_array_equal(np.asarray(data), lab)


def test_cli_predict_writes_ome_zarr_labels_with_the_inputs_pixel_size(tmp_path):
    from napari_segtool.cli import main
    from napari_segtool.sim.nuclei import simulate_nuclei

    image = simulate_nuclei((96, 96), seed=5, snr=20.0).image.astype(np.float32)
    src = tmp_path / "cells.tif"
    tifffile.imwrite(src, image, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "um"})
    out = tmp_path / "res" / "cells.ome.zarr"
    assert main(["-q", "predict", "nuclei", str(src), "--out", str(out)]) == 0
    ms = _check_ngff(out, "yx")
    assert [a.get("unit") for a in ms["axes"]] == ["micrometer", "micrometer"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [0.5, 0.5]
    labels = read_labels(out)
    assert labels.shape == (96, 96) and labels.max() > 0
    # the same labels as the TIFF output of the same run
    assert main(["-q", "predict", "nuclei", str(src), "--out", str(tmp_path / "tif")]) == 0
    np.testing.assert_array_equal(labels, read_labels(tmp_path / "tif" / "cells_labels.tif"))
    assert main(["-q", "predict", "nuclei", str(src), "--out", str(out)]) == 2  # exists: refused
    assert main(["-q", "predict", "nuclei", str(src), str(src), "--out", str(out), "--overwrite"]) == 2
