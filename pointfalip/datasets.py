"""Readers of the standard 3D classification test sets, and of a user's own labelled folder.

Every dataset yields ``(points, label)``: points an ``(N, 3)`` float32 array in the release's own coordinates
(not normalised; `up_axis` says which axis is up), label the index of the class in `Dataset.classes`, which are
the release's raw class names in its label order (``"night_stand"``; see `prompts.humanize` for readable ones).

==========================  ==========================================================================  =======
name                        layout under ``root``                                                        up axis
==========================  ==========================================================================  =======
``modelnet40``              h5 release ``modelnet40_ply_hdf5_2048`` (``ply_data_test*.h5``,              y
                            ``test_files.txt``, ``shape_names.txt``), directly or in that subfolder;
                            or the raw tree ``<class>/test/*.off``, directly or in ``ModelNet40/``        z
``modelnet10``              raw tree ``<class>/test/*.off``, directly or in ``ModelNet10/``               z
``scanobjectnn-obj_only``   ``main_split_nobg/test_objectdataset.h5``                                     y
``scanobjectnn-obj_bg``     ``main_split/test_objectdataset.h5``                                          y
``scanobjectnn-pb_t50_rs``  ``main_split/test_objectdataset_augmentedrot_scale75.h5``                     y
``folder``                  ``<class name>/<any file io.load_points reads>`` (sub-folders searched too)   y [#]_
``shapenetpart``            h5 release ``shapenet_part_seg_hdf5_data`` (``ply_data_test*.h5``,            y
                            ``test_hdf5_file_list.txt``), directly, in ``hdf5_data/`` or in that
                            folder's name; part segmentation (`ShapeNetPartDataset`)
``scannet``                 ScanNet v2 ``scans/<scene>/`` with its label table and split files; splits  z
                            val, train, test; items are scenes (`pointfalip.scannet.ScanNetDataset`)
==========================  ==========================================================================  =======

.. [#] A folder of the user's own scans has no known frame: ``y`` is assumed (the frame of the references);
   pass ``up_axis=`` to `open_dataset` (or set ``dataset.up_axis``) when the scans are z-up.

ScanObjectNN's ``--root`` is the folder holding ``main_split*/`` (its ``h5_files/`` parent is accepted too).
ShapeNetPart's classes are its 16 categories (`pointfalip.parts.list_categories`, the release's label order); each
item also has a part label per point (``pid``, the release's global part ids 0-49), read with
`ShapeNetPartDataset.iter_segments`.
``split="train"`` reads the releases' training files (``ply_data_train*.h5``, ``training_objectdataset*.h5``,
``<class>/train/``).

h5 releases are read lazily with h5py slicing, raw trees one file at a time: constructing a dataset reads only
file lists and labels. Raw meshes are sampled with ``io.load_points(path, num_points, seed=index)``, so item i
always gives the same points. Clouds of the h5 releases keep their first ``num_points`` points, as the
reference loaders (PointNet, PointCLIP) do; point files of a folder dataset are subsampled to ``num_points``.

Bad input (missing root, file or h5 key, a label outside the class list, an empty dataset) raises
:class:`~pointfalip.errors.InputError` with one line naming the file or key. An unreadable file in a raw tree
or a folder is, while streaming with `Dataset.iter_batches`, logged with ``logging.warning`` by path, recorded
in ``dataset.skipped`` and left out; ``dataset[i]`` raises the item's InputError instead.
"""
from __future__ import annotations

import logging
import os
import re
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import io as pio
from . import prompts
from .errors import InputError, one_line, shown
from .files import check_input_file, check_text, path_text

logger = logging.getLogger(__name__)

SPLITS = ("test", "train")
DEFAULT_NUM_POINTS = 2048  # points of the h5 releases' clouds; raw meshes are sampled with as many

# h5 keys of the releases: points (N, P, 3+) and labels (N,) or (N, 1). ScanObjectNN's "mask" (background
# points) is not needed for classification and never read.
_DATA_KEY = "data"
_LABEL_KEY = "label"

_PART_KEY = "pid"  # ShapeNetPart: (N, P) global part id of every point

_MODELNET40_H5_DIR = "modelnet40_ply_hdf5_2048"
_SHAPENETPART_DIRS = ("hdf5_data", "shapenet_part_seg_hdf5_data", "shapenet_part_seg_hdf5_data/hdf5_data")
_SHAPENETPART_LIST = "{split}_hdf5_file_list.txt"
_SHAPE_NAMES = "shape_names.txt"
# ScanObjectNN's h5_files release: variant -> (folder, file name with the split's word in it)
_SCANOBJECTNN_FILES = {
    "obj_only": ("main_split_nobg", "{split}_objectdataset.h5"),
    "obj_bg": ("main_split", "{split}_objectdataset.h5"),
    "pb_t50_rs": ("main_split", "{split}_objectdataset_augmentedrot_scale75.h5"),
}
_SCANOBJECTNN_SPLIT_WORD = {"test": "test", "train": "training"}
_SCANOBJECTNN_PARENT = "h5_files"  # the release's top folder, accepted as root too

