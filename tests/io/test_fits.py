"""FITS in and out: choosing an HDU, the segmentation image under the input's header and WCS,
catalogue tables as ECSV and FITS (napari_segtool.io.images, napari_segtool.io.fits)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from napari_segtool.io.fits import celestial_wcs, segmentation_hdu, write_segmentation, write_table
from napari_segtool.io.images import ImageReadError, read_image


def sky_wcs(shape=(40, 50)) -> WCS:
    """A TAN projection with a rotated CD matrix (so X and Y both change RA and Dec)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.1, 2.2]
    w.wcs.crpix = [shape[1] / 2 + 0.5, shape[0] / 2 + 0.5]
    angle = np.deg2rad(30.0)
    scale = 0.05 / 3600
    w.wcs.cd = scale * np.array([[-np.cos(angle), np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return w


def mef(path, shape=(40, 50)):
    """Primary (no data), SCI (float image, WCS, BUNIT, scaled-data keywords), WHT, a table."""
    rng = np.random.default_rng(3)
    sci = rng.normal(10, 1, shape).astype(np.float32)
    header = sky_wcs(shape).to_header()
    header.update(OBJECT="COSMOS", BUNIT="electron/s", GAIN=2.5, DATAMIN=0.0)
    header["HISTORY"] = "drizzled"
    table = fits.BinTableHDU.from_columns([fits.Column("a", format="E", array=np.arange(3.0))], name="CAT")
    fits.HDUList([fits.PrimaryHDU(header=fits.Header({"TELESCOP": "HST"})), fits.ImageHDU(sci, header, name="SCI"),
                  fits.ImageHDU(np.ones(shape, np.float32) * 7, name="WHT"), table]).writeto(path)
    return sci


# --------------------------------------------------------------------------- choosing the HDU
def test_hdu_by_index_or_name_any_case(tmp_path):
    sci = mef(tmp_path / "m.fits")
    first = read_image(tmp_path / "m.fits")  # default: the first HDU holding an image
    assert first.metadata["fits_hdu"] == 1 and first.metadata["fits_extname"] == "SCI"
    np.testing.assert_array_equal(first.data, sci)
    for key in (2, "2", "wht", "WHT"):
        img = read_image(tmp_path / "m.fits", hdu=key)
        assert img.metadata["fits_hdu"] == 2 and float(np.asarray(img.data).max()) == 7
    lazy = read_image(tmp_path / "m.fits", hdu="WHT", lazy=True)
    assert lazy.is_lazy and float(lazy.data.max().compute()) == 7


@pytest.mark.parametrize("key, message", [(9, "no HDU 9"), ("nope", "no HDU 'nope'"), ("CAT", "not an image"),
                                          (0, "holds no image data")])
def test_a_wrong_hdu_is_one_line_listing_the_hdus(tmp_path, key, message):
    mef(tmp_path / "m.fits")
    with pytest.raises(ImageReadError) as err:
        read_image(tmp_path / "m.fits", hdu=key)
    text = str(err.value)
    assert message in text and "1 SCI (image 40x50)" in text and "3 CAT (table)" in text and "\n" not in text


def test_hdu_refused_for_other_formats(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((8, 8)))
    with pytest.raises(ImageReadError, match="only be chosen in a FITS file"):
        read_image(tmp_path / "x.npy", hdu=1)


# --------------------------------------------------------------------------- the segmentation image
def test_segmentation_round_trips_header_and_wcs(tmp_path):
    mef(tmp_path / "m.fits")
    img = read_image(tmp_path / "m.fits", hdu="SCI")
    labels = np.zeros(img.shape, np.int64)
    labels[5:9, 10:20], labels[30:35, 40:45] = 1, 70000  # beyond uint16: int32 keeps it
    write_segmentation(tmp_path / "m_segm.fits", labels, img.metadata, {"SEGNSRC": (2, "sources")})
    with fits.open(tmp_path / "m_segm.fits") as hdul:
        assert len(hdul) == 1 and isinstance(hdul[0], fits.PrimaryHDU)
        header, data = hdul[0].header, hdul[0].data
        assert header["BITPIX"] == 32 and data.dtype.kind == "i"
        np.testing.assert_array_equal(data, labels)
        assert header["OBJECT"] == "COSMOS" and header["GAIN"] == 2.5 and "drizzled" in str(header["HISTORY"])
        assert header["SEGNSRC"] == 2
        for key in ("BUNIT", "DATAMIN", "XTENSION", "PCOUNT", "GCOUNT"):
            assert key not in header  # they describe the input's pixel values / place, not labels
        ours = WCS(header)
    theirs = WCS(fits.getheader(tmp_path / "m.fits", "SCI"))
    pix = np.array([[0, 0], [49, 39], [12.5, 30.25], [-3, 60]], dtype=float)
    np.testing.assert_allclose(ours.all_pix2world(pix, 0), theirs.all_pix2world(pix, 0), rtol=0, atol=1e-12)
    assert ours.wcs.ctype[0] == "RA---TAN"


def test_segmentation_keeps_degenerate_axes_and_refuses_bad_ids(tmp_path):
    cube = np.zeros((1, 1, 6, 7), np.float32)
    header = fits.Header()
    header["CTYPE3"], header["CTYPE4"] = "FREQ", "STOKES"
    fits.PrimaryHDU(cube, header).writeto(tmp_path / "radio.fits")
    img = read_image(tmp_path / "radio.fits")
    assert img.shape == (6, 7)
    hdu = segmentation_hdu(np.ones((6, 7), np.uint8), img.metadata)
    assert hdu.data.shape == (1, 1, 6, 7) and hdu.header["NAXIS"] == 4 and hdu.header["CTYPE3"] == "FREQ"
    for bad in (np.full((6, 7), -1), np.full((6, 7), 2**31), np.zeros((6, 7), np.float32)):
        with pytest.raises(ValueError):
            segmentation_hdu(bad, img.metadata)


def test_celestial_wcs_only_for_sky_axes(tmp_path):
    mef(tmp_path / "m.fits")
    assert celestial_wcs(read_image(tmp_path / "m.fits").metadata).has_celestial
    linear = WCS(naxis=2)
    linear.wcs.ctype = ["LINEAR", "LINEAR"]
    fits.PrimaryHDU(np.zeros((4, 4)), linear.to_header()).writeto(tmp_path / "lin.fits")
    assert celestial_wcs(read_image(tmp_path / "lin.fits").metadata) is None
    fits.PrimaryHDU(np.zeros((4, 4))).writeto(tmp_path / "none.fits")
    assert celestial_wcs(read_image(tmp_path / "none.fits").metadata) is None


# --------------------------------------------------------------------------- catalogue files
def test_tables_as_ecsv_and_fits_keep_units_and_meta(tmp_path):
    import astropy.units as u
    from astropy.table import Table

    table = Table({"id": [1, 2], "ra": [150.1, 150.2], "flux": [3.5, np.nan], "class": ["star", "galaxy"]},
                  meta={"MODEL": "astro-sources", "PIXORIGN": 0})
    table["ra"].unit, table["flux"].unit = u.deg, u.electron / u.s
    for name in ("cat.ecsv", "cat.fits"):
        write_table(table, tmp_path / name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy: 'electron' is not a FITS unit
            back = Table.read(tmp_path / name)
        assert back.colnames == table.colnames and list(back["class"]) == ["star", "galaxy"]
        assert back["ra"].unit == u.deg and str(back["flux"].unit) == "electron / s"  # not a FITS unit: as text
        assert np.isnan(np.asarray(back["flux"].filled(np.nan) if hasattr(back["flux"], "filled") else back["flux"])[1])
        assert back.meta["MODEL"] == "astro-sources"
    with pytest.raises(ValueError, match="use one of"):
        write_table(table, tmp_path / "cat.csv")


def test_an_inheriting_extension_takes_the_primary_keywords(tmp_path):
    primary = fits.Header({"TELESCOP": "HST", "CCDGAIN": 2.0, "GAIN": 1.5, "OBJECT": "PRIMARY-OBJECT"})
    sci = sky_wcs().to_header()
    sci.update(INHERIT=True, OBJECT="SCI-OBJECT")
    fits.HDUList([fits.PrimaryHDU(header=primary), fits.ImageHDU(np.ones((40, 50), np.float32), sci, name="SCI")]
                 ).writeto(tmp_path / "inherit.fits")
    img = read_image(tmp_path / "inherit.fits", hdu="SCI")
    header = segmentation_hdu(np.zeros((40, 50), np.int32), img.metadata).header
    assert header["TELESCOP"] == "HST" and header["GAIN"] == 1.5  # inherited
    assert header["OBJECT"] == "SCI-OBJECT" and header["EXTNAME"] == "SCI"  # the extension's own value wins
    assert header["NAXIS"] == 2 and header["BITPIX"] == 32  # the primary's structure keywords are not taken
    sci["INHERIT"] = False
    fits.HDUList([fits.PrimaryHDU(header=primary), fits.ImageHDU(np.ones((40, 50), np.float32), sci, name="SCI")]
                 ).writeto(tmp_path / "alone.fits")
    alone = segmentation_hdu(np.zeros((40, 50), np.int32), read_image(tmp_path / "alone.fits").metadata).header
    assert "TELESCOP" not in alone and "GAIN" not in alone
