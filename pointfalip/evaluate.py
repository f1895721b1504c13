"""Dataset evaluation: zero-shot accuracy of the 3D pipeline on a test set, streamed, resumable and sharded.

`evaluate(model, dataset)` classifies every object of a `datasets.Dataset` against the dataset's own class names
and returns (and writes) a report::

    {"dataset", "root", "split", "model", "pretrained", "precision", "preset", "config", "n", "items",
     "skipped": [{"index", "source", "reason"}], "classes", "labels",
     "runs": {"falip": RUN, "baseline": RUN}, "report", "confusion_png"}

    RUN = {"overall_accuracy", "mean_class_accuracy", "per_class": {class: accuracy},
           "confusion": C×C counts (rows = true class), "predictions": class index of item i (null if skipped)}

``n`` counts the objects evaluated, ``items`` the dataset's items (``n`` plus the skipped ones); accuracies are
fractions; ``mean_class_accuracy`` averages the classes present among the evaluated objects. Only the runs made
are present: ``falip`` (default), ``baseline`` (``falip=False``), or both with ``compare=True``, where one
`FalipCLIP.encode_image_pair` call per chunk of images gives both from the same projections.

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

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from . import __version__
from .datasets import Dataset
from .errors import InputError
from .files import atomic_write, file_identity
from .model import FalipCLIP
from .recognize import Recognizer, RecognizerConfig

log = logging.getLogger(__name__)

FALIP, BASELINE = "falip", "baseline"  # run names in the report
FEWSHOT_SUFFIX = "+fewshot"  # a run scored with a few-shot cache
PARTIAL_SUFFIX = ".partial"  # the resume cache: <report path> + this suffix, a folder
_KEY_FILE = "key.json"
_KEY_VERSION = 1  # bump when the batch files' contents change
_MADE_BY = "pointfalip evaluate"  # the key file says who made the cache folder
_OWN_FILE = re.compile(r"key\.json|batch_\d{9}\.npz|\..+\.tmp")  # the files the cache writes

# confusion-matrix picture
_CELL_MAX, _CELL_MIN = 28, 6  # pixels per cell, for few and for many classes
_PLOT_SIDE = 640  # pixels the grid aims at
_LOW, _HIGH = np.array([255, 255, 255]), np.array([8, 48, 107])  # colour of a row share of 0 and of 1
_MARGIN = 8


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------

def metrics(labels: Sequence[int], predictions: Sequence[int], classes: Sequence[str]) -> dict:
    """Accuracy figures of predicted against true class indices (both (N,) of ints in [0, C)).

    Returns overall_accuracy (fraction correct), mean_class_accuracy (mean of per_class), per_class (accuracy of
    every class present in ``labels``, by name, in class order) and confusion (C×C counts, rows = true class).
    """
    labels = np.asarray(labels, dtype=np.int64)
    preds = np.asarray(predictions, dtype=np.int64)
    c = len(classes)
    if labels.shape != preds.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and predictions {preds.shape} must be (N,) each")
    confusion = np.zeros((c, c), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    support, correct = confusion.sum(axis=1), np.diag(confusion)
    per_class = {classes[k]: float(correct[k] / support[k]) for k in range(c) if support[k]}
    return {
        "overall_accuracy": float(correct.sum() / len(labels)) if len(labels) else 0.0,
        "mean_class_accuracy": float(np.mean(list(per_class.values()))) if per_class else 0.0,
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }


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
    payload = {
        "made_by": _MADE_BY,
        "version": _KEY_VERSION,
        "pointfalip": __version__,
        "dataset": dataset.name,
        "root": str(Path(dataset.root).resolve()),
        "split": dataset.split,
        "layout": dataset.layout,
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
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return {**json.loads(text), "hash": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def _cache_identity(cache) -> str:
    """sha256 of a few-shot cache's keys, labels and settings (an in-memory cache has no file identity)."""
    digest = hashlib.sha256(cache.keys.numpy().tobytes())
    digest.update(json.dumps([cache.labels, cache.alpha, cache.beta, cache.metadata], sort_keys=True,
                             default=str).encode())
    return digest.hexdigest()


