"""Reading images (TIFF, ImageJ, OME-TIFF, FITS, Zarr, OME-Zarr, NPY) and writing labels."""

import gzip

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from astropy.io import fits

from napari_segtool.kernel.axes import to_canonical
from napari_segtool.io import (
    ImageData,
    ImageReadError,
    read_image,
    read_labels,
    write_labels,
)

RNG = np.random.default_rng(0)
ZARR3 = int(zarr.__version__.split(".")[0]) >= 3


# --------------------------------------------------------------------------- TIFF


def test_tiff_2d_round_trip(tmp_path):
    data = RNG.integers(0, 4000, (32, 40), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", data)
    img = read_image(tmp_path / "a.tif")
    assert isinstance(img, ImageData)
    assert img.axes == "YX" and img.path == tmp_path / "a.tif"
    np.testing.assert_array_equal(img.data, data)
    assert img.metadata["source"] == str(tmp_path / "a.tif")


def test_tiff_zyx_from_metadata_and_guess(tmp_path):
    data = RNG.random((5, 16, 20)).astype(np.float32)
    tifffile.imwrite(tmp_path / "z.tif", data, metadata={"axes": "ZYX"}, photometric="minisblack")
    img = read_image(tmp_path / "z.tif")
    assert img.axes == "ZYX" and img.metadata["axes_source"] == "file"
    np.testing.assert_array_equal(img.data, data)
    # a tifffile-named but unknown first axis ('Q') is taken as Z
    tifffile.imwrite(tmp_path / "q.tif", data, metadata={"axes": "QYX"}, photometric="minisblack")
    assert read_image(tmp_path / "q.tif").axes == "ZYX"
    # the user's axes win, and are checked
    assert read_image(tmp_path / "z.tif", axes="TYX").axes == "TYX"
    with pytest.raises(ImageReadError, match="z.tif.*2 letters"):
        read_image(tmp_path / "z.tif", axes="YX")


def test_tiff_rgb(tmp_path):
    rgb = RNG.integers(0, 255, (16, 20, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    img = read_image(tmp_path / "rgb.tif")
    assert img.axes == "YXC"
    np.testing.assert_array_equal(img.data, rgb)


def test_imagej_hyperstack_with_scale(tmp_path):
    data = RNG.integers(0, 1000, (2, 3, 2, 16, 20), dtype=np.uint16)
    tifffile.imwrite(
        tmp_path / "hyper.tif",
        data,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.5),
        metadata={"axes": "TZCYX", "spacing": 2.0, "unit": "um", "finterval": 3.0},
    )
    img = read_image(tmp_path / "hyper.tif")
    assert img.axes == "TZCYX" and img.metadata["format"] == "imagej-tiff"
    np.testing.assert_array_equal(img.data, data)
    assert img.metadata["scale"] == pytest.approx({"T": 3.0, "Z": 2.0, "Y": 0.5, "X": 0.25})
    assert img.metadata["units"]["X"] == "um"
    assert img.scale_for("TZYXC") == pytest.approx((3.0, 2.0, 0.5, 0.25, 1.0))
    assert img.z_anisotropy() == pytest.approx(8.0)  # Z 2 um / X 0.25 um
    canon, axes = to_canonical(img.data, img.axes)
    assert axes == "TZYXC" and canon.shape == (2, 3, 16, 20, 2)


def test_ome_tiff_scale(tmp_path):
    data = RNG.integers(0, 100, (4, 2, 16, 20), dtype=np.uint8)
    tifffile.imwrite(
        tmp_path / "x.ome.tif",
        data,
        metadata={"axes": "ZCYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3, "PhysicalSizeZ": 1.5},
    )
    img = read_image(tmp_path / "x.ome.tif")
    assert img.axes == "ZCYX" and img.metadata["format"] == "ome-tiff"
    assert img.metadata["scale"] == pytest.approx({"X": 0.3, "Y": 0.3, "Z": 1.5})


def test_tiff_lazy_is_dask(tmp_path):
    data = RNG.integers(0, 1000, (2, 3, 2, 16, 20), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "h.tif", data, imagej=True, metadata={"axes": "TZCYX"})
    img = read_image(tmp_path / "h.tif", lazy=True)
    assert isinstance(img.data, da.Array) and img.is_lazy
    assert img.axes == "TZCYX" and img.data.shape == data.shape
    assert img.data.chunksize[-2:] == (16, 20) and img.data.numblocks[0] == 2  # plane chunks
    np.testing.assert_array_equal(img.data[1, 2].compute(), data[1, 2])


# --------------------------------------------------------------------------- FITS


def _fits_image(shape=(12, 14)):
    data = np.arange(np.prod(shape), dtype=">f4").reshape(shape)
    data[0, ..., 0] = np.nan
    hdu = fits.PrimaryHDU(data)
    hdr = hdu.header
    hdr["OBJECT"] = "M31"
    hdr["HISTORY"] = "made by a test"
    hdr.update(CTYPE1="RA---TAN", CTYPE2="DEC--TAN", CRVAL1=10.0, CRVAL2=41.0,
               CRPIX1=6.0, CRPIX2=7.0, CDELT1=-0.001, CDELT2=0.001)
    return data, hdu


def test_fits_header_nan_big_endian(tmp_path):
    data, hdu = _fits_image()
    hdu.writeto(tmp_path / "m31.fits")
    img = read_image(tmp_path / "m31.fits")
    assert img.axes == "YX"
    assert img.data.dtype == np.float32 and img.data.dtype.isnative
    assert np.isnan(img.data[0, 0]) and np.count_nonzero(np.isnan(img.data)) == 1
    np.testing.assert_array_equal(img.data[1:], data[1:].astype(np.float32))
    meta = img.metadata
    assert "OBJECT  = 'M31" in meta["fits_header"]
    assert meta["fits_header_dict"]["OBJECT"] == "M31"
    assert meta["fits_header_dict"]["HISTORY"] == ["made by a test"]
    assert "RA---TAN" in meta["wcs_header"] and meta["fits_hdu"] == 0


def test_fits_cube_lazy_gz_and_extension(tmp_path):
    cube = np.arange(3 * 8 * 9, dtype=">i2").reshape(3, 8, 9)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube, name="SCI")]).writeto(tmp_path / "c.fits")
    img = read_image(tmp_path / "c.fits", lazy=True)
    assert isinstance(img.data, da.Array) and img.axes == "ZYX"
    assert img.metadata["fits_hdu"] == 1 and img.metadata["fits_extname"] == "SCI"
    assert "wcs_header" not in img.metadata  # no WCS keywords: none kept
    out = img.data.compute()
    assert out.dtype == np.int16 and out.dtype.isnative
    np.testing.assert_array_equal(out, cube)
    (tmp_path / "c.fits.gz").write_bytes(gzip.compress((tmp_path / "c.fits").read_bytes()))
    np.testing.assert_array_equal(read_image(tmp_path / "c.fits.gz").data, cube)


