"""Chunk geometry and label merging for predicting images too big for memory.

The maths behind :mod:`napari_segtool.core.batch`, pure numpy/scipy and free of
any scheduler so it can be tested on small arrays.

Geometry
--------
The canonical spatial shape (stack axes ``T``/``Z``, then ``Y``, ``X``) is cut
into *blocks*. A block has three nested YX rectangles (stack axes are never
padded: planes are predicted one by one):

* ``core``   -- the pixels the block writes to the output (one zarr chunk);
* ``region`` -- the core plus a *margin* on each side (clipped to the image):
  labels are computed here, so an object cut by the core border is seen whole
  by both blocks that share the border, and the two views can be matched;
* ``window`` -- the region plus a *halo* of half the network's receptive field
  (clipped): the pixels read, so that every pixel of the region is predicted
  with its full context and chunk borders leave no seams in the probabilities.

Window origins are multiples of the network's pooling factor (``align``) so the
pooling grid of every block lines up with a whole-image prediction. An architecture whose
output depends on where its tiles start (Mask R-CNN: each tile detects on its own) gets
each window as a :class:`PlacedPlane`, which knows where the window lies in the whole
plane: it cuts its tiles on the whole plane's grid, and ``core.batch`` widens every window
to whole tiles (``Architecture.window_extent``), so every path runs exactly the same tiles.

Merging
-------
Each block numbers its objects ``1..n`` (every plane separately); block ``b``'s
id ``l`` becomes the global id ``offset[b] + l`` (cumulative counts). Then:

1. *Faces in Y/X.* Two neighbouring blocks both labelled the strip
   ``[p - margin, p + margin)`` around their shared border ``p``. Their labels
   are matched on this strip by IoU; pairs with IoU > 0.5 (necessarily
   one-to-one) are the same object. Touching but distinct objects overlap little
   and stay apart -- unlike merging whatever touches across the face.
2. *Planes in Z* (instance stacks with a ``Z`` axis). Exactly what
   :func:`~napari_segtool.ops.postprocess.link_stack` does in memory: objects
   of consecutive planes are matched one-to-one by IoU (Hungarian assignment)
   and linked when IoU >= 0.25. Intersections and areas are summed over all
   blocks' cores (after step 1), and the assignment is solved separately on
   each connected component of the overlap graph of each plane pair, which
   gives the same optimum as one assignment over the whole plane.
3. Connected components of all these equivalences (scipy's
   ``connected_components``, as dask-image does) become the final objects,
   numbered ``1..N`` in order of first appearance; a lookup table per block maps
   its local ids to them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components

#: IoU above which two views of a strip label the same object (> 0.5 is one-to-one).
FACE_MIN_IOU = 0.5
#: IoU from which objects of consecutive planes are linked (as ``link_stack``).
Z_LINK_IOU = 0.25

Rect = tuple[int, int, int, int]  # y0, y1, x0, x1


def round_up(value: float, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


@dataclass(frozen=True)
class Block:
    """One chunk of the canonical spatial array (see module docstring)."""

    index: tuple[int, ...]              # position in the block grid (stack axes..., Y, X)
    stack: tuple[tuple[int, int], ...]  # [start, stop) per stack axis
    core: Rect
    region: Rect
    window: Rect

    @property
    def n_planes(self) -> int:
        return math.prod(b - a for a, b in self.stack) if self.stack else 1

    @property
    def stack_shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.stack)

    def slices(self, rect: Rect) -> tuple[slice, ...]:
        """Slices (stack axes, Y, X) of ``rect`` over this block's planes."""
        y0, y1, x0, x1 = rect
        return tuple(slice(a, b) for a, b in self.stack) + (slice(y0, y1), slice(x0, x1))

    @property
    def core_slices(self) -> tuple[slice, ...]:
        return self.slices(self.core)

    def core_in_region(self) -> tuple[slice, slice]:
        """The core as slices of an array covering ``region``."""
        return _inner(self.core, self.region)

    def region_in_window(self) -> tuple[slice, slice]:
        return _inner(self.region, self.window)


def _inner(inner: Rect, outer: Rect) -> tuple[slice, slice]:
    return (slice(inner[0] - outer[0], inner[1] - outer[0]), slice(inner[2] - outer[2], inner[3] - outer[2]))


