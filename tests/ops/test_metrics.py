"""Segmentation scores on hand-made cases whose answers are known exactly."""

import numpy as np
import pytest

from napari_segtool.ops.metrics import (
    DEFAULT_THRESHOLDS,
    MatchResult,
    format_scores,
    instance_scores,
    iou_matrix,
    match_instances,
    semantic_scores,
)


def _square(shape, top, left, size, value=1, out=None):
    out = np.zeros(shape, dtype=np.int32) if out is None else out
    out[top : top + size, left : left + size] = value
    return out


# --------------------------------------------------------------------------- semantic


def test_semantic_shifted_square():
    gt = _square((20, 20), 2, 2, 10)  # 100 px of class 1
    pred = _square((20, 20), 2, 4, 10)  # shifted by 2 columns: overlap 80, union 120
    s = semantic_scores(pred, gt, ignore_index=None)
    assert s["per_class"][1]["iou"] == pytest.approx(80 / 120)
    assert s["per_class"][1]["dice"] == pytest.approx(160 / 200)
    # background: gt 300 px, pred 300 px, overlap 280
    assert s["per_class"][0]["iou"] == pytest.approx(280 / 320)
    assert s["miou"] == pytest.approx((80 / 120 + 280 / 320) / 2)
    assert s["pixel_accuracy"] == pytest.approx(360 / 400)
    assert s["n_pixels"] == 400


def test_semantic_ignore_index_zero():
    gt = np.array([[0, 0, 1, 1], [2, 2, 0, 0]])
    pred = np.array([[1, 2, 1, 0], [2, 2, 2, 2]])
    s = semantic_scores(pred, gt)  # ignore gt==0: scored pixels are gt 1,1,2,2 / pred 1,0,2,2
    assert s["n_pixels"] == 4
    assert s["classes"] == [1, 2]
    assert s["per_class"][1]["iou"] == pytest.approx(1 / 2)  # inter 1, gt 2, pred 1
    assert s["per_class"][2]["iou"] == pytest.approx(1.0)
    assert s["pixel_accuracy"] == pytest.approx(3 / 4)
    assert s["miou"] == pytest.approx(0.75)


def test_semantic_absent_classes_skipped_and_n_classes():
    gt = np.array([[1, 1], [1, 1]])
    pred = np.array([[1, 1], [1, 1]])
    s = semantic_scores(pred, gt, n_classes=5)
    assert s["classes"] == [1] and s["miou"] == 1.0
    with pytest.raises(ValueError, match="outside"):
        semantic_scores(pred + 9, gt, n_classes=5)


def test_semantic_3d_and_empty():
    gt = np.zeros((3, 4, 4), dtype=np.uint8)
    gt[1] = 2
    s = semantic_scores(gt.copy(), gt)
    assert s["miou"] == 1.0 and s["mean_dice"] == 1.0
    empty = semantic_scores(np.zeros((3, 3)), np.zeros((3, 3)))
    assert empty["miou"] == 1.0 and empty["pixel_accuracy"] == 1.0 and empty["per_class"] == {}


