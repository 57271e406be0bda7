"""Training, prediction and checkpoints on small synthetic data (real behaviour, seconds each)."""
import time

import numpy as np
import pytest
from scipy import ndimage as ndi
import torch

from napari_segtool.core.checkpoint import ModelLoadError, list_models, load_model, save_model
from napari_segtool.core.data import DataError, make_example, split_validation
from napari_segtool.kernel.events import CancelToken, TrainEpoch, TrainStep, run_job
from napari_segtool.ops.metrics import instance_scores, semantic_scores
from napari_segtool.core.predict import InputError, iter_predict, predict
from napari_segtool.core.train import TrainConfig, iter_train, train
from tests.conftest import draw_objects


def test_tiny_model_segments_unseen_image(tiny_model):
    model = load_model(tiny_model)
    image, labels = draw_objects((160, 160), n=16, seed=42, touching=False)
    pred = predict(model, image)
    assert pred.labels.shape == image.shape
    assert instance_scores(pred.labels, labels)["ap50"] > 0.6


def test_checkpoint_round_trip_is_exact_and_pickle_free(tiny_model, tmp_path):
    model = load_model(tiny_model)
    assert sorted(p.name for p in tiny_model.iterdir()) == ["model.json", "model.safetensors"]
    single = save_model(model, tmp_path / "one.safetensors")
    again = load_model(single)
    x = torch.rand(1, 1, 64, 64)
    with torch.inference_mode():
        np.testing.assert_array_equal(model.net(x).numpy(), again.net(x).numpy())
    assert again.meta.receptive_field == model.meta.receptive_field > 0
    assert again.meta.history and again.meta.history[0]["steps"] > 0


def test_saved_models_get_ordinary_permissions(tiny_model, tmp_path):
    """Shipped/user models must be readable by others (temp files and folders start private)."""
    import os

    old = os.umask(0o022)
    try:
        model = load_model(tiny_model)
        folder = save_model(model, tmp_path / "shared")
        single = save_model(model, tmp_path / "shared.safetensors")
    finally:
        os.umask(old)
    for path, mode in [(folder, 0o755), (folder / "model.safetensors", 0o644), (folder / "model.json", 0o644),
                       (single, 0o644)]:
        assert path.stat().st_mode & 0o777 == mode, path


def test_corrupt_and_unknown_models_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load_model(bad)
    with pytest.raises(ModelLoadError, match="unknown model 'nope'"):
        load_model("nope")


def test_user_models_are_listed(tiny_model, monkeypatch):
    monkeypatch.setenv("SEGTOOL_MODELS_DIR", str(tiny_model.parent))
    names = {(m.name, m.source) for m in list_models()}
    assert ("tiny", "user") in names
    assert load_model("tiny").meta.task == "instance"


def test_stack_prediction_links_objects_across_z(tiny_model):
    model = load_model(tiny_model)
    image, labels = draw_objects((96, 96), n=8, seed=3)
    stack = np.stack([image, image + np.random.default_rng(0).normal(0, 3, image.shape), image])
    pred = predict(model, stack.astype(np.float32), axes="ZYX")
    assert pred.labels.shape == stack.shape
    ids = [set(np.unique(p)) - {0} for p in pred.labels]
    assert ids[0] and len(ids[0] & ids[2]) >= 0.8 * len(ids[0])  # same ids through Z: 3D objects


def test_shipped_nuclei_model_splits_stacked_nuclei_by_3d_watershed():
    """On a simulated stack, the 3D watershed of the stacked maps beats linking planes by overlap."""
    from napari_segtool.sim import simulate_nuclei

    model = load_model("nuclei")
    assert model.meta.postprocess["z_mode"] == "watershed"
    sim = simulate_nuclei((20, 96, 96), anisotropy=2.0, seed=7)
    watershed = predict(model, sim.image, axes="ZYX").labels
    linked = predict(model, sim.image, axes="ZYX", z_mode="link").labels
    extent = [s[0].stop - s[0].start for s in ndi.find_objects(watershed) if s is not None]
    assert np.median(extent) >= 3                                          # 3D objects, not planes
    assert instance_scores(watershed, sim.labels)["ap50"] > instance_scores(linked, sim.labels)["ap50"] + 0.1
    # fewer voxels per Z plane -> Z distances count more: z_scale reaches the watershed
    flat = predict(model, sim.image, axes="ZYX", z_scale=0.5).labels
    assert not np.array_equal(flat, watershed)


