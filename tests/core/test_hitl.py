"""Human-in-the-loop simulation: the annotator's choices, and the benchmark run end to end (tiny budgets)."""

from pathlib import Path

import numpy as np
import pytest

from napari_segtool.core.hitl import SimulatedAnnotator, merge_corrections, split_image
from tests.conftest import draw_objects


def _gt_with_errors():
    _, gt = draw_objects((128, 128), n=12, seed=0, touching=False)
    pred = gt.copy()
    pred[gt == 3] = 0                                   # missed
    ys, xs = np.nonzero(gt == 5)                        # split in two
    pred[(gt == 5) & (np.arange(128)[None, :] > xs.mean())] = 40
    pred[2:9, 2:9] = 50                                 # false positive on background
    pred[(gt == 7)] = 0                                 # badly outlined: only a small core
    ys, xs = np.nonzero(gt == 7)
    core = (gt == 7) & (abs(np.arange(128)[:, None] - ys.mean()) < 2)
    pred[core] = 7
    return gt, pred


def test_annotator_corrects_worst_first_and_only_asserts_truth():
    gt, pred = _gt_with_errors()
    ann = SimulatedAnnotator(gt, margin=2)
    ann.update(pred)
    cands = ann.candidates()
    ious = [c.iou for c in cands]
    assert ious == sorted(ious)                         # worst-matched first
    first = {(c.kind, c.gt_id, c.pred_id) for c in cands[:2]}
    assert first == {("add", 3, 0), ("delete", 0, 50)}  # both IoU 0; larger object first
    assert {c.gt_id for c in cands[2:4]} == {5, 7}      # then the split and the badly outlined one

    done = ann.correct(4)
    assert len(done) == 4 and ann.n_corrected == 4
    assert ann.counts() == {"added": 1, "fixed": 2, "deleted": 1}
    # corrected objects are exact, the deleted false positive is gone
    for g in (3, 5, 7):
        obj = gt == g
        ids = np.unique(ann.labels[obj])
        assert ids.size == 1 and ids[0] > 0 and (ann.labels == ids[0]).sum() == obj.sum()
        assert ann.annotated[obj].all()
    assert not (ann.labels[2:9, 2:9] == 50).any()
    # annotated pixels never contradict the ground truth: background where gt is background,
    # and every annotated object pixel lies on its true object
    a = ann.annotated
    assert ((ann.labels[a] > 0) == (gt[a] > 0)).all()
    ring = a & (gt == 0)
    assert ring.sum() > 0

    # a new prediction that repeats the same mistakes does not bring them back
    ann.update(pred)
    remaining = {(c.kind, c.gt_id, c.pred_id) for c in ann.candidates()}
    assert not any(k == "delete" for k, _, _ in remaining)
    assert not any(g in (3, 5, 7) for _, g, _ in remaining)
    assert len(ann.correct(100)) == len(remaining)  # the rest are outline fixes of matched objects


def test_merge_corrections_keeps_edits_and_drops_covered_objects():
    fixed = np.zeros((10, 10), np.int32)
    annotated = np.zeros((10, 10), bool)
    fixed[0:4, 0:4] = 1
    annotated[0:5, 0:5] = True
    pred = np.zeros((10, 10), np.int32)
    pred[0:3, 0:3] = 1          # mostly inside the edits: dropped
    pred[3:8, 3:8] = 2          # mostly outside: trimmed
    out = merge_corrections(pred, fixed, annotated)
    assert (out[0:4, 0:4] == 1).all() and out[4, 4] == 0
    assert (out[5:8, 5:8] > 1).all() and len(np.unique(out)) == 3


def test_split_image():
    img, lab = np.arange(40.0).reshape(4, 10), np.ones((4, 10), int)
    (ti, tl), (hi, hl) = split_image(img, lab)
    assert ti.shape == tl.shape == (4, 5) and hi.shape == (4, 5) and hi[0, 0] == 5


