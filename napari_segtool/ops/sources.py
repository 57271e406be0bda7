"""A source catalogue from an astronomy image and its segmentation map.

For every labelled source: background-subtracted flux, peak, flux-weighted
centroid, size and ellipticity (flux-weighted second moments) and
signal-to-noise. The sky level and noise come from the pixels outside all
sources (sigma-clipped, :func:`astropy.stats.sigma_clipped_stats`); the
per-source measurements are scikit-image's intensity-weighted ``regionprops``.

Star/galaxy: a star is the point-spread function itself, so what separates it
from a galaxy is compactness *relative to the field's PSF*. The PSF size is
taken from the data (lower quartile of the sizes of high-S/N sources), and a
logistic regression on a few scale-free features (size over PSF size,
peak-to-flux ratio, S/N, ellipticity, area) gives ``p_star``. Its weights are
fitted on simulated fields whose classes are known (:func:`fit_star_classifier`)
and stored as plain numbers in the model's JSON metadata. It is a modest
classifier -- barely resolved galaxies look like stars -- and its measured
accuracy is in ``docs/benchmarks.md``.
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["source_table", "source_features", "fit_star_classifier", "star_probability", "truth_classes",
           "FEATURES"]

#: Sources above this signal-to-noise ratio are used to measure the field's PSF size.
PSF_MIN_SNR = 30.0
#: Inputs of the star/galaxy classifier, computed by :func:`source_features`.
FEATURES = ("log_size", "log_size_over_psf", "log_peak_over_flux", "log_snr", "ellipticity", "log_area",
            "log_psf_size")


def source_table(image: np.ndarray, labels: np.ndarray,
                 star_classifier: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per source of ``labels`` (``YX``), measured on ``image`` (``YX``, raw units).

    Columns: ``label``, ``y``, ``x`` (flux-weighted centroid, pixels), ``flux``
    (sum over the footprint minus sky), ``peak``, ``area`` (pixels), ``snr``
    (flux over the noise of the footprint), ``size`` (flux-weighted RMS radius
    per axis, pixels), ``ellipticity`` (0 round .. 1 a line), the field's
    ``sky``, ``sky_noise`` and ``psf_size`` and, with a ``star_classifier``
    (:func:`fit_star_classifier`), ``p_star`` and ``class`` ("star"/"galaxy").
    """
    from astropy.stats import sigma_clipped_stats
    from skimage.measure import regionprops

    if image.shape != labels.shape or image.ndim != 2:
        raise ValueError(f"expected a YX image and labels of one shape, got {image.shape} and {labels.shape}")
    image = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(image)
    sky_pixels = image[(labels == 0) & finite]
    if sky_pixels.size < 10 or labels.max() == 0:
        return []
    sky, _, noise = (float(v) for v in sigma_clipped_stats(sky_pixels, sigma=3.0))
    noise = noise if noise > 0 else 1.0
    signal = np.where(finite, image - sky, 0.0)
    rows: list[dict[str, Any]] = []
    for region in regionprops(labels, intensity_image=np.clip(signal, 0.0, None)):
        values = signal[region.slice][region.image]
        flux = float(values.sum())
        mu = region.moments_weighted_central
        a, b, c = mu[2, 0], mu[0, 2], mu[1, 1]
        size = float(np.sqrt((a + b) / (2.0 * mu[0, 0]))) if mu[0, 0] > 0 else 0.0
        ellipticity = float(np.sqrt((a - b) ** 2 + 4 * c ** 2) / (a + b)) if a + b > 0 else 0.0
        cy, cx = region.centroid_weighted if mu[0, 0] > 0 else region.centroid
        rows.append({"label": int(region.label), "y": float(cy), "x": float(cx), "flux": flux,
                     "peak": float(values.max()), "area": int(region.area),
                     "snr": flux / (noise * np.sqrt(region.area)), "size": size, "ellipticity": ellipticity})
    psf_size = _psf_size(rows)
    for row in rows:
        row.update(sky=sky, sky_noise=noise, psf_size=psf_size)
    if star_classifier and rows:
        for row, p in zip(rows, star_probability(source_features(rows), star_classifier)):
            row["p_star"] = float(p)
            row["class"] = "star" if p >= 0.5 else "galaxy"
    return rows


def _psf_size(rows: list[dict[str, Any]]) -> float:
    """The field's PSF size: lower quartile of the sizes of high-S/N sources (stars are the most compact)."""
    sizes = [r["size"] for r in rows if r["snr"] >= PSF_MIN_SNR and r["size"] > 0]
    if len(sizes) < 4:
        sizes = [r["size"] for r in rows if r["size"] > 0]
    return float(np.percentile(sizes, 25)) if sizes else 1.0


def source_features(rows: list[dict[str, Any]]) -> np.ndarray:
    """The classifier's inputs (:data:`FEATURES`), one row per source of a :func:`source_table`."""
    tiny = 1e-6
    return np.array([[np.log(max(r["size"], tiny)), np.log(max(r["size"], tiny) / max(r["psf_size"], tiny)),
                      np.log(max(r["peak"], tiny) / max(r["flux"], tiny)), np.log(max(r["snr"], tiny)),
                      r["ellipticity"], np.log(max(r["area"], 1)), np.log(max(r["psf_size"], tiny))]
                     for r in rows], dtype=np.float64).reshape(-1, len(FEATURES))


def star_probability(features: np.ndarray, classifier: dict[str, Any]) -> np.ndarray:
    """``p_star`` of each feature row under a classifier from :func:`fit_star_classifier`."""
    if list(classifier["features"]) != list(FEATURES):
        raise ValueError(f"classifier expects features {classifier['features']}, this version computes {FEATURES}")
    z = (features - np.asarray(classifier["mean"])) / np.asarray(classifier["scale"])
    return 1.0 / (1.0 + np.exp(-(z @ np.asarray(classifier["coef"]) + float(classifier["bias"]))))


def fit_star_classifier(features: np.ndarray, is_star: np.ndarray, l2: float = 1e-3) -> dict[str, Any]:
    """Logistic regression (L2-regularised, full-batch L-BFGS in torch), as plain JSON-able numbers."""
    import torch

    features = np.asarray(features, np.float64)
    if len(features) < 10 or np.unique(is_star).size < 2:
        raise ValueError("need at least 10 sources of both classes to fit a star/galaxy classifier")
    mean, scale = features.mean(0), features.std(0) + 1e-6
    x = torch.tensor((features - mean) / scale, dtype=torch.float64)
    y = torch.tensor(np.asarray(is_star, np.float64))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return {"features": list(FEATURES), "mean": mean.tolist(), "scale": scale.tolist(),
            "coef": w.detach().numpy().tolist(), "bias": float(b.item()), "n_train": int(len(features)),
            "star_fraction_train": float(np.mean(is_star))}


def truth_classes(labels: np.ndarray, truth: np.ndarray, classes: dict[int, str]) -> dict[int, str]:
    """Class of each predicted source: that of the true source covering most of it (over half its area)."""
    from napari_segtool.ops.postprocess import overlap_matrix

    inter, pred_ids, true_ids = overlap_matrix(labels, truth)
    area = np.bincount(labels.ravel())
    out = {}
    for i, p in enumerate(pred_ids):
        j = int(np.argmax(inter[i]))
        if inter[i, j] > 0.5 * area[p] and int(true_ids[j]) in classes:
            out[int(p)] = classes[int(true_ids[j])]
    return out
