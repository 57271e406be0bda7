"""The instance decoding's thresholds are chosen on annotated pixels and travel with the model (core.tune_decoding)."""

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_segtool.core.checkpoint import load_model, save_model
from napari_segtool.core.data import make_example
from napari_segtool.core.predict import predict
from napari_segtool.core.train import TrainConfig, train
from napari_segtool.core.train_project import iter_fit
from napari_segtool.core.tune_decoding import (MIN_OBJECTS, SWITCH_KEY, DecodingGrid, RegionMaps, annotated_objects,
                                              choose_thresholds, settle_switch, tune_decoding)
from napari_segtool.kernel.events import run_job
from napari_segtool.models.unet import instance_targets
from napari_segtool.ops.metrics import instance_scores
from napari_segtool.ops.postprocess import instances_from_maps
from tests.conftest import draw_objects

GRID = DecodingGrid()


def _decoded_mean_ap(region: RegionMaps, fg: float, seed: float) -> float:
    pred = instances_from_maps(region.foreground, region.interior, region.distance, fg_threshold=fg,
                               seed_threshold=seed, min_size=10, min_seed_size=3)
    return instance_scores(pred, region.labels)["mean_ap"]


def test_the_foreground_cut_moves_to_where_the_maps_put_the_annotated_edge():
    """Maps whose foreground probability is 0.5 1.5 px *inside* each annotated object (a network that learnt
    tighter edges than these annotations): the default cut shrinks every object by a pixel ring."""
    _, labels = draw_objects((224, 224), n=40, seed=2, touching=True)
    inside = ndi.distance_transform_edt(labels > 0) - ndi.distance_transform_edt(labels == 0)
    foreground = 1 / (1 + np.exp(-(inside - 1.5)))
    classes, distance = instance_targets(labels)
    interior = np.where(classes == 1, 0.4 + 0.6 * distance, 0.05)
    region = RegionMaps(foreground.astype(np.float32), interior.astype(np.float32), distance, labels,
                        np.ones(labels.shape, bool))
    settings = {"fg_threshold": 0.5, "seed_threshold": 0.6, "min_size": 10, "min_seed_size": 3}
    tuned = choose_thresholds([region], settings, GRID)
    best = max(_decoded_mean_ap(region, f, s) for f in GRID.fg_thresholds for s in GRID.seed_thresholds)
    chosen = _decoded_mean_ap(region, tuned.settings["fg_threshold"], tuned.settings["seed_threshold"])
    assert tuned.settings["fg_threshold"] < 0.4  # the cut that keeps the annotated edge pixels (inside >= 1)
    assert chosen == pytest.approx(tuned.score) and chosen >= best - 0.02
    assert tuned.default_score == pytest.approx(_decoded_mean_ap(region, 0.5, 0.6))
    assert tuned.score > tuned.default_score + 0.2


def test_too_few_objects_keep_the_models_own_thresholds_whatever_the_grid_says():
    """The same maps as a clearly mis-cut region, but cropped to fewer than MIN_OBJECTS objects: kept."""
    _, labels = draw_objects((224, 224), n=40, seed=2, touching=True)
    inside = ndi.distance_transform_edt(labels > 0) - ndi.distance_transform_edt(labels == 0)
    foreground = (1 / (1 + np.exp(-(inside - 1.5)))).astype(np.float32)
    classes, distance = instance_targets(labels)
    interior = np.where(classes == 1, 0.4 + 0.6 * distance, 0.05).astype(np.float32)
    settings = {"fg_threshold": 0.5, "seed_threshold": 0.6, "min_size": 10, "min_seed_size": 3}
    few = (slice(0, 80), slice(0, 80))
    assert 0 < np.unique(labels[few]).size - 1 < MIN_OBJECTS
    region = RegionMaps(foreground[few], interior[few], distance[few], labels[few], np.ones((80, 80), bool))
    tuned = choose_thresholds([region], settings, GRID)
    assert tuned.settings == {"fg_threshold": 0.5, "seed_threshold": 0.6} and tuned.score == tuned.default_score
    full = RegionMaps(foreground, interior, distance, labels, np.ones(labels.shape, bool))
    assert choose_thresholds([full], settings, GRID).settings["fg_threshold"] < 0.4   # enough objects: moved


def test_maps_that_decode_alike_at_every_threshold_keep_the_models_own():
    """Sharp maps (probabilities 0 or 1): every pair scores the same, so nothing is gained by moving."""
    _, labels = draw_objects((192, 192), n=40, seed=4, touching=False)
    classes, distance = instance_targets(labels)
    region = RegionMaps((labels > 0).astype(np.float32), (classes == 1).astype(np.float32), distance, labels,
                        np.ones(labels.shape, bool))
    settings = {"fg_threshold": 0.5, "seed_threshold": 0.6, "min_size": 10, "min_seed_size": 3}
    tuned = choose_thresholds([region], settings, GRID)
    assert np.ptp(tuned.grid) == 0 and tuned.score == tuned.default_score
    assert tuned.settings == {"fg_threshold": 0.5, "seed_threshold": 0.6}


@pytest.fixture(scope="module")
def objects():
    return draw_objects((288, 288), n=80, seed=1)   # ~40 objects in the training run's validation half


def test_the_shipped_model_over_splits_at_its_default_seed_cut_and_tuning_finds_a_better_one(objects):
    """The real shipped network on bright ellipses: its default seed threshold (0.6) splits objects."""
    model = load_model("nuclei")
    model.meta.postprocess.update(model.meta.postprocess.pop("after_fine_tuning"))  # seed_mode interior
    image, labels = objects
    tuned = tune_decoding(model, [make_example(image, labels, normalization=model.meta.normalization)])
    assert tuned.settings["seed_threshold"] > 0.6
    assert tuned.score > tuned.default_score + 0.15
    assert tuned.score >= tuned.grid.max() - 0.03  # smoothing may trade a lucky cell for its steadier neighbour


