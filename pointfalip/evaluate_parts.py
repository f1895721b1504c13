"""Zero-shot part segmentation on ShapeNetPart: per-category IoU, instance and class mIoU and point accuracy,
streamed, resumable and sharded as `pointfalip.evaluate` is for classification.

`evaluate_parts(model, dataset)` segments every shape of a `datasets.ShapeNetPartDataset` with the parts of its
known category (PointCLIP V2's protocol: the category is given, the parts are predicted) and returns (and writes)
a report::

    {"task": "part segmentation", "dataset", "root", "split", "category", "model", "pretrained", "precision",
     "preset", "config", "n", "items", "points", "categories": {name: {"n", "parts", "labels"}},
     "sources", "runs": {"tokens": RUN, "clearclip": RUN}, "report", "predictions"}

    RUN = {"instance_miou", "class_miou", "accuracy", "per_category": {category: instance mIoU},
           "per_part": {category: [IoU of each part label]}, "shape_miou": [mIoU of shape i]}

``sources[i]`` says where shape i comes from (``file.h5[row]``).

Figures are fractions (`pointfalip.metrics.metrics_from_shapes`); a part absent from both the prediction and the
truth of a shape counts as IoU 1 (PointNet's convention); ``labels`` is a category's ``[first, last]`` part label.
Runs: the preset's dense mode (or ``dense=``), or both with ``compare=True``, from one projection and one pass of
the blocks before the last (`PartSegmenter.mode_scores`). The per-point predictions (the release's global part
ids) go to ``<report stem>.predictions.npz`` beside the report: ``indices`` (n,), ``categories`` (n,) and
``pred_<run>`` (n, points) int16.

Resuming and sharding are `pointfalip.evaluate`'s: per-batch files in ``<report>.partial/`` under a key of every
argument that changes the results; under ``torchrun`` rank r takes the r-th block of batches.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional, Sequence, Union

import numpy as np

from . import __version__, io
from .datasets import ShapeNetPartDataset
from .errors import InputError
from .batches import DatasetReport, TaskKind, check_batch_size, register_task, run_evaluation
from .evaluate import default_report_path
from .files import atomic_write, data_identity, file_identity
from .model import DENSE_MODES, FalipCLIP
from .metrics import metrics_from_shapes, part_iou
from .parts import DEFAULT_PRESET, PartPreset, PartSegmenter, category_labels, category_parts, load_part_preset

log = logging.getLogger(__name__)

TASK = "part segmentation"
COMPARE_RUNS = ("tokens", "clearclip")


def part_runs(compare: bool = False, dense: Optional[str] = None, preset: Optional[PartPreset] = None
              ) -> tuple[str, ...]:
    """The dense modes an evaluation runs: both to compare, else ``dense`` or the preset's."""
    if compare:
        if dense is not None:
            raise InputError("--compare runs tokens and clearclip together; drop --dense")
        return COMPARE_RUNS
    mode = dense if dense is not None else (preset or load_part_preset()).dense
    if mode not in DENSE_MODES:
        raise InputError(f"unknown dense mode '{mode}': choose one of {', '.join(DENSE_MODES)}")
    return (mode,)


def part_report_path(category: Optional[str] = None) -> Path:
    """``evaluate_shapenetpart.json`` (``evaluate_shapenetpart_<category>.json`` for one category)."""
    if category is None:
        return default_report_path("shapenetpart")
    return Path(f"evaluate_shapenetpart_{'_'.join(str(category).split()).lower()}.json")


def predictions_path(out: Union[str, Path]) -> Path:
    """The per-point predictions beside the report ``out``."""
    return Path(str(Path(out).with_suffix("")) + ".predictions.npz")


# --------------------------------------------------------------------------------------------------
# one batch
# --------------------------------------------------------------------------------------------------

@dataclass
class PartBatch:
    """What one batch position [start, start + batch_size) left: per-point predictions and per-shape figures."""

    start: int
    indices: np.ndarray  # (B,) int64 dataset indices
    categories: np.ndarray  # (B,) int64 category indices
    predictions: dict  # run -> (B, P) int16 global part ids
    part_ious: dict  # run -> (B, L) float64 IoU of each label of the shape's category, NaN past its labels
    accuracies: dict  # run -> (B,) float64 share of points labelled right


