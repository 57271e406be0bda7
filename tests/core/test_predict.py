"""In-memory prediction: the window's labels without whole-plane copies (issue 18) are the content's labels."""
from __future__ import annotations

import numpy as np

from napari_segtool.core.predict import predict
from tests.core.test_batch import draw_disks, threshold_unet


def test_labels_are_the_same_whether_the_content_fills_the_window_or_not():
    """predict_window returns the content's labels as they are when the content fills the window, and places
    them in a zeroed plane otherwise (a flat frame): both give the same objects, 0 on NaN pixels and frame."""
    model = threshold_unet()
    image = draw_disks((320, 288), 70, seed=4)
    image[100:110, 40:200] = np.nan  # a masked stripe crossing objects
    plain = predict(model, image, axes="YX").labels
    framed = predict(model, np.pad(image, ((24, 40), (16, 8)), constant_values=20.0), axes="YX").labels
    assert plain.dtype == framed.dtype == np.int32
    assert plain.max() > 30
    assert not plain[100:110, 40:200].any()
    np.testing.assert_array_equal(framed[24:-40, 16:-8], plain)
    assert not framed[:24].any() and not framed[-40:].any() and not framed[:, :16].any() and not framed[:, -8:].any()


def test_a_plane_over_the_threshold_runs_chunked_with_the_in_memory_labels(monkeypatch):
    """Planes over LARGE_PLANE_PIXELS run chunk by chunk (memory bounded by a window, issue 18), on the threads
    asked for, and give the in-memory objects pixel for pixel, ids aside."""
    import napari_segtool.core.batch as batch
    import napari_segtool.core.predict as predict_module

    model = threshold_unet()
    image = draw_disks((700, 650), 400, seed=3)
    whole = predict(model, image, axes="YX").labels
    runners = []
    real_runner = batch._runner
    monkeypatch.setattr(batch, "_runner", lambda *a: runners.append(a) or real_runner(*a))
    monkeypatch.setattr(predict_module, "LARGE_PLANE_PIXELS", 300 * 300)
    chunked = predict(model, image, axes="YX", num_threads=1)
    assert any("chunk by chunk" in note for note in chunked.notes) and runners[0][2] == 1
    assert chunked.labels.dtype == np.int32 and whole.max() > 300
    pairs = np.unique(np.stack([whole.ravel(), chunked.labels.ravel()]), axis=1)
    assert pairs.shape[1] == len(np.unique(whole)) == len(np.unique(chunked.labels))  # one-to-one ids
    np.testing.assert_array_equal(whole > 0, chunked.labels > 0)


def test_a_large_plane_is_cut_into_the_fewest_equal_chunks_no_larger_than_the_largest():
    from napari_segtool.core.predict import LARGE_PLANE_CHUNK, large_plane_chunk

    for side in (4097, 5000, 6144, 8192, 8193, 12000, 16384, 30000):
        chunk = large_plane_chunk((side, side // 2))
        parts = -(-side // chunk)
        assert chunk <= LARGE_PLANE_CHUNK and chunk % 256 == 0
        assert parts == -(-side // LARGE_PLANE_CHUNK)          # no more chunks than the largest allows
        assert parts * chunk - side < 256 * parts                # and they are about equal: no thin strip


def test_chunks_run_the_whole_planes_tiles_so_the_shipped_model_gives_the_in_memory_labels(tmp_path):
    """Every chunk runs the tiles of the whole plane's grid that reach its region (its halo is context, not
    tile output), so chunked labels of the shipped nuclei model are the in-memory labels pixel for pixel, ids
    aside (issue 18; when each window tiled itself, a 2048² mosaic in 1024² chunks differed in 799 pixels)."""
    import zarr

    from napari_segtool.core.batch import predict_to_zarr
    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.sim import simulate_nuclei
    from tests.core.test_batch import assert_same_partition

    model = load_model("nuclei")
    image = np.tile(simulate_nuclei((384, 384), seed=2).image, (3, 3))[:1100, :1000]
    whole = predict(model, image, diameter=14.0).labels
    predict_to_zarr(model, image, tmp_path / "out.zarr", chunk_size=384, diameter=14.0)
    chunked = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert whole.max() > 500
    assert_same_partition(chunked, whole)