# Names accepted by open_dataset besides the registered ones (after lower-casing and '-'/'_' folding).
# Plain "scanobjectnn" is the hardest variant, the one PointCLIP V2 and most papers report.
_ALIASES = {"scanobjectnn": "scanobjectnn-pb_t50_rs"}

Clouds = np.ndarray | list  # (B, N, 3) float32 when all clouds have N points, else a list of (N_i, 3) arrays


# --------------------------------------------------------------------------------------------------
# the dataset classes
# --------------------------------------------------------------------------------------------------

class Dataset:
    """A labelled set of point clouds, read on demand.

    Attributes:
        name: the registered dataset name (``"modelnet40"``, ...).
        root: the folder the release was found in (as given; layouts below it are detected).
        split: ``"test"`` or ``"train"``.
        classes: raw class names in label order; label ``i`` is ``classes[i]``.
        up_axis: the release's up axis, ``"y"`` or ``"z"`` (``io.normalize(points, up_axis)`` makes it y-up).
        labels: ``(len(self),)`` int64 array, the label of every item (read at construction; cheap).
        layout: which layout was read (``"h5"``, ``"raw"``, ``"folder"``).
        skipped: ``(index, path, reason)`` of every item `iter_batches` left out because it could not be read.
    """

    layout = ""

    def __init__(self, name: str, root: Path, split: str, classes: Sequence[str], up_axis: str,
                 labels: np.ndarray, num_points: int):
        self.name = name
        self.root = Path(root)
        self.split = split
        self.classes = list(classes)
        self.up_axis = up_axis
        self.num_points = num_points
        self.labels = np.asarray(labels, dtype=np.int64)
        self.skipped: list[tuple[int, str, str]] = []

    # ---- to be provided by each layout -----------------------------------------------------------
    def _read(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def source(self, i: int) -> str:
        """Where item ``i`` comes from: a file path, or ``file.h5[row]`` for the h5 releases."""
        raise NotImplementedError

    def _truncate(self, n: int) -> None:
        """Keep the first ``n`` items."""
        self.labels = self.labels[:n]

    def data_files(self) -> list[Path]:
        """The files the items are read from (the identity of the data, for resume keys)."""
        raise NotImplementedError

    # ---- common interface ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        """``(points (N, 3) float32 in the release's coordinates, label)``; InputError for an unreadable file."""
        i = self._index(i)
        return self._read(i), int(self.labels[i])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, root='{self.root}', split={self.split!r}, "
                f"items={len(self)}, classes={len(self.classes)}, up_axis={self.up_axis!r})")

    def class_counts(self) -> np.ndarray:
        """``(len(classes),)`` number of items of each class."""
        return np.bincount(self.labels, minlength=len(self.classes))

    def iter_batches(self, batch_size: int, start: int = 0) -> Iterator[tuple[list[int], Clouds, np.ndarray]]:
        """Stream ``(indices, clouds, labels)`` in dataset order from item ``start`` on.

        Each batch covers the next ``batch_size`` items; items that cannot be read are logged, recorded in
        `skipped` and left out (so a batch may be shorter, and a batch with nothing readable is not yielded).
        ``clouds`` is a ``(B, N, 3)`` float32 array when every cloud has ``N`` points, else a list of
        ``(N_i, 3)`` arrays; ``labels`` is ``(B,)`` int64.
        """
        batch_size = _positive_int(batch_size, "batch_size")
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start <= len(self):
            raise InputError(f"start must be an integer from 0 to {len(self)} (the dataset's size), got {start!r}")
        yield from self._batches(batch_size, int(start))

    def _batches(self, batch_size: int, start: int) -> Iterator[tuple[list[int], Clouds, np.ndarray]]:
        for lo in range(start, len(self), batch_size):
            indices, clouds = [], []
            for i in range(lo, min(lo + batch_size, len(self))):
                try:
                    clouds.append(self._read(i))
                except InputError as e:
                    self._skip(i, str(e))
                    continue
                indices.append(i)
            if indices:
                yield indices, _stack(clouds), self.labels[indices].copy()

    def _skip(self, i: int, reason: str) -> None:
        path = self.source(i)
        prefix = f"{path}: "
        reason = reason[len(prefix):] if reason.startswith(prefix) else reason
        logger.warning("%s: skipped (item %d of %s): %s", path, i, self.name, reason)
        if all(j != i for j, _, _ in self.skipped):
            self.skipped.append((i, path, reason))

    def _index(self, i: Any) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"dataset indices must be integers, not {type(i).__name__}")
        n = len(self)
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"index {i} is out of range for {self.name} with {n} items")
        return j