@pytest.fixture(scope="module")
def init_model(tmp_path_factory):
    """A very small instance U-Net, a few seconds of training on synthetic ellipses."""
    from napari_segtool.core.checkpoint import save_model
    from napari_segtool.core.data import make_example
    from napari_segtool.core.train import TrainConfig, train

    examples = [make_example(*draw_objects((128, 128), n=12, seed=s, touching=False)) for s in range(2)]
    cfg = TrainConfig(epochs=8, steps_per_epoch=10, batch_size=4, patch_size=64, lr=3e-3, val_fraction=0.0)
    model = train(examples, config=cfg, arch_kwargs={"depth": 2, "width": 8}).model
    path = tmp_path_factory.mktemp("hitl") / "init"
    save_model(model, path)
    return path


def test_hitl_rounds_end_to_end(init_model):
    """The loop the benchmark drives (core.hitl.iter_hitl), with fixed steps and tiny sizes."""
    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.hitl import HitlConfig, iter_hitl

    image, labels = draw_objects((128, 192), n=28, seed=11, touching=False)
    train_pair, held = split_image(image, labels)
    cfg = HitlConfig(k=3, rounds=3, time_budget=None, seed=0)
    cfg.train.epochs, cfg.train.steps_per_epoch, cfg.train.patch_size, cfg.train.batch_size = 1, 30, 64, 4
    cfg.train.num_threads = 1                                 # with fixed steps (not seconds): reproducible
    fitted = []

    def forest_like(img, lab, annotated):                     # a baseline sees the very same corrections
        fitted.append((lab.copy(), annotated.copy()))
        return lambda x: np.zeros(x.shape, np.int32)

    history = list(iter_hitl(load_model(init_model), *train_pair, [held], cfg, baselines={"none": forest_like}))
    assert [h.round for h in history] == [0, 1, 2, 3]
    assert [h.corrected for h in history] == [0, 3, 6, 9]     # k per round
    ap = [h.results["finetune"].ap50 for h in history]
    assert all(0 <= a <= 1 for a in ap) and ap[-1] >= ap[0] - 0.05  # corrections do not make the model worse
    for h in history[1:]:
        assert set(h.results) == {"finetune", "scratch", "none"} and h.results["finetune"].steps == 30
        assert h.results["none"].ap50 == 0.0
        assert h.annotated_pixels > 0 and h.round_seconds > 0
    # the baseline trained on what the annotator annotated, growing round by round
    sizes = [int(a.sum()) for _, a in fitted]
    assert sizes == sorted(sizes) and sizes[-1] == history[-1].annotated_pixels


def test_hitl_rounds_estimate_the_object_size_once(monkeypatch, init_model):
    """Round 0 estimates the image's object size; every later prediction (fine-tuned and scratch models, train
    and held-out halves) is given it, as the Segment widget's remembered Object size is, instead of estimating
    again (a 512² re-prediction: 0.3-0.6 s instead of 1.7-1.9 s)."""
    from napari_segtool.core import hitl
    from napari_segtool.core.checkpoint import load_model

    image, labels = draw_objects((128, 192), n=28, seed=11, touching=False)
    train_pair, held = split_image(image, labels)
    cfg = hitl.HitlConfig(k=3, rounds=2, time_budget=None, seed=0)
    cfg.train.epochs, cfg.train.steps_per_epoch, cfg.train.patch_size, cfg.train.batch_size = 1, 2, 64, 4
    given, real = [], hitl.predict

    def spy(model, img, **kwargs):
        out = real(model, img, **kwargs)
        given.append((kwargs.get("diameter"), out.diameter))
        return out

    monkeypatch.setattr(hitl, "predict", spy)
    list(hitl.iter_hitl(load_model(init_model), *train_pair, [held], cfg))
    estimated = given[0][1]
    assert given[0][0] is None and estimated and estimated > 0
    assert len(given) >= 7 and all(d == estimated for d, _ in given[1:])
    given.clear()
    list(hitl.iter_hitl(load_model(init_model), *train_pair, [held], hitl.HitlConfig(**{**cfg.__dict__, "keep_size": False})))
    assert all(d is None for d, _ in given)


# ---------------------------------------------------------------- one engine: the GUI's functions, counted actions


