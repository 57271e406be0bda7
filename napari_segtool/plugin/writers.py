"""npe2 writers of a Labels layer, atomically: TIFF via ``io.images.write_labels``; FITS via
``io.fits.write_segmentation`` (SExtractor's segmentation check-image convention), under the FITS
header and WCS of the image it segments when the layer carries them (``plugin.astro``)."""
from __future__ import annotations

from typing import Any

from napari_segtool.plugin._layers import META_KEY


def write_labels_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """Write one labels layer; axes and pixel sizes travel with the file when known."""
    from napari_segtool.io.images import write_labels

    seg = (meta.get("metadata") or {}).get(META_KEY, {})
    axes = seg.get("axes") if isinstance(seg.get("axes"), str) and len(seg["axes"]) == data.ndim else None
    if axes is None:
        axes = {2: "YX", 3: "ZYX", 4: "TZYX"}.get(data.ndim)
    metadata: dict[str, Any] = {}
    scale = meta.get("scale")
    if axes and scale is not None and len(scale) == len(axes):
        metadata["scale"] = {a: float(s) for a, s in zip(axes, scale)}
    if meta.get("name"):
        metadata["name"] = str(meta["name"])
    written = write_labels(path, data, axes=axes, metadata=metadata)
    return [str(written)]


def write_labels_fits(path: str, data: Any, meta: dict) -> list[str]:
    """Write one labels layer as a FITS segmentation map (int32, 0 = unlabelled)."""
    from napari_segtool.io.fits import write_segmentation

    metadata = meta.get("metadata") or {}
    cards = {"SEGLAYER": (str(meta["name"]), "napari labels layer")} if meta.get("name") else {}
    return [str(write_segmentation(path, data, metadata, cards))]
