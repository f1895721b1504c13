"""Average precision as the 3D scene benchmarks compute it, and the axis-aligned box IoU they use.

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
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "InstanceMatches",
    "box_iou_3d_axis_aligned",
    "box_matches",
    "detection_ap",
    "scannet_ap",
    "scannet_instance_matches",
    "voc_ap",
]


def box_iou_3d_axis_aligned(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``(N, M)`` float64 of axis-aligned boxes ``a`` ``(N, 6)`` and ``b`` ``(M, 6)``.

    As VoteNet's ``calc_iou``: boxes that do not overlap strictly along all three axes have IoU 0 (so two flat boxes,
    or boxes that only touch, give 0, never a division by zero).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 6)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 6)
    lo = np.maximum(a[:, None, :3], b[None, :, :3])
    hi = np.minimum(a[:, None, 3:], b[None, :, 3:])
    extent = hi - lo
    overlap = (extent > 0).all(axis=-1)
    inter = np.where(overlap, np.prod(np.where(overlap[..., None], extent, 0.0), axis=-1), 0.0)
    union = np.prod(a[:, 3:] - a[:, :3], axis=1)[:, None] + np.prod(b[:, 3:] - b[:, :3], axis=1)[None, :] - inter
    return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


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