def test_shape_mismatch_message():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        semantic_scores(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        match_instances(np.zeros((4, 4)), np.zeros((4, 5)))


# --------------------------------------------------------------------------- instance


def test_iou_matrix_non_consecutive_ids():
    gt = _square((30, 30), 0, 0, 10, value=7)
    _square((30, 30), 15, 15, 10, value=3, out=gt)
    pred = _square((30, 30), 0, 5, 10, value=100)  # overlaps gt 7 by 50 px: IoU 50/150
    ious, gt_ids, pred_ids = iou_matrix(pred, gt)
    assert gt_ids.tolist() == [3, 7] and pred_ids.tolist() == [100]
    assert ious.shape == (2, 1)
    assert ious[1, 0] == pytest.approx(50 / 150) and ious[0, 0] == 0


def test_match_shifted_square_thresholds():
    gt = _square((20, 20), 2, 2, 10)
    pred = _square((20, 20), 2, 4, 10, value=5)  # IoU = 80/120 = 0.667
    hit = match_instances(pred, gt, threshold=0.6)
    assert (hit.tp, hit.fp, hit.fn) == (1, 0, 0) and hit.ap == 1.0 and hit.f1 == 1.0
    assert hit.mean_matched_iou == pytest.approx(80 / 120)
    miss = match_instances(pred, gt, threshold=0.7)
    assert (miss.tp, miss.fp, miss.fn) == (0, 1, 1) and miss.ap == 0.0
    scores = instance_scores(pred, gt)
    # thresholds 0.50, 0.55, 0.60, 0.65 match; 0.70 ... 0.95 do not
    assert scores["mean_ap"] == pytest.approx(4 / 10)
    assert scores["ap50"] == 1.0 and scores["ap75"] == 0.0
    assert len(scores["per_threshold"]) == len(DEFAULT_THRESHOLDS) == 10


def test_split_object_is_one_tp_one_fp():
    gt = _square((20, 20), 0, 0, 10)  # one 10x10 object
    pred = np.zeros_like(gt)
    pred[0:10, 0:7] = 1  # 70 px -> IoU 0.7
    pred[0:10, 7:10] = 2  # 30 px -> IoU 0.3
    r = match_instances(pred, gt, 0.5)
    assert (r.tp, r.fp, r.fn) == (1, 1, 0)
    assert r.precision == 0.5 and r.recall == 1.0
    assert r.ap == pytest.approx(1 / 2) and r.f1 == pytest.approx(2 / 3)


def _greedy_tp(ious, threshold):
    """Best-IoU-first matching, the naive alternative to the optimal assignment."""
    used_g, used_p, tp = set(), set(), 0
    for flat in np.argsort(-ious, axis=None):
        g, p = np.unravel_index(flat, ious.shape)
        if ious[g, p] >= threshold and g not in used_g and p not in used_p:
            used_g.add(g), used_p.add(p)
            tp += 1
    return tp


def test_optimal_assignment_beats_greedy():
    # gt A = [0, 10) and B = [10, 20); prediction Q = [0, 3) and P = [3, 15).
    # IoU(A, P) = 7/15, IoU(B, P) = 5/17, IoU(A, Q) = 3/10.  At threshold 0.25
    # greedy takes the best pair (A, P) and is stuck at 1 TP; the optimal
    # matching is (A, Q) + (B, P): 2 TP.
    gt = np.zeros((1, 24), dtype=int)
    pred = np.zeros((1, 24), dtype=int)
    gt[0, 0:10], gt[0, 10:20] = 1, 2
    pred[0, 0:3], pred[0, 3:15] = 20, 10
    ious, gt_ids, pred_ids = iou_matrix(pred, gt)
    assert pred_ids.tolist() == [10, 20]
    np.testing.assert_allclose(ious, [[7 / 15, 3 / 10], [5 / 17, 0.0]])
    assert _greedy_tp(ious, 0.25) == 1
    r = match_instances(pred, gt, threshold=0.25)
    assert (r.tp, r.fp, r.fn) == (2, 0, 0)
    assert r.mean_matched_iou == pytest.approx((5 / 17 + 3 / 10) / 2)


def test_optimal_prefers_higher_total_iou_at_equal_count():
    gt = np.zeros((1, 30), dtype=int)
    pred = np.zeros((1, 30), dtype=int)
    gt[0, 0:10] = 1
    pred[0, 0:9] = 1  # IoU 0.9
    pred[0, 9:10] = 2  # IoU 0.1
    r = match_instances(pred, gt, threshold=0.05)
    assert r.tp == 1 and r.mean_matched_iou == pytest.approx(0.9)


def test_empty_cases():
    empty = np.zeros((8, 8), dtype=int)
    obj = _square((8, 8), 1, 1, 3)
    both = instance_scores(empty, empty)
    assert both["ap50"] == both["mean_ap"] == both["precision50"] == both["recall50"] == 1.0
    assert both["n_pred"] == both["n_gt"] == 0
    for pred, gt in ((empty, obj), (obj, empty)):
        s = instance_scores(pred, gt)
        assert s["ap50"] == s["mean_ap"] == s["f1_50"] == 0.0
        assert s["precision50"] == 0.0 and s["recall50"] == 0.0


def test_3d_instances_and_bool_input():
    gt = np.zeros((4, 10, 10), dtype=np.uint16)
    gt[1:3, 2:6, 2:6] = 4
    pred = gt.astype(bool)
    r = match_instances(pred, gt, 0.9)
    assert r.tp == 1 and r.n_pred == 1 and r.n_gt == 1
    with pytest.raises(ValueError, match="integer"):
        match_instances(gt + 0.5, gt)


def test_many_objects_fast():
    # a 60x60 grid of 3600 small squares, prediction shifted by one pixel
    gt = np.zeros((600, 600), dtype=np.int32)
    for i in range(60):
        for j in range(60):
            gt[i * 10 : i * 10 + 8, j * 10 : j * 10 + 8] = i * 60 + j + 1
    pred = np.roll(gt, 1, axis=1)  # IoU = 56/72 = 0.777...
    s = instance_scores(pred, gt)
    assert s["n_gt"] == s["n_pred"] == 3600
    assert s["ap50"] == 1.0 and s["ap75"] == 1.0
    assert s["per_threshold"][6]["tp"] == 0  # threshold 0.8
    assert MatchResult(**s["per_threshold"][0]).tp == 3600


def test_format_scores():
    gt = _square((20, 20), 2, 2, 10)
    pred = _square((20, 20), 2, 4, 10)
    text = format_scores({**semantic_scores(pred, gt), **instance_scores(pred, gt)})
    assert "mean IoU 0.800" in text  # gt==0 ignored: 80 of 100 px
    assert "AP50 1.000" in text and "class 1" in text
    assert len(text.splitlines()) > 4
    assert format_scores({"x": 0.5}) == "x: 0.500"