def test_the_gui_and_the_benchmark_run_the_same_core_functions():
    from napari_segtool.core import edits, hitl, prompts
    from napari_segtool.plugin import correct

    for name in ("merge_prediction", "edited_pixels", "delete_object", "merge_objects", "split_object_points",
                 "split_object_line", "fill_object_holes"):
        assert getattr(correct, name) is getattr(edits, name)      # the widget's tracker calls core's
    assert hitl.merge_prediction is edits.merge_prediction and hitl.edited_pixels is edits.edited_pixels
    assert hitl._prompts is prompts
    import inspect

    source = inspect.getsource(correct)
    assert "np.isin(pred" not in source and "def merge_prediction" not in source  # no merge logic in the plugin


def _effort_scene():
    from tests.core.test_prompts import maps_of
    from tests.scenes import disc

    shape = (160, 200)
    gt = np.zeros(shape, np.int32)
    centres = [(25, 25), (25, 75), (25, 125), (25, 170), (80, 30), (80, 80), (80, 101), (80, 150),
               (135, 40), (135, 90), (135, 140), (135, 175)]
    for i, c in enumerate(centres, 1):
        gt[disc(shape, c, 11) & (gt == 0)] = i
    pred = gt.copy()
    pred[gt == 2] = 0                                   # missed
    pred[gt == 3] = 0                                   # missed
    pred[gt == 7] = 6                                   # 6 and 7 merged
    pred[(gt == 9) & (np.arange(shape[1])[None, :] > 40)] = 0   # half of 9 missing
    pred[disc(shape, (80, 185), 6) & (gt == 0)] = 50   # a false positive
    return gt, pred, maps_of(gt)


def test_prompt_annotator_fixes_with_fewer_actions_than_repainting_and_records_gui_training_data():
    from napari_segtool.core.edits import edited_pixels
    from napari_segtool.core.hitl import PromptAnnotator, RepaintAnnotator
    from napari_segtool.ops.metrics import instance_scores

    gt, pred, maps = _effort_scene()
    results = {}
    for cls in (PromptAnnotator, RepaintAnnotator):
        ann = cls(gt, np.zeros_like(gt), seed=1)
        ann.update(pred, maps)
        ann.work(100)
        results[cls.name] = ann
        assert instance_scores(ann.plane.labels, gt)["ap50"] == 1.0, cls.name
        # the training pixels are the widget tracker's rule applied to what the annotator changed (and accepted)
        np.testing.assert_array_equal(ann.plane.edited, edited_pixels(ann.plane.base, ann.plane.labels,
                                                                      ann.plane.marks))
    prompts, repaint = results["prompts+ranking"], results["repaint+random"]
    tools = {a.tool for a in prompts.actions if a.cost}
    assert {"add", "scribble", "delete"} <= tools and "paint" not in tools
    assert prompts.cost <= 7                      # 2 clicks, 1 stroke, 1 box or grow, 1 Del (+ fragment Dels)
    assert repaint.cost >= 2 * prompts.cost
    # a re-prediction repeating the mistakes does not undo the corrections (the widget's merge)
    before = prompts.plane.labels.copy()
    prompts.update(pred, maps)
    assert instance_scores(prompts.plane.labels, gt)["ap50"] == 1.0
    assert ((prompts.plane.labels > 0) == (before > 0))[prompts.plane.edited].all()


def test_objects_correct_next_showed_and_the_user_left_are_training_data():
    """N past a right object: the widget marks it reviewed (core.prompts.accepted_pixels), so does the annotator."""
    from napari_segtool.core.edits import training_mask
    from napari_segtool.core.hitl import PromptAnnotator

    gt, pred, maps = _effort_scene()
    right = [g for g in (1, 4, 5, 8, 10, 11, 12) if np.array_equal(pred == g, gt == g)]
    runs = {}
    for accept in (True, False):
        ann = PromptAnnotator(gt, np.zeros_like(gt), seed=1, accept_shown=accept)
        ann.update(pred, maps)
        ann.work(100)
        runs[accept] = ann
    on, off = runs[True], runs[False]
    assert on.cost == off.cost and on.views == off.views          # accepting costs no action and changes no choice
    np.testing.assert_array_equal(on.plane.labels, off.plane.labels)
    accepted = [g for g in right if on.plane.edited[gt == g].all()]
    assert len(accepted) == len(right) >= 5                       # every right object it was shown, whole
    assert not any(off.plane.edited[gt == g].any() for g in right)  # before: only edited objects counted
    assert not (on.plane.marks & (on.plane.labels == 0)).any()     # it asserts the objects, not background
    # training: the objects with their 3 px background ring, as an edited object
    ring = training_mask(on.plane.labels, on.plane.edited) & ~on.plane.edited
    assert (ring & (gt == 0)).sum() > (training_mask(off.plane.labels, off.plane.edited) & ~off.plane.edited).sum()
    # a re-prediction that loses an accepted object does not undo it (the widget's merge keeps marked pixels)
    g = accepted[0]
    worse = pred.copy()
    worse[gt == g] = 0
    on.update(worse, maps)
    assert (on.plane.labels[gt == g] > 0).all()


