"""Object scale and context: the same objects give the same labels rescaled, framed and chunked.

These run the shipped models (napari_segtool/zoo) on simulated images, through the
public functions the CLI and the widgets call.
"""
from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import rescale, resize

from napari_segtool.core.batch import predict_to_zarr
from napari_segtool.core.checkpoint import load_model
from napari_segtool.core.predict import predict
from napari_segtool.core.scale import (_agreeing_median, median_diameter, object_scale_from_labels, scale_factor,
                                       stack_scale_factor, whole_object_areas)
from napari_segtool.kernel.errors import InputError
from napari_segtool.kernel.meta import ObjectScale
from napari_segtool.ops.metrics import instance_scores
from napari_segtool.sim import simulate_astro_field, simulate_nuclei


@pytest.fixture(scope="module")
def nuclei_model():
    return load_model("nuclei")


@pytest.fixture(scope="module")
def nuclei_image():
    sim = simulate_nuclei((256, 256), radius_range=(7.0, 8.0), snr=30, seed=11)
    return sim.image.astype(np.float32), sim.labels


def magnify(image, labels, m):
    img = rescale(image, m, order=1, anti_aliasing=m < 1, preserve_range=True).astype(np.float32)
    return img, resize(labels, img.shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)


def same_objects(a, b) -> float:
    """AP@0.5 of one label image against another: 1.0 means the same objects up to ids."""
    return instance_scores(a, b)["ap50"]


def test_object_scale_comes_from_training_labels_widened_by_augmentation():
    labels = []
    for r in (4, 6, 8, 10, 12):
        lab = np.zeros((64, 64), np.int32)
        yy, xx = np.mgrid[:64, :64]
        lab[(yy - 32) ** 2 + (xx - 32) ** 2 <= r * r] = 1
        labels.append(lab)
    scale = object_scale_from_labels(labels, (0.8, 1.25))
    diameters = [median_diameter(lab)[0] for lab in labels]
    low, high = np.percentile(diameters, [10, 90])
    assert scale.low == pytest.approx(0.8 * low) and scale.high == pytest.approx(1.25 * high)
    assert scale.diameter == pytest.approx(np.sqrt(low * high))


def test_scale_factor_leaves_known_sizes_alone_and_brings_others_into_range():
    scale = ObjectScale(diameter=14, low=7, high=28)
    assert scale_factor(scale, 20) == 1.0
    assert scale_factor(scale, 56) == pytest.approx(0.5)
    assert scale_factor(scale, 3.5) == pytest.approx(2.0)
    assert scale_factor(ObjectScale(), 56) == 1.0  # a model that does not know its size runs as is


def test_object_size_is_estimated_at_any_magnification(nuclei_model, nuclei_image):
    image, labels = nuclei_image
    truth = median_diameter(labels)[0]
    for m in (1.0, 3.0):
        img, lab = magnify(image, labels, m)
        pred = predict(nuclei_model, img)
        assert pred.diameter == pytest.approx(truth * m, rel=0.25)
        assert pred.labels.shape == img.shape


def test_labels_follow_object_scale(nuclei_model, nuclei_image):
    """×3 nuclei (~45 px) are shrunk into the model's range and mapped back: same quality as ×1."""
    image, labels = nuclei_image
    plain = same_objects(predict(nuclei_model, image).labels, labels)
    img, lab = magnify(image, labels, 3.0)
    pred = predict(nuclei_model, img)
    assert pred.scale_factor < 0.7
    assert same_objects(pred.labels, lab) > plain - 0.1
    unscaled = predict(nuclei_model, img, diameter=float(nuclei_model.meta.scale.high)).labels  # the old behaviour
    assert same_objects(unscaled, lab) < same_objects(pred.labels, lab)


def test_flat_and_nan_frames_change_nothing(nuclei_model, nuclei_image):
    image, _ = nuclei_image
    plain = predict(nuclei_model, image).labels
    flat = np.pad(image, 48, constant_values=float(np.median(image)))
    nan = np.pad(image, ((0, 40), (24, 0)), constant_values=np.nan)
    assert same_objects(predict(nuclei_model, flat).labels[48:-48, 48:-48], plain) == 1.0
    framed = predict(nuclei_model, nan).labels
    assert same_objects(framed[:-40, 24:], plain) == 1.0 and not framed[-40:].any()