class H5Dataset(Dataset):
    """Clouds stored as rows of ``data`` (N, P, 3+) in one or more h5 files, read lazily."""

    layout = "h5"

    def __init__(self, name: str, root: Path, split: str, classes: Sequence[str], files: Sequence[Path],
                 num_points: int):
        counts, labels = [], []
        for f in files:
            n, file_labels = _inspect_h5(f, len(classes))
            counts.append(n)
            labels.append(file_labels)
        self.files = list(files)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)  # first row of each file
        all_labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
        if len(all_labels) == 0:
            raise InputError(f"{', '.join(str(f) for f in files)}: no clouds in the '{_DATA_KEY}' key; "
                             "the dataset is empty")
        super().__init__(name, root, split, classes, "y", all_labels, num_points)

    def source(self, i: int) -> str:
        k, row = self._locate(self._index(i))
        return f"{self.files[k]}[{row}]"

    def data_files(self) -> list[Path]:
        return list(self.files)

    def _locate(self, i: int) -> tuple[int, int]:
        k = int(np.searchsorted(self._offsets, i, side="right")) - 1
        return k, i - int(self._offsets[k])

    def _read(self, i: int) -> np.ndarray:
        k, row = self._locate(i)
        with _open_h5(self.files[k]) as h5:
            return self._rows(h5, k, row, row + 1)[0]

    def _rows(self, h5, k: int, lo: int, hi: int) -> np.ndarray:
        try:
            data = h5[_DATA_KEY][lo:hi, : self.num_points, :3]
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"{self.files[k]}: cannot read rows {lo}-{hi - 1} of '{_DATA_KEY}' "
                             f"({one_line(e)}); the file may be truncated") from e
        return np.ascontiguousarray(data, dtype=np.float32)

    def _batches(self, batch_size: int, start: int) -> Iterator[tuple[list[int], Clouds, np.ndarray]]:
        with ExitStack() as stack:
            handles: dict[int, Any] = {}
            for lo in range(start, len(self), batch_size):
                hi = min(lo + batch_size, len(self))
                parts, i = [], lo
                while i < hi:  # a batch may span two files
                    k, row = self._locate(i)
                    take = min(hi - i, int(self._offsets[k + 1]) - i)
                    if k not in handles:
                        handles[k] = stack.enter_context(_open_h5(self.files[k]))
                    parts.append(self._rows(handles[k], k, row, row + take))
                    i += take
                yield list(range(lo, hi)), np.concatenate(parts), self.labels[lo:hi].copy()


class FileDataset(Dataset):
    """One file an item (a raw ModelNet tree, or a user's folder), read with ``io.load_points``."""

    def __init__(self, name: str, root: Path, split: str, classes: Sequence[str], up_axis: str,
                 items: Sequence[tuple[Path, int]], num_points: int, layout: str):
        if not items:
            raise InputError(f"{root}: no files found for {name} ({split} split); the dataset is empty")
        self.paths = [p for p, _ in items]
        self.layout = layout
        super().__init__(name, root, split, classes, up_axis, np.array([lb for _, lb in items]), num_points)

    def source(self, i: int) -> str:
        return str(self.paths[self._index(i)])

    def data_files(self) -> list[Path]:
        return list(self.paths)

    def _truncate(self, n: int) -> None:
        super()._truncate(n)
        self.paths = self.paths[:n]

    def _read(self, i: int) -> np.ndarray:
        # seed = index: the same item always gives the same sample, whatever the batch size or start
        return pio.load_points(self.paths[i], num_points=self.num_points, seed=i, max_points=self.num_points)


# --------------------------------------------------------------------------------------------------
# registry and entry points
# --------------------------------------------------------------------------------------------------

Constructor = Callable[[Path, str, int], Dataset]
_REGISTRY: dict[str, Constructor] = {}
_SPLITS: dict[str, tuple[str, ...]] = {}  # the splits each dataset accepts
# modules that build on this one and register datasets of their own, imported when the registry is first read
DATASET_MODULES = ("pointfalip.scannet",)


def _registry() -> dict[str, Constructor]:
    """Every registered dataset, the other modules' (`DATASET_MODULES`) included."""
    import importlib

    for module in DATASET_MODULES:
        importlib.import_module(module)
    return _REGISTRY


def register_dataset(name: str, splits: Sequence[str] = SPLITS) -> Callable[[Constructor], Constructor]:
    """Decorator: register ``fn(root, split, num_points) -> Dataset`` under ``name``, accepting ``splits``."""
    def wrap(fn: Constructor) -> Constructor:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is registered twice")
        _REGISTRY[name] = fn
        _SPLITS[name] = tuple(splits)
        return fn
    return wrap


def dataset_splits(name: str) -> tuple[str, ...]:
    """The splits a dataset accepts (``("test", "train")`` for the classification sets)."""
    return _SPLITS[resolve_name(name)]


