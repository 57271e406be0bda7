"""Tiled application of a dense network to planes of any size.

The plane is cut into overlapping tiles; each tile carries a *halo* of at least
half the network's receptive field, so every output pixel that is kept saw all of
its context. Tiles are weighted by a window that is 1 in the tile core and falls
smoothly (raised cosine) to ~0 across the halo, and the weighted outputs are
averaged: there are no seams, and the result matches a whole-plane prediction.
Tile positions are multiples of the network's downsampling factor so pooling
grids line up between neighbouring tiles.

Memory is bounded by the tile size and the output accumulator, never by a copy of
a lazy input: the input only needs ``shape`` and ``__getitem__`` (numpy, dask,
zarr, or :class:`NormalizedPlane`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

import numpy as np
import torch

from napari_segtool.kernel.events import CancelToken
from napari_segtool.ops.chunked import placement, wanted


class PlaneLike(Protocol):
    shape: tuple[int, ...]

    def __getitem__(self, key): ...


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def halo_for(receptive_field: int, align: int) -> int:
    """Halo (pixels each side) covering half the receptive field, aligned to ``align``."""
    return round_up(max(1, (receptive_field + 1) // 2), align)


@dataclass(frozen=True)
class Tile:
    """A tile's input window ``y0:y0+size, x0:x0+size`` in plane coordinates (may cross borders)."""

    y0: int
    x0: int
    size: int


