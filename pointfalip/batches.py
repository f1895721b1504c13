"""Streamed, resumable, sharded runs over a dataset in batches: the machinery every evaluation shares.

An evaluation is an `EvaluationTask` (its key, the computation of a range of batch positions, its report) run by
`run_evaluation`, which owns the skeleton every evaluation had written out: the batch-size check, the resume
cache, `run_batches`, the report (a `Report` dataclass, ``to_dict()`` for JSON) written on rank 0, the barrier.
`register_task` records each kind of evaluation (its name, the datasets it serves, its text summary) so that a
caller picks one by dataset name (`task_for_dataset`) instead of comparing strings.

A run is cut into batch positions ``[start, start + batch_size)``. `run_batches` computes the positions of this
rank (under ``torchrun``, rank r takes the r-th contiguous block; batches start at multiples of ``batch_size``
whatever the number of ranks, so each item is computed in the same batch as in one process), saves each
position's result in a `BatchCache` folder (``<report>.partial/``) under a key of every argument that changes the
results (`run_key`), reuses the positions a previous run with the same key left, gathers every rank's results and
returns them; `ordered_batches` puts them in dataset order. A run that ends on a user error removes what it wrote
(`BatchCache.discard`); Ctrl-C keeps it, to resume from.

A batch result is a dataclass whose fields are ints, arrays of the batch's items (first axis: the items),
mappings run -> such arrays, or lists of JSON values (stored as JSON text); `BatchCache` stores any such
dataclass in one ``.npz`` file and checks it on reading back.
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
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Optional, Protocol, Sequence, Union

import numpy as np
import torch

from .errors import InputError
from .files import atomic_write

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"  # the resume cache: <report path> + this suffix, a folder
KEY_FILE = "key.json"
KEY_VERSION = 2  # bump when the batch files' contents change
MADE_BY = "pointfalip evaluate"  # the key file says who made the cache folder
_OWN_FILE = re.compile(r"key\.json|batch_\d{9}\.npz|\..+\.tmp")  # the files the cache writes
_RUN_SEP = "@"  # a mapping field's entry in the .npz: "<field>@<run>"
_JSON_SEP = "#json"  # a list field's entry: "<field>#json"


def run_key(payload: dict) -> dict:
    """``payload`` (everything that changes a run's results, JSON-able with `str` for the rest) with the tool's
    marks and its sha256 under "hash"."""
    text = json.dumps({"made_by": MADE_BY, "version": KEY_VERSION, **payload}, sort_keys=True, default=str)
    return {**json.loads(text), "hash": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def partial_path(out: Union[str, Path]) -> Path:
    """The resume cache of the report ``out``."""
    return Path(str(out) + PARTIAL_SUFFIX)


def check_report_path(out: Union[str, Path]) -> None:
    """InputError when the report's resume cache folder holds something this tool did not make."""
    BatchCache(partial_path(out), {}, ()).check()


def dumps_report(value, indent: int = 0) -> str:
    """JSON with objects indented and lists of numbers (a prediction list, a confusion row) on one line; a
    non-finite number is a ValueError before anything is written."""
    pad = " " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(str(k))}: {dumps_report(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(pad + dumps_report(v, indent + 1) for v in value) + "\n" + " " * indent + "]"
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def write_report(path: Union[str, Path], report: dict) -> Path:
    """``report`` as JSON (`dumps_report`), written atomically."""
    text = dumps_report(report) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


# --------------------------------------------------------------------------------------------------
# resume cache
# --------------------------------------------------------------------------------------------------

class BatchCache:
    """Per-batch results (instances of the dataclass ``record``, which has ``start`` and ``indices``) in a folder,
    valid for one `run_key`; files are replaced atomically."""

    def __init__(self, folder: Path, key: dict, runs: Sequence[str], record: Optional[type] = None):
        self.folder = Path(folder)
        self.key = key
        self.runs = tuple(runs)
        self.record = record
        self.created = False  # whether this run made the folder
        self.written: list[Path] = []  # the batch files this run wrote

    def _matches(self) -> bool:
        try:
            return json.loads((self.folder / KEY_FILE).read_text()).get("hash") == self.key["hash"]
        except (OSError, ValueError):
            return False

    def _ours(self) -> bool:
        """Whether the folder is a cache this tool made: its key file names pointfalip and it holds nothing else
        than the files the cache writes."""
        try:
            key = json.loads((self.folder / KEY_FILE).read_text())
        except (OSError, ValueError):
            return False
        if not isinstance(key, dict) or key.get("made_by") != MADE_BY:
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
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write(self.folder / KEY_FILE, lambda f: f.write(json.dumps(self.key, indent=1).encode()))
        return False

    def path(self, start: int) -> Path:
        return self.folder / f"batch_{start:09d}.npz"

    def save(self, b) -> None:
        """One batch result as ``.npz``: arrays and ints as they are, run mappings as ``field@run``, lists as
        JSON text."""
        arrays = {}
        for f in dataclasses.fields(b):
            value = getattr(b, f.name)
            if isinstance(value, dict):
                arrays.update({f"{f.name}{_RUN_SEP}{r}": np.asarray(value[r]) for r in self.runs})
            elif isinstance(value, (list, tuple)):
                arrays[f.name + _JSON_SEP] = np.array(json.dumps(value, default=str))
            else:
                arrays[f.name] = np.asarray(value)
        path = self.path(b.start)
        atomic_write(path, lambda fh: np.savez(fh, **arrays))
        self.written.append(path)

    def load(self, start: int):
        """The result saved for position ``start``, or None (absent, unreadable or inconsistent: computed again)."""
        path = self.path(start)
        if self.record is None or not path.is_file():
            return None
        hints = typing.get_type_hints(self.record)
        try:
            with np.load(path, allow_pickle=False) as z:
                values = {}
                for f in dataclasses.fields(self.record):
                    if f.name + _JSON_SEP in z:
                        values[f.name] = [tuple(v) if isinstance(v, list) else v
                                          for v in json.loads(str(z[f.name + _JSON_SEP]))]
                    elif f.name in z:
                        values[f.name] = int(z[f.name]) if hints.get(f.name) is int else z[f.name]
                    else:
                        values[f.name] = {r: z[f"{f.name}{_RUN_SEP}{r}"] for r in self.runs}
                b = self.record(**values)
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("%s: unreadable (%s); computing the batch again", path, e)
            return None
        n = len(b.indices)
        arrays = [v for f in dataclasses.fields(b) for v in
                  (getattr(b, f.name).values() if isinstance(getattr(b, f.name), dict) else [getattr(b, f.name)])
                  if isinstance(v, np.ndarray)]
        if b.start != start or any(a.ndim == 0 or len(a) != n for a in arrays):
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

    def discard(self) -> None:
        """Remove what this run made: the whole folder if it made it, else the batch files it wrote."""
        if self.created:
            self.remove()
            return
        for p in self.written:
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# torch.distributed
# --------------------------------------------------------------------------------------------------

def dist_rank() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    import torch.distributed as dist

    if dist_rank()[1] > 1:
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


def gather(batches: list) -> list:
    """Every rank's batch results, on every rank."""
    import torch.distributed as dist

    if dist_rank()[1] == 1:
        return batches
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, batches)
    return [b for part in parts for b in part]


# --------------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------------

def _progress(total: int, initial: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="obj", desc=desc, dynamic_ncols=True, smoothing=0.1,
                disable=not (enabled and sys.stderr.isatty()))


def missing_ranges(starts: list, done: dict, batch_size: int) -> list[tuple[int, int]]:
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


def run_batches(cache: BatchCache, n_items: int, batch_size: int, compute: Callable[[int, int], Iterator],
                progress: bool, desc: str) -> list:
    """The batches of every rank: the resume cache opened (rank 0 first), this rank's block of batch positions
    taken from the cache where done and computed otherwise (``compute(lo, hi)`` yields the results of the
    positions in [lo, hi), each saved as it comes), then gathered from all ranks. A user error (InputError) on
    the way removes what this run wrote (`BatchCache.discard`) before it propagates."""
    rank, world = dist_rank()
    if rank == 0:
        resumed = cache.open()
    barrier()
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
        for lo, hi in missing_ranges(mine, done, batch_size):
            for b in compute(lo, hi):
                cache.save(b)
                results.append(b)
                bar.update(span(b.start))
    except InputError:
        cache.discard()
        raise
    finally:
        bar.close()
    return gather(results)


def ordered_batches(results: list, n_items: int, batch_size: int) -> list:
    """Every batch position's result, in dataset order; a missing position is a bug (RuntimeError)."""
    expected = set(range(0, n_items, batch_size))
    got = {b.start for b in results}
    if got != expected:  # a bug, not the user's doing
        raise RuntimeError(f"batches missing from the evaluation: {sorted(expected - got)[:5]}")
    return sorted(results, key=lambda b: b.start)



# --------------------------------------------------------------------------------------------------
# evaluation tasks
# --------------------------------------------------------------------------------------------------

class Report:
    """Base of the evaluation reports (dataclasses): ``task`` names the kind, `to_dict` is the JSON; fields named
    in ``OMITTED_WHEN_NONE`` are left out of the JSON while they are None."""

    TASK: ClassVar[str] = ""
    OMITTED_WHEN_NONE: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict:
        """The report as JSON values, ``"task"`` first."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"task": self.TASK, **{k: v for k, v in values.items()
                                      if not (k in self.OMITTED_WHEN_NONE and v is None)}}


@dataclasses.dataclass(kw_only=True)
class DatasetReport(Report):
    """The head every report of a dataset of 3D objects starts with: what was evaluated, with which model and
    settings, and how many items were evaluated (``n``) of the dataset's (``items``)."""

    dataset: str
    root: str
    split: str
    model: str
    pretrained: str
    precision: str
    preset: str
    config: dict
    n: int
    items: int


class EvaluationTask(Protocol):
    """One evaluation as `run_evaluation` runs it.

    ``n_items`` batch positions' worth of items in batches of ``batch_size``; ``runs`` the configurations scored;
    ``record`` the dataclass a batch's result is (`BatchCache` stores it); ``description`` the progress bar's.
    """

    name: str
    n_items: int
    batch_size: int
    runs: tuple[str, ...]
    record: type
    description: str

    def key(self) -> dict:
        """Everything that changes the results (JSON-able; hashed by `run_key`)."""

    def compute(self, lo: int, hi: int) -> Iterator[Any]:
        """The results of the batch positions in [lo, hi), in order."""

    def report(self, batches: list, out: Path) -> Report:
        """The report of every batch (in dataset order), to be written to ``out``; InputError when it has nothing
        to report."""

    def write(self, report: Report) -> None:
        """The files the report names besides itself (rank 0 only)."""


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as an int, or a one-line InputError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def run_evaluation(task: EvaluationTask, out: Union[str, Path], progress: bool = True) -> Report:
    """Run ``task``: its batches computed or resumed from ``<out>.partial/`` (every rank its block), its report
    made from all of them, written to ``out`` (JSON) with the task's other files on rank 0, the resume cache
    removed once every rank is done. Every rank returns the same report."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    key = run_key({"task": task.name, **task.key()})
    make_cache = getattr(task, "cache", None)
    folder = partial_path(out)
    cache = make_cache(folder, key) if make_cache else BatchCache(folder, key, task.runs, task.record)
    results = run_batches(cache, task.n_items, task.batch_size, task.compute, progress, task.description)
    rank, _ = dist_rank()
    try:
        report = task.report(ordered_batches(results, task.n_items, task.batch_size), out)
    except InputError:
        barrier()
        if rank == 0:
            cache.remove()
        raise
    if rank == 0:
        task.write(report)
        write_report(out, report.to_dict())
        log.info("report written to %s", out)
    barrier()
    cache.remove()
    return report


@dataclasses.dataclass(frozen=True)
class TaskKind:
    """A kind of evaluation: its report's ``task`` name, the datasets it serves (folded names, see
    `task_for_dataset`) and the text summary of its report."""

    name: str
    datasets: tuple[str, ...]
    summary: Callable[[dict], str]


TASKS: dict[str, TaskKind] = {}
DEFAULT_TASK = "classification"  # the task of a dataset no other task claims (a class folder, a 3D release)


def register_task(kind: TaskKind) -> TaskKind:
    """Record a kind of evaluation (one registration each)."""
    if kind.name in TASKS:
        raise ValueError(f"evaluation task {kind.name!r} is registered twice")
    TASKS[kind.name] = kind
    return kind


def _fold(name: str) -> str:
    return name.lower().replace("_", "-")


def task_for_dataset(dataset: str) -> TaskKind:
    """The kind of evaluation of ``dataset`` (case and ``_``/``-`` folded); the classification task for any dataset
    no other kind claims."""
    for kind in TASKS.values():
        if _fold(dataset) in {_fold(d) for d in kind.datasets}:
            return kind
    return TASKS[DEFAULT_TASK]


def list_tasks() -> list[str]:
    return list(TASKS)
