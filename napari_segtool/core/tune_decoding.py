"""The instance decoding's thresholds chosen on annotated pixels after training (as StarDist picks its
probability / NMS thresholds on validation images).

A network's maps say *how likely* each pixel is object, interior or boundary; where the decoding cuts
them (``fg_threshold``: the object's edge; ``seed_threshold``: which interiors seed separate objects)
decides the labels. The defaults (0.5 / 0.6) suit the model as it was shipped; fine-tuned on a user's
few annotations its probabilities are calibrated differently, and mean AP at high IoU depends mostly
on where the foreground cut puts the edge. :func:`tune_decoding` computes the maps of the annotated
regions once, decodes them on a coarse grid of both thresholds, scores each against the annotations
(mean AP over IoU 0.5:0.95 on annotated pixels) and returns the best pair, with the score grid
smoothed over neighbouring cells so that one lucky cell of a small region does not decide.
``core.train.iter_train`` stores the result in the model's ``postprocess`` settings (``model.json``),
which every later prediction -- CLI, widgets, human-in-the-loop rounds -- starts from.

Only the examples it is given are used: training calls it with the held-out validation region, never
with pixels it is scored on elsewhere.

:func:`settle_switch` decides the other decoding choice fine-tuning makes: a shipped model may name the
decoding it switches to once fine-tuned (its recipe's ``after_fine_tuning``, e.g. the nuclei U-Net's
``seed_mode`` shape -> interior). The switch is the default; with at least :data:`MIN_OBJECTS` annotated
objects, the starting decoding is kept instead where they decode better with it (by :data:`MIN_GAIN` mean AP),
and the switch stays pending for the next fine-tuning. Taken blindly, the switch cost the first
human-in-the-loop round on the real nuclei image (9 prompt actions: 7 objects fixed, 46 annotated with the
accepted ones; 80 steps, training seeds 1-5): held-out AP@0.5 0.787-0.879 (mean 0.848) with interior seeds
against 0.839-0.917 (mean 0.870) with the same weights split by shape, better in 3 of 5 seeds (mean
AP@0.5:0.95 went the other way, 0.610 against 0.599); the annotated objects chose shape in all five. Below
:data:`MIN_OBJECTS` the default stays: a fine-tune on 3-13 repainted objects split by shape scored 0.51-0.82
where interior seeds scored 0.64-0.87 (docs/benchmarks/hitl_effort.md 2g).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_segtool.core.data import Example
from napari_segtool.core.model import SegModel
from napari_segtool.ops.metrics import instance_scores
from napari_segtool.ops.postprocess import instances_from_maps

__all__ = ["DecodingGrid", "TunedDecoding", "RegionMaps", "DecodingSwitch", "can_tune", "region_maps", "annotated_objects",
           "choose_thresholds", "tune_decoding", "settle_switch"]

#: the settings tuned (per-plane post-processing of the architecture)
TUNED = ("fg_threshold", "seed_threshold")
#: mean AP a choice must gain over the model's own thresholds to replace them: on a validation stripe of ~20
#: objects one object matched at one more IoU threshold is 0.005; smaller gains did not carry over to held-out
#: pixels (real nuclei half-image: +0.006 on the stripe, -0.011 on the other half)
MIN_GAIN = 0.01
#: fewest annotated objects in the validation regions for a choice to replace the model's thresholds: with 42
#: pairs tried, a handful of objects is fitted rather than measured (a human-in-the-loop round on the real nuclei
#: image, the Train widget's 15 % validation split of 16 actions' corrections: tuned AP@0.5 0.743 on the held-out
#: half against 0.867 with the model's own thresholds, same weights, seed 1)
MIN_OBJECTS = 30
#: the model's other settings the interior decoding reads, kept as they are
_KEPT = ("min_size", "min_seed_size", "fill")
#: the ``postprocess`` entry naming the decoding a model switches to once fine-tuned (a recipe's)
SWITCH_KEY = "after_fine_tuning"


@dataclass(frozen=True)
class DecodingGrid:
    """The thresholds tried (every pair)."""

    fg_thresholds: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    seed_thresholds: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class TunedDecoding:
    """The chosen thresholds, their (smoothed) score, the score of the model's own settings, the grid."""

    settings: dict[str, float]
    score: float
    default_score: float
    grid: np.ndarray = field(repr=False)   # (fg, seed) raw mean AP of every pair
    default_settings: dict[str, float] = field(default_factory=dict)  # the thresholds before tuning
    seconds: float = 0.0

    def record(self) -> dict[str, Any]:
        """What the model's training history keeps of it (JSON)."""
        return {**self.settings, "mean_ap": round(self.score, 4), "default": self.default_settings,
                "default_mean_ap": round(self.default_score, 4), "seconds": round(self.seconds, 2)}


