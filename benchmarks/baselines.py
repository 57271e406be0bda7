"""Classical baselines run side by side with our models in the benchmarks.

``RandomForestSegmenter`` is the ilastik recipe: scikit-image
``multiscale_basic_features`` (intensity, edges, texture at several scales) + a
scikit-learn random forest trained on the annotated pixels. For instances it
predicts the same background/interior/boundary classes as our U-Net and goes
through the same seeded watershed, so only the pixel classifier differs.
"""
from __future__ import annotations

from functools import partial

import numpy as np
from scipy import ndimage as ndi
from skimage import feature, filters, measure, segmentation

from napari_segtool.core.postprocess import instances_from_maps
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
