"""The fast prediction paths (models.runtime, the measured halo) give the reference path's outputs and labels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_segtool.models import runtime
from napari_segtool.models.base import measured_halo
from napari_segtool.models.unet import UNet
from napari_segtool.ops.tiling import halo_for


def trained_like_unet(seed: int = 0) -> UNet:
    """A small U-Net with non-trivial BatchNorm statistics (as after training), in eval mode."""
    torch.manual_seed(seed)
    net = UNet(2, 4, depth=2, width=8)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return net.eval()


BACKENDS = ["fused"] + (["onnxruntime"] if runtime.onnxruntime_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_backends_give_the_reference_outputs(backend):
    net = trained_like_unet()
    x = torch.rand(2, 2, 96, 64)
    with torch.inference_mode():
        ref = net(x)
        out = runtime.inference_forward(net, 2, "cpu", backend, work=10**9)(x)
    assert out is not ref and out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_backend_follows_changed_weights(backend):
    net = trained_like_unet()
    x = torch.rand(1, 2, 64, 64)
    first = runtime.inference_forward(net, 2, "cpu", backend, work=10**9)
    assert runtime.inference_forward(net, 2, "cpu", backend, work=1) is first  # prepared once
    with torch.no_grad():
        net.head.bias.add_(1.0)  # as an optimiser step does: in place
    again = runtime.inference_forward(net, 2, "cpu", backend, work=10**9)
    assert again is not first
    with torch.inference_mode():
        torch.testing.assert_close(again(x), net(x), atol=1e-4, rtol=1e-4)


def test_small_work_runs_the_reference_until_it_pays():
    net = trained_like_unet(1)
    assert runtime.inference_forward(net, 2, "cpu", "fused", work=1000) is net
    assert runtime.inference_forward(net, 2, "cpu", "fused", work=runtime.PREPARE_AFTER_PIXELS) is not net
    assert runtime.inference_forward(net, 2, "cpu", "torch", work=10**9) is net


def test_unknown_backend_is_refused(monkeypatch):
    monkeypatch.setenv("SEGTOOL_BACKEND", "tpu")
    with pytest.raises(ValueError, match="unknown inference backend"):
        runtime.resolve_backend("cpu")
    assert runtime.resolve_backend("cpu", "fused") == "fused"


def test_measured_halo_is_aligned_bounded_and_grows_with_the_mass():
    net = trained_like_unet()
    bound = halo_for(net.receptive_field(), net.align)
    halos = [measured_halo(net, 2, 4, net.align, bound, mass=m) for m in (0.5, 0.99, 1.0)]
    assert all(h % net.align == 0 and 0 < h <= bound for h in halos)
    assert halos[0] <= halos[1] <= halos[2]
    assert halos[0] < bound  # half of an output's dependence lies well inside the theoretical field
    assert halos[2] >= bound - net.align  # all of it reaches (almost) the theoretical edge
    assert net.head.weight.grad is None  # measured on a copy


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels labelled alike: both background, or in objects that are each other's best match."""
    pairs, counts = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1, return_counts=True)
    best_b: dict[int, tuple[int, int]] = {}
    best_a: dict[int, tuple[int, int]] = {}
    for (i, j), n in zip(pairs.T, counts):
        if n > best_b.get(i, (0, 0))[1]:
            best_b[i] = (j, n)
        if n > best_a.get(j, (0, 0))[1]:
            best_a[j] = (i, n)
    same = sum(n for (i, j), n in zip(pairs.T, counts)
               if best_b[i][0] == j and best_a[j][0] == i and (i > 0) == (j > 0))
    return same / a.size


