"""pointfalip.metrics AP functions: ScanNet's instance AP and VoteNet's VOC detection AP on cases computed by hand
(the issue's examples, ties, duplicates, IoU exactly at a threshold, small regions, void vertices), and against
loop-by-loop transcriptions of the two references' rules written here on random cases."""
import numpy as np
import pytest

from pointfalip.metrics import (box_iou_3d_axis_aligned, box_matches, detection_ap, scannet_ap,
                                scannet_instance_matches, voc_ap)

OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)  # ScanNet's overlaps, the last is 0.25


def unit_box(x0=0.0, x1=1.0):
    return [x0, 0.0, 0.0, x1, 1.0, 1.0]


# ---- box IoU --------------------------------------------------------------------------------------------------
def test_box_iou_hand_values():
    a = np.array([[-0.5, -0.5, -0.5, 0.5, 0.5, 0.5]])
    b = np.array([[-1, -1, -1, 1, 1, 1], [10, 10, 10, 12, 12, 12], [0.5, -0.5, -0.5, 1.5, 0.5, 0.5],
                  [0, -0.5, -0.5, 1, 0.5, 0.5], [-0.5, -0.5, 0, 0.5, 0.5, 0]])
    iou = box_iou_3d_axis_aligned(a, b)
    assert iou.shape == (1, 5)
    # nested (1/8), far apart, touching faces, half overlapping (0.5 / 1.5), flat box (no volume)
    np.testing.assert_allclose(iou[0], [1 / 8, 0, 0, 1 / 3, 0], rtol=0, atol=1e-15)
    assert box_iou_3d_axis_aligned(np.zeros((0, 6)), b).shape == (0, 5)


def test_box_iou_flat_boxes_give_zero_not_nan():
    flat = np.array([[0, 0, 0, 1, 1, 0]])
    assert box_iou_3d_axis_aligned(flat, flat)[0, 0] == 0.0


# ---- VOC (VoteNet) --------------------------------------------------------------------------------------------
def test_voc_one_gt_fp_then_tp_is_half():
    # FP at 0.9 then TP at 0.5: precision 0 then 1/2 at recall 1; the envelope lifts recall 0-1 to 1/2
    assert detection_ap(np.array([0.9, 0.5]), np.array([False, True]), 1) == pytest.approx(0.5, abs=1e-12)


def test_voc_two_gt_tp_fp_tp():
    # recall 1/2 at precision 1, then recall 1 at precision 2/3: 1/2 + 1/2 * 2/3 = 5/6
    ap = detection_ap(np.array([0.9, 0.7, 0.5]), np.array([True, False, True]), 2)
    assert ap == pytest.approx(5 / 6, abs=1e-12)


def test_voc_ties_rank_in_given_order():
    # equal confidences: the given order decides (stable sort); TP first -> 1, FP first -> 1/2
    assert detection_ap(np.array([0.5, 0.5]), np.array([True, False]), 1) == pytest.approx(1.0)
    assert detection_ap(np.array([0.5, 0.5]), np.array([False, True]), 1) == pytest.approx(0.5)


def test_voc_no_detection_and_no_ground_truth():
    assert detection_ap(np.zeros(0), np.zeros(0, bool), 3) == 0.0
    assert detection_ap(np.array([0.3]), np.array([False]), 0) is None


def test_voc_ap_envelope_by_hand():
    # points (recall, precision): (1/3, 1), (1/3, 1/2), (2/3, 2/3), (2/3, 1/2): 1/3 * 1 + 1/3 * 2/3
    assert voc_ap(np.array([1 / 3, 1 / 3, 2 / 3, 2 / 3]), np.array([1, 0.5, 2 / 3, 0.5])) == pytest.approx(5 / 9)


def test_box_matches_duplicate_is_false_positive():
    gt = np.array([unit_box()])
    dets = np.array([unit_box(), unit_box()])
    tp = box_matches(box_iou_3d_axis_aligned(dets, gt), np.array([0.6, 0.8]), 0.25)
    assert tp.tolist() == [False, True]  # the higher score takes the box, the other is a duplicate
    ap = detection_ap(np.array([0.6, 0.8]), tp, 1)
    assert ap == pytest.approx(1.0)


