"""Mask R-CNN (He et al. 2017) for instance segmentation, sized to train from scratch on a CPU.

Detection itself is torchvision's :class:`~torchvision.models.detection.MaskRCNN`
(RPN, RoIAlign, box and mask heads, losses); this file only chooses its parts
and adapts it to the core's conventions.

Network
-------
* **Backbone**: a narrow ResNet (BasicBlocks, widths ``(16, 32, 64, 128)`` by
  default, strides 4/8/16/32) with **BatchNorm**, wrapped in torchvision's
  :class:`BackboneWithFPN` (``fpn_channels`` = 64, plus the usual max-pooled
  stride-64 level). No pretrained weights exist for it, so frozen BN would be
  meaningless; BatchNorm (not GroupNorm) because at inference it uses running
  statistics, so a tile's features do not depend on the rest of the tile and
  tiled predictions match whole-plane ones. ``meta.in_channels`` feeds the first
  conv, so any number of channels works. Heads are slimmed too (box MLP 256,
  mask head 2×48 channels): about 1.4M parameters in all.
* **Anchors** come from the training labels (:meth:`configure_from_data`): the
  finest FPN level gets sizes ``base`` and ``base·√2``, each coarser level
  doubles them, and three aspect ratios ``(1/r, 1, r)`` are used. ``base`` is a
  bit below the 5th percentile of the objects' box size ``√(h·w)`` and ``r`` the
  90th percentile of their box elongation. Only the *values* change with the
  data, never the number of anchors per location, so the network built before
  the data was seen keeps its shape; :func:`_apply_runtime` writes the values
  from ``meta`` into the module before every loss/prediction, and
  :meth:`build` uses them from ``meta.arch_kwargs``.
* **No resampling**: torchvision's transform resizes every image to
  ``min_size=800`` (11 s per CPU step, and small objects are interpolated away).
  Here :class:`NativeTransform` never resizes; the images are already percentile
  normalised so ``image_mean=0``, ``image_std=1``; padding to a multiple of 32 is
  kept (zeros, which is what "below the low percentile" looks like).

Training targets and cut objects
--------------------------------
Each patch's instance ids become ``boxes`` / ``masks`` / ``labels=1`` of the
*visible, annotated* part of each object. torchvision's RPN and RoI samplers
cannot be told to ignore pixels, so instead the **image** is made to agree with
the targets: every pixel that carries no label information (outside the
``annotated`` mask, including padding introduced by augmentation) is set to 0 —
blank, like the zero padding past a plane's border at inference — and so is every
sliver we drop from the targets (objects with fewer than ``min_visible`` annotated
pixels). Whatever the network sees is therefore labelled correctly: an object cut
by the patch edge or by the annotation edge is a positive with its visible mask
(at inference objects cut by the plane border are likewise seen cut), and nothing
the annotator did not label is ever taught as background. Patches without any
object give valid (background-only) losses: torchvision accepts ``(0, 4)`` boxes.

Tiled inference
---------------
The plane is cut into tiles of ``tile_size`` (multiple of 32, starting at
multiples of 32 so feature grids line up with a whole-plane pass) overlapping by
at least ``2·margin``, where ``margin`` (``meta.postprocess['tile_margin']``) is
at least the largest object measured in the training data. Each tile *owns* the
region between the mid-lines of its overlaps; a detection is kept from a tile
only when its box centre lies in that region (give or take ``margin/4``), so an
object up to ``margin`` in size is always taken from a tile that contains it
whole. Tiles at the plane's edges read :data:`BORDER_PAD` zeros beyond them
(:func:`tile_block`), so objects cut by the plane's edge meet blank pixels as cut objects did
in training, not the bare edge of the tensor. The few duplicates the tolerance lets through are removed while pasting:
detections are pasted in order (not touching an inner tile edge first, then by
score) into the label image, a detection whose mask is mostly covered by an object
already pasted (IoU >= ``nms_iou`` or > half of its own pixels) is dropped, and on
partial overlaps the earlier (higher-scoring) object keeps the pixels. Before pasting,
:func:`drop_merged` removes the detections that two or more smaller ones make up (two touching
nuclei detected as one as well as each alone: which one the IoU rule kept was a coin toss, the
main miss on real nuclei); the per-tile box NMS runs at :data:`BOX_NMS` so that both reach it.
Memory is bounded by the tile: masks are pasted box by box, never as full-plane arrays.

Detections depend on the tile (its context, proposals and NMS), so the tiles are always those
of the *whole* plane: a window of it (a dask chunk, handed over as a
:class:`~napari_segtool.ops.chunked.PlacedPlane`) runs the tiles of the whole plane's grid it
holds whole, and :meth:`MaskRCNNArchitecture.window_extent` tells ``core.batch`` how far to
widen a chunk's window for exact labels in its region. Each tile runs alone (batched
convolutions differ in the last bits), so a tile gives the same detections on every path
and chunked labels equal in-memory ones up to ids.

``meta.receptive_field`` is set to ``2·margin``: the context, beyond every kept
object's box, that the tiling guarantees (the U-Net convention, where the halo is
half the receptive field). The backbone's theoretical receptive field is much
larger (several hundred pixels, mostly from the coarse FPN levels) and is stored
in ``meta.training['backbone_receptive_field']`` for information; detections do
not need all of it, as the tiled-vs-whole-plane tests show.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from napari_segtool.kernel.events import CancelToken
from napari_segtool.kernel.meta import ModelMeta
from napari_segtool.kernel.params import Param, ProbabilityLayout
from napari_segtool.models.base import Architecture, Patch, PlaneResult, ProgressFn
from napari_segtool.ops.chunked import placement

ALIGN = 32  # largest backbone stride used by the RoI heads; tiles start on this grid
MIN_MARGIN = 64  # two cells of the stride-32 level: its border effects stay out of owned regions
MAX_COVERED = 0.5  # a detection with more of its pixels already claimed is a duplicate
BORDER_PAD = ALIGN  # zeros a tile reads beyond the plane's edges (see tile_block)
MIN_TILE = 256  # smaller tiles starve the coarse FPN levels of context (see effective_tile_size)
AREA_REF = 256 * 256
# a detection whose mask is mostly made of two or more other, smaller, nearly disjoint detections is two touching
# objects detected as one (see drop_merged). Chosen on held-out simulations (nuclei-maskrcnn, mean AP@0.5 of 14
# recipe images seed 3 / 10 large-nuclei images): none 0.756 / 0.762; cover 0.5, 0.6, 0.8 at box NMS 0.7: 0.766 /
# 0.791, 0.770 / 0.786, 0.762 / 0.754; cover 0.6 at box NMS 0.6: 0.770 / 0.785; box NMS 0.7 alone 0.750 / 0.757.
# Not used to choose: seed 4 0.767 -> 0.757 (box NMS 0.5: 0.760); splitting masks at distance-transform necks
# (h-maxima) instead: 0.732-0.756 / 0.759-0.767, not kept
PART_COVER = 0.6  # share of the larger mask the parts cover together
PART_INSIDE = 0.8  # share of a part's own mask inside the larger one
PART_OVERLAP = 0.2  # share of a part's mask (inside the larger one) other parts may already cover
BOX_NMS = 0.7  # box IoU of torchvision's per-tile NMS: a merged box has IoU ~0.5 with each part's box
PRE_NMS_PER_DETECTION = 1.0  # RPN boxes per FPN level before NMS, per allowed detection
POST_NMS_PER_DETECTION = 1.0  # proposals to the box head (more only added false positives)  # detection/proposal limits are given per this many pixels

DEFAULT_KWARGS: dict[str, Any] = {
    "widths": [16, 32, 64, 128],
    "blocks": [1, 2, 2, 1],
    "stem_width": 16,
    "norm": "batch",
    "fpn_channels": 64,
    "representation_size": 256,
    "mask_layers": [48, 48],
    "anchor_base": 8.0,          # anchor size (px) at the finest level; data-derived
    "anchor_scales_per_level": 1,
    "aspect_ratio": 2.0,         # ratios (1/r, 1, r); data-derived
    "max_detections": 300,       # per AREA_REF pixels; data-derived
    "roi_levels": 4,             # RoIAlign pools from the finest this many FPN levels
    "box_batch_size": 128,       # RoIs sampled per AREA_REF training pixels (64..512 per image)
}

_I = ("instance",)
#: per-plane settings (see "Tiled inference" above)
POSTPROCESS_PARAMS = (
    Param("score_threshold", float, 0.5, 0.0, 1.0, applies_to=_I, label="Score",
          help="Detection score cut-off (Mask R-CNN); lower keeps less certain objects"),
    Param("mask_threshold", float, 0.5, 0.0, 1.0, applies_to=_I, label="Mask",
          help="Mask probability cut-off (Mask R-CNN); lower makes objects larger"),
    Param("min_size", int, 10, 0, 100000, applies_to=_I, label="Min size",
          help="Objects smaller than this (pixels) are removed"),
    Param("nms_iou", float, 0.5, 0.0, 1.0, applies_to=_I, advanced=True,
          help="A detection overlapping a better one by this IoU is a duplicate"),
    Param("tile_margin", int, 64, 0, 4096, applies_to=_I, advanced=True,
          help="Tile overlap half-width (pixels), at least the largest object; set from the training data"),
)
#: network settings of a new Mask R-CNN (anchors and limits are set from the training data)
ARCH_PARAMS = (
    Param("fpn_channels", int, 64, 8, 512, step=8, label="FPN channels", help="Channels of the feature pyramid"),
    Param("representation_size", int, 256, 16, 2048, step=16, label="Box head width",
          help="Width of the box head's two fully connected layers"),
    Param("widths", list, [16, 32, 64, 128], advanced=True, help="Channels of the ResNet stages"),
    Param("blocks", list, [1, 2, 2, 1], advanced=True, help="Basic blocks per ResNet stage"),
    Param("stem_width", int, 16, 4, 512, advanced=True, help="Channels of the stem"),
    Param("norm", str, "batch", choices=("batch", "group"), advanced=True, help="Normalisation layer"),
    Param("mask_layers", list, [48, 48], advanced=True, help="Channels of the mask head's convolutions"),
    Param("anchor_base", float, 8.0, 1.0, 1024.0, advanced=True, help="Anchor size (px) at the finest level"),
    Param("anchor_scales_per_level", int, 1, 1, 4, advanced=True, help="Anchor sizes per FPN level"),
    Param("aspect_ratio", float, 2.0, 1.0, 16.0, advanced=True, help="Anchor aspect ratios (1/r, 1, r)"),
    Param("max_detections", int, 300, 1, 100000, advanced=True, help="Detections per 256x256 pixels"),
    Param("roi_levels", int, 4, 1, 8, advanced=True, help="FPN levels RoIAlign pools from"),
    Param("box_batch_size", int, 128, 1, 4096, advanced=True, help="RoIs sampled per 256x256 training pixels"),
)
assert [p.name for p in ARCH_PARAMS if p.name in DEFAULT_KWARGS] == [p.name for p in ARCH_PARAMS]


# ----------------------------------------------------------------------------- network
def _norm(kind: str | None, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


class BasicBlock(nn.Module):
    """ResNet basic block (two 3×3 convs + identity/projection shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str | None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=norm is None)
        self.bn1 = _norm(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=norm is None)
        self.bn2 = _norm(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=norm is None), _norm(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x), inplace=True)


