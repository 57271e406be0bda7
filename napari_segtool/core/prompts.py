"""Prompt tools: fix an object with a click, a box or a stroke, using the model's own maps.

No Qt, no napari, no torch: numpy / scipy / scikit-image on one 2D label plane and the
maps the instance model computed for it (:class:`PromptMaps`, from
``predict(..., return_probabilities=True)`` read through the architecture's
:class:`~napari_segtool.kernel.params.ProbabilityLayout`: foreground, interior and distance
maps where it declares them).

Every tool works in a window around its prompt (grown only when the object reaches the
window's edge), so an edit costs the same on a 2048² plane as on a 256² one, and returns
a :class:`LocalEdit`: the window and its new labels. The plugin writes that through the
labels layer (undoable, recorded as training data like any edit); the simulated
annotator of :mod:`napari_segtool.core.hitl` writes it into its working labels.

Tools
-----
* :func:`add_object` — a click on a missed object: the region grown from the click over
  the foreground map, bounded by other objects and by the boundary/interior maps.
* :func:`redraw_in_box` — a box around an object: the object redrawn from the maps inside it.
* :func:`grow_object` / :func:`shrink_object` — a positive click outside an object adds
  the part of the foreground that joins it to the click; a negative click inside removes
  the part of the object around the click.
* :func:`split_by_scribble` — a stroke across a merged object splits it into one object
  per nucleus the stroke crosses.
* :func:`rank_uncertain` — "correct next": objects (and unlabelled foreground) sorted by
  the model's uncertainty; :func:`accepted_pixels` — what moving on from a shown object
  asserts (training data, as a reviewed region).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from napari_segtool.core.edits import box_window as _box_window
from napari_segtool.core.edits import object_window as _object_window
from napari_segtool.core.edits import split_mask_at_neck
from napari_segtool.core.edits import touches_open_edge as _touches_open_edge
from napari_segtool.core.edits import window as _window
from napari_segtool.kernel.params import ProbabilityLayout

__all__ = [
    "PromptError",
    "PromptMaps",
    "LocalEdit",
    "Uncertain",
    "add_object",
    "redraw_in_box",
    "grow_object",
    "shrink_object",
    "split_by_scribble",
    "rank_uncertain",
    "accepted_pixels",
    "uncertainty_map",
]

FG_THRESHOLD = 0.5
SEED_THRESHOLD = 0.6
_CROSS = ndi.generate_binary_structure(2, 1)


class PromptError(ValueError):
    """The prompt cannot be applied here (the message says why, for the user)."""


# ============================================================== maps


@dataclass
class PromptMaps:
    """The model's maps of (part of) one plane; ``origin`` is where ``[0, 0]`` lies in the plane.

    Stored as float16 (a 2048² plane costs 32 MB for all four maps); :meth:`window`
    returns float32 crops in plane coordinates, zero where the maps do not reach.
    """

    foreground: np.ndarray
    interior: np.ndarray
    boundary: np.ndarray
    distance: np.ndarray | None = None
    origin: tuple[int, int] = (0, 0)

    @classmethod
    def from_probabilities(cls, probabilities: np.ndarray, layout: ProbabilityLayout,
                           origin: Sequence[int] = (0, 0)) -> "PromptMaps":
        """From a model's ``(K, H, W)`` probabilities of one plane, read through its ``layout``
        (``model.architecture.probability_layout(model.meta)``).

        The foreground is the layout's object probability; the interior its interior channel
        (the foreground itself when it has none, e.g. Mask R-CNN); the boundary what of the
        foreground is not interior; the distance map where the layout has one. Raises
        ``ValueError`` for maps with no object probability (a semantic model's).
        """
        p = np.asarray(probabilities)
        if p.ndim != 3 or p.shape[0] != len(layout.channels):
            raise ValueError(f"need ({len(layout.channels)}, H, W) probabilities of one plane "
                             f"({', '.join(layout.channels)}), got shape {p.shape}")
        fg = np.clip(layout.foreground(p.astype(np.float32, copy=False)), 0, 1)
        interior = fg if layout.interior_channel is None else p[layout.interior_channel].astype(np.float32)
        distance = layout.distance(p)
        f16 = np.float16
        return cls(fg.astype(f16), interior.astype(f16), np.clip(fg - interior, 0, 1).astype(f16),
                   None if distance is None else np.asarray(distance).astype(f16), (int(origin[0]), int(origin[1])))

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.foreground.shape)  # type: ignore[return-value]

    def covers(self, yx: Sequence[int]) -> bool:
        y, x = int(yx[0]) - self.origin[0], int(yx[1]) - self.origin[1]
        return 0 <= y < self.shape[0] and 0 <= x < self.shape[1]

    def window(self, sl: tuple[slice, slice]) -> "PromptMaps":
        """The maps of the plane window ``sl`` (float32, zeros where these maps do not reach)."""
        (y0, y1), (x0, x1) = (sl[0].start, sl[0].stop), (sl[1].start, sl[1].stop)
        oy, ox = self.origin
        h, w = self.shape
        ya, yb = max(y0, oy), min(y1, oy + h)
        xa, xb = max(x0, ox), min(x1, ox + w)

        def crop(a: np.ndarray | None) -> np.ndarray | None:
            if a is None:
                return None
            out = np.zeros((y1 - y0, x1 - x0), np.float32)
            if yb > ya and xb > xa:
                out[ya - y0:yb - y0, xa - x0:xb - x0] = a[ya - oy:yb - oy, xa - ox:xb - ox]
            return out

        return PromptMaps(crop(self.foreground), crop(self.interior), crop(self.boundary),  # type: ignore[arg-type]
                          crop(self.distance), (y0, x0))


@dataclass
class LocalEdit:
    """New labels for a window of the plane: write ``labels`` at ``slices``."""

    slices: tuple[slice, slice]
    labels: np.ndarray
    label: int = 0          # the object made or changed
    message: str = ""

    def apply(self, plane: np.ndarray) -> np.ndarray:
        """Write the edit into ``plane`` (in place) and return it."""
        plane[self.slices] = self.labels
        return plane


# ============================================================== helpers


def _component_at(mask: np.ndarray, c: tuple[int, int]) -> np.ndarray:
    if not mask[c]:
        return np.zeros_like(mask)
    parts, _ = ndi.label(mask, _CROSS)
    return parts == parts[c]


def _local(c: Sequence[int], sl: tuple[slice, slice]) -> tuple[int, int]:
    return int(c[0]) - sl[0].start, int(c[1]) - sl[1].start


def _peak_near(a: np.ndarray, c: tuple[int, int], r: int = 1) -> float:
    return float(a[max(0, c[0] - r):c[0] + r + 1, max(0, c[1] - r):c[1] + r + 1].max())


def _relief(m: PromptMaps, mask: np.ndarray) -> np.ndarray:
    """Low inside object centres, high at boundaries: what a watershed between seeds climbs."""
    own = ndi.distance_transform_edt(mask)
    own = own / max(1.0, float(own.max()))
    centre = m.distance if m.distance is not None else m.interior
    return (m.boundary - centre - 0.5 * own).astype(np.float32)


def _basin_of_click(comp: np.ndarray, m: PromptMaps, c: tuple[int, int], lab: np.ndarray | None = None
                    ) -> np.ndarray:
    """Keep, of a foreground region, the object the click is on (touching missed objects are split off).

    Split at the interior seeds of the maps when there are several; else, when the region is
    much larger than the objects around it (touching nuclei with no dark line between them), at
    the waists of its shape (:func:`~napari_segtool.ops.postprocess.split_by_shape`, the model's
    own split for nuclei).
    """
    from skimage.segmentation import watershed

    seeds, n = ndi.label(comp & (m.interior >= SEED_THRESHOLD), _CROSS)
    if n >= 2:
        basins = watershed(_relief(m, comp), markers=seeds, mask=comp)
        return basins == basins[c] if basins[c] else comp
    area = int(comp.sum())
    if lab is None or not (lab > 0).any():
        return comp
    r = _typical_radius(lab)
    if area < 1.5 * np.pi * r * r:
        return comp
    from napari_segtool.ops.postprocess import split_by_shape

    dist = m.distance if m.distance is not None else m.interior
    pieces = split_by_shape(np.where(comp, np.maximum(m.foreground, 0.51), 0.0).astype(np.float32),
                            np.where(comp, dist, 0.0).astype(np.float32), 2.0 * r, fill=False, min_size=1)
    return (pieces == pieces[c]) & comp if pieces[c] else comp


def _typical_radius(lab: np.ndarray, default: float = 5.0) -> float:
    areas = np.bincount(lab.ravel())[1:]
    areas = areas[areas > 0]
    return float(np.sqrt(np.median(areas) / np.pi)) if areas.size else default


def _disc(shape: Sequence[int], c: Sequence[float], r: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= r * r


def _check_point(labels: np.ndarray, yx: Sequence[int]) -> tuple[int, int]:
    y, x = int(round(float(yx[0]))), int(round(float(yx[1])))
    if not (0 <= y < labels.shape[0] and 0 <= x < labels.shape[1]):
        raise PromptError("the point is outside the image")
    return y, x


# ============================================================== tools


def add_object(labels: np.ndarray, maps: PromptMaps, yx: Sequence[int], new_label: int, *,
               threshold: float = FG_THRESHOLD, half: int = 48) -> LocalEdit:
    """A click on a missed object: the object appears.

    The region is grown from the click over the foreground map (cut-off ``threshold``, or
    half the click's probability for a faint object), never over another object; when
    the region holds several interior seeds (touching nuclei the model missed together)
    only the click's basin is kept. Where the model sees nothing, a disc of the
    neighbours' typical size is added (to be shaped by hand).
    """
    labels = np.asarray(labels)
    y, x = _check_point(labels, yx)
    if labels[y, x] != 0:
        raise PromptError(f"there is already an object here (label {int(labels[y, x])})")
    for _ in range(5):
        sl = _window(labels.shape, (y, x), half)
        lab, m = labels[sl], maps.window(sl)
        c = _local((y, x), sl)
        free = lab == 0
        p = _peak_near(m.foreground, c)
        if p < 0.05:
            r = _typical_radius(lab)
            obj = _disc(lab.shape, c, r) & free
            obj = _component_at(obj, c)
            return _edit(lab, sl, obj, new_label, f"the model sees nothing here: a disc of radius {r:.0f} was added")
        t = threshold if p >= threshold else 0.5 * p
        region = (m.foreground >= t) & free
        region[c] = True
        comp = _basin_of_click(_component_at(region, c), m, c, lab)
        comp = ndi.binary_fill_holes(comp) & free
        if not _touches_open_edge(comp, sl, labels.shape):
            break
        half *= 2
    return _edit(lab, sl, comp, new_label, "added")


def _edit(lab: np.ndarray, sl: tuple[slice, slice], obj: np.ndarray, label: int, message: str,
          clear: np.ndarray | None = None) -> LocalEdit:
    out = lab.copy()
    if clear is not None:
        out[clear] = 0
    out[obj] = label
    return LocalEdit(sl, out, int(label), message)


def redraw_in_box(labels: np.ndarray, maps: PromptMaps, box: Sequence[int], new_label: int, *,
                  threshold: float = FG_THRESHOLD) -> LocalEdit:
    """A box around an object: the object is redrawn inside it.

    ``box`` is ``(y0, x0, y1, x1)`` (corners in any order, inclusive). The object is the
    one under the box centre (else the one with most pixels in the box; else a new one
    with ``new_label``), together with any other object lying mostly (70 %) inside the box:
    the box says "one object here", so halves and fragments of it become one (one box, not a
    box plus a repaint). All their pixels are replaced by the component of the thresholded
    foreground inside the box that contains the centre (else the largest), holes filled,
    never over another object. A part of the object outside the box at least half as
    large as the redrawn object (a merged neighbour) becomes an object of its own
    (``new_label``); a smaller one (a bleed) is removed. The cut-off is ``threshold``, or Otsu's of the box when
    the centre is below it.
    """
    labels = np.asarray(labels)
    y0, x0 = _check_point(labels, box[:2])
    y1, x1 = _check_point(labels, box[2:])
    y0, y1 = sorted((y0, y1))
    x0, x1 = sorted((x0, x1))
    if y1 - y0 < 2 or x1 - x0 < 2:
        raise PromptError("the box is too small")
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    inner = labels[y0:y1 + 1, x0:x1 + 1]
    target = int(inner[cy - y0, cx - x0])
    if target == 0:
        ids, counts = np.unique(inner[inner > 0], return_counts=True)
        target = int(ids[np.argmax(counts)]) if ids.size else 0
    label = target or int(new_label)
    # the window holds the box and all of the target object
    sl = _box_window(labels.shape, y0, y1 + 1, x0, x1 + 1, pad=2)
    if target:
        osl = _object_window(labels, target, (cy, cx), half=max(y1 - y0, x1 - x0))
        sl = (slice(min(sl[0].start, osl[0].start), max(sl[0].stop, osl[0].stop)),
              slice(min(sl[1].start, osl[1].start), max(sl[1].stop, osl[1].stop)))
    lab, m = labels[sl], maps.window(sl)
    inside = np.zeros(lab.shape, bool)
    inside[y0 - sl[0].start:y1 + 1 - sl[0].start, x0 - sl[1].start:x1 + 1 - sl[1].start] = True
    parts_of = _inside_box(labels, inner, (y0, y1, x0, x1), target) if target else []
    mine = np.isin(lab, [target, *parts_of]) if target else np.zeros(lab.shape, bool)
    others = (lab > 0) & ~mine
    c = _local((cy, cx), sl)
    fg = m.foreground
    t = threshold
    if fg[c] < t:
        from skimage.filters import threshold_otsu

        values = fg[inside]
        t = float(np.clip(threshold_otsu(values), 0.05, threshold)) if values.max() > values.min() else threshold
    mask = (fg >= t) & inside & ~others
    parts, n = ndi.label(mask, _CROSS)
    if n == 0:
        raise PromptError("the model sees no object in this box")
    if parts[c]:
        obj = parts == parts[c]
    else:
        obj = parts == (int(np.argmax(np.bincount(parts.ravel())[1:])) + 1)
    obj = ndi.binary_fill_holes(obj) & ~others & inside
    if not target:
        return _edit(lab, sl, obj, label, "added")
    old = mine
    edit = _edit(lab, sl, obj, label, f"redrawn{f' from {len(parts_of) + 1} pieces' if parts_of else ''}", clear=old)
    # what the object had outside the box: a bleed is dropped, a second nucleus (a merge) kept on its own
    rest = old & ~obj & ~inside
    if rest.sum() >= 0.5 * max(1, obj.sum()):
        edit.labels[rest] = int(new_label)
        edit.message = "redrawn; its part outside the box is a new object"
    return edit


def _inside_box(labels: np.ndarray, inner: np.ndarray, box: tuple[int, int, int, int], target: int,
                share: float = 0.7) -> list[int]:
    """Objects other than ``target`` with at least ``share`` of their pixels inside the box: pieces of the
    boxed object (a nucleus the model cut in halves, a fragment beside it), which the box redraws as one."""
    y0, y1, x0, x1 = box
    ids, n_in = np.unique(inner[(inner > 0) & (inner != target)], return_counts=True)
    if not ids.size:
        return []
    around = labels[_box_window(labels.shape, y0, y1 + 1, x0, x1 + 1, pad=max(y1 - y0, x1 - x0))]
    total = np.array([np.count_nonzero(around == i) for i in ids.tolist()])
    return [int(i) for i, a, t in zip(ids.tolist(), n_in.tolist(), total.tolist()) if a >= share * t]


def _nearest_label(lab: np.ndarray, c: tuple[int, int]) -> int:
    if not (lab > 0).any():
        return 0
    _, (iy, ix) = ndi.distance_transform_edt(lab == 0, return_indices=True)
    return int(lab[iy[c], ix[c]])


def grow_object(labels: np.ndarray, maps: PromptMaps, yx: Sequence[int], label: int | None = None, *,
                half: int = 48) -> LocalEdit:
    """A positive click just outside an object: the object grows to take the click in.

    The object is ``label`` (default: the one nearest to the click). It takes the
    foreground joining it to the click at the highest cut-off where they connect
    (0.5 down to 0.05), within reach of the object (1.5× the click's distance, or half
    its diameter); where the maps never connect them, the convex hull of the object and
    a small disc at the click. Never over another object.
    """
    labels = np.asarray(labels)
    y, x = _check_point(labels, yx)
    sl = _window(labels.shape, (y, x), half)
    lab = labels[sl]
    c = _local((y, x), sl)
    if label is None:
        label = _nearest_label(lab, c)
    label = int(label)
    if label <= 0:
        raise PromptError("no object near the click to grow")
    if lab[c] == label:
        raise PromptError("click outside the object to grow it (inside: shrink)")
    if lab[c] != 0:
        raise PromptError(f"the click is on another object (label {int(lab[c])})")
    osl = _object_window(labels, label, (y, x), half=half)
    sl = (slice(min(sl[0].start, osl[0].start), max(sl[0].stop, osl[0].stop)),
          slice(min(sl[1].start, osl[1].start), max(sl[1].stop, osl[1].stop)))
    lab, m = labels[sl], maps.window(sl)
    c = _local((y, x), sl)
    obj = lab == label
    free = lab == 0
    to_obj = ndi.distance_transform_edt(~obj)
    area = int(obj.sum())
    reach = max(1.5 * float(to_obj[c]), np.sqrt(area / np.pi), 3.0)
    allowed = free & (to_obj <= reach)
    for t in (0.5, 0.4, 0.3, 0.2, 0.1, 0.05):
        region = ((m.foreground >= t) & allowed) | obj
        region[c] = True
        comp = _component_at(region, c)
        if (comp & obj).any():
            add = ndi.binary_fill_holes(comp) & free
            return _edit(lab, sl, add, label, f"grown at cut-off {t:g}")
    from skimage.morphology import convex_hull_image

    hull = convex_hull_image(obj | _disc(lab.shape, c, 1.5))
    return _edit(lab, sl, hull & free, label, "grown (the model does not join them: convex hull)")


def shrink_object(labels: np.ndarray, maps: PromptMaps, yx: Sequence[int]) -> LocalEdit:
    """A negative click inside an object: the part of the object around the click goes.

    With the maps: the object keeps its largest component of pixels more certain than
    the click (foreground above the click's probability, and at least 0.5). When the click
    is as certain as the rest, the object is cut at its neck between its centre and the
    click (:func:`~napari_segtool.core.edits.split_mask_at_neck`) and the click's piece removed.
    """
    labels = np.asarray(labels)
    y, x = _check_point(labels, yx)
    label = int(labels[y, x])
    if label == 0:
        raise PromptError("click inside an object to shrink it (outside: grow)")
    sl = _object_window(labels, label, (y, x))
    lab, m = labels[sl], maps.window(sl)
    c = _local((y, x), sl)
    obj = lab == label
    area = int(obj.sum())
    p = float(m.foreground[c])
    # below the model's own cut-off the click says "the model was right": keep what it calls object
    keep_region = obj & (m.foreground > max(p + 0.02, min(FG_THRESHOLD, 0.98)))
    parts, n = ndi.label(keep_region, _CROSS)
    if n:
        sizes = np.bincount(parts.ravel())[1:]
        keep = parts == (int(np.argmax(sizes)) + 1)
        keep = ndi.binary_fill_holes(keep) & obj
        keep[c] = False
        removed = obj & ~keep
        if keep.sum() >= 0.2 * area and removed.sum() >= max(3, 0.05 * area):
            return _edit(lab, sl, np.zeros_like(obj), label, "shrunk (less certain part removed)", clear=removed)
    # the maps do not tell the click's part apart: cut at the neck between the object's centre and the click
    dist = ndi.distance_transform_edt(obj)
    far = dist * (ndi.distance_transform_edt(~_disc(obj.shape, c, 0.5)) > 0.5 * np.sqrt(area / np.pi))
    centre = np.unravel_index(int(np.argmax(far)), far.shape)
    if not obj[centre] or centre == c:
        raise PromptError("the object is too small to shrink here; delete it instead")
    pieces = split_mask_at_neck(obj, centre, c)
    return _edit(lab, sl, np.zeros_like(obj), label, "shrunk (cut at the neck)", clear=pieces == 2)


def _stroke_pixels(points: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Ordered, de-duplicated (y, x) pixels of a polyline, clipped to ``shape``."""
    from skimage.draw import line as draw_line

    pts = np.round(np.asarray(points, float)).astype(int)
    if len(pts) == 1:
        pts = np.vstack([pts, pts])
    out = []
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:]):
        rr, cc = draw_line(y0, x0, y1, x1)
        out.append(np.stack([rr, cc], 1))
    px = np.concatenate(out)
    ok = (px[:, 0] >= 0) & (px[:, 0] < shape[0]) & (px[:, 1] >= 0) & (px[:, 1] < shape[1])
    px = px[ok]
    if len(px) == 0:
        return px
    keep = np.ones(len(px), bool)
    keep[1:] = np.any(px[1:] != px[:-1], axis=1)
    return px[keep]


def _profile_peaks(profile: np.ndarray, dip: float = 0.75) -> list[int]:
    """Indices of the peaks of a 1D profile, neighbouring peaks separated by a dip below ``dip`` × the
    lower of the two (the profile falls to 0 beyond both ends). Plain numpy: no scipy.signal import
    (half a second) on the first stroke."""
    p = np.asarray(profile, float)
    n = len(p)
    peaks: list[int] = []
    low = np.inf
    for i in range(n):
        v = p[i]
        if peaks:
            low = min(low, v)
        left = p[i - 1] if i else 0.0
        right = p[i + 1] if i + 1 < n else 0.0
        if v <= 0 or v < left or v < right:
            continue
        if not peaks:
            peaks.append(i)
            low = np.inf
        elif low < dip * min(p[peaks[-1]], v):
            peaks.append(i)
            low = np.inf
        elif v > p[peaks[-1]]:
            peaks[-1] = i
            low = np.inf
    return peaks


def _click_seeds(obj: np.ndarray, vertices: np.ndarray, deep: float = 0.3) -> np.ndarray | None:
    """Seeds from the clicked points of a stroke that lie deep inside ``obj`` (one per nucleus), or ``None``.

    A scribble clicked through the merged nuclei has its vertices at the nuclei: a vertex well inside
    the object (at least ``deep`` × its largest distance to its edge) is the user's "a nucleus here".
    Vertices in path order are chained while each is within 3/4 of that largest distance of the last
    (a path drawn with many close vertices, or several clicks in one nucleus, is one chain, so one
    nucleus); each chain's deepest vertex is a click. A vertex off the deep part ends a chain. Each
    click grows into a disc as wide as the object around it (0.8 × its distance to the edge) but never
    past the midline to the nearest other click, so the flood starts from the nuclei, not from single
    pixels. ``None`` when fewer than two clicks qualify (the other seeds of :func:`split_by_scribble` apply).
    """
    dist = ndi.distance_transform_edt(obj)
    top = float(dist.max())
    h, w = obj.shape
    link = 0.75 * top
    chains: list[list[np.ndarray]] = []
    last: np.ndarray | None = None
    for v in vertices:
        if not (0 <= v[0] < h and 0 <= v[1] < w) or dist[v[0], v[1]] < max(1.0, deep * top):
            last = None
            continue
        if last is None or np.hypot(*(v - last).astype(float)) >= link:
            chains.append([])
        chains[-1].append(v)
        last = v
    kept: list[np.ndarray] = []
    for chain in chains:
        v = max(chain, key=lambda p: dist[p[0], p[1]])
        if all(np.hypot(*(v - k).astype(float)) >= link for k in kept):
            kept.append(v)
    if len(kept) < 2:
        return None
    yy, xx = np.ogrid[:h, :w]
    d = np.stack([np.hypot(yy - v[0], xx - v[1]) for v in kept])
    nearest = np.argmin(d, axis=0)
    seeds = np.zeros(obj.shape, np.int32)
    for k, v in enumerate(kept):
        gap = min(float(np.hypot(*(v - o).astype(float))) for j, o in enumerate(kept) if j != k)
        r = max(0.5, min(0.8 * float(dist[v[0], v[1]]), 0.45 * gap))
        disc = (d[k] <= r) & (nearest == k) & obj
        seeds[_component_at(disc, (int(v[0]), int(v[1])))] = k + 1
    return seeds


def split_by_scribble(labels: np.ndarray, maps: PromptMaps | None, points: Sequence[Sequence[float]],
                      first_new_label: int, *, min_size: int = 5) -> LocalEdit:
    """A stroke across a merged object: one object per nucleus the stroke crosses.

    For every object the stroke crosses, its seeds are the interior components of the
    maps (interior probability >= 0.6) that the stroke touches; without maps, or where
    they do not separate, the peaks of the object's own distance transform along the
    stroke (separated by a dip to 3/4 of the lower peak); failing both, the stroke's two ends
    when both lie deep inside the object. Two seeds or more: the object
    is flooded from them (a watershed climbing boundary probability and falling with
    distance), the largest piece keeps the id, the others get new ids.
    """
    from skimage.segmentation import watershed

    labels = np.asarray(labels)
    px = _stroke_pixels(np.asarray(points, float), labels.shape)
    if len(px) < 2:
        raise PromptError("draw a stroke across the object(s) to split")
    crossed = [int(v) for v in dict.fromkeys(labels[px[:, 0], px[:, 1]].tolist()) if v > 0]
    if not crossed:
        raise PromptError("the stroke crosses no object")
    y0, x0 = px.min(0)
    y1, x1 = px.max(0) + 1
    sl = _box_window(labels.shape, int(y0), int(y1), int(x0), int(x1), pad=4)
    for label in crossed:
        osl = _object_window(labels, label, px[labels[px[:, 0], px[:, 1]] == label][0], half=24)
        sl = (slice(min(sl[0].start, osl[0].start), max(sl[0].stop, osl[0].stop)),
              slice(min(sl[1].start, osl[1].start), max(sl[1].stop, osl[1].stop)))
    lab = labels[sl]
    m = maps.window(sl) if maps is not None else None
    local = px - np.array([sl[0].start, sl[1].start])
    vertices = np.round(np.asarray(points, float)).astype(int).reshape(-1, 2) - np.array([sl[0].start, sl[1].start])
    out = lab.copy()
    next_id = int(first_new_label)
    n_split = 0
    for label in crossed:
        obj = lab == label
        on = obj[local[:, 0], local[:, 1]]
        path = local[on]
        seeds = np.zeros(lab.shape, np.int32)
        n = 0
        if m is not None:
            cores, _ = ndi.label(obj & (m.interior >= SEED_THRESHOLD), _CROSS)
            hit = [int(v) for v in dict.fromkeys(cores[path[:, 0], path[:, 1]].tolist()) if v > 0]
            for k, core in enumerate(hit, 1):
                seeds[cores == core] = k
            n = len(hit)
        clicks = _click_seeds(obj, vertices)
        if clicks is not None and clicks.max() > n:  # a click in each nucleus says more than the maps' seeds
            seeds, n = clicks, int(clicks.max())
            relief_of_clicks = True
        else:
            relief_of_clicks = False
        if n < 2:
            dist = ndi.distance_transform_edt(obj)
            profile = dist[path[:, 0], path[:, 1]]
            peaks = _profile_peaks(profile)
            seeds[:] = 0
            for k, i in enumerate(peaks, 1):
                r = max(1.0, 0.5 * float(profile[i]))
                seeds[_disc(obj.shape, path[i], r) & obj & (seeds == 0)] = k
            n = len(peaks)
            if n < 2 and len(path) >= 2:
                # no neck either (two nuclei overlapping): a stroke that starts and ends deep inside the
                # object still says "two here": its two ends are the seeds
                ends = [path[0], path[-1]]
                deep = [float(dist[tuple(e)]) >= 0.3 * float(dist.max()) for e in ends]
                if all(deep) and np.hypot(*(path[0] - path[-1]).astype(float)) >= 3:
                    seeds[:] = 0
                    for k, e in enumerate(ends, 1):
                        seeds[_disc(obj.shape, e, max(1.0, 0.4 * float(dist[tuple(e)]))) & obj & (seeds == 0)] = k
                    n = 2
        if n < 2:
            continue
        if m is None:
            relief = -ndi.distance_transform_edt(obj)
        elif relief_of_clicks:  # the clicks are the centres: flood up the boundary map, down the interior
            relief = (m.boundary - m.interior).astype(np.float32)
        else:
            relief = _relief(m, obj)
        pieces = watershed(relief, markers=seeds, mask=obj)
        sizes = np.bincount(pieces.ravel(), minlength=n + 1)[1:]
        order = [k + 1 for k in np.argsort(sizes)[::-1] if sizes[k] >= min_size]
        if len(order) < 2:
            continue
        for k in order[1:]:
            out[pieces == k] = next_id
            next_id += 1
        n_split += 1
    if not n_split:
        raise PromptError("the stroke does not cross two nuclei of one object")
    return LocalEdit(sl, out, int(first_new_label), f"split {n_split} object(s) into {next_id - first_new_label + n_split}")


# ============================================================== correct next


@dataclass
class Uncertain:
    """An object (``label`` > 0) or an unlabelled foreground region (``label`` 0) to look at."""

    label: int
    score: float              # higher = the model is less sure
    yx: tuple[int, int]       # a pixel of it (its most central one)
    area: int
    kind: str                 # "object" or "missed"
    margin: float = 0.0       # mean |p - 0.5| * 2 of the foreground probability
    boundary: float = 0.0     # boundary probability inside it (away from its rim), per object size


def rank_uncertain(labels: np.ndarray, maps: PromptMaps, *, top: int | None = 20,
                   exclude: np.ndarray | None = None, min_area: int | None = None,
                   missed_threshold: float = 0.3, size_power: float = 1.0) -> list[Uncertain]:
    """Objects and missed regions sorted by the model's uncertainty, worst first.

    An object scores ``1 - margin + 0.5 * min(2, |log(area / median area)|)``: ``margin``
    is the mean foreground margin ``|p - 0.5| * 2`` over its pixels (low = the model
    hesitates whether it is an object), and an object much smaller or larger than the
    others is likely a fragment or a merge. (Measured on the real nuclei image with the
    shipped model: 7 of the 10 top objects of a 512² tile are wrong, against 13 % of all;
    the boundary probability inside objects, also reported, did not separate them.)
    An unlabelled region where the foreground probability is above ``missed_threshold``
    and that is at least ``min_area`` pixels (default a fifth of the median object) scores
    ``1 - margin`` + its mean foreground (a missed object). Both are multiplied by
    ``(area / median area) ** size_power``: a large doubtful region (a merge, a big miss)
    costs AP and training signal, a doubtful speck little. (On the shipped model's maps of
    the left half of the real nuclei image, the simulated prompt user of
    ``core.hitl`` reached labels at AP@0.5 0.90 / 0.95 after 12 / 20 actions with
    ``size_power=1``, 26 / 40 without.) Objects mostly in ``exclude`` (pixels the user
    already edited) are left out.
    """
    labels = np.asarray(labels)
    sl = (slice(0, labels.shape[0]), slice(0, labels.shape[1]))
    m = maps.window(sl)
    fg = m.foreground
    margin = np.abs(fg - 0.5) * 2
    flat = labels.ravel().astype(np.int64)
    n = int(flat.max()) + 1 if flat.size else 1
    area = np.bincount(flat, minlength=n)
    sum_margin = np.bincount(flat, margin.ravel(), minlength=n)
    # boundary probability inside an object, 2 px or more from its rim: a cut line across it (reported)
    inner = (labels > 0) & (ndi.minimum_filter(labels, 5) == ndi.maximum_filter(labels, 5))
    inner_ids = np.where(inner, labels, 0).ravel().astype(np.int64)
    sum_boundary = np.bincount(inner_ids, m.boundary.ravel(), minlength=n)
    skip = np.zeros(n, bool)
    if exclude is not None:
        skip = np.bincount(flat, np.asarray(exclude, bool).ravel().astype(float), minlength=n) >= 0.5 * area
    areas = area[1:][area[1:] > 0]
    median = float(np.median(areas)) if areas.size else 0.0
    if min_area is None:
        min_area = max(10, int(0.2 * median))
    out: list[Uncertain] = []
    ids = np.flatnonzero((area > 0) & ~skip)
    for i in ids[ids > 0].tolist():
        mg = float(sum_margin[i] / area[i])
        bd = min(1.0, float(sum_boundary[i]) / (2.0 * np.sqrt(area[i])))
        odd = min(2.0, abs(float(np.log(area[i] / median)))) if median > 0 else 0.0
        weight = (area[i] / median) ** size_power if median > 0 else 1.0
        out.append(Uncertain(i, (1.0 - mg + 0.5 * odd) * weight, (0, 0), int(area[i]), "object", mg, bd))
    free = (labels == 0) & (fg >= missed_threshold)
    if exclude is not None:
        free &= ~np.asarray(exclude, bool)
    regions, k = ndi.label(free, _CROSS)
    if k:
        r_flat = regions.ravel()
        r_area = np.bincount(r_flat, minlength=k + 1)
        r_fg = np.bincount(r_flat, fg.ravel(), minlength=k + 1)
        r_margin = np.bincount(r_flat, margin.ravel(), minlength=k + 1)
        big = np.flatnonzero(r_area >= min_area)
        for j in big[big > 0].tolist():
            mg = float(r_margin[j] / r_area[j])
            weight = (r_area[j] / median) ** size_power if median > 0 else 1.0
            out.append(Uncertain(-j, (1.0 - mg + float(r_fg[j] / r_area[j])) * weight, (0, 0), int(r_area[j]),
                                 "missed", mg))
    out.sort(key=lambda u: (-u.score, -u.area, u.label))
    out = out[:top] if top is not None else out
    # where to look: the most central pixel of each (the peak of its own distance transform), for these only
    for kind, source in (("object", labels), ("missed", regions)):
        chosen = {abs(u.label): u for u in out if u.kind == kind}
        if not chosen:
            continue
        ys, xs = np.nonzero(np.isin(source, list(chosen)))
        values = source[ys, xs]
        for key, u in chosen.items():
            sel = values == key
            py, px = ys[sel], xs[sel]
            y0, x0 = int(py.min()), int(px.min())
            mask = np.zeros((int(py.max()) - y0 + 3, int(px.max()) - x0 + 3), bool)
            mask[py - y0 + 1, px - x0 + 1] = True
            d = ndi.distance_transform_edt(mask)
            y, x = np.unravel_index(int(np.argmax(d)), d.shape)
            u.yx = (y0 + int(y) - 1, x0 + int(x) - 1)
            if kind == "missed":
                u.label = 0
    return out


def accepted_pixels(labels: np.ndarray, item: Uncertain) -> np.ndarray:
    """The pixels a user asserts with Shift-N on a "correct next" object left as it is: the object.

    The ranking showed it because the model doubted it; a user who looked and accepted it says it is
    right, which is the most informative training data there is (a hard case, confirmed). The
    Correct widget marks these pixels reviewed (``marks``: the object becomes training data with
    its background ring, as an edited one) and so does the simulated annotator of
    :mod:`napari_segtool.core.hitl`. A missed region (``label`` 0) asserts nothing: passing over
    it is not saying there is no object there.
    """
    labels = np.asarray(labels)
    if item.kind != "object" or item.label <= 0:
        return np.zeros(labels.shape, bool)
    return labels == item.label


def uncertainty_map(maps: PromptMaps) -> np.ndarray:
    """Per pixel, how unsure the model is that it is object or background: ``1 - |p - 0.5| * 2`` (0..1)."""
    fg = np.asarray(maps.foreground, np.float32)
    return np.clip(1.0 - np.abs(fg - 0.5) * 2.0, 0.0, 1.0)