def test_fits_degenerate_axes_dropped(tmp_path):
    fits.PrimaryHDU(np.ones((1, 1, 6, 7), dtype=np.float64)).writeto(tmp_path / "radio.fits")
    img = read_image(tmp_path / "radio.fits")
    assert img.axes == "YX" and img.data.shape == (6, 7) and img.data.dtype == np.float32
    assert img.metadata["original_shape"] == (1, 1, 6, 7)


# --------------------------------------------------------------------------- Zarr / NPY


def _group(path):
    return zarr.open_group(str(path), mode="w", **({"zarr_format": 2} if ZARR3 else {}))


def test_ome_zarr_full_resolution_axes_and_scale(tmp_path):
    path = tmp_path / "img.ome.zarr"
    root = _group(path)
    full = RNG.integers(0, 500, (2, 3, 16, 20), dtype=np.uint16)
    create = root.create_array if hasattr(root, "create_array") else root.create_dataset
    create("0", shape=full.shape, dtype=full.dtype, chunks=(1, 1, 16, 20))[...] = full
    create("1", shape=(2, 3, 8, 10), dtype=full.dtype, chunks=(1, 1, 8, 10))[...] = full[..., ::2, ::2]
    root.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [
                {"name": "c", "type": "channel"},
                {"name": "z", "type": "space", "unit": "micrometer"},
                {"name": "y", "type": "space", "unit": "micrometer"},
                {"name": "x", "type": "space", "unit": "micrometer"},
            ],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 2.0, 0.5, 0.5]}]},
                {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1, 2.0, 1.0, 1.0]}]},
            ],
        }
    ]
    img = read_image(path)
    assert isinstance(img.data, da.Array)
    assert img.axes == "CZYX" and img.data.shape == full.shape
    assert img.metadata["format"] == "ome-zarr"
    assert img.metadata["scale"] == pytest.approx({"C": 1.0, "Z": 2.0, "Y": 0.5, "X": 0.5})
    assert img.metadata["units"]["Z"] == "micrometer"
    np.testing.assert_array_equal(img.data.compute(), full)


