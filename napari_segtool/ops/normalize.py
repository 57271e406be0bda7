"""Robust per-image intensity normalisation (percentiles), NaN-safe and lazy-friendly.

Microscopy comes as 8/16-bit or float, astronomy as float with NaN for bad pixels
and a huge dynamic range. Mapping the ``low``/``high`` percentiles of each channel
to 0/1 makes all of them look alike to the network. Percentiles of large or lazy
arrays are estimated on a strided subsample so nothing is loaded whole. What surrounds
an image must not move them: flat or NaN padding and borders of background noise are
left out (:func:`content_panels`, :func:`inside_noise_borders`).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_SAMPLES = 2_000_000


def _subsample(data: Any, max_samples: int) -> np.ndarray:
    """A strided view of ``data`` (any array-like, e.g. dask) with at most ~max_samples elements."""
    size = int(np.prod(data.shape))
    if size <= max_samples:
        return np.asarray(data)
    spatial = data.ndim
    stride = int(np.ceil((size / max_samples) ** (1.0 / spatial)))
    sample = data[tuple(slice(None, None, stride) for _ in range(spatial))]
    return np.asarray(sample)


@dataclass
class Normalizer:
    """Per-channel map ``(x - lo) / (hi - lo)``, then optionally ``asinh``; NaN/inf become 0.

    ``stretch="linear"`` (percentile method) maps ``lo``/``hi`` to 0/1.
    ``stretch="asinh"`` (astronomy) has ``lo`` = sky background and ``hi - lo`` =
    a few noise sigmas: noise stays near 0, faint sources are lifted, and bright
    stars are compressed instead of saturating the range (Lupton et al. 1999).
    """

    lo: np.ndarray
    hi: np.ndarray
    stretch: str = "linear"

    def __call__(self, block: np.ndarray) -> np.ndarray:
        block = np.asarray(block, dtype=np.float32)
        out = (block - self.lo) / (self.hi - self.lo)
        if self.stretch == "asinh":
            out = np.arcsinh(out) / ASINH_SCALE
        return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32, copy=False)


ASINH_SCALE = 4.0  # asinh(x)/4: ~1 for sources ~27 softening units above the sky


def _informative_grid(image: Any, max_samples: int) -> tuple[np.ndarray, np.ndarray, int]:
    """A strided sample of a ``...YXC`` array, which sampled pixels are informative, and the stride.

    Sampled pixels are rows and columns ``0, stride, 2 * stride, ...``. A pixel is *uninformative* when it equals both its lower and right neighbours, or both its
    upper and left ones, in every channel (constant padding, empty mosaic gaps, zero-filled
    borders of a registered stack; the second test makes a padding edge that touches content
    count as padding too), or is not finite (NaN masks). Such regions say nothing about the
    objects, and counting them would let the amount of padding around an image move its
    percentiles.
    """
    shape = tuple(image.shape)
    size = int(np.prod(shape))
    if len(shape) < 3 or shape[-3] < 2 or shape[-2] < 2:
        v = _subsample(image, max_samples).astype(np.float32, copy=False)
        return v, np.isfinite(v).all(axis=-1), 0
    stride = 1 if size <= max_samples else int(np.ceil((size / max_samples) ** (1.0 / (len(shape) - 1))))
    h, w = shape[-3], shape[-2]
    lead = [slice(None, None, stride)] * (len(shape) - 3)

    def read(ys: slice, xs: slice) -> np.ndarray:
        return np.asarray(image[tuple(lead + [ys, xs, slice(None)])], dtype=np.float32)

    def neighbour(v: np.ndarray, shifted: np.ndarray, axis: int, before: bool) -> np.ndarray:
        """``shifted`` completed to ``v``'s shape with ``v``'s own edge (no neighbour there)."""
        missing = v.shape[axis] - shifted.shape[axis]
        if not missing:
            return shifted
        edge = np.take(v, [0] * missing if before else [v.shape[axis] - 1] * missing, axis=axis)
        return np.concatenate([edge, shifted] if before else [shifted, edge], axis=axis)

    v = read(slice(0, h, stride), slice(0, w, stride))
    down = neighbour(v, read(slice(1, h, stride), slice(0, w, stride)), -3, before=False)
    up = neighbour(v, read(slice(stride - 1, h - 1, stride), slice(0, w, stride)), -3, before=True)
    right = neighbour(v, read(slice(0, h, stride), slice(1, w, stride)), -2, before=False)
    left = neighbour(v, read(slice(0, h, stride), slice(stride - 1, w - 1, stride)), -2, before=True)
    flat = (((v == down) & (v == right)) | ((v == up) & (v == left))).all(axis=-1)
    return v, ~flat & np.isfinite(v).all(axis=-1), stride


def content_box(image: Any, max_samples: int = MAX_SAMPLES, noise_borders: bool = False) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)`` around the informative pixels of a ``...YXC`` array (any plane).

    Flat or NaN borders (padding) fall outside it, and with ``noise_borders`` borders of noise-only
    lines too (:func:`inside_noise_borders`); it is the whole plane when nothing is
    informative. Exact for arrays up to ``max_samples`` values; for larger ones it errs by
    less than the sampling stride towards keeping pixels.
    """
    h, w = int(image.shape[-3]), int(image.shape[-2])
    plane, stride = _informative_plane(image, max_samples, noise_borders)
    if plane is None:
        return 0, h, 0, w
    rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    if not rows.size:
        return 0, h, 0, w
    return _pixel_box((int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1), plane.shape, stride, (h, w))