def test_rgb_and_channel_axes(tiny_model):
    model = load_model(tiny_model)
    image, _ = draw_objects((64, 80), n=5, seed=4)
    rgb = np.stack([image] * 3, axis=-1)
    pred = predict(model, rgb)  # YXC guessed; averaged for a 1-channel model
    assert pred.labels.shape == (64, 80) and pred.notes
    tzcyx = np.broadcast_to(image, (2, 3, 1, 64, 80)).copy()
    pred = predict(model, tzcyx, axes="TZCYX")
    assert pred.labels.shape == (2, 3, 64, 80)


def test_partial_planes_update_existing_labels(tiny_model):
    model = load_model(tiny_model)
    image, _ = draw_objects((64, 64), n=5, seed=5)
    stack = np.stack([image] * 4)
    out = np.full(stack.shape, 0, np.int32)
    out[0] = 7  # a reviewed plane that must not change
    predict(model, stack, axes="ZYX", planes=[(2,)], out=out)
    assert (out[0] == 7).all() and out[2].max() > 7 and out[1].max() == 0


def test_bad_images_are_rejected_with_messages(tiny_model):
    model = load_model(tiny_model)
    with pytest.raises(InputError, match="empty"):
        predict(model, np.zeros((0, 10), np.float32))
    with pytest.raises(InputError, match="finite"):
        predict(model, np.full((32, 32), np.nan, np.float32))
    with pytest.raises(InputError, match="dtype"):
        predict(model, np.zeros((8, 8), complex))
    with pytest.raises(InputError, match="axes"):
        predict(model, np.zeros((8, 8), np.float32), axes="ZYX")


def test_nan_pixels_are_tolerated(tiny_model):
    model = load_model(tiny_model)
    image, labels = draw_objects((96, 96), n=8, seed=6)
    image[:10, :10] = np.nan
    pred = predict(model, image)
    assert pred.labels.max() > 0


def test_prediction_cancel(tiny_model):
    from napari_segtool.kernel.events import Cancelled

    token = CancelToken()
    job = iter_predict(load_model(tiny_model), np.zeros((5, 64, 64), np.float32), axes="ZYX", cancel=token)
    next(job)
    token.cancel()
    with pytest.raises(Cancelled):
        run_job(job)


def test_examples_validate_input():
    image, labels = draw_objects((32, 32), n=2)
    with pytest.raises(DataError, match="spatial shape"):
        make_example(image, labels[:20])
    with pytest.raises(DataError, match="no objects"):
        make_example(image, np.zeros_like(labels))
    with pytest.raises(DataError, match="mask"):
        make_example(image, labels, np.zeros((3, 3), bool))
    with pytest.raises(DataError, match="empty"):
        make_example(image, labels, np.zeros_like(labels, bool))


def test_validation_split_is_spatial_and_disjoint():
    image, labels = draw_objects((100, 60), n=6)
    train_set, val_set = split_validation([make_example(image, labels)], 0.2)
    assert not (train_set[0].annotated & val_set[0].annotated).any()
    rows = np.nonzero(val_set[0].annotated.any(1))[0]
    assert rows.min() >= 75


def test_training_events_time_budget_and_cancel():
    ex = make_example(*draw_objects((96, 96), n=8, seed=7))
    # 40 000 steps take far longer than the 3 s budget on any CPU: the budget, not the step count, ends it
    cfg = TrainConfig(epochs=10_000, steps_per_epoch=4, batch_size=2, patch_size=48, time_budget=3.0, val_fraction=0)
    events = []
    result = train([ex], config=cfg, callback=events.append, arch_kwargs={"depth": 1, "width": 4})
    assert result.stop_reason == "time budget" and result.steps < 10_000 * 4  # no wall-clock assert: shared CPUs
    assert any(isinstance(e, TrainStep) for e in events) and any(isinstance(e, TrainEpoch) for e in events)
    token = CancelToken()
    job = iter_train([ex], config=TrainConfig(epochs=50, steps_per_epoch=4, batch_size=2, patch_size=48),
                     cancel=token, arch_kwargs={"depth": 1, "width": 4})
    next(job)
    token.cancel()
    assert run_job(job).stop_reason == "cancelled"


