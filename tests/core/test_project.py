"""The project folder store: round trips, reviewed state, training examples, crash safety."""

import json
import os

import numpy as np
import pytest

from napari_segtool.core.project import (
    ImageEntry,
    Project,
    ProjectError,
    image_key,
    parse_plane_name,
    plane_name,
)


def _disk(shape, cy, cx, r, value, out):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    out[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value
    return out


def _stack():
    labels = np.zeros((3, 48, 48), np.int32)
    for z in range(3):
        _disk((48, 48), 15, 15, 6, 1 + 2 * z, labels[z])
        _disk((48, 48), 32, 30, 7, 2 + 2 * z, labels[z])
    image = (labels > 0).astype(np.float32) * 100 + np.random.default_rng(0).normal(10, 2, labels.shape)
    return image.astype(np.float32), labels


def test_plane_names_round_trip():
    for index in [(), (3,), (0, 12)]:
        assert parse_plane_name(plane_name(index)) == index


def test_image_key_is_stable_and_safe():
    a = image_key("my image/1", "/data/x.tif", (3, 4, 5))
    assert a == image_key("my image/1", "/data/x.tif", (3, 4, 5))
    assert "/" not in a and a.startswith("my-image-1")
    assert a != image_key("my image/1", "/data/x.tif", (3, 4, 6))


def test_create_reopen_and_settings(tmp_path):
    root = tmp_path / "proj"
    p = Project(root)
    assert (root / "project.json").exists()
    p.update_settings(model="nuclei", tile_size=256)
    q = Project(root)
    assert q.settings["model"] == "nuclei"
    with pytest.raises(ProjectError):
        Project(tmp_path / "missing", create=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ProjectError):
        Project(tmp_path / "afile")


def test_planes_entries_and_reviewed_round_trip(tmp_path):
    image, labels = _stack()
    p = Project(tmp_path)
    key = image_key("stack", None, labels.shape)
    entry = ImageEntry(key=key, name="stack", shape=labels.shape, axes="ZYX", reviewed=[(2,)])
    p.save_entry(entry)
    edited = np.zeros(labels.shape, bool)
    edited[0, 10:20, 10:20] = True
    for z in range(3):
        p.save_plane(key, (z,), labels[z], edited[z], image=image[z] if edited[z].any() or z == 2 else None)
    ann = Project(tmp_path).load(key)
    assert ann is not None
    np.testing.assert_array_equal(ann.labels, labels)
    np.testing.assert_array_equal(ann.edited, edited)
    assert ann.reviewed == {(2,)}
    assert ann.annotated[2].all() and not ann.annotated[1].any()
    assert p.annotated_planes(key) == [(0,), (2,)]
    assert p.find("stack", None, labels.shape).key == key
    assert p.load_image_plane(key, (0,)).shape == (48, 48, 1)
    assert p.load_image_plane(key, (1,)) is None
    # the image plane is written once only
    p.save_plane(key, (0,), labels[0], edited[0], image=np.zeros_like(image[0]))
    assert p.load_image_plane(key, (0,)).max() > 0


def test_training_examples_from_edits_and_reviewed(tmp_path):
    image, labels = _stack()
    p = Project(tmp_path)
    key = image_key("stack", "/x.tif", labels.shape)
    p.save_entry(ImageEntry(key=key, name="stack", shape=labels.shape, source="/x.tif", reviewed=[(1,)]))
    edited = np.zeros((48, 48), bool)
    edited[8:24, 8:24] = True
    p.save_plane(key, (0,), labels[0], edited, image=image[0])
    p.save_plane(key, (1,), labels[1], None, image=image[1])
    # reviewed plane without objects: skipped with a note, not an error
    p.save_entry(ImageEntry(key="empty", name="empty", shape=(32, 32), reviewed=[()]))
    p.save_plane("empty", (), np.zeros((32, 32), np.int32), None, image=np.ones((32, 32)))
    examples, notes = p.training_examples()
    assert len(examples) == 2
    by_name = {ex.name: ex for ex in examples}
    # edited pixels + a background ring around the edited objects (core.edits.training_mask)
    from napari_segtool.core.edits import TRAINING_RING_PX, training_mask

    got = by_name["stack plane (0,)"].annotated
    np.testing.assert_array_equal(got, training_mask(labels[0], edited, TRAINING_RING_PX))
    assert got.sum() > edited.sum() and (labels[0][got & ~edited] == 0).all()
    assert by_name["stack plane (1,)"].annotated.all()    # reviewed, too narrow to hold a stripe out
    assert any("no objects" in n for n in notes)
    # margin=0: exactly the edited pixels
    exact = {ex.name: ex for ex in p.training_examples(margin=0)[0]}
    np.testing.assert_array_equal(exact["stack plane (0,)"].annotated, edited)
    # background_only keeps the empty reviewed plane as "nothing here"
    examples, notes = p.training_examples(background_only=True)
    empty = [ex for ex in examples if ex.name.startswith("empty")]
    assert len(empty) == 1 and empty[0].annotated.all() and not empty[0].labels.any()
    assert not any("no objects" in n for n in notes)


def test_a_reviewed_plane_trains_without_its_held_out_stripe(tmp_path):
    from napari_segtool.core.model_versions import HOLDOUT_FRACTION, heldout_planes

    labels = np.zeros((64, 200), np.int32)
    for i, x in enumerate(range(15, 200, 30), 1):
        _disk(labels.shape, 32, x, 8, i, labels)
    image = (labels > 0) * 100.0 + np.random.default_rng(1).normal(10, 2, labels.shape)
    p = Project(tmp_path)
    p.save_entry(ImageEntry(key="wide", name="wide", shape=labels.shape, reviewed=[()]))
    p.save_plane("wide", (), labels, None, image=image)
    (example,), _ = p.training_examples()
    held = int(round(HOLDOUT_FRACTION * 200))
    assert example.annotated[:, : 200 - held].all() and not example.annotated[:, 200 - held:].any()
    (plane,) = heldout_planes(p)
    assert plane.x0 == 200 - held and plane.n_objects == 2  # discs at x=165 and x=195 reach into it
    np.testing.assert_array_equal(plane.labels, labels)


def test_history_and_models(tmp_path):
    p = Project(tmp_path)
    run = p.record_run({"model": "m1", "epochs": [{"epoch": 0, "loss": np.float32(0.5)}]})
    p.record_run({"id": run, "stop_reason": "epochs"})
    hist = Project(tmp_path).history()
    assert len(hist) == 1 and hist[0]["stop_reason"] == "epochs" and hist[0]["model"] == "m1"
    assert p.list_models() == []
    assert p.unique_model_name("my model") == "my-model"


def test_failed_write_keeps_previous_plane(tmp_path, monkeypatch):
    p = Project(tmp_path)
    key = "img"
    p.save_entry(ImageEntry(key=key, name="img", shape=(16, 16)))
    good = np.arange(256, dtype=np.int32).reshape(16, 16) % 7
    p.save_plane(key, (), good)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(OSError):
        p.save_plane(key, (), np.zeros((16, 16), np.int32))
    monkeypatch.undo()
    np.testing.assert_array_equal(p.load(key).labels, good)
    leftovers = [f for f in os.listdir(tmp_path / "images" / key / "planes") if f.endswith(".tmp")]
    assert leftovers == []
    assert json.loads((tmp_path / "images" / key / "entry.json").read_text())["name"] == "img"


# ----------------------------------------------------------------------------- concurrent writers
_WRITER = r"""
import sys, time
from pathlib import Path
import numpy as np
from napari_segtool.core.project import ImageEntry, Project

root, who, first, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
project = Project(root)
stored = project.load("img")
mine = set(stored.reviewed) if stored is not None else set()
(Path(root) / f"ready-{who}").write_text("")
while not (Path(root) / "go").exists():
    time.sleep(0.005)
others = len(project.other_sessions())  # both registered before "go", neither exits before both are done
for plane in range(first, first + n):
    project.save_plane("img", (plane,), np.full((4, 4), plane + 1), np.ones((4, 4), bool))
    mine.add((plane,))  # like the Correct widget: a fresh entry holding this window's reviewed planes
    project.save_entry(ImageEntry(key="img", name="img", shape=(2 * n, 4, 4), axes="ZYX", reviewed=sorted(mine),
                                  extra={f"by-{who}": plane}))
    project.update_settings(**{f"{who}-{plane}": plane})
    project.record_run({"who": who, "plane": plane})
(Path(root) / f"done-{who}").write_text("")
while len(list(Path(root).glob("done-*"))) < 2:
    time.sleep(0.005)
print(others)
"""


def test_two_processes_writing_one_project_lose_nothing(tmp_path):
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = tmp_path / "proj"
    Project(root).close()
    n = 16
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(root), who, str(first), str(n)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for who, first in (("a", 0), ("b", n))]
    deadline = time.monotonic() + 120
    while not all((root / f"ready-{w}").exists() for w in "ab"):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), procs[0].stderr.read()
        time.sleep(0.01)
    (root / "go").write_text("")
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all(out.strip() == "1" for out, _ in outputs)  # each saw the other window open
    project = Project(root)
    entry = project.entry("img")
    assert entry.reviewed == [(i,) for i in range(2 * n)]  # every plane either process reviewed
    assert set(entry.extra) == {"by-a", "by-b"}
    settings = project.settings
    assert all(settings[f"a-{i}"] == i and settings[f"b-{n + i}"] == n + i for i in range(n))
    runs = project.history()
    assert sorted((r["who"], r["plane"]) for r in runs) == sorted(
        [("a", i) for i in range(n)] + [("b", n + i) for i in range(n)])
    assert len({r["id"] for r in runs}) == 2 * n
    annotation = project.load("img")
    assert annotation.stored_planes == {(i,) for i in range(2 * n)}
    assert all(annotation.labels[i].max() == i + 1 for i in range(2 * n))