def test_box_matches_best_box_taken_means_false_positive():
    # B's best box is taken by A, and B is a false positive although it overlaps the other box above 0.25
    gt = np.array([unit_box(0, 1), unit_box(0.5, 1.5)])
    a = unit_box(0, 1)
    b = unit_box(0.1, 1.0)  # IoU 0.9 with the first box, 0.5 / 1.4 = 5/14 with the second
    iou = box_iou_3d_axis_aligned(np.array([a, b]), gt)
    np.testing.assert_allclose(iou, [[1.0, 1 / 3], [0.9, 5 / 14]])
    assert box_matches(iou, np.array([0.9, 0.8]), 0.25).tolist() == [True, False]


def test_box_iou_exactly_at_threshold_does_not_match():
    gt = np.array([unit_box(0, 1)])
    half = np.array([unit_box(0, 0.5)])  # IoU exactly 1/2
    quarter = np.array([unit_box(0, 0.25)])  # IoU exactly 1/4
    assert box_iou_3d_axis_aligned(half, gt)[0, 0] == 0.5
    assert box_iou_3d_axis_aligned(quarter, gt)[0, 0] == 0.25
    assert box_matches(box_iou_3d_axis_aligned(half, gt), np.array([1.0]), 0.5).tolist() == [False]
    assert box_matches(box_iou_3d_axis_aligned(half, gt), np.array([1.0]), 0.25).tolist() == [True]
    assert box_matches(box_iou_3d_axis_aligned(quarter, gt), np.array([1.0]), 0.25).tolist() == [False]


# ---- ScanNet ---------------------------------------------------------------------------------------------------
def matches(inter, pred_sizes, gt_sizes, void, conf, overlap):
    return scannet_instance_matches(np.array(inter).reshape(len(pred_sizes), len(gt_sizes)), np.array(pred_sizes),
                                    np.array(gt_sizes), np.array(void), np.array(conf, float), overlap)


def test_scannet_one_gt_fp_then_tp_is_quarter():
    # pred 0 (0.9) lies on another annotated object: a false positive; pred 1 (0.5) is the instance
    m = matches([[0], [100]], [100, 100], [100], [0, 0], [0.9, 0.5], 0.5)
    assert sorted(zip(m.scores.tolist(), m.true.tolist())) == [(0.5, True), (0.9, False)]
    assert m.missed == 0
    # points (recall, precision) by increasing confidence: (1, 1/2), (0, 0), then (0, 1): widths 1/2, 1/2, 0
    assert scannet_ap(m.scores, m.true, m.missed) == pytest.approx(0.25, abs=1e-12)


def test_scannet_two_gt_tp_fp_tp():
    scores, true = np.array([0.9, 0.7, 0.5]), np.array([True, False, True])
    # points: (1, 2/3), (1/2, 1/2), (1/2, 1), (0, 1), widths 1/4 each: (2/3 + 1/2 + 1 + 1) / 4 = 19/24
    assert scannet_ap(scores, true, 0) == pytest.approx(19 / 24, abs=1e-12)


def test_scannet_ties_are_grouped_whatever_the_order():
    # one threshold 0.5: precision 1/2 at recall 1, then (0, 1): widths 1/2 and 1/2
    for order in ([True, False], [False, True]):
        assert scannet_ap(np.array([0.5, 0.5]), np.array(order), 0) == pytest.approx(0.75)


def test_scannet_duplicate_prediction_is_false_positive_at_lower_score():
    # two copies of the instance: the first in order is taken, the TP gets the higher score, the FP the lower
    for conf in ([0.6, 0.8], [0.8, 0.6]):
        m = matches([[100], [100]], [100, 100], [100], [0, 0], conf, 0.5)
        assert sorted(zip(m.scores.tolist(), m.true.tolist())) == [(0.6, False), (0.8, True)]
        # points (1, 1/2) at 0.6, (1, 1) at 0.8, (0, 1): widths 0, 1/2, 1/2
        assert scannet_ap(m.scores, m.true, m.missed) == pytest.approx(1.0)


def test_scannet_duplicate_stays_free_for_a_later_instance_at_low_overlap():
    # gt 0 = vertices 0-99, gt 1 = 100-199; pred X = gt 0 (0.8, listed first), pred Y = both (0.9)
    inter = [[100, 0], [100, 100]]
    low = matches(inter, [100, 200], [100, 100], [0, 0], [0.8, 0.9], 0.25)
    # at 0.25: gt 0 takes X (first in order) scored 0.9, Y is its duplicate (FP 0.8) but not taken: gt 1 takes Y
    assert sorted(zip(low.scores.tolist(), low.true.tolist())) == [(0.8, False), (0.9, True), (0.9, True)]
    assert low.missed == 0
    # at 0.5 Y's overlaps (exactly 1/2) do not match: gt 0 takes X, gt 1 is missed, Y is a plain FP
    half = matches(inter, [100, 200], [100, 100], [0, 0], [0.8, 0.9], 0.5)
    assert sorted(zip(half.scores.tolist(), half.true.tolist())) == [(0.8, True), (0.9, False)]
    assert half.missed == 1


