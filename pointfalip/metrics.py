"""Every metric of the evaluations, on plain arrays: the ground floor (nothing here imports the package but errors).

- classification: `confusion_matrix`, `classification_metrics` (overall and mean-class accuracy, per class);
- part segmentation (ShapeNetPart): `part_iou` and the means built on it (`shape_miou`, `instance_miou`,
  `class_miou`, `segmentation_metrics`), point accuracy; a part absent from both the prediction and the truth of
  a shape counts as IoU 1 (PointNet's convention, which PointCLIP V2 and ShapeNetPart results follow);
- boxes: `box_iou` of axis-aligned boxes in any dimension (2D image boxes, 3D scene boxes) from their corners,
  `box_iou_xywh` of COCO ``[x, y, w, h]`` boxes (areas ``w · h``, as ReCLIP computes them);
- average precision of 3D scenes (ScanNet v2) as the scene benchmarks compute it, with the pairwise axis-aligned
  box IoU they use (`box_iou_3d_axis_aligned`).

  Two references, reproduced number for number (their code was read, not copied; here it is vectorised):

  - **ScanNet's instance AP** (``BenchmarkScripts/3d_evaluation/evaluate_semantic_instance.py``):
    `scannet_instance_matches` matches one class's predicted masks of one scene to its ground-truth instances at one
    overlap, `scannet_ap` integrates the precision-recall curve of the matches of all scenes. Its AP has no precision
    envelope: precision and recall are taken at each distinct confidence and averaged with half-gap weights.
  - **VoteNet's detection AP** (``utils/eval_det.py``, VOC all-point AP): `box_matches` marks one scene's detections of
    one class true or false positives, greedily in confidence order; `detection_ap` ranks the detections of all scenes
    and integrates the precision envelope (`voc_ap`).

  Boxes are ``(..., 6)`` arrays ``[xmin, ymin, zmin, xmax, ymax, zmax]``. Where a reference breaks ties by an unstable
  sort, the order here is stable: detections of equal confidence rank in the order they are given (scenes in order,
  then predictions in file order). Where a reference would raise (ScanNet: a class whose every prediction is ignored
  at some overlap; VoteNet: a class with ground truth and no prediction), these functions return the number the
  formula implies (0.0).

The modules that report a metric (`evaluate`, `evaluate_parts`, `refcoco`, `tracking`) import it from here.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

from .errors import InputError

__all__ = [
    "box_iou",
    "box_iou_3d_axis_aligned",
    "box_iou_xywh",
    "box_matches",
    "class_miou",
    "classification_metrics",
    "confusion_matrix",
    "detection_ap",
    "instance_miou",
    "InstanceMatches",
    "mean_point_accuracy",
    "metrics_from_shapes",
    "part_iou",
    "point_accuracy",
    "scannet_ap",
    "scannet_instance_matches",
    "segmentation_metrics",
    "shape_miou",
    "voc_ap",
]


# ---------------------------------------------------------------------------------------------- classification

def confusion_matrix(labels: Sequence[int], predictions: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts ``(C, C)`` int64 of true class (row) against predicted class (column), from class indices ``(N,)``
    in ``[0, C)`` each."""
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(predictions, dtype=np.int64)
    if labels.shape != preds.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and predictions {preds.shape} must be (N,) each")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    return confusion


