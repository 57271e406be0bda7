"""Normalisation limits do not follow what surrounds an image: flat, NaN or noise borders.

Percentile limits are a statistic of the objects; background pixels added around an image
(padding, an empty detector margin, a noise-filled frame) used to dilute the high percentile
and widen the low one. They are now taken inside the image's borders of noise-only lines,
while an image whose edges cross objects keeps exactly the limits it always had.
"""
from __future__ import annotations

import numpy as np
import pytest
from astropy.stats import sigma_clipped_stats

from napari_segtool.ops.normalize import (MAX_SAMPLES, _informative_grid, content_box, content_panels, fit_normalizer,
                                          noise_lines)
from napari_segtool.sim import simulate_nuclei

FRAME = 64


def framed(image: np.ndarray, labels: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """``image`` (``Y, X`` or ``Z, Y, X``) inside ``FRAME`` px of flat background, NaN or background-like noise."""
    pad = [(0, 0)] * (image.ndim - 2) + [(FRAME, FRAME)] * 2
    background = image[labels == 0]
    if kind == "nan":
        return np.pad(image, pad, constant_values=np.nan)
    out = np.pad(image, pad, constant_values=float(np.median(background)))
    if kind == "noise":
        noise = np.random.default_rng(seed).normal(background.mean(), background.std(), out.shape)
        inside = np.zeros(out.shape, bool)
        inside[..., FRAME:-FRAME, FRAME:-FRAME] = True
        out = np.where(inside, out, noise)
    return out.astype(np.float32)


def limits(image: np.ndarray, **config) -> np.ndarray:
    n = fit_normalizer(image[..., None], **config)
    return np.array([n.lo[0], n.hi[0]])


SIMULATIONS = [dict(radius_range=(7.0, 8.0), snr=30, seed=11), dict(radius_range=(4.0, 6.0), density=0.3, snr=8, seed=3),
               dict(radius_range=(10.0, 14.0), density=0.6, snr=60, seed=5)]


@pytest.fixture(scope="module", params=range(len(SIMULATIONS)))
def sim(request):
    s = simulate_nuclei((256, 256), **SIMULATIONS[request.param])
    return s.image.astype(np.float32), s.labels


@pytest.mark.parametrize("kind", ["flat", "nan", "noise"])
def test_percentile_limits_ignore_frames(sim, kind):
    image, labels = sim
    plain = limits(image)
    frame = framed(image, labels, kind)
    got = limits(frame)
    np.testing.assert_allclose(got, plain, atol=0.01 * (plain[1] - plain[0]))


def test_a_noise_frame_moves_plain_percentiles(sim):
    """What the test above guards against: percentiles of every pixel shift by more than 1 % of the range."""
    image, labels = sim
    plain = np.percentile(image, [1, 99.8])
    naive = np.percentile(framed(image, labels, "noise"), [1, 99.8])
    assert np.abs(naive - plain).max() > 0.01 * (plain[1] - plain[0])


def test_images_whose_edges_cross_objects_keep_their_percentiles(sim):
    """The limits before noise borders were skipped: percentiles of the informative (not flat) pixels."""
    image, _ = sim
    values, informative, _ = _informative_grid(image[..., None], MAX_SAMPLES)
    np.testing.assert_array_equal(limits(image), np.percentile(values[informative], [1, 99.8]).astype(np.float32))


def test_a_framed_stack_keeps_its_limits():
    s = simulate_nuclei((6, 96, 96), radius_range=(6.0, 8.0), snr=20, seed=2)
    image = s.image.astype(np.float32)
    np.testing.assert_allclose(limits(framed(image, s.labels, "noise")), limits(image),
                               atol=0.01 * np.ptp(limits(image)))


def test_asinh_sky_statistics_count_every_pixel():
    """The sky is what the asinh stretch measures: sky-like noise lines are its data, not padding."""
    rng = np.random.default_rng(1)
    sky = rng.normal(100.0, 5.0, (200, 200)).astype(np.float32)
    sky[80:120, 90:130] += 300.0
    _, median, std = sigma_clipped_stats(sky.ravel(), sigma=3.0, maxiters=5, axis=0)
    np.testing.assert_allclose(limits(sky, method="asinh"), [median, median + 3.0 * std], rtol=1e-5)


def test_noise_lines_are_told_from_lines_crossing_faint_objects():
    rng = np.random.default_rng(4)
    lines = rng.normal(20.0, 4.0, (1, 40, 300))
    x = np.arange(300)
    lines[0, 20:] += 16.0 * np.exp(-((x - 150) / 5.0) ** 2)  # a blob 4 noise sigmas high, 10 px wide
    lines[0, 30:] += np.linspace(0, 40, 300)                  # and a gradient: not noise either
    noise = noise_lines(lines, np.ones(lines.shape, bool))
    assert noise[:20].all() and not noise[20:].any()
    flat = np.full((1, 3, 50), 7.0)
    assert not noise_lines(flat, np.ones(flat.shape, bool)).any()   # flat lines are padding of another kind
    assert noise_lines(flat, np.zeros(flat.shape, bool)).all()      # no informative pixel: skipped


def test_noise_borders_are_padding_for_the_content_box(sim):
    image, labels = sim
    frame = framed(image, labels, "noise")[..., None]
    inner = (FRAME, FRAME + image.shape[0], FRAME, FRAME + image.shape[1])
    assert content_box(frame, noise_borders=True) == inner
    assert content_panels(frame, noise_borders=True) == [inner]
    assert content_box(frame) == (0, frame.shape[0], 0, frame.shape[1])  # by default noise is content
