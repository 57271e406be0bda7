"""Bulge/disk decomposition: the U-Net regression task trains, runs on any grid, round-trips through a
checkpoint, and ``core.decompose`` returns component fluxes that add up to the sky-subtracted image."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_segtool.core.checkpoint import load_model, save_model
from napari_segtool.core.decompose import (COMPONENTS, Decomposition, DecompositionInput, bulge_to_total, decompose,
                                           field_psf_size)
from napari_segtool.core.decompose_train import field_example, iter_train_regression, train_regression
from napari_segtool.core.train import TrainConfig
from napari_segtool.kernel.errors import InputError
from napari_segtool.kernel.events import CancelToken, TrainEpoch, TrainStep, run_job
from napari_segtool.sim.bulge_disk import bt_pairs, bulge_disk_fields, component_fractions, footprint_weights

NORM = {"method": "asinh", "softening": 3.0}


@pytest.fixture(scope="module")
def fields():
    return bulge_disk_fields(2, (96, 96), seed=3)


@pytest.fixture(scope="module")
def trained(fields):
    examples = [field_example(f, NORM) for f in fields]
    cfg = TrainConfig(epochs=2, steps_per_epoch=6, batch_size=4, patch_size=32, lr=3e-3, seed=0, num_threads=1)
    events = []
    result = train_regression(examples, config=cfg, arch_kwargs={"depth": 2, "width": 8}, normalization=NORM,
                              callback=events.append)
    return result, events


def test_truth_shares_sum_to_one_and_sources_weigh_one(fields):
    f = fields[0]
    shares = component_fractions(f)
    assert shares.shape == (len(COMPONENTS),) + f.image.shape
    np.testing.assert_allclose(shares[COMPONENTS.index("bulge")] * (f.noiseless > 0),
                               np.clip(f.bulge, 0, None) / np.where(f.noiseless > 0, f.noiseless, 1), atol=1e-4)
    np.testing.assert_allclose(shares.sum(0), 1.0, atol=1e-5)
    galaxy = next(e for e in f.catalog if e["class"] == "galaxy" and e["bulge_frac"] > 0)
    inside = f.labels == galaxy["id"]
    assert shares[0][inside].max() > 0  # its bulge is there
    weights = footprint_weights(f)
    assert np.all(weights[f.labels == 0] == 0)
    for i in np.unique(f.labels[f.labels > 0]):
        assert weights[f.labels == i].sum() == pytest.approx(1.0, rel=1e-4)


def test_regression_model_trains_and_yields_events(trained):
    result, events = trained
    steps = [e for e in events if isinstance(e, TrainStep)]
    assert result.steps == len(steps) == 12 and len([e for e in events if isinstance(e, TrainEpoch)]) == 2
    assert result.model.meta.task == "regression" and result.model.meta.classes == ["bulge", "disk", "other"]
    assert all(np.isfinite(e.loss) for e in steps)
    assert result.model.meta.history[-1]["steps"] == 12


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(fields):
    examples = [field_example(f, NORM) for f in fields]
    gen = iter_train_regression(examples, config=TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2,
                                                             patch_size=32, num_threads=1),
                                arch_kwargs={"depth": 2, "width": 8})
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        model = stop.value.model
    from napari_segtool.core.decompose_train import _crop

    batch = [_crop(examples[0], 32, np.random.default_rng(i)) for i in range(4)]
    arch = model.architecture
    model.net.train()
    optimizer = torch.optim.Adam(model.net.parameters(), lr=3e-3)
    first = float(arch.loss(model.net, batch, model.meta, torch.device("cpu")).detach())
    for _ in range(15):
        loss = arch.loss(model.net, batch, model.meta, torch.device("cpu"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(arch.loss(model.net, batch, model.meta, torch.device("cpu")).detach()) < 0.9 * first


def test_output_is_on_the_input_grid_and_conserves_flux(trained, fields):
    model = trained[0].model
    image = fields[1].image[:90, :77]  # off the pooling grid
    result = decompose(model, image)
    assert isinstance(result, Decomposition)
    for comp in (result.bulge, result.disk, result.other):
        assert comp.shape == image.shape and comp.dtype == np.float32
    np.testing.assert_allclose(result.bulge + result.disk + result.other, image - result.sky, rtol=1e-4, atol=1e-3)
    assert abs(result.sky - fields[1].sky_level) < fields[1].noise_sigma  # the sky was estimated and removed
    shares = model.architecture.predict_maps(model.net, image[..., None], model.meta, device=torch.device("cpu"))
    assert shares.shape == (3,) + image.shape
    np.testing.assert_allclose(shares.sum(0), 1.0, atol=1e-5)


def test_nan_pixels_stay_nan_and_a_segmentation_model_is_refused(trained, fields):
    image = fields[0].image.copy()
    image[10:14, 20:30] = np.nan
    result = decompose(trained[0].model, image)
    assert np.all(np.isnan(result.bulge[10:14, 20:30])) and np.isfinite(result.disk[20:, :]).all()
    from napari_segtool.core.train import new_model

    with pytest.raises(InputError, match="not a bulge/disk"):
        decompose(new_model("unet", "instance", 1), image)
    with pytest.raises(InputError, match="2D"):
        decompose(trained[0].model, np.zeros((2, 32, 32), np.float32))


def test_checkpoint_round_trip_gives_the_same_components(trained, fields, tmp_path):
    model = trained[0].model
    save_model(model, tmp_path / "bd")
    loaded = load_model(tmp_path / "bd")
    assert loaded.meta.task == "regression"
    a, b = decompose(model, fields[0].image), decompose(loaded, fields[0].image)
    np.testing.assert_array_equal(a.bulge, b.bulge)
    np.testing.assert_array_equal(a.disk, b.disk)


def test_bulge_to_total_sums_over_each_source():
    bulge = np.zeros((4, 4), np.float32)
    disk = np.zeros((4, 4), np.float32)
    bulge[0, 0], disk[0, 1] = 3.0, 1.0  # source 1: B/T 0.75
    disk[3, 3] = 2.0                    # source 2: B/T 0
    labels = np.zeros((4, 4), np.int32)
    labels[0, :2], labels[3, 3], labels[2, 0] = 1, 2, 3  # source 3: no flux
    bt = bulge_to_total(Decomposition(bulge, disk, np.zeros_like(bulge), 0.0), labels)
    assert bt[1] == pytest.approx(0.75) and bt[2] == 0.0 and np.isnan(bt[3])


def test_bt_pairs_judge_the_catalogued_galaxies(trained, fields):
    f = fields[0]
    pairs = bt_pairs(f, bulge_to_total(decompose(trained[0].model, f.image), f.labels), min_pixels=10)
    assert pairs and all(0 <= truth.bt_footprint <= 1 and 0 <= bt <= 1 for truth, bt in pairs)
    ids = {truth.id for truth, _ in pairs}
    assert all(fields[0].classes[i] == "galaxy" for i in ids)


def test_regression_training_stops_at_its_time_budget_and_on_cancel(fields):
    """The decomposition runs core.train's loop: a time budget and a cancel end it early, epochs kept."""
    examples = [field_example(f, NORM) for f in fields]
    cfg = TrainConfig(epochs=50, steps_per_epoch=2, batch_size=2, patch_size=32, num_threads=1, time_budget=1e-3)
    result = train_regression(examples, config=cfg, arch_kwargs={"depth": 2, "width": 8})
    assert result.stop_reason == "time budget" and result.steps < 100
    token = CancelToken()

    def cancel_after_three(event):
        if isinstance(event, TrainStep) and event.step == 3:
            token.cancel()

    cfg = TrainConfig(epochs=50, steps_per_epoch=2, batch_size=2, patch_size=32, num_threads=1)
    result = run_job(iter_train_regression(examples, config=cfg, arch_kwargs={"depth": 2, "width": 8},
                                           cancel=token), cancel_after_three)
    assert result.stop_reason == "cancelled" and result.steps == 3 and len(result.epochs) == 2
    assert result.model.meta.history[-1]["stop_reason"] == "cancelled"