@dataclass
class RegionMaps:
    """The network's maps of one annotated region (its bounding box), with the annotation."""

    foreground: np.ndarray
    interior: np.ndarray
    distance: np.ndarray
    labels: np.ndarray
    annotated: np.ndarray


def can_tune(model: SegModel) -> bool:
    """Whether ``model`` decodes instances from foreground / interior / distance maps with both thresholds."""
    if model.meta.task != "instance":
        return False
    arch = model.architecture
    layout = arch.probability_layout(model.meta)
    names = {p.name for p in arch.params_for("instance")}
    return (layout.has_foreground and layout.interior_channel is not None and layout.distance_channel is not None
            and set(TUNED) <= names and model.meta.postprocess.get("seed_mode", "interior") == "interior")


def _annotated_box(model: SegModel, example: Example) -> tuple[tuple[slice, ...], tuple[slice, ...], tuple[slice, ...]]:
    """The annotated bounding box of ``example``, the box grown by the model's halo (clipped to the image) and
    the first box within the grown one: predicted on the grown box, the maps equal the whole image's."""
    margin = model.architecture.halo(model.net, model.meta)
    ys, xs = np.nonzero(example.annotated)
    box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
    outer = tuple(slice(max(0, s.start - margin), s.stop + margin) for s in box)
    inner = tuple(slice(s.start - o.start, s.stop - o.start) for s, o in zip(box, outer))
    return box, outer, inner


def region_maps(model: SegModel, example: Example, device: torch.device) -> RegionMaps | None:
    """The maps of ``example``'s annotated bounding box, predicted with the halo's context around it
    (so they equal the whole image's), or ``None`` when nothing is annotated."""
    if not example.annotated.any():
        return None
    arch, meta = model.architecture, model.meta
    box, outer, inner = _annotated_box(model, example)
    probs = arch.predict_plane(model.net, example.image[outer], meta, device=device,
                               return_probabilities=True).probabilities
    layout = arch.probability_layout(meta)
    probs = probs[(slice(None), *inner)]
    return RegionMaps(np.ascontiguousarray(layout.foreground(probs)), probs[layout.interior_channel],
                      probs[layout.distance_channel], example.labels[box], example.annotated[box])


def _mean_ap(pred: np.ndarray, labels: np.ndarray, annotated: np.ndarray) -> tuple[float, int]:
    """Mean AP (IoU 0.5:0.95) on the annotated pixels, and the number of annotated objects (its weight)."""
    scores = instance_scores(np.where(annotated, pred, 0), np.where(annotated, labels, 0))
    return scores["mean_ap"], scores["n_gt"]


def _weighted(values: Sequence[tuple[float, int]]) -> float:
    """The object-weighted mean of ``(mean AP, objects)`` pairs."""
    weight = sum(n for _, n in values)
    return float(sum(v * n for v, n in values if n) / weight) if weight else float("nan")


def _score(regions: Sequence[RegionMaps], settings: dict) -> float:
    """Object-weighted mean AP of the regions decoded with ``settings``."""
    return _weighted([_mean_ap(instances_from_maps(r.foreground, r.interior, r.distance, **settings), r.labels,
                               r.annotated) for r in regions])


def annotated_objects(examples: Sequence[Example | RegionMaps]) -> int:
    """How many annotated objects ``examples`` (or their regions' maps) hold: ids with a pixel on annotated
    pixels, counted from their labels alone, so before any map is computed."""
    return sum(int(np.unique(ex.labels[ex.annotated & (ex.labels > 0)]).size) for ex in examples)


def choose_thresholds(regions: Sequence[RegionMaps], settings: dict[str, Any],
                      grid: DecodingGrid | None = None) -> TunedDecoding:
    """The pair of :data:`TUNED` thresholds maximising mean AP of ``regions`` decoded with ``settings`` (the
    other interior-decoding settings, e.g. ``min_size``; their ``fg_threshold`` / ``seed_threshold`` are the
    default scored for comparison). Near-ties are decided by the 3x3-smoothed grid; a choice that does not
    beat the default by :data:`MIN_GAIN` keeps the default (sharp maps decode alike over much of the grid, and
    a small region's small gains are noise), and so do regions of fewer than :data:`MIN_OBJECTS` objects."""
    grid = grid or DecodingGrid()
    fixed = {k: v for k, v in settings.items() if k in _KEPT}
    before = {k: float(settings[k]) for k in TUNED if k in settings}
    if len(before) == len(TUNED) and annotated_objects(regions) < MIN_OBJECTS:  # too few to choose by: keep them
        default = _score(regions, {**fixed, **before})
        return TunedDecoding(dict(before), default, default, np.full((0, 0), np.nan), before)
    scores = np.array([[_score(regions, {**fixed, "fg_threshold": f, "seed_threshold": s})
                        for s in grid.seed_thresholds] for f in grid.fg_thresholds])
    default = _score(regions, {**fixed, **before})
    smooth = ndi.uniform_filter(np.nan_to_num(scores, nan=-1.0), size=3, mode="nearest")
    i, j = np.unravel_index(int(np.argmax(smooth)), smooth.shape)
    chosen = {"fg_threshold": float(grid.fg_thresholds[i]), "seed_threshold": float(grid.seed_thresholds[j])}
    if not scores[i, j] >= default + MIN_GAIN and len(before) == len(TUNED):  # not clearly better: keep them
        return TunedDecoding(dict(before), default, default, scores, before)
    return TunedDecoding(chosen, float(scores[i, j]), default, scores, before)




