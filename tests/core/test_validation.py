"""Settings and training data are checked before work starts; training never loops forever."""
from __future__ import annotations

import math

import numpy as np
import pytest

from napari_segtool.core.data import DataError, PatchSampler, make_example
from napari_segtool.core.train import TrainConfig, _batch, iter_train, train
from napari_segtool.core.validate import check_device
from napari_segtool.kernel.errors import ConfigError, InputError


def _example(shape=(32, 32)):
    labels = np.zeros(shape, np.int32)
    labels[: max(1, shape[0] // 2), : max(1, shape[1] // 2)] = 1
    image = labels * 100.0 + np.random.default_rng(0).normal(10, 1, shape)
    return make_example(image.astype(np.float32), labels)


@pytest.mark.parametrize("field,value", [
    ("epochs", 0), ("epochs", -3), ("epochs", 1.5), ("steps_per_epoch", 0), ("batch_size", 0), ("batch_size", True),
    ("patch_size", 0), ("patch_size", -8), ("patch_size", 8), ("lr", 0.0), ("lr", math.nan), ("lr", -1e-3),
    ("lr", math.inf), ("time_budget", 0), ("time_budget", -5), ("time_budget", math.nan), ("val_fraction", 1.0),
    ("patience", 0), ("seed", -1), ("weight_decay", -1), ("device", "cuda:99"), ("device", "xla"),
    ("num_threads", 0), ("epochs", "10"),
])
def test_bad_settings_raise_config_error_before_training(field, value):
    config = TrainConfig(**{field: value})
    job = iter_train([_example()], config=config)
    with pytest.raises(ConfigError, match=field if field != "device" else "device") as info:
        next(job)
    assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)


def test_device_check():
    assert check_device("cpu").type == "cpu"
    with pytest.raises(ConfigError):
        check_device("")


@pytest.mark.parametrize("side", [1, 2, 3, 5])
def test_training_on_a_tiny_image_terminates(side):
    """Augmentation rotates the few annotated pixels out of the patch; the batch falls back instead of looping."""
    labels = np.zeros((side, side), np.int32)
    labels[0, 0] = 1
    image = np.arange(side * side, dtype=np.float32).reshape(side, side)
    config = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=3, patch_size=16, val_fraction=0.0)
    result = train([make_example(image, labels)], config=config, arch_kwargs={"depth": 1, "width": 4})
    assert result.steps == 2


def test_a_batch_always_holds_annotated_pixels():
    labels = np.zeros((3, 3), np.int32)
    labels[2, 2] = 1
    sampler = PatchSampler([make_example(np.ones((3, 3), np.float32) + labels, labels)], 32,
                           np.random.default_rng(0))
    patches = _batch(sampler, TrainConfig(batch_size=6, patch_size=32), np.random.default_rng(0))
    assert len(patches) == 6 and all(p.annotated.any() for p in patches)


def test_label_ids_above_int32_are_refused_not_wrapped():
    labels = np.zeros((16, 16), np.uint32)
    labels[2:6, 2:6] = 2**31 + 5
    with pytest.raises(DataError, match="2147483653"):
        make_example(np.ones((16, 16), np.float32), labels)
    labels[2:6, 2:6] = 2**31 - 1  # the largest id that fits is kept exactly
    assert make_example(np.ones((16, 16), np.float32), labels).labels.max() == 2**31 - 1


def test_images_without_finite_values_or_of_text_are_refused():
    labels = np.ones((8, 8), np.int32)
    with pytest.raises(DataError, match="finite"):
        make_example(np.full((8, 8), np.nan, np.float32), labels)
    with pytest.raises(DataError, match="pixel type"):
        make_example(np.full((8, 8), "a"), labels)


def test_patch_sizes_the_network_cannot_take_are_config_errors():
    example = _example((40, 40))
    with pytest.raises(ConfigError, match="multiple of 8"):
        train([example], config=TrainConfig(patch_size=17, epochs=1), arch_kwargs={"depth": 3, "width": 4})
    with pytest.raises(ConfigError, match="batch_size >= 2"):
        train([example], arch="maskrcnn", config=TrainConfig(patch_size=32, batch_size=1, epochs=1))


def test_exception_types_are_one_documented_family():
    from napari_segtool.core.checkpoint import ModelLoadError
    from napari_segtool.core.project import ProjectError
    from napari_segtool.io.images import ImageReadError
    from napari_segtool.kernel.errors import ModelError, OutputError, SegtoolError

    assert issubclass(DataError, InputError) and issubclass(ImageReadError, InputError)
    assert issubclass(ConfigError, InputError) and issubclass(ModelLoadError, ModelError)
    for cls in (InputError, ModelError, OutputError, ProjectError):
        assert issubclass(cls, SegtoolError) and issubclass(cls, ValueError)
