"""Planning a prediction: the image in canonical order, its normaliser, content, object scale.

:func:`plan_image` is the first step of every path (in memory, the Segment widget, the
chunked/dask path): it checks the image, puts it in canonical axis order (stack axes,
``YX``, ``C``), fits the model's normaliser once over the whole image, finds the content
panels (flat or NaN bands cut off; exact mirror bands, :mod:`napari_segtool.ops.mirror`, are
padding whose labels mirror the content's), and resolves the object scale (given or estimated,
:mod:`napari_segtool.core.scale`) into the factor that brings the image to the model grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from napari_segtool.kernel.axes import guess_axes, to_canonical
from napari_segtool.kernel.errors import InputError
from napari_segtool.core.model import SegModel
from napari_segtool.core.scale import ScaleEstimate, estimate_diameter, scale_factor, stack_scale_factor
from napari_segtool.core.window import WindowSettings, plane_view
from napari_segtool.ops.mirror import MirrorFrame, mirror_frame
from napari_segtool.ops.normalize import Normalizer, content_panels, fit_normalizer
from napari_segtool.ops.resample import is_identity
from napari_segtool.ops.sources import SkyLevel


def check_image(image: Any) -> None:
    """Reject arrays no model can use, with a message a user understands."""
    if not hasattr(image, "shape") or not hasattr(image, "dtype"):
        raise InputError(f"expected an array, got {type(image).__name__}")
    if 0 in image.shape:
        raise InputError(f"the image is empty (shape {tuple(image.shape)})")
    kind = np.dtype(image.dtype).kind
    if kind not in "biuf":
        raise InputError(f"cannot segment an image of dtype {image.dtype}")


def model_diameter(meta: Any) -> float:
    """Object diameter (pixels) the model works at: its :class:`ObjectScale`, else its training median."""
    if meta.scale.diameter:
        return float(meta.scale.diameter)
    return float((meta.training.get("object_size") or {}).get("median_diameter") or 0.0)


def resolve_scale(model: SegModel, diameter: float | None, estimate_plane: Callable[[], Any]) -> ScaleEstimate:
    """The image's object diameter: ``diameter`` when given, else estimated when the model allows it."""
    if diameter is not None:
        if not np.isfinite(diameter) or diameter <= 0:
            raise InputError(f"the object diameter must be a positive number of pixels, got {diameter}")
        return ScaleEstimate(float(diameter))
    meta = model.meta
    if meta.task != "instance" or not meta.scale.diameter or not meta.scale.auto:
        return ScaleEstimate(None)
    return estimate_diameter(model, estimate_plane())


@dataclass
class ImagePlan:
    """How one image is run: canonical data, the settings every window shares, and the scale found."""

    axes: str                      # the input's axes (given or guessed, normalised)
    data: Any                      # canonical (stack axes, Y, X, C)
    spatial_axes: str              # canonical spatial axes, e.g. "ZYX"
    settings: WindowSettings
    scale: ScaleEstimate
    notes: list[str]
    sky: SkyLevel | None = None    # the whole image's sky and noise (asinh models), for its source tables