class SmallResNet(nn.Sequential):
    """Narrow ResNet trunk: stem (stride 2) then stages ``layer1..layerN`` at strides 4, 8, 16, ..."""

    def __init__(self, in_channels: int, widths: Sequence[int], blocks: Sequence[int], stem_width: int,
                 norm: str | None):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["stem"] = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, 3, 2, 1, bias=norm is None), _norm(norm, stem_width),
            nn.ReLU(inplace=True),
            nn.Conv2d(stem_width, stem_width, 3, 1, 1, bias=norm is None), _norm(norm, stem_width),
            nn.ReLU(inplace=True),
        )
        cin = stem_width
        for i, (c, n) in enumerate(zip(widths, blocks)):
            stage = [BasicBlock(cin, c, 2, norm)] + [BasicBlock(c, c, 1, norm) for _ in range(n - 1)]
            layers[f"layer{i + 1}"] = nn.Sequential(*stage)
            cin = c
        super().__init__(layers)


def trunk_receptive_field(blocks: Sequence[int]) -> int:
    """Theoretical receptive field (px) of the coarsest trunk stage (FPN top-down reaches all levels)."""
    rf, jump = 1, 1
    rf += 2 * jump  # stem conv s2
    jump *= 2
    rf += 2 * jump  # stem conv
    for n in blocks:
        rf += 2 * jump  # strided conv
        jump *= 2
        rf += 2 * jump * (2 * n - 1)  # remaining convs of the stage
    return rf


