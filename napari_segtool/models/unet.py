"""2D U-Net (Ronneberger et al. 2015) for semantic and instance segmentation, and image-to-image regression.

Heads
-----
``semantic``: K logits, one per class (class ids 1..K in label images).
``instance``: 3 logits (background / object interior / object boundary) plus one
distance-to-border channel; instances come from a seeded watershed
(:func:`napari_segtool.ops.postprocess.instances_from_maps`). Predicting the thin
boundary class *between* touching objects is what lets the watershed split them.
``regression``: K logits, one per named component (``meta.classes``); their softmax is each
pixel's share of its flux per component (bulge / disk / other for ``core.decompose``), learnt by
a flux-weighted soft cross-entropy against the true shares (``Patch.targets``, ``Patch.weight``).
Shares rather than fluxes: the components always add up to the observed image, and the network
never has to reproduce the noise or the flux scale.

Normalisation is BatchNorm: at inference it uses running statistics, so the
network is translation-equivariant and tiled predictions equal whole-image ones
(GroupNorm/InstanceNorm statistics would change with the tile's content).
The receptive field is computed exactly from the layer structure.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage import segmentation
from torch import nn

from napari_segtool.kernel.events import CancelToken
from napari_segtool.kernel.meta import ModelMeta
from napari_segtool.kernel.params import Param, ProbabilityLayout
from napari_segtool.ops.deblend import stretched_noise
from napari_segtool.ops.postprocess import SEED_MODES, instances_from_maps
from napari_segtool.ops.tiling import tiled_apply, tiled_pixels
from napari_segtool.models.base import Architecture, Patch, PlaneResult, ProgressFn, measured_halo
from napari_segtool.models.runtime import cached, inference_forward, release_buffers, resolve_backend

INSTANCE_CLASSES = 3  # background, interior, boundary
#: tiles of prediction are at most this large unless the caller asks otherwise (larger tiles spend less
#: of their work on the halo; the speed section of docs/benchmarks.md has the measurements): a 1024 px core
#: plus a 64 px measured halo each side, so planes of 1024² and up run at 1.27-1.29x their own pixels
PREDICT_TILE = 1152
#: weights saved without their measured halo (``meta.halo``: models saved before it was stored, weights being
#: trained) get it measured for planes whose tiles hold at least this many pixels (measuring costs about as
#: much as running a 512² tile; smaller planes -- object-size estimates, validation while training, where
#: the weights change between calls -- keep half the theoretical receptive field)
MEASURED_HALO_PIXELS = 2 * 1024 * 1024
#: the maps of an instance U-Net: class probabilities (softmax) then the sigmoid distance
INSTANCE_LAYOUT = ProbabilityLayout(channels=("background", "interior", "boundary", "distance"),
                                    foreground_channels=(1, 2), interior_channel=1, distance_channel=3)

#: the maps an instance U-Net keeps for a plane when only its labels are asked for (``predict_plane``)
LABEL_MAPS = ("foreground", "interior", "distance")

#: per-plane settings of instance U-Nets (:func:`~napari_segtool.ops.postprocess.instances_from_maps`)
POSTPROCESS_PARAMS = (
    Param("fg_threshold", float, 0.5, 0.0, 1.0, applies_to=("instance",), label="Foreground",
          help="Foreground probability cut-off; lower finds fainter objects"),
    Param("seed_threshold", float, 0.6, 0.0, 1.0, applies_to=("instance",), label="Seeds",
          help="Seed (object interior) cut-off; higher splits touching objects less"),
    Param("min_size", int, 10, 0, 100000, applies_to=("instance",), label="Min size",
          help="Objects smaller than this (pixels) are removed"),
    Param("seed_mode", str, "interior", choices=SEED_MODES, applies_to=("instance",), label="Split by",
          help="How touching objects are split: confident interiors, the waists of the foreground "
               "(shape) or the saddles between brightness peaks (flux)"),
    Param("deblend_contrast", float, 0.005, 0.0, 1.0, applies_to=("instance",), advanced=True,
          help="Split by flux: a peak needs this share of its footprint's flux above its saddle (0: every peak)"),
    Param("min_snr", float, 0.0, 0.0, 1000.0, applies_to=("instance",), advanced=True,
          help="Split by flux: sources under this footprint signal-to-noise ratio are dropped"),
    Param("min_seed_size", int, 3, 0, 100000, applies_to=("instance",), advanced=True,
          help="Seeds smaller than this (pixels) are ignored as noise"),
    Param("fill", bool, True, applies_to=("instance",), advanced=True, help="Fill holes inside objects"),
)
#: network settings of a new U-Net (``out_channels`` follows from the task and classes)
ARCH_PARAMS = (
    Param("depth", int, 3, 1, 6, label="Depth", help="Poolings; each doubles the receptive field"),
    Param("width", int, 16, 4, 256, step=4, label="Width", help="Channels of the first level (doubled per level)"),
    Param("norm", str, "batch", choices=("batch", "group", "instance"), advanced=True,
          help="Normalisation layer (batch: tiled predictions equal whole-image ones)"),
    Param("kernel_size", int, 3, choices=(3, 5, 7), advanced=True, help="Convolution kernel size"),
)


def _norm(kind: str | None, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


class ConvBlock(nn.Sequential):
    """Two (conv 3×3 → norm → ReLU) layers."""

    def __init__(self, cin: int, cout: int, norm: str | None, kernel_size: int = 3):
        pad = kernel_size // 2
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size, padding=pad, bias=norm is None), _norm(norm, cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, kernel_size, padding=pad, bias=norm is None), _norm(norm, cout), nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net with ``depth`` poolings; channel width doubles at each level from ``width``."""

    def __init__(self, in_channels: int = 1, out_channels: int = 4, depth: int = 3, width: int = 16,
                 norm: str | None = "batch", kernel_size: int = 3):
        super().__init__()
        self.depth, self.kernel_size = depth, kernel_size
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        cin = in_channels
        for c in chans[:-1]:
            self.down.append(ConvBlock(cin, c, norm, kernel_size))
            cin = c
        self.bottom = ConvBlock(chans[-2], chans[-1], norm, kernel_size)
        self.up = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in reversed(range(depth)))
        self.dec = nn.ModuleList(ConvBlock(2 * chans[i], chans[i], norm, kernel_size) for i in reversed(range(depth)))
        self.head = nn.Conv2d(chans[0], out_channels, 1)

    @property
    def align(self) -> int:
        """Input sizes must be multiples of this (one per pooling)."""
        return 2**self.depth

    def receptive_field(self) -> int:
        """Receptive field (pixels) of one output pixel (:func:`unet_receptive_field`)."""
        return unet_receptive_field(self.depth, self.kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)


