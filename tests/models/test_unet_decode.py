"""The U-Net's decoding keeps only the maps its labels read (a flux split: the foreground alone; a shape split:
foreground and distance), from the lazily normalised plane read once; the labels equal those decoded from all
four maps of the same network on the same plane (one tile: the blending weights are 1, so the sums are exact)."""
import numpy as np
import pytest
import torch

from napari_segtool.core.checkpoint import load_model
from napari_segtool.models.unet import LABEL_MAPS, UNetArchitecture
from napari_segtool.ops.normalize import NormalizedPlane, fit_normalizer
from napari_segtool.ops.postprocess import instances_from_maps
from napari_segtool.sim.astro import simulate_astro_field


@pytest.mark.parametrize("seed_mode,maps", [("flux", ("foreground",)), ("shape", ("foreground", "distance")),
                                            ("interior", LABEL_MAPS)])
def test_labels_from_the_maps_they_read_equal_labels_from_all_maps(seed_mode, maps):
    model = load_model("astro-sources")
    meta, arch = model.meta, model.architecture
    raw = simulate_astro_field((192, 192), seed=11).image.astype(np.float32)[..., None]
    normalizer = fit_normalizer(raw, **meta.normalization)
    params = {**{k: v for k, v in meta.postprocess.items() if k in {p.name for p in arch.postprocess_params}},
              "seed_mode": seed_mode, "diameter": 6.0}
    assert UNetArchitecture._label_maps(meta, params) == maps
    fast = arch.predict_plane(model.net, NormalizedPlane(raw, normalizer), meta, device=torch.device("cpu"), **params)
    full = arch.predict_plane(model.net, normalizer(raw), meta, device=torch.device("cpu"), return_probabilities=True,
                              **params).probabilities
    layout = arch.probability_layout(meta)
    extra = {"image": normalizer(raw)[..., 0], "pixel_noise": 1.0 / meta.normalization["softening"]} \
        if seed_mode == "flux" else {}
    reference = instances_from_maps(layout.foreground(full), full[layout.interior_channel], full[layout.distance_channel],
                                    **params, **extra)
    assert fast.labels.max() >= 5
    np.testing.assert_array_equal(fast.labels, reference)