def list_datasets() -> list[str]:
    """Names accepted by `open_dataset`, in registration order."""
    return list(_registry())


def _fold(name: str) -> str:
    return re.sub(r"[-_\s]+", "", str(name).strip().lower())


def resolve_name(name: str) -> str:
    """The registered name for ``name`` (case, ``-`` / ``_`` and the alias ``scanobjectnn`` tolerated)."""
    folded = {_fold(n): n for n in _registry()}
    folded.update({_fold(a): n for a, n in _ALIASES.items()})
    key = _fold(name)
    if key not in folded:
        raise InputError(f"unknown dataset '{name}': choose one of {', '.join(list_datasets())}")
    return folded[key]


def open_dataset(name: str, root, split: str = "test", limit: int | None = None,
                 num_points: int = DEFAULT_NUM_POINTS, up_axis: str | None = None) -> Dataset:
    """Open a dataset by name (see `list_datasets`) from the folder ``root``.

    Args:
        name: a registered name; ``"scanobjectnn"`` alone means ``"scanobjectnn-pb_t50_rs"``.
        root: the folder holding the release (see the module's table for what it may hold).
        split: ``"test"`` (default) or ``"train"``.
        limit: keep only the first ``limit`` items (in the release's order).
        num_points: points sampled on each raw mesh; clouds of the h5 releases keep their first
            ``num_points`` points, point files of a folder are subsampled to it.
        up_axis: override the release's up axis (``"x"``, ``"y"`` or ``"z"``), e.g. for z-up scans in a folder.

    Raises:
        InputError: unknown name or split, missing root / file / h5 key, a label outside the class list, an
            empty dataset; each with one line naming the problem.
    """
    key = resolve_name(name)
    split_key = str(split).strip().lower()
    if split_key not in _SPLITS[key]:
        raise InputError(f"unknown split '{split}': choose one of {', '.join(_SPLITS[key])}")
    num_points = _positive_int(num_points, "num_points")
    if limit is not None:
        limit = _positive_int(limit, "limit")
    axis = None
    if up_axis is not None:
        axis = str(up_axis).strip().lower()
        if axis not in pio.UP_AXES:
            raise InputError(f"unknown up axis {up_axis!r}; use one of {', '.join(pio.UP_AXES)}")

    if root is None or str(root).strip() == "":
        raise InputError(f"no root folder given for {key}; pass --root DIR")
    path = Path(root).expanduser()
    if not path.exists():
        raise InputError(f"{path}: no such folder; give the folder holding the {key} release with --root")
    if not path.is_dir():
        raise InputError(f"{path}: not a folder; give the folder holding the {key} release with --root")

    dataset = _REGISTRY[key](path, split_key, num_points)
    if axis is not None:
        dataset.up_axis = axis
    if limit is not None and limit < len(dataset):
        total, present = len(dataset), int(np.count_nonzero(dataset.class_counts()))
        dataset._truncate(limit)
        covered = int(np.count_nonzero(dataset.class_counts()))
        if covered < present:  # raw trees are in class order: a limit cuts whole classes off
            logger.warning("%s: limit %d keeps the first %d of %d items, which cover only %d of the %d classes "
                           "present", key, limit, limit, total, covered, present)
    logger.info("%s", dataset)
    return dataset


# --------------------------------------------------------------------------------------------------
# ModelNet
# --------------------------------------------------------------------------------------------------

@register_dataset("modelnet40")
def _modelnet40(root: Path, split: str, num_points: int) -> Dataset:
    h5_dir = _find_dir(root, _MODELNET40_H5_DIR, lambda d: _h5_release_files(d))
    if h5_dir is not None:
        return H5Dataset("modelnet40", root, split, _modelnet40_h5_classes(h5_dir),
                         _modelnet40_h5_files(h5_dir, split), num_points)
    raw = _find_dir(root, "ModelNet40", _is_raw_tree)
    if raw is not None:
        return _raw_modelnet("modelnet40", root, raw, split, num_points)
    raise InputError(f"{root}: no ModelNet40 found; expected the h5 release (ply_data_{split}*.h5 and "
                     f"{split}_files.txt, directly or in {_MODELNET40_H5_DIR}/) or the raw tree "
                     f"(<class>/{split}/*.off, directly or in ModelNet40/)")


@register_dataset("modelnet10")
def _modelnet10(root: Path, split: str, num_points: int) -> Dataset:
    raw = _find_dir(root, "ModelNet10", _is_raw_tree)
    if raw is None:
        raise InputError(f"{root}: no ModelNet10 found; expected the raw tree "
                         f"(<class>/{split}/*.off, directly or in ModelNet10/)")
    return _raw_modelnet("modelnet10", root, raw, split, num_points)


