"""plan_image: a frame of background noise around an image is padding, as a flat one is.

The shipped ``nuclei`` model on a simulated image: framed by 64 px of background-like noise it
gets the plain image's normaliser, content box and objects (before, the noise moved the
percentile limits by ~8 % of their range and the network saw noise instead of the image's
mirrored edge, so the objects at the edge changed). Sky fields keep their noise: it is their image.
"""
from __future__ import annotations

import numpy as np

from napari_segtool.core.checkpoint import load_model
from napari_segtool.core.plan import plan_image
from napari_segtool.core.predict import predict
from napari_segtool.ops.metrics import instance_scores
from napari_segtool.sim import simulate_astro_field
from tests.core.test_scale import nuclei_image, nuclei_model  # noqa: F401  (the shared module fixtures)

FRAME = 64


def noise_framed(image: np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    background = image[labels == 0]
    out = np.random.default_rng(seed).normal(background.mean(), background.std(),
                                             (image.shape[0] + 2 * FRAME, image.shape[1] + 2 * FRAME))
    out[FRAME:-FRAME, FRAME:-FRAME] = image
    return out.astype(np.float32)


def test_a_noise_frame_is_padding_for_a_microscopy_model(nuclei_model, nuclei_image):  # noqa: F811
    image, labels = nuclei_image
    frame = noise_framed(image, labels)
    plain, framed = plan_image(nuclei_model, image, "YX"), plan_image(nuclei_model, frame, "YX")
    np.testing.assert_allclose([framed.settings.normalizer.lo, framed.settings.normalizer.hi],
                               [plain.settings.normalizer.lo, plain.settings.normalizer.hi], rtol=1e-4)
    assert framed.settings.content == (FRAME, FRAME + image.shape[0], FRAME, FRAME + image.shape[1])
    labels_framed = predict(nuclei_model, frame).labels
    inner = labels_framed[FRAME:-FRAME, FRAME:-FRAME]
    assert instance_scores(inner, predict(nuclei_model, image).labels)["ap50"] == 1.0
    assert not labels_framed[:FRAME].any() and not labels_framed[:, -FRAME:].any()  # nothing runs on the frame


def test_a_sky_field_keeps_its_noise():
    model = load_model("astro-sources")
    field = simulate_astro_field((128, 128), seed=3)
    frame = noise_framed(field.image.astype(np.float32), field.labels)
    assert plan_image(model, frame, "YX").settings.content == (0, frame.shape[0], 0, frame.shape[1])


def test_a_mirror_frame_is_padding_for_every_model(nuclei_model, nuclei_image):  # noqa: F811
    """np.pad reflect/symmetric bands hold no new pixel: the plan is the plain image's, for a microscopy
    model and for a sky model alike (a copy of the sky cannot hide a source the way a noise border can)."""
    image, _ = nuclei_image
    field = simulate_astro_field((128, 128), seed=3).image.astype(np.float32)
    pad = ((FRAME, 7), (0, 30))
    for model, plain_image, mode in ((nuclei_model, image, "reflect"), (load_model("astro-sources"), field, "symmetric")):
        plain, framed = plan_image(model, plain_image, "YX"), plan_image(model, np.pad(plain_image, pad, mode=mode), "YX")
        assert np.array_equal(framed.settings.normalizer.lo, plain.settings.normalizer.lo)
        assert np.array_equal(framed.settings.normalizer.hi, plain.settings.normalizer.hi)
        box = (FRAME, FRAME + plain_image.shape[0], 0, plain_image.shape[1])
        assert framed.settings.content == framed.settings.mirror.box == box
        assert framed.scale.diameter == plain.scale.diameter and framed.settings.factor == plain.settings.factor
        assert plain.settings.mirror is None


def test_a_sky_fields_plan_holds_its_sky_and_the_source_table_uses_it(nuclei_model, nuclei_image):  # noqa: F811
    """The asinh normaliser's sigma-clipped sky and noise are the image's, once: its source table reuses them
    (no clipping of its own), so every source is measured against the whole image's sky."""
    model = load_model("astro-sources")
    field = simulate_astro_field((256, 256), seed=5, sky_gradient=0.0)
    plan = plan_image(model, field.image, "YX")
    assert abs(plan.sky.sky - field.sky_level) < 0.2 * field.noise_sigma
    assert abs(plan.sky.noise / field.noise_sigma - 1) < 0.15
    rows = predict(model, field.image, axes="YX").tables[()]  # the model asks for its table
    assert rows and all(r["sky"] == plan.sky.sky and r["sky_noise"] == plan.sky.noise for r in rows)
    assert plan_image(nuclei_model, nuclei_image[0], "YX").sky is None  # percentiles say nothing of a sky
