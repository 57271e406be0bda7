"""``segtool predict astro-bulge-disk field.fits --out DIR``: bulge and disk FITS images under the input's
header and WCS, in its units, adding up (with the other flux) to the sky-subtracted image."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from napari_segtool.cli import main
from napari_segtool.core.checkpoint import load_model
from napari_segtool.core.decompose import decompose

from tests.cli.test_astro_fits import field_wcs


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from napari_segtool.sim.bulge_disk import bulge_disk_fields

    folder = tmp_path_factory.mktemp("bd")
    sim = bulge_disk_fields(1, (96, 96), seed=5)[0]
    image = sim.image.astype(np.float32)
    header = field_wcs(image.shape).to_header()
    header.update(OBJECT="SIMFIELD", BUNIT="adu", BSCALE=1.0, BZERO=0.0)
    path = folder / "field.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(image, header, name="SCI")]).writeto(path)
    out = folder / "out"
    code = main(["-q", "predict", "astro-bulge-disk", str(path), "--out", str(out), "--hdu", "SCI"])
    return {"code": code, "path": path, "out": out, "image": image}


def test_it_writes_bulge_and_disk_fits_with_the_input_wcs(run):
    assert run["code"] == 0
    assert sorted(p.name for p in run["out"].iterdir()) == ["field_bulge.fits", "field_disk.fits"]
    source = fits.getheader(run["path"], "SCI")
    yx = np.array([[0, 0], [95, 95], [10.5, 60.25]])
    for name in ("bulge", "disk"):
        with fits.open(run["out"] / f"field_{name}.fits") as hdul:
            header, data = hdul[0].header, hdul[0].data
        assert data.shape == run["image"].shape and data.dtype.kind == "f"
        assert header["OBJECT"] == "SIMFIELD" and header["BUNIT"] == "adu" and header["SEGCOMP"] == name
        assert header["SEGMODEL"] == "astro-bulge-disk" and "BZERO" not in header
        np.testing.assert_allclose(WCS(header).all_pix2world(yx, 0), WCS(source).all_pix2world(yx, 0),
                                   atol=1e-12, rtol=0)


def test_the_files_hold_what_the_core_computes(run):
    expected = decompose(load_model("astro-bulge-disk"), run["image"])
    np.testing.assert_allclose(fits.getdata(run["out"] / "field_bulge.fits"), expected.bulge, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(fits.getdata(run["out"] / "field_disk.fits"), expected.disk, rtol=1e-5, atol=1e-4)
    assert fits.getheader(run["out"] / "field_disk.fits")["SEGSKY"] == pytest.approx(expected.sky, rel=1e-6)


def test_existing_outputs_are_kept_without_overwrite(run, capsys):
    before = (run["out"] / "field_bulge.fits").read_bytes()
    code = main(["-q", "predict", "astro-bulge-disk", str(run["path"]), "--out", str(run["out"]), "--hdu", "SCI"])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (run["out"] / "field_bulge.fits").read_bytes() == before