def _find_dir(root: Path, sub: str, holds: Callable[[Path], Any]) -> Path | None:
    """``root`` or ``root/sub``, whichever ``holds`` the release first."""
    for d in (root, root / sub):
        if d.is_dir() and holds(d):
            return d
    return None


def _h5_release_files(d: Path) -> list[Path]:
    return [p for p in d.iterdir() if re.fullmatch(r"(ply_data_\w*\.h5|\w+_files\.txt)", p.name)]


def _modelnet40_h5_classes(h5_dir: Path) -> list[str]:
    packaged = prompts.raw_class_names("modelnet40")
    path = h5_dir / _SHAPE_NAMES
    if not path.is_file():
        return packaged
    try:
        names = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the class names ({one_line(e)})") from e
    if not names:
        raise InputError(f"{path}: holds no class names; restore the release's file or delete it")
    if names != packaged:
        logger.warning("%s: class names differ from ModelNet40's (%d names, first difference at line %d); "
                       "using the file's", path, len(names),
                       next((k for k, (a, b) in enumerate(zip(names, packaged)) if a != b),
                            min(len(names), len(packaged))) + 1)
    return names


def _modelnet40_h5_files(h5_dir: Path, split: str) -> list[Path]:
    listing = h5_dir / f"{split}_files.txt"
    if listing.is_file():
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{listing}: cannot read the file list ({one_line(e)})") from e
        files = []
        for n, line in enumerate(lines, 1):
            if line.strip():
                files.append(_resolve_listed(line.strip(), h5_dir, listing, n))
        if not files:
            raise InputError(f"{listing}: lists no h5 files; the dataset is empty")
        return files
    files = sorted(h5_dir.glob(f"ply_data_{split}*.h5"), key=_natural_key)
    if not files:
        raise InputError(f"{h5_dir}: holds the ModelNet40 h5 release but neither {split}_files.txt nor "
                         f"ply_data_{split}*.h5 for the {split} split")
    return files


def _resolve_listed(line: str, base: Path, listing: Path, lineno: int) -> Path:
    """A path of a ``*_files.txt`` line (``data/modelnet40_ply_hdf5_2048/ply_data_test0.h5``, relative to the
    release's repository root) found under the folder holding the list."""
    p = Path(line)
    candidates = [p] if p.is_absolute() else [base / p.name, base / p]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    for candidate in candidates:
        if os.path.lexists(candidate):  # there, but a folder, a device, a pipe: say what it is
            check_input_file(candidate, f"{listing} line {lineno} names '{line}', but")
    raise InputError(f"{listing} line {lineno} names '{line}', but {base / p.name} does not exist; "
                     "keep the h5 files next to the list")


def _is_raw_tree(d: Path) -> bool:
    """Whether ``d`` looks like a raw ModelNet tree: a class folder holding ``train/`` or ``test/``."""
    return any(c.is_dir() and any((c / s).is_dir() for s in SPLITS) for c in _subdirs(d))


def _raw_modelnet(name: str, root: Path, tree: Path, split: str, num_points: int) -> Dataset:
    classes = prompts.raw_class_names(name)
    index = {c: k for k, c in enumerate(classes)}
    # class folders are those holding train/ or test/; other folders (a user's notes, caches) are not classes
    folders = [f for f in _subdirs(tree) if any((f / s).is_dir() for s in SPLITS)]
    unknown = [f.name for f in folders if f.name not in index]
    if unknown:
        raise InputError(f"{tree / unknown[0]}: class folder '{unknown[0]}' is not a {name} class "
                         f"({len(unknown)} unknown folder(s)); the classes are {', '.join(classes)}")
    present = {f.name for f in folders}
    missing = [c for c in classes if c not in present]
    if missing:
        logger.warning("%s: %d of %d %s class folders are missing (%s)", tree, len(missing), len(classes), name,
                       ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else ""))
    items = []
    for c in classes:  # label order
        split_dir = tree / c / split
        if split_dir.is_dir():
            files = [p for p in split_dir.iterdir() if p.suffix.lower() == ".off" and _visible(p) and p.is_file()]
            items += [(p, index[c]) for p in sorted(files, key=_natural_key)]
    if not items:
        raise InputError(f"{tree}: no <class>/{split}/*.off files; the {split} split of {name} is empty")
    return FileDataset(name, root, split, classes, "z", items, num_points, layout="raw")


# --------------------------------------------------------------------------------------------------
# ScanObjectNN
# --------------------------------------------------------------------------------------------------

def _scanobjectnn(variant: str) -> Constructor:
    folder, pattern = _SCANOBJECTNN_FILES[variant]
    name = f"scanobjectnn-{variant}"

    def build(root: Path, split: str, num_points: int) -> Dataset:
        relative = Path(folder) / pattern.format(split=_SCANOBJECTNN_SPLIT_WORD[split])
        for base in (root, root / _SCANOBJECTNN_PARENT):
            if (base / relative).is_file():
                return H5Dataset(name, root, split, prompts.raw_class_names("scanobjectnn"), [base / relative],
                                 num_points)
        raise InputError(f"{root / relative}: no such file; point --root at the folder of ScanObjectNN's "
                         f"h5_files release that holds {folder}/")

    build.__name__ = build.__qualname__ = f"_scanobjectnn_{variant}"
    return build