def classification_metrics(labels: Sequence[int], predictions: Sequence[int], classes: Sequence[str]) -> dict:
    """Accuracy figures of predicted against true class indices (both (N,) of ints in [0, C)).

    Returns overall_accuracy (fraction correct), mean_class_accuracy (mean of per_class), per_class (accuracy of
    every class present in ``labels``, by name, in class order) and confusion (C×C counts, rows = true class).
    """
    c = len(classes)
    confusion = confusion_matrix(labels, predictions, c)
    n = int(confusion.sum())
    support, correct = confusion.sum(axis=1), np.diag(confusion)
    per_class = {classes[k]: float(correct[k] / support[k]) for k in range(c) if support[k]}
    return {
        "overall_accuracy": float(correct.sum() / n) if n else 0.0,
        "mean_class_accuracy": float(np.mean(list(per_class.values()))) if per_class else 0.0,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


# ---------------------------------------------------------------------------------------------- part segmentation

def part_iou(pred, truth, parts: Sequence[int]) -> np.ndarray:
    """IoU of each part id in ``parts`` between predicted and true labels ``(N,)`` (PointNet's convention: a part
    absent from both counts as 1). Returns ``(len(parts),)`` float64."""
    pred = np.asarray(pred).reshape(-1)
    truth = np.asarray(truth).reshape(-1)
    if pred.shape != truth.shape:
        raise InputError(f"prediction has {pred.size} labels but the truth {truth.size}")
    ids = np.asarray(list(parts)).reshape(-1, 1)
    if ids.size == 0:
        raise InputError("no part ids given")
    p, t = pred[None, :] == ids, truth[None, :] == ids  # (P, N)
    inter = (p & t).sum(axis=1)
    union = (p | t).sum(axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def shape_miou(pred, truth, parts: Sequence[int]) -> float:
    """Mean part IoU of one shape (labels ``(N,)`` each)."""
    return float(part_iou(pred, truth, parts).mean())


def point_accuracy(pred, truth) -> float:
    """Share of the points of one shape labelled right (labels ``(N,)`` each)."""
    return float(np.mean(np.asarray(pred).reshape(-1) == np.asarray(truth).reshape(-1)))


def _per_shape_parts(parts, count: int) -> list:
    parts = list(parts)
    if parts and np.ndim(parts[0]) == 0:
        return [parts] * count
    if len(parts) != count:
        raise InputError(f"{len(parts)} part lists for {count} shapes")
    return parts


def _shapes(preds, truths) -> tuple[list, list]:
    preds, truths = list(preds), list(truths)
    if len(preds) != len(truths) or not preds:
        raise InputError(f"{len(preds)} predictions for {len(truths)} shapes (need at least one)")
    return preds, truths


def instance_miou(preds, truths, parts) -> float:
    """Mean over shapes of each shape's mean part IoU. preds, truths: sequences of ``(N_i,)`` labels (or
    ``(S, N)`` arrays); parts: one sequence of part ids for all shapes, or one a shape."""
    preds, truths = _shapes(preds, truths)
    parts = _per_shape_parts(parts, len(preds))
    return float(np.mean([shape_miou(p, t, q) for p, t, q in zip(preds, truths, parts)]))


def class_miou(preds, truths, parts, categories: Sequence[str]) -> float:
    """Mean over categories of the category's instance mIoU (``categories``: one name a shape)."""
    preds, truths = _shapes(preds, truths)
    return segmentation_metrics(preds, truths, parts, categories)["class_miou"]


def mean_point_accuracy(preds, truths) -> float:
    """Mean over shapes of the share of points labelled right (V2's point accuracy, as a fraction)."""
    preds, truths = _shapes(preds, truths)
    return float(np.mean([point_accuracy(p, t) for p, t in zip(preds, truths)]))


def metrics_from_shapes(part_ious: Sequence[np.ndarray], accuracies: Sequence[float],
                        categories: Optional[Sequence[str]] = None) -> dict:
    """The figures of `segmentation_metrics` from each shape's `part_iou` array and point accuracy.

    Returns ``instance_miou`` (mean over shapes of the shape's mean part IoU), ``accuracy`` and, with
    ``categories`` (one name a shape), ``class_miou`` (mean over categories of their instance mIoU),
    ``per_category`` (category -> instance mIoU) and ``per_part`` (category -> mean IoU of each of its part
    ids over its shapes, in id order; only categories whose shapes share one number of parts).
    """
    ious = [np.asarray(x, dtype=np.float64).reshape(-1) for x in part_ious]
    if not ious or len(ious) != len(accuracies):
        raise InputError(f"{len(ious)} shapes' part IoUs for {len(accuracies)} accuracies (need at least one)")
    shape = np.array([x.mean() for x in ious])
    out = {"instance_miou": float(shape.mean()), "accuracy": float(np.mean(accuracies))}
    if categories is None:
        return out
    names = list(categories)
    if len(names) != len(ious):
        raise InputError(f"{len(names)} categories for {len(ious)} shapes")
    order = list(dict.fromkeys(names))
    mask = {c: np.asarray(names) == c for c in order}
    out["per_category"] = {c: float(shape[mask[c]].mean()) for c in order}
    out["class_miou"] = float(np.mean(list(out["per_category"].values())))
    rows = {c: [x for x, keep in zip(ious, mask[c]) if keep] for c in order}
    out["per_part"] = {c: np.mean(r, axis=0).tolist() for c, r in rows.items() if len({len(x) for x in r}) == 1}
    return out


def segmentation_metrics(preds, truths, parts, categories: Optional[Sequence[str]] = None) -> dict:
    """``{"instance_miou", "class_miou", "accuracy", "per_category", "per_part"}`` as fractions
    (``class_miou``, ``per_category`` and ``per_part`` need ``categories``); see `metrics_from_shapes`."""
    preds, truths = _shapes(preds, truths)
    parts = _per_shape_parts(parts, len(preds))
    return metrics_from_shapes([part_iou(p, t, q) for p, t, q in zip(preds, truths, parts)],
                               [point_accuracy(p, t) for p, t in zip(preds, truths)], categories)


# ---------------------------------------------------------------------------------------------- boxes

def _overlap_iou(lo_a: np.ndarray, hi_a: np.ndarray, size_a: np.ndarray,
                 lo_b: np.ndarray, hi_b: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """IoU ``(A, B)`` from corners ``(A, D)``, ``(B, D)`` and the sides the areas are taken from; a pair whose
    union is empty (two boxes without area) has IoU 0."""
    lo = np.maximum(lo_a[:, None, :], lo_b[None, :, :])
    hi = np.minimum(hi_a[:, None, :], hi_b[None, :, :])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    union = np.prod(size_a, axis=1)[:, None] + np.prod(size_b, axis=1)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _corners(values, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be (N, D) corners, got shape {arr.shape}")
    return arr


def box_iou(min_a, max_a, min_b, max_b) -> np.ndarray:
    """IoU ``(A, B)`` float64 of axis-aligned boxes given by their lower and upper corners: ``min_a``, ``max_a``
    ``(A, D)``, ``min_b``, ``max_b`` ``(B, D)``, in any dimension D (2 for image boxes ``x0, y0, x1, y1`` split in
    two, 3 for scene boxes). Boxes are closed; two boxes without area have IoU 0 (not NaN)."""
    lo_a, hi_a = _corners(min_a, "min_a"), _corners(max_a, "max_a")
    lo_b, hi_b = _corners(min_b, "min_b"), _corners(max_b, "max_b")
    if lo_a.shape != hi_a.shape or lo_b.shape != hi_b.shape or lo_a.shape[1] != lo_b.shape[1]:
        raise ValueError(f"box corners of shapes {lo_a.shape}, {hi_a.shape}, {lo_b.shape}, {hi_b.shape} differ")
    return _overlap_iou(lo_a, hi_a, hi_a - lo_a, lo_b, hi_b, hi_b - lo_b)


def box_iou_xywh(boxes, others) -> np.ndarray:
    """IoU ``(N, G)`` float64 of 2D boxes ``[x, y, w, h]`` ``(N, 4)`` against ``(G, 4)``, areas taken as ``w · h``
    (COCO's layout; ReCLIP's ``interpreter.iou`` to the last bit)."""
    a = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(others, dtype=np.float64).reshape(-1, 4)
    return _overlap_iou(a[:, :2], a[:, :2] + a[:, 2:], a[:, 2:], b[:, :2], b[:, :2] + b[:, 2:], b[:, 2:])


# ---------------------------------------------------------------------------------------------- scene AP (ScanNet, VoteNet)
def box_iou_3d_axis_aligned(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(N, M)`` float64 of axis-aligned boxes ``a`` ``(N, 6)`` and ``b`` ``(M, 6)``.

    As VoteNet's ``calc_iou``: boxes that do not overlap strictly along all three axes have IoU 0 (so two flat boxes,
    or boxes that only touch, give 0, never a division by zero).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 6)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 6)
    return box_iou(a[:, :3], a[:, 3:], b[:, :3], b[:, 3:])  # touching or flat boxes: no volume in common, IoU 0


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """VOC all-point AP: the area under the precision envelope (the running maximum from high recall down) of a
    curve given detection by detection, from recall 0 (precision 0) to recall 1 (precision 0)."""
    mrec = np.concatenate(([0.0], np.asarray(recall, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(precision, dtype=np.float64), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def box_matches(iou: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """True positives ``(P,)`` bool of one scene's detections of one class (VoteNet's ``eval_det_cls`` matching).

    Detections are visited by decreasing score (ties: in the given order); each takes the ground-truth box of its
    highest IoU (the first of equal ones) and is a true positive when that IoU is strictly above ``threshold`` and
    the box was not taken by a detection before it; a detection whose best box is taken is a false positive, even
    when another box would fit.

    Args:
        iou: ``(P, G)`` IoU of the detections with the ground-truth boxes of the class in the scene.
        scores: ``(P,)`` confidences.
    """
    iou = np.asarray(iou, dtype=np.float64).reshape(len(scores), -1)
    tp = np.zeros(len(scores), dtype=bool)
    if iou.shape[1] == 0:
        return tp
    best = iou.argmax(axis=1)
    above = iou[np.arange(len(best)), best] > threshold
    taken = np.zeros(iou.shape[1], dtype=bool)
    for p in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        if above[p] and not taken[best[p]]:
            tp[p] = taken[best[p]] = True
    return tp


def detection_ap(scores: np.ndarray, tp: np.ndarray, num_gt: int) -> float | None:
    """VOC AP of one class's detections over all scenes (VoteNet): ranked by decreasing score (stable), recall
    ``TP / num_gt``, precision ``TP / (TP + FP)``; `voc_ap`. None without ground truth (the class is left out of the
    means); 0.0 with ground truth and no detection."""
    if num_gt <= 0:
        return None
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(tp, dtype=bool)[order]
    true_pos = np.cumsum(hits)
    false_pos = np.cumsum(~hits)
    recall = true_pos / float(num_gt)
    precision = true_pos / np.maximum(true_pos + false_pos, np.finfo(np.float64).eps)
    return voc_ap(recall, precision)


class InstanceMatches(NamedTuple):
    """What one class of one scene contributes to ScanNet's AP at one overlap."""

    scores: np.ndarray  # (E,) float64: confidence of each entry of the precision-recall curve
    true: np.ndarray  # (E,) bool: a matched ground truth (True) or a false positive (False)
    missed: int  # ground-truth instances no prediction matched (ScanNet's "hard false negatives")


def scannet_instance_matches(intersection: np.ndarray, pred_sizes: np.ndarray, gt_sizes: np.ndarray,
                             void_intersection: np.ndarray, confidence: np.ndarray, overlap: float,
                             min_region_size: int = 100) -> InstanceMatches:
    """Match one scene's predicted masks of one class to its ground-truth instances of that class, as ScanNet's
    ``evaluate_matches`` does at one overlap.

    Predictions smaller than ``min_region_size`` vertices are dropped. Ground-truth instances of at least that size are
    visited in the given order; each takes the first prediction, in the given order, whose overlap (vertex IoU) with
    it is strictly above ``overlap`` and that no earlier instance took: a true positive scored with the highest
    confidence of all such predictions, each of the others a false positive (not taken: it may still match a later
    instance). An instance that nothing matches is missed. A prediction that overlaps no instance of the class
    (small ones included) above ``overlap`` is a false positive unless more than ``overlap`` of its vertices are
    ignored: on void vertices (unannotated, or of a class outside the benchmark) or on instances of the class under
    ``min_region_size``.

    Args:
        intersection: ``(P, G)`` vertices shared by each prediction and each ground-truth instance of the class.
        pred_sizes: ``(P,)`` vertices of each predicted mask; gt_sizes: ``(G,)`` of each instance.
        void_intersection: ``(P,)`` vertices of each prediction on void vertices.
        confidence: ``(P,)`` confidences.
    """
    inter = np.asarray(intersection, dtype=np.int64).reshape(len(pred_sizes), len(gt_sizes))
    pred_sizes = np.asarray(pred_sizes, dtype=np.int64)
    gt_sizes = np.asarray(gt_sizes, dtype=np.int64)
    keep = pred_sizes >= min_region_size
    inter, pred_sizes = inter[keep], pred_sizes[keep]
    void = np.asarray(void_intersection, dtype=np.int64)[keep]
    conf = np.asarray(confidence, dtype=np.float64)[keep]

    union = gt_sizes[None, :] + pred_sizes[:, None] - inter
    iou = inter / np.maximum(union, 1)
    hit = (inter > 0) & (iou > overlap)  # (P, G)
    large = gt_sizes >= min_region_size

    scores, true = [], []
    taken = np.zeros(len(pred_sizes), dtype=bool)
    missed = 0
    for g in np.flatnonzero(large):
        candidates = np.flatnonzero(hit[:, g] & ~taken)
        if len(candidates) == 0:
            missed += 1
            continue
        taken[candidates[0]] = True
        c = conf[candidates]
        best = int(np.argmax(c))
        scores.append(c[best:best + 1])
        true.append(np.ones(1, dtype=bool))
        scores.append(np.delete(c, best))
        true.append(np.zeros(len(c) - 1, dtype=bool))

    ignored = void + (inter * ~large[None, :]).sum(axis=1)
    unmatched = ~hit.any(axis=1) & (ignored / np.maximum(pred_sizes, 1) <= overlap)
    scores.append(conf[unmatched])
    true.append(np.zeros(int(unmatched.sum()), dtype=bool))
    return InstanceMatches(np.concatenate(scores), np.concatenate(true), missed)


def scannet_ap(scores: np.ndarray, true: np.ndarray, missed: int) -> float:
    """ScanNet's AP of one class at one overlap from the entries of every scene (`scannet_instance_matches`).

    At each distinct confidence t: TP = true entries scoring >= t, FP = false ones, FN = true entries below t plus the
    missed instances; precision TP/(TP+FP), recall TP/(TP+FN); with a last point (recall 0, precision 1), AP =
    Σ_i precision_i · (recall_{i-1} - recall_{i+1}) / 2 over the points by increasing t (recall_{-1} = recall_0, and 0
    after the last). No precision envelope. Call it for a class with ground truth and at least one prediction; no
    entry at all (every prediction ignored) gives 0.0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    ranked = scores[order]
    cumsum = np.cumsum(np.asarray(true, dtype=np.int64)[order])
    total = int(cumsum[-1]) if len(cumsum) else 0
    _, first = np.unique(ranked, return_index=True)
    below = np.where(first > 0, cumsum[np.maximum(first - 1, 0)] if len(cumsum) else 0, 0)
    tp = total - below
    fp = len(ranked) - first - tp
    fn = below + int(missed)
    precision = np.append(tp / np.maximum(tp + fp, 1), 1.0)
    recall = np.append(tp / np.maximum(tp + fn, 1), 0.0)
    padded = np.concatenate(([recall[0]], recall, [0.0]))
    widths = 0.5 * (padded[:-2] - padded[2:])
    return float(np.dot(precision, widths))
