"""Classical baselines run side by side with our models in the benchmarks.

``RandomForestSegmenter`` is the ilastik recipe: scikit-image
``multiscale_basic_features`` (intensity, edges, texture at several scales) + a
scikit-learn random forest trained on the annotated pixels. For instances it
predicts the same background/interior/boundary classes as our U-Net and goes
through the same seeded watershed, so only the pixel classifier differs.

``photutils_sources`` and ``sep_sources`` are the two standard astronomy
detect-and-deblend pipelines (photutils ``detect_sources`` + ``deblend_sources``;
SEP, the SExtractor library), with their tunable parameters exposed so the
benchmarks can tune them fairly. Both return a segmentation map (instance labels).

The last section holds small helpers several benchmark scripts share: the objects
that touch a neighbour, their matched count (through ``napari_segtool.ops.metrics``),
and writing a table as markdown + CSV.
"""
from __future__ import annotations

import csv
import inspect
from functools import partial
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage import feature, filters, measure, segmentation

from napari_segtool.ops.metrics import match_instances
from napari_segtool.ops.postprocess import instances_from_maps
from napari_segtool.models.unet import instance_targets


def _features(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, np.float32)
    channel_axis = -1 if image.ndim == 3 else None
    fn = partial(feature.multiscale_basic_features, intensity=True, edges=True, texture=True,
                 sigma_min=1, sigma_max=16, channel_axis=channel_axis)
    return fn(image)


class RandomForestSegmenter:
    """ilastik-style pixel classifier (features + random forest)."""

    def __init__(self, n_estimators: int = 100, max_samples: int = 200_000, seed: int = 0):
        from sklearn.ensemble import RandomForestClassifier

        self.forest = RandomForestClassifier(n_estimators=n_estimators, max_depth=12, n_jobs=-1,
                                             random_state=seed, max_samples=0.5)
        self.max_samples = max_samples
        self.rng = np.random.default_rng(seed)

    def fit(self, image: np.ndarray, classes: np.ndarray, annotated: np.ndarray) -> "RandomForestSegmenter":
        feats = _features(image)
        idx = np.flatnonzero(annotated)
        if idx.size > self.max_samples:
            idx = self.rng.choice(idx, self.max_samples, replace=False)
        self.forest.fit(feats.reshape(-1, feats.shape[-1])[idx], classes.ravel()[idx])
        return self

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        feats = _features(image)
        proba = self.forest.predict_proba(feats.reshape(-1, feats.shape[-1]))
        out = np.zeros((proba.shape[0], int(self.forest.classes_.max()) + 1), np.float32)
        out[:, self.forest.classes_] = proba
        return out.reshape(*feats.shape[:-1], -1)

    # -- convenience for the two tasks ------------------------------------------------
    def fit_instances(self, image, labels, annotated=None) -> "RandomForestSegmenter":
        classes, _ = instance_targets(labels)
        return self.fit(image, classes, np.ones(labels.shape, bool) if annotated is None else annotated)

    def predict_instances(self, image, min_size: int = 10) -> np.ndarray:
        p = self.predict_proba(image)
        p_fg = p[..., 1] + p[..., 2]
        dist = ndi.distance_transform_edt(p[..., 1] > 0.5)
        dist = dist / max(dist.max(), 1.0)
        return instances_from_maps(p_fg, p[..., 1], dist, min_size=min_size)

    def predict_classes(self, image) -> np.ndarray:
        return np.argmax(self.predict_proba(image), axis=-1)


def otsu_watershed(image: np.ndarray, min_distance: int = 5) -> np.ndarray:
    """Otsu threshold + distance-transform watershed: the textbook nuclei pipeline."""
    smooth = filters.gaussian(np.asarray(image, np.float32), 1)
    mask = smooth > filters.threshold_otsu(smooth)
    dist = ndi.distance_transform_edt(mask)
    peaks = feature.peak_local_max(dist, min_distance=min_distance, labels=measure.label(mask), exclude_border=False)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return segmentation.watershed(-dist, markers, mask=mask)


