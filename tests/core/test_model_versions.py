"""Model QC: held-out reviewed stripes, AP per model version stored in the project, roll back."""
import json

import pytest

from napari_segtool.core.model_versions import (
    VERSIONS_FILE,
    VersionError,
    current_version,
    heldout_planes,
    holdout_mask,
    record_version,
    roll_back,
    score_model,
    versions,
)
from napari_segtool.core.project import ImageEntry, Project
from tests.conftest import draw_objects
from tests.core.test_batch import threshold_unet


def test_holdout_mask_is_the_right_stripe_of_wide_planes_only():
    mask = holdout_mask((50, 300))
    assert mask[:, 240:].all() and not mask[:, :240].any()
    assert not holdout_mask((50, 100)).any()           # a 20 px stripe would score next to nothing


@pytest.fixture()
def reviewed_project(tmp_path):
    image, labels = draw_objects((160, 320), n=40, seed=5, touching=False)
    p = Project(tmp_path / "proj")
    p.save_entry(ImageEntry(key="cells", name="cells", shape=labels.shape, reviewed=[()]))
    p.save_plane("cells", (), labels, None, image=image)
    return p, image, labels


def test_versions_are_scored_on_held_out_stripes_stored_and_rolled_back(reviewed_project, tiny_model):
    from napari_segtool.core.checkpoint import load_model, save_model
    from napari_segtool.core.train import new_model

    p, image, labels = reviewed_project
    (plane,) = heldout_planes(p)
    assert plane.x0 == 256 and plane.n_objects > 3
    good, blank = load_model(tiny_model), new_model("unet", "instance", 1, depth=2, width=8)
    save_model(blank, p.model_path("v1"))
    save_model(good, p.model_path("v2"))
    v1 = record_version(p, "v1", blank)
    v2 = record_version(p, "v2", parent="v1")                    # loaded from models/
    assert v2.score.ap50 > v1.score.ap50 + 0.3 and v2.score.f1 > v1.score.f1
    assert v2.score.heldout == v1.score.heldout and v2.score.n_objects == plane.n_objects
    # the score is the model's on the stripe only: the same as scoring the prediction's crop by hand
    assert v2.score == score_model(good, [plane])
    stored = json.loads((p.root / VERSIONS_FILE).read_text())
    assert [v["name"] for v in stored] == ["v1", "v2"] and stored[1]["parent"] == "v1"
    listed = versions(Project(p.root))
    assert [v.name for v in listed] == ["v1", "v2"] and listed[1].score == v2.score

    p.update_settings(model="models/v2")
    assert current_version(p) == "v2"
    assert roll_back(p, "v1").name == "v1"
    assert Project(p.root).settings["model"] == "models/v1" and current_version(p) == "v1"
    assert p.model_path("v2").exists()                           # rolling back deletes nothing
    with pytest.raises(VersionError):
        roll_back(p, "v9")
    with pytest.raises(VersionError):
        record_version(p, "v9")


def test_versions_are_rescored_when_the_reviewed_regions_change(reviewed_project, tiny_model):
    from napari_segtool.core.checkpoint import load_model, save_model

    p, image, labels = reviewed_project
    model = load_model(tiny_model)
    save_model(model, p.model_path("v1"))
    first = record_version(p, "v1", model)
    assert versions(p)[0].score == first.score                    # same held-out set: not scored again
    # a second reviewed image: the held-out set grows, every version is scored on the new one
    image2, labels2 = draw_objects((160, 320), n=40, seed=6, touching=False)
    p.save_entry(ImageEntry(key="more", name="more", shape=labels2.shape, reviewed=[()]))
    p.save_plane("more", (), labels2, None, image=image2)
    (again,) = versions(p)
    assert again.score.heldout != first.score.heldout and again.score.n_planes == 2
    assert again.score.n_objects > first.score.n_objects
    stored = json.loads((p.root / VERSIONS_FILE).read_text())
    assert stored[0]["score"]["heldout"] == again.score.heldout


