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


def test_astro_sources_on_a_fits_field_writes_labels_and_a_source_table(tmp_path):
    """``segtool predict astro-sources FIELD.fits``: deblended labels and a catalogue whose fluxes are real."""
    import csv

    from astropy.io import fits

    from napari_segtool.ops.metrics import instance_scores
    from napari_segtool.ops.postprocess import overlap_matrix
    from napari_segtool.sim import simulate_astro_field

    field = simulate_astro_field((128, 128), seed=21)
    fits.writeto(tmp_path / "field.fits", field.image)
    assert main(["-q", "predict", "astro-sources", str(tmp_path / "field.fits"), "--out", str(tmp_path / "out")]) == 0
    labels = read_labels(tmp_path / "out" / "field_labels.tif")
    assert instance_scores(labels, field.labels)["ap50"] > 0.2
    with open(tmp_path / "out" / "field_objects.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {int(r["label"]) for r in rows} == set(np.unique(labels[labels > 0]).tolist())
    assert float(rows[0]["sky"]) == pytest.approx(field.sky_level, rel=0.05)
    assert {r["class"] for r in rows} <= {"star", "galaxy"} and all(0 <= float(r["p_star"]) <= 1 for r in rows)
    # measured fluxes follow the simulator's fluxes of the sources they overlap most
    inter, pred_ids, true_ids = overlap_matrix(labels, field.labels)
    flux_true = {e["id"]: e["flux"] for e in field.catalog}
    pairs = [(float(r["flux"]), flux_true[int(true_ids[inter[list(pred_ids).index(int(r["label"]))].argmax()])])
             for r in rows if int(r["label"]) in pred_ids]
    measured, true = np.log10(np.clip(np.array(pairs), 1e-3, None)).T
    assert np.corrcoef(measured, true)[0, 1] > 0.8