def test_psf_size_follows_the_seeing():
    """The same galaxies and stars under a sharp and a broad PSF: the measured size follows the PSF."""
    from napari_segtool.sim.astro import simulate_astro_field

    sizes = [field_psf_size(simulate_astro_field((128, 128), psf_fwhm=fwhm, n_stars=8, sky_sigma=5.0, seed=4).image)
             for fwhm in (0.5, 0.8, 1.2)]
    sigmas = [fwhm / 0.2 / 2.355 for fwhm in (0.5, 0.8, 1.2)]  # pixel scale 0.2"
    assert sizes[0] < sizes[1] < sizes[2]
    np.testing.assert_allclose(sizes, sigmas, rtol=0.35)
    assert field_psf_size(np.full((64, 64), 100.0)) is None  # nothing to measure it on


def test_a_psf_model_takes_the_psf_size_as_its_second_channel(fields):
    f = fields[0]
    one = DecompositionInput.of(f.image, NORM, 1)
    two = DecompositionInput.of(f.image, NORM, 2, psf_size=3.0)
    assert one.shape == f.image.shape + (1,) and two.shape == f.image.shape + (2,)
    np.testing.assert_array_equal(two[10:20, 5:9][..., :1], one[10:20, 5:9])
    assert np.all(two[10:20, 5:9][..., 1] == two[:, :][0, 0, 1]) and two[:, :][0, 0, 1] > 0
    example = field_example(f, NORM, with_psf=True)
    assert example.image.shape[-1] == 2
    assert example.image[0, 0, 1] == pytest.approx(DecompositionInput.of(f.image, NORM, 2)[0:1, 0:1][0, 0, 1])
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32, num_threads=1)
    model = train_regression([field_example(g, NORM, with_psf=True) for g in fields], config=cfg,
                             arch_kwargs={"depth": 2, "width": 8}, normalization=NORM).model
    assert model.meta.in_channels == 2
    measured, sharp, broad = (decompose(model, f.image, psf_size=s) for s in (None, 0.5, 5.0))
    np.testing.assert_allclose(measured.bulge + measured.disk + measured.other, f.image - measured.sky,
                               rtol=1e-4, atol=1e-3)
    assert not np.array_equal(sharp.bulge, broad.bulge)  # the network reads the PSF channel
    with pytest.raises(InputError, match="PSF size"):
        decompose(model, f.image, psf_size=-1.0)