def test_tuned_thresholds_reach_prediction_through_model_json(objects, tmp_path):
    """Fine-tuning tunes on its validation region, stores the pair in ``postprocess`` and the history; a
    model loaded from disk predicts with them when no setting is given (the CLI's and widget's default)."""
    image, labels = objects
    start = load_model("nuclei")
    example = make_example(image, labels, normalization=start.meta.normalization)
    config = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, patch_size=64, lr=1e-7, val_fraction=0.5,
                         num_threads=1, seed=0)
    model = train([example], init=start, config=config).model
    record = model.meta.history[-1]["decoding"]
    chosen = {k: model.meta.postprocess[k] for k in ("fg_threshold", "seed_threshold")}
    assert chosen == {k: record[k] for k in chosen}
    assert chosen["seed_threshold"] != 0.6 and record["mean_ap"] > record["default_mean_ap"]
    loaded = load_model(save_model(model, tmp_path / "tuned"))
    assert {k: loaded.meta.postprocess[k] for k in chosen} == chosen
    own = predict(loaded, image).labels
    np.testing.assert_array_equal(own, predict(loaded, image, **chosen).labels)
    assert not np.array_equal(own, predict(loaded, image, fg_threshold=0.5, seed_threshold=0.6).labels)
    untuned = train([example], init=start, config=replace(config, tune_decoding=False)).model
    assert "decoding" not in untuned.meta.history[-1] and untuned.meta.postprocess["seed_threshold"] == 0.6


def test_too_few_annotated_objects_skip_the_maps_and_keep_the_models_thresholds(objects, monkeypatch):
    """A validation split under MIN_OBJECTS objects (a human-in-the-loop round's) cannot move the thresholds,
    so its maps are not computed at all; with enough objects they are, once per region."""
    model = load_model("nuclei")
    model.meta.postprocess.update(model.meta.postprocess.pop("after_fine_tuning"))
    image, labels = objects
    arch = model.architecture
    calls = []
    original = arch.predict_plane
    monkeypatch.setattr(arch, "predict_plane", lambda *a, **k: calls.append(1) or original(*a, **k))
    few = make_example(image[:96, :96], labels[:96, :96], normalization=model.meta.normalization)
    assert 0 < annotated_objects([few]) < MIN_OBJECTS
    assert tune_decoding(model, [few]) is None and calls == []
    many = make_example(image, labels, normalization=model.meta.normalization)
    assert annotated_objects([many]) >= MIN_OBJECTS
    assert tune_decoding(model, [many]) is not None and len(calls) == 1


def _with_switch(start: dict, switch: dict):
    """The shipped nuclei model whose postprocess is ``start`` plus the ``after_fine_tuning`` ``switch``."""
    model = load_model("nuclei")
    model.meta.postprocess.update(start)
    model.meta.postprocess[SWITCH_KEY] = dict(switch)
    return model


@pytest.mark.parametrize("start, switch, taken", [
    ({"min_size": 100000}, {"min_size": 11}, True),     # the start decodes no object at all: the switch wins
    ({"min_size": 11}, {"min_size": 100000}, False),    # the switch would drop every object: the start stays
])
def test_the_switch_after_fine_tuning_is_declined_only_where_the_annotated_objects_decode_better_without(
        objects, start, switch, taken):
    image, labels = objects
    model = _with_switch(start, switch)
    start_settings = dict(model.meta.postprocess)
    example = make_example(image, labels, normalization=model.meta.normalization)
    assert annotated_objects([example]) >= MIN_OBJECTS
    decision = settle_switch(model, start_settings, [example])
    assert decision.switched is taken and decision.objects == annotated_objects([example])
    assert (decision.score > decision.kept_score + 0.5) is taken and (decision.kept_score > decision.score + 0.5) is not taken
    assert model.meta.postprocess["min_size"] == (switch if taken else start)["min_size"]
    assert (SWITCH_KEY in model.meta.postprocess) is not taken   # declined: pending for the next fine-tuning


def test_fine_tuning_on_a_few_objects_takes_the_recipes_switch(objects):
    """The Train widget's and the effort benchmark's fine-tuning (``iter_fit``) on fewer than MIN_OBJECTS annotated
    objects: too few to overrule the recipe, so the shipped model's shape split gives way to its interior seeds as
    iter_train alone does, even where these few objects would vote otherwise; the history says so; the start is
    untouched."""
    image, labels = objects
    start = load_model("nuclei")
    assert start.meta.postprocess["seed_mode"] == "shape" and start.meta.postprocess[SWITCH_KEY]["seed_mode"] == "interior"
    few = make_example(image[:96, :96], labels[:96, :96], normalization=start.meta.normalization)
    assert 0 < annotated_objects([few]) < MIN_OBJECTS
    config = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=2, patch_size=64, lr=1e-7, val_fraction=0.0,
                         num_threads=1, seed=0)
    assert train([few], init=start, config=config).model.meta.postprocess["seed_mode"] == "interior"
    model = run_job(iter_fit([few], start, config)).model
    assert model.meta.postprocess["seed_mode"] == "interior"
    assert SWITCH_KEY not in model.meta.postprocess
    assert model.meta.history[-1]["decoding_switch"]["switched"] is True
    assert model.meta.history[-1]["decoding_switch"]["objects"] == annotated_objects([few])
    assert start.meta.postprocess["seed_mode"] == "shape"