@dataclass(frozen=True)
class Face:
    """Border between blocks ``a`` (lower coordinates) and ``b`` along ``axis`` ("y", "x" or "z")."""

    a: int  # position of the block in ChunkPlan.blocks
    b: int
    axis: str


@dataclass
class ChunkPlan:
    """How a canonical spatial array is cut into blocks."""

    shape: tuple[int, ...]      # canonical spatial shape (stack axes..., Y, X)
    stack_axes: str             # e.g. "", "Z", "TZ"
    chunks: tuple[int, ...]     # core shape of an interior block = chunk shape of the output
    margin: int
    halo: int
    grid: tuple[int, ...]
    blocks: list[Block] = field(repr=False)

    @property
    def n_stack(self) -> int:
        return len(self.stack_axes)

    def position(self, index: Sequence[int]) -> int:
        return int(np.ravel_multi_index(tuple(index), self.grid))

    def faces(self) -> list[Face]:
        """All borders between neighbouring blocks: Y and X always, Z only along a ``Z`` axis."""
        out = []
        axes = [(len(self.grid) - 2, "y"), (len(self.grid) - 1, "x")]
        if "Z" in self.stack_axes:
            axes.append((self.stack_axes.index("Z"), "z"))
        for pos, block in enumerate(self.blocks):
            for dim, name in axes:
                if block.index[dim] + 1 < self.grid[dim]:
                    nxt = list(block.index)
                    nxt[dim] += 1
                    out.append(Face(pos, self.position(nxt), name))
        return out

    def strip(self, face: Face) -> tuple[Rect, Rect]:
        """The shared strip of a Y/X face as rects relative to block ``a``'s and ``b``'s regions."""
        a, b = self.blocks[face.a], self.blocks[face.b]
        if face.axis == "x":
            p, size = a.core[3], self.shape[-1]
            lo, hi = max(0, p - self.margin), min(size, p + self.margin)
            rect = (a.region[0], a.region[1], lo, hi)
        elif face.axis == "y":
            p, size = a.core[1], self.shape[-2]
            lo, hi = max(0, p - self.margin), min(size, p + self.margin)
            rect = (lo, hi, a.region[2], a.region[3])
        else:
            raise ValueError("Z faces have no strip (planes are matched in the cores)")
        rel = []
        for blk in (a, b):
            r = blk.region
            rel.append((rect[0] - r[0], rect[1] - r[0], rect[2] - r[2], rect[3] - r[2]))
        return rel[0], rel[1]


