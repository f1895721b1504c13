"""pointfalip.metrics against hand-computed cases and independent (counting, rasterising) computations."""
import itertools

import numpy as np
import pytest

from pointfalip import metrics
from pointfalip.errors import InputError


# ---------------------------------------------------------------------------------------------- classification

def test_confusion_of_a_tiny_list():
    labels = [2, 0, 1, 1, 2, 2]
    preds = [2, 1, 1, 1, 0, 2]
    # row = true class, column = predicted: (2,2) x2, (0,1), (1,1) x2, (2,0)
    expected = [[0, 1, 0],
                [0, 2, 0],
                [1, 0, 2]]
    assert metrics.confusion_matrix(labels, preds, 3).tolist() == expected


def test_confusion_against_counting():
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
    counted = np.zeros((5, 5), dtype=int)
    for t, p in zip(labels.tolist(), preds.tolist()):
        counted[t][p] += 1
    np.testing.assert_array_equal(metrics.confusion_matrix(labels, preds, 5), counted)


def test_classification_metrics_by_hand():
    m = metrics.classification_metrics([2, 0, 1, 1, 2, 2], [2, 1, 1, 1, 0, 2], ["a", "b", "c", "d"])
    assert m["overall_accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"] == pytest.approx({"a": 0.0, "b": 1.0, "c": 2 / 3})  # "d" never a true class
    assert list(m["per_class"]) == ["a", "b", "c"]
    assert m["mean_class_accuracy"] == pytest.approx((0 + 1 + 2 / 3) / 3)
    assert m["confusion"][3] == [0, 0, 0, 0]


def test_classification_metrics_of_nothing_and_bad_shapes():
    m = metrics.classification_metrics([], [], ["a", "b"])
    assert (m["overall_accuracy"], m["mean_class_accuracy"], m["per_class"]) == (0.0, 0.0, {})
    with pytest.raises(ValueError):
        metrics.confusion_matrix([0, 1], [0], 2)


def test_evaluate_reexports_the_classification_metrics():
    from pointfalip import evaluate
    assert evaluate.metrics is metrics.classification_metrics


# ---------------------------------------------------------------------------------------------- part segmentation

def test_part_iou_with_a_part_absent_from_the_truth():
    pred = np.array([0, 0, 1, 2, 2, 2])
    truth = np.array([0, 0, 1, 1, 1, 1])
    # part 0: {0,1} both -> 1; part 1: inter {2}, union {2,3,4,5} -> 1/4; part 2: predicted only -> 0
    np.testing.assert_allclose(metrics.part_iou(pred, truth, [0, 1, 2]), [1.0, 0.25, 0.0])


def test_part_absent_from_both_counts_as_one():
    """ShapeNet's (PointNet's) convention: a category part neither predicted nor present scores IoU 1."""
    pred, truth = [4, 4, 5], [4, 5, 5]
    ious = metrics.part_iou(pred, truth, [4, 5, 6, 7])
    np.testing.assert_allclose(ious, [1 / 2, 1 / 2, 1.0, 1.0])
    assert metrics.shape_miou(pred, truth, [4, 5, 6, 7]) == pytest.approx((0.5 + 0.5 + 1 + 1) / 4)


def test_part_iou_against_sets():
    rng = np.random.default_rng(1)
    pred, truth = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    expected = []
    for part in range(5):  # part 4 appears in neither
        p = {i for i, v in enumerate(pred) if v == part}
        t = {i for i, v in enumerate(truth) if v == part}
        expected.append(len(p & t) / len(p | t) if p | t else 1.0)
    np.testing.assert_allclose(metrics.part_iou(pred, truth, range(5)), expected)


