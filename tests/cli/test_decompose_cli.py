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


# ------------------------------------------------------------------------------ the PSF FWHM (--psf-fwhm, header)
@pytest.fixture(scope="module")
def seeing_field(run):
    """The field again with a SEEING keyword (0.35 arcsec in its comment: 3.5 px) under the same WCS."""
    from tests.cli.test_astro_fits import PIXEL_DEG

    header = field_wcs(run["image"].shape).to_header()
    header["SEEING"] = (0.35, "[arcsec] FWHM of the seeing")
    path = run["path"].parent / "seeing.fits"
    fits.PrimaryHDU(run["image"], header).writeto(path)
    return {"path": path, "fwhm_px": 0.35 / 3600 / PIXEL_DEG}


def _sigma(fwhm_px):
    from astropy.stats import gaussian_fwhm_to_sigma

    return fwhm_px * gaussian_fwhm_to_sigma


@pytest.mark.parametrize("option,expected,said", [
    ([], "header", "header SEEING = 0.35 (arcsec, from its comment)"),
    (["--psf-fwhm", "4.5"], 4.5, "--psf-fwhm 4.5"),
    (["--psf-fwhm", "0.175arcsec"], "half", "--psf-fwhm 0.175 arcsec"),  # over the WCS pixel scale, not the header
])
def test_the_psf_fwhm_given_or_in_the_header_is_what_the_model_gets(run, seeing_field, tmp_path, capsys,
                                                                    option, expected, said):
    fwhm = {"header": seeing_field["fwhm_px"], "half": seeing_field["fwhm_px"] / 2}.get(expected, expected)
    out = tmp_path / "out"
    assert main(["-q", "predict", "astro-bulge-disk", str(seeing_field["path"]), "--out", str(out), *option]) == 0
    err = capsys.readouterr().err
    assert f"PSF FWHM {fwhm:.3g} px ({said})" in err
    model = load_model("astro-bulge-disk")
    expected_result = decompose(model, run["image"], psf_size=_sigma(fwhm))
    np.testing.assert_allclose(fits.getdata(out / "seeing_bulge.fits"), expected_result.bulge, rtol=1e-5, atol=1e-4)
    assert fits.getheader(out / "seeing_bulge.fits")["SEGPSF"] == pytest.approx(fwhm, rel=1e-4)
    measured = decompose(model, run["image"])  # what the model does without it: a different input, other shares
    assert not np.allclose(expected_result.bulge, measured.bulge, rtol=1e-3, atol=1e-3)


def test_without_a_psf_keyword_the_psf_is_measured_and_said(run, capsys):
    assert fits.getheader(run["path"], "SCI").get("SEEING") is None
    expected = decompose(load_model("astro-bulge-disk"), run["image"]).psf_size * 2.3548
    out = run["out"].parent / "measured"
    assert main(["-q", "predict", "astro-bulge-disk", str(run["path"]), "--out", str(out), "--hdu", "SCI"]) == 0
    assert f"PSF FWHM {expected:.3g} px (measured on the image)" in capsys.readouterr().err


@pytest.mark.parametrize("option,refusal", [
    (["--psf-fwhm", "2arcsec"], "has no celestial WCS to give its pixel scale"),
    (["--psf-fwhm", "2um"], "gives no pixel size in a length unit"),
    (["--psf-fwhm", "2 s"], "expected pixels or a positive angle or a positive length"),
    (["--psf-fwhm", "-1"], "must be > 0"),
])
def test_a_psf_fwhm_that_cannot_be_converted_is_refused(tmp_path, capsys, option, refusal):
    fits.PrimaryHDU(np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)).writeto(tmp_path / "nowcs.fits")
    out = tmp_path / "out"
    assert main(["-q", "predict", "astro-bulge-disk", str(tmp_path / "nowcs.fits"), "--out", str(out), *option]) == 2
    err = capsys.readouterr().err.strip()
    assert refusal in err and "\n" not in err and not out.exists()
