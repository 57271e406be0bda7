"""Output guards: an output never replaces an input, a user's folder or an earlier result unasked."""
from __future__ import annotations

import pytest

from napari_segtool.io.outputs import (
    check_model_output,
    check_output_path,
    made_dirs,
    plan_label_outputs,
    remove_empty_dirs,
    unique_stems,
)
from napari_segtool.kernel.errors import OutputError


def test_unique_stems_keep_the_first_and_number_the_rest():
    assert unique_stems(["a", "b", "a", "a", "a-2"]) == ["a", "b", "a-3", "a-4", "a-2"]


def test_plan_refuses_inputs_and_existing_outputs(tmp_path):
    (tmp_path / "x.tif").write_bytes(b"image")
    plans = plan_label_outputs([tmp_path / "x.tif"], tmp_path / "out", ["x"], ("_labels.tif", ".csv"))
    assert plans == [[tmp_path / "out" / "x_labels.tif", tmp_path / "out" / "x.csv"]]
    (tmp_path / "x_labels.tif").write_bytes(b"an input named like an output")
    with pytest.raises(OutputError, match="would overwrite the input"):
        plan_label_outputs([tmp_path / "x.tif", tmp_path / "x_labels.tif"], tmp_path, ["x", "x_labels"],
                           overwrite=True)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x.csv").write_text("old")
    with pytest.raises(OutputError, match="exists"):
        plan_label_outputs([tmp_path / "x.tif"], tmp_path / "out", ["x"], ("_labels.tif", ".csv"))
    assert plan_label_outputs([tmp_path / "x.tif"], tmp_path / "out", ["x"], (".csv",), overwrite=True)
    (tmp_path / "out" / "x_labels.tif").mkdir()  # --overwrite replaces files, never a folder
    with pytest.raises(OutputError, match="is a folder"):
        plan_label_outputs([tmp_path / "x.tif"], tmp_path / "out", ["x"], overwrite=True)


def test_model_output_rules(tmp_path):
    (tmp_path / "img.tif").write_bytes(b"image")
    model = tmp_path / "m"
    model.mkdir()
    (model / "model.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"w")
    assert check_model_output(model, [tmp_path / "img.tif"]) == model  # an existing model may be replaced
    with pytest.raises(OutputError, match="is an input"):
        check_model_output(tmp_path / "img.tif", [tmp_path / "img.tif"], overwrite=True)
    with pytest.raises(OutputError, match="contains an input"):
        check_model_output(tmp_path, [tmp_path / "img.tif"], overwrite=True)
    (tmp_path / "data").mkdir()
    with pytest.raises(OutputError, match="not a model"):
        check_model_output(tmp_path / "data")
    assert check_model_output(tmp_path / "data", overwrite=True)
    link = tmp_path / "alias.tif"
    link.symlink_to(tmp_path / "img.tif")
    with pytest.raises(OutputError, match="is an input"):
        check_model_output(link, [tmp_path / "img.tif"], overwrite=True)


def test_single_output_path_rules(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(OutputError, match="overwrite the input"):
        check_output_path(tmp_path / "x.zarr", [tmp_path / "x.zarr"], overwrite=True)
    with pytest.raises(OutputError, match="overwrite the input"):
        check_output_path(tmp_path / "x.zarr" / "0", [tmp_path / "x.zarr"], overwrite=True)
    (tmp_path / "y.zarr").mkdir()
    with pytest.raises(OutputError, match="exists"):
        check_output_path(tmp_path / "y.zarr", [tmp_path / "x.zarr"])
    assert check_output_path(tmp_path / "y.zarr", [tmp_path / "x.zarr"], overwrite=True)


def test_made_dirs_are_taken_back_when_empty(tmp_path):
    created = made_dirs(tmp_path / "a" / "b" / "c")
    assert created == [tmp_path / "a" / "b" / "c", tmp_path / "a" / "b", tmp_path / "a"]
    (tmp_path / "a" / "keep.txt").write_text("x")
    remove_empty_dirs(created)
    assert not (tmp_path / "a" / "b").exists() and (tmp_path / "a" / "keep.txt").exists()