def nuclei_image() -> np.ndarray:
    """The real 512² nuclei image of the benchmarks when its download is cached, else a simulated one."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if list((root / "benchmarks" / ".cache").glob("stardist-*.whl")):
        import sys

        sys.path.insert(0, str(root / "benchmarks"))
        from real_data import nuclei_2d

        return nuclei_2d()[0]
    from napari_segtool.sim import simulate_nuclei

    return simulate_nuclei((512, 512), seed=3).image


def test_fast_path_labels_equal_the_reference_labels(monkeypatch):
    """The shipped nuclei model, tiled into many tiles: measured halo + fast backend vs the reference
    (eager torch, half the theoretical receptive field)."""
    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.models import unet

    model = load_model("nuclei")
    image = nuclei_image().astype(np.float32)
    low, high = np.percentile(image, [1, 99.8])
    plane = ((image - low) / (high - low))[:, :, None]
    arch = model.architecture
    bound = halo_for(arch.receptive_field(model.meta), arch.align(model.meta))
    monkeypatch.setattr(unet, "MEASURED_HALO_PIXELS", 0)
    fast = arch.predict_plane(model.net, plane, model.meta, device="cpu", tile_size=384, return_probabilities=True)
    assert arch.halo(model.net, model.meta) < bound  # the fast path did use a smaller halo
    monkeypatch.setenv("SEGTOOL_BACKEND", "torch")
    ref = arch.predict_plane(model.net, plane, model.meta, device="cpu", tile_size=384, return_probabilities=True)
    assert np.abs(fast.probabilities - ref.probabilities).mean() < 1e-3
    assert agreement(fast.labels, ref.labels) >= 0.999
    assert abs(int(fast.labels.max()) - int(ref.labels.max())) <= 1


@pytest.mark.parametrize("diameter", [None, 11.0])
@pytest.mark.parametrize("model_name", ["nuclei", "astro-sources"])
def test_labels_only_maps_give_the_labels_of_the_full_maps(model_name, diameter):
    """predict_plane without probabilities keeps only foreground / interior / distance per tile (less memory),
    and no interior when the split is given the objects' size (as the core always gives it: 8 bytes a plane
    pixel instead of 12; a flux split, which cuts at the image's saddles, the foreground alone: 4 bytes): the
    same labels as from the four blended maps, across tile seams, for the shape and the flux splits."""
    from napari_segtool.models import unet
    from napari_segtool.core.checkpoint import load_model

    model = load_model(model_name)
    if model_name == "nuclei":
        image = nuclei_image().astype(np.float32)
        low, high = np.percentile(image, [1, 99.8])
        plane = ((image - low) / (high - low))[:, :, None]
    else:
        from napari_segtool.ops.normalize import normalize
        from napari_segtool.sim import simulate_astro_dataset

        field = simulate_astro_dataset(1, (384, 384), seed=3)[0].image.astype(np.float32)
        plane = normalize(field[:, :, None], **model.meta.normalization)
    arch = model.architecture
    full = arch.predict_plane(model.net, plane, model.meta, device="cpu", tile_size=256, return_probabilities=True,
                              diameter=diameter)
    channels = []
    real = unet.tiled_apply
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(unet, "tiled_apply", lambda fn, p, k, **kw: channels.append(k) or real(fn, p, k, **kw))
        lean = arch.predict_plane(model.net, plane, model.meta, device="cpu", tile_size=256, diameter=diameter)
    assert lean.probabilities is None and full.probabilities.shape[0] == 4
    assert channels == [3 if diameter is None else 1 if model.meta.postprocess.get("seed_mode") == "flux" else 2]
    assert full.labels.max() > 10
    np.testing.assert_array_equal(lean.labels, full.labels)


def test_the_measured_halo_is_stored_with_the_weights_and_used_for_every_plane(tmp_path, monkeypatch):
    """A saved U-Net carries its measured halo, so a 512² field tiles like a 4096² plane (the same file
    always tiles alike) without measuring it again; weights being fine-tuned forget it until saved."""
    from napari_segtool.core.checkpoint import load_model, save_model
    from napari_segtool.core.data import make_example
    from napari_segtool.core.train import TrainConfig, train
    from napari_segtool.models import unet

    shipped = load_model("astro-sources")
    arch = shipped.architecture
    bound = halo_for(arch.receptive_field(shipped.meta), arch.align(shipped.meta))
    assert 0 < shipped.meta.halo == arch.measure_halo(shipped.net, shipped.meta) < bound
    used = []
    real = unet.tiled_apply
    monkeypatch.setattr(unet, "tiled_apply", lambda *a, **k: used.append(k["halo"]) or real(*a, **k))
    field = np.random.default_rng(0).normal(0, 1, (128, 128, 1)).astype(np.float32)
    arch.predict_plane(shipped.net, field, shipped.meta, device="cpu")  # far below MEASURED_HALO_PIXELS
    assert used == [shipped.meta.halo]

    tuned = train([make_example(*_tiny_scene())], init=shipped,
                  config=TrainConfig(epochs=1, steps_per_epoch=1, batch_size=1, patch_size=64, val_fraction=0.0))
    assert tuned.model.meta.halo == 0  # new weights: not measured yet
    save_model(tuned.model, tmp_path / "tuned")
    again = load_model(tmp_path / "tuned")
    assert again.meta.halo == arch.measure_halo(again.net, again.meta) > 0


def _tiny_scene() -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((96, 96), np.float32)
    labels = np.zeros((96, 96), np.int32)
    yy, xx = np.mgrid[:96, :96]
    for i, (y, x) in enumerate(((30, 30), (60, 65)), start=1):
        disc = (yy - y) ** 2 + (xx - x) ** 2 < 64
        image[disc], labels[disc] = 10.0, i
    return image + np.random.default_rng(1).normal(0, 0.5, image.shape).astype(np.float32), labels


@pytest.mark.skipif(not runtime.onnxruntime_available(), reason="ONNX Runtime is not installed")
def test_released_buffers_go_back_to_the_os_and_runs_go_on():
    """ONNX Runtime keeps a run's buffers for the next (its arena: faster); releasing them after a plane
    returns that memory to the OS, and later runs still give the reference outputs."""
    import psutil

    net = trained_like_unet(2)
    forward = runtime.inference_forward(net, 2, "cpu", "onnxruntime", work=10**9)
    x = torch.rand(1, 2, 1024, 1024)  # activations of ~100 MB in all
    process = psutil.Process()
    with torch.inference_mode():
        forward(x)
        held = process.memory_info().rss
        runtime.release_buffers(net)
        released = process.memory_info().rss
        assert held - released > 32 * 2**20
        torch.testing.assert_close(forward(x[..., :64, :64]), net(x[..., :64, :64]), atol=1e-4, rtol=1e-4)