def plan_image(model: SegModel, image: Any, axes: str | None, *, diameter: float | None = None,
               link_z: bool = True, tile_size: int | None = None, batch_size: int = 2,
               postprocess: dict[str, Any] | None = None) -> ImagePlan:
    """Check ``image``, fit the normaliser, find the object scale and fix every window's settings.

    The in-memory path (:func:`iter_predict`) and the chunked one (:mod:`napari_segtool.core.batch`)
    both start here, so both run the model with the same normalisation, scale and post-processing.
    """
    check_image(image)
    try:
        axes = guess_axes(tuple(image.shape), axes)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    data, canon = to_canonical(image, axes)
    spatial_axes = canon[:-1]
    stack_shape = tuple(data.shape[: len(spatial_axes) - 2])
    meta = model.meta
    channels = data.shape[-1]
    notes: list[str] = []
    channel_mean = channels != meta.in_channels
    if channel_mean:
        if meta.in_channels == 1:
            notes.append(f"averaged {channels} channels for the single-channel model '{meta.name}'")
        else:
            raise InputError(f"model '{meta.name}' expects {meta.in_channels} channel(s), the image has {channels}")
    if tile_size is not None and tile_size < 16:
        raise InputError(f"the tile size must be at least 16 pixels, got {tile_size}")
    # exact mirror bands (np.pad reflect/symmetric) hold no pixel the image lacks, for any model (a sky field too:
    # unlike a noise border, a copy cannot hide a faint source): the plan is the content's, the bands get its labels
    mirror, inner = mirror_content(data)
    my, mx = (mirror.box[0], mirror.box[2]) if mirror is not None else (0, 0)
    normalizer = fit_image_normalizer(inner, meta.normalization, channel_mean)
    align = model.architecture.align(meta)
    # percentile models: noise-only borders are padding as flat ones are (the normaliser skips them too); the
    # sky of an astronomical field is its image, where sources of any faintness may lie, so it is run whole
    panels = [(a + my, b + my, c + mx, d + mx) for a, b, c, d in
              content_panels(inner, noise_borders=meta.normalization.get("method", "percentile") == "percentile")]
    content = (min(b[0] for b in panels), max(b[1] for b in panels), min(b[2] for b in panels), max(b[3] for b in panels))
    settings = WindowSettings(normalizer, channel_mean=channel_mean, content=content, align=align,
                              panels=tuple(panels) if len(panels) > 1 else (), tile_size=tile_size,
                              batch_size=batch_size, mirror=mirror)
    # the size is estimated on the largest panel (the content box unless flat bands split it): a mosaic's
    # objects are those of its panels, and gaps inside the crops would only cut objects
    y0, y1, x0, x1 = max(panels, key=lambda b: (b[1] - b[0]) * (b[3] - b[2]))
    middle = tuple(n // 2 if a == "Z" else 0 for a, n in zip(spatial_axes, stack_shape))
    scale = resolve_scale(model, diameter,
                          lambda: plane_view((data[middle] if middle else data)[y0:y1, x0:x1], settings))
    overrides = {k: v for k, v in (postprocess or {}).items() if v is not None}
    factor = scale_factor(meta.scale, scale.diameter)
    if link_z and meta.task == "instance" and "Z" in spatial_axes:
        factor = stack_scale_factor(meta.scale, scale.diameter, factor, float(overrides.get("z_scale", 2.0)),
                                    float(meta.postprocess.get("z_scale", 2.0)))
    settings.factor = 1.0 if is_identity(factor) else factor
    if scale.diameter is not None and diameter is None:
        notes.append(scale.describe())
    grid_diameter = scale.diameter * settings.factor if scale.diameter else model_diameter(meta)
    if grid_diameter and "diameter" not in overrides:
        overrides["diameter"] = grid_diameter  # the objects' size on the model grid
    settings.postprocess = overrides
    settings.stack = {**meta.postprocess, **overrides}
    settings.stack["z_scale"] = float(settings.stack.get("z_scale", 2.0)) * settings.factor  # Z step, model pixels
    settings.link = link_z and meta.task == "instance" and "Z" in spatial_axes
    return ImagePlan(axes, data, spatial_axes, settings, scale, notes, image_sky(normalizer, meta.normalization))


def mirror_content(data: Any) -> tuple[MirrorFrame | None, Any]:
    """A canonical image's exact mirror bands (:func:`~napari_segtool.ops.mirror.mirror_frame`) and the data
    inside them, which is all the plan looks at (the data itself when it has none)."""
    mirror = mirror_frame(data)
    if mirror is None:
        return None, data
    y0, y1, x0, x1 = mirror.box
    return mirror, data[..., y0:y1, x0:x1, :]


def image_sky(normalizer: Normalizer, config: dict[str, Any]) -> SkyLevel | None:
    """The image's sky level and per-pixel noise as its asinh normaliser measured them (sigma-clipped over the
    whole image: ``lo`` is the sky, ``hi - lo`` ``softening`` noise sigmas), so that the source tables need no
    clipping of their own and give a source the same row in any window; ``None`` for other normalisers or
    several channels."""
    if normalizer.stretch != "asinh" or np.size(normalizer.lo) != 1:
        return None
    lo, hi = float(np.ravel(normalizer.lo)[0]), float(np.ravel(normalizer.hi)[0])
    return SkyLevel(lo, (hi - lo) / float(config.get("softening", 3.0)))


def fit_image_normalizer(data: Any, config: dict[str, Any], channel_mean: bool) -> Normalizer:
    """The model's normaliser fitted on a canonical (``...YXC``) image; one range when channels are averaged."""
    try:
        normalizer = fit_normalizer(data, **config)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if channel_mean:
        normalizer.lo = normalizer.lo.mean(keepdims=True)
        normalizer.hi = normalizer.hi.mean(keepdims=True)
    return normalizer