def test_scannet_overlap_exactly_at_threshold_does_not_match():
    # 100 predicted vertices inside a 200-vertex instance: IoU exactly 1/2
    m = matches([[100]], [100], [200], [0], [0.7], 0.5)
    assert m.missed == 1 and m.true.tolist() == [False]  # unmatched, and nothing ignored: a false positive
    m = matches([[100]], [100], [200], [0], [0.7], 0.25)
    assert m.missed == 0 and m.true.tolist() == [True]


def test_scannet_minimum_region_size():
    # a 99-vertex instance is no ground truth: not missed; a prediction on it is neither TP nor FP
    m = matches([[99]], [99 + 1], [99], [0], [0.9], 0.5)
    assert m.missed == 0 and len(m.scores) == 0
    # a 99-vertex prediction is dropped before anything
    m = matches([[99]], [99], [150], [0], [0.9], 0.25)
    assert m.missed == 1 and len(m.scores) == 0


def test_scannet_ignored_share_of_small_instance_and_void():
    # 200 vertices: 60 on a small instance of the class, 50 void, 90 elsewhere; ignored share 110/200 = 0.55
    m = matches([[60]], [200], [60], [50], [0.9], 0.5)
    assert len(m.scores) == 0  # 0.55 > 0.5: ignored
    m = matches([[60]], [200], [60], [50], [0.9], OVERLAPS[2])  # 0.6000000000000001
    assert m.true.tolist() == [False]  # 0.55 <= 0.6: a false positive
    m = matches([[60]], [200], [60], [50], [0.9], 0.25)
    assert len(m.scores) == 0  # overlaps the small instance above 0.25 (60/200): found, so no FP


def test_scannet_prediction_mostly_on_unannotated_vertices():
    m = matches([[0]], [200], [100], [150], [0.4], 0.5)  # 3/4 void
    assert len(m.scores) == 0 and m.missed == 1
    m = matches([[0]], [200], [100], [150], [0.4], OVERLAPS[6])  # 0.8000000000000003 >= 0.75
    assert m.true.tolist() == [False]


def test_scannet_every_prediction_ignored_gives_zero():
    assert scannet_ap(np.zeros(0), np.zeros(0, bool), 2) == 0.0


# ---- against loop transcriptions of the references' rules ----------------------------------------------------
def naive_scannet_ap(scores, true, missed):
    """ScanNet's integration, point by point: thresholds by increasing confidence."""
    if len(scores) == 0:
        return 0.0
    points = []
    for t in sorted(set(scores.tolist())):
        tp = sum(1 for s, y in zip(scores, true) if s >= t and y)
        fp = sum(1 for s, y in zip(scores, true) if s >= t and not y)
        fn = sum(1 for s, y in zip(scores, true) if s < t and y) + missed
        points.append((tp / (tp + fp), tp / (tp + fn) if tp + fn else 0.0))
    points.append((1.0, 0.0))
    recalls = [points[0][1]] + [r for _, r in points] + [0.0]
    return sum(p * (recalls[i] - recalls[i + 2]) / 2 for i, (p, _) in enumerate(points))


def naive_voc(scores, tp, npos):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # Python's sort is stable
    hits, precs, recs = 0, [], []
    for k, i in enumerate(order, 1):
        hits += bool(tp[i])
        precs.append(hits / k)
        recs.append(hits / npos)
    ap = 0.0
    mrec = [0.0] + recs + [1.0]
    mpre = [0.0] + precs + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    for i in range(len(mrec) - 1):
        if mrec[i + 1] != mrec[i]:
            ap += (mrec[i + 1] - mrec[i]) * mpre[i + 1]
    return ap


@pytest.mark.parametrize("seed", range(5))
def test_ap_formulas_match_loop_transcriptions(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    scores = rng.integers(0, 6, n) / 5.0  # many ties
    true = rng.random(n) < 0.5
    missed = int(rng.integers(0, 3))
    assert scannet_ap(scores, true, missed) == pytest.approx(naive_scannet_ap(scores, true, missed), abs=1e-12)
    npos = int(true.sum()) + missed
    if npos:
        assert detection_ap(scores, true, npos) == pytest.approx(naive_voc(scores, true, npos), abs=1e-12)
