"""A third architecture is one class and one registry line: trainable, predictable, saved and loaded,
offered by the CLI and the Train widget, and selectable in the Segment widget with its own controls.

The toy is a "threshold net": one convolution, a sigmoid, a threshold and connected components.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from torch import nn

from napari_segtool.kernel.meta import ModelMeta
from napari_segtool.kernel.params import Param, ProbabilityLayout
from napari_segtool.models.base import Architecture, Patch, PlaneResult
from napari_segtool.models.registry import register_architecture


# ----------------------------------------------------------------------------- the one file
class ThresholdNet(nn.Module):
    def __init__(self, in_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, kernel_size, padding=kernel_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ToyArchitecture(Architecture):
    """Objects are the connected components of ``sigmoid(conv(image)) > threshold``."""

    name = "toy"
    tasks = ("instance",)
    postprocess_params = (
        Param("threshold", float, 0.5, 0.0, 1.0, applies_to=("instance",), label="Cut-off",
              help="Object probability cut-off of the toy"),
        Param("min_area", int, 5, 0, 10000, applies_to=("instance",), label="Min area",
              help="Components smaller than this (pixels) are dropped"),
        Param("connectivity", int, 1, choices=(1, 2), applies_to=("instance",), label="Connectivity",
              help="1: edge neighbours, 2: corner neighbours too"),
        Param("fill", bool, False, applies_to=("instance",), advanced=True, help="Fill holes"),
    )
    arch_params = (Param("kernel_size", int, 3, choices=(1, 3, 5), label="Kernel", help="Convolution size"),)

    def default_meta(self, task: str, in_channels: int, classes: Sequence[str], **arch_kwargs: Any) -> ModelMeta:
        if task != "instance":
            raise ValueError("the toy only segments instances")
        kwargs = {"kernel_size": 3, **arch_kwargs}
        meta = ModelMeta(arch=self.name, task=task, in_channels=in_channels, arch_kwargs=kwargs,
                         classes=list(classes), tile_size=256)
        meta.postprocess = {"threshold": 0.5, "min_area": 5}
        meta.receptive_field = kwargs["kernel_size"]
        return meta

    def build(self, meta: ModelMeta) -> nn.Module:
        return ThresholdNet(meta.in_channels, int(meta.arch_kwargs["kernel_size"]))

    def probability_layout(self, meta: ModelMeta) -> ProbabilityLayout:
        return ProbabilityLayout(channels=("object",), foreground_channels=(0,))

    def loss(self, net: nn.Module, patches: Sequence[Patch], meta: ModelMeta, device: torch.device) -> torch.Tensor:
        x = torch.from_numpy(np.stack([p.image for p in patches])).permute(0, 3, 1, 2).to(device)
        target = torch.from_numpy(np.stack([(p.labels > 0) for p in patches]).astype(np.float32)).to(device)
        weight = torch.from_numpy(np.stack([p.annotated for p in patches]).astype(np.float32)).to(device)
        bce = F.binary_cross_entropy_with_logits(net(x)[:, 0], target, reduction="none")
        return (bce * weight).sum() / weight.sum().clamp_min(1.0)

    @torch.inference_mode()
    def predict_plane(self, net: nn.Module, image: Any, meta: ModelMeta, *, device: torch.device,
                      tile_size: int | None = None, batch_size: int = 2, return_probabilities: bool = False,
                      progress: Any = None, cancel: Any = None, **postprocess: Any) -> PlaneResult:
        settings = self.split_postprocess(meta, postprocess).plane
        plane = np.asarray(image[:, :, :], dtype=np.float32)
        x = torch.from_numpy(plane).permute(2, 0, 1)[None].to(device)
        prob = torch.sigmoid(net.eval()(x))[0, 0].cpu().numpy()
        mask = prob > float(settings.get("threshold", 0.5))
        if settings.get("fill"):
            mask = ndi.binary_fill_holes(mask)
        structure = ndi.generate_binary_structure(2, int(settings.get("connectivity", 1)))
        labels, n = ndi.label(mask, structure)
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        small = areas < int(settings.get("min_area", 0))
        small[0] = True
        new_ids = np.cumsum(~small) * ~small  # kept components numbered 1..N, the rest 0
        labels = new_ids[labels].astype(np.int32)
        if progress is not None:
            progress(1, 1)
        return PlaneResult(labels, prob[None] if return_probabilities else None)


# ----------------------------------------------------------------------------- tests
@pytest.fixture
def toy(monkeypatch):
    """The toy registered for one test (the registry is restored afterwards)."""
    from napari_segtool.models import registry

    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))
    monkeypatch.setattr(registry, "_CACHE", dict(registry._CACHE))
    register_architecture("toy", ToyArchitecture)  # the one registry line
    return registry.get_architecture("toy")


@pytest.fixture(scope="module")
def cells():
    from napari_segtool.sim import simulate_nuclei

    return simulate_nuclei((96, 96), seed=4, snr=20.0)


def _train_toy(cells):
    from napari_segtool.core.data import make_example
    from napari_segtool.core.train import TrainConfig, train

    return train([make_example(cells.image, cells.labels)], arch="toy", task="instance",
                 config=TrainConfig(epochs=3, steps_per_epoch=15, batch_size=4, patch_size=64, num_threads=1,
                                    seed=0, lr=0.1))  # ten weights: a large step


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def test_toy_trains_predicts_saves_and_loads(toy, cells, tmp_path):
    from napari_segtool.core.checkpoint import ModelLoadError, load_model, save_model
    from napari_segtool.core.predict import predict

    result = _train_toy(cells)
    model = result.model
    assert model.meta.arch == "toy" and isinstance(model.net, ThresholdNet) and result.steps > 0
    pred = predict(model, cells.image)
    assert pred.labels.shape == cells.image.shape and pred.labels.max() > 0
    assert _dice(pred.labels, cells.labels) > 0.5
    # its own settings act per plane; unknown to the core, known to the schema
    assert predict(model, cells.image, min_area=10**4).labels.max() == 0
    both = predict(model, cells.image, connectivity=2, threshold=0.5).labels
    assert both.max() <= pred.labels.max()  # corner neighbours join components, never split them
    probs = predict(model, cells.image, return_probabilities=True).probabilities
    assert probs.shape == (1, *cells.image.shape)
    assert toy.stack_maps(probs, model.meta) is None  # no distance map: stacks are linked by overlap

    save_model(model, tmp_path / "toy-model")
    again = load_model(tmp_path / "toy-model")
    assert again.meta.arch == "toy"
    np.testing.assert_array_equal(predict(again, cells.image).labels, pred.labels)
    # model.json values are checked against the toy's schema
    import json

    meta_file = tmp_path / "toy-model" / "model.json"
    good = meta_file.read_text()
    for bad, why in (({"threshold": 2.0}, "0..1"), ({"connectivity": 3}, "one of 1, 2"),
                     ({"bogus": 1}, "unknown setting 'postprocess.bogus'")):
        data = json.loads(good)
        data["postprocess"] = {**data["postprocess"], **bad}
        meta_file.write_text(json.dumps(data))
        with pytest.raises(ModelLoadError, match=why.replace(".", r"\.")):
            load_model(tmp_path / "toy-model")


def test_cli_offers_the_toy(toy):
    from napari_segtool.cli import build_parser

    args = build_parser().parse_args(["train", "a.tif", "b.tif", "--model", "toy", "--out", "m"])
    assert args.model == "toy"


def test_registry_refuses_a_second_toy_or_a_misnamed_one(toy):
    from napari_segtool.models import registry

    with pytest.raises(ValueError, match="already registered"):
        register_architecture("toy", ToyArchitecture)
    register_architecture("toy2", ToyArchitecture)
    with pytest.raises(ValueError, match="calls itself 'toy'"):
        registry.get_architecture("toy2")


# ----------------------------------------------------------------------------- in napari
@pytest.fixture
def toy_user_model(toy, cells, tmp_path, monkeypatch):
    """The trained toy as the only user model; no project, shipped models or caches of the user's."""
    from napari_segtool.core.checkpoint import save_model

    monkeypatch.setenv("SEGTOOL_PROJECT_DIR", str(tmp_path / "project"))
    monkeypatch.setenv("SEGTOOL_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setattr("napari_segtool.core.checkpoint.ZOO_DIR", tmp_path / "no-zoo")
    monkeypatch.setenv("SEGTOOL_NUM_THREADS", "1")
    monkeypatch.setenv("SEGTOOL_CACHE_DIR", str(tmp_path / "cache"))
    save_model(_train_toy(cells).model, tmp_path / "models" / "toy-cells")
    return tmp_path / "models" / "toy-cells"


@pytest.mark.gui
def test_toy_is_selectable_in_segment_with_its_own_controls(make_napari_viewer, qtbot, toy_user_model, cells):
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    from napari_segtool.plugin.segment_widget import SegmentWidget
    from napari_segtool.plugin.train_widget import TrainWidget

    viewer = make_napari_viewer(show=True)
    segment, train = SegmentWidget(viewer), TrainWidget(viewer)
    viewer.window.add_dock_widget(segment, name="Segment")
    viewer.window.add_dock_widget(train, name="Train")
    viewer.add_image(cells.image, name="cells")

    combo = segment.model_combo  # choose the toy with the keyboard, as a user does
    combo.setFocus()
    QTest.keyClick(combo, Qt.Key_Home)
    for _ in range(combo.count()):
        if str(combo.currentData() or "").endswith("toy-cells"):
            break
        QTest.keyClick(combo, Qt.Key_Down)
    assert str(combo.currentData()).endswith("toy-cells")

    shown = {k for k, (label, control) in segment.pp_controls.items() if control.isVisibleTo(segment)}
    assert shown == {"threshold", "min_area", "connectivity"}  # its own, without the advanced one
    assert segment.pp_box.isVisibleTo(segment) and segment.pp_box.title() == "Post-processing (toy)"
    cut, _ = segment.pp_controls["threshold"][1], segment.pp_controls["threshold"][0]
    assert cut.toolTip() == "Object probability cut-off of the toy"
    assert segment.pp_controls["threshold"][0].text() == "Cut-off"
    assert (cut.minimum(), cut.maximum()) == (pytest.approx(-0.05), 1.0)
    assert cut.text() == "model default (0.5)" and segment.postprocess_overrides() == {}

    cut.setFocus()
    cut.selectAll()
    QTest.keyClicks(cut, "0.4")
    QTest.keyClick(cut, Qt.Key_Enter)
    conn = segment.pp_controls["connectivity"][1]
    conn.setFocus()
    assert conn.currentText() == "model default (1)"
    QTest.keyClick(conn, Qt.Key_Down)  # -> 1
    QTest.keyClick(conn, Qt.Key_Down)  # -> 2
    assert segment.postprocess_overrides() == {"threshold": 0.4, "connectivity": 2}
    segment.prob_check.setChecked(True)
    QTest.mouseClick(segment.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: not segment.running, timeout=120000)
    outcome = segment.last_outcome
    assert outcome.ok, outcome.message
    assert segment.last_run.postprocess == {"threshold": 0.4, "connectivity": 2}
    labels = viewer.layers["cells labels"].data
    assert labels.shape == cells.image.shape and labels.max() > 0
    assert viewer.layers["cells object probability"].data.shape == cells.image.shape  # from its layout

    # the Train widget offers it for a new model, with its network settings
    assert train.arch_combo.findText("toy") >= 0
    train.arch_combo.setCurrentText("toy")
    assert [train.task_combo.itemText(i) for i in range(train.task_combo.count())] == ["instance"]
    assert {n for n, c in train.arch_form.controls.items() if c.widget.isVisibleTo(train)} == {"kernel_size"}