for _variant in _SCANOBJECTNN_FILES:
    register_dataset(f"scanobjectnn-{_variant}")(_scanobjectnn(_variant))


# --------------------------------------------------------------------------------------------------
# a user's folder
# --------------------------------------------------------------------------------------------------

@register_dataset("folder")
def _folder(root: Path, split: str, num_points: int) -> Dataset:
    """``root/<class name>/**/<file>``: classes are the sorted sub-folder names, files any that io reads."""
    if split != "test":
        raise InputError(f"the folder dataset has no splits (got '{split}'); point --root at the folder of "
                         "the split you want")
    classes = sorted(f.name for f in _subdirs(root))
    if not classes:
        raise InputError(f"{root}: no class folders; lay out your data as {root}/<class name>/<file>")
    for c in classes:  # a class name is a prompt: undecodable bytes in it could only be garbage
        check_text(c, f"{path_text(root)}: class folder")
    items, ignored = [], 0
    for label, c in enumerate(classes):
        files = []
        for dirpath, dirnames, filenames in os.walk(root / c):
            dirnames[:] = [d for d in dirnames if _visible(Path(d))]
            for f in filenames:
                p = Path(dirpath) / f
                if not _visible(p):
                    continue
                if p.suffix.lower() in pio.SUPPORTED_EXTENSIONS:
                    files.append(p)
                else:
                    ignored += 1
        if not files:
            logger.warning("%s: class folder '%s' holds no readable files", root / c, c)
        items += [(p, label) for p in sorted(files, key=lambda p: _natural_key(p.relative_to(root / c)))]
    if ignored:
        logger.warning("%s: ignored %d file(s) of unsupported types (supported: %s)", root, ignored,
                       " ".join(pio.SUPPORTED_EXTENSIONS))
    if not items:
        raise InputError(f"{root}: no point-cloud or mesh files in its class folders; the dataset is empty "
                         f"(supported: {' '.join(pio.SUPPORTED_EXTENSIONS)})")
    return FileDataset("folder", root, split, classes, "y", items, num_points, layout="folder")


# --------------------------------------------------------------------------------------------------
# ShapeNetPart (part segmentation)
# --------------------------------------------------------------------------------------------------