class MaskPredictor(nn.Module):
    """Mask logits: a 1×1 conv on the 14×14 RoI features, bilinearly upsampled to 28×28.

    Replaces torchvision's transposed-conv predictor, whose CPU kernel cost ~50 ms per
    step here; the masks of small objects lose nothing, large ones are a bit smoother.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.mask_fcn_logits = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(self.mask_fcn_logits(x), scale_factor=2, mode="bilinear", align_corners=False)


class NativeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without resizing (images keep their native resolution)."""

    def resize(self, image, target=None):  # noqa: D102 - see class docstring
        return image, target


def anchor_config(kwargs: dict[str, Any]) -> tuple[tuple[tuple[float, ...], ...], tuple[tuple[float, ...], ...]]:
    """Anchor sizes per FPN level and aspect ratios from ``arch_kwargs``."""
    levels = len(kwargs["widths"]) + 1  # + the max-pooled extra level
    base = float(kwargs["anchor_base"])
    k = int(kwargs["anchor_scales_per_level"])
    sizes = tuple(tuple(round(base * 2 ** (lvl + j / k), 2) for j in range(k)) for lvl in range(levels))
    r = float(kwargs["aspect_ratio"])
    ratios = ((round(1 / r, 4), 1.0, round(r, 4)),) * levels
    return sizes, ratios


def build_maskrcnn(in_channels: int, num_classes: int, kwargs: dict[str, Any]) -> MaskRCNN:
    widths, blocks = list(kwargs["widths"]), list(kwargs["blocks"])
    trunk = SmallResNet(in_channels, widths, blocks, int(kwargs["stem_width"]), kwargs["norm"])
    names = [f"layer{i + 1}" for i in range(len(widths))]
    fpn_ch = int(kwargs["fpn_channels"])
    backbone = BackboneWithFPN(trunk, {n: str(i) for i, n in enumerate(names)}, widths, fpn_ch)
    sizes, ratios = anchor_config(kwargs)
    feat = [str(i) for i in range(min(len(widths), int(kwargs["roi_levels"])))]
    rep = int(kwargs["representation_size"])
    mask_layers = list(kwargs["mask_layers"])
    net = MaskRCNN(
        backbone,
        num_classes=None,  # given by the predictors below
        min_size=256, max_size=256,  # unused: NativeTransform never resizes
        image_mean=[0.0] * in_channels, image_std=[1.0] * in_channels,
        rpn_anchor_generator=AnchorGenerator(sizes, ratios),
        rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=1000,
        rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000,
        box_roi_pool=MultiScaleRoIAlign(feat, 7, 1),
        box_head=TwoMLPHead(fpn_ch * 7 * 7, rep),
        box_predictor=FastRCNNPredictor(rep, num_classes),
        box_batch_size_per_image=int(kwargs["box_batch_size"]),
        box_detections_per_img=int(kwargs["max_detections"]),
        mask_roi_pool=MultiScaleRoIAlign(feat, 14, 1),
        mask_head=MaskRCNNHeads(fpn_ch, mask_layers, 1),
        mask_predictor=MaskPredictor(mask_layers[-1], num_classes),
    )
    net.transform = NativeTransform(256, 256, [0.0] * in_channels, [1.0] * in_channels, size_divisible=ALIGN)
    return net