def test_training_is_reproducible_with_seed():
    ex = make_example(*draw_objects((64, 64), n=5, seed=8))
    cfg = dict(epochs=1, steps_per_epoch=3, batch_size=2, patch_size=32, val_fraction=0, seed=3)
    a = train([ex], config=TrainConfig(**cfg), arch_kwargs={"depth": 1, "width": 4}).model
    b = train([ex], config=TrainConfig(**cfg), arch_kwargs={"depth": 1, "width": 4}).model
    for (ka, va), (kb, vb) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        torch.testing.assert_close(va, vb)


def test_batches_drawn_ahead_in_a_thread_train_exactly_as_drawn_in_the_loop(monkeypatch):
    """Prefetching changes when a batch is drawn, not which: same seed, same losses and weights."""
    import napari_segtool.core.train as train_module

    ex = make_example(*draw_objects((96, 96), n=8, seed=8))
    cfg = dict(epochs=2, steps_per_epoch=4, batch_size=2, patch_size=32, val_fraction=0.2, seed=5)
    runs = {}
    for prefetch in (False, True):
        monkeypatch.setattr(train_module, "PREFETCH_ON", ("cpu",) if prefetch else ())
        losses = []
        res = train([ex], config=TrainConfig(**cfg), arch_kwargs={"depth": 1, "width": 4},
                    callback=lambda e: losses.append(e.loss) if isinstance(e, TrainStep) else None)
        runs[prefetch] = (losses, res.model.net.state_dict())
    assert len(runs[True][0]) == 8 and runs[True][0] == runs[False][0]
    for key, value in runs[False][1].items():
        torch.testing.assert_close(runs[True][1][key], value, rtol=0, atol=0)


def test_fine_tuning_keeps_architecture_and_checks_channels(tiny_model):
    init = load_model(tiny_model)
    ex = make_example(*draw_objects((64, 64), n=5, seed=9))
    res = train([ex], init=init, config=TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32))
    assert res.model.meta.arch_kwargs == init.meta.arch_kwargs
    assert res.model.meta.history[-1]["fine_tuned_from"] == init.meta.name
    rgb = make_example(np.zeros((64, 64, 3)) + draw_objects((64, 64), n=5, seed=9)[0][..., None],
                       draw_objects((64, 64), n=5, seed=9)[1])
    with pytest.raises(DataError, match="channel"):
        train([rgb], init=init, config=TrainConfig(epochs=1, steps_per_epoch=1))


def test_fine_tuned_model_takes_its_parents_after_fine_tuning_settings(tiny_model):
    init = load_model(tiny_model)
    init.meta.postprocess.update(seed_mode="shape", after_fine_tuning={"seed_mode": "interior"})
    ex = make_example(*draw_objects((64, 64), n=5, seed=9))
    res = train([ex], init=init, config=TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, patch_size=32))
    assert res.model.meta.postprocess["seed_mode"] == "interior"
    assert "after_fine_tuning" not in res.model.meta.postprocess
    assert init.meta.postprocess["seed_mode"] == "shape"          # the parent is untouched
    predict(init, ex.image[..., 0])                                # and still predicts with the key present


def test_semantic_training_from_sparse_scribbles():
    """Four classes, ~5% of pixels scribbled: the model labels the whole image."""
    rng = np.random.default_rng(0)
    classes = np.ones((96, 96), np.int64)
    classes[:, 48:] = 2
    classes[48:, :48] = 3
    classes[48:, 48:] = 4
    means = np.array([[0, 0, 0], [200, 0, 0], [0, 200, 0], [0, 0, 200], [150, 150, 0]], float)
    image = means[classes] + rng.normal(0, 30, (96, 96, 3))
    scribbles = np.zeros_like(classes)
    mask = rng.random(classes.shape) < 0.05
    scribbles[mask] = classes[mask]
    ex = make_example(image, scribbles, task="semantic")
    res = train([ex], task="semantic", config=TrainConfig(epochs=4, steps_per_epoch=10, batch_size=4, patch_size=48,
                                                           val_fraction=0), arch_kwargs={"depth": 2, "width": 8})
    assert res.model.meta.classes[0] == "unlabelled" and len(res.model.meta.classes) == 5
    pred = predict(res.model, image.astype(np.float32))
    assert semantic_scores(pred.labels, classes)["miou"] > 0.8