def unet_receptive_field(depth: int, kernel_size: int = 3) -> int:
    """Receptive field (pixels) of one output pixel, computed from the layer structure.

    Walks the longest path (encoder, bottleneck, decoder) with the usual
    recurrence ``rf += (k - 1) * jump``; pooling adds ``jump`` and doubles it,
    a 2×2 stride-2 transposed conv maps each output to one input pixel. This is
    a tight upper bound: depending on a pixel's phase in the pooling grid the
    true extent is up to ``2**depth`` pixels smaller (tests measure it by
    back-propagation), so a halo of half this value always suffices.
    """
    k, rf, jump = kernel_size, 1, 1
    for _ in range(depth):
        rf += 2 * (k - 1) * jump  # two convs
        rf += jump                # 2x2 max-pool
        jump *= 2
    rf += 2 * (k - 1) * jump      # bottleneck
    for _ in range(depth):
        jump //= 2
        rf += 2 * (k - 1) * jump  # decoder convs
    return rf


# ----------------------------------------------------------------------------- targets
def instance_targets(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class map (0 bg, 1 interior, 2 boundary) and per-object normalised distance (0..1)."""
    boundary = segmentation.find_boundaries(labels, mode="inner") & (labels > 0)
    classes = np.where(labels > 0, 1, 0).astype(np.int64)
    classes[boundary] = 2
    interior = (labels > 0) & ~boundary
    dist = ndi.distance_transform_edt(interior).astype(np.float32)
    if labels.max() > 0:
        peak = ndi.maximum(dist, labels, index=np.arange(labels.max() + 1))
        peak = np.asarray(peak, dtype=np.float32)
        peak[peak == 0] = 1.0
        dist = dist / peak[labels]
    return classes, dist


def _share_loss(out: torch.Tensor, patches: Sequence[Patch], device: torch.device) -> torch.Tensor:
    """Soft cross-entropy between the softmax of ``out`` and the true shares, each pixel weighted by
    ``Patch.weight`` (its share of its source's flux: sources count alike, their pixels by flux, as in
    a bulge-to-total ratio)."""
    if any(p.targets is None or p.weight is None for p in patches):
        raise ValueError("regression patches need targets and weight")
    target = torch.from_numpy(np.stack([p.targets for p in patches])).to(device)
    weight = torch.from_numpy(np.stack([p.weight for p in patches])).to(device)
    ce = -(target * F.log_softmax(out, dim=1)).sum(dim=1)
    return (ce * weight).sum() / weight.sum().clamp_min(1e-6)


def object_size_stats(label_images: Sequence[np.ndarray]) -> dict[str, float]:
    """Median object area and equivalent diameter over all training labels."""
    areas = []
    for lab in label_images:
        counts = np.bincount(np.asarray(lab).ravel().astype(np.int64))[1:]
        areas.extend(counts[counts > 0].tolist())
    if not areas:
        return {}
    median = float(np.median(areas))
    return {"median_area": median, "median_diameter": float(2 * np.sqrt(median / np.pi)), "n_objects": len(areas)}


def _label_map(name: str, p: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """One of :data:`LABEL_MAPS` (``B,1,H,W``) from the class softmax ``p`` and the raw ``outputs``."""
    if name == "foreground":
        return INSTANCE_LAYOUT.foreground(p.transpose(0, 1)).unsqueeze(1)
    if name == "interior":
        return p[:, INSTANCE_LAYOUT.interior_channel:INSTANCE_LAYOUT.interior_channel + 1]
    return torch.sigmoid(outputs[:, INSTANCE_CLASSES:])


class UNetArchitecture(Architecture):
    name = "unet"
    tasks = ("instance", "semantic")  # trained from annotations (``core.train``, the Train widget)
    regression = True  # and the image-to-image task (``core.decompose_train``)
    postprocess_params = POSTPROCESS_PARAMS
    arch_params = ARCH_PARAMS

    def align(self, meta: ModelMeta) -> int:
        """Input sizes must be multiples of this (one per pooling): ``UNet.align``."""
        return 2 ** int(meta.arch_kwargs.get("depth", 3))

    def receptive_field(self, meta: ModelMeta) -> int:
        """``meta.receptive_field``, else computed from the layer structure."""
        return int(meta.receptive_field or unet_receptive_field(int(meta.arch_kwargs.get("depth", 3)),
                                                                int(meta.arch_kwargs.get("kernel_size", 3))))

    def measure_halo(self, net: nn.Module, meta: ModelMeta) -> int:
        """The measured context of these weights (:func:`~napari_segtool.models.base.measured_halo`), at most
        half the theoretical receptive field."""
        return measured_halo(net, meta.in_channels, int(meta.arch_kwargs["out_channels"]), self.align(meta),
                             super().halo(net, meta))

    def halo(self, net: nn.Module, meta: ModelMeta) -> int:
        """The halo stored with the weights (``meta.halo``, measured when they were saved), else measured once
        per network and weights version; at most half the theoretical receptive field."""
        bound = super().halo(net, meta)
        if meta.halo:
            return min(int(meta.halo), bound)
        return cached(net, ("halo", bound), lambda: self.measure_halo(net, meta))  # type: ignore[return-value]

    def probability_layout(self, meta: ModelMeta) -> ProbabilityLayout:
        if meta.task == "instance":
            return INSTANCE_LAYOUT
        if meta.task == "regression":
            return ProbabilityLayout(channels=tuple(meta.classes))
        return ProbabilityLayout(channels=tuple(meta.classes[1:]))  # one softmax map per class id 1..K

    def default_meta(self, task: str, in_channels: int, classes: Sequence[str], **arch_kwargs: Any) -> ModelMeta:
        kwargs = {"depth": 3, "width": 16, "norm": "batch", "kernel_size": 3}
        kwargs.update(arch_kwargs)
        out = {"instance": INSTANCE_CLASSES + 1, "regression": len(classes)}.get(task, len(classes) - 1)
        if task == "regression" and out < 2:
            raise ValueError("a regression model needs at least 2 named output channels")
        if task == "semantic" and out < 2:
            raise ValueError("a semantic model needs at least 2 classes besides 'unlabelled'")
        kwargs["out_channels"] = out
        meta = ModelMeta(arch=self.name, task=task, in_channels=in_channels, arch_kwargs=kwargs,
                         classes=list(classes), tile_size=512)
        meta.receptive_field = self.build(meta).receptive_field()
        if task == "instance":
            meta.postprocess = {"fg_threshold": 0.5, "seed_threshold": 0.6, "min_size": 10, "min_seed_size": 3}
        return meta

    def build(self, meta: ModelMeta) -> UNet:
        return UNet(in_channels=meta.in_channels, **meta.arch_kwargs)

    def configure_from_data(self, meta: ModelMeta, label_images: Sequence[np.ndarray]) -> None:
        if meta.task != "instance":
            return
        stats = object_size_stats(label_images)
        if stats:
            meta.postprocess["min_size"] = max(4, int(0.15 * stats["median_area"]))
            meta.postprocess["min_seed_size"] = max(2, int(0.02 * stats["median_area"]))
            meta.training["object_size"] = stats

    # ------------------------------------------------------------------ training
    def loss(self, net: nn.Module, patches: Sequence[Patch], meta: ModelMeta, device: torch.device) -> torch.Tensor:
        x = torch.from_numpy(np.stack([p.image for p in patches])).permute(0, 3, 1, 2).to(device)
        weight = torch.from_numpy(np.stack([p.annotated for p in patches]).astype(np.float32)).to(device)
        out = net(x)
        if meta.task == "regression":
            return _share_loss(out, patches, device)
        denom = weight.sum().clamp_min(1.0)
        if meta.task == "semantic":
            target = np.stack([np.clip(p.labels.astype(np.int64) - 1, 0, None) for p in patches])
            ce = F.cross_entropy(out, torch.from_numpy(target).to(device), reduction="none")
            return (ce * weight).sum() / denom
        targets = [instance_targets(p.labels) for p in patches]
        cls = torch.from_numpy(np.stack([t[0] for t in targets])).to(device)
        dist = torch.from_numpy(np.stack([t[1] for t in targets])).to(device)
        class_weights = torch.tensor([1.0, 1.0, 2.0], device=device)
        ce = F.cross_entropy(out[:, :INSTANCE_CLASSES], cls, weight=class_weights, reduction="none")
        ce = (ce * weight).sum() / denom
        fg = weight * (cls > 0).float()
        pred_dist = torch.sigmoid(out[:, INSTANCE_CLASSES])
        mse = ((pred_dist - dist) ** 2 * fg).sum() / fg.sum().clamp_min(1.0)
        return ce + 2.0 * mse

    # ---------------------------------------------------------------- inference
    def _tiled_maps(self, net: nn.Module, image: Any, meta: ModelMeta, device: torch.device, tile_size: int | None,
                    batch_size: int, progress: ProgressFn | None, cancel: CancelToken | None,
                    label_maps: Sequence[str] = ()) -> np.ndarray:
        """The network's activated maps ``(K, Y, X)`` of a whole plane, tile by tile with its halo.

        ``label_maps`` (instance models): only these of :data:`LABEL_MAPS`, what the instance post-processing
        reads, computed per tile -- 12 bytes a pixel of the plane (8 without the interior, 4 for a flux split's
        foreground) instead of the 16 of the four maps plus 4 of a foreground sum (blending is linear, so the
        foreground sums the same before or after it).
        """
        net.eval()
        align = self.align(meta)
        tile_size = tile_size or max(meta.tile_size, PREDICT_TILE)
        halo = super().halo(net, meta)
        work = tiled_pixels(image.shape[:2], tile_size, halo, align)
        # the measured halo: stored with the weights (every plane), else measured for large planes only;
        # the "torch" backend is the reference path (half the theoretical receptive field)
        if resolve_backend(device) != "torch" and (meta.halo or work >= MEASURED_HALO_PIXELS):
            halo = self.halo(net, meta)
            work = tiled_pixels(image.shape[:2], tile_size, halo, align)
        run = inference_forward(net, meta.in_channels, device, work=work)

        def forward(x: torch.Tensor) -> torch.Tensor:
            y = run(x)
            if meta.task in ("semantic", "regression"):
                return torch.softmax(y, dim=1)
            p = torch.softmax(y[:, :INSTANCE_CLASSES], 1)
            if not label_maps:
                return torch.cat([p, torch.sigmoid(y[:, INSTANCE_CLASSES:])], 1)
            maps = [_label_map(name, p, y) for name in label_maps]  # only the maps asked for are computed
            return maps[0] if len(maps) == 1 else torch.cat(maps, 1)

        channels = len(label_maps) if label_maps else meta.arch_kwargs["out_channels"]
        try:
            return tiled_apply(forward, image, channels, tile_size=tile_size,
                               halo=halo, align=align, batch_size=batch_size, device=device,
                               progress=progress, cancel=cancel)
        finally:
            release_buffers(net)

    def predict_maps(self, net: nn.Module, image: Any, meta: ModelMeta, *, device: torch.device,
                     tile_size: int | None = None, batch_size: int = 2, progress: ProgressFn | None = None,
                     cancel: CancelToken | None = None) -> np.ndarray:
        """Each pixel's share of its flux per component ``(K, Y, X)`` (softmax, summing to 1) of a regression model."""
        if meta.task != "regression":
            raise ValueError(f"predict_maps needs a regression model, this one is {meta.task}")
        return self._tiled_maps(net, image, meta, device, tile_size, batch_size, progress, cancel)

    @staticmethod
    def _label_maps(meta: ModelMeta, params: dict[str, Any]) -> tuple[str, ...]:
        """The maps of :data:`LABEL_MAPS` an instance model's labels read with these settings: the interior seeds
        (or the objects' size when none is given) read all three, a shape split the foreground and the distance,
        a flux split the foreground alone; ``()`` (every map) for other tasks."""
        if meta.task != "instance":
            return ()
        mode = params.get("seed_mode", "interior")
        if mode == "interior" or not params.get("diameter"):
            return LABEL_MAPS
        return ("foreground",) if mode == "flux" else ("foreground", "distance")

    def predict_plane(self, net: nn.Module, image: Any, meta: ModelMeta, *, device: torch.device,
                      tile_size: int | None = None, batch_size: int = 2, return_probabilities: bool = False,
                      progress: ProgressFn | None = None, cancel: CancelToken | None = None,
                      **postprocess: Any) -> PlaneResult:
        settings = self.split_postprocess(meta, postprocess)  # the core applies its own to the assembled result
        params = settings.plane
        if "diameter" in settings.core:  # the objects' size on the model grid, for the shape/flux splits
            params["diameter"] = settings.core["diameter"]
        label_maps = self._label_maps(meta, params) if not return_probabilities else ()
        flux = meta.task == "instance" and params.get("seed_mode") == "flux"
        if flux:  # deblending by brightness peaks reads the normalised plane too: normalised once, for both
            image = np.asarray(image[:, :, :], np.float32)
        probs = self._tiled_maps(net, image, meta, device, tile_size, batch_size, progress, cancel, label_maps)
        if meta.task in ("semantic", "regression"):  # regression: the component holding most of the flux
            labels = (np.argmax(probs, axis=0) + 1).astype(np.int32)
            return PlaneResult(labels, probs if return_probabilities else None)
        if flux:
            params["image"] = image.mean(axis=-1)
            params["pixel_noise"] = stretched_noise(meta.normalization)  # the whole image's, on every window alike
        if label_maps:  # without the maps nothing reads (instances_from_maps then never does)
            named = dict(zip(label_maps, probs))
            maps = (named["foreground"], named.get("interior"), named.get("distance"))
        else:
            layout = INSTANCE_LAYOUT
            maps = (layout.foreground(probs), probs[layout.interior_channel], probs[layout.distance_channel])
        labels = instances_from_maps(*maps, **params)
        return PlaneResult(labels, probs if return_probabilities else None)
