"""ScanNet v2: the release's layout, its 18-class instance benchmark and prediction format, and the two metrics the
field reports on it (ScanNet's instance AP, VoteNet's 3D detection AP), from anyone's predictions or the project's own.

**Layout** (``root``: the folder holding ``scans/``, or ``scans/`` itself)::

    scans/<scene>/<scene>_vh_clean_2.ply                 mesh: vertices (x y z, red green blue) and faces
    scans/<scene>/<scene>_vh_clean_2.0.010000.segs.json  "segIndices": a segment id per vertex
    scans/<scene>/<scene>.aggregation.json               "segGroups": [{"objectId", "label", "segments"}]
    scans/<scene>/<scene>.txt                            "axisAlignment = m00 m01 ... m33" (row-major 4x4)
    scannetv2-labels.combined.tsv                        raw category ("raw_category") -> NYU40 id ("nyu40id")
    scannetv2_{train,val,test}.txt                       scene ids of each split (or any such file, `open_scannet`)

Test scenes may sit in ``scans_test/``; they carry no annotations (predictions only). Files beside ``scans/`` are
looked for in ``root`` and then its parent.

**Ground truth**, as ScanNet's ``export_train_mesh_for_evaluation.py`` and VoteNet's ``load_scannet_data.py`` build it:
an instance is an aggregation group (``objectId``), its vertices those of its segments; where two groups list a segment,
the later group in the file has its vertices (the references write instances group by group in file order). The
instance's class is the NYU40 id of its group's raw label (the references write labels label by label, which differs
only where groups of two labels share a segment; here a vertex's label and instance always come from one group). Instances are ordered by ``objectId`` (as ScanNet's ids ``label*1000 +
objectId + 1`` sort), and groups left without vertices are dropped. The benchmark's classes are the 18 NYU40 ids
`BENCHMARK_IDS`; vertices that are unannotated or belong to another class are *void*, which ScanNet's metric ignores.
Boxes are axis-aligned in the frame of ``axisAlignment`` (vertices turned by it and stored as float32, as VoteNet does;
a scene whose ``.txt`` has no ``axisAlignment`` line, as test scenes, keeps its frame, with a warning).

**Predictions** (ScanNet's instance submission format): ``<dir>/<scene>.txt`` lines ``<mask path> <label id>
<confidence>``, each mask path relative to ``<dir>`` (``pred_mask/<scene>_<k>.txt`` as `write_predictions` writes it),
one integer per line per mesh vertex, non-zero on the instance. As ScanNet's reader does, a mask listed twice keeps
its first place and its last line's label and confidence, and a label id is read as ``int(float(text))``.

**Metrics** (`pointfalip.metrics`): instance AP at overlaps 0.50:0.05:0.90 (mean: ``ap``) and 0.25 / 0.5 (``ap25``,
``ap50``), minimum region 100 vertices, void vertices ignored; detection AP at box IoU 0.25 and 0.5, VOC all-point.
Where the references are silent or crash: detection counts every ground-truth instance of a benchmark class whatever
its size and every non-empty predicted mask; a class with ground truth and no prediction scores 0; a class without
ground truth is null and left out of the means; predictions with a label outside the 18 classes are ignored; ties in
confidence rank in scene order, then file order.

**The project's own predictions** (`predict_scene`): class-agnostic proposals (`propose`: the scene segmentation,
the annotated instances as an oracle, or another method's masks), each resampled to a fixed number of vertices
(`proposal_clouds`), scored by a `pointfalip.Recognizer` through ``embed`` -> ``logits`` (`score_proposals`) and
labelled with its best labels' NYU40 ids (`label_proposals`); confidence = the probability.

**Per-scene results** are `SceneMatches` (`scene_matches`): every entry of the precision-recall curves the scene
contributes, and its counts. They concatenate (`SceneMatches.concatenate`), so scenes can be computed in any batches,
cached and resumed; `matches_report` computes every AP from the concatenation.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from . import io as pio
from .batches import Report, TaskKind, register_task
from .datasets import Dataset, register_dataset
from .errors import InputError, one_line
from .files import atomic_write, path_text
from .metrics import (box_iou_3d_axis_aligned, box_matches, detection_ap, scannet_ap,
                      scannet_instance_matches)

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# ---- the benchmark ------------------------------------------------------------------------------------------------
BENCHMARK_CLASSES = ("cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter",
                     "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub",
                     "otherfurniture")  # the names of ScanNet's evaluation script, in its order
BENCHMARK_IDS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)  # their NYU40 ids
NYU40_CLASSES = ("wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture",
                 "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror", "floor mat",
                 "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel", "shower curtain",
                 "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp", "bathtub", "bag",
                 "otherstructure", "otherfurniture", "otherprop")  # NYU40 id i + 1, spelt as the label table does
_ALIASES = {"refrigerator": 24, "other furniture": 39, "other structure": 38, "other prop": 40, "nightstand": 32,
            "tv": 25, "bookcase": 10}  # readable spellings of NYU40 names
_READABLE = {"otherfurniture": "other furniture"}  # prompt-friendly names of the benchmark classes

INSTANCE_OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)  # ScanNet's overlaps (the same float values)
MIN_REGION_SIZE = 100  # vertices: smaller predictions and ground-truth instances take no part in instance AP
DETECTION_IOUS = (0.25, 0.5)  # box IoU thresholds of the detection AP

SPLITS = ("val", "train", "test")
LABEL_TABLE = "scannetv2-labels.combined.tsv"
SPLIT_FILE = "scannetv2_{split}.txt"
SCAN_FOLDERS = ("scans", "scans_test")
MESH_FILE = "{scene}_vh_clean_2.ply"
SEGMENTS_FILE = "{scene}_vh_clean_2.0.010000.segs.json"
AGGREGATION_FILE = "{scene}.aggregation.json"
META_FILE = "{scene}.txt"
MASK_FOLDER = "pred_mask"  # where `write_predictions` puts the masks, as ScanNet's example exporter does
DEFAULT_PROPOSAL_POINTS = 2048  # vertices each proposal is resampled to before projection
SEGMENT_PRESET = "room"  # the segmentation preset of `--proposals segment`, with the overrides below
# ScanNet's _vh_clean_2 meshes hold a vertex every 3-4 cm: at that density the room preset (2 cm voxels, 10 points
# within 5 cm for a DBSCAN core) finds no object at all. These settings cluster such meshes; they were checked on the
# synthetic room of bench/bench_scannet.py (50k vertices: its 14 pieces of furniture found, none merged), never on
# ScanNet.
SEGMENT_OVERRIDES = {
    "voxel_size": 0.04,  # metres: about the meshes' vertex spacing
    "cluster_tolerance": 0.10,  # metres: DBSCAN eps; furniture 10 cm apart stays separate
    "cluster_min_points": 5,  # downsampled points within eps that make a DBSCAN core point
    "min_object_points": 20,  # downsampled points: ~0.03 m^2 of surface at 4 cm voxels
}
_SCENE_ID = re.compile(r"[A-Za-z0-9_.\-]+")
_ENCODE_CHUNK = 64  # proposals projected and encoded at once


def benchmark_labels() -> list[str]:
    """The 18 benchmark classes as prompts name them (``otherfurniture`` -> ``other furniture``), in benchmark order."""
    return [_READABLE.get(name, name) for name in BENCHMARK_CLASSES]


def _name_key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name).strip().lower())


def label_ids_for(labels: Union[Sequence[str], Mapping[str, int]]) -> list[int]:
    """NYU40 ids of label names (the benchmark's, the NYU40 classes', case, spaces and ``_`` ignored), or the ids of a
    ``{name: id}`` mapping, in order: what a prediction's label id is. InputError for a name it cannot place."""
    if isinstance(labels, Mapping):
        ids = []
        for name, value in labels.items():
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InputError(f"label '{name}': its id must be an integer, got {value!r}")
            ids.append(int(value))
        return ids
    known = {_name_key(n): i + 1 for i, n in enumerate(NYU40_CLASSES)}
    known.update({_name_key(n): i for n, i in zip(BENCHMARK_CLASSES, BENCHMARK_IDS)})
    known.update({_name_key(n): i for n, i in _ALIASES.items()})
    ids = []
    for name in labels:
        key = _name_key(name)
        if key not in known:
            raise InputError(f"label '{name}' is not a NYU40 class, so it has no ScanNet label id; give labels with "
                             "their ids (a name: id mapping) or use NYU40 names")
        ids.append(known[key])
    return ids


