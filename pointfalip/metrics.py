"""Every metric of the evaluations, on plain arrays: the ground floor (nothing here imports the package but errors).

- classification: `confusion_matrix`, `classification_metrics` (overall and mean-class accuracy, per class);
- part segmentation (ShapeNetPart): `part_iou` and the means built on it (`shape_miou`, `instance_miou`,
  `class_miou`, `segmentation_metrics`), point accuracy; a part absent from both the prediction and the truth of
  a shape counts as IoU 1 (PointNet's convention, which PointCLIP V2 and ShapeNetPart results follow);
- boxes: `box_iou` of axis-aligned boxes in any dimension (2D image boxes, 3D scene boxes) from their corners,
  `box_iou_xywh` of COCO ``[x, y, w, h]`` boxes (areas ``w · h``, as ReCLIP computes them).

The modules that report a metric (`evaluate`, `evaluate_parts`, `refcoco`, `tracking`) import it from here.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .errors import InputError

__all__ = [
    "box_iou",
    "box_iou_xywh",
    "class_miou",
    "classification_metrics",
    "confusion_matrix",
    "instance_miou",
    "mean_point_accuracy",
    "metrics_from_shapes",
    "part_iou",
    "point_accuracy",
    "segmentation_metrics",
    "shape_miou",
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
