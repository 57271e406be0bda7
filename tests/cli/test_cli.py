"""End-to-end: the ``segtool`` command trains, predicts and evaluates on small files."""
import json

import numpy as np
import pytest
import tifffile

from napari_segtool.cli import main
from napari_segtool.io.images import read_labels
from tests.conftest import draw_objects


@pytest.fixture
def files(tmp_path):
    image, labels = draw_objects((96, 96), n=10, seed=11, touching=False)
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    return tmp_path


def test_train_predict_evaluate(files, capsys, monkeypatch):
    monkeypatch.setenv("SEGTOOL_MODELS_DIR", str(files / "user-models"))
    out_model = files / "user-models" / "mine"
    assert main(["-q", "train", str(files / "img.tif"), str(files / "lab.tif"), "--epochs", "2",
                 "--steps-per-epoch", "3", "--batch-size", "2", "--patch-size", "48", "--out", str(out_model)]) == 0
    assert (out_model / "model.safetensors").exists()
    assert main(["-q", "predict", "mine", str(files / "img.tif"), "--out", str(files / "pred")]) == 0
    pred = read_labels(files / "pred" / "img_labels.tif")
    assert pred.shape == (96, 96)
    capsys.readouterr()
    assert main(["evaluate", str(files / "pred" / "img_labels.tif"), str(files / "lab.tif")]) == 0
    assert "AP" in capsys.readouterr().out
    assert main(["models"]) == 0
    assert "mine" in capsys.readouterr().out


def test_fine_tune_from_model(files, tiny_model):
    out = files / "tuned"
    assert main(["-q", "train", str(files / "img.tif"), str(files / "lab.tif"), "--init", str(tiny_model),
                 "--time-budget", "2", "--patch-size", "48", "--batch-size", "2", "--out", str(out)]) == 0
    history = json.loads((out / "model.json").read_text())["history"]
    assert len(history) == 2 and history[-1]["fine_tuned_from"] == "tiny"


def test_predict_stack_keeps_spatial_shape(files, tiny_model):
    image, _ = draw_objects((64, 64), n=5, seed=12)
    tifffile.imwrite(files / "stack.tif", np.stack([image] * 3), imagej=True, metadata={"axes": "ZYX"})
    rgb = np.stack([image] * 3, axis=-1).astype(np.uint8)
    tifffile.imwrite(files / "rgb.tif", rgb)
    assert main(["-q", "predict", str(tiny_model), str(files / "stack.tif"), str(files / "rgb.tif"),
                 "--out", str(files / "o")]) == 0
    assert read_labels(files / "o" / "stack_labels.tif").shape == (3, 64, 64)
    assert read_labels(files / "o" / "rgb_labels.tif").shape == (64, 64)