def _class_index(label_ids: np.ndarray) -> np.ndarray:
    """Index 0-17 of each NYU40 id among the benchmark's classes, -1 outside them."""
    ids = np.asarray(BENCHMARK_IDS)
    label_ids = np.asarray(label_ids, dtype=np.int64)
    pos = np.clip(np.searchsorted(ids, label_ids), 0, len(ids) - 1)
    return np.where(ids[pos] == label_ids, pos, -1)


# ---- files --------------------------------------------------------------------------------------------------------
def _existing_file(path: Path, what: str) -> Path:
    if not path.is_file():
        reason = "no such file" if not path.exists() else "not a regular file"
        raise InputError(f"{path_text(path)}: {reason}; the {what} is missing")
    return path


def _read_text(path: Path, what: str) -> str:
    _existing_file(path, what)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"{path_text(path)}: the {what} is not UTF-8 text") from None
    except OSError as e:
        raise InputError(f"{path_text(path)}: cannot read the {what} ({one_line(e)})") from None


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(_read_text(path, what))
    except json.JSONDecodeError as e:
        raise InputError(f"{path_text(path)}: the {what} is not valid JSON ({e.msg} at line {e.lineno})") from None


def read_mesh(path: PathLike) -> tuple[np.ndarray, Optional[np.ndarray], np.ndarray]:
    """``(vertices (N, 3) float32, colours (N, 3) uint8 or None, faces (F, 3) int64)`` of a PLY mesh, vertices in file
    order (`pointfalip.io.read_geometry`: trimesh, nothing merged). InputError for a file that is not a PLY mesh (a
    point cloud included)."""
    if Path(path).suffix.lower() != ".ply":
        raise InputError(f"{path_text(path)}: not a .ply file; ScanNet's meshes are PLY")
    geometry = pio.read_geometry(path)
    if geometry.faces is None or len(geometry.faces) == 0:
        raise InputError(f"{path_text(path)}: is a point cloud, not a mesh (no faces); give the scene's "
                         "_vh_clean_2.ply mesh")
    vertices = np.asarray(geometry.vertices, dtype=np.float32)
    if not np.isfinite(vertices).all():
        raise InputError(f"{path_text(path)}: holds NaN or infinite coordinates; the mesh is corrupt")
    return vertices, geometry.colors, np.asarray(geometry.faces, dtype=np.int64)


def read_label_table(path: PathLike) -> dict[str, int]:
    """``raw_category -> nyu40id`` of ``scannetv2-labels.combined.tsv``."""
    path = Path(path)
    rows = csv.DictReader(_read_text(path, "label table").splitlines(), delimiter="\t")
    if rows.fieldnames is None or not {"raw_category", "nyu40id"} <= set(rows.fieldnames):
        raise InputError(f"{path_text(path)}: no raw_category and nyu40id columns; is this "
                         f"{LABEL_TABLE}?")
    table = {}
    for line, row in enumerate(rows, 2):
        try:
            table[row["raw_category"]] = int(row["nyu40id"])
        except (TypeError, ValueError):
            raise InputError(f"{path_text(path)} line {line}: nyu40id {row['nyu40id']!r} is not an integer") from None
    if not table:
        raise InputError(f"{path_text(path)}: the label table is empty")
    return table


def read_alignment(path: PathLike) -> Optional[np.ndarray]:
    """The 4x4 ``axisAlignment`` of a scene's ``<scene>.txt``, None when the file has no such line."""
    path = Path(path)
    for line in _read_text(path, "scene's meta file").splitlines():
        key, _, value = line.partition("=")
        if key.strip() != "axisAlignment":
            continue
        try:
            numbers = [float(v) for v in value.split()]
        except ValueError:
            numbers = []
        if len(numbers) != 16 or not all(math.isfinite(v) for v in numbers):
            raise InputError(f"{path_text(path)}: axisAlignment must be 16 finite numbers (a row-major 4x4 "
                             f"matrix), got {value.strip()[:60]!r}")
        return np.array(numbers, dtype=np.float64).reshape(4, 4)
    return None