class BatchCache:
    """Per-batch results in a folder, valid for one `run_key`; files are replaced atomically."""

    def __init__(self, folder: Path, key: dict, runs: Sequence[str]):
        self.folder = Path(folder)
        self.key = key
        self.runs = tuple(runs)

    def _matches(self) -> bool:
        try:
            return json.loads((self.folder / _KEY_FILE).read_text()).get("hash") == self.key["hash"]
        except (OSError, ValueError):
            return False

    def _ours(self) -> bool:
        """Whether the folder is a cache this tool made: its key file names pointfalip and it holds nothing else
        than the files the cache writes."""
        try:
            key = json.loads((self.folder / _KEY_FILE).read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(key, dict) or key.get("made_by") != _MADE_BY:
            return False
        return all(_OWN_FILE.fullmatch(p.name) for p in self.folder.iterdir())

    def check(self) -> None:
        """InputError unless the folder is absent or a cache this tool made (run before any work)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder} is a file; the evaluation keeps its resume cache there: move it")
        if self.folder.exists() and not self._ours():
            raise InputError(f"{self.folder} exists and was not made by pointfalip evaluate; move it away or "
                             "choose another --out")

    def open(self, fresh_if_stale: bool = True) -> bool:
        """Make the folder ready for this key; True when it already held this key's batches.

        A stale cache of this tool is emptied; a folder the tool cannot prove it made (no key file of its own,
        or files it does not write) is never touched: that is a one-line InputError."""
        self.check()
        if self._matches():
            return True
        if not fresh_if_stale:
            return False
        if self.folder.exists():
            log.warning("%s holds results of other arguments; starting afresh", self.folder)
            self.remove()
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / _KEY_FILE, lambda f: f.write(json.dumps(self.key, indent=1).encode()))
        return False

    def path(self, start: int) -> Path:
        return self.folder / f"batch_{start:09d}.npz"

    def save(self, b: BatchResult) -> None:
        arrays = {"start": np.int64(b.start), "indices": b.indices, "labels": b.labels,
                  "skipped_index": np.array([s[0] for s in b.skipped], dtype=np.int64),
                  "skipped_source": np.array([s[1] for s in b.skipped], dtype=str),
                  "skipped_reason": np.array([s[2] for s in b.skipped], dtype=str)}
        arrays.update({f"pred_{r}": b.predictions[r] for r in self.runs})
        atomic_write(self.path(b.start), lambda f: np.savez(f, **arrays))

    def load(self, start: int) -> Optional[BatchResult]:
        path = self.path(start)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                preds = {r: z[f"pred_{r}"].astype(np.int64) for r in self.runs}
                skipped = [(int(i), str(s), str(r)) for i, s, r in
                           zip(z["skipped_index"], z["skipped_source"], z["skipped_reason"])]
                b = BatchResult(int(z["start"]), z["indices"].astype(np.int64), z["labels"].astype(np.int64),
                                preds, skipped)
        except (OSError, ValueError, KeyError) as e:
            log.warning("%s: unreadable (%s); computing the batch again", path, e)
            return None
        if b.start != start or any(len(p) != len(b.indices) for p in preds.values()):
            log.warning("%s: inconsistent contents; computing the batch again", path)
            return None
        return b

    def remove(self) -> None:
        """Delete the cache's own files and then the folder, if it is empty; nothing else."""
        if not self.folder.is_dir():
            return
        for p in self.folder.iterdir():
            if _OWN_FILE.fullmatch(p.name) and p.is_file():
                p.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.folder.rmdir()


# --------------------------------------------------------------------------------------------------
# torch.distributed
# --------------------------------------------------------------------------------------------------

def _dist():
    """(rank, world size) of the current process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    if _dist()[1] > 1:
        dist.barrier()


@contextlib.contextmanager
def distributed(device: Union[str, torch.device] = "cpu") -> Iterator[str]:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, gloo on the CPU); yields the device
    this rank should use (``cuda:LOCAL_RANK`` on CUDA). A no-op for a single process or an existing group."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        yield str(device)
        return
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise InputError(f"unknown device '{device}'") from e
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend)
    try:
        yield str(dev)
    finally:
        dist.destroy_process_group()


def _gather(batches: list) -> list:
    import torch.distributed as dist

    if _dist()[1] == 1:
        return batches
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, batches)
    return [b for part in parts for b in part]


# --------------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------------

def default_report_path(dataset_name: str) -> Path:
    """``evaluate_<dataset>.json`` in the current folder."""
    return Path(f"evaluate_{dataset_name}.json")


def partial_path(out: Union[str, Path]) -> Path:
    """The resume cache of the report ``out``."""
    return Path(str(out) + PARTIAL_SUFFIX)


def check_report_path(out: Union[str, Path]) -> None:
    """InputError when the report's resume cache folder holds something this tool did not make."""
    BatchCache(partial_path(out), {}, ()).check()


def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="obj", desc=desc, dynamic_ncols=True, smoothing=0.1,
                disable=not (enabled and sys.stderr.isatty()))