def test_removing_a_reviewed_plane_keeps_the_other_writers_planes(tmp_path):
    a, b = Project(tmp_path / "p"), Project(tmp_path / "p")
    shape = (4, 8, 8)
    a.save_entry(ImageEntry("k", "k", shape, reviewed=[(0,), (1,)]))
    b.load("k")
    b.save_entry(ImageEntry("k", "k", shape, reviewed=[(0,), (1,), (2,)]))  # b adds plane 2
    a.save_entry(ImageEntry("k", "k", shape, reviewed=[(0,)]))             # a un-reviews plane 1
    assert Project(tmp_path / "p").entry("k").reviewed == [(0,), (2,)]


def test_a_second_session_on_the_same_project_is_reported(tmp_path):
    import subprocess
    import sys

    a = Project(tmp_path / "p")
    assert a.other_sessions() == []
    # a process that opened the project and died is not reported (its entry is removed)
    subprocess.run([sys.executable, "-c", "import sys; from napari_segtool.core.project import Project; "
                    "Project(sys.argv[1])", str(tmp_path / "p")], check=True,
                   env={**os.environ, "PYTHONPATH": str(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))})
    assert a.other_sessions() == []
    assert [p.name.rpartition("-")[2] for p in (tmp_path / "p" / ".sessions").iterdir()] == [str(os.getpid())]
    a.close()
    assert list((tmp_path / "p" / ".sessions").iterdir()) == []