def tune_decoding(model: SegModel, examples: Sequence[Example], device: torch.device | str = "cpu",
                  grid: DecodingGrid | None = None) -> TunedDecoding | None:
    """:func:`choose_thresholds` on the maps of ``examples``' annotated regions (computed once); the model is
    not changed. ``None`` when it cannot be tuned (:func:`can_tune`), no annotated object is given, or fewer
    than :data:`MIN_OBJECTS` are (the thresholds would be kept anyway, so their maps are not computed: about
    a second of a human-in-the-loop round)."""
    if not can_tune(model) or annotated_objects(examples) < MIN_OBJECTS:
        return None
    t0 = time.perf_counter()
    device = torch.device(device) if isinstance(device, str) else device
    model.net.eval()
    with torch.no_grad():
        regions = [r for r in (region_maps(model, ex, device) for ex in examples) if r is not None and r.labels.any()]
    if not regions:
        return None
    result = choose_thresholds(regions, model.architecture.split_postprocess(model.meta).plane, grid)
    result.seconds = time.perf_counter() - t0
    return result


@dataclass
class DecodingSwitch:
    """Whether a fine-tuned model took its ``after_fine_tuning`` decoding, and the scores that decided."""

    switched: bool
    settings: dict[str, Any]         # the switch's settings (e.g. ``{"seed_mode": "interior"}``)
    objects: int                     # annotated objects it was decided on
    score: float = float("nan")      # their object-weighted mean AP decoded with the switch
    kept_score: float = float("nan")  # ... with the starting decoding

    def record(self) -> dict[str, Any]:
        """What the model's training history keeps of it (JSON)."""
        return {"switched": self.switched, **self.settings, "objects": self.objects,
                "mean_ap": round(self.score, 4), "kept_mean_ap": round(self.kept_score, 4)}


def _decoded_score(model: SegModel, examples: Sequence[Example], device: torch.device, settings: dict) -> float:
    """Object-weighted mean AP of the annotated boxes of ``examples`` labelled by ``model`` with ``settings``
    (the architecture's own decoding; the objects' diameter on the grid is the model's, as the examples are at
    the scale it was fine-tuned at)."""
    from napari_segtool.core.plan import model_diameter

    values = []
    for ex in examples:
        if not (ex.annotated & (ex.labels > 0)).any():
            continue
        box, outer, inner = _annotated_box(model, ex)
        labels = model.architecture.predict_plane(model.net, ex.image[outer], model.meta, device=device,
                                                  diameter=model_diameter(model.meta) or None, **settings).labels
        values.append(_mean_ap(labels[inner], ex.labels[box], ex.annotated[box]))
    return _weighted(values)


def settle_switch(model: SegModel, start: dict[str, Any], examples: Sequence[Example],
                  device: torch.device | str = "cpu") -> DecodingSwitch | None:
    """Settle ``model``'s ``after_fine_tuning`` switch (taken from ``start``, the postprocess settings of the model
    it was fine-tuned from): taken, unless the annotated objects of ``examples`` decode better without it.

    ``None`` when ``start`` names no switch. With fewer than :data:`MIN_OBJECTS` annotated objects the switch is
    taken, as the recipe says (too few objects to overrule it). With more, the starting decoding is kept when it
    scores at least :data:`MIN_GAIN` mean AP above the switch on those objects; ``model`` then keeps the switch
    pending (``postprocess[SWITCH_KEY]``), so the next fine-tuning, on more corrections, decides again. Changes
    ``model.meta.postprocess`` in place.
    """
    switch = dict(start.get(SWITCH_KEY) or {})
    if not switch:
        return None
    kept = {k: start[k] for k in switch if k in start}
    decision = DecodingSwitch(True, switch, annotated_objects(examples))
    if decision.objects >= MIN_OBJECTS and kept != switch:
        device = torch.device(device) if isinstance(device, str) else device
        model.net.eval()
        with torch.no_grad():
            decision.score = _decoded_score(model, examples, device, switch)
            decision.kept_score = _decoded_score(model, examples, device, kept)
        decision.switched = not decision.kept_score >= decision.score + MIN_GAIN
    if decision.switched:
        model.meta.postprocess.update(switch)
        model.meta.postprocess.pop(SWITCH_KEY, None)
    else:
        model.meta.postprocess.update(kept)
        model.meta.postprocess[SWITCH_KEY] = switch
    return decision
