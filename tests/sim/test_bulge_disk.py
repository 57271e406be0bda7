"""Bulge/disk truth of simulated fields: footprint B/T from the component images, galaxies only."""
from __future__ import annotations

import numpy as np
import pytest

from napari_segtool.sim.bulge_disk import bulge_disk_fields, component_fractions, galaxy_truth


def test_galaxy_truth_matches_the_component_images():
    field = bulge_disk_fields(1, (96, 96), seed=7)[0]
    truth = galaxy_truth(field, min_pixels=10)
    assert truth and all(field.classes[g.id] == "galaxy" and g.npix >= 10 for g in truth)
    for g in truth:
        inside = field.labels == g.id
        b, d = field.bulge[inside].sum(), field.disk[inside].sum()
        assert g.bt_footprint == pytest.approx(b / (b + d), rel=1e-5)
        assert 0.0 <= g.bt_total <= 1.0
    bulgy = [g for g in truth if g.bt_total > 0.3]
    assert all(g.bt_footprint > 0.1 for g in bulgy)  # the bulge is the concentrated part: kept on the footprint


def test_fields_without_components_are_refused():
    from napari_segtool.sim import simulate_astro_field

    field = simulate_astro_field((32, 32), seed=1)
    with pytest.raises(ValueError, match="with_components"):
        component_fractions(field)
    with pytest.raises(ValueError, match="with_components"):
        galaxy_truth(field)
