"""``segtool predict astro-sources field.fits --out DIR``: FITS in, FITS out.

One multi-extension file (an empty primary, ``SCI`` with a rotated TAN WCS, a weight map) holding a
simulated field with NaN holes is segmented once with ``--hdu SCI``; the tests read what it wrote
with astropy as an astronomer would.
"""
from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from napari_segtool.cli import main

PIXEL_DEG = 0.1 / 3600  # 0.1 arcsec pixels


def field_wcs(shape) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix = [150.1, 2.2], [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    t = np.deg2rad(20.0)
    w.wcs.cd = PIXEL_DEG * np.array([[-np.cos(t), np.sin(t)], [np.sin(t), np.cos(t)]])
    return w


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from napari_segtool.sim import simulate_astro_field

    folder = tmp_path_factory.mktemp("astro")
    sim = simulate_astro_field((128, 128), seed=21)
    image = sim.image.astype(np.float32).copy()
    brightest = max(sim.catalog, key=lambda e: e["flux"])
    y, x = int(round(brightest["y"])), int(round(brightest["x"]))
    image[y - 1: y + 2, x + 2: x + 5] = np.nan  # bad pixels in the brightest source's wing, where the network
    image[:, :2] = np.nan  # sees a source; and an edge left blank
    header = field_wcs(image.shape).to_header()
    header.update(OBJECT="SIMFIELD", BUNIT="adu", GAIN=4.0)
    path = folder / "field.fits"
    fits.HDUList([fits.PrimaryHDU(header=fits.Header({"TELESCOP": "SIM"})), fits.ImageHDU(image, header, name="SCI"),
                  fits.ImageHDU(np.ones_like(image), name="WHT")]).writeto(path)
    out = folder / "out"
    code = main(["-q", "predict", "astro-sources", str(path), "--out", str(out), "--hdu", "sci"])
    return {"code": code, "path": path, "out": out, "sim": sim, "image": image}


def test_it_writes_the_three_fits_products(run):
    assert run["code"] == 0
    assert sorted(p.name for p in run["out"].iterdir()) == ["field_cat.ecsv", "field_cat.fits", "field_segm.fits"]


def test_segmentation_keeps_the_hdu_header_and_wcs(run):
    with fits.open(run["out"] / "field_segm.fits") as hdul:
        header, segm = hdul[0].header, hdul[0].data
    source = fits.getheader(run["path"], "SCI")
    assert header["BITPIX"] == 32 and segm.shape == run["image"].shape
    assert header["OBJECT"] == "SIMFIELD" and header["GAIN"] == 4.0 and "BUNIT" not in header
    assert header["SEGMODEL"] == "astro-sources" and header["SEGHDU"] == 1 and header["SEGSRC"] == "field.fits"
    yx = np.array([[0, 0], [127, 127], [10.5, 99.25]])
    np.testing.assert_allclose(WCS(header).all_pix2world(yx, 0), WCS(source).all_pix2world(yx, 0), atol=1e-12, rtol=0)
    assert np.all(segm[np.isnan(run["image"])] == 0)  # NaN pixels stay unlabelled
    ids = np.unique(segm[segm > 0])
    assert header["SEGNSRC"] == len(ids) > 0 and list(ids) == list(range(1, len(ids) + 1))  # SExtractor NUMBER


def test_catalogue_columns_units_and_sky_positions(run):
    ecsv, table_fits = Table.read(run["out"] / "field_cat.ecsv"), Table.read(run["out"] / "field_cat.fits")
    segm = fits.getdata(run["out"] / "field_segm.fits")
    for table in (ecsv, table_fits):
        for name in ("id", "x", "y", "ra", "dec", "flux", "flux_err", "snr", "a", "b", "theta", "ellipticity",
                     "area", "p_star", "class"):
            assert name in table.colnames, name
        assert str(table["x"].unit) == "pix" and str(table["ra"].unit) == "deg" and str(table["flux"].unit) == "adu"
        assert list(table["id"]) == list(np.unique(segm[segm > 0]))
        assert [int(np.count_nonzero(segm == i)) for i in table["id"]] == list(table["area"])
        assert set(table["class"]) <= {"star", "galaxy"} and np.all((table["p_star"] >= 0) & (table["p_star"] <= 1))
        assert np.all(table["flux_err"] > 0) and np.all(np.isfinite(table["flux"]))
    np.testing.assert_allclose(table_fits["flux"], ecsv["flux"], rtol=1e-12)
    sky = field_wcs(segm.shape).pixel_to_world(ecsv["x"], ecsv["y"])  # 0-based pixel coordinates
    np.testing.assert_allclose(ecsv["ra"], sky.ra.deg, atol=1e-9)
    np.testing.assert_allclose(ecsv["dec"], sky.dec.deg, atol=1e-9)


def test_a_known_source_lands_at_its_sky_position_with_its_flux(run):
    """Each catalogued source that covers a simulated one: its RA/Dec within 1.5 pixels of the true
    position's, and fluxes that follow the simulator's."""
    from napari_segtool.ops.postprocess import overlap_matrix

    sim, table = run["sim"], Table.read(run["out"] / "field_cat.ecsv")
    segm = fits.getdata(run["out"] / "field_segm.fits")
    inter, pred_ids, true_ids = overlap_matrix(segm, sim.labels)
    truth = {e["id"]: e for e in sim.catalog}
    wcs = field_wcs(segm.shape)
    pairs = []
    for row in table:
        i = list(pred_ids).index(int(row["id"]))
        j = int(inter[i].argmax())
        if inter[i, j] < 0.5 * row["area"] or int(true_ids[j]) not in truth:
            continue
        e = truth[int(true_ids[j])]
        pairs.append((row["flux"], e["flux"]))
        if row["snr"] > 20:
            true_sky = wcs.pixel_to_world(e["x"], e["y"])
            assert true_sky.separation(wcs.pixel_to_world(row["x"], row["y"])).deg < 1.5 * PIXEL_DEG
    assert len(pairs) >= 3
    measured, true = np.log10(np.clip(np.array(pairs, dtype=float), 1e-3, None)).T
    assert np.corrcoef(measured, true)[0, 1] > 0.8


def test_existing_outputs_are_refused_byte_identical_then_replaced_with_overwrite(run, capsys):
    out = run["out"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    args = ["-q", "predict", "astro-sources", str(run["path"]), "--out", str(out), "--hdu", "SCI"]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("segtool: error:") and "--overwrite" in err and "\n" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "field_cat.ecsv").write_text("stale")
    assert main(args + ["--overwrite"]) == 0
    assert Table.read(out / "field_cat.ecsv").colnames[0] == "id"  # the stale file was replaced
    with fits.open(out / "field_segm.fits") as again, fits.open(out / "field_cat.fits") as table:
        assert again[0].header["SEGNSRC"] == len(table[1].data)


@pytest.mark.parametrize("hdu, message", [("WHAT", "no HDU 'WHAT'"), ("0", "holds no image data")])
def test_a_wrong_hdu_is_one_line_and_exit_2(run, tmp_path, capsys, hdu, message):
    capsys.readouterr()
    assert main(["-q", "predict", "astro-sources", str(run["path"]), "--out", str(tmp_path / "o"), "--hdu", hdu]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "1 SCI" in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_a_cube_gets_its_segmentation_without_nan_labels(tmp_path):
    rng = np.random.default_rng(0)
    cube = rng.normal(10, 1, (2, 64, 64)).astype(np.float32)
    cube[:, 24:40, 24:40] += 60  # one bright square source per plane
    cube[1, 30:33, 30:33] = np.nan
    header = fits.Header({"OBJECT": "CUBE", "CTYPE3": "FREQ"})
    fits.PrimaryHDU(cube, header).writeto(tmp_path / "cube.fits")
    assert main(["-q", "predict", "astro-sources", str(tmp_path / "cube.fits"), "--out", str(tmp_path / "o")]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["cube_segm.fits"]  # no catalogue of a cube
    with fits.open(tmp_path / "o" / "cube_segm.fits") as hdul:
        segm, out_header = hdul[0].data, hdul[0].header
    assert segm.shape == cube.shape and out_header["OBJECT"] == "CUBE" and out_header["CTYPE3"] == "FREQ"
    assert segm[0, 30:33, 30:33].min() > 0 and np.all(segm[1, 30:33, 30:33] == 0)
