"""Dataset evaluation: zero-shot accuracy of the 3D pipeline on a test set, streamed, resumable and sharded.

`evaluate(model, dataset)` classifies every object of a `datasets.Dataset` against the dataset's own class names
and returns (and writes) a report::

    {"task": "classification", "dataset", "root", "split", "model", "pretrained", "precision", "preset", "config",
     "n", "items",
     "skipped": [{"index", "source", "reason"}], "classes", "labels", "sources",
     "runs": {"falip": RUN, "baseline": RUN}, "report", "confusion_png"}

    RUN = {"overall_accuracy", "mean_class_accuracy", "per_class": {class: accuracy},
           "confusion": C×C counts (rows = true class), "predictions": class index of item i (null if skipped)}

``labels[i]``, ``sources[i]`` (where item i comes from: its file, or ``file.h5[row]`` for the h5 releases) and
each run's ``predictions[i]`` describe item i. ``n`` counts the objects evaluated, ``items`` the dataset's items
(``n`` plus the skipped ones); accuracies are fractions (`pointfalip.metrics.classification_metrics`, also
importable here as ``metrics``); ``mean_class_accuracy`` averages the classes present among the evaluated objects.
Only the runs made are present: ``falip`` (default), ``baseline`` (``falip=False``), or both with ``compare=True``,
where one
`FalipCLIP.encode_image_pair` call per chunk of images gives both from the same projections.

The evaluation is a `ClassificationTask` run by `batches.run_evaluation` (the shape every evaluation shares);
the report is a `ClassificationReport` (its ``to_dict()`` above).

Streaming: batches of clouds are read, projected, encoded and reduced to predictions one at a time; nothing but
the predictions outlives a batch. Resuming: each batch's results go to ``<report>.partial/batch_<start>.npz``
(written atomically) under a key of every argument that changes the results (`run_key`); a run started again
with the same arguments reuses them and writes the same report as an uninterrupted run, then removes the folder.
Sharding: under ``torchrun`` (a `torch.distributed` process group, see `distributed`), rank r takes the r-th
contiguous block of batches; the predictions are gathered and every rank returns the same report, which rank 0
writes. Batches start at multiples of ``batch_size`` whatever the number of ranks, so each object is computed in
the same batch as in a single process.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from . import __version__
from .batches import (KEY_VERSION, MADE_BY, PARTIAL_SUFFIX, BatchCache, DatasetReport, TaskKind, barrier,
                      check_batch_size, check_report_path, dist_rank, distributed, dumps_report, gather, missing_ranges,
                      ordered_batches, partial_path, register_task, run_batches, run_evaluation)
from .batches import run_key as _hashed_key
from .datasets import Dataset
from .errors import InputError
from .files import atomic_write, data_identity, file_identity, image_save_options
from .metrics import classification_metrics as metrics  # the run's figures; `evaluate.metrics` stays importable
from .model import FalipCLIP
from .recognize import Recognizer, RecognizerConfig

log = logging.getLogger(__name__)

FALIP, BASELINE = "falip", "baseline"  # run names in the report
FEWSHOT_SUFFIX = "+fewshot"  # a run scored with a few-shot cache

# confusion-matrix picture
_CELL_MAX, _CELL_MIN = 28, 6  # pixels per cell, for few and for many classes
_PLOT_SIDE = 640  # pixels the grid aims at
_LOW, _HIGH = np.array([255, 255, 255]), np.array([8, 48, 107])  # colour of a row share of 0 and of 1
_MARGIN = 8
_BAR_WIDTH, _BAR_GAP, _BAR_MIN_HEIGHT = 14, 16, 120  # the colour scale beside the grid, pixels
_SCALE_NAME = "share of the row"  # what a cell's colour measures: its count over its true class's count


# --------------------------------------------------------------------------------------------------
# one batch
# --------------------------------------------------------------------------------------------------

def run_names(compare: bool = False, falip: bool = True, fewshot: bool = False) -> tuple[str, ...]:
    """The runs an evaluation makes: ("falip", "baseline") to compare, else the one configuration; with a
    few-shot cache the run is named "falip+fewshot" (or "baseline+fewshot")."""
    if compare and not falip:
        raise InputError("--compare runs FALIP and the plain-CLIP baseline together; drop --no-falip")
    if compare and fewshot:
        raise InputError("--compare scores FALIP and plain CLIP from one pass, but a few-shot cache holds the "
                         "features of one of them: drop --compare or --fewshot")
    runs = (FALIP, BASELINE) if compare else ((FALIP,) if falip else (BASELINE,))
    return tuple(f"{r}{FEWSHOT_SUFFIX}" for r in runs) if fewshot else runs


def _features_of(run: str) -> str:
    """Which features a run scores: FALIP's or the plain baseline's."""
    return BASELINE if run.startswith(BASELINE) else FALIP


def score_batch(rec: Recognizer, clouds: Sequence[np.ndarray], runs: Sequence[str],
                scorers: Optional[dict] = None) -> dict[str, torch.Tensor]:
    """Logits (B, C) of prepared clouds for each run, from one projection, through `Recognizer.embed` and
    `Recognizer.logits` (``scorers`` maps a run to another Recognizer whose `logits` score it, e.g. one holding
    a few-shot cache; the features are always ``rec``'s).

    With FALIP and baseline runs together the recognizer must have FALIP on: `Recognizer.embed(...,
    with_plain=True)` runs the blocks before the first foveal block once for both. The logits equal those of
    separate runs up to the float rounding of the model's dtype (bitwise-close in fp32; in bf16 or fp16 a near-tie
    can flip a prediction).
    """
    kinds = {_features_of(r) for r in runs}
    if len(kinds) == 2:
        if not rec.falip:
            raise ValueError(f"runs {runs}: FALIP and baseline runs need a FALIP recognizer")
        feats = dict(zip((FALIP, BASELINE), rec.embed(clouds, with_plain=True, prepared=True)))
    else:
        feats = {kinds.pop(): rec.embed(clouds, prepared=True)}
    scorers = scorers or {}
    return {r: scorers.get(r, rec).logits(feats[_features_of(r)]) for r in runs}


@dataclass
class BatchResult:
    """What one batch position [start, start + batch_size) left: its evaluated items and its skipped ones."""

    start: int
    indices: np.ndarray  # (B,) int64 dataset indices evaluated
    labels: np.ndarray  # (B,) int64 true classes
    predictions: dict  # run -> (B,) int64 predicted classes
    skipped: list  # [(index, source, reason)]


def _prepare(rec: Recognizer, dataset: Dataset, indices, clouds, labels, skipped: list):
    """Clouds the recognizer accepts (validated, normalised); the others join ``skipped`` with the reason."""
    keep, ready = [], []
    for k, i in enumerate(indices):
        try:
            ready.append(rec.prepare([clouds[k]])[0])
        except InputError as e:
            source = dataset.source(i)
            log.warning("%s: skipped (item %d of %s): %s", source, i, dataset.name, e)
            skipped.append((int(i), source, str(e)))
            continue
        keep.append(k)
    return np.asarray(indices, dtype=np.int64)[keep], np.asarray(labels, dtype=np.int64)[keep], ready


def _classify(rec: Recognizer, runs, dataset: Dataset, start: int, indices, clouds, labels,
              skipped: list, scorers: Optional[dict] = None) -> BatchResult:
    skipped = list(skipped)
    idx, lab, ready = _prepare(rec, dataset, indices, clouds, labels, skipped)
    preds = {r: np.zeros(0, dtype=np.int64) for r in runs}
    if ready:
        scores = score_batch(rec, ready, runs, scorers)
        preds = {r: s.argmax(dim=-1).cpu().numpy().astype(np.int64) for r, s in scores.items()}
    return BatchResult(start, idx, lab, preds, sorted(skipped))


def _positions(dataset: Dataset, batch_size: int, lo: int, hi: int) -> Iterator[tuple]:
    """``(start, indices, clouds, labels, skipped)`` for every batch position in [lo, hi), in order.

    `Dataset.iter_batches` leaves out a batch with nothing readable; here such a position comes too, empty, so
    that the cache can record it as done. ``skipped`` holds the dataset's skipped items of the position.
    """
    hi = min(hi, len(dataset))

    def skipped_in(p: int) -> list:
        return [(int(i), str(s), str(r)) for i, s, r in dataset.skipped if p <= i < p + batch_size]

    pos = lo
    it = dataset.iter_batches(batch_size, start=lo)
    try:
        while pos < hi:
            item = next(it, None)
            start = hi if item is None else lo + (item[0][0] - lo) // batch_size * batch_size
            for p in range(pos, min(start, hi), batch_size):  # positions with nothing readable
                yield p, [], [], np.zeros(0, np.int64), skipped_in(p)
            if item is None or start >= hi:
                return
            yield start, item[0], item[1], item[2], skipped_in(start)
            pos = start + batch_size
    finally:
        it.close()


# --------------------------------------------------------------------------------------------------
# resume cache
# --------------------------------------------------------------------------------------------------

def run_key(model: FalipCLIP, dataset: Dataset, preset: str, config: RecognizerConfig, runs: Sequence[str],
            batch_size: int, fewshot=None) -> dict:
    """Everything that changes an evaluation's results, and its sha256 under "hash"."""
    prompt_file = config.prompt_file
    return _hashed_key({
        "pointfalip": __version__,
        "dataset": dataset.name,
        "root": str(Path(dataset.root).resolve()),
        "split": dataset.split,
        "layout": dataset.layout,
        "data": data_identity(dataset.data_files()),  # the files themselves: a repaired or replaced one starts over
        "items": len(dataset),  # the limit
        "num_points": dataset.num_points,
        "classes": list(dataset.classes),
        "model": str(model.name),
        "pretrained": file_identity(str(model.pretrained)),
        "precision": str(model.precision),
        "preset": str(preset),
        "config": dataclasses.asdict(config),
        "prompt_file": file_identity(str(prompt_file)) if prompt_file else None,
        "runs": list(runs),
        "batch_size": batch_size,
        "fewshot": None if fewshot is None else (file_identity(fewshot) if isinstance(fewshot, (str, os.PathLike))
                                                 else _cache_identity(fewshot)),
    })