def tile_starts(length: int, size: int, halo: int, align: int) -> list[int]:
    """Start offsets (possibly negative: the tile then reaches into border padding)."""
    if length + 2 * halo <= size:
        return [-halo]
    step = size - 2 * halo
    if step <= 0:
        raise ValueError(f"tile size {size} must exceed twice the halo {halo}")
    step = max(align, (step // align) * align)
    starts = list(range(-halo, length - size + halo, step))
    last = length + halo - size
    last = -halo + round_up(last + halo, align)  # keep the pooling grid aligned
    if not starts or starts[-1] < last:
        starts.append(last)
    return starts


def even_tile_size(shape: tuple[int, int], max_size: int, halo: int, align: int) -> int:
    """The smallest tile size (on the ``align`` grid) that covers ``shape`` with as few tiles as tiles of
    ``max_size`` would.

    Tiles of a fixed size waste the part of the last tile that hangs over the plane (a 2048² plane in
    tiles of 1024 with a 96 px halo needs 3×3 tiles, the last row and column mostly padding); spreading
    the plane evenly over the same number of tiles computes only what is needed.
    """
    core = max(align, max_size - 2 * halo)
    sizes = []
    for length in shape:
        n = -(-length // core)
        sizes.append(round_up(-(-length // n) + 2 * halo, align))
    return min(round_up(max_size, align), max(sizes))


def tiled_pixels(shape: tuple[int, int], tile_size: int, halo: int, align: int) -> int:
    """Pixels the network computes for a plane of ``shape`` in :func:`tiled_apply`'s tiles."""
    size = plan_tile_size(shape, tile_size, halo, align)
    return len(make_tiles(shape, size, halo, align)) * size * size


def tile_overhead(shape: tuple[int, int], tile_size: int, halo: int, align: int) -> float:
    """Pixels the network computes per pixel of the plane (1.0: no halo, no overlap)."""
    return tiled_pixels(shape, tile_size, halo, align) / float(shape[0] * shape[1])


def make_tiles(shape: tuple[int, int], size: int, halo: int, align: int) -> list[Tile]:
    ys = tile_starts(shape[0], size, halo, align)
    xs = tile_starts(shape[1], size, halo, align)
    return [Tile(y, x, size) for y in ys for x in xs]


def read_padded(plane: PlaneLike, tile: Tile) -> np.ndarray:
    """Read a tile's window (``YXC``), reflect-padding where it leaves the plane."""
    return read_box(plane, (tile.y0, tile.y0 + tile.size, tile.x0, tile.x0 + tile.size))


def read_box(plane: PlaneLike, box: tuple[int, int, int, int]) -> np.ndarray:
    """Read ``plane[y0:y1, x0:x1]`` (``YXC``, may cross the borders), reflect-padding where it leaves the plane."""
    h, w = plane.shape[:2]
    y0, y1, x0, x1 = box
    ya, yb = max(0, y0), min(h, y1)
    xa, xb = max(0, x0), min(w, x1)
    block = np.asarray(plane[ya:yb, xa:xb], dtype=np.float32)
    pad = ((ya - y0, y1 - yb), (xa - x0, x1 - xb), (0, 0))
    if any(p for pair in pad[:2] for p in pair):
        # numpy reflects repeatedly when the pad is wider than the block
        block = np.pad(block, pad, mode="reflect")
    return block


def blend_window(size: int, halo: int) -> np.ndarray:
    """1D raised-cosine window: ~0 at the tile edge, 1 from ``halo`` inwards."""
    w = np.ones(size, dtype=np.float32)
    if halo > 0:
        ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(halo, dtype=np.float32) + 0.5) / halo)
        w[:halo] = ramp
        w[size - halo:] = ramp[::-1]
    return np.maximum(w, 1e-4)


def plan_tile_size(shape: tuple[int, int], tile_size: int, halo: int, align: int) -> int:
    """The tile size :func:`tiled_apply` uses for a plane of ``shape``: at most ``tile_size`` (on the
    ``align`` grid, more than twice the halo), spread evenly over the plane (:func:`even_tile_size`)."""
    size = max(round_up(tile_size, align), round_up(2 * halo + align, align))
    return max(even_tile_size(shape, size, halo, align), round_up(2 * halo + align, align))


#: most pixels in one batch of tiles: batching large tiles gains nothing on a CPU and doubles the memory
#: (ONNX Runtime, 880² tiles: batch 2 used 1057 MB more than the model, batch 1 566 MB)
BATCH_PIXELS = 2 * 512 * 512


def tiled_apply(
    fn: Callable[[torch.Tensor], torch.Tensor],
    plane: PlaneLike,
    out_channels: int,
    *,
    tile_size: int,
    halo: int,
    align: int = 1,
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    progress: Callable[[int, int], None] | None = None,
    cancel: CancelToken | None = None,
    batch_pixels: int = BATCH_PIXELS,
) -> np.ndarray:
    """Apply ``fn`` (``B,C,S,S`` -> ``B,K,S,S``) over overlapping tiles of a ``YXC`` plane.

    Returns the blended ``(K, Y, X)`` float32 output. ``tile_size`` is rounded up to
    ``align`` and shrunk to the plane (plus halo) when the plane is small (:func:`plan_tile_size`).
    A batch holds at most ``batch_size`` tiles and ``batch_pixels`` pixels (at least one tile).

    A window of a larger plane that says which of its pixels are wanted
    (:class:`~napari_segtool.ops.chunked.PlacedPlane` with ``wanted``) runs the tiles of the *whole plane's*
    grid that reach those pixels, each cut to them plus the halo (the window's other pixels are context,
    never tile output), and blends them with the whole plane's weights: its outputs are a whole-plane run's
    wherever a tile is not cut, and every path (whole plane, chunks) runs the same grid. Unwanted pixels are 0.
    """
    h, w = plane.shape[:2]
    origin, plane_hw, box = tiling_frame(plane)
    size = plan_tile_size(plane_hw, tile_size, halo, align)
    tiles = [t for t in make_tiles(plane_hw, size, halo, align)
             if t.y0 < box[1] and t.y0 + size > box[0] and t.x0 < box[3] and t.x0 + size > box[2]]
    cuts = [_cut(t, box, halo, align, plane_hw) for t in tiles]
    out = np.zeros((out_channels, h, w), dtype=np.float32)
    win1d = blend_window(size, halo)
    # a tile's weight is wy ⊗ wx and the tiles form a grid, so the summed weight is the outer product of
    # two profiles: no (Y, X) weight plane (4 bytes per pixel of the image) is kept
    weight_y = _profile({t.y0 for t in tiles}, size, halo, plane_hw[0], win1d, box[0], box[1])
    weight_x = _profile({t.x0 for t in tiles}, size, halo, plane_hw[1], win1d, box[2], box[3])
    done = 0
    for batch in _same_shape_batches(list(zip(tiles, cuts)), max(1, min(batch_size, batch_pixels // (size * size)))):
        if cancel is not None:
            cancel.raise_if_cancelled()
        arrays = np.stack([read_box(plane, (c[0] - origin[0], c[1] - origin[0], c[2] - origin[1], c[3] - origin[1]))
                           for _, c in batch])  # B,S,S,C
        x = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous().to(device)
        with torch.inference_mode():
            y = fn(x).float().cpu().numpy()
        for (t, c), pred in zip(batch, y):
            _accumulate(out, pred, t, c, box, origin, win1d, halo, plane_hw)
        done += len(batch)
        if progress is not None:
            progress(done, len(tiles))
    ya, yb, xa, xb = box[0] - origin[0], box[1] - origin[0], box[2] - origin[1], box[3] - origin[1]
    for y0 in range(ya, yb, 256):  # row blocks: no whole-plane temporary
        y1 = min(yb, y0 + 256)
        out[:, y0:y1, xa:xb] /= weight_y[y0 - ya:y1 - ya, None] * weight_x[None, :]
    return out


def tiling_frame(plane: PlaneLike) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    """``(origin, plane_hw, box)`` :func:`tiled_apply` tiles ``plane`` in: the window's place in the whole plane,
    the whole plane's size and the wanted pixels ``(y0, y1, x0, x1)`` in plane coordinates. A plane that does not
    say which of its pixels are wanted is tiled as a whole plane of its own."""
    h, w = (int(n) for n in plane.shape[:2])
    need = wanted(plane)
    if need is None:
        return (0, 0), (h, w), (0, h, 0, w)
    (oy, ox), plane_hw = placement(plane)
    return (oy, ox), plane_hw, (oy + need[0], oy + need[1], ox + need[2], ox + need[3])


def _cut(tile: Tile, box: tuple[int, int, int, int], halo: int, align: int,
         plane_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """The part of ``tile`` (plane coordinates) that the wanted ``box`` needs: its pixels plus ``halo`` of context,
    on the pooling grid; never cut at the plane's own border, where the whole plane's tiles are read alike."""
    out = []
    for start, lo, hi, length in ((tile.y0, box[0], box[1], plane_hw[0]), (tile.x0, box[2], box[3], plane_hw[1])):
        a, b = start, start + tile.size
        if lo > 0:
            a = max(a, ((lo - halo) // align) * align)
        if hi < length:
            b = min(b, round_up(hi + halo, align))
        out += [a, b]
    return out[0], out[1], out[2], out[3]


def _same_shape_batches(items: list, batch_size: int) -> Iterator[list]:
    """Consecutive ``(tile, cut)`` pairs in batches of at most ``batch_size`` whose cuts have one shape."""
    batch: list = []
    for item in items:
        shape = (item[1][1] - item[1][0], item[1][3] - item[1][2])
        if batch and (len(batch) == batch_size or shape != (batch[0][1][1] - batch[0][1][0],
                                                             batch[0][1][3] - batch[0][1][2])):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def _profile(starts: set, size: int, halo: int, length: int, win1d: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Summed blending weight along one axis over plane positions ``lo:hi`` of the tiles starting at ``starts``."""
    weight = np.zeros(hi - lo, np.float32)
    for start in sorted(starts):
        span, part, wts = _window_1d(start, size, halo, length, win1d)
        a, b = max(span.start, lo), min(span.stop, hi)
        if b > a:
            weight[a - lo:b - lo] += wts[a - start:b - start]
    return weight


def _window_1d(start: int, size: int, halo: int, length: int, win1d: np.ndarray) -> tuple[slice, slice, np.ndarray]:
    """Along one axis: the plane span a tile starting at ``start`` covers, the matching part of the tile,
    and its blending weights (full weight at the plane's own border: no neighbour to blend with there)."""
    weights = win1d.copy()
    if start <= -halo:
        weights[:halo] = 1.0
    if start + size >= length + halo:
        weights[size - halo:] = 1.0
    a, b = max(0, start), min(length, start + size)
    return slice(a, b), slice(a - start, b - start), weights


def _accumulate(out, pred, tile: Tile, cut, box, origin, win1d, halo, plane_hw) -> None:
    """Add a tile's weighted output over the wanted pixels it reaches (``pred`` covers ``cut``, plane coordinates)."""
    (_, _, wy), (_, _, wx) = (_window_1d(tile.y0, tile.size, halo, plane_hw[0], win1d),
                              _window_1d(tile.x0, tile.size, halo, plane_hw[1], win1d))
    ya, yb = max(box[0], cut[0], 0), min(box[1], cut[1], plane_hw[0])
    xa, xb = max(box[2], cut[2], 0), min(box[3], cut[3], plane_hw[1])
    if yb <= ya or xb <= xa:
        return
    out[:, ya - origin[0]:yb - origin[0], xa - origin[1]:xb - origin[1]] += (
        pred[:, ya - cut[0]:yb - cut[0], xa - cut[2]:xb - cut[2]]
        * (wy[ya - tile.y0:yb - tile.y0, None] * wx[None, xa - tile.x0:xb - tile.x0]))