def _apply_runtime(net: MaskRCNN, meta: ModelMeta, area: int, training: bool) -> None:
    """Write data-derived anchors and area-scaled detection limits from ``meta`` into ``net``.

    None of these are weights: anchors are recomputed tensors, the limits plain attributes.
    """
    kw = {**DEFAULT_KWARGS, **meta.arch_kwargs}
    sizes, ratios = anchor_config(kw)
    gen = net.rpn.anchor_generator
    if tuple(gen.sizes) != sizes or tuple(gen.aspect_ratios) != ratios:
        net.rpn.anchor_generator = AnchorGenerator(sizes, ratios)
    # strictly proportional to the area (above one AREA_REF), so a whole plane gets the
    # same budget per pixel as its tiles and both find the same objects
    scale = max(1.0, area / AREA_REF)
    per_ref = float(kw["max_detections"])
    key = "training" if training else "testing"
    net.rpn._pre_nms_top_n[key] = int(math.ceil(max(1000.0, PRE_NMS_PER_DETECTION * per_ref) * scale))
    net.rpn._post_nms_top_n[key] = int(math.ceil(max(1000.0, POST_NMS_PER_DETECTION * per_ref) * scale))
    net.roi_heads.detections_per_img = int(math.ceil(per_ref * scale))
    if training:
        rois = int(np.clip(float(kw["box_batch_size"]) * area / AREA_REF, 64, 512))
        net.roi_heads.fg_bg_sampler.batch_size_per_image = rois


# ----------------------------------------------------------------------------- data stats
def object_boxes(labels: np.ndarray) -> np.ndarray:
    """``(N, 4)`` boxes ``y0, x0, y1, x1`` (exclusive ends) of the non-empty ids in ``labels``."""
    from scipy import ndimage as ndi

    labels = np.asarray(labels)
    if labels.max() <= 0:
        return np.zeros((0, 4), np.int64)
    slices = ndi.find_objects(labels.astype(np.int64, copy=False))
    return np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in slices if s is not None],
                    dtype=np.int64).reshape(-1, 4)


def object_stats(label_images: Sequence[np.ndarray]) -> dict[str, float]:
    """Box size/elongation percentiles and the largest extent of the labelled objects."""
    boxes, areas = [], []
    for lab in label_images:
        lab = np.asarray(lab)
        b = object_boxes(lab)
        if len(b):
            boxes.append(b)
            counts = np.bincount(lab.ravel().astype(np.int64))[1:]
            areas.extend(counts[counts > 0].tolist())
    if not boxes:
        return {}
    b = np.concatenate(boxes).astype(np.float64)
    h, w = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    size = np.sqrt(h * w)
    elong = np.exp(np.abs(np.log(h / w)))
    return {
        "n_objects": int(len(b)),
        "size_p5": float(np.percentile(size, 5)),
        "size_median": float(np.median(size)),
        "size_p95": float(np.percentile(size, 95)),
        "max_extent": float(max(h.max(), w.max())),
        "elongation_p90": float(np.percentile(elong, 90)),
        "median_area": float(np.median(areas)),
    }


def _round_up(v: float, m: int) -> int:
    return int(math.ceil(v / m) * m)