def run_batches(cache: BatchCache, n_items: int, batch_size: int, compute: Callable[[int, int], Iterator],
                progress: bool, desc: str) -> list:
    """The batches of every rank: the resume cache opened (rank 0 first), this rank's block of batch positions
    taken from the cache where done and computed otherwise (``compute(lo, hi)`` yields the results of the
    positions in [lo, hi), each saved as it comes), then gathered from all ranks."""
    rank, world = _dist()
    if rank == 0:
        resumed = cache.open()
    _barrier()
    if rank != 0:
        resumed = cache.open()  # the same folder on a shared file system; this node's own otherwise
    starts = list(range(0, n_items, batch_size))
    mine = starts[rank * len(starts) // world:(rank + 1) * len(starts) // world]
    done = {s: b for s in mine if (b := cache.load(s)) is not None}
    if resumed and rank == 0:
        log.info("%s: resuming, %d of %d batches done", cache.folder, len(done), len(mine))

    def span(s: int) -> int:
        return min(s + batch_size, n_items) - s

    results = list(done.values())
    bar = _progress(sum(span(s) for s in mine), sum(span(s) for s in done), progress and rank == 0, desc)
    try:
        for lo, hi in _missing_ranges(mine, done, batch_size):
            for b in compute(lo, hi):
                cache.save(b)
                results.append(b)
                bar.update(span(b.start))
    finally:
        bar.close()
    return _gather(results)


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
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    batch_size = int(batch_size)
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
    out = Path(out) if out is not None else default_report_path(dataset.name)
    out.parent.mkdir(parents=True, exist_ok=True)

    rank, _ = _dist()
    key = run_key(model, dataset, preset_name, rec.config, runs, batch_size,
                  fewshot=overrides.get("fewshot") or (protocol and json.dumps(protocol, sort_keys=True)))
    cache = BatchCache(partial_path(out), key, runs)

    def compute(lo: int, hi: int) -> Iterator[BatchResult]:
        for start, indices, clouds, labels_, skipped in _positions(dataset, batch_size, lo, hi):
            yield _classify(rec, runs, dataset, start, indices, clouds, labels_, skipped, scorers)

    results = run_batches(cache, len(dataset), batch_size, compute, progress, f"{dataset.name} {'+'.join(runs)}")
    report = _report(model, dataset, preset_name, rec, runs, results, batch_size)
    if protocol is not None:
        _merge_seeds(report, protocol)
    if report["n"] == 0:
        _barrier()
        if rank == 0:
            cache.remove()
        raise InputError(f"nothing to evaluate: all {len(dataset)} item(s) of {dataset.name} under {dataset.root} "
                         f"were skipped (first: {report['skipped'][0]['source']}: {report['skipped'][0]['reason']})")
    report["report"] = str(out)
    report["confusion_png"] = str(out.with_suffix("")) + ".confusion.png"
    if rank == 0:
        atomic_write(out, lambda f: f.write((_dumps(report) + "\n").encode("utf-8")))
        save_confusion_png(report["confusion_png"], report)
        log.info("report written to %s", out)
    _barrier()
    cache.remove()
    return report


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
    for seed in seeds:
        indices = fewshot.draw_shots(train, shots, seed)
        feats, plain, targets, sources = fewshot.embed_examples(rec, train, indices, with_plain=with_plain,
                                                                progress=progress)
        record["examples"][str(seed)] = sources
        for run in runs:
            source_rec = plain_rec if _features_of(run) == BASELINE else rec
            use = plain if (with_plain and _features_of(run) == BASELINE) else feats
            cache = fewshot.cache_from_features(source_rec, use, targets, shots, train.num_points)
            scorer = copy.copy(source_rec)
            scorer.use_fewshot(cache)
            scorers[f"{run}{FEWSHOT_SUFFIX}{SEED_MARK}{seed}"] = scorer
    return scorers, record


def _merge_seeds(report: dict, protocol: dict) -> None:
    """Fold every seed's few-shot run into one run: means, spreads (population std) and the seeds' own runs."""
    merged: dict = {}
    for name in [n for n in report["runs"] if SEED_MARK in n]:
        base, seed = name.split(SEED_MARK)
        merged.setdefault(base, {})[seed] = report["runs"].pop(name)
    for base, by_seed in merged.items():
        runs = list(by_seed.values())
        run = {}
        for key in ("overall_accuracy", "mean_class_accuracy"):
            values = np.array([r[key] for r in runs])
            run[key], run[f"{key}_std"] = float(values.mean()), float(values.std())
        run["per_class"] = {c: float(np.mean([r["per_class"][c] for r in runs])) for c in runs[0]["per_class"]}
        run["confusion"] = np.sum([r["confusion"] for r in runs], axis=0).tolist()  # counts over all seeds
        run["seeds"] = by_seed
        report["runs"][base] = run
    report["fewshot"] = protocol


def _dumps(value, indent: int = 0) -> str:
    """JSON with objects indented and lists of numbers (a prediction list, a confusion row) on one line."""
    pad = " " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(str(k))}: {_dumps(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(pad + _dumps(v, indent + 1) for v in value) + "\n" + " " * indent + "]"
    return json.dumps(value, ensure_ascii=False)


def _missing_ranges(starts: list, done: dict, batch_size: int) -> list[tuple[int, int]]:
    """Contiguous [lo, hi) item ranges of the batch starts not yet done."""
    ranges = []
    for s in starts:
        if s in done:
            continue
        if ranges and ranges[-1][1] == s:
            ranges[-1] = (ranges[-1][0], s + batch_size)
        else:
            ranges.append((s, s + batch_size))
    return ranges


def ordered_batches(results: list, n_items: int, batch_size: int) -> list:
    """Every batch position's result, in dataset order; a missing position is a bug (RuntimeError)."""
    expected = set(range(0, n_items, batch_size))
    got = {b.start for b in results}
    if got != expected:  # a bug, not the user's doing
        raise RuntimeError(f"batches missing from the evaluation: {sorted(expected - got)[:5]}")
    return sorted(results, key=lambda b: b.start)


def _report(model, dataset: Dataset, preset_name: str, rec: Recognizer, runs, results: list,
            batch_size: int) -> dict:
    results = ordered_batches(results, len(dataset), batch_size)
    indices = np.concatenate([b.indices for b in results]).astype(np.int64)
    labels = np.concatenate([b.labels for b in results]).astype(np.int64)
    skipped = sorted({s[0]: s for b in results for s in b.skipped}.values())
    report = {
        "dataset": dataset.name,
        "root": str(dataset.root),
        "split": dataset.split,
        "model": str(model.name),
        "pretrained": str(model.pretrained),
        "precision": str(model.precision),
        "preset": preset_name,
        "config": json.loads(json.dumps(dataclasses.asdict(rec.config), default=str)),
        "n": int(len(indices)),
        "items": len(dataset),
        "skipped": [{"index": i, "source": s, "reason": r} for i, s, r in skipped],
        "classes": list(dataset.classes),
        "labels": dataset.labels.tolist(),
        "runs": {},
    }
    for r in runs:
        preds = np.concatenate([b.predictions[r] for b in results]).astype(np.int64)
        by_item: list = [None] * len(dataset)
        for i, p in zip(indices.tolist(), preds.tolist()):
            by_item[i] = p
        report["runs"][r] = {**metrics(labels, preds, dataset.classes), "predictions": by_item}
    return report


# --------------------------------------------------------------------------------------------------
# confusion-matrix picture
# --------------------------------------------------------------------------------------------------

def _text_size(draw, text: str, font) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return x1 - x0, y1 - y0


def _panel(name: str, run: dict, classes: Sequence[str]):
    """One heatmap: cells coloured by the row share (fraction of the true class), class names on both axes."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    confusion = np.asarray(run["confusion"], dtype=np.float64)
    c = len(classes)
    cell = int(np.clip(_PLOT_SIDE // max(c, 1), _CELL_MIN, _CELL_MAX))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_w = max(_text_size(probe, n, font)[0] for n in classes) + _MARGIN
    line_h = max(_text_size(probe, "Ag", font)[1], 10) + 4
    title = (f"{name}: OA {run['overall_accuracy']:.1%}, mean class {run['mean_class_accuracy']:.1%}"
             "  (rows: true, columns: predicted)")
    grid = c * cell
    width = max(label_w + grid, _text_size(probe, title, font)[0]) + 2 * _MARGIN
    height = line_h + label_w + grid + 2 * _MARGIN
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
    show_counts = cell >= 18
    for k, n in enumerate(classes):
        tw, th = _text_size(draw, n, font)
        draw.text((x0 - tw - 4, y0 + k * cell + (cell - th) // 2), n, fill="black", font=font)
        column = Image.new("RGB", (tw + 2, th + 4), "white")  # the column's name, turned upright
        ImageDraw.Draw(column).text((0, 0), n, fill="black", font=font)
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
    sheet.save(path)
    return path
