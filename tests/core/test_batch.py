"""Chunked prediction to zarr (core.batch / core.chunked) against the in-memory path."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import zarr

from napari_segtool.core import batch
from napari_segtool.core.batch import BatchError, predict_folder, predict_to_zarr
from napari_segtool.ops.chunked import face_matches, merge_labels, overlap_counts, plan_chunks
from napari_segtool.kernel.events import CancelToken, Cancelled
from napari_segtool.ops.metrics import instance_scores
from napari_segtool.ops.postprocess import link_stack
from napari_segtool.core.predict import predict

CHUNK = 128


# ----------------------------------------------------------------------------- fixtures
def draw_disks(shape, n, seed, radius=(6, 10)):
    """Bright non-overlapping disks (some touching) on a noisy background."""
    from skimage.draw import disk

    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    k = 1
    for _ in range(n * 5):
        if k > n:
            break
        r = rng.uniform(*radius)
        rr, cc = disk(tuple(rng.uniform(r, np.array(shape) - r)), r, shape=shape)
        if labels[rr, cc].any():
            continue
        labels[rr, cc] = k
        k += 1
    return (np.where(labels > 0, 120.0, 20.0) + rng.normal(0, 12, shape)).astype(np.float32)


def threshold_unet():
    """A U-Net wired by hand to segment bright blobs (3x3 mean, then threshold): no training needed.

    Deterministic and fast, and its objects are real blobs, so objects cut by chunk
    borders are common and well defined (a briefly trained net mostly makes noise).
    """
    import torch

    from napari_segtool.core.train import new_model

    model = new_model("unet", "instance", 1, depth=2, width=4)
    net = model.net
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                mod.weight.zero_()
                if mod.bias is not None:
                    mod.bias.zero_()
        c0 = net.down[0][0].out_channels
        net.down[0][0].weight[0, 0] = 1.0 / 9.0  # 3x3 mean of the normalised image
        net.down[0][3].weight[0, 0, 1, 1] = 1.0
        net.dec[-1][0].weight[0, c0, 1, 1] = 1.0  # through the top skip connection
        net.dec[-1][3].weight[0, 0, 1, 1] = 1.0
        s = 20.0  # logits: background, interior, boundary (never), distance
        net.head.weight[:, 0, 0, 0] = torch.tensor([-s, s, 0.0, s])
        net.head.bias[:] = torch.tensor([s / 2, -s / 2, -10.0, -s / 2])
    net.eval()
    model.meta.name = "batchnet"
    return model


@pytest.fixture(scope="session")
def batch_model(tmp_path_factory):
    """The model, saved once per session (workers load it from the file)."""
    from napari_segtool.core.checkpoint import load_model, save_model

    path = save_model(threshold_unet(), tmp_path_factory.mktemp("batch_models") / "batchnet.safetensors")
    return path, load_model(path)


@pytest.fixture(scope="session")
def images(tmp_path_factory):
    """A 2D 384x384 mosaic and a 3D 4x256x256 stack (objects drift across Z) as zarr arrays."""
    root = tmp_path_factory.mktemp("batch_images")
    img2 = draw_disks((384, 384), 250, seed=2)
    big = draw_disks((264, 264), 120, seed=3)
    img3 = np.stack([big[2 * z:2 * z + 256, z:z + 256] for z in range(4)])
    out = {}
    for name, img, chunks in (("mosaic", img2, (100, 100)), ("stack", img3, (1, 100, 100))):
        path = root / f"{name}.zarr"
        z = zarr.open_array(str(path), mode="w", shape=img.shape, chunks=chunks, dtype=img.dtype)
        z[...] = img
        out[name] = (path, img)
    return out


@pytest.fixture(scope="session")
def reference(batch_model, images):
    """In-memory predictions (core.predict) of both images."""
    model = batch_model[1]
    return {"mosaic": predict(model, images["mosaic"][1], axes="YX").labels,
            "stack": predict(model, images["stack"][1], axes="ZYX").labels}


def assert_same_objects(out: np.ndarray, ref: np.ndarray) -> None:
    """Same objects up to relabelling: AP@0.5 >= 0.99 and a one-to-one id mapping on >= 99.9% of pixels."""
    assert out.shape == ref.shape
    scores = instance_scores(out, ref)
    assert scores["ap50"] >= 0.99, scores
    pairs, counts = np.unique(np.stack([out.ravel(), ref.ravel()]).astype(np.int64), axis=1, return_counts=True)
    # keep, for every output id, the reference id it mostly covers; everything else is a mismatch
    best = {}
    for (o, r), c in zip(pairs.T, counts):
        if c > best.get(o, (0, 0))[1]:
            best[o] = (r, c)
    assert best.get(0, (0, 0))[0] == 0
    matched = sum(c for _, c in best.values())
    assert len({r for r, _ in best.values()}) == len(best)  # one-to-one
    assert matched >= 0.999 * out.size


def assert_same_partition(out: np.ndarray, ref: np.ndarray) -> None:
    """Exactly the same objects and pixels, ids aside: each id of one array meets one id of the other, 0 meets 0."""
    assert out.shape == ref.shape
    pairs = np.unique(np.stack([out.ravel(), ref.ravel()]).astype(np.int64), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1], "objects differ"
    assert (pairs[1][pairs[0] == 0] == 0).all()


def straddling(ref: np.ndarray, chunk: int) -> list[int]:
    """Reference objects whose pixels lie on both sides of a YX chunk border (largest first)."""
    found = []
    for k in np.unique(ref)[1:]:
        coords = np.nonzero(ref == k)
        ys, xs = coords[-2], coords[-1]
        if (ys // chunk).min() != (ys // chunk).max() or (xs // chunk).min() != (xs // chunk).max():
            found.append((int((ref == k).sum()), int(k)))
    return [k for _, k in sorted(found, reverse=True)]


def assert_one_object(out: np.ndarray, mask: np.ndarray) -> None:
    ids = np.unique(out[mask])
    ids = ids[ids > 0]
    assert ids.size == 1, f"object split into ids {ids}"
    overlap = (out[mask] == ids[0]).sum()
    assert overlap >= 0.95 * mask.sum()


# ----------------------------------------------------------------------------- chunk maths
def test_plan_cores_tile_the_image_once_and_windows_stay_aligned():
    plan = plan_chunks((5, 300, 270), "Z", 100, margin=20, halo=30, align=8)
    assert plan.chunks[-2:] == (104, 104)  # rounded up to the pooling factor
    cover = np.zeros(plan.shape, np.int32)
    for b in plan.blocks:
        cover[b.core_slices] += 1
        assert b.window[0] % 8 == 0 and b.window[2] % 8 == 0
        assert b.window[0] <= b.region[0] <= b.core[0] and b.core[1] <= b.region[1] <= b.window[1]
    assert (cover == 1).all()
    faces = plan.faces()
    assert {f.axis for f in faces} == {"y", "x", "z"}


def test_face_matching_keeps_touching_objects_apart_and_joins_cut_ones():
    # two views of one strip: object 1/7 is the same (slightly different border), 2/8 and 3/9 touch
    a = np.zeros((1, 20, 10), np.uint32)
    b = np.zeros((1, 20, 10), np.uint32)
    a[0, 0:8, :] = 1
    b[0, 0:7, :] = 7
    a[0, 10:15, :] = 2
    a[0, 15:20, :] = 3
    b[0, 10:15, :] = 8
    b[0, 15:20, :] = 9
    pairs = {tuple(p) for p in face_matches(a, b)}
    assert pairs == {(1, 7), (2, 8), (3, 9)}


def test_merge_reproduces_link_stack_exactly():
    rng = np.random.default_rng(0)
    planes = []
    for z in range(5):  # overlapping, shifting discs, plus noise objects
        from skimage.draw import disk

        lab = np.zeros((80, 80), np.int32)
        k = 1
        for cy, cx in ((20, 20), (20, 45), (55, 30), (60, 62)):
            rr, cc = disk((cy + z * rng.integers(-2, 3), cx + z), 9 - abs(z - 2), shape=lab.shape)
            lab[rr, cc] = k
            k += 1
        planes.append(lab)
    stack = np.stack(planes)
    # number planes 1..n globally, then link with merge_labels' Z assignment
    offset, glob = 0, np.zeros_like(stack, np.int64)
    for z in range(stack.shape[0]):
        glob[z] = np.where(stack[z] > 0, stack[z] + offset, 0)
        offset += int(stack[z].max())
    a, b, n = overlap_counts(glob[:-1], glob[1:])
    area = np.bincount(glob.ravel(), minlength=offset + 1)
    merged = merge_labels(offset, area, np.zeros((0, 2), np.int64), (a, b, n))
    assert_same_objects(merged.final[glob], link_stack(stack))
    assert merged.n_objects == link_stack(stack).max()


# ----------------------------------------------------------------------------- distributed
def test_local_cluster_matches_in_memory_prediction(batch_model, images, reference, tmp_path):
    """Both images as one job on a 2-process LocalCluster, 128-pixel chunks (9 resp. 16 chunks)."""
    path, _ = batch_model
    reports = predict_folder(path, [images["mosaic"][0], images["stack"][0]], tmp_path, chunk_size=CHUNK,
                             workers=2, threads_per_worker=1)
    assert [r.n_chunks for r in reports] == [9, 16]
    for report, name, axes in zip(reports, ("mosaic", "stack"), ("YX", "ZYX")):
        ref = reference[name]
        assert report.out_path == tmp_path / f"{name}_labels.zarr"
        arr = zarr.open_array(str(report.out_path), mode="r")
        assert arr.dtype == np.uint32 and arr.shape == ref.shape
        assert arr.attrs["axes"] == axes and arr.attrs["model"] == "batchnet"
        assert arr.attrs["source"].endswith(f"{name}.zarr")
        out = arr[...]
        assert_same_objects(out, ref)
        assert report.n_objects == len(np.unique(out)) - 1
        assert not report.failed_chunks
        cut = straddling(ref, CHUNK)
        assert len(cut) >= 3
        for k in cut[:5]:  # objects cut by chunk borders came out whole
            assert_one_object(out, ref == k)
    # a 3D object spanning Z chunks (one plane per chunk here) and a YX border is one object
    ref3 = reference["stack"]
    out3 = zarr.open_array(str(reports[1].out_path), mode="r")[...]
    deep = [k for k in straddling(ref3, CHUNK) if len(np.unique(np.nonzero(ref3 == k)[0])) >= 2]
    assert deep
    assert_one_object(out3, ref3 == deep[0])


# ----------------------------------------------------------------------------- threads
def test_threaded_path_progress_and_3d_within_chunk_linking(batch_model, images, reference, tmp_path):
    import dask.array as da

    _, model = batch_model
    calls = []
    lazy = da.from_zarr(str(images["stack"][0]))
    report = predict_to_zarr(model, lazy, tmp_path / "s.zarr", axes="ZYX", chunk_size=512,
                             progress=lambda d, t: calls.append((d, t)))
    assert report.n_chunks == 1  # 4 planes of 256x256 in one chunk: Z linked inside the chunk
    assert calls == [(1, 2), (2, 2)]
    assert_same_objects(zarr.open_array(str(tmp_path / "s.zarr"), mode="r")[...], reference["stack"])

    calls.clear()
    report = predict_to_zarr(model, images["mosaic"][1], tmp_path / "m.zarr", chunk_size=CHUNK,
                             progress=lambda d, t: calls.append((d, t)))
    assert [c[0] for c in calls] == list(range(1, 19)) and {c[1] for c in calls} == {18}
    assert report.shape == (384, 384) and report.mpx_per_s > 0
    assert_same_objects(zarr.open_array(str(tmp_path / "m.zarr"), mode="r")[...], reference["mosaic"])


def test_threaded_path_runs_one_chunk_at_a_time_on_the_given_threads(batch_model, images, reference, tmp_path,
                                                                     monkeypatch):
    """Two windows side by side held two tiles' network buffers at once, so the peak rose with the number of
    chunks (issue 18): the local scheduler runs one window at a time, with all the torch threads asked for."""
    import threading
    import time

    import torch

    _, model = batch_model
    real, lock, running, seen = batch.predict_window, threading.Lock(), [0], []

    def watched(*args, **kwargs):
        with lock:
            running[0] += 1
            seen.append((running[0], torch.get_num_threads()))
        try:
            time.sleep(0.05)  # long enough for a second thread to start its window, if there were one
            return (yield from real(*args, **kwargs))
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(batch, "predict_window", watched)
    saved = torch.get_num_threads()
    predict_to_zarr(model, images["mosaic"][1], tmp_path / "m.zarr", chunk_size=CHUNK, threads_per_worker=2)
    assert len(seen) == 9 and set(seen) == {(1, 2)}
    assert torch.get_num_threads() == saved
    assert_same_objects(zarr.open_array(str(tmp_path / "m.zarr"), mode="r")[...], reference["mosaic"])


def test_cancel_leaves_nothing_behind(batch_model, images, tmp_path):
    _, model = batch_model
    token = CancelToken()
    with pytest.raises(Cancelled):
        predict_to_zarr(model, images["mosaic"][1], tmp_path / "c.zarr", chunk_size=CHUNK,
                        progress=lambda d, t: token.cancel(), cancel=token)
    assert list(tmp_path.iterdir()) == []


def test_failing_chunk_is_retried_then_reported(batch_model, images, reference, tmp_path, monkeypatch):
    _, model = batch_model
    real = batch._read_window
    failures = {"left": 1}

    def flaky(source, block):
        if block.index == (1, 1) and failures["left"] > 0:
            failures["left"] -= 1
            raise OSError("simulated read error")
        return real(source, block)

    monkeypatch.setattr(batch, "_read_window", flaky)
    report = predict_to_zarr(model, images["mosaic"][1], tmp_path / "r.zarr", chunk_size=CHUNK)
    assert report.retried_chunks == [(1, 1)] and report.failed_chunks == []
    assert_same_objects(zarr.open_array(str(tmp_path / "r.zarr"), mode="r")[...], reference["mosaic"])

    failures["left"] = 10  # more than 1 + retries attempts
    with pytest.raises(BatchError, match=r"\(1, 1\)") as info:
        predict_to_zarr(model, images["mosaic"][1], tmp_path / "f.zarr", chunk_size=CHUNK, retries=1)
    assert info.value.report.failed_chunks == [(1, 1)]
    assert "simulated read error" in info.value.report.errors[(1, 1)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.zarr"]


def test_maskrcnn_chunks_give_the_in_memory_objects_in_2d_and_3d(tmp_path):
    """nuclei-maskrcnn through zarr chunks gives exactly the in-memory objects, ids aside. 2D: its detections
    depend on the tile, so each chunk runs whole tiles of the whole image's grid (a 288² image in 256 px
    tiles, 144 px chunks whose windows start off that grid). 3D: its stacks are linked and cut at their
    Z necks (``z_split_dip``), which needs every plane at once, so Z is not cut into chunks."""
    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.sim import simulate_nuclei

    model = load_model("nuclei-maskrcnn")
    image = simulate_nuclei((288, 288), radius_range=(8.0, 14.0), snr=20, seed=1).image.astype(np.float32)
    ref = predict(model, image, axes="YX", tile_size=256).labels
    predict_to_zarr(model, image, tmp_path / "2d.zarr", axes="YX", chunk_size=144, tile_size=256)
    assert ref.max() >= 50
    assert_same_partition(zarr.open_array(str(tmp_path / "2d.zarr"), mode="r")[...], ref)

    stack = simulate_nuclei((8, 64, 64), radius_range=(6.0, 9.0), anisotropy=2.0, snr=30, seed=0, density=0.6,
                            touching=0.5).image.astype(np.float32)
    ref = predict(model, stack, axes="ZYX").labels
    assert ref.max() > predict(model, stack, axes="ZYX", z_split_dip=0.0).labels.max()  # chains were cut
    report = predict_to_zarr(model, stack, tmp_path / "3d.zarr", axes="ZYX", chunk_size=32)
    assert report.n_chunks == 4
    assert_same_partition(zarr.open_array(str(tmp_path / "3d.zarr"), mode="r")[...], ref)


def test_semantic_model_and_channel_axis(tmp_path):
    """Class ids are written directly; a C axis is removed and averaged for a 1-channel model."""
    import torch

    from napari_segtool.core.train import new_model

    torch.manual_seed(0)
    model = new_model("unet", "semantic", 1, ["unlabelled", "a", "b"], depth=2, width=4)
    model.meta.name = "sem"
    rng = np.random.default_rng(0)
    image = rng.random((2, 150, 170)).astype(np.float32)  # CYX
    ref = predict(model, image, axes="CYX").labels
    report = predict_to_zarr(model, image, tmp_path / "sem.zarr", axes="CYX", chunk_size=64)
    out = zarr.open_array(str(tmp_path / "sem.zarr"), mode="r")
    assert out.shape == (150, 170) and out.attrs["axes"] == "YX" and report.n_chunks == 9
    assert (out[...] == ref).mean() > 0.999


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's heaps")
def test_segtool_threads_share_one_heap():
    """Per-thread glibc heaps grew a chunked job on 2 threads window after window (issue 18); the CLI makes
    threads share the main heap, which malloc_trim hands back. Counted with glibc's own malloc_stats."""
    import os
    import re
    import subprocess

    code = (
        "import ctypes, sys, threading\n"
        "from napari_segtool.kernel.memory import share_one_heap\n"
        "if sys.argv[1] == 'one':\n"
        "    share_one_heap()\n"
        "libc, meet = ctypes.CDLL('libc.so.6'), threading.Barrier(4)\n"
        "libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]\n"
        "def work():\n"
        "    blocks = [libc.malloc(4096) for _ in range(64)]\n"
        "    meet.wait()\n"
        "    for b in blocks: libc.free(b)\n"
        "threads = [threading.Thread(target=work) for _ in range(4)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "libc.malloc_stats()\n")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    heaps = {}
    for mode in ("default", "one"):
        run = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, env=env, check=True)
        heaps[mode] = len(re.findall(r"^Arena \d+:", run.stderr, re.M))
    assert heaps["default"] > 1 and heaps["one"] == 1