def _read_segments(path: Path) -> np.ndarray:
    data = _read_json(path, "segmentation")
    seg = data.get("segIndices") if isinstance(data, dict) else None
    if not isinstance(seg, list) or not seg:
        raise InputError(f"{path_text(path)}: no 'segIndices' list; is this a _vh_clean_2.0.010000.segs.json file?")
    try:
        arr = np.asarray(seg, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        arr = None
    if arr is None or arr.ndim != 1 or not all(isinstance(v, int) and not isinstance(v, bool) for v in seg[:1000]):
        raise InputError(f"{path_text(path)}: 'segIndices' must be a list of integer segment ids")
    return arr


def _read_groups(path: Path) -> list[tuple[int, str, np.ndarray]]:
    data = _read_json(path, "aggregation")
    groups = data.get("segGroups") if isinstance(data, dict) else None
    if not isinstance(groups, list):
        raise InputError(f"{path_text(path)}: no 'segGroups' list; is this a .aggregation.json file?")
    out, seen = [], set()
    for k, g in enumerate(groups):
        ok = isinstance(g, dict) and isinstance(g.get("objectId"), int) and not isinstance(g.get("objectId"), bool)
        ok = ok and isinstance(g.get("label"), str) and isinstance(g.get("segments"), list)
        ok = ok and all(isinstance(s, int) and not isinstance(s, bool) for s in g["segments"])
        if not ok:
            raise InputError(f"{path_text(path)}: segGroups[{k}] needs an integer objectId, a label and a list of "
                             "integer segments")
        if g["objectId"] in seen:
            raise InputError(f"{path_text(path)}: objectId {g['objectId']} appears twice")
        seen.add(g["objectId"])
        out.append((g["objectId"], g["label"], np.asarray(g["segments"], dtype=np.int64)))
    return out


# ---- scenes -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Scene:
    """One ScanNet scene: its mesh and, unless it is a test scene, its instances.

    ``instance`` gives each vertex its instance (an index into the ``instance_*`` arrays, ordered by ``objectId``) or
    -1 when no group holds it; ``instance_labels`` are NYU40 ids (0 when the label table maps the raw label to none).
    """

    scene_id: str
    vertices: np.ndarray  # (N, 3) float32, the release's frame (metres, z up)
    colors: Optional[np.ndarray]  # (N, 3) uint8 or None
    faces: np.ndarray  # (F, 3) int64
    alignment: np.ndarray  # (4, 4) float64 axisAlignment (identity when the meta file has none)
    segments: Optional[np.ndarray] = None  # (N,) int64 segment id of each vertex
    instance: Optional[np.ndarray] = None  # (N,) int64 instance index or -1
    instance_labels: Optional[np.ndarray] = None  # (I,) int64 NYU40 ids
    instance_object_ids: Optional[np.ndarray] = None  # (I,) int64 objectId of each instance's group
    instance_raw_labels: tuple = ()  # (I,) the groups' raw labels

    @property
    def num_vertices(self) -> int:
        return len(self.vertices)

    @property
    def annotated(self) -> bool:
        return self.instance is not None

    @cached_property
    def aligned(self) -> np.ndarray:
        """``(N, 3)`` float32 vertices in the axis-aligned frame (``axisAlignment`` applied, as VoteNet stores them);
        computed once, read-only."""
        homogeneous = np.c_[self.vertices.astype(np.float64), np.ones(len(self.vertices))]
        out = (homogeneous @ self.alignment.T)[:, :3].astype(np.float32)
        out.flags.writeable = False
        return out

    def _require_annotations(self) -> None:
        if not self.annotated:
            raise InputError(f"scene {self.scene_id} has no annotations (a test scene?): it can be predicted, "
                             "not evaluated")

    def instance_sizes(self) -> np.ndarray:
        """``(I,)`` vertices of each instance."""
        self._require_annotations()
        return np.bincount(self.instance[self.instance >= 0], minlength=len(self.instance_labels))

    def benchmark_instances(self) -> np.ndarray:
        """Indices of the instances of the 18 benchmark classes, in ``objectId`` order."""
        self._require_annotations()
        return np.flatnonzero(_class_index(self.instance_labels) >= 0)

    def instance_masks(self, which: Optional[Sequence[int]] = None) -> np.ndarray:
        """``(K, N)`` bool masks of instances (all without ``which``)."""
        self._require_annotations()
        which = np.arange(len(self.instance_labels)) if which is None else np.asarray(which, dtype=np.int64)
        return self.instance[None, :] == which[:, None]

    def instance_boxes(self) -> np.ndarray:
        """``(I, 6)`` float64 axis-aligned boxes ``[xmin, ymin, zmin, xmax, ymax, zmax]`` of the instances in the
        aligned frame (NaN rows for instances without vertices, which scenes never hold)."""
        self._require_annotations()
        owner = self.instance
        rows = np.flatnonzero(owner >= 0)
        return _group_boxes(self.aligned[rows], owner[rows], len(self.instance_labels))


def _group_boxes(points: np.ndarray, owner: np.ndarray, count: int) -> np.ndarray:
    """``(count, 6)`` min/max boxes of ``points`` grouped by ``owner`` (0..count-1); NaN for empty groups."""
    boxes = np.full((count, 6), np.nan)
    if len(points) == 0:
        return boxes
    order = np.argsort(owner, kind="stable")
    owner, points = owner[order], points[order].astype(np.float64)
    present = np.unique(owner)
    starts = np.searchsorted(owner, present)
    boxes[present, :3] = np.minimum.reduceat(points, starts)
    boxes[present, 3:] = np.maximum.reduceat(points, starts)
    return boxes


def read_scene(folder: PathLike, label_table: Optional[Mapping[str, int]] = None,
               scene_id: Optional[str] = None) -> Scene:
    """A scene from its folder (``scans/<scene>``); annotations are read when the folder has an aggregation file and
    ``label_table`` (`read_label_table`) is given."""
    folder = Path(folder)
    scene = scene_id or folder.name
    if not folder.is_dir():
        raise InputError(f"{path_text(folder)}: no such folder; the scene {scene} is missing")
    vertices, colors, faces = read_mesh(_existing_file(folder / MESH_FILE.format(scene=scene), "scene's mesh"))
    meta = folder / META_FILE.format(scene=scene)
    alignment = read_alignment(meta)
    if alignment is None:
        log.warning("%s: no axisAlignment; scene %s stays in its own frame", meta, scene)
        alignment = np.eye(4)
    aggregation = folder / AGGREGATION_FILE.format(scene=scene)
    if label_table is None or not aggregation.exists():
        return Scene(scene, vertices, colors, faces, alignment)

    segments_path = folder / SEGMENTS_FILE.format(scene=scene)
    segments = _read_segments(_existing_file(segments_path, "scene's segmentation"))
    if len(segments) != len(vertices):
        raise InputError(f"{path_text(segments_path)}: {len(segments)} segment ids but the mesh has {len(vertices)} "
                         "vertices; the files are of different scenes or versions")
    groups = _read_groups(aggregation)
    unique, inverse = np.unique(segments, return_inverse=True)
    group_of_segment = np.full(len(unique), -1, dtype=np.int64)
    for k, (_, label, segs) in enumerate(groups):  # file order: a later group takes a shared segment
        pos = np.clip(np.searchsorted(unique, segs), 0, len(unique) - 1)
        bad = unique[pos] != segs
        if bad.any():
            raise InputError(f"{path_text(aggregation)}: group {k} ('{label}') lists segment {int(segs[bad][0])}, "
                             f"which no vertex of {segments_path.name} has")
        group_of_segment[pos] = k
    vertex_group = group_of_segment[inverse.reshape(-1)]
    sizes = np.bincount(vertex_group[vertex_group >= 0], minlength=len(groups))
    object_ids = np.array([g[0] for g in groups], dtype=np.int64)
    kept = np.array([k for k in np.argsort(object_ids, kind="stable") if sizes[k] > 0], dtype=np.int64)
    index_of_group = np.full(len(groups), -1, dtype=np.int64)
    index_of_group[kept] = np.arange(len(kept))
    missing = sorted({groups[k][1] for k in kept if groups[k][1] not in label_table})
    if missing:
        raise InputError(f"{path_text(aggregation)}: label '{missing[0]}' is not in the label table "
                         f"({len(missing)} unknown); use the release's {LABEL_TABLE}")
    instance = np.where(vertex_group >= 0, index_of_group[np.maximum(vertex_group, 0)], -1)
    return Scene(scene, vertices, colors, faces, alignment, segments, instance,
                 np.array([label_table[groups[k][1]] for k in kept], dtype=np.int64), object_ids[kept],
                 tuple(groups[k][1] for k in kept))


# ---- the dataset --------------------------------------------------------------------------------------------------
class ScanNetDataset(Dataset):
    """The scenes of one ScanNet v2 split, read one at a time (`scene`, `iter_scenes`).

    As a `datasets.Dataset` an item is a scene's mesh vertices (``dataset[i]`` gives ``(vertices, -1)``: scenes have no
    single label); ``classes`` are the 18 benchmark classes and ``up_axis`` is ``z``.
    """

    layout = "scans"

    def __init__(self, root: Path, split: str, scene_ids: Sequence[str], folders: Sequence[Path],
                 label_table: Path, split_file: Path):
        self.scene_ids = list(scene_ids)
        self.folders = list(folders)
        self.label_table_path = label_table
        self.split_file = split_file
        self._label_table: Optional[dict[str, int]] = None
        super().__init__("scannet", root, split, BENCHMARK_CLASSES, "z", np.full(len(scene_ids), -1), 0)

    @property
    def label_table(self) -> dict[str, int]:
        if self._label_table is None:
            self._label_table = read_label_table(self.label_table_path)
        return self._label_table

    def class_counts(self) -> np.ndarray:
        """Zeros: instance counts are known only once scenes are read (`Scene.benchmark_instances`)."""
        return np.zeros(len(self.classes), dtype=np.int64)

    def source(self, i: int) -> str:
        return str(self.folders[self._index(i)])

    def data_files(self) -> list[Path]:
        """Every file the scenes are read from (the resume key's identity of the data)."""
        names = (MESH_FILE, SEGMENTS_FILE, AGGREGATION_FILE, META_FILE)
        files = [folder / n.format(scene=s) for s, folder in zip(self.scene_ids, self.folders) for n in names]
        return [self.label_table_path, self.split_file] + [f for f in files if f.is_file()]

    def _truncate(self, n: int) -> None:
        super()._truncate(n)
        self.scene_ids, self.folders = self.scene_ids[:n], self.folders[:n]

    def _read(self, i: int) -> np.ndarray:
        return read_mesh(self.folders[i] / MESH_FILE.format(scene=self.scene_ids[i]))[0]

    def scene(self, i: int) -> Scene:
        """Scene ``i`` of the split, with its annotations when it has them."""
        i = self._index(i)
        return read_scene(self.folders[i], self.label_table, self.scene_ids[i])

    def iter_scenes(self, start: int = 0, stop: Optional[int] = None) -> Iterator[tuple[int, Scene]]:
        """``(index, Scene)`` of scenes ``start`` to ``stop`` (exclusive; default: the end), in split order."""
        for i in range(start, len(self) if stop is None else min(stop, len(self))):
            yield i, self.scene(i)


def _first_file(name: str, places: Iterable[Path]) -> Optional[Path]:
    return next((p / name for p in places if (p / name).is_file()), None)


def open_scannet(root: PathLike, split: str = "val", limit: Optional[int] = None,
                 split_file: Optional[PathLike] = None) -> ScanNetDataset:
    """The scenes of a split of the ScanNet v2 release at ``root`` (module doc for the layout).

    Args:
        split: ``val``, ``train`` or ``test``: the scene ids of ``scannetv2_<split>.txt`` in ``root`` or its parent.
        split_file: a file of scene ids (one a line) to read instead.
        limit: the first ``limit`` scenes of the split.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise InputError(f"{path_text(root)}: no such folder; give the ScanNet v2 folder holding scans/ with --root")
    if (root / "scans").is_dir() or (root / "scans_test").is_dir():
        scans = [root / s for s in SCAN_FOLDERS if (root / s).is_dir()]
        places = [root, root.parent]
    else:
        scans = [root]
        places = [root, root.parent]
    if split_file is not None:
        listing = _existing_file(Path(split_file).expanduser(), "split file")
        split_name = str(listing)
    else:
        key = str(split).strip().lower()
        if key not in SPLITS:
            raise InputError(f"unknown ScanNet split '{split}': choose one of {', '.join(SPLITS)} or give a file "
                             "of scene ids")
        name = SPLIT_FILE.format(split=key)
        listing = _first_file(name, places)
        if listing is None:
            raise InputError(f"{path_text(root / name)}: no such file; put ScanNet's {name} (from its "
                             "Tasks/Benchmark folder) beside scans/ or give a split file")
        split_name = key
    ids = [line.strip() for line in _read_text(listing, "split file").splitlines() if line.strip()]
    if not ids:
        raise InputError(f"{path_text(listing)}: lists no scenes")
    bad = next((s for s in ids if not _SCENE_ID.fullmatch(s)), None)
    if bad is not None:
        raise InputError(f"{path_text(listing)}: '{bad[:60]}' is not a scene id")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
            raise InputError(f"limit must be a positive integer, got {limit!r}")
        ids = ids[: int(limit)]
    folders = []
    for s in ids:
        folder = next((d / s for d in scans if (d / s).is_dir()), None)
        if folder is None:
            raise InputError(f"{path_text(scans[0] / s)}: no such folder; scene {s} of {listing.name} is missing "
                             f"from the release")
        folders.append(folder)
    table = _first_file(LABEL_TABLE, places)
    if table is None:
        raise InputError(f"{path_text(root / LABEL_TABLE)}: no such file; put ScanNet's {LABEL_TABLE} beside scans/")
    return ScanNetDataset(root, split_name, ids, folders, table, listing)


# ---- predictions: the benchmark's format ---------------------------------------------------------------------------
class InstancePrediction(NamedTuple):
    """One predicted instance: a mask over the scene's mesh vertices, a NYU40 label id and a confidence."""

    mask: np.ndarray  # (N,) bool
    label_id: int
    confidence: float


def _mask_bytes(mask: np.ndarray) -> bytes:
    text = np.full(2 * len(mask), ord("\n"), dtype=np.uint8)
    text[0::2] = ord("0") + mask.astype(np.uint8)
    return text.tobytes()


def write_predictions(folder: PathLike, scene_id: str, predictions: Sequence[InstancePrediction]) -> Path:
    """Write a scene's predictions in the benchmark's format: ``<folder>/<scene>.txt`` and one mask file a prediction
    in ``<folder>/pred_mask/`` (confidences written exactly, so reading them back gives the same numbers).

    The scene's old ``.txt`` goes first and the new one is written last, atomically, as every mask: an interrupted
    write leaves no ``.txt`` that names a missing or foreign mask. Returns the ``.txt``.
    """
    folder = Path(folder)
    if not _SCENE_ID.fullmatch(str(scene_id)):
        raise InputError(f"'{scene_id}' is not a scene id")
    lines = []
    for k, p in enumerate(predictions):
        conf = float(p.confidence)
        if not math.isfinite(conf) or isinstance(p.label_id, bool) or not isinstance(p.label_id, (int, np.integer)):
            raise InputError(f"prediction {k} of {scene_id}: the label id must be an integer and the confidence a "
                             f"finite number, got {p.label_id!r} and {p.confidence!r}")
        lines.append((f"{MASK_FOLDER}/{scene_id}_{k}.txt", int(p.label_id), conf, np.asarray(p.mask, dtype=bool)))
    try:
        (folder / MASK_FOLDER).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"{path_text(folder)}: cannot make the predictions folder ({one_line(e)})") from None
    txt = folder / f"{scene_id}.txt"
    txt.unlink(missing_ok=True)
    for rel, _, _, mask in lines:
        data = _mask_bytes(mask)
        atomic_write(folder / rel, lambda f, d=data: f.write(d))
    text = "".join(f"{rel} {label} {conf!r}\n" for rel, label, conf, _ in lines).encode()
    return atomic_write(txt, lambda f: f.write(text))