class ShapeNetPartDataset(H5Dataset):
    """ShapeNetPart's h5 release: clouds, their category (the class label) and a part id per point.

    `restrict` keeps one category and / or the first items; `iter_segments` streams
    ``(indices, clouds, categories, part ids)``. Part ids are checked as they are read: an id outside the item's
    category (`pointfalip.parts.category_labels`) is a one-line InputError naming the file and item.
    """

    def __init__(self, root: Path, split: str, files: Sequence[Path], num_points: int):
        from .parts import list_categories

        super().__init__("shapenetpart", root, split, list_categories(), files, num_points)
        sizes = set()
        for f in self.files:
            with _open_h5(f) as h5:
                if _PART_KEY not in h5:
                    raise InputError(f"{f}: no '{_PART_KEY}' key (it has: {', '.join(sorted(h5.keys()))}); "
                                     "is this shapenet_part_seg_hdf5_data?")
                data, pid = h5[_DATA_KEY], h5[_PART_KEY]
                if pid.ndim != 2 or tuple(pid.shape) != tuple(data.shape[:2]):
                    raise InputError(f"{f}: '{_PART_KEY}' has shape {tuple(pid.shape)}, expected "
                                     f"{tuple(data.shape[:2])} (a part id per point of '{_DATA_KEY}')")
                if pid.dtype.kind not in "iu":
                    raise InputError(f"{f}: '{_PART_KEY}' holds {pid.dtype} values, expected integer part ids")
                sizes.add(min(int(data.shape[1]), num_points))
        if len(sizes) != 1:
            raise InputError(f"{root}: the h5 files hold clouds of different sizes ({sorted(sizes)} points); "
                             "give --num-points at most the smallest")
        self.points_per_cloud = sizes.pop()
        self._release_rows = np.arange(len(self.labels), dtype=np.int64)  # release row of each item
        self.category: str | None = None  # the one category `restrict` kept

    def restrict(self, category: str | None = None, limit: int | None = None) -> "ShapeNetPartDataset":
        """Keep the items of ``category`` only (a ShapeNetPart name) and then the first ``limit``; returns self."""
        if category is not None:
            from .parts import list_categories

            key = " ".join(str(category).split()).lower()
            if key not in self.classes:
                raise InputError(f"unknown category '{category}': choose one of {', '.join(list_categories())}")
            keep = self.labels == self.classes.index(key)
            if not keep.any():
                raise InputError(f"{self.root}: no {key} shapes in the {self.split} split")
            self._release_rows, self.labels = self._release_rows[keep], self.labels[keep]
            self.category = key
        if limit is not None:
            self._truncate(_positive_int(limit, "limit"))
        return self

    def _truncate(self, n: int) -> None:
        super()._truncate(n)
        self._release_rows = self._release_rows[:n]

    def release_rows(self) -> np.ndarray:
        """``(len(self),)`` int64: the row of each item in the release's files taken end to end."""
        return self._release_rows.copy()

    def _locate(self, i: int) -> tuple[int, int]:
        return super()._locate(int(self._release_rows[i]))

    def _read_items(self, h5s: dict, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Clouds ``(B, P, 3)`` float32 and part ids ``(B, P)`` int64 of items, checked against their category."""
        clouds, pids = [], []
        located = [self._locate(i) for i in indices]
        for k in dict.fromkeys(k for k, _ in located):
            rows = [r for kk, r in located if kk == k]
            if k not in h5s:
                h5s[k] = _open_h5(self.files[k])
            h5, p = h5s[k], self.points_per_cloud
            lo, hi = rows[0], rows[-1] + 1
            which = slice(lo, hi) if hi - lo == len(rows) else rows  # h5py: increasing rows, no repeats
            try:
                clouds.append(np.asarray(h5[_DATA_KEY][which, :p, :3], dtype=np.float32))
                pids.append(np.asarray(h5[_PART_KEY][which, :p], dtype=np.int64))
            except (OSError, KeyError, ValueError, TypeError) as e:
                raise InputError(f"{self.files[k]}: cannot read rows {lo}-{hi - 1} of '{_DATA_KEY}' or "
                                 f"'{_PART_KEY}' ({one_line(e)}); the file may be truncated") from e
        clouds_, pids_ = np.concatenate(clouds), np.concatenate(pids)
        for j, i in enumerate(indices):  # the rule of every command: finite, at least MIN_POINTS distinct points
            k, row = located[j]
            pio.validate(clouds_[j], name=f"{self.files[k]}[{row}] (item {i})")
        self._check_parts(indices, pids_)
        return clouds_, pids_

    def _check_parts(self, indices: Sequence[int], pids: np.ndarray) -> None:
        from .parts import category_labels

        for j, i in enumerate(indices):
            category = self.classes[int(self.labels[i])]
            allowed = category_labels(category)
            bad = (pids[j] < allowed.start) | (pids[j] >= allowed.stop)
            if bad.any():
                k, row = self._locate(i)
                raise InputError(f"{self.files[k]}[{row}] (item {i}): '{_PART_KEY}' holds part "
                                 f"{int(pids[j][bad][0])}, outside the {category} parts {allowed.start}-"
                                 f"{allowed.stop - 1} ({int(bad.sum())} point(s)); the release may be damaged")

    def _read(self, i: int) -> np.ndarray:
        return self.segment(i)[0]

    def segment(self, i: int) -> tuple[np.ndarray, int, np.ndarray]:
        """``(points (P, 3) float32, category index, part ids (P,) int64)`` of item ``i``."""
        i = self._index(i)
        h5s: dict = {}
        try:
            clouds, pids = self._read_items(h5s, [i])
        finally:
            for h in h5s.values():
                h.close()
        return clouds[0], int(self.labels[i]), pids[0]

    def iter_segments(self, batch_size: int, start: int = 0
                      ) -> Iterator[tuple[list[int], np.ndarray, np.ndarray, np.ndarray]]:
        """Stream ``(indices, clouds (B, P, 3) float32, categories (B,) int64, part ids (B, P) int64)`` in
        dataset order from item ``start`` on, ``batch_size`` items a batch; h5 files stay open while streaming."""
        batch_size = _positive_int(batch_size, "batch_size")
        if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start <= len(self):
            raise InputError(f"start must be an integer from 0 to {len(self)} (the dataset's size), got {start!r}")
        h5s: dict = {}
        try:
            for lo in range(int(start), len(self), batch_size):
                indices = list(range(lo, min(lo + batch_size, len(self))))
                clouds, pids = self._read_items(h5s, indices)
                yield indices, clouds, self.labels[indices].copy(), pids
        finally:
            for h in h5s.values():
                h.close()

    def _batches(self, batch_size: int, start: int) -> Iterator[tuple[list[int], Clouds, np.ndarray]]:
        for indices, clouds, labels, _ in self.iter_segments(batch_size, start):
            yield indices, clouds, labels


def is_part_dataset(name: str) -> bool:
    """Whether ``name`` is a part-segmentation dataset (``shapenetpart``), whatever its case and separators."""
    return _fold(name) == _fold("shapenetpart")


@register_dataset("shapenetpart")
def _shapenetpart(root: Path, split: str, num_points: int) -> Dataset:
    listing_name = _SHAPENETPART_LIST.format(split=split)

    def holds(d: Path) -> bool:
        return (d / listing_name).is_file() or any(d.glob(f"ply_data_{split}*.h5"))

    folder = next((d for d in (root, *(root / s for s in _SHAPENETPART_DIRS)) if d.is_dir() and holds(d)), None)
    if folder is None:
        raise InputError(f"{root}: no ShapeNetPart found; expected shapenet_part_seg_hdf5_data ({listing_name} "
                         f"and ply_data_{split}*.h5, directly or in hdf5_data/)")
    listing = folder / listing_name
    if listing.is_file():
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{listing}: cannot read the file list ({one_line(e)})") from e
        files = [_resolve_listed(line.strip(), folder, listing, n) for n, line in enumerate(lines, 1)
                 if line.strip()]
        if not files:
            raise InputError(f"{listing}: lists no h5 files; the dataset is empty")
    else:
        files = sorted(folder.glob(f"ply_data_{split}*.h5"), key=_natural_key)
    return ShapeNetPartDataset(root, split, files, num_points)



# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------

def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _visible(p: Path) -> bool:
    return not (p.name.startswith(".") or p.name.startswith("__"))  # .DS_Store, __MACOSX


def _subdirs(d: Path) -> list[Path]:
    try:
        return sorted((p for p in d.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)
    except OSError as e:
        raise InputError(f"{d}: cannot list the folder ({one_line(e)})") from e


def _natural_key(p: Path | str) -> list:
    """Sort key with numbers compared as numbers: ply_data_test2 before ply_data_test10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(p))]