def test_training_on_the_project_records_a_scored_version_next_to_its_parent(reviewed_project, tiny_model):
    """core.train_project (the Train widget's job): the saved model is recorded with its parent; every version
    is scored on the same held-out stripes (the parent's score, taken before a second image was reviewed, is
    taken again); the stripes are never trained on."""
    from napari_segtool.core.checkpoint import load_model, save_model
    from napari_segtool.core.train import TrainConfig
    from napari_segtool.core.train_project import ProjectTrainJob, iter_train_project, project_examples

    p, image, labels = reviewed_project
    save_model(load_model(tiny_model), p.model_path("v0"))
    old = record_version(p, "v0")
    image2, labels2 = draw_objects((160, 320), n=40, seed=6, touching=False)
    p.save_entry(ImageEntry(key="more", name="more", shape=labels2.shape, reviewed=[()]))
    p.save_plane("more", (), labels2, None, image=image2)
    config = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, patch_size=64, num_threads=1, seed=0)
    gen = iter_train_project(ProjectTrainJob(p.root, str(p.model_path("v0")), "instance", config, "next"))
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        result = stop.value
    assert result.path is not None and result.parent == "v0"
    v0, new = versions(p, rescore=False)
    assert (new.name, new.parent, new.score) == (result.name, "v0", result.score)
    planes = heldout_planes(p)
    assert result.score == score_model(load_model(result.path), planes) and result.score.n_planes == 2
    assert v0.score == result.parent_score == score_model(load_model(tiny_model), planes) != old.score
    examples, _ = project_examples(p)
    assert len(examples) == 2
    for example in examples:
        assert example.annotated[:, :256].all() and not example.annotated[:, 256:].any()


def _semantic_blob_model(swap: bool = False):
    """A semantic U-Net with classes background (1) and nucleus (2): the hand-wired bright-blob network of
    tests/core/test_batch.py with its background and interior logits as the two classes (swapped: every pixel
    gets the wrong class)."""
    import torch

    model = threshold_unet()
    rows = [1, 0] if swap else [0, 1]  # background, interior logits of the instance head
    old = model.net.head
    head = torch.nn.Conv2d(old.in_channels, 2, 1)
    with torch.no_grad():
        head.weight.copy_(old.weight[rows])
        head.bias.copy_(old.bias[rows])
    model.net.head = head
    model.meta.task = "semantic"
    model.meta.classes = ["unlabelled", "background", "nucleus"]
    model.meta.arch_kwargs["out_channels"] = 2
    model.meta.postprocess = {}
    return model


def test_semantic_models_are_scored_by_class_iou_not_instance_ap(tmp_path):
    """A semantic (here binary: background / nucleus) model's class map has no objects to match: its versions
    are scored by per-class IoU on the held-out stripe and their mean, stored and listed with that metric."""
    import numpy as np

    from napari_segtool.core.checkpoint import save_model
    from napari_segtool.core.predict import predict

    image, objects = draw_objects((160, 320), n=40, seed=5, touching=False)
    classes = np.where(objects > 0, 2, 1).astype(np.int32)  # every pixel reviewed: 1 background, 2 nucleus
    classes[:, 300:] = 0                                       # ... but the last columns are not labelled
    p = Project(tmp_path / "proj")
    p.save_entry(ImageEntry(key="cells", name="cells", shape=classes.shape, reviewed=[()]))
    p.save_plane("cells", (), classes, None, image=image)
    (plane,) = heldout_planes(p)
    good, wrong = _semantic_blob_model(), _semantic_blob_model(swap=True)
    save_model(good, p.model_path("good"))
    save_model(wrong, p.model_path("wrong"))
    v_wrong = record_version(p, "wrong", wrong)
    v_good = record_version(p, "good", parent="wrong")        # loaded from models/

    score = v_good.score
    assert score.task == "semantic" and score.metric == "mIoU"
    assert score.ap50 is None and score.f1 is None and score.n_objects == 0
    assert set(score.class_iou) == {"background", "nucleus"}
    # the IoU of each class, counted by hand on the stripe's labelled pixels
    pred = predict(good, image, axes="YX").labels[:, plane.x0:]
    truth = classes[:, plane.x0:]
    labelled = truth > 0
    for cls, name in ((1, "background"), (2, "nucleus")):
        inter = ((pred == cls) & (truth == cls) & labelled).sum()
        union = (((pred == cls) & labelled) | (truth == cls)).sum()
        assert score.class_iou[name] == pytest.approx(inter / union)
    assert score.value == score.miou == pytest.approx(np.mean(list(score.class_iou.values())))
    assert score.n_pixels == labelled.sum() and score.figures() == [("mIoU", score.miou)]
    assert score.class_iou["nucleus"] > 0.8 and score.miou > 0.85     # the blob network finds the nuclei
    assert v_wrong.score.miou < 0.1 and v_wrong.score.heldout == score.heldout
    # stored and read back with its metric; instance scores keep theirs
    listed = versions(Project(p.root))
    assert [(v.name, v.score) for v in listed] == [("wrong", v_wrong.score), ("good", score)]
    stored = json.loads((p.root / VERSIONS_FILE).read_text())
    assert stored[1]["score"]["task"] == "semantic" and stored[1]["score"]["class_iou"]["nucleus"] > 0.8