def test_object_size_is_kept_per_image_apart_from_its_entry(tmp_path):
    """The size a user set survives another session and an older entry written back after it."""
    first, second = Project(tmp_path / "p"), Project(tmp_path / "p")
    entry = ImageEntry(key=image_key("a", None, (8, 8)), name="a", shape=(8, 8))
    first.save_entry(entry)
    stale = first.find("a", None, (8, 8))                 # a session holding the entry in memory
    second.remember_object_size("a", None, (8, 8), 23.5)
    first.save_entry(stale)                                # writes its (older) entry back
    assert first.object_size("a", None, (8, 8)) == 23.5
    assert second.object_size("b", None, (8, 8)) is None  # other images: none
    assert [e.name for e in first.entries()] == ["a"]
    second.remember_object_size("b", None, (8, 8), 11.0)   # an image without annotations yet
    assert first.object_size("b", None, (8, 8)) == 11.0
    assert [e.name for e in first.entries()] == ["a"]     # remembering a size makes no entry
    first.remember_object_size("a", None, (8, 8), None)   # forgotten: estimated again
    assert second.object_size("a", None, (8, 8)) is None


_OPENED: list[str] | None = None  # paths opened while a test listens (audit hooks cannot be removed)


def _record_opens(event, args):
    if _OPENED is not None and event in ("open", "os.scandir", "os.listdir") and args and args[0] is not None:
        _OPENED.append(f"{event} {os.fsdecode(args[0]) if not isinstance(args[0], int) else args[0]}")


def test_an_image_lookup_reads_no_other_entry_in_a_project_of_2000_images(tmp_path):
    """The Object size row asks on the GUI thread for every image shown: it must not read the project's
    other entries (it used to open every entry.json when the image had none)."""
    global _OPENED
    import sys

    project = Project(tmp_path / "p")
    for i in range(2000):  # plain files: the test's set-up, not what is measured
        key = image_key(f"img{i}", f"/data/img{i}.tif", (64, 64))
        folder = project.images_dir / key
        folder.mkdir(parents=True)
        (folder / "entry.json").write_text(json.dumps(
            ImageEntry(key=key, name=f"img{i}", shape=(64, 64), source=f"/data/img{i}.tif").to_dict()))
    project.remember_object_size("img7", "/data/img7.tif", (64, 64), 17.0)
    project.remember_object_size("new", "/data/new.tif", (64, 64), 9.0)  # an image without an entry
    sys.addaudithook(_record_opens)
    _OPENED = []
    try:
        sizes = [project.object_size("img7", "/data/img7.tif", (64, 64)),
                 project.object_size("new", "/data/new.tif", (64, 64)),
                 project.object_size("other", "/data/other.tif", (64, 64)),  # neither entry nor size
                 project.object_size("unsaved", None, (64, 64))]
        renamed = project.find("img7 renamed", "/data/img7.tif", (64, 64))  # same file, layer renamed
        opened = list(_OPENED)
    finally:
        _OPENED = None
    assert sizes == [17.0, 9.0, None, None]
    assert renamed is not None and renamed.key == image_key("img7", "/data/img7.tif", (64, 64))
    wanted = {image_key(*args, (64, 64)) for args in
              (("img7", "/data/img7.tif"), ("new", "/data/new.tif"), ("other", "/data/other.tif"),
               ("unsaved", None))}
    files = [p for p in opened if p.startswith("open ")]
    assert files and [p for p in files if p.split("/images/")[1].split("/")[0] not in wanted] == []
    assert len(files) <= 2 * len(wanted) + 1, files  # entry.json + object_size.json per image, + the renamed
    # one read of the images/ folder's names (no file opened) where the key's folder does not exist:
    # for 'other' and the renamed layer (a key ends in the hash of the source, which they share)
    assert [p for p in opened if not p.startswith("open ")] == [f"os.scandir {project.images_dir}"] * 2