def test_a_given_diameter_must_be_positive(nuclei_model, nuclei_image):
    with pytest.raises(InputError, match="diameter"):
        predict(nuclei_model, nuclei_image[0], diameter=-3)


def test_chunked_equals_in_memory_when_rescaled(nuclei_model, nuclei_image, tmp_path):
    import zarr

    image, labels = magnify(nuclei_image[0][:144, :144], nuclei_image[1][:144, :144], 3.0)
    ref = predict(nuclei_model, image)
    assert ref.scale_factor < 0.8
    predict_to_zarr(nuclei_model, image, tmp_path / "out.zarr", chunk_size=192)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert out.shape == image.shape
    assert same_objects(out, ref.labels) > 0.97


def test_chunked_equals_in_memory_for_a_3d_stack(nuclei_model, tmp_path):
    import zarr

    sim = simulate_nuclei((12, 160, 160), radius_range=(6.0, 8.0), anisotropy=2.0, snr=30, seed=3)
    stack = sim.image.astype(np.float32)
    ref = predict(nuclei_model, stack, axes="ZYX")
    predict_to_zarr(nuclei_model, stack, tmp_path / "out.zarr", axes="ZYX", chunk_size=96)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert same_objects(out, ref.labels) > 0.95
    assert same_objects(ref.labels, sim.labels) > 0.5  # and they are 3D nuclei, not noise


def test_chunked_equals_in_memory_for_a_sky_field(tmp_path):
    import zarr

    model = load_model("astro-sources")
    field = simulate_astro_field((256, 256), seed=5)
    ref = predict(model, field.image)
    predict_to_zarr(model, field.image, tmp_path / "out.zarr", chunk_size=128)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert same_objects(out, ref.labels) > 0.95


def test_reviewed_slices_keep_the_stack_three_dimensional(nuclei_model):
    """Re-segmenting a stack around a reviewed slice keeps 3D objects, joined to the kept slice's ids."""
    sim = simulate_nuclei((10, 128, 128), radius_range=(6.0, 8.0), anisotropy=2.0, snr=30, seed=4)
    stack = sim.image.astype(np.float32)
    whole = predict(nuclei_model, stack, axes="ZYX").labels
    out = np.zeros_like(whole)
    out[5] = whole[5]                      # the user reviewed slice 5 as the model had it
    todo = [(z,) for z in range(10) if z != 5]
    joined = predict(nuclei_model, stack, axes="ZYX", planes=todo, out=out).labels
    np.testing.assert_array_equal(joined[5], whole[5])
    assert same_objects(joined, whole) > 0.95                      # the same 3D objects, not per-plane pieces
    crossing = set(np.unique(joined[4])) & set(np.unique(joined[5])) & set(np.unique(joined[6])) - {0}
    assert len(crossing) >= 0.5 * (len(np.unique(whole[5])) - 1)   # objects run through the kept slice


def test_a_plane_too_large_for_memory_runs_chunk_by_chunk(nuclei_model, nuclei_image, monkeypatch):
    import napari_segtool.core.predict as predict_module

    image, _ = nuclei_image
    whole = predict(nuclei_model, image, diameter=16.0)
    monkeypatch.setattr(predict_module, "LARGE_PLANE_PIXELS", 128 * 128)
    events = []
    chunked = predict(nuclei_model, image, diameter=16.0, callback=events.append)
    assert any("chunk by chunk" in n for n in chunked.notes) and events
    assert chunked.labels.shape == image.shape and same_objects(chunked.labels, whole.labels) > 0.97


def test_the_size_estimate_counts_only_objects_inside_the_crop():
    labels = np.zeros((40, 40), np.int32)
    labels[0:6, 10:30] = 1            # cut by the crop's edge: part of an object
    labels[10:20, 10:20], labels[22:32, 5:15], labels[25:35, 25:35] = 2, 3, 4
    assert sorted(whole_object_areas(labels).tolist()) == [100, 100, 100]
    labels[labels == 4] = 0           # too few whole objects: all count
    assert sorted(whole_object_areas(labels).tolist()) == [100, 100, 120]