def segment_batch(segmenters: dict, clouds: np.ndarray, categories: np.ndarray, runs: Sequence[str]
                  ) -> dict[str, np.ndarray]:
    """Global part ids ``(B, P)`` of each run for clouds of known categories: each category's clouds through its
    segmenter's `PartSegmenter.mode_scores` (one projection and one encoder pass for all runs)."""
    out = {r: np.empty(clouds.shape[:2], dtype=np.int64) for r in runs}
    for c in dict.fromkeys(categories.tolist()):
        sel = np.flatnonzero(categories == c)
        seg = segmenters[c]
        first = category_labels(seg.category).start
        for r, scores in seg.mode_scores(clouds[sel], runs).items():
            out[r][sel] = scores.argmax(dim=-1).cpu().numpy() + first
    return out


def _score(segmenters: dict, dataset: ShapeNetPartDataset, runs, start: int, indices, clouds, categories,
           pids) -> PartBatch:
    if dataset.up_axis != "y":
        clouds = io.normalize(clouds, dataset.up_axis)
    preds = segment_batch(segmenters, np.asarray(clouds, dtype=np.float32), categories, runs)
    width = max(len(category_labels(dataset.classes[c])) for c in categories.tolist())
    ious, accs = {}, {}
    for r in runs:
        ious[r] = np.full((len(indices), width), np.nan)
        for j, c in enumerate(categories.tolist()):
            labels = category_labels(dataset.classes[c])
            ious[r][j, :len(labels)] = part_iou(preds[r][j], pids[j], labels)
        accs[r] = (preds[r] == pids).mean(axis=1)
    return PartBatch(start, np.asarray(indices, dtype=np.int64), np.asarray(categories, dtype=np.int64),
                     {r: p.astype(np.int16) for r, p in preds.items()}, ious, accs)


# --------------------------------------------------------------------------------------------------
# resume cache
# --------------------------------------------------------------------------------------------------

def part_run_key(model: FalipCLIP, dataset: ShapeNetPartDataset, preset: str, settings: PartPreset,
                 runs: Sequence[str], batch_size: int) -> dict:
    """Everything that changes a part evaluation's results (hashed by `batches.run_key`)."""
    return {
        "pointfalip": __version__,
        "dataset": dataset.name,
        "root": str(Path(dataset.root).resolve()),
        "split": dataset.split,
        "data": data_identity(dataset.data_files()),
        "items": hashlib.sha256(dataset.release_rows().tobytes()).hexdigest(),  # the category and the limit
        "points": dataset.points_per_cloud,
        "up_axis": dataset.up_axis,
        "model": str(model.name),
        "pretrained": file_identity(str(model.pretrained)),
        "precision": str(model.precision),
        "preset": str(preset),
        "settings": dataclasses.asdict(settings),
        "prompt_file": file_identity(str(settings.prompt_file)) if settings.prompt_file else None,
        "runs": list(runs),
        "batch_size": batch_size,
    }


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------

