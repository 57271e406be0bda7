"""Mirror frames: border bands that are an exact mirror image of the content next to them.

``np.pad(image, w, mode="reflect")`` (or ``"symmetric"``) adds no pixel the image does not
already hold: each band line is a copy of a line at the same distance on the other side of a
mirror axis. Counting those lines would re-weight the pixels near the edge in the normaliser's
and the size estimate's statistics, and running the network on them would show it, beyond the
image's own edge, content other than the mirror the engine itself pads with. So a mirror band is
padding: :func:`mirror_frame` finds it exactly (byte-equal lines, full resolution, each side on
its own), the content inside runs as the plain image would, and :func:`mirror_labels` gives the
band the mirror image of the content's labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

#: Narrower bands are not mirrors: a few equal lines about an axis occur in flat-background images.
MIN_MIRROR = 4
#: Widest band looked for (pixels): bounds the edge strips read from a lazy array (2 × this + 1 lines a side).
MAX_MIRROR = 512
#: Edge strips are read this many lines at first, then 4× as many until a mirror is found or the cap reached.
FIRST_READ = 65


@dataclass(frozen=True)
class MirrorFrame:
    """The mirror bands around a plane's content: the box inside them and each band's ``np.pad`` mode.

    ``modes`` are (top, bottom, left, right); ``""`` for a side without a band. ``reflect`` mirrors
    about the content's edge line, ``symmetric`` about the edge between that line and the band.
    """

    shape: tuple[int, int]
    box: tuple[int, int, int, int]
    modes: tuple[str, str, str, str]

    def source(self, axis: int, coords: np.ndarray) -> np.ndarray:
        """The content coordinate each coordinate along ``axis`` (0: Y, 1: X) is a mirror image of."""
        lo, hi = self.box[2 * axis], self.box[2 * axis + 1]
        m_lo, m_hi = self.modes[2 * axis], self.modes[2 * axis + 1]
        c = np.asarray(coords, np.int64).copy()
        below, above = c < lo, c >= hi
        c[below] = 2 * lo - c[below] - (m_lo == "symmetric")
        c[above] = 2 * (hi - 1) - c[above] + (m_hi == "symmetric")
        return c

    def zone(self, axis: int, coords: np.ndarray) -> np.ndarray:
        """-1 in the band before the content, 0 inside it, 1 in the band after it."""
        lo, hi = self.box[2 * axis], self.box[2 * axis + 1]
        c = np.asarray(coords)
        return (c >= hi).astype(np.int64) - (c < lo)


def mirror_frame(image: Any, min_width: int = MIN_MIRROR, max_width: int = MAX_MIRROR) -> MirrorFrame | None:
    """The exact mirror bands of a ``...YXC`` array (every plane and channel alike), or ``None``.

    A band of ``w`` lines on a side is a mirror when its lines equal, byte for byte, the lines
    mirrored about an axis next to it (``np.pad`` modes ``reflect`` and ``symmetric``), ``w`` is at
    least ``min_width`` and the band holds two different lines and one that is not flat (edge padding,
    one line repeated, mirrors itself; flat padding is for
    :func:`~napari_segtool.ops.normalize.content_panels`). Each side is tested on its own, from
    full-resolution edge strips (a lazy array is read only there); the widest mirror wins.
    """
    h, w = int(image.shape[-3]), int(image.shape[-2])
    widths: list[tuple[int, str]] = []
    for axis, n in ((0, h), (1, w)):
        for end in (False, True):
            widths.append(_side(image, axis, end, n, min_width, max_width))
    (t, tm), (b, bm), (l, lm), (r, rm) = widths
    # the mirrored lines must be content, not the opposite band: otherwise the axis has no frame
    if t + b and (_reach(t, tm) > h - b or _reach(b, bm) > h - t):
        (t, tm), (b, bm) = (0, ""), (0, "")
    if l + r and (_reach(l, lm) > w - r or _reach(r, rm) > w - l):
        (l, lm), (r, rm) = (0, ""), (0, "")
    if not (t or b or l or r):
        return None
    return MirrorFrame((h, w), (t, h - b, l, w - r), (tm, bm, lm, rm))


def _reach(width: int, mode: str) -> int:
    """Lines from the edge that a band of ``width`` and its mirror image span."""
    return 2 * width + 1 if mode == "reflect" else 2 * width


def _side(image: Any, axis: int, end: bool, n: int, min_width: int, max_width: int) -> tuple[int, str]:
    """Width and mode of the mirror band on one side (``axis`` 0: rows, 1: columns; ``end``: bottom/right).

    Lines are hashed strip by strip from the edge inward (a first strip, then 4× more lines each time),
    each line read once, until a mirror is confirmed or the widest band's mirror image has been read."""
    cap = min(max_width, (n - 1) // 2)
    if cap < min_width:
        return 0, ""
    limit = min(n, 2 * cap + 1)
    digest = np.empty(0, np.int64)
    while True:
        k = digest.size
        stop = min(limit, max(FIRST_READ, 4 * k))
        digest = np.concatenate([digest, [hash(line.tobytes()) for line in _edge_lines(image, axis, end, k, stop)]])
        found = _widest_mirror(digest, lambda a, shift: _confirmed(image, axis, end, a, shift), min_width, cap)
        if found[0] or stop >= limit:
            return found


def _edge_lines(image: Any, axis: int, end: bool, start: int, stop: int) -> np.ndarray:
    """Lines ``start..stop`` counted from one edge inward: ``(stop - start, planes, length, channels)``."""
    n = int(image.shape[-3 + axis])
    key = [slice(None)] * len(image.shape)
    key[-3 + axis] = slice(n - stop, n - start) if end else slice(start, stop)
    strip = np.asarray(image[tuple(key)])
    strip = np.moveaxis(strip, -3 + axis, 0)            # (lines, stack..., length, C)
    strip = strip.reshape((strip.shape[0], -1) + strip.shape[-2:])
    return np.ascontiguousarray(strip[::-1] if end else strip)


def _widest_mirror(digest: np.ndarray, confirmed: Callable[[int, int], bool], min_width: int,
                   cap: int) -> tuple[int, str]:
    """The widest band (first ``a`` lines) that mirrors the lines after it (reflect or symmetric), or ``(0, "")``.

    Candidates come from hashes of whole lines (a natural image has no two equal lines, so there
    are almost none); each is ``confirmed`` by comparing the bytes of the band and its mirror image.
    """
    k = digest.size
    best: tuple[int, str] = (0, "")
    for mode, shift in (("reflect", 1), ("symmetric", 0)):
        # axis a: band lines a-1, a-2, ... equal lines a+shift, a+shift+1, ...
        for a in range(min_width, min(cap, (k - shift) // 2) + 1):
            if a <= best[0] or digest[a - 1] != digest[a + shift]:
                continue
            if (np.array_equal(digest[:a], digest[a + shift:2 * a + shift][::-1])
                    and len(set(digest[:a].tolist())) > 1 and confirmed(a, shift)):
                best = (a, mode)
    return best


def _confirmed(image: Any, axis: int, end: bool, a: int, shift: int) -> bool:
    """Whether the band of ``a`` lines is, byte for byte, the mirror of the lines after it, and not flat."""
    lines = _edge_lines(image, axis, end, 0, 2 * a + shift)
    mirrored = np.ascontiguousarray(lines[a + shift:][::-1])
    return lines[:a].tobytes() == mirrored.tobytes() and not _flat(lines[:a])


def _flat(band: np.ndarray) -> bool:
    """Whether every line of ``band`` (``(k, planes, length, C)``) is constant along itself (NaN ignored)."""
    with np.errstate(invalid="ignore"):
        lo, hi = np.fmin.reduce(band, axis=2), np.fmax.reduce(band, axis=2)
    return not bool((hi > lo).any())


def source_rect(frame: MirrorFrame, rect: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """The content pixels whose mirror images (or themselves) lie in ``rect`` (image coordinates)."""
    out = []
    for axis in (0, 1):
        coords = np.arange(max(0, rect[2 * axis]), min(frame.shape[axis], rect[2 * axis + 1]))
        if not coords.size:
            return None
        src = frame.source(axis, coords)
        out += [int(src.min()), int(src.max()) + 1]
    return out[0], out[1], out[2], out[3]


def mirror_values(values: np.ndarray, frame: MirrorFrame, offset: tuple[int, int]) -> np.ndarray:
    """A window's array (``..., Y, X``, at ``offset`` in the image) with each band pixel set to its source's
    value where that source lies in the window, 0 where it does not."""
    iy, ix, ok = _window_sources(values.shape[-2:], frame, offset)
    out = values[..., iy[:, None], ix[None, :]]
    out[..., ~ok] = 0
    return out


def _window_sources(hw: tuple[int, ...], frame: MirrorFrame, offset: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window indices of each window pixel's source, and where that source lies in the window."""
    idx = []
    for axis in (0, 1):
        src = frame.source(axis, np.arange(hw[axis]) + offset[axis]) - offset[axis]
        idx.append(src)
    iy, ix = idx
    ok = ((iy >= 0) & (iy < hw[0]))[:, None] & ((ix >= 0) & (ix < hw[1]))[None, :]
    return np.clip(iy, 0, hw[0] - 1), np.clip(ix, 0, hw[1] - 1), ok


def mirror_labels(labels: np.ndarray, frame: MirrorFrame, offset: tuple[int, int], instance: bool) -> np.ndarray:
    """A window's labels (``..., Y, X``; the content labelled, the bands 0) with the bands' labels filled in.

    Each band pixel takes its source's label (:func:`mirror_values`). For instance labels, the window is
    cut into the content and the (up to 8) band zones around it, each zone holding one copy of each
    object it mirrors; copies of an object that touch across a zone's edge (4-connected, e.g. an object
    crossing a mirror axis, or a corner's copy beside a side band's) are one object, with the object's
    own id when the content's is among them; every other copy is an object with a new id.
    """
    out = mirror_values(labels, frame, offset)
    if not instance or not out.any():
        return out
    hw = labels.shape[-2:]
    zones = [frame.zone(axis, np.arange(hw[axis]) + offset[axis]) for axis in (0, 1)]
    parent: dict[tuple[int, int, int], tuple[int, int, int]] = {}

    def root(node: tuple[int, int, int]) -> tuple[int, int, int]:
        while parent.get(node, node) != node:
            node = parent[node]
        return node

    for axis in (0, 1):  # copies meeting across each edge between zones, zone by zone along it
        z, other = zones[axis], zones[1 - axis]
        for line in np.flatnonzero(np.diff(z)):
            a, b = np.take(out, line, axis=out.ndim - 2 + axis), np.take(out, line + 1, axis=out.ndim - 2 + axis)
            meet = (a == b) & (a > 0)
            for e in (-1, 0, 1):
                for k in np.unique(a[meet & (other == e)]).tolist():
                    ends = [(int(z[line]), e, k), (int(z[line + 1]), e, k)] if axis == 0 else \
                        [(e, int(z[line]), k), (e, int(z[line + 1]), k)]
                    ra, rb = sorted((root(n) for n in ends), key=lambda n: (n[:2] != (0, 0), n))
                    if ra != rb:
                        parent[rb] = ra  # the content's copy, if any, stays the root
    top = int(labels.max())
    new_ids: dict[tuple[int, int, int], int] = {}
    for ey in (-1, 0, 1):
        for ex in (-1, 0, 1):
            rows, cols = np.flatnonzero(zones[0] == ey), np.flatnonzero(zones[1] == ex)
            if (ey, ex) == (0, 0) or not rows.size or not cols.size:
                continue
            part = out[..., rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
            lut = np.zeros(top + 1, out.dtype)
            for k in np.unique(part[part > 0]).tolist():
                r = root((ey, ex, k))
                lut[k] = k if r[:2] == (0, 0) else new_ids.setdefault(r, top + len(new_ids) + 1)
            part[...] = lut[part]
    return out
