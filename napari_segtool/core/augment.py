"""Joint image/label augmentation: what the network must become invariant to.

Geometric transforms (flips, 90° rotations, a random similarity — rotation and
scale — and an elastic deformation) are composed into *one* coordinate map and
applied once with :func:`scipy.ndimage.map_coordinates`: linear interpolation for
the image, nearest for labels and the annotated mask, so labels stay exact
integers. Pixels mapped from outside the source patch become unannotated.
*Context* augmentation then cuts the patch at random positions on one to four sides and
fills what lies beyond with flat background, background noise or a mirror of the rest:
an image's objects must get the same labels whether the image is seen alone, framed,
padded, or as one panel of a mosaic with empty gaps (objects cut by the edge included).
Intensity transforms (gain, gamma, additive noise) touch only the image.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_segtool.models.base import Patch


@dataclass
class AugmentConfig:
    """Probabilities and ranges; ``AugmentConfig(enabled=False)`` turns everything off."""

    enabled: bool = True
    flips: bool = True
    p_similarity: float = 0.5
    rotation_deg: float = 180.0
    scale_range: tuple[float, float] = (0.8, 1.25)
    p_elastic: float = 0.3
    elastic_alpha: float = 6.0   # displacement magnitude (pixels)
    elastic_sigma: float = 12.0  # smoothness of the displacement field (pixels)
    p_intensity: float = 0.8
    gain_range: tuple[float, float] = (0.7, 1.4)
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_std: float = 0.05
    p_context: float = 0.0       # chance of cutting the patch and filling beyond the cut (flat / noise / mirror)
    context_cut: tuple[float, float] = (0.05, 0.45)  # how far in (fraction of the patch) each cut side lies
    p_resolution: float = 0.0    # chance of a patch seen at lower resolution, then upsampled (as the engine does)
    resolution_range: tuple[float, float] = (1.0, 2.5)  # how many times lower that resolution is

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def margin(self) -> float:
        """How much larger the source patch must be to cover rotations/zoom-out."""
        if not self.enabled or self.p_similarity <= 0:
            return 1.0
        return 1.45 * max(1.0, self.scale_range[1])


def _coordinate_map(out: int, src: int, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Source coordinates (2, out, out) for each output pixel of the augmented patch."""
    yy, xx = np.mgrid[0:out, 0:out].astype(np.float32)
    c_out = (out - 1) / 2.0
    y, x = yy - c_out, xx - c_out
    if rng.random() < cfg.p_similarity:
        theta = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
        scale = np.exp(rng.uniform(np.log(cfg.scale_range[0]), np.log(cfg.scale_range[1])))
        cos, sin = np.cos(theta) / scale, np.sin(theta) / scale
        y, x = cos * y - sin * x, sin * y + cos * x
    if rng.random() < cfg.p_elastic:
        for arr in (y, x):
            field = ndi.gaussian_filter(rng.standard_normal((out, out)).astype(np.float32), cfg.elastic_sigma)
            field *= cfg.elastic_alpha / (field.std() + 1e-6)
            arr += field
    c_src = (src - 1) / 2.0
    return np.stack([y + c_src, x + c_src])


def augment(patch: Patch, out_size: int, rng: np.random.Generator, cfg: AugmentConfig) -> Patch:
    """Augment a (larger, square) source patch and return an ``out_size``² patch."""
    if int(out_size) < 1:
        raise ValueError(f"patch size must be at least 1 pixel, got {out_size}")
    src = patch.labels.shape[0]
    img, lab, ann = patch.image, patch.labels, patch.annotated
    if cfg.enabled and cfg.flips:
        k = int(rng.integers(4))
        img, lab, ann = np.rot90(img, k), np.rot90(lab, k), np.rot90(ann, k)
        if rng.random() < 0.5:
            img, lab, ann = img[:, ::-1], lab[:, ::-1], ann[:, ::-1]
    if cfg.enabled and (cfg.p_similarity > 0 or cfg.p_elastic > 0):
        coords = _coordinate_map(out_size, src, rng, cfg)
        img = np.stack([ndi.map_coordinates(img[..., c], coords, order=1, mode="reflect")
                        for c in range(img.shape[-1])], axis=-1)
        lab, ann = _nearest_labels_and_mask(lab, ann, coords)
    else:
        o = (src - out_size) // 2
        img, lab, ann = img[o:o + out_size, o:o + out_size], lab[o:o + out_size, o:o + out_size], ann[o:o + out_size, o:o + out_size]
    img = np.ascontiguousarray(img, dtype=np.float32)
    if cfg.enabled and cfg.p_resolution > 0 and rng.random() < cfg.p_resolution:  # no draw when off: same stream
        img = lower_resolution(img, rng.uniform(*cfg.resolution_range))
    if cfg.enabled and rng.random() < cfg.p_context:
        img, lab, ann = surround(img, np.ascontiguousarray(lab), np.ascontiguousarray(ann), rng, cfg.context_cut)
    if cfg.enabled and rng.random() < cfg.p_intensity:
        img = _intensity(img, rng, cfg)
    return Patch(img, np.ascontiguousarray(lab), np.ascontiguousarray(ann))