def evaluate_parts(model: FalipCLIP, dataset: ShapeNetPartDataset,
                   preset: Union[str, Path, PartPreset] = DEFAULT_PRESET, dense: Optional[str] = None,
                   compare: bool = False, batch_size: int = 16, out=None, progress: bool = True,
                   cache_dir=None) -> dict:
    """Segment every shape of ``dataset`` into its category's parts; write and return the report (module doc).

    Args:
        model: a loaded `FalipCLIP` (an open_clip ViT).
        dataset: from ``datasets.open_dataset("shapenetpart", ...)``, optionally `ShapeNetPartDataset.restrict`-ed.
        preset: a parts preset name, YAML file or `PartPreset`.
        dense: ``"tokens"`` or ``"clearclip"`` (default: the preset's); refused with ``compare``.
        compare: both dense modes from one projection and one pass of the shared blocks.
        batch_size: shapes per batch (the unit of streaming, resuming and sharding).
        out: report path (default `part_report_path`); the predictions go beside it (`predictions_path`) and the
            resume cache in ``<out>.partial/``.
        progress: a tqdm bar on rank 0 when stderr is a terminal.
        cache_dir: text-feature cache (`prompts.text_features`).

    Raises:
        InputError: a bad argument or a damaged release (e.g. a part id outside the shape's category).
    """
    if not isinstance(dataset, ShapeNetPartDataset):
        raise InputError(f"part evaluation needs ShapeNetPart (open_dataset('shapenetpart', ...)), "
                         f"not {getattr(dataset, 'name', type(dataset).__name__)}")
    batch_size = check_batch_size(batch_size)
    settings = load_part_preset(preset)
    runs = part_runs(compare, dense, settings)
    preset_name = str(preset) if not isinstance(preset, PartPreset) else "custom"
    present = sorted(set(dataset.labels.tolist()))
    segmenters = {c: PartSegmenter(model, category=dataset.classes[c], preset=settings, dense=runs[0],
                                   cache_dir=cache_dir) for c in present}
    task = PartTask(model, dataset, preset_name, settings, runs, batch_size, segmenters)
    out = Path(out) if out is not None else part_report_path()
    return run_evaluation(task, out, progress).to_dict()


@dataclass(kw_only=True)
class PartReport(DatasetReport):
    """The report of a part-segmentation evaluation (see the module doc for the JSON)."""

    TASK: ClassVar[str] = TASK

    category: Optional[str]
    points: int
    categories: dict
    sources: list  # where shape i of the runs' shape_miou comes from: "file.h5[row]"
    runs: dict
    report: str = ""
    predictions: str = ""


class PartTask:
    """Part segmentation of ShapeNetPart shapes, as `batches.run_evaluation` runs it."""

    name = TASK
    record = PartBatch

    def __init__(self, model: FalipCLIP, dataset: ShapeNetPartDataset, preset_name: str, settings: PartPreset,
                 runs: Sequence[str], batch_size: int, segmenters: dict):
        self.model, self.dataset, self.preset_name, self.settings = model, dataset, preset_name, settings
        self.runs, self.batch_size, self.segmenters = tuple(runs), batch_size, segmenters
        self.n_items = len(dataset)
        self.description = f"shapenetpart {'+'.join(self.runs)}"

    def key(self) -> dict:
        return part_run_key(self.model, self.dataset, self.preset_name, self.settings, self.runs, self.batch_size)

    def compute(self, lo: int, hi: int):
        batches = self.dataset.iter_segments(self.batch_size, start=lo)
        try:
            for indices, clouds, categories, pids in batches:
                if indices[0] >= hi:
                    break
                yield _score(self.segmenters, self.dataset, self.runs, indices[0], indices, clouds, categories, pids)
        finally:
            batches.close()

    def report(self, batches: list, out: Path) -> PartReport:
        self.batches = batches  # the per-point predictions that `write` saves
        used = dataclasses.replace(self.settings, projection=next(iter(self.segmenters.values())).config)
        report = _report(self.model, self.dataset, self.preset_name, used, self.runs, batches)
        report.report, report.predictions = str(out), str(predictions_path(out))
        return report

    def write(self, report: PartReport) -> list[Path]:
        arrays = {"indices": np.concatenate([b.indices for b in self.batches]),
                  "categories": np.concatenate([b.categories for b in self.batches])}
        arrays.update({f"pred_{r}": np.concatenate([b.predictions[r] for b in self.batches]) for r in self.runs})
        return [atomic_write(report.predictions, lambda f: np.savez_compressed(f, **arrays))]

    def valid(self, b: PartBatch) -> Optional[str]:
        """Why a batch read back cannot be this dataset's (see `batches.EvaluationTask.valid`)."""
        idx = np.asarray(b.indices)
        hi = min(b.start + self.batch_size, len(self.dataset))
        if idx.dtype.kind not in "iu" or not ((idx >= b.start) & (idx < hi)).all():
            return "item indices outside its batch"
        if not np.array_equal(b.categories, self.dataset.labels[idx]):
            return "categories that are not the dataset's"
        ranges = [category_labels(self.dataset.classes[c]) for c in b.categories.tolist()]
        first = np.array([r.start for r in ranges]).reshape(-1, 1)
        last = np.array([r.stop for r in ranges]).reshape(-1, 1)
        for r in self.runs:
            pred = np.asarray(b.predictions[r])
            if pred.dtype.kind not in "iu" or pred.ndim != 2 or not ((pred >= first) & (pred < last)).all():
                return "part ids outside the shapes' categories"
            ious, accs = np.asarray(b.part_ious[r], dtype=np.float64), np.asarray(b.accuracies[r], dtype=np.float64)
            if not (np.isnan(ious) | ((ious >= 0) & (ious <= 1))).all() or not ((accs >= 0) & (accs <= 1)).all():
                return "IoU or accuracy outside [0, 1]"
        return None