def confusion_path(out: Union[str, Path]) -> Path:
    """The confusion-matrix picture beside the report ``out``."""
    return Path(str(Path(out).with_suffix("")) + ".confusion.png")


def _cache_identity(cache) -> str:
    """sha256 of a few-shot cache's keys, labels and settings (an in-memory cache has no file identity)."""
    digest = hashlib.sha256(cache.keys.numpy().tobytes())
    digest.update(json.dumps([cache.labels, cache.alpha, cache.beta, cache.metadata], sort_keys=True,
                             default=str).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------

def default_report_path(dataset_name: str) -> Path:
    """``evaluate_<dataset>.json`` in the current folder."""
    return Path(f"evaluate_{dataset_name}.json")


def evaluate(model: FalipCLIP, dataset: Dataset, preset: Union[str, RecognizerConfig] = "pointclip_v2",
             compare: bool = False, falip: bool = True, batch_size: int = 16, out=None, progress: bool = True,
             shots: Optional[int] = None, seeds: Sequence[int] = (1,), train_dataset: Optional[Dataset] = None,
             **recognizer_overrides) -> dict:
    """Classify every object of ``dataset`` against its classes; write and return the report (module doc).

    Args:
        model: a loaded `FalipCLIP`.
        dataset: from `datasets.open_dataset`; its raw class names are the labels (a reference preset fills its
            prompts by the reference's rule) and its ``up_axis`` the input frame (``up_axis=`` among the overrides
            wins).
        preset: a preset name, YAML file or `RecognizerConfig`.
        compare: FALIP and the baseline from the same projections (both runs in the report).
        falip: False for the plain-CLIP baseline alone (refused together with ``compare``).
        batch_size: objects per batch (the unit of streaming, resuming and sharding).
        out: report path (default `default_report_path`); the confusion-matrix PNG goes beside it
            (``<stem>.confusion.png``) and the resume cache in ``<out>.partial/``.
        progress: a tqdm bar (objects/s) on rank 0 when stderr is a terminal.
        shots, seeds, train_dataset: the papers' few-shot protocol: for every seed, ``shots`` examples per class
            drawn from ``train_dataset`` (never from ``dataset``) make a few-shot cache (one for FALIP and one for
            the baseline with ``compare``, from one encoder pass); the test set is encoded once and each cache
            scores it. The report adds ``<run>+fewshot`` runs holding the mean over seeds, their spread
            (``*_std``) and every seed's run under ``seeds``, and ``fewshot`` with the examples used.
        recognizer_overrides: `Recognizer` keywords (projection, views, templates, prompt_file, view_weights,
            foveal, up_axis, cache_dir, fewshot); None values are ignored.

    Raises:
        InputError: a bad argument, or nothing could be evaluated (every item skipped).
    """
    batch_size = check_batch_size(batch_size)
    overrides = {k: v for k, v in recognizer_overrides.items() if v is not None}
    runs = run_names(compare, falip, fewshot="fewshot" in overrides)
    cache_dir = overrides.pop("cache_dir", None)
    overrides.setdefault("up_axis", dataset.up_axis)
    rec = Recognizer(model, labels=list(dataset.classes), preset=preset, falip=falip, cache_dir=cache_dir,
                     **overrides)
    scorers, protocol = {}, None
    if shots is not None:
        scorers, protocol = _seed_scorers(rec, dataset, train_dataset, shots, seeds, runs, progress)
        runs = runs + tuple(scorers)
    preset_name = preset if isinstance(preset, str) else "custom"
    task = ClassificationTask(rec, dataset, preset_name, runs, batch_size, scorers, protocol,
                              fewshot=overrides.get("fewshot"))
    out = Path(out) if out is not None else default_report_path(dataset.name)
    return run_evaluation(task, out, progress).to_dict()


@dataclass(kw_only=True)
class ClassificationReport(DatasetReport):
    """The report of a classification evaluation (see the module doc for the JSON)."""

    TASK: ClassVar[str] = "classification"
    OMITTED_WHEN_NONE: ClassVar[tuple[str, ...]] = ("fewshot",)

    skipped: list
    classes: list
    labels: list
    sources: list  # item i's file, or "file.h5[row]"
    runs: dict
    report: str = ""
    confusion_png: str = ""
    fewshot: Optional[dict] = None


class ClassificationTask:
    """Zero-shot (or few-shot) classification of a `datasets.Dataset`, as `batches.run_evaluation` runs it."""

    name = ClassificationReport.TASK
    record = BatchResult

    def __init__(self, rec: Recognizer, dataset: Dataset, preset_name: str, runs: Sequence[str], batch_size: int,
                 scorers: Optional[dict] = None, protocol: Optional[dict] = None, fewshot=None):
        self.rec, self.dataset, self.preset_name = rec, dataset, preset_name
        self.runs, self.batch_size = tuple(runs), batch_size
        self.scorers, self.protocol, self.fewshot = scorers or {}, protocol, fewshot
        self.n_items = len(dataset)
        self.description = f"{dataset.name} {'+'.join(self.runs)}"

    def key(self) -> dict:
        fewshot = self.fewshot or (self.protocol and json.dumps(self.protocol, sort_keys=True))
        return run_key(self.rec.model, self.dataset, self.preset_name, self.rec.config, self.runs, self.batch_size,
                       fewshot=fewshot)

    def compute(self, lo: int, hi: int) -> Iterator[BatchResult]:
        for start, indices, clouds, labels_, skipped in _positions(self.dataset, self.batch_size, lo, hi):
            yield _classify(self.rec, self.runs, self.dataset, start, indices, clouds, labels_, skipped, self.scorers)

    def report(self, batches: list, out: Path) -> ClassificationReport:
        report = _report(self.rec.model, self.dataset, self.preset_name, self.rec, self.runs, batches)
        if self.protocol is not None:
            _merge_seeds(report, self.protocol)
        if report.n == 0:
            first = report.skipped[0]
            raise InputError(f"nothing to evaluate: all {len(self.dataset)} item(s) of {self.dataset.name} under "
                             f"{self.dataset.root} were skipped (first: {first['source']}: {first['reason']})")
        report.report, report.confusion_png = str(out), str(confusion_path(out))
        return report

    def write(self, report: ClassificationReport) -> list[Path]:
        return [save_confusion_png(report.confusion_png, report.to_dict())]

    def valid(self, b: BatchResult) -> Optional[str]:
        """Why a batch read back cannot be this dataset's (see `batches.EvaluationTask.valid`)."""
        hi = min(b.start + self.batch_size, len(self.dataset))
        if not _ints_in(b.indices, b.start, hi) or len(set(b.indices.tolist())) != len(b.indices):
            return "item indices outside its batch"
        if not np.array_equal(b.labels, self.dataset.labels[b.indices]):
            return "labels that are not the dataset's"
        if set(b.predictions) != set(self.runs) or \
                not all(_ints_in(p, 0, len(self.dataset.classes)) for p in b.predictions.values()):
            return "predictions outside the classes"
        if not all(isinstance(s, tuple) and len(s) == 3 and isinstance(s[0], int) and b.start <= s[0] < hi
                   and all(isinstance(t, str) for t in s[1:]) for s in b.skipped):
            return "skipped items outside its batch"
        return None


def _ints_in(values: np.ndarray, lo: int, hi: int) -> bool:
    """Whether ``values`` is an integer array with every value in [lo, hi)."""
    values = np.asarray(values)
    return values.dtype.kind in "iu" and bool(((values >= lo) & (values < hi)).all())


SEED_MARK = "@seed"  # a few-shot run of one seed: "falip+fewshot@seed1"; merged into "falip+fewshot"


def _seed_scorers(rec: Recognizer, dataset: Dataset, train: Optional[Dataset], shots: int, seeds: Sequence[int],
                  runs: Sequence[str], progress: bool) -> tuple[dict, dict]:
    """One Recognizer holding a few-shot cache per seed and run, and the protocol's record (what was drawn)."""
    import copy

    from . import fewshot

    if rec.fewshot is not None:
        raise InputError("--shots builds its own caches from the train split: drop --fewshot")
    if train is None:
        raise InputError("--shots needs the release's train split (--train-root) to draw the examples from")
    if Path(train.root).resolve() == Path(dataset.root).resolve() and train.split == dataset.split:
        raise InputError(f"the few-shot examples would come from the evaluated items themselves ({dataset.root}, "
                         f"{dataset.split}): give the train split or another --train-root")
    if list(train.classes) != list(dataset.classes):
        raise InputError(f"{train.root} has other classes than {dataset.root}: the few-shot examples must share them")
    seeds = sorted({int(s) for s in seeds})
    if not seeds:
        raise InputError("give at least one seed")
    scorers, record = {}, {"shots": int(shots), "seeds": seeds, "train": {"root": str(train.root),
                                                                         "split": train.split}, "examples": {}}
    with_plain = len({_features_of(r) for r in runs}) == 2
    plain_rec = copy.copy(rec)
    plain_rec.falip = False
    embedded: dict = {}  # seeds that draw the same examples (every class holding at most `shots`) share one pass
    for seed in seeds:
        indices = fewshot.draw_shots(train, shots, seed)
        drawn = tuple(np.asarray(indices).reshape(-1).tolist())
        if drawn not in embedded:
            embedded[drawn] = fewshot.embed_examples(rec, train, indices, with_plain=with_plain, progress=progress)
        feats, plain, targets, sources = embedded[drawn]
        record["examples"][str(seed)] = sources
        for run in runs:
            source_rec = plain_rec if _features_of(run) == BASELINE else rec
            use = plain if (with_plain and _features_of(run) == BASELINE) else feats
            cache = fewshot.cache_from_features(source_rec, use, targets, shots, train.num_points)
            scorer = copy.copy(source_rec)
            scorer.use_fewshot(cache)
            scorers[f"{run}{FEWSHOT_SUFFIX}{SEED_MARK}{seed}"] = scorer
    return scorers, record


def _merge_seeds(report: ClassificationReport, protocol: dict) -> None:
    """Fold every seed's few-shot run into one run: means, spreads (population std) and the seeds' own runs."""
    merged: dict = {}
    for name in [n for n in report.runs if SEED_MARK in n]:
        base, seed = name.split(SEED_MARK)
        merged.setdefault(base, {})[seed] = report.runs.pop(name)
    for base, by_seed in merged.items():
        runs = list(by_seed.values())
        run = {}
        for key in ("overall_accuracy", "mean_class_accuracy"):
            values = np.array([r[key] for r in runs])
            run[key], run[f"{key}_std"] = float(values.mean()), float(values.std())
        run["per_class"] = {c: float(np.mean([r["per_class"][c] for r in runs])) for c in runs[0]["per_class"]}
        run["confusion"] = np.sum([r["confusion"] for r in runs], axis=0).tolist()  # counts over all seeds
        run["seeds"] = by_seed
        report.runs[base] = run
    report.fewshot = protocol


def _report(model, dataset: Dataset, preset_name: str, rec: Recognizer, runs, results: list) -> ClassificationReport:
    indices = np.concatenate([b.indices for b in results]).astype(np.int64)
    labels = np.concatenate([b.labels for b in results]).astype(np.int64)
    skipped = sorted({s[0]: s for b in results for s in b.skipped}.values())
    report = ClassificationReport(
        dataset=dataset.name, root=str(dataset.root), split=dataset.split, model=str(model.name),
        pretrained=str(model.pretrained), precision=str(model.precision), preset=preset_name,
        config=json.loads(json.dumps(dataclasses.asdict(rec.config), default=str)), n=int(len(indices)),
        items=len(dataset), skipped=[{"index": i, "source": s, "reason": r} for i, s, r in skipped],
        classes=list(dataset.classes), labels=dataset.labels.tolist(),
        sources=[dataset.source(i) for i in range(len(dataset))], runs={})
    for r in runs:
        preds = np.concatenate([b.predictions[r] for b in results]).astype(np.int64)
        by_item: list = [None] * len(dataset)
        for i, p in zip(indices.tolist(), preds.tolist()):
            by_item[i] = p
        report.runs[r] = {**metrics(labels, preds, dataset.classes), "predictions": by_item}
    return report


SUMMARY_ROWS = 40  # classes listed in the text summary; the report holds them all


def summary(report: dict) -> str:
    """The text table of a classification report: overall and mean class accuracy of each run, then per class."""
    runs = list(report["runs"])
    w = max(10, max(len(r) for r in runs) + 2)  # column width
    lines = [f"pointfalip evaluate — {report['dataset']} ({report['split']}): {report['n']} objects, "
             f"{len(report['skipped'])} skipped — {report['model']} ({report['pretrained']}), preset "
             f"{report['preset']}", f"{'':<20}" + "".join(f"{r:>{w}}" for r in runs)]
    for key, name in (("overall_accuracy", "overall"), ("mean_class_accuracy", "mean class")):
        lines.append(f"{name:<20}" + "".join(f"{report['runs'][r][key]:>{w}.2%}" for r in runs))
        if any(f"{key}_std" in report["runs"][r] for r in runs):
            lines.append(f"{'  ± over seeds':<20}" + "".join(
                f"{report['runs'][r][key + '_std']:>{w}.2%}" if f"{key}_std" in report["runs"][r] else f"{'':>{w}}"
                for r in runs))
    lines.append(f"{'class':<20}" + "".join(f"{r:>{w}}" for r in runs) + f"{'n':>6}")
    confusion = report["runs"][runs[0]]["confusion"]
    present = [(k, c) for k, c in enumerate(report["classes"]) if sum(confusion[k])]
    for k, c in present[:SUMMARY_ROWS]:
        lines.append(f"{c[:19]:<20}" + "".join(f"{report['runs'][r]['per_class'][c]:>{w}.1%}" for r in runs)
                     + f"{sum(confusion[k]):>6}")
    if len(present) > SUMMARY_ROWS:
        lines.append(f"... and {len(present) - SUMMARY_ROWS} more classes in the report")
    lines += _misclassified(report, runs[0])
    lines.append(f"report: {report['report']}   confusion matrix: {report['confusion_png']}")
    return "\n".join(lines)


def _misclassified(report: dict, run: str) -> list[str]:
    """Lines naming the first misclassified items of ``run`` by their source (file, or h5 file and row)."""
    preds, sources, classes = report["runs"][run].get("predictions"), report.get("sources"), report["classes"]
    if not preds or not sources:
        return []
    wrong = [i for i, (p, t) in enumerate(zip(preds, report["labels"])) if p is not None and p != t]
    if not wrong:
        return []
    head = f"misclassified ({run}): {len(wrong)} of {report['n']}" + (
        f", the first {MISCLASSIFIED_ROWS}:" if len(wrong) > MISCLASSIFIED_ROWS else ":")
    return [head] + [f"  {sources[i]}: {classes[report['labels'][i]]} -> {classes[preds[i]]}"
                     for i in wrong[:MISCLASSIFIED_ROWS]]


MISCLASSIFIED_ROWS = 10  # misclassified items the text summary names; the report's sources name them all


register_task(TaskKind(ClassificationReport.TASK, (), summary))


# --------------------------------------------------------------------------------------------------
# confusion-matrix picture
# --------------------------------------------------------------------------------------------------

def _text_size(draw, text: str, font) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return x1 - x0, y1 - y0


def _panel(name: str, run: dict, classes: Sequence[str]):
    """One heatmap: cells coloured by the row share (fraction of the true class), class names on both axes."""
    from PIL import Image, ImageDraw

    from .render import font as render_font

    font = render_font()
    confusion = np.asarray(run["confusion"], dtype=np.float64)
    c = len(classes)
    cell = int(np.clip(_PLOT_SIDE // max(c, 1), _CELL_MIN, _CELL_MAX))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(_text_size(probe, n, font)[0] for n in classes) + _MARGIN
    line_h = max(_text_size(probe, "Ag", font)[1], 10) + 4
    title = (f"{name}: OA {run['overall_accuracy']:.1%}, mean class {run['mean_class_accuracy']:.1%}"
             "  (rows: true class, columns: predicted; numbers: counts)")
    grid = c * cell
    bar_h = max(grid, _BAR_MIN_HEIGHT)
    scale_w = _BAR_GAP + max(_BAR_WIDTH + 6 + _text_size(probe, "100%", font)[0],
                             _text_size(probe, _SCALE_NAME, font)[0]) + _MARGIN
    width = max(label_w + grid + scale_w, _text_size(probe, title, font)[0]) + 2 * _MARGIN
    height = line_h + label_w + max(grid, bar_h) + line_h + 2 * _MARGIN
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((_MARGIN, _MARGIN), title, fill="black", font=font)
    x0, y0 = _MARGIN + label_w, _MARGIN + line_h + label_w

    share = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    colours = (_LOW + share[..., None] * (_HIGH - _LOW)).round().astype(np.uint8)  # (C, C, 3)
    cells = np.kron(colours, np.ones((cell, cell, 1), dtype=np.uint8))  # nearest-neighbour upscaling
    img.paste(Image.fromarray(cells, "RGB"), (x0, y0))
    for k in range(c + 1):  # grid lines
        draw.line([(x0 + k * cell, y0), (x0 + k * cell, y0 + grid)], fill=(200, 200, 200))
        draw.line([(x0, y0 + k * cell), (x0 + grid, y0 + k * cell)], fill=(200, 200, 200))
    _colour_scale(img, draw, font, x0 + grid + _BAR_GAP, y0, bar_h, line_h)
    show_counts = cell >= 18
    for k, n in enumerate(classes):
        tw, th = _text_size(draw, n, font)
        bx, by = draw.textbbox((0, 0), n, font=font)[:2]
        draw.text((x0 - tw - 4 - bx, y0 + k * cell + (cell - th) // 2 - by), n, fill="black", font=font)
        column = Image.new("RGB", (tw + 2, th + 4), "white")  # the column's name, turned upright
        ImageDraw.Draw(column).text((1 - bx, 2 - by), n, fill="black", font=font)
        column = column.rotate(90, expand=True)
        img.paste(column, (x0 + k * cell + (cell - column.width) // 2, y0 - column.height - 4))
        if show_counts:
            for j in range(c):
                if confusion[k, j]:
                    count = str(int(confusion[k, j]))
                    cw, ch = _text_size(draw, count, font)
                    ink = "white" if share[k, j] > 0.5 else "black"
                    draw.text((x0 + j * cell + (cell - cw) // 2, y0 + k * cell + (cell - ch) // 2 - 1), count,
                              fill=ink, font=font)
    return img


def _colour_scale(img, draw, font, x: int, y: int, height: int, line_h: int) -> None:
    """A vertical bar from a row share of 1 (top) to 0 (bottom) in the cells' colours, ticked, with its name."""
    from PIL import Image

    share = np.linspace(1, 0, height)[:, None, None]
    colours = (_LOW + share * (_HIGH - _LOW)).round().astype(np.uint8)
    img.paste(Image.fromarray(np.repeat(colours, _BAR_WIDTH, axis=1), "RGB"), (x, y))
    draw.rectangle([x - 1, y - 1, x + _BAR_WIDTH, y + height], outline=(150, 150, 150))
    for value in (0.0, 0.25, 0.5, 0.75, 1.0):
        ty = y + round((1 - value) * (height - 1))
        draw.line([(x + _BAR_WIDTH, ty), (x + _BAR_WIDTH + 3, ty)], fill="black")
        tw, th = _text_size(draw, f"{value:.0%}", font)
        draw.text((x + _BAR_WIDTH + 5, min(max(ty - th // 2 - 1, y - 2), y + height - th)), f"{value:.0%}",
                  fill="black", font=font)
    draw.text((x, y + height + 4), _SCALE_NAME, fill="black", font=font)


def save_confusion_png(path, report: dict) -> Path:
    """The confusion matrix of each run of ``report``, side by side, as a PNG."""
    from PIL import Image

    panels = [_panel(name, run, report["classes"]) for name, run in report["runs"].items()]
    width = sum(p.width for p in panels)
    sheet = Image.new("RGB", (width, max(p.height for p in panels)), "white")
    x = 0
    for p in panels:
        sheet.paste(p, (x, 0))
        x += p.width
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda f: sheet.save(f, format="PNG", **image_save_options("PNG")))


# the names the resume and sharding machinery had here before it moved to `pointfalip.batches`
_KEY_VERSION, _MADE_BY, _dumps = KEY_VERSION, MADE_BY, dumps_report
_dist, _barrier, _gather, _missing_ranges = dist_rank, barrier, gather, missing_ranges
__all__ = ["BASELINE", "FALIP", "FEWSHOT_SUFFIX", "PARTIAL_SUFFIX", "BatchCache", "BatchResult", "ClassificationReport",
           "ClassificationTask", "check_report_path", "summary",
           "confusion_path", "default_report_path", "distributed", "evaluate", "metrics", "ordered_batches",
           "partial_path", "run_batches", "run_key", "run_names", "save_confusion_png", "score_batch"]