def test_means_over_shapes_and_categories_by_hand():
    preds = [[0, 0, 1], [1, 1], [2, 3, 3]]
    truths = [[0, 1, 1], [1, 1], [3, 3, 3]]
    parts = [[0, 1], [0, 1], [2, 3]]
    shape = [(1 / 2 + 1 / 2) / 2, (1.0 + 1.0) / 2, (0.0 + 2 / 3) / 2]  # part 0 absent from shape 2: 1
    assert metrics.instance_miou(preds, truths, parts) == pytest.approx(np.mean(shape))
    assert metrics.class_miou(preds, truths, parts, ["a", "a", "b"]) == pytest.approx(
        ((shape[0] + shape[1]) / 2 + shape[2]) / 2)
    assert metrics.point_accuracy(preds[0], truths[0]) == pytest.approx(2 / 3)
    assert metrics.mean_point_accuracy(preds, truths) == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    out = metrics.segmentation_metrics(preds, truths, parts, ["a", "a", "b"])
    assert out["per_part"] == pytest.approx({"a": [(0.5 + 1) / 2, (0.5 + 1) / 2], "b": [0.0, 2 / 3]})
    with pytest.raises(InputError):
        metrics.instance_miou([], [], [0])


# ---------------------------------------------------------------------------------------------- boxes

def test_box_iou_2d_and_3d_by_hand():
    # 2D: (0,0)-(2,2) and (1,1)-(3,3): overlap 1, union 4 + 4 - 1
    assert metrics.box_iou([[0, 0]], [[2, 2]], [[1, 1]], [[3, 3]])[0, 0] == pytest.approx(1 / 7)
    # 3D: a unit cube against itself moved by 0.5 in x, a touching one and a far one
    lo, hi = np.zeros((1, 3)), np.ones((1, 3))
    others_lo = np.array([[0.5, 0, 0], [1, 0, 0], [5, 5, 5]])
    iou = metrics.box_iou(lo, hi, others_lo, others_lo + 1)
    np.testing.assert_allclose(iou, [[0.5 / 1.5, 0.0, 0.0]])
    assert iou.shape == (1, 3) and iou.dtype == np.float64


def test_box_iou_of_boxes_without_volume_is_zero():
    flat = np.array([[0.0, 0, 0]]), np.array([[1.0, 1, 0]])
    assert metrics.box_iou(*flat, *flat)[0, 0] == 0.0


def test_box_iou_against_rasterised_integer_boxes():
    """Boxes on an integer grid: IoU by counting the unit cells each covers."""
    rng = np.random.default_rng(2)
    for dim in (2, 3):
        lo = rng.integers(0, 6, (5, dim))
        hi = lo + rng.integers(1, 5, (5, dim))
        expected = np.zeros((5, 5))
        for i, j in itertools.product(range(5), range(5)):
            cells_i = set(itertools.product(*(range(a, b) for a, b in zip(lo[i], hi[i]))))
            cells_j = set(itertools.product(*(range(a, b) for a, b in zip(lo[j], hi[j]))))
            expected[i, j] = len(cells_i & cells_j) / len(cells_i | cells_j)
        np.testing.assert_allclose(metrics.box_iou(lo, hi, lo, hi), expected)


def test_box_iou_xywh_by_hand():
    boxes = [(0, 0, 10, 10), (5, 0, 10, 10), (20, 20, 5, 5), (2.5, 2.5, 5, 5)]
    np.testing.assert_allclose(metrics.box_iou_xywh(boxes, [(0, 0, 10, 10)])[:, 0], [1.0, 50 / 150, 0.0, 25 / 100])
    a = np.array(boxes, dtype=float)
    np.testing.assert_allclose(metrics.box_iou_xywh(a, a), metrics.box_iou(a[:, :2], a[:, :2] + a[:, 2:],
                                                                           a[:, :2], a[:, :2] + a[:, 2:]))


def test_tracker_box_iou_widens_thin_sides_only():
    from pointfalip.tracking import box_iou
    lo, hi = np.zeros((1, 3)), np.ones((1, 3))
    assert box_iou(lo, hi, lo + 0.5, hi + 0.5)[0, 0] == pytest.approx(metrics.box_iou(lo, hi, lo + 0.5, hi + 0.5)[0, 0])
    flat = np.array([[0.0, 0, 0.5]]), np.array([[1.0, 1, 0.5]])
    assert box_iou(*flat, *flat)[0, 0] == pytest.approx(1.0)
