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


# ------------------------------------------------------------------ every option honoured or refused (#11)
class _Call:
    """One call of a core function the CLI ends in, as it was made (the function then runs for real)."""

    def __init__(self, name, args, kwargs, loaded):
        self.name, self.args, self.kwargs, self.loaded = name, args, kwargs, loaded

    @property
    def model_device(self):
        """The ``device`` the model handed to the core was loaded with (``load_model(..., device=)``)."""
        return self.loaded.get(id(self.args[0]), "not loaded with load_model")


@pytest.fixture
def core_calls(monkeypatch):
    """Records what the CLI hands to the core (iter_predict, predict_to_zarr/folder, decompose) and the device
    each model was loaded on; every call goes through to the real function."""
    import napari_segtool.core.batch as batch
    import napari_segtool.core.checkpoint as checkpoint
    import napari_segtool.core.decompose as decompose
    import napari_segtool.core.predict as predict

    calls, loaded = [], {}
    real_load = checkpoint.load_model

    def load_model(*args, **kwargs):
        model = real_load(*args, **kwargs)
        loaded[id(model)] = kwargs.get("device")
        return model

    monkeypatch.setattr(checkpoint, "load_model", load_model)
    for module, name in ((predict, "iter_predict"), (batch, "predict_to_zarr"), (batch, "predict_folder"),
                         (decompose, "decompose")):
        def spy(*args, _real=getattr(module, name), _name=name, **kwargs):
            calls.append(_Call(_name, args, kwargs, loaded))
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return calls


#: how `segtool predict` runs: the model, the arguments that choose the way, and the image it reads
WAYS = {
    "in memory": ("unet", ["--out", "res"]),
    "OME-Zarr": ("unet", ["--out", "res.ome.zarr"]),
    "chunked": ("unet", ["--out", "res.zarr"]),
    "dask cluster": ("unet", ["--out", "res.zarr", "--workers", "1"]),
    "bulge/disk": ("astro-bulge-disk", ["--out", "res"]),
}
#: option -> (its arguments, the input it needs, what the core must have been given when it is honoured)
OPTIONS = {
    "--tile-size": (["--tile-size", "128"], "plane", lambda c: c.kwargs["tile_size"] == 128),
    "--z-scale": (["--z-scale", "3"], "stack", lambda c: c.kwargs["z_scale"] == 3.0),
    "--diameter": (["--diameter", "20"], "plane", lambda c: c.kwargs["diameter"] == 20.0),
    "--device": (["--device", "cpu"], "plane", lambda c: c.model_device == "cpu"),
    "--axes": (["--axes", "CYX"], "cyx", lambda c: c.kwargs["axes"] == "CYX" if "axes" in c.kwargs
               else np.shape(c.args[1]) == (64, 64, 1)),
    "--hdu": (["--hdu", "SCI"], "fits", lambda c: np.array_equal(np.asarray(c.args[1]).squeeze(), _SCI)),
    "--chunk-size": (["--chunk-size", "128"], "plane", lambda c: c.kwargs["chunk_size"] == 128),
    "--psf-fwhm": (["--psf-fwhm", "3"], "plane",
                   lambda c: c.kwargs["psf_size"].sigma == pytest.approx(3 / 2.3548, 1e-3)),
    "--workers": (["--workers", "1"], "plane", lambda c: c.kwargs["workers"] == 1),
    "--scheduler": (["--scheduler", "synchronous"], "plane", lambda c: c.kwargs["scheduler"] == "synchronous"),
}
#: (way, option) refused, with words of the one line; every other pair must be honoured
REFUSED = {
    ("in memory", "--chunk-size"): "--chunk-size is not used by a prediction in memory",
    ("in memory", "--psf-fwhm"): "--psf-fwhm is not used by model",
    ("in memory", "--z-scale plane"): "has no Z axis",
    ("OME-Zarr", "--chunk-size"): "--chunk-size is not used by an OME-Zarr prediction",
    ("OME-Zarr", "--workers"): "--workers is not used by an OME-Zarr prediction",
    ("OME-Zarr", "--scheduler"): "--scheduler is not used by an OME-Zarr prediction",
    ("OME-Zarr", "--psf-fwhm"): "--psf-fwhm is not used by model",
    ("chunked", "--hdu"): "--hdu is not used by a chunked prediction",
    ("chunked", "--psf-fwhm"): "--psf-fwhm is not used by model",
    ("chunked", "--z-scale plane"): "has no Z axis",
    ("dask cluster", "--hdu"): "--hdu is not used by a prediction on a dask cluster",
    ("dask cluster", "--device"): "--device is not used by a prediction on a dask cluster",
    ("dask cluster", "--psf-fwhm"): "--psf-fwhm is not used by model",
    ("bulge/disk", "--diameter"): "--diameter is not used by astro-bulge-disk (a bulge/disk model)",
    ("bulge/disk", "--z-scale"): "--z-scale is not used by astro-bulge-disk",
    ("bulge/disk", "--chunk-size"): "--chunk-size is not used by astro-bulge-disk",
    ("bulge/disk", "--workers"): "--workers is not used by astro-bulge-disk",
    ("bulge/disk", "--scheduler"): "--scheduler is not used by astro-bulge-disk",
}
#: options that choose the way rather than run in it (--workers/--scheduler make a chunked run)
NOT_CROSSED = {("in memory", "--workers"), ("in memory", "--scheduler"), ("chunked", "--workers"),
               ("dask cluster", "--workers"), ("dask cluster", "--scheduler")}