@pytest.mark.parametrize("args,message", [
    (["predict", "no-such-model", "x.tif", "--out", "o"], "unknown model"),
    (["evaluate", "missing.tif", "missing.tif"], "missing.tif"),
    (["train", "img.tif", "lab.tif", "img.tif", "--out", "m"], "pairs"),
    (["train", "img.tif", "short.tif", "--out", "m"], "shape"),
    (["train", "img.tif", "empty.tif", "--out", "m"], "empty"),
    (["predict", "TINY", "corrupt.tif", "--out", "o"], "cannot read"),
])
def test_bad_input_is_one_line_and_exit_2(files, tiny_model, capsys, monkeypatch, args, message):
    monkeypatch.chdir(files)
    tifffile.imwrite(files / "short.tif", np.zeros((10, 10), np.uint16))
    tifffile.imwrite(files / "empty.tif", np.zeros((96, 96), np.uint16))
    (files / "corrupt.tif").write_bytes(b"II*\x00garbage")
    args = [str(tiny_model) if a == "TINY" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segtool: error:") and message in err and "\n" not in err


# ----------------------------------------------------------------------------- outputs never destroy data
@pytest.fixture
def raw_model(tmp_path):
    """An untrained, tiny U-Net on disk (prediction runs; what it finds does not matter here)."""
    from napari_segtool.core.checkpoint import save_model
    from napari_segtool.core.train import new_model

    path = tmp_path / "raw-model"
    save_model(new_model("unet", "instance", 1, depth=1, width=4), path)
    return path


def _tiny_train(files, out, *extra):
    return main(["-q", "train", str(files / "img.tif"), str(files / "lab.tif"), "--epochs", "1",
                 "--steps-per-epoch", "1", "--batch-size", "1", "--patch-size", "16", "--out", str(out), *extra])


def test_train_replaces_a_model_but_a_data_folder_only_with_overwrite(files, capsys):
    out = files / "model"
    assert _tiny_train(files, out) == 0
    first = (out / "model.safetensors").read_bytes()
    assert _tiny_train(files, out, "--seed", "1") == 0  # retraining to the same name replaces the model
    assert (out / "model.safetensors").read_bytes() != first
    data = files / "mydata"
    data.mkdir()
    (data / "thesis.txt").write_text("years of work")
    capsys.readouterr()
    assert _tiny_train(files, data) == 2
    assert "not a model" in capsys.readouterr().err and (data / "thesis.txt").read_text() == "years of work"
    assert _tiny_train(files, data, "--overwrite") == 0
    assert (data / "model.json").exists() and not (data / "thesis.txt").exists()
    assert [p.name for p in files.iterdir() if p.name.startswith(".")] == []  # no temporaries left


def test_predict_refuses_existing_outputs_and_names_colliding_stems_apart(files, raw_model, capsys):
    (files / "other").mkdir()
    tifffile.imwrite(files / "other" / "img.tif", tifffile.imread(files / "img.tif")[:64, :64])
    out = files / "res"
    args = ["-q", "predict", str(raw_model), str(files / "img.tif"), str(files / "other" / "img.tif"), "--out", str(out)]
    assert main(args) == 0
    assert read_labels(out / "img_labels.tif").shape == (96, 96)
    assert read_labels(out / "img-2_labels.tif").shape == (64, 64)  # same stem, both kept
    before = (out / "img_labels.tif").read_bytes()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err and (out / "img_labels.tif").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0


def test_a_failed_prediction_leaves_no_output_folder(files, capsys):
    from napari_segtool.core.checkpoint import save_model
    from napari_segtool.core.train import new_model

    rgb_model = files / "rgb-model"
    save_model(new_model("unet", "instance", 3, depth=1, width=4), rgb_model)  # a gray image cannot be segmented
    out = files / "new" / "deeper"
    assert main(["-q", "predict", str(rgb_model), str(files / "img.tif"), "--out", str(out)]) == 2
    assert "channel" in capsys.readouterr().err
    assert not (files / "new").exists()


def test_an_internal_error_is_one_line_with_a_log_file(files, capsys, monkeypatch):
    import napari_segtool.cli as cli

    def broken(args):
        raise RuntimeError("something inside broke\nsecond line")

    monkeypatch.setattr(cli, "cmd_evaluate", broken)
    monkeypatch.setenv("SEGTOOL_LOG_DIR", str(files / "logs"))
    assert main(["evaluate", "a.tif", "b.tif"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("segtool: internal error: RuntimeError: something inside broke")
    logs = list((files / "logs").iterdir())
    assert len(logs) == 1 and str(logs[0]) in err
    assert "Traceback" in logs[0].read_text() and "second line" in logs[0].read_text()


def test_library_log_messages_do_not_add_lines_to_an_error(files):
    """tifffile logs a warning for a corrupt file: outside pytest's log capture it must not reach stderr."""
    import subprocess
    import sys
    from pathlib import Path

    (files / "corrupt.tif").write_bytes(b"II*\x00garbage")
    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = subprocess.run([sys.executable, "-m", "napari_segtool.cli", "evaluate", "corrupt.tif", "lab.tif"],
                         cwd=files, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.splitlines() == ["segtool: error: cannot read corrupt.tif: the TIFF file has no image series"]


def test_models_lists_a_non_utf8_user_model_as_broken(files, raw_model, capsys, monkeypatch):
    import shutil

    user = files / "user"
    shutil.copytree(raw_model, user / "broken")
    (user / "broken" / "model.json").write_bytes(b"\xff\xfe\x00")
    monkeypatch.setenv("SEGTOOL_MODELS_DIR", str(user))
    assert main(["models"]) == 0
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("broken")]
    assert len(line) == 1 and "unreadable" in line[0] and "UTF-8" in line[0]


def test_diameter_as_a_length_uses_each_files_pixel_size(files, tiny_model, capsys):
    """``--diameter 10um`` on a 0.5 µm/pixel file is ``--diameter 20`` on every path; a file without a
    pixel size is refused (one line, exit 2, no output)."""
    image = tifffile.imread(files / "img.tif")
    tifffile.imwrite(files / "um.tif", image, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "micron"})
    runs = {}
    for name, value in (("px", "20"), ("um", "10um"), ("mm", "0.01 mm")):
        out = files / f"out_{name}"
        assert main(["-q", "predict", str(tiny_model), str(files / "um.tif"), "--out", str(out),
                     "--diameter", value]) == 0
        runs[name] = read_labels(out / "um_labels.tif")
    np.testing.assert_array_equal(runs["um"], runs["px"])
    np.testing.assert_array_equal(runs["mm"], runs["px"])
    auto = files / "out_auto"
    assert main(["-q", "predict", str(tiny_model), str(files / "um.tif"), "--out", str(auto), "--diameter", "40"]) == 0
    assert not np.array_equal(read_labels(auto / "um_labels.tif"), runs["px"])  # the size changes the result
    zarr_out = files / "um.zarr"
    assert main(["-q", "predict", str(tiny_model), str(files / "um.tif"), "--out", str(zarr_out),
                 "--diameter", "10um"]) == 0
    capsys.readouterr()
    refused = files / "refused"
    assert main(["-q", "predict", str(tiny_model), str(files / "img.tif"), "--out", str(refused),
                 "--diameter", "10um"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no pixel size" in err and not refused.exists()
    assert main(["-q", "predict", str(tiny_model), str(files / "um.tif"), "--out", str(refused),
                 "--diameter", "10 s"]) == 2
