"""The Batch widget: whole-image chunked runs (core.batch.predict_to_zarr) into a lazy Labels layer."""
import dask.array as da
import numpy as np
import pytest
import zarr

from napari_segtool.core.batch import predict_to_zarr
from napari_segtool.plugin import batch_widget as bw
from napari_segtool.plugin import readers
from napari_segtool.sim import simulate_nuclei

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def blob_model_path(tmp_path_factory):
    """A hand-wired blob-detecting U-Net (the tiny trained model finds no objects to compare)."""
    from napari_segtool.core.checkpoint import save_model
    from tests.core.test_batch import threshold_unet

    return save_model(threshold_unet(), tmp_path_factory.mktemp("blob_model") / "blobs.safetensors")


def _wait(qtbot, widget, timeout=60000):
    qtbot.waitUntil(lambda: not widget.running, timeout=timeout)
    return widget.last_outcome


def _widget(make_napari_viewer, image=None, **kwargs):
    viewer = make_napari_viewer()
    layer = viewer.add_image(image, name="nuclei", **kwargs) if image is not None else None
    widget = bw.BatchWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Batch")
    return viewer, layer, widget


def _dask_nuclei(shape=(256, 256), seed=1):
    return da.from_array(simulate_nuclei(shape, seed=seed).image, chunks=128)