_SCI = np.zeros((64, 64), np.float32)  # set by the fixture below: the data of HDU 'SCI'
SLOW_WAYS = ("dask cluster",)  # each honoured run starts a LocalCluster


def _table():
    rows = []
    for way in WAYS:
        for option in OPTIONS:
            if (way, option) in NOT_CROSSED:
                continue
            marks = [pytest.mark.slow] if way in SLOW_WAYS and (way, option) not in REFUSED else []
            rows.append(pytest.param(way, option, REFUSED.get((way, option)), id=f"{way}{option}", marks=marks))
    rows += [pytest.param(way, "--z-scale", REFUSED[(way, "--z-scale plane")], id=f"{way}--z-scale-2D")
             for way in ("in memory", "chunked")]
    return rows


@pytest.fixture
def option_inputs(tmp_path, raw_model):
    """The images the table reads: a plane, a ZYX stack, a (1, Y, X) array, a FITS file with two image HDUs."""
    from astropy.io import fits

    from napari_segtool.sim.bulge_disk import bulge_disk_fields

    field = bulge_disk_fields(1, (64, 64), seed=5)[0].image.astype(np.float32)
    _SCI[:] = field
    tifffile.imwrite(tmp_path / "plane.tif", field)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([field] * 3), imagej=True, metadata={"axes": "ZYX"})
    np.save(tmp_path / "cyx.npy", field[None])
    fits.HDUList([fits.PrimaryHDU(field[::-1].copy()), fits.ImageHDU(field, name="SCI")]).writeto(tmp_path / "f.fits")
    return {"plane": "plane.tif", "stack": "stack.tif", "cyx": "cyx.npy", "fits": "f.fits", "unet": str(raw_model)}


@pytest.mark.parametrize("way,option,refusal", _table())
def test_every_predict_option_is_honoured_or_refused_on_every_way(way, option, refusal, option_inputs, core_calls,
                                                                  tmp_path, capsys, monkeypatch):
    """Each (way, option) pair: the core receives the option's value (the run then completes), or the command
    refuses it with one line and exit code 2 before any work (no core call, no output)."""
    monkeypatch.chdir(tmp_path)
    model, way_args = WAYS[way]
    option_args, needs, honoured = OPTIONS[option]
    image = option_inputs["plane" if refusal and "no Z axis" in refusal else needs]
    if way == "bulge/disk" and needs == "stack":
        image = option_inputs["plane"]
    args = ["-q", "predict", option_inputs.get(model, model), image, *way_args, *option_args]
    code = main(args)
    err = capsys.readouterr().err.strip()
    if refusal is not None:
        assert code == 2 and err.startswith("segtool: error:") and refusal in err and "\n" not in err, err
        assert core_calls == [] and not any(p.name.startswith("res") for p in tmp_path.iterdir())
        return
    assert code == 0, err
    assert core_calls and honoured(core_calls[0]), (core_calls[0].name, core_calls[0].kwargs)


@pytest.mark.parametrize("args,refusal", [
    (["-q", "train", "img.tif", "lab.tif", "--init", "TINY", "--model", "maskrcnn", "--out", "m"],
     "--model maskrcnn: fine-tuning keeps the architecture of --init TINY (unet)"),
    (["-q", "train", "img.tif", "lab.tif", "--init", "TINY", "--task", "semantic", "--out", "m"],
     "--task semantic: fine-tuning keeps the task of --init TINY (instance)"),
    (["export", "TINY", "--format", "onnx", "--out", "m.onnx", "--author", "A. Person"],
     "--author is used by bioimage.io packages only"),
    (["export", "TINY", "--format", "onnx", "--out", "m.onnx", "--sample", "img.tif"],
     "--sample is used by bioimage.io packages only"),
    (["export", "TINY", "--format", "bioimageio", "--out", "m.zip", "--axes", "YX"],
     "--axes gives the axes of --sample"),
])
def test_train_and_export_refuse_options_they_would_ignore(files, tiny_model, capsys, monkeypatch, args, refusal):
    monkeypatch.chdir(files)
    assert main([str(tiny_model) if a == "TINY" else a for a in args]) == 2
    err = capsys.readouterr().err.strip().replace(str(tiny_model), "TINY")
    assert err.startswith("segtool: error:") and refusal in err and "\n" not in err, err
    assert not (files / "m").exists() and not (files / "m.onnx").exists() and not (files / "m.zip").exists()


def test_fine_tuning_keeps_the_starts_task_and_architecture_without_options(files, tmp_path):
    """With --init and no --model/--task the start's own are used (--task used to default to instance)."""
    from napari_segtool.core.checkpoint import load_model, save_model
    from napari_segtool.core.train import new_model

    semantic = tmp_path / "semantic"
    classes = ["unlabelled"] + [f"class {i}" for i in range(1, 11)]  # lab.tif holds ids 1..10
    save_model(new_model("unet", "semantic", 1, classes, depth=1, width=4), semantic)
    assert _tiny_train(files, tmp_path / "tuned", "--init", str(semantic)) == 0
    tuned = load_model(tmp_path / "tuned").meta
    assert (tuned.arch, tuned.task) == ("unet", "semantic")