def test_plain_zarr_and_npy(tmp_path):
    data = RNG.random((4, 10, 12)).astype(np.float32)
    z = zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=data.shape, dtype=data.dtype)
    z[...] = data
    img = read_image(tmp_path / "plain.zarr")
    assert isinstance(img.data, da.Array) and img.axes == "ZYX"
    np.testing.assert_array_equal(img.data.compute(), data)

    np.save(tmp_path / "a.npy", data)
    eager = read_image(tmp_path / "a.npy", axes="TYX")
    assert isinstance(eager.data, np.ndarray) and eager.axes == "TYX"
    lazy = read_image(tmp_path / "a.npy", lazy=True)
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_array_equal(lazy.data.compute(), data)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("broken.tif", b"II*\x00garbage" * 3, "broken.tif"),
        ("broken.fits", b"SIMPLE  =    this is not fits", "broken.fits"),
        ("broken.npy", b"\x93NUMPY nonsense", "broken.npy"),
    ],
)
def test_corrupt_files(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageReadError, match=f"cannot read .*{message}"):
        read_image(tmp_path / name)


def test_missing_unknown_empty_and_complex(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "nope.tif")
    (tmp_path / "x.png").write_bytes(b"\x89PNG")
    with pytest.raises(ImageReadError, match="unknown file type"):
        read_image(tmp_path / "x.png")
    np.save(tmp_path / "empty.npy", np.zeros((0, 5)))
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "empty.npy")
    np.save(tmp_path / "c.npy", np.zeros((4, 5), dtype=complex))
    with pytest.raises(ImageReadError, match="complex"):
        read_image(tmp_path / "c.npy")
    np.save(tmp_path / "b.npy", np.zeros((4, 5), dtype=bool))
    assert read_image(tmp_path / "b.npy").data.dtype == bool
    np.save(tmp_path / "v.npy", np.zeros(5))
    with pytest.raises(ImageReadError, match="cannot guess"):
        read_image(tmp_path / "v.npy")


# --------------------------------------------------------------------------- labels


def _labels(shape, top=60000):
    return RNG.integers(0, top, shape).astype(np.int32)


@pytest.mark.parametrize("axes", ["YX", "ZYX", "TZYX", "YXZ"])
def test_write_labels_tiff_round_trip(tmp_path, axes):
    shape = {"YX": (10, 12), "ZYX": (3, 10, 12), "TZYX": (2, 3, 10, 12), "YXZ": (10, 12, 3)}[axes]
    labels = _labels(shape)
    out = write_labels(tmp_path / "sub" / "lab.tif", labels, axes=axes,
                       metadata={"scale": {"Z": 2.0, "Y": 0.5, "X": 0.5}, "note": "test"})
    assert out == tmp_path / "sub" / "lab.tif"
    img = read_image(out)
    assert img.axes == axes and img.data.dtype == np.uint16
    np.testing.assert_array_equal(img.data, labels)
    assert img.metadata["scale"]["X"] == pytest.approx(0.5)
    if "Z" in axes:
        assert img.metadata["scale"]["Z"] == pytest.approx(2.0)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej == (axes != "YXZ")  # ImageJ order only
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE
    np.testing.assert_array_equal(read_labels(out), labels)