def test_fragments_that_agree_do_not_outvote_the_true_size():
    """Implied diameters measured with nuclei-maskrcnn on the real image magnified ×4 (nuclei ~96 px):
    factors 1, 2 and 4 see fragments that agree on ~7 px; factors 1/8 and 1/4 see the nuclei."""
    fragments = {0.125: 104.3, 0.25: 94.1, 0.5: 45.1, 1.0: 9.1, 2.0: 7.3, 4.0: 6.1}
    assert 90 < _agreeing_median(fragments) < 105
    # the same image at ×0.5 (nuclei ~12 px): a lone coarse factor's clumps do not win
    small = {0.125: 43.3, 0.25: 24.9, 0.5: 13.7, 1.0: 12.9, 2.0: 12.0, 4.0: 4.0}
    assert 12 < _agreeing_median(small) < 14
    assert _agreeing_median({0.5: 20.0, 2.0: 5.0}) == 20.0  # nothing confirmed: the coarsest factor
    assert _agreeing_median({}) is None


def test_the_size_estimate_does_not_follow_the_frame(nuclei_model, nuclei_image):
    image, labels = nuclei_image
    rng = np.random.default_rng(0)
    background = image[labels == 0]
    noise = rng.normal(background.mean(), background.std(), (image.shape[0] + 96, image.shape[1] + 96))
    noise[48:-48, 48:-48] = image
    plain = predict(nuclei_model, image).diameter
    for framed in (noise.astype(np.float32), np.pad(image, 48, mode="reflect")):
        assert predict(nuclei_model, framed).diameter == pytest.approx(plain, rel=0.05)


def test_mosaic_panels_get_the_labels_of_the_image_alone(nuclei_model, nuclei_image, tmp_path):
    """Copies separated by flat gaps run as the images they are: in memory and chunked, the same objects."""
    import zarr

    image = nuclei_image[0][:128, :160]
    alone = predict(nuclei_model, image)
    gap = 24
    mosaic = np.full((2 * 128 + gap, 2 * 160 + gap), float(np.median(image)), np.float32)
    corners = [(y, x) for y in (0, 128 + gap) for x in (0, 160 + gap)]
    for y, x in corners:
        mosaic[y:y + 128, x:x + 160] = image
    whole = predict(nuclei_model, mosaic)
    assert whole.diameter == pytest.approx(alone.diameter)  # estimated on one panel
    predict_to_zarr(nuclei_model, mosaic, tmp_path / "out.zarr", chunk_size=128)
    chunked = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    for y, x in corners:
        assert same_objects(whole.labels[y:y + 128, x:x + 160], alone.labels) == 1.0
        assert same_objects(chunked[y:y + 128, x:x + 160], alone.labels) > 0.97
    assert not whole.labels[128:128 + gap].any()


def test_stacks_magnified_in_xy_run_at_the_z_sampling_the_model_knows():
    scale = ObjectScale(diameter=14, low=7, high=28)
    assert stack_scale_factor(scale, 26.0, 1.0, 2.0, 2.0) == 1.0            # Z step as tuned: as in 2D
    assert stack_scale_factor(scale, 26.0, 1.0, 4.0, 2.0) == pytest.approx(0.5)  # XY x2: back to Z step 2
    assert stack_scale_factor(scale, 10.0, 1.0, 8.0, 2.0) == pytest.approx(0.7)  # never below the known sizes


@pytest.mark.parametrize("radius", [4.0, 8.0, 16.0])
def test_maskrcnn_estimates_the_object_size_of_simulated_nuclei(radius):
    """nuclei-maskrcnn's own detections at a few factors give the diameter of simulated nuclei ~8, ~17 and
    ~34 px across (measured: 8.2, 16.8, 34.4 against 8.4, 16.9, 34.2) within 20 %."""
    model = load_model("nuclei-maskrcnn")
    shape = (256, 256) if radius < 10 else (512, 512)
    sim = simulate_nuclei(shape, radius_range=(0.85 * radius, 1.15 * radius), snr=20, seed=5)
    truth = median_diameter(sim.labels)[0]
    pred = predict(model, sim.image.astype(np.float32))
    assert pred.diameter == pytest.approx(truth, rel=0.2)
    assert pred.labels.shape == shape