# ------------------------------------------------------------------ astronomy: detect + deblend
def _mesh_box(shape: Sequence[int]) -> int:
    """Background mesh size shared by photutils and SEP: 1/4 of the image, 16..64 px."""
    return max(16, min(64, min(shape) // 4))


def photutils_sources(image: np.ndarray, nsigma: float = 1.5, npixels: int = 5, contrast: float = 0.001,
                      n_levels: int = 32, kernel_fwhm: float = 3.0, kernel_size: int = 5) -> np.ndarray:
    """The photutils recipe: background mesh, Gaussian smoothing, threshold, then deblending.

    ``nsigma``: detection threshold in units of the background RMS map; ``npixels``:
    minimum connected pixels of a source (detection and deblended children);
    ``contrast`` / ``n_levels``: multi-threshold deblending (SExtractor's DEBLEND_MINCONT /
    DEBLEND_NTHRESH); ``kernel_fwhm`` / ``kernel_size``: Gaussian smoothing (px) before detection.
    """
    from astropy.convolution import convolve
    from photutils.background import Background2D, MedianBackground
    from photutils.segmentation import deblend_sources, detect_sources, make_2dgaussian_kernel

    data = np.asarray(image, np.float64)
    box = _mesh_box(data.shape)
    bkg = Background2D(data, (box, box), filter_size=(3, 3), bkg_estimator=MedianBackground())
    data = data - bkg.background
    conv = convolve(data, make_2dgaussian_kernel(kernel_fwhm, size=kernel_size))
    new_names = "n_pixels" in inspect.signature(detect_sources).parameters  # photutils >= 3 renamed them
    size = {"n_pixels" if new_names else "npixels": int(npixels)}
    segm = detect_sources(conv, nsigma * bkg.background_rms, **size)
    if segm is None:
        return np.zeros(data.shape, np.int32)
    segm = deblend_sources(conv, segm, **size, **{"n_levels" if new_names else "nlevels": int(n_levels)},
                           contrast=contrast, progress_bar=False)
    return segm.data.astype(np.int32)


def sep_sources(image: np.ndarray, thresh: float = 1.5, minarea: int = 5, deblend_cont: float = 0.005,
                deblend_nthresh: int = 32, filter_kernel: np.ndarray | None | str = "default") -> np.ndarray:
    """SEP (SExtractor as a library): background mesh, matched filter, threshold, deblending.

    ``thresh`` is in units of the background RMS map (like ``nsigma`` above), ``minarea``
    the minimum pixels, ``deblend_cont`` / ``deblend_nthresh`` the deblending contrast and
    number of levels; ``filter_kernel`` "default" keeps SEP's 3x3 kernel, ``None`` disables
    filtering. Returns SEP's segmentation map (``segmentation_map=True``): object ``i`` of
    the catalogue is label ``i + 1``.
    """
    import sep

    data = np.ascontiguousarray(image, dtype=np.float64)
    box = _mesh_box(data.shape)
    bkg = sep.Background(data, bw=box, bh=box, fw=3, fh=3)
    data = data - bkg.back()
    # low thresholds on crowded fields overflow SEP's default buffers (an exception, not a result)
    sep.set_extract_pixstack(max(300_000, 2 * data.size))
    sep.set_sub_object_limit(4096)
    kw: dict[str, Any] = {} if isinstance(filter_kernel, str) else {"filter_kernel": filter_kernel}
    _, segmap = sep.extract(data, thresh, err=bkg.rms(), minarea=int(minarea), deblend_cont=deblend_cont,
                            deblend_nthresh=int(deblend_nthresh), segmentation_map=True, **kw)
    return np.asarray(segmap, np.int32)


# ------------------------------------------------------------------ helpers shared by benchmark scripts
def touching_ids(labels: np.ndarray, radius: int = 1, square: bool = False) -> np.ndarray:
    """Ids of objects whose dilation by ``radius`` px overlaps another object.

    ``square=True`` uses a square neighbourhood (radius 1 = 8-connected contact, the
    rule of the astronomy simulator's ``blended`` flag), otherwise a disk. A pixel of
    object ``i`` sees another object when the largest or smallest non-zero id in its
    neighbourhood differs from ``i``.
    """
    labels = np.asarray(labels)
    offsets = np.indices((2 * radius + 1,) * labels.ndim) - radius
    fp = np.ones(offsets.shape[1:], bool) if square else (offsets ** 2).sum(axis=0) <= radius ** 2
    top = int(labels.max()) + 1  # stands for background in the minimum (a huge cval overflows in scipy)
    hi = ndi.maximum_filter(labels.astype(np.int64), footprint=fp, mode="constant", cval=0)
    lo = ndi.minimum_filter(np.where(labels > 0, labels, top).astype(np.int64), footprint=fp, mode="constant",
                            cval=top)
    obj = labels > 0
    seen = obj & ((hi != labels) | (lo != labels))
    return np.unique(labels[seen])


def matched_count(pred: np.ndarray, gt: np.ndarray, ids: Iterable[int], threshold: float = 0.5) -> tuple[int, int]:
    """``(matched, total)`` for the ground-truth objects ``ids``: recall on that subset.

    Matching is ``ops.metrics.match_instances`` against the ground truth restricted to
    ``ids``. At IoU >= 0.5 an object can overlap at most one other by more than half, so
    every candidate pair is isolated and removing the other ground-truth objects changes
    no match of the subset: this is exactly the subset's share of the full matching.
    (Below 0.5 that no longer holds, hence the check.)
    """
    if threshold < 0.5:
        raise ValueError("subset recall is only exact for IoU thresholds >= 0.5")
    gt = np.asarray(gt)
    subset = np.where(np.isin(gt, np.fromiter(ids, np.int64)), gt, 0)
    res = match_instances(pred, subset, threshold)
    return res.tp, res.n_gt


def write_report(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]], out_dir: Path,
                 stem: str, header: Sequence[str] = ()) -> tuple[Path, Path]:
    """Write ``rows`` as ``out_dir/stem.md`` (markdown table after ``header`` lines) and ``stem.csv``.

    ``columns`` are ``(key, title, format)``; the CSV keeps the keys as column names and
    full-precision numbers, the markdown table uses the titles and formats.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, [c[0] for c in columns], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [*header, ""] if header else []
    lines += ["| " + " | ".join(c[1] for c in columns) + " |",
              "|" + "|".join("---" if f == "s" else "---:" for _, _, f in columns) + "|"]
    for r in rows:
        cells = [("" if r.get(k) is None else format(r[k], f)) for k, _, f in columns]
        lines.append("| " + " | ".join(cells) + " |")
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, csv_path


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """The same table as plain aligned text for the terminal."""
    cells = [[c[1] for c in columns]] + [[("" if r.get(k) is None else format(r[k], f)) for k, _, f in columns]
                                         for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(c.ljust(w) if f == "s" else c.rjust(w) for c, w, (_, _, f) in zip(row, widths, columns))
                     for row in cells)


def format_row(row: dict[str, Any], columns: Sequence[tuple[str, str, str]]) -> str:
    """One row as ``title value`` pairs on a line (progress output while a benchmark runs)."""
    return ", ".join(f"{t} {format(row[k], f)}" for k, t, f in columns if row.get(k) is not None)
