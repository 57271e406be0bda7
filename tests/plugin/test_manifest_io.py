"""npe2 manifest, readers (TIFF/ImageJ, FITS), the labels writer and the sample data."""
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_segtool
from napari_segtool.plugin import readers, samples, writers

MANIFEST = Path(napari_segtool.__file__).parent / "napari.yaml"


def test_manifest_validates_and_imports():
    from npe2 import PluginManifest

    pm = PluginManifest.from_file(MANIFEST)
    pm.validate_imports()
    assert pm.name == "napari-segtool"
    assert {w.display_name for w in pm.contributions.widgets} == {"Segment", "Correct", "Train", "Batch"}
    assert len(pm.contributions.sample_data) == 4
    assert "napari/layers/segment" in pm.contributions.menus
    # the installed package exposes the same manifest through its entry point
    from importlib.metadata import entry_points

    eps = [ep for ep in entry_points(group="napari.manifest") if ep.name == "napari-segtool"]
    assert eps and eps[0].value == "napari_segtool:napari.yaml"


def test_reader_imagej_hyperstack_axes_scale(tmp_path):
    data = np.random.default_rng(0).integers(0, 4000, (5, 2, 32, 40), dtype=np.uint16)  # ZCYX
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, data, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"axes": "ZCYX", "spacing": 2.0, "unit": "um"})
    assert readers.get_reader(str(tmp_path / "x.png")) is None
    reader = readers.get_reader(str(path))
    assert reader is not None
    [(layer_data, kwargs, kind)] = reader(str(path))
    assert kind == "image"
    assert layer_data.shape == (2, 5, 32, 40)  # channels first: labels (ZYX) line up
    assert kwargs["metadata"]["segtool"]["axes"] == "CZYX"
    assert kwargs["axis_labels"] == ("c", "z", "y", "x")
    assert kwargs["scale"] == (1.0, 2.0, 0.5, 0.5)
    assert not kwargs["rgb"]


def test_reader_fits_nan_wcs_zscale(tmp_path):
    from astropy.io import fits

    rng = np.random.default_rng(1)
    img = rng.normal(100, 5, (64, 64)).astype(np.float32)
    img[10:14, 10:14] = np.nan
    img[30, 30] = 1e6  # a saturated star must not wash out the contrast
    header = fits.Header()
    header.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=150.0, CRVAL2=2.0, CRPIX1=32, CRPIX2=32,
                  CDELT1=-5e-5, CDELT2=5e-5, OBJECT="test field")
    path = tmp_path / "field.fits"
    fits.PrimaryHDU(img, header=header).writeto(path)
    [(data, kwargs, kind)] = readers.get_reader(str(path))(str(path))
    assert np.isnan(data).sum() == 16
    lo, hi = kwargs["contrast_limits"]
    assert 80 < lo < 100 < hi < 120
    meta = kwargs["metadata"]
    assert "OBJECT" in meta["fits_header"] and meta["wcs"].wcs.ctype[0] == "RA---TAN"
    assert meta["segtool"]["non_finite_pixels"] == 16


def test_writer_round_trip(tmp_path):
    from napari_segtool.io.images import read_image

    labels = np.zeros((3, 20, 30), np.int32)
    labels[1, 5:10, 5:10] = 7
    out = writers.write_labels_tiff(str(tmp_path / "labels.tif"), labels,
                                    {"name": "nuclei labels", "scale": (2.0, 0.5, 0.5),
                                     "metadata": {"segtool": {"axes": "ZYX"}}})
    back = read_image(out[0])
    np.testing.assert_array_equal(back.data, labels)
    assert back.axes == "ZYX"
    assert back.metadata["scale"]["Z"] == pytest.approx(2.0)


def test_samples():
    [(stack, kw, kind)] = samples.nuclei_stack(shape=(4, 64, 64))
    assert stack.shape == (4, 64, 64) and kw["scale"] == (2.0, 1.0, 1.0) and kind == "image"
    [(rgb, kw, _)] = samples.hubble_deep_field()
    assert rgb.ndim == 3 and rgb.shape[-1] == 3 and kw["rgb"]
    [(grey, kw, _)] = samples.hubble_deep_field_grey()
    assert grey.shape == rgb.shape[:2] and grey.dtype == np.float32
    [(field, kw, _)] = samples.galaxy_field(shape=(96, 96))
    assert field.shape == (96, 96) and kw["contrast_limits"][0] < kw["contrast_limits"][1]


@pytest.mark.gui
def test_open_file_and_sample_through_napari(make_napari_viewer, tmp_path):
    """napari itself picks our reader and sample data from the manifest."""
    viewer = make_napari_viewer()
    data = np.random.default_rng(0).integers(0, 255, (3, 24, 24), dtype=np.uint8)
    path = tmp_path / "small.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "ZYX"})
    viewer.open(str(path), plugin="napari-segtool")
    assert viewer.layers["small"].data.shape == (3, 24, 24)
    viewer.open_sample("napari-segtool", "hubble-deep-field-grey")
    assert "Hubble Deep Field (grey)" in viewer.layers