def test_write_labels_big_ids_npy_zarr_and_errors(tmp_path):
    big = np.zeros((6, 7), dtype=np.int64)
    big[2:4, 2:4] = 70000
    write_labels(tmp_path / "big.tif", big, axes="YX")
    assert read_labels(tmp_path / "big.tif").dtype == np.uint32
    np.testing.assert_array_equal(read_labels(tmp_path / "big.tif"), big)

    labels = _labels((3, 8, 9), top=50)
    write_labels(tmp_path / "l.npy", labels)
    np.testing.assert_array_equal(np.load(tmp_path / "l.npy"), labels)
    write_labels(tmp_path / "l.zarr", da.from_array(labels, chunks=2), axes="ZYX",
                 metadata={"scale": {"Z": 3.0}})
    write_labels(tmp_path / "l.zarr", labels, axes="ZYX", metadata={"scale": {"Z": 3.0}})  # overwrite
    img = read_image(tmp_path / "l.zarr")
    assert img.axes == "ZYX" and img.metadata["scale"] == {"Z": 3.0}
    np.testing.assert_array_equal(read_labels(tmp_path / "l.zarr"), labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tif", "l.npy", "l.zarr"]

    with pytest.raises(ValueError, match="negative"):
        write_labels(tmp_path / "n.tif", -np.ones((3, 3), dtype=int))
    with pytest.raises(ValueError, match="integers"):
        write_labels(tmp_path / "f.tif", np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"\.tif"):
        write_labels(tmp_path / "x.png", np.ones((3, 3), dtype=int))
    with pytest.raises(ValueError, match="letters"):
        write_labels(tmp_path / "a.tif", np.ones((3, 3), dtype=int), axes="ZYX")


def test_write_labels_failure_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "keep.tif"
    first = _labels((5, 5), top=9)
    write_labels(path, first)

    def broken_imwrite(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tifffile, "imwrite", broken_imwrite)
    with pytest.raises(OSError, match="disk full"):
        write_labels(path, _labels((5, 5), top=9))
    monkeypatch.undo()
    np.testing.assert_array_equal(read_labels(path), first)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.tif"]


def test_read_labels_float_integral(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.array([[0, 1], [2, 3]], dtype=np.float32))
    out = read_labels(tmp_path / "f.tif")
    assert out.dtype == np.int32 and out.tolist() == [[0, 1], [2, 3]]
    tifffile.imwrite(tmp_path / "g.tif", np.array([[0, 1.5], [2, 3]], dtype=np.float32))
    with pytest.raises(ImageReadError, match="whole numbers"):
        read_labels(tmp_path / "g.tif")


def test_z_anisotropy_needs_both_sizes_in_one_unit(tmp_path):
    data = RNG.integers(0, 1000, (3, 16, 20), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "plain.tif", data)
    assert read_image(tmp_path / "plain.tif").z_anisotropy() is None      # no sizes: unknown
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, metadata={"axes": "ZYX", "spacing": 2.0})
    assert read_image(tmp_path / "ij.tif").z_anisotropy() == pytest.approx(2.0)  # ImageJ: voxel depth 2 px
    img = read_image(tmp_path / "ij.tif")
    img.metadata["units"] = {"X": "nm", "Z": "um"}
    assert img.z_anisotropy() is None                                      # units differ: not comparable


@pytest.mark.parametrize("lazy", [False, True])
def test_fits_with_bscale_bzero_is_read_scaled(tmp_path, lazy):
    """astropy cannot memory-map scaled data; such files are read into memory instead of refused."""
    from astropy.io import fits

    raw = np.arange(48 * 40, dtype=np.int16).reshape(48, 40)
    hdu = fits.PrimaryHDU(raw)
    hdu.header["BSCALE"], hdu.header["BZERO"] = 2.0, 10.0
    hdu.writeto(tmp_path / "scaled.fits")
    hdu.header["BLANK"] = 7
    hdu.writeto(tmp_path / "blank.fits")
    image = read_image(tmp_path / "scaled.fits", lazy=lazy)
    assert image.is_lazy == lazy and image.axes == "YX"  # lazy stays lazy: scaled chunk by chunk
    np.testing.assert_allclose(np.asarray(image.data), raw * 2.0 + 10.0)
    blank = np.asarray(read_image(tmp_path / "blank.fits", lazy=lazy).data)
    assert np.isnan(blank[0, 7]) and np.isnan(blank).sum() == 1 and blank[0, 8] == 8 * 2.0 + 10.0


def test_api_errors_are_documented_types(tmp_path):
    from napari_segtool.kernel.errors import InputError, OutputError

    with pytest.raises(ImageReadError, match="expected a file path"):
        read_image(None)
    with pytest.raises(InputError, match="integers"):
        write_labels(tmp_path / "x.tif", np.full((4, 4), 0.5, np.float32))
    with pytest.raises(InputError, match="negative"):
        write_labels(tmp_path / "x.tif", -np.ones((4, 4), np.int8))
    with pytest.raises(InputError, match="uint32"):
        write_labels(tmp_path / "x.tif", np.full((4, 4), 2**40, np.uint64))
    with pytest.raises(InputError, match="3 letters"):
        write_labels(tmp_path / "x.tif", np.ones((4, 4), np.uint8), axes="ZYX")
    with pytest.raises(OutputError, match=".tif"):
        write_labels(tmp_path / "x.txt", np.ones((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []
