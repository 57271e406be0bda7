"""ONNX / TorchScript / bioimage.io export: exported networks reproduce torch's maps, packages load back."""
from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from napari_segtool.core.checkpoint import ModelLoadError, load_model, read_meta, save_model
from napari_segtool.core.export import (
    ExportError, export_bioimageio, export_network, export_onnx, export_torchscript, load_bioimageio, run_network,
)
from napari_segtool.core.train import new_model
from napari_segtool.ops.normalize import normalize
from tests.conftest import draw_objects


def _bioimageio_usable() -> str:
    """Why bioimage.io validation cannot run here ('' when it can)."""
    try:
        from bioimageio.spec.model.v0_5 import BatchAxis

        BatchAxis().model_dump(mode="json")
        from bioimageio.spec.model.v0_5 import FileDescr

        FileDescr.model_validate({"source": __file__}).model_dump(mode="json")
    except ImportError as exc:
        return f"bioimageio.spec / bioimageio.core not installed ({exc})"
    except Exception as exc:  # bioimageio.spec 0.5.12 (pinned by bioimageio.core 0.11) with pydantic >= 2.12
        return ("bioimageio.spec cannot serialise with this pydantic (install bioimageio.spec>=0.5.14.3 with "
                f"--no-deps after bioimageio.core; see docs/export.md): {' '.join(str(exc).split())[:120]}")
    return ""


needs_bioimageio = pytest.mark.skipif(bool(_bioimageio_usable()), reason=_bioimageio_usable() or "usable")


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    model = new_model("unet", "instance", 1, depth=2, width=4)
    model.net.eval()
    model.meta.name = "tiny-export"
    return model


@pytest.fixture(scope="module")
def sample_batch():
    """Two normalised 96 x 128 planes: another size and batch than the export was traced with."""
    planes = [normalize(draw_objects((96, 128), n=8, seed=s)[0][..., None]) for s in (3, 4)]
    return torch.from_numpy(np.stack(planes).transpose(0, 3, 1, 2).copy())


def _torch_maps(model, x):
    return run_network(export_network(model), model, x)[0]


def test_unet_maps_network_applies_the_activations_of_prediction(unet, sample_batch):
    maps = _torch_maps(unet, sample_batch)
    assert maps.shape == (2, 4, 96, 128)
    np.testing.assert_allclose(maps[:, :3].sum(axis=1), 1.0, atol=1e-5)  # softmax over bg/interior/boundary
    assert (maps[:, 3] >= 0).all() and (maps[:, 3] <= 1).all()  # sigmoid distance


def test_unet_torchscript_gives_the_same_maps(unet, sample_batch, tmp_path):
    path = export_torchscript(unet, tmp_path / "unet.pt")
    scripted = torch.jit.load(str(path))
    with torch.no_grad():
        got = scripted(sample_batch).numpy()
    np.testing.assert_allclose(got, _torch_maps(unet, sample_batch), atol=1e-5)


def test_unet_onnx_gives_the_same_maps_in_onnxruntime(unet, sample_batch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    path = export_onnx(unet, tmp_path / "unet.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    got = session.run(None, {"input": sample_batch.numpy()})[0]
    np.testing.assert_allclose(got, _torch_maps(unet, sample_batch), atol=1e-4)


def test_semantic_unet_exports_softmax_over_classes(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = new_model("unet", "semantic", 2, classes=["unlabelled", "cell", "border", "debris"], depth=2, width=4)
    x = torch.rand(1, 2, 64, 64, generator=torch.Generator().manual_seed(1))
    path = export_onnx(model, tmp_path / "sem.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert got.shape == (1, 3, 64, 64)
    np.testing.assert_allclose(got, _torch_maps(model, x), atol=1e-4)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


@pytest.fixture(scope="module")
def maskrcnn_and_image():
    from napari_segtool.sim.nuclei import simulate_nuclei

    model = load_model("nuclei-maskrcnn")
    image = normalize(simulate_nuclei((256, 256), seed=3, snr=20.0, density=0.15).image[..., None])
    return model, torch.from_numpy(image.transpose(2, 0, 1).copy())


@pytest.mark.filterwarnings("ignore:RCNN always returns")
def test_maskrcnn_torchscript_gives_the_same_detections(maskrcnn_and_image, tmp_path):
    model, x = maskrcnn_and_image
    ref = run_network(export_network(model), model, x)
    assert len(ref[0]) > 3  # the shipped model finds nuclei in the sample
    path = export_torchscript(model, tmp_path / "maskrcnn.pt")
    scripted = torch.jit.load(str(path))
    with torch.jit.optimized_execution(False):
        got = run_network(scripted, model, x)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.slow
def test_maskrcnn_onnx_gives_the_same_detections(maskrcnn_and_image, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from torchvision.ops import box_iou

    model, x = maskrcnn_and_image
    ref = run_network(export_network(model), model, x)
    path = export_onnx(model, tmp_path / "maskrcnn.onnx")
    boxes, labels, scores, masks = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"image": x.numpy()})
    assert len(boxes) == len(ref[0])
    iou = box_iou(torch.from_numpy(boxes), torch.from_numpy(ref[0])).numpy()
    match = iou.argmax(axis=1)  # nearly tied scores may come out in another order
    assert iou.max(axis=1).min() > 0.999
    np.testing.assert_allclose(scores, ref[2][match], atol=1e-4)
    np.testing.assert_array_equal(labels, ref[1][match])
    np.testing.assert_allclose(masks, ref[3][match], atol=1e-3)


def test_maskrcnn_has_no_bioimageio_export(maskrcnn_and_image, tmp_path):
    model, _ = maskrcnn_and_image
    with pytest.raises(ExportError, match="U-Net"):
        export_bioimageio(model, tmp_path / "m.zip")
    assert not (tmp_path / "m.zip").exists()


# ----------------------------------------------------------------------------- bioimage.io
@pytest.fixture(scope="module")
def trained_unet(tmp_path_factory):
    """A depth-2, width-4 U-Net trained for a few dozen steps on ellipses (finds objects), saved to disk."""
    from napari_segtool.core.data import make_example
    from napari_segtool.core.train import TrainConfig, train

    examples = [make_example(*draw_objects((96, 96), n=8, seed=s, touching=False)) for s in range(2)]
    config = TrainConfig(epochs=3, steps_per_epoch=8, batch_size=4, patch_size=48, lr=1e-2, seed=0,
                         val_fraction=0.0)
    result = train(examples, config=config, arch_kwargs={"depth": 2, "width": 4})
    return save_model(result.model, tmp_path_factory.mktemp("models") / "tiny-export")


@pytest.fixture(scope="module")
def package(trained_unet, tmp_path_factory):
    """The trained tiny U-Net exported as a bioimage.io package, with a sample of its data."""
    if _bioimageio_usable():
        pytest.skip(_bioimageio_usable())
    image, _ = draw_objects((120, 120), n=10, seed=7)
    path = tmp_path_factory.mktemp("bioimageio") / "tiny.zip"
    export_bioimageio(trained_unet, path, sample=image)
    return path


@needs_bioimageio
def test_bioimageio_package_passes_bioimageio_core_test_model(package):
    from bioimageio.core import test_model

    summary = test_model(str(package))
    failed = [f"{d.name}: {[e.msg for e in d.errors][:2]}" for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
    names = " ".join(d.name for d in summary.details)
    for fmt in ("pytorch_state_dict", "torchscript", "onnx"):  # every weight format reproduced the test output
        assert f"Reproduce test outputs from test inputs ({fmt})" in names


@needs_bioimageio
def test_bioimageio_package_contents(package, trained_unet):
    import yaml

    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        test_in = np.load(zf.open("test_input.npy"))
        test_out = np.load(zf.open("test_output.npy"))
        doc = zf.read("README.md").decode()
    assert {"weights.pt", "segtool_unet.py", "weights_torchscript.pt", "weights.onnx", "model.safetensors",
            "test_input.npy", "test_output.npy", "README.md", "cover.png"} <= names
    assert rdf["format_version"].startswith("0.5")
    assert rdf["license"] == "BSD-3-Clause" and any("U-Net" in c["text"] for c in rdf["cite"])
    axes = rdf["inputs"][0]["axes"]
    assert [a["type"] for a in axes] == ["batch", "channel", "space", "space"]
    assert rdf["inputs"][0]["preprocessing"][0]["id"] == "scale_range"
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["p_background", "p_interior", "p_boundary", "distance"]
    assert test_in.shape[:2] == (1, 1) and test_out.shape == (1, 4, *test_in.shape[2:])
    # the test output is the model's own output on the test input normalised as bioimage.io's scale_range does
    from napari_segtool.core.export import scale_range

    x = torch.from_numpy(scale_range(test_in[0].transpose(1, 2, 0), 1.0, 99.8)[None].transpose(0, 3, 1, 2).copy())
    np.testing.assert_allclose(test_out, _torch_maps(load_model(trained_unet), x), atol=1e-5)
    assert "# " in doc and "bioimage.io package" in doc


@needs_bioimageio
def test_bioimageio_package_loads_back_and_predicts_the_same_labels(package, trained_unet):
    from napari_segtool.core.predict import predict

    original = load_model(trained_unet)
    imported = load_model(package)  # through checkpoint.load_model's bioimage.io branch
    assert imported.meta.arch == "unet" and imported.meta.postprocess == original.meta.postprocess
    for key, value in original.net.state_dict().items():
        assert torch.equal(value, imported.net.state_dict()[key])
    image, _ = draw_objects((64, 80), n=5, seed=11)
    a = predict(original, image, axes="YX", diameter=original.meta.scale.diameter or None).labels
    b = predict(imported, image, axes="YX", diameter=original.meta.scale.diameter or None).labels
    assert a.max() > 0
    np.testing.assert_array_equal(a, b)


@needs_bioimageio
def test_imported_package_can_be_saved_as_a_segtool_model(package, tmp_path):
    assert read_meta(package).arch == "unet"  # what the Segment widget's model list reads
    model = load_bioimageio(package)
    path = save_model(model, tmp_path / "again")
    assert load_model(path).meta.arch == "unet"


def test_foreign_or_broken_packages_are_refused(tmp_path):
    foreign = tmp_path / "foreign.zip"
    with zipfile.ZipFile(foreign, "w") as zf:
        zf.writestr("rdf.yaml", "type: model\nformat_version: 0.5.4\n")
        zf.writestr("weights.pt", b"not read")
    with pytest.raises(ModelLoadError, match="did not export"):
        load_model(foreign)
    with pytest.raises(ModelLoadError, match="not a bioimage.io package exported"):
        read_meta(foreign)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelLoadError):
        load_model(broken)


# ----------------------------------------------------------------------------- command line
def test_cli_export_refuses_to_overwrite_without_overwrite(unet, tmp_path, capsys):
    from napari_segtool.cli import main

    model_dir = save_model(unet, tmp_path / "tiny")
    out = tmp_path / "out" / "tiny.onnx"
    assert main(["-q", "export", str(model_dir), "--format", "onnx", "--out", str(out)]) == 0
    first = out.read_bytes()
    out.write_bytes(b"mine")
    assert main(["-q", "export", str(model_dir), "--format", "onnx", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"mine"
    assert main(["-q", "export", str(model_dir), "--format", "torchscript", "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes() not in (b"mine", first)
    assert torch.jit.load(str(out)) is not None
    # a bioimage.io package is a .zip; Mask R-CNN has none; neither leaves anything behind
    assert main(["-q", "export", str(model_dir), "--format", "bioimageio", "--out", str(tmp_path / "p.yaml")]) == 2
    assert main(["-q", "export", "nuclei-maskrcnn", "--format", "bioimageio", "--out",
                 str(tmp_path / "new" / "m.zip")]) == 2
    assert not (tmp_path / "p.yaml").exists() and not (tmp_path / "new").exists()
    # never into the model itself
    assert main(["-q", "export", str(model_dir), "--format", "onnx", "--out", str(model_dir / "x.onnx"),
                 "--overwrite"]) == 2


@needs_bioimageio
def test_cli_predicts_with_an_exported_package(package, trained_unet, tmp_path):
    from napari_segtool.cli import main
    from napari_segtool.io.images import read_labels

    image, _ = draw_objects((96, 96), n=8, seed=12)
    src = tmp_path / "img.npy"
    np.save(src, image)
    assert main(["-q", "predict", str(package), str(src), "--out", str(tmp_path / "a")]) == 0
    assert main(["-q", "predict", str(trained_unet), str(src), "--out", str(tmp_path / "b")]) == 0
    np.testing.assert_array_equal(read_labels(tmp_path / "a" / "img_labels.tif"),
                                  read_labels(tmp_path / "b" / "img_labels.tif"))


@needs_bioimageio
def test_cli_export_bioimageio_with_a_sample_and_authors(unet, tmp_path):
    import yaml

    from napari_segtool.cli import main

    model_dir = save_model(unet, tmp_path / "tiny")
    image, _ = draw_objects((70, 90), n=5, seed=2)
    np.save(tmp_path / "sample.npy", image)
    out = tmp_path / "tiny.zip"
    assert main(["-q", "export", str(model_dir), "--format", "bioimageio", "--out", str(out),
                 "--sample", str(tmp_path / "sample.npy"), "--author", "A. Person", "--author", "B. Person"]) == 0
    with zipfile.ZipFile(out) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        test_in = np.load(zf.open("test_input.npy"))
    assert [a["name"] for a in rdf["authors"]] == ["A. Person", "B. Person"]
    np.testing.assert_array_equal(test_in[0, 0, :70, :90], image)  # the sample, padded to a valid size
    assert main(["-q", "export", str(model_dir), "--format", "onnx", "--out", str(tmp_path / "x.onnx"),
                 "--sample", str(tmp_path / "sample.npy")]) == 2  # --sample is for bioimage.io only
