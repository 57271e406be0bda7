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
    h, w = plane.shape[:2]
    y0, x0, s = tile.y0, tile.x0, tile.size
    ya, yb = max(0, y0), min(h, y0 + s)
    xa, xb = max(0, x0), min(w, x0 + s)
    block = np.asarray(plane[ya:yb, xa:xb], dtype=np.float32)
    pad = ((ya - y0, y0 + s - yb), (xa - x0, x0 + s - xb), (0, 0))
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


def iter_batches(items: list, batch_size: int) -> Iterator[list]:
    for i in range(0, len(items), batch_size):
        yield items[i:i + batch_size]


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
    """
    h, w = plane.shape[:2]
    size = plan_tile_size((h, w), tile_size, halo, align)
    tiles = make_tiles((h, w), size, halo, align)
    out = np.zeros((out_channels, h, w), dtype=np.float32)
    win1d = blend_window(size, halo)
    # a tile's weight is wy ⊗ wx and the tiles form a grid, so the summed weight is the outer product of
    # two profiles: no (Y, X) weight plane (4 bytes per pixel of the image) is kept
    weight_y, weight_x = np.zeros(h, np.float32), np.zeros(w, np.float32)
    for start in sorted({t.y0 for t in tiles}):
        span, part, wy = _window_1d(start, size, halo, h, win1d)
        weight_y[span] += wy[part]
    for start in sorted({t.x0 for t in tiles}):
        span, part, wx = _window_1d(start, size, halo, w, win1d)
        weight_x[span] += wx[part]
    done = 0
    for batch in iter_batches(tiles, max(1, min(batch_size, batch_pixels // (size * size)))):
        if cancel is not None:
            cancel.raise_if_cancelled()
        arrays = np.stack([read_padded(plane, t) for t in batch])  # B,S,S,C
        x = torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous().to(device)
        with torch.inference_mode():
            y = fn(x).float().cpu().numpy()
        for t, pred in zip(batch, y):
            _accumulate(out, pred, t, win1d, halo, (h, w))
        done += len(batch)
        if progress is not None:
            progress(done, len(tiles))
    for y0 in range(0, h, 256):  # row blocks: no whole-plane temporary
        out[:, y0:y0 + 256] /= weight_y[y0:y0 + 256, None] * weight_x[None, :]
    return out


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


def _accumulate(out, pred, tile: Tile, win1d, halo, shape) -> None:
    (ys, ty, wy), (xs, tx, wx) = (_window_1d(tile.y0, tile.size, halo, shape[0], win1d),
                                  _window_1d(tile.x0, tile.size, halo, shape[1], win1d))
    out[:, ys, xs] += pred[:, ty, tx] * (wy[ty, None] * wx[None, tx])