def _read_mask(path: Path, n_vertices: int, where: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"{where}: mask {path_text(path)} does not exist")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{where}: cannot read mask {path_text(path)} ({one_line(e)})") from None
    if len(data) == 2 * n_vertices:  # the usual "0\n" / "1\n" lines, read without parsing
        raw = np.frombuffer(data, dtype=np.uint8)
        digits = raw[0::2]
        if (raw[1::2] == ord("\n")).all() and np.isin(digits, (ord("0"), ord("1"))).all():
            return digits == ord("1")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{where}: mask {path_text(path)} is not text") from None
    if len(lines) != n_vertices:
        raise InputError(f"{where}: mask {path_text(path)} has {len(lines)} lines but the mesh has {n_vertices} "
                         "vertices (one integer a vertex)")
    try:
        values = np.asarray(lines, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next(k for k, v in enumerate(lines) if not re.fullmatch(r"\s*[+-]?\d+\s*", v))
        raise InputError(f"{where}: mask {path_text(path)} line {bad + 1} is {lines[bad][:30]!r}, not an "
                         "integer") from None
    return values != 0


def read_predictions(folder: PathLike, scene_id: str, n_vertices: int) -> list[InstancePrediction]:
    """A scene's predictions in the benchmark's format (module doc), checked: a missing ``.txt`` or mask, a mask path
    outside ``folder``, a mask of another length, a label id or confidence that is not a finite number is an
    InputError naming the file and line."""
    folder = Path(folder)
    txt = folder / f"{scene_id}.txt"
    if not txt.is_file():
        raise InputError(f"{path_text(txt)}: no such file; the predictions hold nothing for scene {scene_id}")
    base = os.path.abspath(folder)
    found: dict[str, InstancePrediction] = {}
    for number, line in enumerate(_read_text(txt, "prediction file").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path_text(txt)} line {number}"
        if len(parts) != 3:
            raise InputError(f"{where}: expected '<mask path> <label id> <confidence>', got {line.strip()[:60]!r}")
        rel, label_text, conf_text = parts
        if os.path.isabs(rel):
            raise InputError(f"{where}: the mask path must be relative to the predictions folder, got {rel[:60]!r}")
        mask_path = os.path.abspath(os.path.join(folder, rel))
        if os.path.commonpath([mask_path, base]) != base:
            raise InputError(f"{where}: mask {rel[:60]!r} points outside the predictions folder")
        try:
            label, conf = float(label_text), float(conf_text)
        except ValueError:
            raise InputError(f"{where}: the label id and the confidence must be numbers, got {label_text[:20]!r} "
                             f"and {conf_text[:20]!r}") from None
        if not (math.isfinite(label) and math.isfinite(conf)):
            raise InputError(f"{where}: the label id and the confidence must be finite, got {label_text[:20]!r} "
                             f"and {conf_text[:20]!r}")
        if mask_path in found:
            log.warning("%s: mask %s is listed again; its last line counts (as ScanNet's reader does)", where, rel)
        found[mask_path] = InstancePrediction(_read_mask(Path(mask_path), n_vertices, where), int(label), conf)
    return list(found.values())


# ---- per-scene matches --------------------------------------------------------------------------------------------
@dataclass
class SceneMatches:
    """What scenes contribute to the APs: entries of the precision-recall curves, and counts. Concatenable.

    Instance entries (one per point of ScanNet's curves): ``instance_overlap`` (index into `INSTANCE_OVERLAPS`),
    ``instance_class`` (0-17), ``instance_score``, ``instance_true`` (a matched ground truth, or a false positive).
    Detection entries (one per prediction of a benchmark class with a non-empty mask and per IoU threshold, in
    scene order then file order): ``detection_iou`` (index into `DETECTION_IOUS`), ``detection_class``,
    ``detection_score``, ``detection_tp``. Counts per class: ``instance_missed`` (overlaps, classes) ground-truth
    instances no prediction matched; ``instance_gt`` instances of at least `MIN_REGION_SIZE` vertices;
    ``instance_pred`` predictions of at least that size; ``detection_gt`` non-empty instances (the boxes).
    """

    scenes: int
    predictions: int  # predictions read (all labels)
    ignored: int  # of them, those with a label outside the 18 classes
    instance_overlap: np.ndarray
    instance_class: np.ndarray
    instance_score: np.ndarray
    instance_true: np.ndarray
    instance_missed: np.ndarray
    instance_gt: np.ndarray
    instance_pred: np.ndarray
    detection_iou: np.ndarray
    detection_class: np.ndarray
    detection_score: np.ndarray
    detection_tp: np.ndarray
    detection_gt: np.ndarray

    _ENTRY_TYPES = {"instance_overlap": np.int64, "instance_class": np.int64, "instance_score": np.float64,
                    "instance_true": bool, "detection_iou": np.int64, "detection_class": np.int64,
                    "detection_score": np.float64, "detection_tp": bool}
    _COUNT_SHAPES = {"instance_missed": (len(INSTANCE_OVERLAPS), len(BENCHMARK_IDS)),
                     "instance_gt": (len(BENCHMARK_IDS),), "instance_pred": (len(BENCHMARK_IDS),),
                     "detection_gt": (len(BENCHMARK_IDS),)}

    @classmethod
    def empty(cls) -> "SceneMatches":
        values = {k: np.zeros(0, dtype=t) for k, t in cls._ENTRY_TYPES.items()}
        values.update({k: np.zeros(s, dtype=np.int64) for k, s in cls._COUNT_SHAPES.items()})
        return cls(scenes=0, predictions=0, ignored=0, **values)

    @classmethod
    def concatenate(cls, items: Iterable["SceneMatches"]) -> "SceneMatches":
        """Entries end to end (in the given order: give scenes in split order), counts summed."""
        items = list(items)
        if not items:
            return cls.empty()
        values: dict[str, Any] = {k: sum(getattr(m, k) for m in items) for k in ("scenes", "predictions", "ignored")}
        values.update({k: np.concatenate([getattr(m, k) for m in items]).astype(t)
                       for k, t in cls._ENTRY_TYPES.items()})
        values.update({k: np.sum([getattr(m, k) for m in items], axis=0).astype(np.int64)
                       for k in cls._COUNT_SHAPES})
        return cls(**values)

    def to_dict(self) -> dict:
        """JSON-able: ints and lists (floats exactly)."""
        return {f.name: (getattr(self, f.name).tolist() if isinstance(getattr(self, f.name), np.ndarray)
                         else getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SceneMatches":
        values: dict[str, Any] = {k: int(data[k]) for k in ("scenes", "predictions", "ignored")}
        values.update({k: np.asarray(data[k], dtype=t).reshape(-1) for k, t in cls._ENTRY_TYPES.items()})
        values.update({k: np.asarray(data[k], dtype=np.int64).reshape(s) for k, s in cls._COUNT_SHAPES.items()})
        return cls(**values)


def scene_matches(scene: Scene, predictions: Sequence[InstancePrediction]) -> SceneMatches:
    """Match a scene's predictions to its ground truth for both metrics (module doc); concatenate the results of all
    scenes and give them to `matches_report`."""
    scene._require_annotations()
    n = scene.num_vertices
    out = SceneMatches.empty()
    out.scenes, out.predictions = 1, len(predictions)
    if len(predictions):
        masks = np.stack([np.asarray(p.mask, dtype=bool).reshape(-1) for p in predictions])
        if masks.shape[1] != n:
            raise InputError(f"scene {scene.scene_id}: a predicted mask has {masks.shape[1]} values but the mesh has "
                             f"{n} vertices")
    else:
        masks = np.zeros((0, n), dtype=bool)
    pred_class = _class_index(np.array([int(p.label_id) for p in predictions], dtype=np.int64))
    conf = np.array([float(p.confidence) for p in predictions], dtype=np.float64)
    out.ignored = int((pred_class < 0).sum())
    sizes = masks.sum(axis=1)

    labels = scene.instance_labels
    n_inst = len(labels)
    gt_class = _class_index(labels)
    gt_sizes = scene.instance_sizes()
    rows, verts = np.nonzero(masks)  # rows sorted: prediction by prediction
    owner = scene.instance[verts] + 1  # 0: no instance
    counts = np.bincount(rows * (n_inst + 1) + owner, minlength=len(masks) * (n_inst + 1)).reshape(-1, n_inst + 1)
    void = counts[:, 0] + counts[:, 1:][:, gt_class < 0].sum(axis=1)

    entries = {k: [] for k in SceneMatches._ENTRY_TYPES}
    for c in range(len(BENCHMARK_IDS)):
        preds, gts = np.flatnonzero(pred_class == c), np.flatnonzero(gt_class == c)
        out.instance_gt[c] = int((gt_sizes[gts] >= MIN_REGION_SIZE).sum())
        out.instance_pred[c] = int((sizes[preds] >= MIN_REGION_SIZE).sum())
        out.detection_gt[c] = int((gt_sizes[gts] > 0).sum())
        inter = counts[preds][:, gts + 1]
        for o, overlap in enumerate(INSTANCE_OVERLAPS):
            m = scannet_instance_matches(inter, sizes[preds], gt_sizes[gts], void[preds], conf[preds], overlap,
                                         MIN_REGION_SIZE)
            out.instance_missed[o, c] = m.missed
            entries["instance_overlap"].append(np.full(len(m.scores), o))
            entries["instance_class"].append(np.full(len(m.scores), c))
            entries["instance_score"].append(m.scores)
            entries["instance_true"].append(m.true)

    # detection: every non-empty mask of a benchmark class against every non-empty instance of it
    aligned = scene.aligned
    det = np.flatnonzero((pred_class >= 0) & (sizes > 0))
    pred_boxes = _group_boxes(aligned[verts], rows, len(masks))
    gt_boxes = scene.instance_boxes()
    per_class = [(det[pred_class[det] == c], np.flatnonzero((gt_class == c) & (gt_sizes > 0)))
                 for c in range(len(BENCHMARK_IDS))]
    for t, threshold in enumerate(DETECTION_IOUS):
        tp = np.zeros(len(masks), dtype=bool)
        for preds, gts in per_class:
            if len(preds):
                tp[preds] = box_matches(box_iou_3d_axis_aligned(pred_boxes[preds], gt_boxes[gts]), conf[preds],
                                        threshold)
        entries["detection_iou"].append(np.full(len(det), t))
        entries["detection_class"].append(pred_class[det])
        entries["detection_score"].append(conf[det])
        entries["detection_tp"].append(tp[det])
    for k, t in SceneMatches._ENTRY_TYPES.items():
        setattr(out, k, np.concatenate(entries[k]).astype(t) if entries[k] else np.zeros(0, dtype=t))
    return out


# ---- reports ------------------------------------------------------------------------------------------------------
def _mean(values: Iterable[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def matches_report(m: SceneMatches) -> dict:
    """Every AP of concatenated `SceneMatches`: ``{"instance": {"classes": {name: {"ap", "ap50", "ap25"}}, "mean":
    {...}}, "detection": {"classes": {name: {"ap25", "ap50"}}, "mean": {...}}, "counts": {...}}``; null for a class
    without ground truth, which the means leave out."""
    o50 = int(np.flatnonzero(np.isclose(INSTANCE_OVERLAPS, 0.5))[0])
    o25 = int(np.flatnonzero(np.isclose(INSTANCE_OVERLAPS, 0.25))[0])
    main = np.flatnonzero(~np.isclose(INSTANCE_OVERLAPS, 0.25))
    instance, detection, counts = {}, {}, {}
    for c, name in enumerate(BENCHMARK_CLASSES):
        if m.instance_gt[c] == 0:
            aps = None
        else:
            aps = np.zeros(len(INSTANCE_OVERLAPS))
            if m.instance_pred[c] > 0:
                for o in range(len(INSTANCE_OVERLAPS)):
                    sel = (m.instance_class == c) & (m.instance_overlap == o)
                    aps[o] = scannet_ap(m.instance_score[sel], m.instance_true[sel], int(m.instance_missed[o, c]))
        instance[name] = {"ap": None if aps is None else float(np.mean(aps[main])),
                          "ap50": None if aps is None else float(aps[o50]),
                          "ap25": None if aps is None else float(aps[o25])}
        det = {}
        for t, threshold in enumerate(DETECTION_IOUS):
            sel = (m.detection_class == c) & (m.detection_iou == t)
            det[f"ap{round(threshold * 100)}"] = detection_ap(m.detection_score[sel], m.detection_tp[sel],
                                                              int(m.detection_gt[c]))
        detection[name] = det
        counts[name] = {"gt_instances": int(m.instance_gt[c]), "predictions": int(m.instance_pred[c]),
                        "gt_boxes": int(m.detection_gt[c]),
                        "detections": int(((m.detection_class == c) & (m.detection_iou == 0)).sum())}
    return {
        "instance": {"classes": instance, "mean": {k: _mean(v[k] for v in instance.values())
                                                   for k in ("ap", "ap50", "ap25")}},
        "detection": {"classes": detection, "mean": {k: _mean(v[k] for v in detection.values())
                                                     for k in ("ap25", "ap50")}},
        "counts": counts,
        "scenes": int(m.scenes),
        "predictions": int(m.predictions),
        "ignored_predictions": int(m.ignored),
    }


def protocol() -> dict:
    """The metrics' settings and conventions, recorded in every report."""
    return {
        "classes": dict(zip(BENCHMARK_CLASSES, BENCHMARK_IDS)),
        "instance_overlaps": [float(o) for o in INSTANCE_OVERLAPS],
        "instance_ap": "mean over overlaps 0.50:0.05:0.90; ap50 and ap25 at 0.5 and 0.25 (ScanNet "
                       "evaluate_semantic_instance.py)",
        "min_region_size": MIN_REGION_SIZE,
        "detection_ious": list(DETECTION_IOUS),
        "detection_ap": "VOC all-point with precision envelope on axis-aligned boxes after axisAlignment "
                        "(VoteNet eval_det.py)",
        "conventions": "detection: every non-empty ground-truth instance of a benchmark class and every non-empty "
                       "predicted mask; a class with ground truth and no prediction scores 0; a class without ground "
                       "truth is null and left out of the means; labels outside the 18 classes are ignored; ties in "
                       "confidence rank in scene order then file order",
    }


def _pct(value: Optional[float]) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def summary(report: dict) -> str:
    """The text tables of a ScanNet report: per class and mean, instance AP / AP50 / AP25 and detection AP25 /
    AP50 (in %), one table a run."""
    head = f"{'class':<16}{'AP':>8}{'AP50':>8}{'AP25':>8}{'det AP25':>10}{'det AP50':>10}{'GT':>6}{'pred':>7}"
    lines = []
    for name, run in report["runs"].items():
        where = report.get("split", "")
        lines.append(f"pointfalip evaluate — scannet {where}: {run['scenes']} scenes, run {name} "
                     f"({run['predictions']} predictions, {run['ignored_predictions']} outside the 18 classes)")
        lines.append(head)
        inst, det = run["instance"], run["detection"]
        for cls in BENCHMARK_CLASSES:
            i, d, n = inst["classes"][cls], det["classes"][cls], run["counts"][cls]
            lines.append(f"{cls:<16}{_pct(i['ap']):>8}{_pct(i['ap50']):>8}{_pct(i['ap25']):>8}"
                         f"{_pct(d['ap25']):>10}{_pct(d['ap50']):>10}{n['gt_boxes']:>6}{n['detections']:>7}")
        lines.append(f"{'mean':<16}{_pct(inst['mean']['ap']):>8}{_pct(inst['mean']['ap50']):>8}"
                     f"{_pct(inst['mean']['ap25']):>8}{_pct(det['mean']['ap25']):>10}{_pct(det['mean']['ap50']):>10}")
    if report.get("report"):
        lines.append(f"report: {report['report']}")
    return "\n".join(lines)


def evaluate_predictions(dataset: ScanNetDataset, predictions: PathLike, progress: bool = False) -> dict:
    """ScanNet instance AP and detection AP of another method's predictions (the benchmark's format in the folder
    ``predictions``) on every scene of ``dataset``; no model. Returns the report (run ``predictions``) of one pass
    of `ScanNetTask` (`evaluate_scannet` adds resuming, sharding and the written report); InputError for a scene
    without a prediction file or any bad file."""
    return _run_once(ScanNetTask(dataset, 1, predictions=predictions), progress)


def _dataset_info(dataset: ScanNetDataset) -> dict:
    return {"dataset": "scannet", "root": str(dataset.root), "split": dataset.split, "scenes": len(dataset),
            "scene_ids": list(dataset.scene_ids)}


def _progress(items, total: int, enabled: bool, desc: str):
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, unit="scene", desc=desc, dynamic_ncols=True)


# ---- the project's own predictions --------------------------------------------------------------------------------
def propose(scene: Scene, proposals: Union[str, np.ndarray, Sequence[np.ndarray]] = "segment",
            segmentation: Any = None) -> np.ndarray:
    """Class-agnostic proposals ``(P, N)`` bool over the scene's vertices.

    ``"segment"``: the project's scene segmentation (`pointfalip.scene.segment`, `segmentation_config` unless
    ``segmentation`` gives a `SegmentationConfig`) on the aligned vertices; ``"gt"``: the annotated instances of the
    benchmark classes (the oracle that isolates recognition from segmentation); an array or list of ``(N,)`` masks:
    those (e.g. another method's, `read_predictions`).
    """
    if isinstance(proposals, str):
        if proposals == "gt":
            return scene.instance_masks(scene.benchmark_instances())
        if proposals != "segment":
            raise InputError(f"unknown proposals '{proposals}': use segment, gt or a folder of masks")
        from .scene import segment

        config = segmentation if segmentation is not None else segmentation_config()
        objects = segment(scene.aligned, config)
        masks = np.zeros((len(objects), scene.num_vertices), dtype=bool)
        for k, obj in enumerate(objects):
            masks[k, obj.indices] = True
        return masks
    masks = [np.asarray(m).reshape(-1) for m in proposals]
    if any(len(m) != scene.num_vertices for m in masks):
        raise InputError(f"scene {scene.scene_id}: a proposal mask does not have one value per mesh vertex "
                         f"({scene.num_vertices})")
    return np.stack(masks).astype(bool) if masks else np.zeros((0, scene.num_vertices), dtype=bool)


def segmentation_config(**overrides: Any):
    """The segmentation settings of ``--proposals segment``: `SEGMENT_PRESET` with `SEGMENT_OVERRIDES`, then
    ``overrides``."""
    from .scene import load_segmentation_config

    return load_segmentation_config(SEGMENT_PRESET, **{**SEGMENT_OVERRIDES, **overrides})


def proposal_clouds(scene: Scene, masks: np.ndarray, num_points: int = DEFAULT_PROPOSAL_POINTS,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(clouds (K, num_points, 3) float32, kept (K,) proposal indices)``: each proposal's aligned vertices,
    resampled to ``num_points`` (without replacement when it has more, every vertex plus repeats when fewer; seeded
    by ``seed`` and the proposal's index), so that proposals project in one batch. Proposals with fewer distinct
    points than a cloud needs (`pointfalip.io.MIN_POINTS`) are left out."""
    aligned = scene.aligned
    clouds, kept = [], []
    for k, mask in enumerate(masks):
        idx = np.flatnonzero(mask)
        if len(idx) < pio.MIN_POINTS or len(np.unique(aligned[idx], axis=0)) < pio.MIN_POINTS:
            continue
        rng = np.random.default_rng([seed, k])
        if len(idx) >= num_points:
            pick = rng.choice(idx, num_points, replace=False)
        else:
            pick = np.concatenate([idx, rng.choice(idx, num_points - len(idx), replace=True)])
        clouds.append(aligned[pick])
        kept.append(k)
    if not clouds:
        return np.zeros((0, num_points, 3), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return np.stack(clouds), np.asarray(kept, dtype=np.int64)


def score_proposals(recognizer: Any, clouds: np.ndarray, with_plain: bool = False) -> dict[str, "np.ndarray"]:
    """Label probabilities ``(K, C)`` of proposal clouds through ``recognizer.embed`` -> ``logits``, batched:
    ``{"falip" or "baseline": probs}`` for the recognizer's own setting, or both from one pass with ``with_plain``
    (FALIP on). Build the recognizer with ``up_axis="z"``: ScanNet is z-up."""
    import torch

    own = "falip" if getattr(recognizer, "falip", True) else "baseline"
    runs = ("falip", "baseline") if with_plain else (own,)
    out: dict[str, list] = {r: [] for r in runs}
    for start in range(0, len(clouds), _ENCODE_CHUNK):
        chunk = clouds[start:start + _ENCODE_CHUNK]
        feats = recognizer.embed(chunk, with_plain=True) if with_plain else (recognizer.embed(chunk),)
        for run, f in zip(runs, feats):
            out[run].append(recognizer.probabilities(recognizer.logits(f)).float().cpu())
    n = len(recognizer.labels)
    return {r: (torch.cat(v).numpy() if v else np.zeros((0, n), dtype=np.float32)).astype(np.float64)
            for r, v in out.items()}


def label_proposals(masks: np.ndarray, kept: np.ndarray, probabilities: np.ndarray, label_ids: Sequence[int],
                    top_k: int = 1) -> list[InstancePrediction]:
    """Predictions of scored proposals: for each kept proposal, its ``top_k`` labels (``top_k`` predictions with the
    same mask), confidence = the recognizer's probability; proposals in order, then labels best first."""
    from .recognize import check_top_k

    top_k = check_top_k(top_k)
    ids = np.asarray(label_ids, dtype=np.int64)
    if len(probabilities) and len(ids) != probabilities.shape[1]:
        raise InputError(f"{len(ids)} label ids for {probabilities.shape[1]} labels")
    out = []
    for row, k in enumerate(kept):
        best = np.argsort(-probabilities[row], kind="stable")[:top_k]  # at most every label
        out.extend(InstancePrediction(masks[k], int(ids[j]), float(probabilities[row, j])) for j in best)
    return out


def predict_scene(recognizer: Any, scene: Scene, proposals: Union[str, np.ndarray, Sequence[np.ndarray]] = "segment",
                  label_ids: Optional[Sequence[int]] = None, top_k: int = 1, segmentation: Any = None,
                  num_points: int = DEFAULT_PROPOSAL_POINTS, seed: int = 0) -> list[InstancePrediction]:
    """Class-agnostic proposals (`propose`), each recognised (`proposal_clouds`, `score_proposals`) and labelled
    (`label_proposals`). ``label_ids``: the NYU40 id of each of the recognizer's labels (default: `label_ids_for`
    its label names)."""
    ids = label_ids_for(recognizer.labels) if label_ids is None else list(label_ids)
    masks = propose(scene, proposals, segmentation)
    clouds, kept = proposal_clouds(scene, masks, num_points, seed)
    probs = next(iter(score_proposals(recognizer, clouds).values()))
    return label_proposals(masks, kept, probs, ids, top_k)


def evaluate_recognizer(recognizer: Any, dataset: ScanNetDataset, proposals: Union[str, PathLike] = "segment",
                        top_k: int = 1, save_predictions: Optional[PathLike] = None, segmentation: Any = None,
                        num_points: int = DEFAULT_PROPOSAL_POINTS, progress: bool = False) -> dict:
    """Predict every scene (``proposals`` ``"segment"``, ``"gt"`` or a folder of another method's predictions, whose
    labels are ignored), optionally write the predictions in the benchmark's format, and return the report (run
    ``falip`` or ``baseline``): one pass of `ScanNetTask`, no resume (`evaluate_scannet` adds it)."""
    return _run_once(ScanNetTask(dataset, 1, recognizer=recognizer, proposals=proposals, top_k=top_k,
                                 save_predictions=save_predictions, segmentation=segmentation,
                                 num_points=num_points), progress)


# --------------------------------------------------------------------------------------------------
# the evaluation task (resumable, sharded: `pointfalip.batches.run_evaluation`)
# --------------------------------------------------------------------------------------------------

TASK = "scannet instance segmentation and detection"
PREDICTIONS_RUN = "predictions"  # the run of another method's predictions (no model)


@dataclass
class ScanNetBatch:
    """What the scenes [start, start + batch_size) contribute: each run's `SceneMatches` of those scenes."""

    start: int
    indices: np.ndarray  # (B,) int64 scene indices
    matches: list  # [(run, SceneMatches.to_dict()), ...]


@dataclass(kw_only=True)
class ScanNetReport(Report):
    """The report of a ScanNet evaluation: the split, the settings, the protocol and one `matches_report` a run."""

    TASK: ClassVar[str] = TASK

    dataset: str
    root: str
    split: str
    scenes: int
    scene_ids: list
    model: Optional[str]
    pretrained: Optional[str]
    precision: Optional[str]
    settings: dict
    protocol: dict
    runs: dict
    report: str = ""


class ScanNetTask:
    """ScanNet v2 instance AP and detection AP, as `batches.run_evaluation` runs it: another method's predictions
    (``predictions``, no model), or the recognizer's labels of class-agnostic proposals (``proposals``: ``segment``,
    ``gt`` or a folder of masks) for each run (``falip``, ``baseline``, or both from one pass with ``compare``)."""

    name = TASK
    record = ScanNetBatch

    def __init__(self, dataset: ScanNetDataset, batch_size: int, *, predictions: Optional[PathLike] = None,
                 recognizer: Any = None, compare: bool = False, proposals: Union[str, PathLike] = "segment",
                 top_k: int = 1, save_predictions: Optional[PathLike] = None, segmentation: Any = None,
                 num_points: int = DEFAULT_PROPOSAL_POINTS):
        if (predictions is None) == (recognizer is None):
            raise InputError("evaluate ScanNet either another method's --predictions or the model's own labels")
        self.dataset, self.batch_size = dataset, batch_size
        self.predictions = None if predictions is None else Path(predictions)
        if self.predictions is not None and not self.predictions.is_dir():
            raise InputError(f"{path_text(self.predictions)}: no such folder; give the folder of <scene>.txt files")
        self.recognizer, self.compare, self.top_k, self.num_points = recognizer, compare, top_k, num_points
        self.segmentation = segmentation  # None: `segmentation_config`
        self.proposals = proposals if proposals in ("segment", "gt") else Path(proposals)
        if isinstance(self.proposals, Path) and not self.proposals.is_dir():
            raise InputError(f"{path_text(self.proposals)}: no such folder; --proposals takes segment, gt or a "
                             "folder of masks")
        self.save_predictions = None if save_predictions is None else Path(save_predictions)
        if recognizer is None:
            self.runs: tuple[str, ...] = (PREDICTIONS_RUN,)
        else:
            own = "falip" if getattr(recognizer, "falip", True) else "baseline"
            self.runs = ("falip", "baseline") if compare else (own,)
            self.label_ids = label_ids_for(recognizer.labels)
        self.n_items = len(dataset)
        self.description = f"scannet {'+'.join(self.runs)}"

    def key(self) -> dict:
        from . import __version__
        from .files import data_identity

        rec = self.recognizer
        model = None if rec is None else {"name": str(rec.model.name), "pretrained": str(rec.model.pretrained),
                                          "precision": str(rec.model.precision), "labels": list(rec.labels),
                                          "features": rec.feature_settings()}
        return {"pointfalip": __version__, "root": str(Path(self.dataset.root).resolve()),
                "split": self.dataset.split, "scenes": list(self.dataset.scene_ids),
                "data": data_identity(self.dataset.data_files()),
                "predictions": None if self.predictions is None else data_identity(
                    sorted(self.predictions.rglob("*.txt"))),
                "proposals": str(self.proposals), "model": model, "runs": list(self.runs), "top_k": self.top_k,
                "num_points": self.num_points, "batch_size": self.batch_size,
                "segmentation": None if self.segmentation is None else str(self.segmentation),
                "save_predictions": None if self.save_predictions is None else str(self.save_predictions)}

    def _scene_predictions(self, scene: Scene) -> dict[str, list]:
        if self.predictions is not None:
            return {PREDICTIONS_RUN: read_predictions(self.predictions, scene.scene_id, scene.num_vertices)}
        source = self.proposals if not isinstance(self.proposals, Path) else [
            p.mask for p in read_predictions(self.proposals, scene.scene_id, scene.num_vertices)]
        masks = propose(scene, source, self.segmentation)
        clouds, kept = proposal_clouds(scene, masks, self.num_points)
        probs = score_proposals(self.recognizer, clouds, with_plain=self.compare)
        return {run: label_proposals(masks, kept, probs[run], self.label_ids, self.top_k) for run in self.runs}

    def compute(self, lo: int, hi: int) -> Iterator[ScanNetBatch]:
        for start in range(lo, min(hi, self.n_items), self.batch_size):
            stop = min(start + self.batch_size, self.n_items)
            parts: dict[str, list] = {r: [] for r in self.runs}
            for _, scene in self.dataset.iter_scenes(start, stop):
                preds = self._scene_predictions(scene)
                if self.save_predictions is not None:
                    write_predictions(self.save_predictions, scene.scene_id, preds[self.runs[0]])
                for run in self.runs:
                    parts[run].append(scene_matches(scene, preds[run]))
            yield ScanNetBatch(start, np.arange(start, stop, dtype=np.int64),
                               [(run, SceneMatches.concatenate(m).to_dict()) for run, m in parts.items()])

    def report(self, batches: list, out: Path) -> ScanNetReport:
        by_run: dict[str, list] = {r: [] for r in self.runs}
        for b in batches:
            for run, data in b.matches:
                by_run[run].append(SceneMatches.from_dict(data))
        rec = self.recognizer
        settings = {"predictions": None if self.predictions is None else str(self.predictions),
                    "save_predictions": None if self.save_predictions is None else str(self.save_predictions)}
        if rec is not None:
            settings.update(proposals=str(self.proposals), top_k=self.top_k, num_points=self.num_points,
                            labels=list(rec.labels), label_ids=self.label_ids)
        info = _dataset_info(self.dataset)
        return ScanNetReport(
            dataset=info["dataset"], root=info["root"], split=info["split"], scenes=info["scenes"],
            scene_ids=info["scene_ids"], model=None if rec is None else str(rec.model.name),
            pretrained=None if rec is None else str(rec.model.pretrained),
            precision=None if rec is None else str(rec.model.precision), settings=settings, protocol=protocol(),
            runs={run: matches_report(SceneMatches.concatenate(m)) for run, m in by_run.items()}, report=str(out))

    def write(self, report: ScanNetReport) -> list[Path]:
        return []


def check_predictions_folder(folder: PathLike) -> Path:
    """``folder`` as a place for new predictions: absent or an empty folder (InputError otherwise), so that a run
    never mixes its files with others' and can remove what it wrote."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"--save-predictions {path_text(folder)}: exists and is not an empty folder; choose a new "
                         "folder")
    return folder


def _run_once(task: ScanNetTask, progress: bool = False) -> dict:
    """A task's report from one pass over every scene, in memory: no resume cache, no report file."""
    batches = _progress(task.compute(0, task.n_items), task.n_items, progress, task.description)
    report = task.report(list(batches), Path())
    report.report = ""
    return report.to_dict()


def evaluate_scannet(dataset: ScanNetDataset, model: Any = None, *, predictions: Optional[PathLike] = None,
                     labels: Optional[Sequence[str]] = None, preset: str = "pointclip_v2", compare: bool = False,
                     falip: bool = True, proposals: Union[str, PathLike] = "segment", top_k: int = 1,
                     save_predictions: Optional[PathLike] = None, batch_size: int = 4, out: Optional[PathLike] = None,
                     progress: bool = True) -> dict:
    """ScanNet v2 instance AP and detection AP: of another method's ``predictions`` (no model), or of ``model``'s
    labels (over ``labels``, default the 18 benchmark classes) of class-agnostic ``proposals``; streamed, resumable
    (``<out>.partial/``) and sharded under torchrun. Writes (rank 0) and returns the report."""
    from .batches import check_batch_size, run_evaluation

    batch_size = check_batch_size(batch_size)
    recognizer = None
    if model is not None:
        from .recognize import Recognizer

        recognizer = Recognizer(model, labels=list(labels or benchmark_labels()), preset=preset, falip=falip,
                                up_axis="z")
    task = ScanNetTask(dataset, batch_size, predictions=predictions, recognizer=recognizer, compare=compare,
                       proposals=proposals, top_k=top_k, save_predictions=save_predictions)
    save = task.save_predictions
    existed = save is not None and save.exists()
    if save is not None:
        check_predictions_folder(save)
    try:
        return run_evaluation(task, Path(out) if out is not None else Path("evaluate_scannet.json"),
                              progress).to_dict()
    except InputError:  # a user error midway: the predictions folder goes back to what it was (absent or empty)
        if save is not None and save.is_dir():
            import shutil

            for entry in ([save] if not existed else list(save.iterdir())):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        raise


@register_dataset("scannet", splits=SPLITS)
def _scannet(root: Path, split: str, num_points: int) -> ScanNetDataset:
    """`datasets.open_dataset("scannet", ...)`: the split's scenes (``num_points`` does not apply: items are scenes)."""
    return open_scannet(root, split)


register_task(TaskKind(TASK, ("scannet",), summary))