def test_ranking_precision_counts_the_planted_errors_and_correct_next_puts_them_first():
    from napari_segtool.core.hitl import ranking_precision

    gt, pred, maps = _effort_scene()
    # 2 missed objects, the 6+7 merge, the false positive, half-missed 9 (the object and its missing half)
    found = ranking_precision(pred, maps, gt, 0.7, ks=(6, 10))
    assert found.objects == 10 and found.true_errors == 6
    assert found.errors_in_top == {6: 6, 10: 6} and found.precision_at == {6: 1.0, 10: 0.6}
    assert ranking_precision(gt, maps, gt, 0.7).true_errors == 0    # a right plane: nothing to fix


def test_an_annotator_with_nothing_left_marks_the_plane_reviewed_once():
    from napari_segtool.core.hitl import PromptAnnotator, RepaintAnnotator
    from napari_segtool.ops.metrics import instance_scores

    gt, pred, maps = _effort_scene()
    for cls in (PromptAnnotator, RepaintAnnotator):
        ann = cls(gt, np.zeros_like(gt), seed=1, review=True)
        ann.update(pred, maps)
        ann.work(100)
        assert ann.actions[-1].tool == "review" and ann.reviewed and ann.plane.edited.all()
        cost = ann.cost
        assert ann.work(100) == [] and ann.cost == cost       # R once
        before = ann.plane.labels.copy()
        ann.update(pred, maps)                                  # a re-prediction keeps the reviewed plane
        np.testing.assert_array_equal(ann.plane.labels, before)
        assert instance_scores(before, gt)["ap50"] == 1.0
    quiet = PromptAnnotator(gt, np.zeros_like(gt), seed=1)      # without review: no R, edited pixels only
    quiet.update(pred, maps)
    quiet.work(100)
    assert "review" not in {a.tool for a in quiet.actions} and not quiet.plane.edited.all()


def test_effort_rounds_end_to_end(init_model):
    """The effort loop the benchmark drives (core.hitl.iter_effort): actions only grow, scores stay sane."""
    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.hitl import iter_effort
    from napari_segtool.core.train import TrainConfig

    image, labels = draw_objects((128, 192), n=28, seed=11, touching=False)
    train_pair, held = split_image(image, labels)
    cfg = TrainConfig(epochs=1, steps_per_epoch=10, patch_size=64, batch_size=4, val_fraction=0.0, num_threads=1)
    model = load_model(init_model)
    for kind, name in (("prompts", "prompts+ranking"), ("repaint", "repaint+random")):
        rounds = list(iter_effort(model, *train_pair, [held], kind, actions_per_round=4, rounds=2, target_ap50=1.01,
                                  train=cfg, time_budget=None, training_margin=3))
        assert rounds[0].round == 0 and rounds[0].actions == 0 and len(rounds) >= 2
        assert {r.annotator for r in rounds} == {name}
        actions = [r.actions for r in rounds]
        assert actions == sorted(actions) and actions[1] >= 1
        assert sum(rounds[-1].tools.values()) == rounds[-1].actions
        assert all(0 <= r.ap50 <= 1 for r in rounds) and rounds[-1].annotated_pixels > 0


