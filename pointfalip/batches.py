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
(`BatchCache.discard`); Ctrl-C, SIGTERM or SIGKILL keep it, to resume from.

The resume rules: the key names the data itself (each task's ``key()`` holds `files.data_identity` of the files it
reads), so a repaired or replaced dataset starts over, with a warning naming what changed; a batch file that
cannot be read, or whose contents the task finds impossible (its ``valid``), is computed again with a warning; one
run at a time holds a report's folder (a lock file naming the holder's pid, `BatchCache.acquire`): a second run on
the same report, or a folder that cannot be written, is a one-line InputError before any work. The report and the
task's other files are written whole (atomically) once every batch is done, the report last; a user error on the
way removes the files and the folder this run made.

A batch result is a dataclass whose fields are ints, arrays of the batch's items (first axis: the items),
mappings run -> such arrays, or lists of JSON values (stored as JSON text); `BatchCache` stores any such
dataclass in one ``.npz`` file and checks it on reading back.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
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

from .errors import InputError, shown
from .files import atomic_write

log = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"  # the resume cache: <report path> + this suffix, a folder
KEY_FILE = "key.json"
LOCK_FILE = "lock"  # held (flock) by the one run that writes the folder; names its pid
KEY_VERSION = 2  # bump when the batch files' contents change
MADE_BY = "pointfalip evaluate"  # the key file says who made the cache folder
_OWN_FILE = re.compile(r"key\.json|lock|batch_\d{9}\.npz|\..+\.tmp")  # the files the cache writes
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
    """InputError when the report's resume cache folder holds something this tool did not make, cannot be
    written, or is held by another run (its lock), before any work."""
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
    return _write_text(path, dumps_report(report) + "\n")