def test_semantic_validation_scores_the_top_class():
    """Class ids run 1..K (0 = unlabelled): validation must accept K (it used to reject it)."""
    from napari_segtool.core.train import new_model

    model = new_model("unet", "semantic", 1, ["unlabelled", "a", "b", "c"], depth=2, width=4)
    labels = np.array([[1, 2], [3, 0]])
    name, value = model.architecture.validation_score(labels.copy(), labels, labels > 0, model.meta)
    assert (name, value) == ("miou", 1.0)
    pred = np.array([[1, 2], [2, 0]])
    assert model.architecture.validation_score(pred, labels, labels > 0, model.meta)[1] < 1.0


@pytest.mark.parametrize("kind", ["flat", "noise", "mirror"])
def test_context_augmentation_cuts_the_patch_and_surrounds_what_is_kept(kind):
    from napari_segtool.core.augment import surround

    rng = np.random.default_rng(3)
    image = rng.normal(0.2, 0.05, (64, 64, 1)).astype(np.float32)
    labels = np.zeros((64, 64), np.int32)
    for i, (y, x) in enumerate([(20, 20), (32, 40), (45, 15)], 1):
        yy, xx = np.ogrid[:64, :64]
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= 36] = i
        image[labels == i] += 0.6
    annotated = np.ones((64, 64), bool)
    img, lab, ann = surround(image, labels, annotated, rng, kind=kind)
    kept = np.all(img == image, axis=-1) & (lab == labels)
    rows, cols = np.flatnonzero(kept.any(axis=1)), np.flatnonzero(kept.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    assert (y1 - y0, x1 - x0) != (64, 64) and kept[y0:y1, x0:x1].all()   # a rectangle kept as it was
    outside = np.ones((64, 64), bool)
    outside[y0:y1, x0:x1] = False
    assert not lab[outside].any()                                        # nothing labelled beyond the cut
    background = image[y0:y1, x0:x1][labels[y0:y1, x0:x1] == 0]
    if kind == "flat":
        assert np.allclose(img[outside], np.median(background))
        assert ann[outside].all()
    elif kind == "noise":
        assert abs(img[outside].mean() - background.mean()) < 0.02 and ann[outside].all()
        assert img[outside].std() == pytest.approx(background.std(), rel=0.3)
    else:
        assert not ann[outside].any()                                    # mirrored copies carry no labels


def test_the_shared_loop_keeps_the_best_scored_weights_or_the_last():
    """core.train_loop: with an epoch score the best epoch's weights are restored (and patience stops the
    run); without one every epoch counts and the last weights stay (the fixed-step recipes)."""
    from napari_segtool.core.train_loop import iter_optimise

    def run(score):
        torch.manual_seed(0)
        net = torch.nn.Linear(1, 1, bias=False)
        x = torch.ones(4, 1)

        def loss():
            return ((net(x) - 3.0) ** 2).mean()

        snapshots = []

        def record(event):
            if isinstance(event, TrainEpoch):
                snapshots.append(float(net.weight.detach()))

        result = run_job(iter_optimise(net, TrainConfig(epochs=6, steps_per_epoch=5, lr=0.3, patience=2), loss,
                                       start=time.perf_counter(), score=score), record)
        return result, snapshots, float(net.weight.detach())

    def prefer_first(_losses, scores=iter([5.0, 1.0, 2.0, 3.0, 4.0, 6.0])):
        return "made up", next(scores)

    best, snaps, weight = run(prefer_first)
    assert best.stop_reason == "early stopping" and len(best.epochs) == 3 and best.best_score == 5.0
    assert weight == snaps[0] != snaps[-1] and [e.is_best for e in best.epochs] == [True, False, False]
    last, snaps, weight = run(None)
    assert last.stop_reason == "epochs" and last.steps == 30 and weight == snaps[-1]
    assert all(e.is_best and e.metric_name == "train_loss" for e in last.epochs)