def _stack(clouds: list[np.ndarray]) -> Clouds:
    if clouds and all(c.shape == clouds[0].shape for c in clouds):
        return np.stack(clouds)
    return clouds


def _open_h5(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: cannot open it as an HDF5 file ({one_line(e)})") from e


def _dtype_text(dtype: np.dtype) -> str:
    """A dtype as a message names it: strings, compound records, booleans, ... (never a 1000-field repr)."""
    kinds = {"S": "byte-string", "U": "string", "O": "object", "V": "compound (record)", "b": "boolean",
             "c": "complex", "M": "date", "m": "time-span"}
    return kinds.get(dtype.kind, shown(str(dtype), 40))


def _inspect_h5(path: Path, num_classes: int) -> tuple[int, np.ndarray]:
    """Number of clouds and their labels, after checking the keys, shapes, element types and label range."""
    import h5py

    with _open_h5(path) as h5:
        for key in (_DATA_KEY, _LABEL_KEY):
            if key not in h5:
                raise InputError(f"{path}: no '{key}' key (it has: {', '.join(sorted(h5.keys())) or 'none'}); "
                                 "is this the dataset's h5 release?")
        data = h5[_DATA_KEY]
        if not isinstance(data, h5py.Dataset):
            raise InputError(f"{path}: '{_DATA_KEY}' is a group, not an array; is this the dataset's h5 release?")
        if data.ndim != 3 or data.shape[2] < 3:
            raise InputError(f"{path}: '{_DATA_KEY}' has shape {tuple(data.shape)}, expected (N, points, 3)")
        if data.dtype.kind not in "fiu":
            raise InputError(f"{path}: '{_DATA_KEY}' holds {_dtype_text(data.dtype)} values, expected numbers "
                             "(float coordinates)")
        if not isinstance(h5[_LABEL_KEY], h5py.Dataset):
            raise InputError(f"{path}: '{_LABEL_KEY}' is a group, not an array; is this the dataset's h5 release?")
        raw = np.asarray(h5[_LABEL_KEY][()])
    shape = tuple(raw.shape)
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1 or len(raw) != data.shape[0]:
        raise InputError(f"{path}: '{_LABEL_KEY}' has shape {shape}, expected ({data.shape[0]},) "
                         f"or ({data.shape[0]}, 1) to match '{_DATA_KEY}'")
    if raw.dtype.kind not in "iuf" or (raw.dtype.kind == "f" and not np.all(raw == np.round(raw))):
        raise InputError(f"{path}: '{_LABEL_KEY}' holds {_dtype_text(raw.dtype)} values, expected integer class "
                         "indices")
    if raw.dtype.kind == "f" and not np.isfinite(raw).all():
        raise InputError(f"{path}: '{_LABEL_KEY}' holds NaN or infinite values, expected integer class indices")
    labels = raw.astype(np.int64)
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        row = int(np.argmax(bad))
        raise InputError(f"{path}: '{_LABEL_KEY}' row {row} is {labels[row]}, outside the {num_classes} classes "
                         f"(0-{num_classes - 1}); {int(bad.sum())} label(s) out of range")
    return int(data.shape[0]), labels