#: Flat bands narrower than this (pixels) do not separate panels.
MIN_GAP = 3


def content_panels(image: Any, max_samples: int = MAX_SAMPLES, min_gap: int = MIN_GAP,
                   noise_borders: bool = False) -> list[tuple[int, int, int, int]]:
    """Boxes ``(y0, y1, x0, x1)`` of the panels of a ``...YXC`` array: its content split at flat bands.

    A mosaic or montage whose tiles are separated by empty (flat, zero or NaN) rows or columns
    that cross it entirely is cut there, recursively (an XY cut), and each panel is trimmed to
    its own informative pixels. Each panel can then be run as the image it is, its edges
    mirrored as any image's are, so its objects get the labels they get alone, whatever lies
    beyond the gap. An image without such bands is one panel, :func:`content_box`. With
    ``noise_borders``, borders of noise-only lines around the whole array are padding too.
    """
    h, w = int(image.shape[-3]), int(image.shape[-2])
    plane, stride = _informative_plane(image, max_samples, noise_borders)
    if plane is None or not plane.any():
        return [content_box(image, max_samples, noise_borders)]
    gap = max(1, -(-min_gap // max(stride, 1)))
    boxes = _xy_cut(plane, (0, plane.shape[0], 0, plane.shape[1]), gap)
    return [_exact_edges(image, _pixel_box(b, plane.shape, stride, (h, w)), stride) for b in boxes]


def _exact_edges(image: Any, box: tuple[int, int, int, int], stride: int) -> tuple[int, int, int, int]:
    """A box found on a strided sample, its edges moved onto the first/last informative pixel line.

    The sampled box errs by less than ``stride`` towards keeping padding; a panel's start decides its
    model grid and pooling phase, so each edge is re-read at full resolution (a strip ``stride`` wide).
    """
    if stride <= 1:
        return box
    h, w = int(image.shape[-3]), int(image.shape[-2])
    y0, y1, x0, x1 = box

    def lines(ys: tuple[int, int], xs: tuple[int, int], axis: int) -> np.ndarray:
        strip = image[..., ys[0]:ys[1], xs[0]:xs[1], :]
        _, informative, _ = _informative_grid(strip, int(np.prod(strip.shape)) + 1)
        flat = informative.reshape((-1,) + informative.shape[-2:]).any(axis=0)
        return np.flatnonzero(flat.any(axis=1 - axis))

    top = lines((max(0, y0 - 2), min(y1, y0 + stride + 1)), (x0, x1), 0) + max(0, y0 - 2)
    bottom = lines((max(y0, y1 - stride - 1), min(h, y1 + 2)), (x0, x1), 0) + max(y0, y1 - stride - 1)
    left = lines((y0, y1), (max(0, x0 - 2), min(x1, x0 + stride + 1)), 1) + max(0, x0 - 2)
    right = lines((y0, y1), (max(x0, x1 - stride - 1), min(w, x1 + 2)), 1) + max(x0, x1 - stride - 1)
    ny0 = int(top[top >= y0][0]) if (top >= y0).any() else y0
    ny1 = int(bottom[bottom < y1][-1]) + 1 if (bottom < y1).any() else y1
    nx0 = int(left[left >= x0][0]) if (left >= x0).any() else x0
    nx1 = int(right[right < x1][-1]) + 1 if (right < x1).any() else x1
    return ny0, ny1, nx0, nx1


def _informative_plane(image: Any, max_samples: int, noise_borders: bool = False) -> tuple[np.ndarray | None, int]:
    """Which sampled pixels of any plane are informative (``Y, X`` over the sample grid) and the stride.

    ``noise_borders``: pixels outside :func:`inside_noise_borders` are not (unless that leaves none).
    """
    v, informative, stride = _informative_grid(image, max_samples)
    if not stride:
        return None, 0
    if noise_borders:
        informative = _skip_noise_borders(v, informative)
    return informative.reshape((-1,) + informative.shape[-2:]).any(axis=0), stride


def _pixel_box(box: tuple[int, int, int, int], sampled: tuple[int, int], stride: int,
               shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A box of sample-grid indices (stop exclusive) as input pixels: padding samples lie outside it."""

    def bounds(first: int, stop: int, n_sampled: int, length: int) -> tuple[int, int]:
        lo = 0 if first == 0 else (first - 1) * stride + 1       # just past the last padding sample
        hi = length if stop == n_sampled else stop * stride       # the next padding sample
        return lo, min(length, hi)

    y0, y1 = bounds(box[0], box[1], sampled[0], shape[0])
    x0, x1 = bounds(box[2], box[3], sampled[1], shape[1])
    return y0, y1, x0, x1


def _xy_cut(plane: np.ndarray, box: tuple[int, int, int, int], gap: int) -> list[tuple[int, int, int, int]]:
    """Recursive XY cut of ``plane[box]`` at runs of at least ``gap`` empty rows or columns."""
    y0, y1, x0, x1 = box
    sub = plane[y0:y1, x0:x1]
    rows, cols = np.flatnonzero(sub.any(axis=1)), np.flatnonzero(sub.any(axis=0))
    if not rows.size:
        return []
    y0, y1, x0, x1 = y0 + int(rows[0]), y0 + int(rows[-1]) + 1, x0 + int(cols[0]), x0 + int(cols[-1]) + 1
    for axis, used in ((0, rows - rows[0]), (1, cols - cols[0])):
        jumps = np.flatnonzero(np.diff(used) > gap)
        if not jumps.size:
            continue
        start = y0 if axis == 0 else x0
        cuts = [start] + [start + int(used[j]) + 1 for j in jumps] + [y1 if axis == 0 else x1]
        out: list[tuple[int, int, int, int]] = []
        for a, b in zip(cuts, cuts[1:]):
            out.extend(_xy_cut(plane, (a, b, x0, x1) if axis == 0 else (y0, y1, a, b), gap))
        return out
    return [(y0, y1, x0, x1)]


#: Fewer informative pixels than this fraction of the sample: the image is mostly flat, use all of it.
MIN_INFORMATIVE = 0.05
#: A border line holds only noise when, smoothed along itself, no pixel strays further than this many
#: noise sigmas from the line's median (white noise: ~4 over 10^4 pixels; a nucleus or a star: tens).
NOISE_LINE_SIGMAS = 6.0
#: Gaussian sigma (sample pixels) smoothing each line before that test: faint objects wider than a few
#: pixels rise out of the noise, which falls by sqrt(2 sqrt(pi) sigma).
NOISE_LINE_SMOOTHING = 2.0


def noise_lines(planes: np.ndarray, informative: np.ndarray) -> np.ndarray:
    """Which lines of ``planes`` (``P, N, L``: P planes of N lines of L pixels) hold only white noise.

    A line is noise in a plane when its informative pixels, smoothed along the line, all stay within
    :data:`NOISE_LINE_SIGMAS` noise sigmas of their median; the sigma is the line's own, from the
    median absolute difference of neighbouring pixels (smooth gradients and objects barely move it).
    Lines with no informative pixel count as noise; a line is noise when it is in every plane.
    """
    from scipy.ndimage import gaussian_filter1d

    values = np.where(informative, planes, np.nan)
    with warnings.catch_warnings():  # lines with no informative pixel: NaN statistics, counted as noise
        warnings.simplefilter("ignore", RuntimeWarning)
        level = np.nanmedian(values, axis=-1, keepdims=True)
        steps = np.diff(values, axis=-1)
        spread = np.nanmedian(np.abs(steps - np.nanmedian(steps, axis=-1, keepdims=True)), axis=-1)
        sigma = 1.4826 * spread / np.sqrt(2.0) / np.sqrt(2.0 * np.sqrt(np.pi) * NOISE_LINE_SMOOTHING)
        smooth = gaussian_filter1d(np.where(informative, planes, np.nan_to_num(level)), NOISE_LINE_SMOOTHING,
                                   axis=-1)
        stray = np.where(informative, np.abs(smooth - level), 0.0).max(axis=-1, initial=0.0)
        quiet = stray < NOISE_LINE_SIGMAS * sigma  # False where sigma is 0 (flat lines) or NaN
    return (quiet | ~informative.any(axis=-1)).all(axis=0)


def inside_noise_borders(v: np.ndarray, informative: np.ndarray) -> np.ndarray:
    """The box of a sampled ``...YXC`` array inside its borders of noise-only rows and columns (``Y, X``).

    A frame of background noise (a padded acquisition, a detector's empty margin) holds no objects,
    but counting its pixels would move an image's percentiles as much as flat padding does; flat and
    NaN lines are skipped alike. Lines are peeled from each side until one holds more than noise
    (:func:`noise_lines`); an image whose edges cross objects keeps every pixel, and so gets the
    percentiles it always had. All noise: the whole plane.
    """
    h, w, c = v.shape[-3:]
    planes = np.moveaxis(v.reshape(-1, h, w, c), -1, 1).reshape(-1, h, w)
    mask = np.repeat(informative.reshape(-1, h, w), c, axis=0)
    box = np.ones((h, w), bool)
    y0, x0 = _peel(planes, mask), _peel(planes.transpose(0, 2, 1), mask.transpose(0, 2, 1))
    if y0 == h or x0 == w:
        return box
    y1 = h - _peel(planes[:, ::-1], mask[:, ::-1])
    x1 = w - _peel(planes[:, :, ::-1].transpose(0, 2, 1), mask[:, :, ::-1].transpose(0, 2, 1))
    box[:] = False
    box[y0:y1, x0:x1] = True
    return box


def _peel(planes: np.ndarray, mask: np.ndarray) -> int:
    """How many leading lines of ``planes`` (``P, N, L``) are noise; tested a few at a time from the edge,
    since most images' first line already crosses an object."""
    n, start, step = planes.shape[1], 0, 8
    while start < n:
        stop = min(n, start + step)
        noise = noise_lines(planes[:, start:stop], mask[:, start:stop])
        if not noise.all():
            return start + int(np.argmin(noise))
        start, step = stop, 2 * step
    return n


def _skip_noise_borders(v: np.ndarray, informative: np.ndarray) -> np.ndarray:
    """``informative`` less the pixels outside :func:`inside_noise_borders` (unchanged if that leaves none)."""
    inside = informative & inside_noise_borders(v, informative)
    return inside if inside.any() else informative


def _finite_channels(image: Any, max_samples: int, skip_noise_borders: bool = False) -> list[np.ndarray]:
    """Each channel's finite informative sampled values (flat/NaN pixels and, if asked, noise borders left out)."""
    v, informative, stride = _informative_grid(image, max_samples)
    sample = v.reshape(-1, v.shape[-1])
    if skip_noise_borders and stride:  # planes: noise-only borders say as little about the objects as padding
        informative = _skip_noise_borders(v, informative)
    informative = informative.reshape(-1)
    if informative.mean() < MIN_INFORMATIVE:
        informative = np.ones_like(informative)
    out = []
    for c in range(sample.shape[1]):
        values = sample[:, c]
        finite = np.isfinite(values)
        if not finite.any():
            raise ValueError(f"channel {c} of the image has no finite values (all NaN/inf)")
        chosen = values[finite & informative]
        out.append(chosen if chosen.size else values[finite])
    return out


def fit_normalizer(image: Any, method: str = "percentile", low: float = 1.0, high: float = 99.8,
                   softening: float = 3.0, max_samples: int = MAX_SAMPLES) -> Normalizer:
    """Normaliser for a channel-last array (``...YXC``), one range per channel.

    Parameters
    ----------
    method : ``"percentile"`` maps the ``low``/``high`` percentiles to 0/1 (microscopy);
        ``"asinh"`` subtracts the sigma-clipped sky level and applies an asinh stretch
        with ``softening`` noise sigmas (astronomy, where percentiles of a mostly-empty
        sky would amplify noise).

    Percentiles are taken inside the image's borders of noise-only lines
    (:func:`inside_noise_borders`): the high one is a statistic of the objects, which background
    added around them would dilute. The sky statistics of ``"asinh"`` are a statistic of the
    background itself, which sky-like pixels around it do not move, so they count every pixel.

    Raises ``ValueError`` when a channel has no finite value at all.
    """
    channels = _finite_channels(image, max_samples, skip_noise_borders=method == "percentile")
    lo = np.empty(len(channels), np.float32)
    hi = np.empty(len(channels), np.float32)
    for c, values in enumerate(channels):
        if method == "asinh":
            from astropy.stats import sigma_clipped_stats

            # axis given: astropy's C implementation of the same clipping (same values, half the time)
            _, median, std = sigma_clipped_stats(values, sigma=3.0, maxiters=5, axis=0)
            lo[c], hi[c] = median, median + softening * max(float(std), 1e-12)
        elif method == "percentile":
            lo[c], hi[c] = np.percentile(values, [low, high])
        else:
            raise ValueError(f"unknown normalisation method '{method}' (percentile or asinh)")
        if hi[c] - lo[c] < 1e-12:  # constant channel: avoid dividing by zero
            hi[c] = lo[c] + max(abs(lo[c]), 1.0)
    return Normalizer(lo, hi, "asinh" if method == "asinh" else "linear")


def normalize(image: np.ndarray, **config: Any) -> np.ndarray:
    """Normalise a channel-last array in memory (``config`` as for :func:`fit_normalizer`)."""
    return fit_normalizer(image, **config)(image)


class NormalizedPlane:
    """Lazy ``YXC`` view that normalises only the blocks it is asked for (for tiling)."""

    def __init__(self, plane: Any, normalizer: Normalizer):
        self.plane = plane
        self.normalizer = normalizer
        self.shape = tuple(plane.shape)

    def __getitem__(self, key) -> np.ndarray:
        return self.normalizer(np.asarray(self.plane[key]))
