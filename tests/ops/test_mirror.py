"""Mirror frames: bands that are an exact mirror of the content next to them are found exactly, and get its labels.

``np.pad(image, w, mode="reflect" | "symmetric")`` adds no new pixel; a band that only looks
symmetric (a natural image, a mirror with the slightest noise, edge or flat padding) is content.
"""
from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from napari_segtool.ops.mirror import MIN_MIRROR, mirror_frame, mirror_labels, source_rect
from napari_segtool.sim import simulate_astro_field, simulate_nuclei


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return simulate_nuclei((160, 176), radius_range=(6.0, 9.0), snr=20, seed=4).image.astype(np.float32)


def box_of(shape: tuple[int, ...], pad: tuple[tuple[int, int], tuple[int, int]]) -> tuple[int, int, int, int]:
    return pad[0][0], shape[-2] - pad[0][1], pad[1][0], shape[-1] - pad[1][1]


@pytest.mark.parametrize("mode", ["reflect", "symmetric"])
@pytest.mark.parametrize("pad", [((64, 64), (64, 64)), ((MIN_MIRROR, 0), (0, 0)), ((0, 9), (33, 0)),
                                 ((70, 5), (0, 150))])
def test_a_mirror_band_is_found_on_each_side_with_its_width_and_mode(image, mode, pad):
    framed = np.pad(image, pad, mode=mode)
    frame = mirror_frame(framed[..., None])
    assert frame is not None
    assert frame.box == box_of(framed.shape, pad)
    assert frame.modes == tuple(mode if w else "" for w in (pad[0][0], pad[0][1], pad[1][0], pad[1][1]))


def test_every_plane_and_channel_of_a_stack_mirrored_in_yx(image):
    stack = np.stack([image, image[::-1], 2 * image])                     # Z, Y, X
    rgb = np.stack([stack, stack + 1.0], axis=-1)                        # Z, Y, X, C
    framed = np.pad(rgb, ((0, 0), (12, 12), (30, 0), (0, 0)), mode="symmetric")
    assert mirror_frame(framed).box == (12, framed.shape[1] - 12, 30, framed.shape[2])
    # a lazy array is read at its edges only, and decides alike
    assert mirror_frame(da.from_array(framed, chunks=(1, 64, 64, 2))) == mirror_frame(framed)
    framed[1, 3, 100, 0] += 1.0                                          # one plane breaks the mirror at the top
    assert mirror_frame(framed).box == (0, framed.shape[1] - 12, 30, framed.shape[2])


def test_nothing_that_only_looks_mirrored_is_a_mirror(image):
    assert mirror_frame(image[..., None]) is None                                   # a natural image
    sky = simulate_astro_field((128, 128), seed=3).image.astype(np.float32)
    assert mirror_frame(sky[..., None]) is None
    noisy = np.pad(image, 40, mode="reflect")
    noisy[:40] += np.random.default_rng(0).normal(0, 1e-3, noisy[:40].shape).astype(np.float32)
    assert mirror_frame(noisy[..., None]).modes[0] == ""                          # nearly a mirror: content
    for mode in ("edge", "constant", "wrap"):                                      # edge/flat padding, tiling
        assert mirror_frame(np.pad(image, 40, mode=mode)[..., None]) is None
    narrow = np.pad(image, MIN_MIRROR - 1, mode="reflect")
    assert mirror_frame(narrow[..., None]) is None


def test_mirrored_labels_join_across_the_axis_and_copies_get_new_ids():
    content = np.zeros((16, 16), np.int32)
    content[0:3, 3:5] = 1       # touches the top edge
    content[8:11, 0:2] = 2      # touches the left edge
    content[0:2, 0:2] = 3       # touches both: the corner
    content[4:6, 1:3] = 4       # touches nothing
    pad = ((12, 0), (6, 0))
    image_like = np.pad(content, pad, mode="symmetric")
    frame = mirror_frame(np.pad(np.arange(content.size, dtype=np.float32).reshape(content.shape) ** 1.5,
                                pad, mode="symmetric")[..., None])
    assert frame.box == (12, 28, 6, 22)
    top, left, corner = np.s_[:12, 6:], np.s_[12:, :6], np.s_[:12, :6]
    window = np.zeros(image_like.shape, np.int32)
    window[12:, 6:] = content
    out = mirror_labels(window, frame, (0, 0), instance=True)
    assert np.array_equal(out > 0, image_like > 0) and np.array_equal(out[12:, 6:], content)

    def ids(zone, k):
        return set(np.unique(out[zone][image_like[zone] == k]).tolist())

    assert ids(top, 1) == {1} and ids(left, 2) == {2}    # one object across the axis it touches
    assert ids(corner, 3) == {3}                          # the corner object across both axes
    assert len(ids(left, 1)) == 1 and min(ids(left, 1)) > 4 and ids(corner, 1) == ids(left, 1)  # a new copy,
    assert len(ids(top, 2)) == 1 and min(ids(top, 2)) > 4 and ids(corner, 2) == ids(top, 2)     # its corner joined
    copies = [ids(zone, 4) for zone in (top, left, corner)]
    assert all(len(c) == 1 and min(c) > 4 for c in copies) and len(set.union(*copies)) == 3
    semantic = mirror_labels((window > 0).astype(np.int32), frame, (0, 0), instance=False)
    assert np.array_equal(semantic, (image_like > 0).astype(np.int32))


def test_a_window_reads_the_sources_of_its_band_pixels(image):
    framed = np.pad(image, ((20, 0), (0, 0)), mode="reflect")
    frame = mirror_frame(framed[..., None])
    assert source_rect(frame, (0, 10, 5, 50)) == (31, 41, 5, 50)             # rows 0..9 mirror rows 40..31
    assert source_rect(frame, (15, 60, 0, 8)) == (20, 60, 0, 8)             # rows 15..19 mirror 25..21