def _report(model, dataset: ShapeNetPartDataset, preset_name: str, settings: PartPreset, runs,
            results: list) -> PartReport:
    categories = np.concatenate([b.categories for b in results])
    names = [dataset.classes[c] for c in categories.tolist()]
    counts = {c: names.count(c) for c in dataset.classes if c in names}
    report = PartReport(
        dataset=dataset.name, root=str(dataset.root), split=dataset.split, category=dataset.category,
        model=str(model.name), pretrained=str(model.pretrained), precision=str(model.precision), preset=preset_name,
        config=json.loads(json.dumps(dataclasses.asdict(settings), default=str)), n=len(names), items=len(dataset),
        points=dataset.points_per_cloud,
        categories={c: {"n": n, "parts": category_parts(c),
                        "labels": [category_labels(c).start, category_labels(c).stop - 1]}
                    for c, n in counts.items()},
        sources=[dataset.source(int(i)) for b in results for i in b.indices], runs={})
    for r in runs:
        ious = [row[~np.isnan(row)] for b in results for row in b.part_ious[r]]
        accs = np.concatenate([b.accuracies[r] for b in results])
        figures = metrics_from_shapes(ious, accs.tolist(), names)
        report.runs[r] = {**figures, "shape_miou": [float(x.mean()) for x in ious]}
    return report


WORST_SHAPES = 3  # shapes the text summary names, lowest mIoU first


def summary(report: dict) -> str:
    """The text table of a part-segmentation report: IoU per category, then instance and class mIoU."""
    runs = list(report["runs"])
    w = max(10, max(len(r) for r in runs) + 2)
    lines = [f"pointfalip evaluate — {report['dataset']} ({report['split']}): {report['n']} shapes, part "
             f"segmentation — {report['model']} ({report['pretrained']}), preset {report['preset']}",
             f"{'category (IoU)':<20}" + "".join(f"{r:>{w}}" for r in runs) + f"{'n':>6}"]
    for c, info in report["categories"].items():
        lines.append(f"{c[:19]:<20}" + "".join(f"{report['runs'][r]['per_category'][c]:>{w}.1%}" for r in runs)
                     + f"{info['n']:>6}")
    for key, name in (("instance_miou", "instance mIoU"), ("class_miou", "class mIoU"), ("accuracy", "accuracy")):
        lines.append(f"{name:<20}" + "".join(f"{report['runs'][r][key]:>{w}.1%}" for r in runs))
    shapes = report["runs"][runs[0]]["shape_miou"]
    worst = sorted(range(len(shapes)), key=lambda i: shapes[i])[:WORST_SHAPES]
    if worst and report.get("sources"):
        lines.append(f"lowest shape mIoU ({runs[0]}): " + ", ".join(f"{report['sources'][i]} {shapes[i]:.1%}"
                                                                   for i in worst))
    lines.append(f"report: {report['report']}   predictions: {report['predictions']}")
    return "\n".join(lines)


register_task(TaskKind(TASK, ("shapenetpart",), summary))
