"""Generated bad inputs for ``segtool``: each is one line on stderr, exit code 2, and touches nothing.

Every case runs the command in-process (``napari_segtool.cli.main``) in a shared
workspace of tiny files; afterwards every file there (inputs, a user's data
folder, earlier results, models) must be byte-identical and nothing may have
been added, and none may hang. Cases are generated per family: numeric arguments
out of range or not numbers, unavailable devices, outputs that would destroy
something (inputs, a user's folder, /sys), broken model folders (every
``model.json`` field dropped, of each wrong JSON type, its nested contents
broken; widths/depths that do not fit the weights; broken weights), unreadable
images, unusable training pairs (ids above 2**31 among them), bad label images for
``evaluate`` and malformed command lines.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_segtool.cli import main

TRAIN = ["train", "img.tif", "lab.tif"]
PREDICT = ["predict", "MODEL", "img.tif"]


def _cases() -> list[tuple[str, list[str]]]:
    cases: list[tuple[str, list[str]]] = []

    def add(family: str, args: list[str]) -> None:
        cases.append((family, args))

    # ---- numbers out of range, not finite, not numbers
    train_numbers = {
        "--epochs": ["0", "-3", "x", "1.5", "nan", "1e9", "2000000"],
        "--time-budget": ["0", "-5", "nan", "inf", "-inf", "abc", "-0"],
        "--batch-size": ["0", "-1", "5000", "x", "2.5"],
        "--patch-size": ["0", "-8", "8", "15", "5000", "x", "nan"],
        "--steps-per-epoch": ["0", "-1", "x", "1e3"],
        "--lr": ["0", "-1", "nan", "inf", "x", "100", "-0.0"],
        "--seed": ["-1", "x", str(2**40)],
    }
    for flag, values in train_numbers.items():
        for value in values:
            add("train-number", [*TRAIN, "--out", "new-model", f"{flag}={value}"])
    predict_numbers = {
        "--tile-size": ["-5", "0", "1", "31", "x", "100000", "64.5"],
        "--z-scale": ["0", "-3", "nan", "inf", "x", "1e6"],
        "--chunk-size": ["0", "-1", "x", "10"],
        "--workers": ["0", "-2", "x"],
    }
    add("predict-number", ["predict", "nuclei", "img.tif", "--out", "results-new", "--tile-size", "64"])  # < its field
    for flag, values in predict_numbers.items():
        for value in values:
            add("predict-number", [*PREDICT, "--out", "results-new", f"{flag}={value}"])

    # ---- devices this machine does not have, or that are not devices
    devices = ["mps", "xla", "meta", "gpu", "", "cpu:abc", "cuda:99", "tpu", "opengl", "CUDA!"]
    if not torch.cuda.is_available():
        devices += ["cuda", "cuda:0"]
    for device in devices:
        add("device", [*TRAIN, "--out", "new-model", f"--device={device}"])
        add("device", [*PREDICT, "--out", "results-new", f"--device={device}"])

    # ---- outputs that would destroy what the program did not create
    for out in ["mydata", "img.tif", "lab.tif", ".", "inputs-dir", "notes.txt", "fake.safetensors",
                "/sys/segtool-test", "/proc/segtool-test/m", "img.tif/sub", "results", "good-model/model.json"]:
        add("train-out", [*TRAIN, "--out", out])
    add("train-out", ["train", "inputs-dir/a.tif", "inputs-dir/b.tif", "--out", "inputs-dir"])
    add("train-out", ["train", "inputs-dir/a.tif", "inputs-dir/b.tif", "--out", "inputs-dir", "--overwrite"])
    add("train-out", [*TRAIN, "--out", "img.tif", "--overwrite"])
    add("train-out", [*TRAIN, "--out", "lab.tif", "--overwrite"])
    add("train-out", [*TRAIN, "--out", ".", "--overwrite"])
    for args in (
        [*PREDICT, "--out", "img.tif"],                      # a file, not a folder
        [*PREDICT, "--out", "results"],                      # results/img_labels.tif exists
        [*PREDICT, "--out", "results2"],                     # results2/img_objects.csv exists
        ["predict", "MODEL", "stack.zarr", "--out", "stack.zarr"],
        ["predict", "MODEL", "stack.zarr", "--out", "stack.zarr", "--overwrite"],
        ["predict", "MODEL", "stack.zarr", "--out", "old_labels.zarr"],
        ["predict", "MODEL", "img.tif", "--out", "/sys/segtool-test"],
        ["predict", "MODEL", "img.tif", "--out", "/proc/segtool-test.zarr"],
        ["predict", "MODEL", "img.tif", "results/img_labels.tif", "--out", "results", "--overwrite"],
        ["predict", "MODEL", "img.tif", "--out", "img.tif/sub"],
        ["predict", "MODEL", "img.tif", "sub/img.tif", "--out", "out.zarr", "--workers", "1"],
    ):
        add("predict-out", args)

    # ---- broken model folders
    for i in range(len(BAD_MODELS)):
        add("model", ["predict", f"bad-model-{i}", "img.tif", "--out", "results-new"])
        if i % 3 == 0:
            add("model", [*TRAIN, "--init", f"bad-model-{i}", "--out", "new-model"])
    for name in ["no-such-model", "", "mydata", "notes.txt", "fake.safetensors", "empty-dir", "../../etc"]:
        add("model", ["predict", name, "img.tif", "--out", "results-new"])

    # ---- unreadable images
    for image in ["missing.tif", "corrupt.tif", "zero.tif", "notes.txt", "empty-dir", "empty.npy", "complex.npy",
                  "object.npy", "text.npy", "nodata.fits", "nan.tif", "big.npy.gz", "mydata"]:
        add("image", ["predict", "MODEL", image, "--out", "results-new"])
    for axes in ["QQ", "ZYX", "YXC", "TZYX", "", "XX", "yx1"]:
        add("image", ["predict", "MODEL", "img.tif", "--axes", axes, "--out", "results-new"])

    # ---- unusable training pairs
    for pair in (["img.tif", "short.tif"], ["img.tif", "empty-labels.tif"], ["img.tif", "frac.tif"],
                 ["img.tif", "neg.tif"], ["img.tif", "big-ids.tif"], ["img.tif", "missing.tif"],
                 ["nan.tif", "lab.tif"], ["img.tif", "complex.npy"], ["corrupt.tif", "lab.tif"],
                 ["img.tif", "lab.tif", "img.tif"], ["img.tif"], ["img.tif", "nan-labels.tif"],
                 ["img.tif", "stack-labels.tif"], ["rgb.tif", "short.tif"]):
        add("train-data", ["train", *pair, "--out", "new-model"])
    for mask in (["short.tif"], ["empty-labels.tif"], ["lab.tif", "lab.tif"], ["missing.tif"]):
        add("train-data", [*TRAIN, "--mask", *mask, "--out", "new-model"])
    add("train-data", [*TRAIN, "--task", "semantic", "--init", "good-model", "--out", "new-model"])
    add("train-data", ["train", "rgb.tif", "lab.tif", "--init", "good-model", "--out", "new-model"])
    add("train-data", [*TRAIN, "--model", "resnet", "--out", "new-model"])
    add("train-data", [*TRAIN, "--task", "panoptic", "--out", "new-model"])
    add("train-data", ["train", "img.tif", "one-class.tif", "--task", "semantic", "--out", "new-model"])
    add("train-data", [*TRAIN, "--task", "semantic", "--model", "maskrcnn", "--out", "new-model"])
    add("train-data", [*TRAIN, "--patch-size", "17", "--out", "new-model"])
    add("train-data", [*TRAIN, "--time-budget", "1e-9", "--out", "new-model"])  # no step: nothing saved
    add("train-data", [*TRAIN, "--time-budget", "1e-9", "--out", "good-model"])  # ... and the model is kept
    add("train-data", [*TRAIN, "--model", "maskrcnn", "--patch-size", "32", "--batch-size", "1", "--out", "new-model"])

    # ---- evaluate
    for pred, gt in (("neg.tif", "lab.tif"), ("lab.tif", "neg.tif"), ("lab.tif", "short.tif"),
                     ("frac.tif", "lab.tif"), ("nan-labels.tif", "lab.tif"), ("huge-ids.npy", "lab.tif"),
                     ("missing.tif", "lab.tif"), ("lab.tif", "corrupt.tif"), ("lab.tif", "complex.npy"),
                     ("stack-labels.tif", "lab.tif")):
        add("evaluate", ["evaluate", pred, gt])
        add("evaluate", ["evaluate", pred, gt, "--semantic"])

    # ---- command lines
    for args in ([], ["bogus"], ["train"], ["predict"], ["predict", "MODEL"], ["evaluate", "lab.tif"],
                 [*TRAIN], [*TRAIN, "--out"], [*PREDICT], [*TRAIN, "--out", "m", "--bogus"],
                 ["models", "extra"], ["-q"], ["--quiet", "predict", "MODEL", "img.tif"],
                 [*TRAIN, "--out", "m", "--epochs"], [*PREDICT, "--out", "r", "--tile-size"]):
        add("command-line", args)
    return cases


def _good_meta() -> dict:
    return {"arch": "unet", "task": "instance", "in_channels": 1,
            "arch_kwargs": {"depth": 1, "width": 4, "out_channels": 4, "norm": "batch", "kernel_size": 3}}


#: Edits of a good model.json (None = drop the key); bytes replace the file; "weights:..." break the weights.
BAD_MODELS: list = [
    {"arch": "evil"}, {"arch": 3}, {"arch": None}, {"task": "evil"}, {"task": None}, {"task": 1},
    {"in_channels": "1"}, {"in_channels": True}, {"in_channels": 0}, {"in_channels": -1}, {"in_channels": 100000},
    {"in_channels": 3}, {"in_channels": None}, {"classes": "ab"}, {"classes": ["one"]}, {"classes": [1, 2]},
    {"tile_size": 0}, {"tile_size": "big"}, {"tile_size": 10**9}, {"receptive_field": -5},
    {"normalization": "percentile"}, {"postprocess": []}, {"history": {}}, {"arch_kwargs": []},
    {"arch_kwargs": {"depth": 1, "width": 100000, "out_channels": 4}},
    {"arch_kwargs": {"depth": 60, "width": 4, "out_channels": 4}},
    {"arch_kwargs": {"depth": 1, "width": 5000, "out_channels": 4}},
    {"arch_kwargs": {"depth": 2, "width": 4, "out_channels": 4}},
    {"arch_kwargs": {"depth": 1, "width": 4, "out_channels": 4, "evil": 1}},
    {"arch_kwargs": {"depth": 1, "width": 4, "out_channels": 4, "norm": "__import__('os')"}},
    {"arch_kwargs": {"depth": -1, "width": 4, "out_channels": 4}},
    {"arch_kwargs": {"depth": 1, "width": [4] * 100, "out_channels": 4}},
    b"\xff\xfe{not utf-8", b"{not json", b"[1, 2, 3]", b"", b"null", b'"a string"', b"1" * 10,
    {"scale": [1, 2]}, {"scale": {"diameter": -3}}, {"scale": {"diameter": "big"}}, {"scale": {"auto": "yes"}},
    {"scale": {"low": float("inf")}},
    "weights:truncated", "weights:missing", "weights:garbage", "weights:empty",
]

#: A saved model.json's fields and their JSON types (every field of ``ModelMeta``).
_FIELD_TYPES = {"arch": str, "task": str, "in_channels": int, "arch_kwargs": dict, "classes": list,
                "normalization": dict, "postprocess": dict, "receptive_field": float, "scale": dict, "tile_size": int,
                "name": str, "description": str, "card": str, "history": list, "training": dict, "version": str}
#: Values of another JSON type than the field's.
_WRONG_TYPE = {str: [3, ["x"], {"a": 1}], int: ["1", 2.5, True, [1]], float: ["1", True, [1]], dict: [[], "x", 3],
               list: [{}, "x", 3]}
#: Malformed contents of the nested objects (one key changed each).
_NESTED = {
    "normalization": [{"method": "evil"}, {"method": 3}, {"low": "x"}, {"high": float("nan")}, {"low": 99.0, "high": 1.0},
                      {"low": -5.0}, {"high": 101.0}, {"softening": -1.0}, {"softening": "x"}, {"evil": 1}],
    "postprocess": [{"fg_threshold": "x"}, {"fg_threshold": 5.0}, {"min_size": -3}, {"seed_mode": "evil"},
                    {"z_mode": "evil"}, {"z_scale": 0.0}, {"after_fine_tuning": "x"}, {"evil": 1},
                    {"min_size": 1.5}, {"fg_threshold": None}],
    "training": [{"object_size": "x"}, {"object_size": {"median_diameter": "big"}},
                 {"object_size": {"median_diameter": -4.0}}, {"object_size": {"median_diameter": float("inf")}}],
    "scale": [{"diameter": None}, {"high": [1]}, {"auto": 1}],
    "history": [[1, 2], ["x"], [None]],
    "arch_kwargs": [{"depth": "1", "width": 4, "out_channels": 4}, {"depth": 1, "width": 4, "out_channels": 0},
                    {"depth": 1, "width": 4, "out_channels": 4, "kernel_size": 4},
                    {"depth": 1, "width": 4, "out_channels": 4, "norm": 3}],
}


def _field_variants() -> list:
    """Generated model.json edits: every field dropped, given each wrong JSON type, nested contents broken."""
    out: list = [{key: None} for key in ("arch", "task", "in_channels")]  # the required ones
    for key, kind in _FIELD_TYPES.items():
        out += [{key: value} for value in _WRONG_TYPE[kind]]
    for key, values in _NESTED.items():
        if key in ("arch_kwargs", "history"):
            out += [{key: value} for value in values]
        else:
            out += [{key: {"__merge__": value}} for value in values]
    return out


BAD_MODELS += [v for v in _field_variants() if v not in BAD_MODELS]


def _write_model_variant(good: Path, folder: Path, variant) -> None:
    shutil.copytree(good, folder)
    if isinstance(variant, bytes):
        (folder / "model.json").write_bytes(variant)
    elif isinstance(variant, str):
        weights = folder / "model.safetensors"
        kind = variant.split(":")[1]
        if kind == "truncated":
            weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        elif kind == "missing":
            weights.unlink()
        elif kind == "garbage":
            weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{'__import__': 1}")
        else:
            weights.write_bytes(b"")
    else:
        meta = json.loads((folder / "model.json").read_text())
        for key, value in variant.items():
            if value is None:
                meta.pop(key, None)
            elif isinstance(value, dict) and "__merge__" in value:  # one key of a nested object changed
                meta[key] = {**meta.get(key, {}), **value["__merge__"]}
            else:
                meta[key] = value
        (folder / "model.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from napari_segtool.core.checkpoint import save_model
    from napari_segtool.core.train import new_model

    ws = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    img = (rng.random((32, 32)) * 100).astype(np.float32)
    lab = np.zeros((32, 32), np.uint16)
    lab[4:12, 4:12], lab[18:26, 16:28] = 1, 2
    tifffile.imwrite(ws / "img.tif", img)
    tifffile.imwrite(ws / "lab.tif", lab)
    tifffile.imwrite(ws / "rgb.tif", np.stack([img] * 3, -1).astype(np.uint8))
    tifffile.imwrite(ws / "short.tif", lab[:10, :10])
    tifffile.imwrite(ws / "one-class.tif", (lab > 0).astype(np.uint8))
    tifffile.imwrite(ws / "empty-labels.tif", np.zeros_like(lab))
    tifffile.imwrite(ws / "frac.tif", lab.astype(np.float32) + 0.5)
    tifffile.imwrite(ws / "neg.tif", lab.astype(np.int32) * -3)
    tifffile.imwrite(ws / "big-ids.tif", lab.astype(np.uint32) * (2**31 + 5))
    tifffile.imwrite(ws / "nan-labels.tif", np.where(lab > 0, np.nan, 0).astype(np.float32))
    tifffile.imwrite(ws / "nan.tif", np.full((32, 32), np.nan, np.float32))
    tifffile.imwrite(ws / "zero.tif", np.zeros((0, 5), np.uint8))
    tifffile.imwrite(ws / "stack-labels.tif", np.stack([lab] * 2), imagej=True, metadata={"axes": "ZYX"})
    np.save(ws / "huge-ids.npy", lab.astype(np.int64) * 2**40)
    np.save(ws / "empty.npy", np.zeros((0, 0), np.float32))
    np.save(ws / "complex.npy", np.ones((32, 32), np.complex64))
    np.save(ws / "object.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    np.save(ws / "text.npy", np.array(["a", "b"]))
    (ws / "big.npy.gz").write_bytes(b"\x1f\x8b garbage")
    (ws / "corrupt.tif").write_bytes(b"II*\x00garbage")
    (ws / "notes.txt").write_text("my notes\n")
    (ws / "fake.safetensors").write_bytes(b"not a model")
    from astropy.io import fits

    fits.PrimaryHDU().writeto(ws / "nodata.fits")
    (ws / "empty-dir").mkdir()
    (ws / "mydata").mkdir()
    (ws / "mydata" / "thesis.txt").write_text("years of work\n")
    (ws / "inputs-dir").mkdir()
    tifffile.imwrite(ws / "inputs-dir" / "a.tif", img)
    tifffile.imwrite(ws / "inputs-dir" / "b.tif", lab)
    (ws / "sub").mkdir()
    tifffile.imwrite(ws / "sub" / "img.tif", img)
    (ws / "results").mkdir()
    tifffile.imwrite(ws / "results" / "img_labels.tif", lab)
    (ws / "results2").mkdir()
    (ws / "results2" / "img_objects.csv").write_text("label\n1\n")
    tifffile.imwrite(ws / "img_labels.tif", lab)
    import zarr

    zarr.open_array(str(ws / "stack.zarr"), mode="w", shape=(32, 32), dtype="f4")[...] = img
    zarr.open_array(str(ws / "old_labels.zarr"), mode="w", shape=(32, 32), dtype="u4")[...] = lab

    model = new_model("unet", "instance", 1, depth=1, width=4)
    save_model(model, ws / "good-model")
    for i, variant in enumerate(BAD_MODELS):
        _write_model_variant(ws / "good-model", ws / f"bad-model-{i}", variant)
    (ws / "user-models").mkdir()
    return ws


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for folder, dirs, files in os.walk(root):
        rel = os.path.relpath(folder, root)
        out[rel + "/"] = "dir"
        for name in files:
            path = Path(folder) / name
            out[os.path.join(rel, name)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


CASES = _cases()
#: A bad input is refused before any work: a case still running after this long hangs (a generous bound
#: for a loaded 2-core machine; not a speed target).
HANG_SECONDS = 120


def _hung(signum, frame):
    raise TimeoutError(f"still running after {HANG_SECONDS} s: a bad input must be refused before any work")


def test_the_suite_is_big_enough():
    assert len(CASES) >= 150
    assert len({tuple(args) for _, args in CASES}) == len(CASES)  # no duplicates


@pytest.mark.parametrize("family,args", CASES, ids=[f"{i:03d}-{f}" for i, (f, _) in enumerate(CASES)])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(workspace, family, args, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("SEGTOOL_MODELS_DIR", str(workspace / "user-models"))
    monkeypatch.setenv("SEGTOOL_LOG_DIR", str(tmp_path / "logs"))
    args = [str(workspace / "good-model") if a == "MODEL" else a for a in args]
    before = _snapshot(workspace)
    capsys.readouterr()
    signal.signal(signal.SIGALRM, _hung)
    signal.alarm(HANG_SECONDS)
    try:
        code = main(["-q", *args] if args and args[0] != "-q" else args)
    except SystemExit as exc:  # only --help may exit; a bad input must return
        pytest.fail(f"SystemExit({exc.code}) instead of a returned exit code")
    finally:
        signal.alarm(0)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("segtool: error: "), captured.err
    assert not (tmp_path / "logs").exists()  # no internal error
    assert _snapshot(workspace) == before
