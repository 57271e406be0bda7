"""A mirror-framed image (``np.pad`` reflect / symmetric) is run as the plain image, on every path.

Inside the frame the labels are the plain image's, bit for bit (the engine's own mirror padding at the
content's edge reproduces what the plain image sees); in the frame they are the mirror image of the
content's labels: an object crossing a mirror axis is one object, every other copy an object of its own,
i.e. the connected components of the mirror-padded plain labels. Chunks through zarr decide alike.
"""
from __future__ import annotations

import numpy as np
import pytest
import zarr
from skimage.measure import label

from napari_segtool.core.batch import predict_to_zarr
from napari_segtool.core.predict import predict
from tests.core.test_batch import assert_same_objects, assert_same_partition, draw_disks, threshold_unet
from tests.core.test_scale import nuclei_image, nuclei_model  # noqa: F401  (the shared module fixtures)

PAD = ((40, 23), (9, 50))


@pytest.mark.parametrize("mode", ["reflect", "symmetric"])
def test_mirror_framed_labels_are_the_plain_labels_and_their_mirror_images(nuclei_model, nuclei_image, mode):  # noqa: F811
    image, _ = nuclei_image
    plain = predict(nuclei_model, image)
    framed = predict(nuclei_model, np.pad(image, PAD, mode=mode))
    (t, b), (l, r) = PAD
    assert np.array_equal(framed.labels[t:-b, l:-r], plain.labels)
    assert framed.diameter == plain.diameter
    expected = label(np.pad(plain.labels, PAD, mode=mode), connectivity=1)
    assert_same_partition(framed.labels, expected)
    assert framed.labels.max() > plain.labels.max() + 10   # the copies are objects of their own


def test_chunks_of_a_mirror_framed_image_decide_as_the_whole_image(tmp_path):
    """Exactly, with a network whose labels depend only on a small neighbourhood; chunks of 96 px cut the
    frame, the content and the mirror axes, and a band's sources lie in other chunks."""
    model = threshold_unet()
    image = np.pad(draw_disks((200, 210), 120, seed=5), ((37, 20), (11, 45)), mode="reflect")
    ref = predict(model, image, diameter=16.0).labels
    predict_to_zarr(model, image, tmp_path / "out.zarr", chunk_size=96, diameter=16.0)
    out = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...]
    assert_same_partition(out, ref)
    source = np.pad(ref[37:-20, 11:-45], ((37, 20), (11, 45)), mode="reflect")
    assert np.array_equal(ref > 0, source > 0)
    pairs = np.unique(np.stack([ref[ref > 0], source[ref > 0]]), axis=1)
    assert len(np.unique(pairs[0])) == pairs.shape[1] > len(np.unique(ref[37:-20, 11:-45])) + 20  # a copy: one source


def test_chunks_of_a_mirror_framed_image_shipped_model(nuclei_model, nuclei_image, tmp_path):  # noqa: F811
    image = np.pad(nuclei_image[0], PAD, mode="symmetric")
    ref = predict(nuclei_model, image).labels
    predict_to_zarr(nuclei_model, image, tmp_path / "out.zarr", chunk_size=128)
    assert_same_objects(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[...], ref)