def stack_chunks(stack_shape: Sequence[int], plane_core: int, chunk_size: int) -> tuple[int, ...]:
    """Planes per block along each stack axis so a block holds about ``chunk_size**2`` pixels.

    The budget goes to the innermost stack axis (``Z``) first, then ``T``.
    """
    budget = max(1, (chunk_size * chunk_size) // max(1, plane_core))
    out = []
    for size in reversed(list(stack_shape)):
        c = max(1, min(int(size), budget))
        out.append(c)
        budget = max(1, budget // c)
    return tuple(reversed(out))


def plan_chunks(shape: Sequence[int], stack_axes: str, chunk_size: int, *, margin: int, halo: int,
                align: int = 1, whole: str = "") -> ChunkPlan:
    """Cut a canonical spatial ``shape`` (stack axes, Y, X) into blocks.

    ``chunk_size`` (YX edge of a core) and ``margin``/``halo`` are rounded up to
    multiples of ``align`` so every window starts on the network's pooling grid.
    Stack axes named in ``whole`` are never cut (e.g. ``"Z"`` for a 3D watershed per block).
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(stack_axes) + 2:
        raise ValueError(f"shape {shape} does not fit stack axes {stack_axes!r} + YX")
    align = max(1, int(align))
    chunk = round_up(max(int(chunk_size), align), align)
    margin = round_up(max(0, margin), align)
    halo = round_up(max(0, halo), align)
    H, W = shape[-2:]
    cy, cx = min(chunk, H), min(chunk, W)
    schunks = tuple(size if axis in whole else c
                    for axis, size, c in zip(stack_axes, shape[:-2], stack_chunks(shape[:-2], cy * cx, chunk)))
    chunks = schunks + (cy, cx)
    grid = tuple(math.ceil(s / c) for s, c in zip(shape, chunks))
    blocks = []
    for index in np.ndindex(*grid):
        index = tuple(int(i) for i in index)
        stack = tuple((i * c, min(s, (i + 1) * c)) for i, c, s in zip(index[:-2], schunks, shape[:-2]))
        y0, x0 = index[-2] * cy, index[-1] * cx
        core = (y0, min(H, y0 + cy), x0, min(W, x0 + cx))
        region = _grow(core, margin, (H, W))
        window = _grow(region, halo, (H, W))
        blocks.append(Block(index, stack, core, region, window))
    return ChunkPlan(shape, stack_axes, chunks, margin, halo, grid, blocks)


class PlacedPlane:
    """A window of a ``YXC`` plane that knows where it lies: ``origin`` (y, x) of its first pixel in the
    whole plane, whose size is ``plane_hw`` (both on the grid the network reads).

    Reads go to the window (``shape`` and ``__getitem__`` are its own), so any code that tiles a plane
    runs on it unchanged; an architecture that must tile the whole plane's grid reads the placement
    with :func:`placement`. ``wanted`` ``(y0, y1, x0, x1)``, in the window's pixels, are those whose outputs
    are used (a chunk's region: the rest of the window is context); ``None``: all of them (:func:`wanted`).
    """

    def __init__(self, plane, origin: tuple[int, int], plane_hw: tuple[int, int],
                 wanted: Rect | None = None):
        self.plane = plane
        self.shape = tuple(plane.shape)
        self.origin = (int(origin[0]), int(origin[1]))
        self.plane_hw = (int(plane_hw[0]), int(plane_hw[1]))
        self.wanted = None if wanted is None else tuple(int(v) for v in wanted)

    def __getitem__(self, key):
        return self.plane[key]


def placement(plane) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(origin, plane_hw)`` of a :class:`PlacedPlane`; any other plane is a whole plane at ``(0, 0)``."""
    if isinstance(plane, PlacedPlane):
        return plane.origin, plane.plane_hw
    return (0, 0), (int(plane.shape[0]), int(plane.shape[1]))


def wanted(plane) -> Rect | None:
    """The pixels of a :class:`PlacedPlane` whose outputs are used (window coordinates); ``None``: all."""
    return plane.wanted if isinstance(plane, PlacedPlane) else None


def union(a: Rect, b: Rect) -> Rect:
    """The smallest rect holding both."""
    return (min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3]))


def _grow(rect: Rect, by: int, hw: tuple[int, int]) -> Rect:
    y0, y1, x0, x1 = rect
    return (max(0, y0 - by), min(hw[0], y1 + by), max(0, x0 - by), min(hw[1], x1 + by))


# ----------------------------------------------------------------------------- overlaps
def overlap_counts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts of every (id in ``a``, id in ``b``) pair, both non-zero, pixel by pixel.

    Returns ``(ids_a, ids_b, counts)`` (int64), one entry per overlapping pair.
    """
    a = np.asarray(a).ravel()
    b = np.asarray(b).ravel()
    both = (a > 0) & (b > 0)
    if not both.any():
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    key = (a[both].astype(np.uint64) << np.uint64(32)) | b[both].astype(np.uint64)
    uniq, counts = np.unique(key, return_counts=True)
    return ((uniq >> np.uint64(32)).astype(np.int64), (uniq & np.uint64(0xFFFFFFFF)).astype(np.int64),
            counts.astype(np.int64))


def face_matches(strip_a: np.ndarray, strip_b: np.ndarray, min_iou: float = FACE_MIN_IOU) -> np.ndarray:
    """Pairs ``(id_a, id_b)`` labelling the same object in two views of the same strip.

    IoU is measured inside the strip; with ``min_iou >= 0.5`` (strictly above)
    every object matches at most one object of the other view.
    """
    ia, ib, inter = overlap_counts(strip_a, strip_b)
    if ia.size == 0:
        return np.zeros((0, 2), np.int64)
    area_a = np.bincount(np.asarray(strip_a).ravel().astype(np.int64))
    area_b = np.bincount(np.asarray(strip_b).ravel().astype(np.int64))
    iou = inter / (area_a[ia] + area_b[ib] - inter)
    keep = iou > min_iou
    return np.stack([ia[keep], ib[keep]], axis=1)


# ----------------------------------------------------------------------------- merging
def _components(n: int, edges: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components of ``n`` nodes joined by ``edges`` (k, 2)."""
    if edges.size == 0:
        return n, np.arange(n, dtype=np.int64)
    ones = np.ones(len(edges), np.int8)
    graph = sparse.coo_matrix((ones, (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    count, labels = connected_components(graph, directed=False)
    return int(count), labels.astype(np.int64)


def match_planes(rows: np.ndarray, cols: np.ndarray, iou: np.ndarray,
                 threshold: float = Z_LINK_IOU) -> np.ndarray:
    """One-to-one assignment maximising total IoU, per connected component; pairs with IoU >= threshold.

    ``rows``/``cols`` are object ids of the earlier/later plane (any integers;
    the same integer as a row and as a column are different nodes), ``iou`` the
    IoU of each overlapping pair. Returns the kept ``(row, col)`` pairs.
    """
    if rows.size == 0:
        return np.zeros((0, 2), np.int64)
    r_ids, r_inv = np.unique(rows, return_inverse=True)
    c_ids, c_inv = np.unique(cols, return_inverse=True)
    nr = r_ids.size
    edges = np.stack([r_inv, nr + c_inv], axis=1)
    _, comp = _components(nr + c_ids.size, edges)
    edge_comp = comp[r_inv]
    n_edges = np.bincount(edge_comp)
    single = n_edges[edge_comp] == 1
    keep = single & (iou >= threshold)
    pairs = [np.stack([rows[keep], cols[keep]], axis=1)]
    multi = np.nonzero(~single)[0]
    if multi.size:
        order = multi[np.argsort(edge_comp[multi], kind="stable")]
        bounds = np.nonzero(np.diff(edge_comp[order]))[0] + 1
        for group in np.split(order, bounds):
            ur, gr = np.unique(r_inv[group], return_inverse=True)
            uc, gc = np.unique(c_inv[group], return_inverse=True)
            mat = np.zeros((ur.size, uc.size))
            mat[gr, gc] = iou[group]
            ri, ci = linear_sum_assignment(-mat)
            ok = mat[ri, ci] >= threshold
            pairs.append(np.stack([r_ids[ur[ri[ok]]], c_ids[uc[ci[ok]]]], axis=1))
    return np.concatenate(pairs).astype(np.int64)


@dataclass
class MergeResult:
    final: np.ndarray  # global id -> final object id (0 = background / no pixel written)
    n_objects: int


def merge_labels(n_ids: int, core_area: np.ndarray, same: np.ndarray,
                 z_overlaps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                 z_threshold: float = Z_LINK_IOU) -> MergeResult:
    """Final object ids for global ids ``1..n_ids`` (0 is background).

    Parameters
    ----------
    n_ids : number of global ids.
    core_area : pixels each global id has in the cores (length ``n_ids + 1``).
    same : ``(k, 2)`` pairs of global ids that are one object in one plane (face matches).
    z_overlaps : ``(ids_a, ids_b, counts)`` overlaps between consecutive planes
        (``a`` earlier), counted in the cores; ``None`` for no Z linking.
    """
    n = int(n_ids) + 1
    core_area = np.asarray(core_area, np.int64)
    n2d, comp2d = _components(n, np.asarray(same, np.int64).reshape(-1, 2))
    links = np.zeros((0, 2), np.int64)
    if z_overlaps is not None and len(z_overlaps[0]):
        ga, gb, cnt = (np.asarray(v, np.int64) for v in z_overlaps)
        ca, cb = comp2d[ga], comp2d[gb]
        key, inv = np.unique(np.stack([ca, cb], axis=1), axis=0, return_inverse=True)
        inter = np.bincount(inv.ravel(), weights=cnt).astype(np.int64)
        area2d = np.bincount(comp2d, weights=core_area, minlength=n2d).astype(np.int64)
        union = area2d[key[:, 0]] + area2d[key[:, 1]] - inter
        iou = inter / np.maximum(union, 1)
        links = match_planes(key[:, 0], key[:, 1], iou, z_threshold)
    n3d, comp3d = _components(n2d, links)
    comp = comp3d[comp2d]
    area = np.bincount(comp, weights=core_area, minlength=n3d)
    area[comp[0]] = 0  # background
    first = np.full(n3d, n, np.int64)
    np.minimum.at(first, comp, np.arange(n, dtype=np.int64))
    alive = np.nonzero(area > 0)[0]
    alive = alive[np.argsort(first[alive], kind="stable")]
    number = np.zeros(n3d, np.int64)
    number[alive] = np.arange(1, alive.size + 1)
    final = number[comp]
    final[0] = 0
    return MergeResult(final, int(alive.size))