# ----------------------------------------------------------------------------- targets
def make_target(patch: Patch, min_visible: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Blanked image and torchvision target (``boxes`` xyxy, ``masks``, ``labels``) for one patch.

    See the module docstring: pixels without label information are set to 0 in the
    image, objects keep their visible annotated part as mask, slivers smaller than
    ``min_visible`` pixels are dropped (and blanked too).
    """
    from scipy import ndimage as ndi

    ann = np.asarray(patch.annotated, bool)
    lab = np.where(ann, patch.labels, 0).astype(np.int64)
    image = np.array(patch.image, dtype=np.float32, copy=True)
    blank = ~ann
    boxes, masks = [], []
    if lab.max() > 0:
        ids, lab_c = np.unique(lab, return_inverse=True)
        lab_c = lab_c.reshape(lab.shape)
        counts = np.bincount(lab_c.ravel())
        slices = ndi.find_objects(lab_c)
        for k in range(1, len(ids)):
            sl = slices[k - 1]
            if sl is None:
                continue
            if counts[k] < min_visible:
                blank[sl] |= lab_c[sl] == k
                continue
            m = np.zeros(lab.shape, np.uint8)
            m[sl] = lab_c[sl] == k
            masks.append(m)
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
    image[blank] = 0.0
    h, w = lab.shape
    target = {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "masks": np.stack(masks) if masks else np.zeros((0, h, w), np.uint8),
        "labels": np.ones(len(boxes), np.int64),
    }
    return image, target


# ----------------------------------------------------------------------------- tiling
_AxisTiles = tuple[list[int], int, list[tuple[float, float]]]


def axis_tiles(length: int, size: int, margin: int) -> _AxisTiles:
    """Tile starts along one axis, the tile extent, and each tile's owned interval.

    Starts are multiples of :data:`ALIGN`; neighbouring tiles overlap by at least
    ``2·margin``; owned intervals split each overlap at its mid-line.
    """
    if length <= size:
        return [0], _round_up(length, ALIGN), [(-math.inf, math.inf)]
    step = ((size - 2 * margin) // ALIGN) * ALIGN
    if step <= 0:
        raise ValueError(f"tile size {size} too small for margin {margin}")
    last = _round_up(length - size, ALIGN)
    starts = [0]
    while starts[-1] + size < length:
        starts.append(min(starts[-1] + step, last))
    bounds = [(starts[i + 1] + min(starts[i] + size, length)) / 2 for i in range(len(starts) - 1)]
    edges = [-math.inf] + bounds + [math.inf]
    return starts, size, [(edges[i], edges[i + 1]) for i in range(len(starts))]


def _held(starts: Sequence[int], size: int, origin: int, length: int, plane_length: int) -> list[int]:
    """Indices of the tiles along one axis that a window (``origin``, ``length``) of the plane holds whole;
    a tile reaching past the plane's end needs the window to reach that end (the rest is zero padding)."""
    end = origin + length
    return [i for i, s in enumerate(starts) if s >= origin and (s + size <= end or end >= plane_length)]


def effective_tile_size(tile_size: int, margin: int) -> int:
    """``tile_size`` rounded to :data:`ALIGN`, at least :data:`MIN_TILE` and ``4·margin``.

    ``4·margin`` keeps at least half of every tile as its own core. Below 256 px the
    coarse FPN levels (4×4 cells at stride 32 on a 128 tile) are mostly border padding
    and detections of touching objects start to differ from a whole-plane pass.
    """
    return max(_round_up(max(tile_size, MIN_TILE), ALIGN), _round_up(4 * margin, ALIGN))


def read_block(image: Any, y0: int, x0: int, ty: int, tx: int) -> np.ndarray:
    """Read ``ty × tx`` pixels from ``y0, x0`` (may be negative), zero-padded past the plane's edges."""
    h, w = image.shape[:2]
    ya, xa = max(0, y0), max(0, x0)
    block = np.asarray(image[ya:max(ya, min(h, y0 + ty)), xa:max(xa, min(w, x0 + tx))], dtype=np.float32)
    before = (ya - y0, xa - x0)
    after = (ty - before[0] - block.shape[0], tx - before[1] - block.shape[1])
    if any(before) or any(after):
        block = np.pad(block, ((before[0], after[0]), (before[1], after[1]), (0, 0)))
    return block


def tile_block(start: int, size: int, first: bool, last: bool, length: int) -> tuple[int, int]:
    """Where a tile's input block starts and how long it is along one axis.

    A tile at the plane's start or end reaches :data:`BORDER_PAD` zeros beyond that edge (a
    block stays on the :data:`ALIGN` grid): the network was trained on patches where cut objects
    meet blanked (zero) pixels, and at the bare edge of the input tensor it found more false
    fragments of the cut objects than when the same plane is framed by background (AP@0.5 of
    the real nuclei image 0.753 bare vs 0.787 framed by noise; with the pad 0.761 vs 0.762).
    """
    lo = start - BORDER_PAD if first else start
    hi = max(start + size, length + BORDER_PAD) if last else start + size
    return lo, _round_up(hi - lo, ALIGN)


def paste_mask(prob: torch.Tensor, box: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, np.ndarray] | None:
    """Resample an ``M×M`` mask probability onto the pixels under ``box`` (x0, y0, x1, y1).

    Inverse of torchvision's target projection (``roi_align`` with ``aligned=False``):
    mask cell ``j`` covers pixel coordinate ``x0 + (j + 0.5)·w/M``, so pixel ``i`` is at
    grid_sample coordinate ``2·(i - x0)/w - 1``. Returns ``(y0, x0, probs)`` clipped to ``shape``.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    bw, bh = max(x1 - x0, 1e-3), max(y1 - y0, 1e-3)
    ia, ib = max(0, int(math.floor(x0)) - 1), min(shape[1], int(math.ceil(x1)) + 1)
    ja, jb = max(0, int(math.floor(y0)) - 1), min(shape[0], int(math.ceil(y1)) + 1)
    if ib <= ia or jb <= ja:
        return None
    gx = 2 * (torch.arange(ia, ib, dtype=torch.float32) - x0) / bw - 1
    gy = 2 * (torch.arange(ja, jb, dtype=torch.float32) - y0) / bh - 1
    grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
    out = F.grid_sample(prob[None, None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return ja, ia, out[0, 0].numpy()


class _Candidate:
    __slots__ = ("score", "cls", "clean", "y0", "x0", "prob")

    def __init__(self, score: float, cls: int, clean: bool, y0: int, x0: int, prob: np.ndarray):
        self.score, self.cls, self.clean, self.y0, self.x0, self.prob = score, cls, clean, y0, x0, prob


def drop_merged(candidates: list[_Candidate], mask_thr: float, cover: float = PART_COVER) -> list[_Candidate]:
    """``candidates`` less the *merged* detections: masks that two or more smaller detections make up.

    Two touching nuclei are often detected three times: each alone and both as one object. The merged
    box has an IoU of about 0.5 with each single box, so box NMS and the IoU rule of the pasting keep
    whichever scores higher, a coin toss. A candidate is dropped when at least two smaller candidates,
    each with :data:`PART_INSIDE` of its mask inside it and covering at most :data:`PART_OVERLAP` of
    the others' pixels (parts taken by score), together cover ``cover`` of its mask; the parts are then
    pasted instead. A single object is kept: its fragments, if any, do not tile it. The rule looks at
    the candidates' own masks only (no statistic of the image), so every window of a plane decides alike.
    """
    if cover <= 0 or len(candidates) < 3:
        return candidates
    masks = [c.prob >= mask_thr for c in candidates]
    area = np.array([m.sum() for m in masks], np.int64)
    y0 = np.array([c.y0 for c in candidates])
    x0 = np.array([c.x0 for c in candidates])
    y1 = y0 + np.array([m.shape[0] for m in masks])
    x1 = x0 + np.array([m.shape[1] for m in masks])
    merged = np.zeros(len(candidates), bool)
    for i in np.flatnonzero(area > 0):
        near = np.flatnonzero((y0 < y1[i]) & (y1 > y0[i]) & (x0 < x1[i]) & (x1 > x0[i]) & (area < area[i])
                              & (area > 0))
        if len(near) < 2:
            continue
        whole = masks[i]
        taken = np.zeros(whole.shape, bool)
        parts = 0
        for k in sorted(near, key=lambda k: -candidates[k].score):
            part = _placed(masks[k], y0[k] - y0[i], x0[k] - x0[i], whole.shape) & whole
            inside = int(part.sum())
            if inside < PART_INSIDE * area[k] or int((part & taken).sum()) > PART_OVERLAP * inside:
                continue
            taken |= part
            parts += 1
        merged[i] = parts >= 2 and int(taken.sum()) >= cover * area[i]
    return [c for c, m in zip(candidates, merged) if not m]


def _placed(mask: np.ndarray, dy: int, dx: int, shape: tuple[int, int]) -> np.ndarray:
    """``mask`` placed at offset ``dy, dx`` on a ``shape`` grid (cropped)."""
    out = np.zeros(shape, bool)
    ya, xa = max(0, dy), max(0, dx)
    yb, xb = min(shape[0], dy + mask.shape[0]), min(shape[1], dx + mask.shape[1])
    if yb > ya and xb > xa:
        out[ya:yb, xa:xb] = mask[ya - dy:yb - dy, xa - dx:xb - dx]
    return out


# ----------------------------------------------------------------------------- architecture
class MaskRCNNArchitecture(Architecture):
    name = "maskrcnn"
    tasks = ("instance",)
    postprocess_params = POSTPROCESS_PARAMS
    arch_params = ARCH_PARAMS
    # align: 1 (the default). predict_plane puts its own tiles on the ALIGN grid of the whole plane.
    # receptive_field: meta.receptive_field (2 * tile_margin, see the module docstring).

    def probability_layout(self, meta: ModelMeta) -> ProbabilityLayout:
        """One map: the merged mask probabilities of the detected objects."""
        return ProbabilityLayout(channels=("object",), foreground_channels=(0,))

    def training_problem(self, meta: ModelMeta, patch_size: int, batch_size: int) -> str | None:
        if batch_size * max(1, patch_size // ALIGN) ** 2 < 2:
            # the backbone's last level (stride 32) batch-normalises over batch x pixels: one value cannot be
            return (f"Mask R-CNN cannot train on batches of one {patch_size}-pixel patch: "
                    f"use patch_size >= 64 or batch_size >= 2")
        return super().training_problem(meta, patch_size, batch_size)

    def default_meta(self, task: str, in_channels: int, classes: Sequence[str], **arch_kwargs: Any) -> ModelMeta:
        if task != "instance":
            raise ValueError("Mask R-CNN only supports the 'instance' task")
        unknown = set(arch_kwargs) - set(DEFAULT_KWARGS)
        if unknown:
            raise ValueError(f"unknown Mask R-CNN arguments: {sorted(unknown)}")
        kwargs = {**DEFAULT_KWARGS, **arch_kwargs}
        kwargs["widths"], kwargs["blocks"] = list(kwargs["widths"]), list(kwargs["blocks"])
        kwargs["mask_layers"] = list(kwargs["mask_layers"])
        if len(kwargs["widths"]) != len(kwargs["blocks"]):
            raise ValueError("'widths' and 'blocks' must have the same length")
        meta = ModelMeta(arch=self.name, task=task, in_channels=in_channels, arch_kwargs=kwargs,
                         classes=list(classes), tile_size=512)
        meta.postprocess = {"score_threshold": 0.5, "mask_threshold": 0.5, "nms_iou": 0.5, "min_size": 10,
                            "tile_margin": 64}
        meta.receptive_field = 2 * meta.postprocess["tile_margin"]
        meta.training["backbone_receptive_field"] = trunk_receptive_field(kwargs["blocks"])
        return meta

    def build(self, meta: ModelMeta) -> MaskRCNN:
        kwargs = {**DEFAULT_KWARGS, **meta.arch_kwargs}
        return build_maskrcnn(meta.in_channels, max(2, len(meta.classes)), kwargs)

    def configure_from_data(self, meta: ModelMeta, label_images: Sequence[np.ndarray]) -> None:
        """Anchors, tile margin, detection limit and size filter from the training objects."""
        stats = object_stats(label_images)
        if not stats:
            return
        kw = meta.arch_kwargs
        kw["anchor_base"] = round(float(np.clip(0.8 * stats["size_p5"], 4.0, 256.0)), 2)
        kw["aspect_ratio"] = round(float(np.clip(stats["elongation_p90"], 1.25, 4.0)), 3)
        # a fully packed tile: one object per median area (generous upper bound), at least 100
        kw["max_detections"] = int(np.clip(AREA_REF / max(stats["median_area"], 1.0), 100, 2000))
        margin = _round_up(max(MIN_MARGIN, 1.1 * stats["max_extent"]), 16)
        meta.postprocess["tile_margin"] = int(margin)
        meta.postprocess["min_size"] = int(max(4, 0.15 * stats["median_area"]))
        meta.receptive_field = 2 * int(margin)
        meta.tile_size = int(max(meta.tile_size, effective_tile_size(meta.tile_size, margin)))
        meta.training["object_size"] = stats

    # ------------------------------------------------------------------ training
    def loss(self, net: nn.Module, patches: Sequence[Patch], meta: ModelMeta, device: torch.device) -> torch.Tensor:
        net.train()
        h, w = patches[0].labels.shape
        _apply_runtime(net, meta, h * w, training=True)
        stats = meta.training.get("object_size", {})
        min_visible = int(max(4, 0.1 * stats.get("median_area", 0.0)))
        images, targets = [], []
        for p in patches:
            img, tgt = make_target(p, min_visible)
            images.append(torch.from_numpy(img).permute(2, 0, 1).contiguous().to(device))
            targets.append({k: torch.from_numpy(v).to(device) for k, v in tgt.items()})
        losses = net(images, targets)
        return sum(losses.values())

    # ---------------------------------------------------------------- inference
    @torch.inference_mode()
    def detect(self, net: MaskRCNN, tiles: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Raw detections per tile: ``boxes`` (xyxy, tile pixels), ``scores``, ``labels``, ``masks`` (N,M,M)."""
        images, _ = net.transform(list(tiles))
        features = net.backbone(images.tensors)
        proposals, _ = net.rpn(images, features)
        detections, _ = net.roi_heads(features, proposals, images.image_sizes)
        for d in detections:
            d["masks"] = d["masks"][:, 0] if "masks" in d else torch.zeros((0, 28, 28))
        return detections

    def _tile_grid(self, meta: ModelMeta, plane_hw: tuple[int, int], tile_size: int | None,
                   params: dict[str, Any]) -> tuple[_AxisTiles, _AxisTiles, int]:
        """The tiles of a whole plane (per axis: starts, extent, owned intervals) and the tile margin."""
        margin = int(params.get("tile_margin", 64))
        size = effective_tile_size(tile_size or meta.tile_size, margin)
        return axis_tiles(plane_hw[0], size, margin), axis_tiles(plane_hw[1], size, margin), margin

    def window_extent(self, meta: ModelMeta, plane_hw: tuple[int, int], region: tuple[int, int, int, int], *,
                      tile_size: int | None = None, postprocess: Any = None) -> tuple[int, int, int, int]:
        """Whole tiles: every tile whose owned interval (give or take ``margin/4``) comes within two margins of
        ``region`` (a kept object is at most a margin across, and may lose pixels to an overlapping one), plus
        the pixel :func:`paste_mask` reaches beyond a box, clipped to the plane."""
        params = self.split_postprocess(meta, postprocess).plane
        grid_y, grid_x, margin = self._tile_grid(meta, plane_hw, tile_size, params)
        out = []
        for (starts, size, owned), lo, hi, n in ((grid_y, region[0], region[1], plane_hw[0]),
                                                 (grid_x, region[2], region[3], plane_hw[1])):
            tol = margin / 4
            near = [i for i, (a, b) in enumerate(owned) if a - tol < hi + 2 * margin and b + tol > lo - 2 * margin]
            out += [max(0, starts[near[0]] - 1), min(n, starts[near[-1]] + size + 1)]
        return out[0], out[1], out[2], out[3]

    def predict_plane(self, net: nn.Module, image: Any, meta: ModelMeta, *, device: torch.device,
                      tile_size: int | None = None, batch_size: int = 2, return_probabilities: bool = False,
                      progress: ProgressFn | None = None, cancel: CancelToken | None = None,
                      **postprocess: Any) -> PlaneResult:
        """Labels of ``image``, tiled on the grid of the whole plane it belongs to (a window of a plane,
        :class:`~napari_segtool.ops.chunked.PlacedPlane`, runs the tiles of that grid it holds whole)."""
        params = self.split_postprocess(meta, postprocess).plane
        score_thr = float(params.get("score_threshold", 0.5))
        mask_thr = float(params.get("mask_threshold", 0.5))
        nms_iou = float(params.get("nms_iou", 0.5))
        min_size = int(params.get("min_size", 0))
        h, w = image.shape[:2]
        origin, plane_hw = placement(image)
        (ys, ty, own_y), (xs, tx, own_x), margin = self._tile_grid(meta, plane_hw, tile_size, params)
        iy = _held(ys, ty, origin[0], h, plane_hw[0])
        ix = _held(xs, tx, origin[1], w, plane_hw[1])
        tiles = [(i, j) for i in iy for j in ix]
        tol = margin / 4

        net.eval()
        net.roi_heads.score_thresh = score_thr
        net.roi_heads.nms_thresh = max(nms_iou, BOX_NMS)  # boxes of a merged pair and its parts both reach drop_merged
        candidates: list[_Candidate] = []
        # one tile per pass (``batch_size`` is not used): batched convolutions differ in the last bits from
        # single ones (boxes by ~3e-5 px), and a window's tiles are batched with other neighbours than a whole
        # plane's; alone, a tile gives the same detections on every path (a CPU gains nothing from batching)
        for done, (i, j) in enumerate(tiles, start=1):
            if cancel is not None:
                cancel.raise_if_cancelled()
            by, bh = tile_block(ys[i], ty, i == 0, i == len(ys) - 1, plane_hw[0])
            bx, bw = tile_block(xs[j], tx, j == 0, j == len(xs) - 1, plane_hw[1])
            block = read_block(image, by - origin[0], bx - origin[1], bh, bw)
            x = torch.from_numpy(block).permute(2, 0, 1)[None].contiguous().to(device)
            _apply_runtime(net, meta, bh * bw, training=False)
            det = self.detect(net, x)[0]
            candidates.extend(self._tile_candidates(det, by, bx, bh, bw, own_y[i], own_x[j], tol, plane_hw,
                                                    (i > 0, j > 0, i < len(ys) - 1, j < len(xs) - 1), origin, (h, w)))
            if progress is not None:
                progress(done, len(tiles))
        candidates = drop_merged(candidates, mask_thr)
        labels, probs, table = self._merge(candidates, (h, w), mask_thr, nms_iou, min_size, return_probabilities)
        for row in table:
            row["class_name"] = meta.classes[row["class"]] if row["class"] < len(meta.classes) else str(row["class"])
        return PlaneResult(labels, probs, table)

    @staticmethod
    def _tile_candidates(det, y0, x0, ty, tx, own_y, own_x, tol, plane_hw, inner, origin, shape) -> list[_Candidate]:
        """A tile's kept detections (``y0, x0``: its block in the whole plane; ``inner``: top, left, bottom, right
        edges with a neighbouring tile beyond), pasted on the window at ``origin``."""
        out = []
        if len(det["boxes"]) == 0:
            return out
        boxes = det["boxes"].cpu().numpy()
        scores = det["scores"].cpu().numpy()
        classes = det["labels"].cpu().numpy()
        masks = det["masks"].cpu()
        cy = (boxes[:, 1] + boxes[:, 3]) / 2 + y0
        cx = (boxes[:, 0] + boxes[:, 2]) / 2 + x0
        keep = ((cy >= own_y[0] - tol) & (cy < own_y[1] + tol) & (cx >= own_x[0] - tol) & (cx < own_x[1] + tol)
                & (cy >= 0) & (cx >= 0) & (cy < plane_hw[0]) & (cx < plane_hw[1]))
        shift = np.array([x0 - origin[1], y0 - origin[0]] * 2, np.float32)
        for k in np.flatnonzero(keep):
            bx0, by0, bx1, by1 = boxes[k]
            touches = ((inner[0] and by0 <= 1) or (inner[1] and bx0 <= 1)
                       or (inner[2] and by1 >= ty - 1) or (inner[3] and bx1 >= tx - 1))
            pasted = paste_mask(masks[k], boxes[k] + shift, shape)
            if pasted is None:
                continue
            out.append(_Candidate(float(scores[k]), int(classes[k]), not touches, pasted[0], pasted[1], pasted[2]))
        return out

    @staticmethod
    def _merge(candidates: list[_Candidate], shape: tuple[int, int], mask_thr: float, nms_iou: float,
               min_size: int, return_probabilities: bool):
        labels = np.zeros(shape, np.int32)
        probs = np.zeros((1, *shape), np.float32) if return_probabilities else None
        areas: list[int] = [0]
        table: list[dict[str, Any]] = []
        candidates.sort(key=lambda c: (not c.clean, -c.score))
        for c in candidates:
            mask = c.prob >= mask_thr
            area = int(mask.sum())
            if area == 0 or area < min_size:
                continue
            sl = (slice(c.y0, c.y0 + mask.shape[0]), slice(c.x0, c.x0 + mask.shape[1]))
            region = labels[sl]
            under = region[mask]
            under = under[under > 0]
            if under.size:
                ids, inter = np.unique(under, return_counts=True)
                k = int(np.argmax(inter))
                other, n = int(ids[k]), int(inter[k])
                iou = n / (area + areas[other] - n)
                if iou >= nms_iou or n > MAX_COVERED * area:
                    continue  # the same object, already pasted from a better tile / with a higher score
            free = mask & (region == 0)
            n_free = int(free.sum())
            if n_free == 0 or n_free < min_size:
                continue
            new_id = len(areas)
            region[free] = new_id
            areas.append(n_free)
            if probs is not None:
                np.maximum(probs[0][sl], np.where(mask, c.prob, 0), out=probs[0][sl])
            rows, cols = np.nonzero(free)
            table.append({
                "label": new_id, "score": round(c.score, 4), "class": c.cls, "area": n_free,
                "bbox": [int(rows.min() + c.y0), int(cols.min() + c.x0),
                         int(rows.max() + c.y0 + 1), int(cols.max() + c.x0 + 1)],
            })
        return labels, probs, table
