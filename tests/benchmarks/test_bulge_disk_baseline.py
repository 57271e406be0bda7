"""The parametric baseline of ``benchmarks/bulge_disk.py`` recovers B/T on a noiseless galaxy made of the
profiles it fits (so the network is compared with a fit that works where its model is true)."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.modeling.models import Sersic2D

from benchmarks.bulge_disk import fit_bulge_disk


@pytest.mark.parametrize("bt_amplitudes", [(40.0, 10.0), (5.0, 20.0)])
def test_parametric_fit_recovers_bulge_to_total(bt_amplitudes):
    yy, xx = np.mgrid[:61, :61].astype(float)
    bulge = Sersic2D(amplitude=bt_amplitudes[0], r_eff=2.5, n=4, x_0=30.3, y_0=29.8, ellip=0.2, theta=0.6)(xx, yy)
    disk = Sersic2D(amplitude=bt_amplitudes[1], r_eff=8.0, n=1, x_0=30.3, y_0=29.8, ellip=0.45, theta=0.5)(xx, yy)
    image = bulge + disk
    mask = image > 0.5
    truth = bulge[mask].sum() / image[mask].sum()
    fit = fit_bulge_disk(image, mask, sigma=1.0)
    assert 0.05 < truth < 0.95
    assert fit.bt == pytest.approx(truth, abs=0.02)
    np.testing.assert_allclose((fit.bulge + fit.disk)[mask], image[mask], rtol=0.05, atol=0.05)