def _nearest_labels_and_mask(lab: np.ndarray, ann: np.ndarray, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and annotated mask at ``coords`` (nearest source pixel; outside: 0 and unannotated), in one pass.

    Both are read at the same nearest pixel, so one resampling of ``2 * label + annotated`` (int64:
    any int32 id fits) gives exactly what two would, at half the cost of the two lookups.
    """
    if ann.dtype != bool:  # a per-pixel loss weight (core.data.crop_patch): the same nearest pixel, 0 outside
        return (ndi.map_coordinates(lab, coords, order=0, mode="constant", cval=0).astype(lab.dtype),
                ndi.map_coordinates(ann, coords, order=0, mode="constant", cval=0.0).astype(ann.dtype))
    code = lab.astype(np.int64) * 2 + ann
    code = ndi.map_coordinates(code, coords, order=0, mode="constant", cval=0)
    return (code >> 1).astype(lab.dtype), (code & 1).astype(bool)


def lower_resolution(img: np.ndarray, factor: float) -> np.ndarray:
    """``img`` (``YXC``) as if acquired ``factor`` times coarser and upsampled back to its grid.

    An image taken at a lower magnification than the model's is upsampled by the engine
    (bilinear, :mod:`napari_segtool.ops.resample`) before the network sees it: its objects have
    the right size but soft edges and no fine texture. Training on such patches teaches the
    model that look, so its results follow object scale below its training resolution too.
    """
    if factor <= 1.0:
        return img
    from skimage.transform import resize

    small_shape = tuple(max(2, int(round(n / factor))) for n in img.shape[:2]) + img.shape[2:]
    small = resize(img, small_shape, order=1, anti_aliasing=True, preserve_range=True)
    return resize(small, img.shape, order=1, anti_aliasing=False, preserve_range=True).astype(np.float32)


CONTEXTS = ("flat", "noise", "mirror")


def surround(img: np.ndarray, lab: np.ndarray, ann: np.ndarray, rng: np.random.Generator,
             cut: tuple[float, float] = (0.05, 0.45), kind: str | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keep a random inner rectangle of a patch and replace what is around it.

    One to four sides are cut, each ``cut`` (fractions of the patch) in. Beyond the cut the
    image becomes the background level of the kept part (``flat``, as mosaic gaps and padding),
    Gaussian noise with its background's mean and spread (``noise``, as an empty frame), or a
    mirror of the kept part (``mirror``). Objects crossing the cut keep their labels inside it,
    as objects cut by an image's edge do. Flat and noise surroundings are annotated background
    (there is nothing there); a mirror is unannotated (its objects are copies without ids).
    """
    size_y, size_x = lab.shape
    sides = rng.random(4) < 0.5
    if not sides.any():
        sides[int(rng.integers(4))] = True
    depth = [int(rng.uniform(*cut) * n) if on else 0 for on, n in zip(sides, (size_y, size_y, size_x, size_x))]
    y0, y1, x0, x1 = depth[0], size_y - depth[1], depth[2], size_x - depth[3]
    if y1 - y0 < 2 or x1 - x0 < 2:
        return img, lab, ann
    kind = kind or CONTEXTS[int(rng.integers(len(CONTEXTS)))]
    inside = np.zeros(lab.shape, bool)
    inside[y0:y1, x0:x1] = True
    if kind == "mirror":
        out = np.pad(img[y0:y1, x0:x1], ((y0, size_y - y1), (x0, size_x - x1), (0, 0)), mode="symmetric")
        ann = ann * inside  # bool: and; a float loss weight: 0 outside
    else:
        kept = img[y0:y1, x0:x1]
        background = kept[lab[y0:y1, x0:x1] == 0]
        background = background if background.size >= 16 else kept.reshape(-1, img.shape[-1])
        if kind == "flat":
            fill = np.broadcast_to(np.median(background, axis=0), img.shape)
        else:
            fill = rng.normal(background.mean(axis=0), background.std(axis=0) + 1e-6, img.shape)
        out = np.where(inside[..., None], img, fill)
        ann = np.where(inside, ann, ann.dtype.type(1))  # annotated (weight 1) beyond the cut
    lab = np.where(inside, lab, 0)
    return np.ascontiguousarray(out, dtype=np.float32), lab, ann


def _intensity(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    gain = rng.uniform(*cfg.gain_range)
    gamma = rng.uniform(*cfg.gamma_range)
    out = np.clip(img, 0, None) ** gamma * gain + np.minimum(img, 0)
    if cfg.noise_std > 0:
        out = out + rng.normal(0, rng.uniform(0, cfg.noise_std), size=out.shape).astype(np.float32)
    return out.astype(np.float32)