def test_few_object_init_keeps_frozen_modules():
    import torch

    from napari_segtool.core.data import make_example
    from napari_segtool.core.hitl import few_object_init
    from napari_segtool.core.train import TrainConfig, new_model, train

    model = new_model("unet", "instance", 1, depth=2, width=8)
    init = few_object_init(model, freeze=("down", "bottom", "no_such_module"))
    assert init.net is not model.net
    image, labels = draw_objects((96, 96), n=6, seed=3, touching=False)
    annotated = np.zeros(labels.shape, bool)
    annotated[:48] = True
    cfg = TrainConfig(epochs=1, steps_per_epoch=5, patch_size=64, batch_size=2, val_fraction=0.0, num_threads=1)
    tuned = train([make_example(image, labels, annotated)], init=init, config=cfg).model
    before, after = model.net.state_dict(), tuned.net.state_dict()
    frozen = [k for k in before if k.startswith(("down.", "bottom.")) and "running" not in k and "num_batches" not in k]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    free = [k for k in before if k.startswith("up") and k.endswith("weight")]
    assert free and not all(torch.equal(before[k], after[k]) for k in free)


def test_repainting_costs_a_fresh_label_strokes_by_size_and_erasing_the_spill():
    """ActionCosts as documented in benchmarks/hitl.py: M + ceil(D / brush) strokes + eraser strokes per spill."""
    from napari_segtool.core.hitl import COSTS, RepaintAnnotator
    from tests.scenes import disc

    shape = (100, 100)
    gt = np.zeros(shape, np.int32)
    gt[disc(shape, (50, 50), 11)] = 1                  # diameter ~22 px: 3 strokes of napari's 10 px brush
    pred = np.zeros(shape, np.int32)
    pred[disc(shape, (50, 50), 6)] = 5                 # too small
    exact = RepaintAnnotator(gt, np.zeros_like(gt))
    exact.update(pred)
    exact.repaint(1)
    assert [(a.tool, a.cost) for a in exact.actions] == [("new_label", COSTS.new_label), ("paint", 3)]
    assert (exact.plane.labels > 0).sum() == (gt > 0).sum()
    pred[disc(shape, (50, 50), 16)] = 5                # too large: a 5 px rim spills onto background
    spill = RepaintAnnotator(gt, np.zeros_like(gt))
    spill.update(pred)
    spill.repaint(1)
    assert [(a.tool, a.cost) for a in spill.actions] == [("new_label", 1), ("paint", 3), ("erase", 1)]
    np.testing.assert_array_equal(spill.plane.labels > 0, gt > 0)
    # a neighbour (another true object) that only touches the object is not its error: left alone, no eraser
    gt[disc(shape, (50, 80), 19) & (gt == 0)] = 2
    pred2 = np.zeros(shape, np.int32)
    pred2[disc(shape, (50, 50), 11)] = 3
    pred2[disc(shape, (50, 80), 19) & ~disc(shape, (50, 50), 9)] = 4
    touch = RepaintAnnotator(gt, np.zeros_like(gt))
    touch.update(pred2)
    before = touch.plane.labels.copy()
    touch.repaint(1)
    assert "erase" not in {a.tool for a in touch.actions}
    outside = gt == 0
    np.testing.assert_array_equal(touch.plane.labels[outside] > 0, before[outside] > 0)