def assert_same_objects(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to relabelling: same object count and a one-to-one id correspondence (0 with 0)."""
    assert a.shape == b.shape
    ids_a, ids_b = np.unique(a), np.unique(b)
    assert len(ids_a) == len(ids_b)
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]).astype(np.int64), axis=1)
    assert pairs.shape[1] == len(ids_a)  # every id of a meets exactly one id of b, and vice versa
    assert ((pairs[0] == 0) == (pairs[1] == 0)).all()


def test_threads_run_gives_lazy_labels_equal_to_core(make_napari_viewer, qtbot, user_model, blob_model_path,
                                                     errors, tmp_path):
    image = _dask_nuclei()
    viewer, layer, widget = _widget(make_napari_viewer, image, scale=(0.5, 0.5), translate=(10, 20))
    assert widget.model_combo.currentData().endswith("tiny")  # the session's model choices
    project = widget.session.project.root
    assert widget.path_edit.text() == str(project / "batch" / "nuclei_labels.zarr")  # default output
    choice = widget.session.add_model_file(blob_model_path)
    widget.select_model(choice.ref)
    widget.chunk_spin.setValue(128)
    widget.scheduler_combo.setCurrentText(bw.SCHED_THREADS)
    assert widget.run() is not None
    outcome = _wait(qtbot, widget)
    assert outcome.ok, outcome.message

    labels = viewer.layers["nuclei labels (batch)"]
    assert isinstance(labels.data, da.Array)  # lazy: read from the zarr on demand
    assert labels.data.shape == image.shape
    assert tuple(labels.scale) == (0.5, 0.5) and tuple(labels.translate) == (10, 20)
    out = project / "batch" / "nuclei_labels.zarr"
    assert outcome.result.out_path == out and outcome.result.n_chunks == 4
    ref = predict_to_zarr(blob_model_path, image, tmp_path / "direct.zarr", axes="YX", chunk_size=128)
    got = np.asarray(labels.data)
    assert ref.n_objects > 10 and len(np.unique(got)) - 1 == ref.n_objects
    assert_same_objects(got, zarr.open_array(str(tmp_path / "direct.zarr"), mode="r")[:])
    assert "done" in widget.status_label.text()
    # the bar's last value is set on the next turn (its synchronous repaint apart from the result layer's building)
    qtbot.waitUntil(lambda: widget.progress_bar.value() == widget.progress_bar.maximum() == 1, timeout=5000)
    # progress and result speak one unit: steps (a chunk in one pass), with the chunk count beside it
    steps = widget._steps_total
    assert steps in (4, 8) and f"{steps} steps (4 chunks)" in widget.status_label.text()
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert not any(kind == "show_error" for kind, _ in errors)

    # the reader opens the result lazily, as labels
    [(data, kwargs, kind)] = readers.get_reader(str(out) + "/")(str(out))
    assert kind == "labels" and isinstance(data, da.Array) and data.shape == image.shape


def test_cancel_right_after_start_adds_nothing(make_napari_viewer, qtbot, user_model, errors, tmp_path):
    viewer, layer, widget = _widget(make_napari_viewer, _dask_nuclei((512, 512)))
    out = tmp_path / "cancelled" / "out.zarr"
    widget.path_edit.setText(str(out))
    widget.chunk_spin.setValue(128)
    assert widget.run() is not None
    widget.cancel()
    outcome = _wait(qtbot, widget)
    assert outcome.status == "cancelled"
    assert [l.name for l in viewer.layers] == ["nuclei"]
    assert "cancelled" in widget.status_label.text()
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no partial work left behind
    assert widget.run_button.isEnabled() and not widget.cancel_button.isEnabled()
    assert not any(kind == "show_error" for kind, _ in errors)


def test_bad_inputs_are_messages_not_crashes(make_napari_viewer, qtbot, user_model, errors, tmp_path):
    viewer, _, widget = _widget(make_napari_viewer)
    assert widget.run() is None  # no image layer
    assert any("choose an image layer" in m for _, m in errors)

    layer = viewer.add_image(np.zeros((64, 64), np.float32), name="flat")
    assert widget.image_combo.currentText() == "flat"
    widget.path_edit.setText(str(tmp_path / "out.tif"))
    assert widget.run() is None
    assert any(".zarr" in m for _, m in errors)
    widget.path_edit.setText(str(tmp_path / "out.zarr"))
    widget.scheduler_combo.setCurrentText(bw.SCHED_ADDRESS)
    widget.address_edit.setText("somewhere")
    assert widget.run() is None
    assert any("tcp://" in m for _, m in errors)
    widget.address_edit.setText("tcp://127.0.0.1:8786")
    job = widget._prepare(layer)
    assert job.scheduler == "tcp://127.0.0.1:8786" and job.workers is None

    # an unwritable output (its parent is a file): the worker fails, the message is shown
    widget.scheduler_combo.setCurrentText(bw.SCHED_THREADS)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    widget.path_edit.setText(str(blocker / "out.zarr"))
    assert widget.run(layer) is not None
    outcome = _wait(qtbot, widget)
    assert outcome.status == "error"
    errors = [m for k, m in errors if k == "show_error"]
    assert len(errors) == 4 and "batch run failed" in errors[-1] and "\n" not in errors[-1]
    assert "failed" in widget.status_label.text()
    assert [l.name for l in viewer.layers] == ["flat"]


def test_local_cluster_two_workers(make_napari_viewer, qtbot, user_model, blob_model_path, errors,
                                   tmp_path):
    image = _dask_nuclei()
    viewer, layer, widget = _widget(make_napari_viewer, image)
    widget.select_model(widget.session.add_model_file(blob_model_path).ref)
    widget.path_edit.setText(str(tmp_path / "cluster.zarr"))
    widget.chunk_spin.setValue(128)
    widget.scheduler_combo.setCurrentText(bw.SCHED_LOCAL)
    widget.workers_spin.setValue(2)
    assert widget.run() is not None
    outcome = _wait(qtbot, widget, timeout=120000)
    assert outcome.ok, outcome.message
    labels = viewer.layers["nuclei labels (batch)"]
    assert isinstance(labels.data, da.Array)
    ref = predict_to_zarr(blob_model_path, image, tmp_path / "direct.zarr", axes="YX", chunk_size=128)
    assert_same_objects(np.asarray(labels.data), zarr.open_array(str(tmp_path / "direct.zarr"), mode="r")[:])
    assert outcome.result.n_objects == ref.n_objects


def test_reader_opens_zarr_images_lazily(tmp_path):
    path = tmp_path / "stack.zarr"
    z = zarr.open_array(str(path), mode="w", shape=(3, 64, 80), chunks=(1, 32, 32), dtype="uint16")
    z[...] = np.arange(3 * 64 * 80, dtype=np.uint16).reshape(3, 64, 80)
    z.attrs["axes"] = "ZYX"
    assert readers.get_reader(str(tmp_path)) is None  # a folder that is not a .zarr
    [(data, kwargs, kind)] = readers.get_reader(str(path))(str(path))
    assert kind == "image" and isinstance(data, da.Array) and data.shape == (3, 64, 80)
    assert kwargs["metadata"]["segtool"]["axes"] == "ZYX"