def _write_text(path: Union[str, Path], text: str) -> Path:
    """UTF-8 text written atomically; a character UTF-8 cannot hold (a file name's undecodable byte, kept by
    Python as a lone surrogate) is written as its JSON escape (``\\udcff``), so the file stays valid JSON."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8", "backslashreplace")))


# --------------------------------------------------------------------------------------------------
# resume cache
# --------------------------------------------------------------------------------------------------

class BatchCache:
    """Per-batch results (instances of the dataclass ``record``, which has ``start`` and ``indices``) in a folder,
    valid for one `run_key`; files are replaced atomically. ``validate(batch)`` (optional) says why a batch read
    back cannot be right (None when it can): such a batch is computed again."""

    def __init__(self, folder: Path, key: dict, runs: Sequence[str], record: Optional[type] = None,
                 validate: Optional[Callable[[Any], Optional[str]]] = None):
        self.folder = Path(folder)
        self.key = key
        self.runs = tuple(runs)
        self.record = record
        self.validate = validate
        self.created = False  # whether this run made the folder
        self.written: list[Path] = []  # the batch files this run wrote
        self._lock_fd: Optional[int] = None  # the lock file, while this run holds the folder

    def _stored_key(self) -> Optional[dict]:
        try:
            key = json.loads((self.folder / KEY_FILE).read_text())
        except (OSError, ValueError, RecursionError):
            return None
        return key if isinstance(key, dict) else None

    def _matches(self) -> bool:
        key = self._stored_key()
        return key is not None and key.get("hash") == self.key["hash"]

    def _ours(self) -> bool:
        """Whether the folder is a cache this tool made: its key file (or, before the key is written, its lock
        file) names pointfalip, and it holds nothing else than the files the cache writes."""
        try:
            names = [p.name for p in self.folder.iterdir()]
        except OSError:
            return False
        if not all(_OWN_FILE.fullmatch(n) for n in names):
            return False
        if KEY_FILE in names:
            key = self._stored_key()
            return key is not None and key.get("made_by") == MADE_BY
        try:
            return LOCK_FILE in names and (self.folder / LOCK_FILE).read_text().startswith(MADE_BY)
        except (OSError, UnicodeDecodeError):
            return False

    def check(self, free: bool = True) -> None:
        """InputError unless the folder is absent or a cache this tool made that this process can write and (with
        ``free``) no other run holds (run before any work; the other ranks of a torchrun share rank 0's hold)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"{self.folder} is a file; the evaluation keeps its resume cache there: move it")
        if not self.folder.exists():
            parent = next((p for p in self.folder.parents if p.exists()), None)
            if parent is not None and parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
                raise InputError(f"cannot make the resume folder {self.folder}: {parent} is not writable; choose "
                                 "another --out")
            return
        if not self._ours():
            raise InputError(f"{self.folder} exists and was not made by pointfalip evaluate; move it away or "
                             "choose another --out")
        if not os.access(self.folder, os.W_OK | os.X_OK):
            raise InputError(f"the resume folder {self.folder} is not writable; make it writable or choose "
                             "another --out")
        if free and self._lock_fd is None:
            holder = self._holder()
            if holder is not None:
                raise InputError(self._busy(holder))

    def _busy(self, holder: str) -> str:
        return (f"another run ({holder}) is writing the same report (it holds {self.folder / LOCK_FILE}); wait "
                "for it to end or choose another --out")

    def _holder(self) -> Optional[str]:
        """Who holds the lock ("pid N"), or None when nobody does."""
        path = self.folder / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _lock_owner(fd)
        finally:
            os.close(fd)
        return None

    def acquire(self) -> None:
        """Hold the folder for this run (made if absent): a lock file, locked while the run lasts (released by the
        system even when the process is killed) and naming this process. InputError when another run holds it or
        the folder cannot be written."""
        if self._lock_fd is not None:
            return
        self.check()
        path = self.folder / LOCK_FILE
        for _ in range(10):  # the file can be removed by a holder that ends while we open it: then open it again
            try:
                if not self.folder.exists():
                    self.folder.mkdir(parents=True)
                    self.created = True
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise InputError(f"cannot write the resume folder {self.folder} ({e.strerror or e}); choose "
                                 "another --out") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _lock_owner(fd)
                os.close(fd)
                raise InputError(self._busy(holder)) from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise InputError(f"{self.folder}: could not take its lock file; is another run starting and ending "
                             "on the same report?")
        os.ftruncate(fd, 0)
        os.write(fd, f"{MADE_BY} pid {os.getpid()}\n".encode())
        self._lock_fd = fd

    def release(self) -> None:
        """Let the folder go: the lock file removed (while still held), then the folder if it is empty."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            (self.folder / LOCK_FILE).unlink()
        os.close(fd)
        with contextlib.suppress(OSError):
            self.folder.rmdir()

    @contextlib.contextmanager
    def held(self, hold: bool = True) -> Iterator["BatchCache"]:
        """`acquire` ... `release` (nothing when ``hold`` is False: the other ranks of a torchrun)."""
        if hold:
            self.acquire()
        try:
            yield self
        finally:
            if hold:
                self.release()

    def open(self, fresh_if_stale: bool = True) -> bool:
        """Make the folder ready for this key; True when it already held this key's batches.

        A stale cache of this tool is emptied, with a warning naming what changed; a folder the tool cannot prove
        it made (no key or lock file of its own, or files it does not write) is never touched: that is a one-line
        InputError."""
        self.check(free=False)
        if self._matches():
            return True
        if not fresh_if_stale:
            return False
        old = self._stored_key()
        if old is not None:
            changed = sorted(k for k in set(old) | set(self.key) if k != "hash" and old.get(k) != self.key.get(k))
            log.warning("%s holds results of other inputs or arguments (changed: %s); starting afresh", self.folder,
                        ", ".join(changed[:6]) + (", ..." if len(changed) > 6 else ""))
        self.remove()
        self.created = self.created or not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(self.folder / KEY_FILE, lambda f: f.write(json.dumps(self.key, indent=1).encode()))
        except OSError as e:
            raise InputError(f"cannot write the resume folder {self.folder} ({e.strerror or e}); choose another "
                             "--out") from None
        return False

    def path(self, start: int) -> Path:
        return self.folder / f"batch_{start:09d}.npz"

    def _write(self, start: int, arrays: dict) -> None:
        """``arrays`` as the ``.npz`` of position ``start``, atomically; a file system that refuses it is an
        InputError (the run's own batches are then discarded)."""
        path = self.path(start)
        try:
            atomic_write(path, lambda fh: np.savez(fh, **arrays))
        except OSError as e:
            raise InputError(f"cannot write {path} ({e.strerror or e}); free some space or choose another "
                             "--out") from None
        self.written.append(path)

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
        self._write(b.start, arrays)

    def _decode(self, z, start: int):
        """The batch a ``.npz`` holds (any exception: unreadable)."""
        hints = typing.get_type_hints(self.record)
        values = {}
        for f in dataclasses.fields(self.record):
            if f.name + _JSON_SEP in z:
                values[f.name] = [tuple(v) if isinstance(v, list) else v
                                  for v in json.loads(str(z[f.name + _JSON_SEP]))]
            elif f.name in z:
                values[f.name] = int(z[f.name]) if hints.get(f.name) is int else z[f.name]
            else:
                values[f.name] = {r: z[f"{f.name}{_RUN_SEP}{r}"] for r in self.runs}
        return self.record(**values)

    def _inconsistent(self, b, start: int) -> Optional[str]:
        """Why a decoded batch does not fit position ``start`` (None when it does)."""
        n = len(b.indices)
        arrays = [v for f in dataclasses.fields(b) for v in
                  (getattr(b, f.name).values() if isinstance(getattr(b, f.name), dict) else [getattr(b, f.name)])
                  if isinstance(v, np.ndarray)]
        if b.start != start or any(a.ndim == 0 or len(a) != n for a in arrays):
            return "inconsistent contents"
        return None

    def load(self, start: int):
        """The result saved for position ``start``, or None (absent, unreadable, inconsistent or impossible:
        computed again, with a warning)."""
        path = self.path(start)
        if self.record is None or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                b = self._decode(z, start)
            why = self._inconsistent(b, start) or (self.validate(b) if self.validate is not None else None)
        except Exception as e:  # noqa: BLE001 - a damaged file raises anything (BadZipFile, EOFError, zlib.error, ...)
            why = f"unreadable ({type(e).__name__}: {' '.join(str(e).split())[:120]})"
        if why:
            log.warning("%s: %s; computing the batch again", path, why)
            return None
        return b

    def remove(self) -> None:
        """Delete the cache's own files (the lock file stays while this run holds it) and then the folder, if it
        is empty; nothing else."""
        if not self.folder.is_dir():
            return
        for p in self.folder.iterdir():
            if _OWN_FILE.fullmatch(p.name) and p.is_file() and not (p.name == LOCK_FILE and self._lock_fd is not None):
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


def _lock_owner(fd: int) -> str:
    """What a lock file says about its holder ("pid N"), read from an open descriptor."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace")
    except OSError:
        text = ""
    match = re.search(r"pid (\d+)", text)
    return f"pid {match.group(1)}" if match else "pid unknown"


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


TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


def torchrun_env() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) as torchrun sets them, (0, 1, 0) where unset; a one-line InputError for values
    no torchrun sets (not an integer, a rank outside the world, a world above 1 without a rank)."""
    values = {}
    for name, default in zip(TORCHRUN_VARIABLES, (0, 1, 0)):
        text = os.environ.get(name)
        if text is None or not text.strip():
            values[name] = None if name == "RANK" else default
            continue
        try:
            values[name] = int(text.strip(), 10)
        except ValueError:
            raise InputError(f"environment variable {name}={shown(text)} is not an integer; unset it, or start the "
                             "run with torchrun") from None
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    if world < 1:
        raise InputError(f"environment variable WORLD_SIZE={world} must be at least 1; unset it, or start the run "
                         "with torchrun")
    if rank is None:
        if world > 1:
            raise InputError(f"WORLD_SIZE={world} but RANK is not set; start the run with torchrun, or unset "
                             "WORLD_SIZE")
        rank = 0
    if not 0 <= rank < world:
        raise InputError(f"environment variable RANK={rank} is outside the world of WORLD_SIZE={world} processes "
                         f"(0 to {world - 1}); start the run with torchrun, or unset RANK")
    if local < 0:
        raise InputError(f"environment variable LOCAL_RANK={local} must be at least 0; start the run with torchrun, "
                         "or unset LOCAL_RANK")
    return rank, world, local


@contextlib.contextmanager
def distributed(device: Union[str, torch.device] = "cpu") -> Iterator[str]:
    """Join torchrun's process group when ``WORLD_SIZE`` > 1 (NCCL on CUDA, gloo on the CPU); yields the device
    this rank should use (``cuda:LOCAL_RANK`` on CUDA). A no-op for a single process or an existing group. Garbage
    in torchrun's variables (`torchrun_env`), a LOCAL_RANK past the GPUs or a rendezvous that cannot start (no
    MASTER_ADDR, ...) are one-line InputErrors."""
    import torch.distributed as dist

    _, world, local = torchrun_env()
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        yield str(device)
        return
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise InputError(f"unknown device '{device}'") from e
    if dev.type == "cuda":
        if local >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                             "start as many processes per node as GPUs (torchrun --nproc-per-node)")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        backend = "gloo"
    try:
        dist.init_process_group(backend)
    except (ValueError, RuntimeError) as e:
        raise InputError(f"cannot join the torchrun process group ({shown(' '.join(str(e).split()), 200)}); start "
                         "the run with torchrun, or unset WORLD_SIZE") from e
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

    def write(self, report: Report) -> Sequence[Path]:
        """The files the report names besides itself (rank 0 only), each written whole; returns their paths."""

    def valid(self, batch: Any) -> Optional[str]:
        """Optional: why a batch read back from the resume folder cannot be right (a tampered or stale file:
        indices outside its position, labels that are not the dataset's, values out of range), None when it can."""


def check_batch_size(batch_size: Any) -> int:
    """``batch_size`` as an int, or a one-line InputError."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def run_evaluation(task: EvaluationTask, out: Union[str, Path], progress: bool = True) -> Report:
    """Run ``task``: its batches computed or resumed from ``<out>.partial/`` (every rank its block; rank 0 holds the
    folder's lock for the whole run), its report made from all of them, written to ``out`` (JSON) with the task's
    other files on rank 0, the resume cache removed once every rank is done. Every rank returns the same report.

    The report's text is made before any file is written (a value JSON cannot hold fails first); the task's files
    are written next and the report last, each whole; when a later one fails the earlier ones are removed."""
    out = Path(out)
    rank, _ = dist_rank()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"cannot make the folder of the report {out} ({e.strerror or e})") from None
    key = run_key({"task": task.name, **task.key()})
    make_cache = getattr(task, "cache", None)
    folder = partial_path(out)
    cache = make_cache(folder, key) if make_cache else BatchCache(folder, key, task.runs, task.record)
    cache.validate = getattr(task, "valid", None)
    with cache.held(rank == 0):
        results = run_batches(cache, task.n_items, task.batch_size, task.compute, progress, task.description)
        try:
            report = task.report(ordered_batches(results, task.n_items, task.batch_size), out)
            if rank == 0:
                _write_outputs(task, report, out)
        except InputError:
            barrier()
            if rank == 0:
                cache.remove()
            raise
        barrier()
        cache.remove()
    return report


def _write_outputs(task: EvaluationTask, report: Report, out: Path) -> None:
    """The task's files, then the report; nothing of them stays when one of them fails."""
    text = dumps_report(report.to_dict()) + "\n"
    written = [Path(p) for p in (task.write(report) or ())]
    try:
        _write_text(out, text)
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    log.info("report written to %s", out)


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