def test_the_effort_benchmark_runs_the_core_functions_of_the_widgets(monkeypatch, init_model, tmp_path):
    """benchmarks/hitl.py --effort drives core.hitl.iter_effort, which edits with core.prompts / core.edits, merges
    re-predictions with core.edits.merge_prediction and trains through core.train_project.iter_fit (the Train
    widget's path): spies on those core functions see the calls, and the benchmark has no edit logic of its own."""
    import inspect

    from benchmarks import hitl as bench
    from napari_segtool.core import edits, hitl, prompts, train_project

    calls: dict[str, int] = {}

    def spy(module, name):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    for name in ("add_object", "redraw_in_box", "split_by_scribble", "rank_uncertain"):
        spy(prompts, name)
    spy(train_project, "iter_fit")
    spy(hitl, "merge_prediction")                     # core.hitl's own binding of core.edits' function
    image, labels = draw_objects((96, 160), n=16, seed=5, touching=True)
    monkeypatch.setattr(bench, "load_dataset", lambda *a, **k: (image, labels))
    bench.main(["--out", str(tmp_path), "--effort", "--init", str(init_model), "--annotators", "prompts",
                "--actions-per-round", "6", "--rounds", "1", "--steps", "2", "--patch-size", "64",
                "--batch-size", "2", "--target", "1.01"])
    assert calls.get("rank_uncertain", 0) >= 1 and calls.get("iter_fit", 0) == 1 and calls.get("merge_prediction")
    assert sum(calls.get(n, 0) for n in ("add_object", "redraw_in_box", "split_by_scribble")) >= 1
    assert (tmp_path / "hitl_effort.csv").exists()
    import json

    recorded = json.loads((tmp_path / "hitl_effort_summary.json").read_text())["source"]  # the code the figures ran on
    if (Path(bench.__file__).resolve().parent.parent / ".git").exists():
        assert len(recorded["commit"]) == 40 and isinstance(recorded["changed_files"], list)
    source = inspect.getsource(bench)
    for own_logic in ("def merge", "np.isin(", "binary_dilation", " watershed(", "def repaint", "from scipy"):
        assert own_logic not in source
    assert hitl.edited_pixels is edits.edited_pixels and hitl.training_mask is edits.training_mask


@pytest.mark.parametrize("warm_start", [True, False])
def test_effort_rounds_fine_tune_the_previous_model_or_the_start(monkeypatch, init_model, warm_start):
    """iter_effort's round 2 fine-tunes round 1's model (warm start, the widget after a round) or the
    starting model again (``warm_start=False``)."""
    from napari_segtool.core import train_project
    from napari_segtool.core.checkpoint import load_model
    from napari_segtool.core.hitl import iter_effort
    from napari_segtool.core.train import TrainConfig

    inits, annotated, results = [], [], []
    real = train_project.iter_fit

    def spy(examples, init, *args, **kwargs):
        inits.append(init)
        annotated.append(int(examples[0].annotated.sum()))
        result = yield from real(examples, init, *args, **kwargs)
        results.append(result.model)
        return result

    monkeypatch.setattr(train_project, "iter_fit", spy)
    image, labels = draw_objects((128, 192), n=28, seed=11, touching=False)
    train_pair, held = split_image(image, labels)
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, patch_size=64, batch_size=2, val_fraction=0.0, num_threads=1)
    model = load_model(init_model)
    list(iter_effort(model, *train_pair, [held], "repaint", actions_per_round=4, rounds=2, target_ap50=1.01,
                     train=cfg, time_budget=None, warm_start=warm_start))
    assert len(inits) == 2 and inits[0] is model and min(annotated) > 0
    assert inits[1] is (results[0] if warm_start else model)


def test_the_prompt_user_fixes_a_merge_of_three_with_one_stroke_and_halves_with_one_box():
    """Objects fixed per action (``EffortAnnotator.fixed``): a 3-point stroke splits three nuclei the maps see
    as one blob, a box joins the halves of a cut nucleus: 5 actions, no repaint (before: 11, a box after the
    stroke for its worst piece, and a repaint after the box on the halves)."""
    from napari_segtool.core.hitl import PromptAnnotator
    from tests.core.test_prompts import maps_of, three_nuclei_blob
    from tests.scenes import disc

    gt, merged, _, _ = three_nuclei_blob()
    gt[disc(gt.shape, (75, 100), 10)] = 5
    merged[gt == 5] = 5
    maps = maps_of(merged)
    pred = merged.copy()
    pred[(gt == 5) & (np.arange(gt.shape[1])[None, :] >= 100)] = 6          # cut in halves
    ann = PromptAnnotator(gt, np.zeros_like(gt), seed=1, accept_iou=0.7)
    ann.update(pred, maps)
    assert ann.errors_left() == 4          # 1, 2, 3 under one object, 5 under two halves
    ann.work(100)
    assert ann.errors_left() == 0 and ann.fixed == 4
    assert sorted(a.tool for a in ann.actions) == ["box", "scribble"] and ann.cost == 5
