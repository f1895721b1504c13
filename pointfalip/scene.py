"""Scene segmentation and per-object recognition (robotics).

:func:`segment` splits a scene point cloud (metres, any frame) into objects:

1. **Downsample** to a voxel grid (``voxel_size``): each occupied voxel becomes the mean of its points.
   Planes and clusters are found on these voxel points; every input point then follows its voxel, so the
   objects report **full-resolution** input points (and centroids and boxes computed from them).
2. **Support planes**: RANSAC (as open3d's ``segment_plane``, in seeded numpy, see :func:`_ransac_plane`)
   finds the largest plane of the voxels not yet removed, refitted by least squares on its inliers. It is
   removed while it holds at least ``min_plane_fraction`` of them, its largest connected patch spans at
   least ``min_plane_size`` metres along both in-plane axes (an object's face is smaller; a plane that
   only slices through several objects has no such patch; the span is that of the central 90 % of the
   patch's points) and fewer than ``max_planes`` planes have gone. Every input point
   within ``plane_distance`` of a removed plane is removed too (the cut is exact, not voxel-wide).
3. **Outliers**: statistical outlier removal (open3d ``remove_statistical_outlier``) on what is left.
4. **Objects**: DBSCAN (open3d ``cluster_dbscan``, ``eps = cluster_tolerance``); clusters of
   ``min_object_points`` to ``max_object_points`` voxel points become objects. Those counts are in
   downsampled points (occupied voxels, i.e. surface area / ``voxel_size``²), so they do not depend on
   how dense the sensor is; :attr:`SceneObject.num_points` counts the full-resolution points.

Objects are ordered by the distance of their centroid from the origin of the input frame (for a sensor
frame: nearest first), ties by size (larger first). The result is deterministic: RANSAC draws from a
generator seeded with ``SegmentationConfig.seed``, local to the call (so threads share nothing), and
open3d's outlier removal and DBSCAN do not draw random numbers.

:class:`SceneRecognizer` glues segmentation to a recognizer (anything with
``classify(list_of_clouds, top_k=k) -> list[list[Prediction]]``, e.g. :class:`pointfalip.Recognizer`):
one ``classify`` call a frame for all of its objects, answered as a :class:`SceneResult` of
:class:`RecognizedObject` (dataclasses; ``to_dict()`` where JSON is printed). With ``track=True`` a
:class:`pointfalip.tracking.Tracker` follows the objects over the frames and gives each a stable ``id`` and a
smoothed ``track_label``.

Settings: :class:`SegmentationConfig` (defaults: the ``tabletop`` preset); presets in ``configs/scene.yaml``
(``tabletop``, ``room``) through :func:`load_segmentation_config`. :class:`SceneSettings` names everything a
run builds its :class:`SceneRecognizer` from (the command line and the ROS 2 node fill it).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np

from . import io
from . import presets
from .errors import InputError
from .tracking import Tracker, TrackerConfig, load_tracking_config

logger = logging.getLogger(__name__)

__all__ = [
    "CONFIG_FILE",
    "Plane",
    "RecognizedObject",
    "SceneObject",
    "SceneRecognizer",
    "SceneResult",
    "SceneSettings",
    "SceneSegmentation",
    "SegmentationConfig",
    "list_segmentation_presets",
    "load_scene_recognizer",
    "load_segmentation_config",
    "segment",
    "segment_scene",
]

CONFIG_FILE = presets.config_file("scene.yaml")

_RANSAC_N = 3  # points a RANSAC hypothesis is drawn from (three define a plane)
_PLANE_SPAN_PERCENTILES = (5.0, 95.0)  # a plane's in-plane span: that of the central 90 % of its points
_RANSAC_CONFIDENCE = 0.99999999  # RANSAC stops once a better plane would be missed with less than 1 - this
_RANSAC_BLOCK_ELEMENTS = 1 << 22  # point-hypothesis distances computed at once (memory ~32 MiB)


# --------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentationConfig:
    """Segmentation settings; lengths in metres. The defaults are the ``tabletop`` preset (an RGB-D camera
    0.5-1.5 m from a table with objects of 3-40 cm); ``room`` in ``configs/scene.yaml`` is for room scale."""

    voxel_size: float = 0.005  # metres: edge of the voxel grid planes and clusters are found on (0: every point)
    plane_distance: float = 0.01  # metres: points this close to a support plane are removed with it
    plane_iterations: int = 1000  # RANSAC iterations per plane (count)
    min_plane_fraction: float = 0.2  # share (0-1) of the remaining downsampled points a plane must hold to go
    min_plane_size: float = 0.25  # metres: a plane must span this along both in-plane axes to go (faces don't)
    max_planes: int = 2  # most support planes removed (count; 0 keeps every plane)
    outlier_neighbors: int = 20  # neighbours (count) of statistical outlier removal; 0 disables it
    outlier_std_ratio: float = 2.0  # std devs (unitless): outlier if its mean neighbour distance > mean + this * std
    cluster_tolerance: float = 0.02  # metres: DBSCAN eps, the gap that separates two objects
    cluster_min_points: int = 10  # downsampled points within cluster_tolerance that make a DBSCAN core point
    min_object_points: int = 30  # downsampled points (occupied voxels): smaller clusters are dropped as clutter
    max_object_points: int = 20000  # downsampled points: larger clusters are dropped (walls, leftovers of planes)
    seed: int = 0  # seed of the RANSAC generator (an integer, no unit)

    def __post_init__(self) -> None:
        for name in ("voxel_size",):
            _check_number(self, name, minimum=0.0, strict=False)
        for name in ("plane_distance", "cluster_tolerance", "outlier_std_ratio"):
            _check_number(self, name, minimum=0.0, strict=True)
        _check_number(self, "min_plane_size", minimum=0.0, strict=False)
        _check_number(self, "min_plane_fraction", minimum=0.0, strict=False)
        if self.min_plane_fraction > 1:
            raise InputError(f"SegmentationConfig.min_plane_fraction must be in [0, 1], got {self.min_plane_fraction}")
        for name in ("plane_iterations", "cluster_min_points", "min_object_points", "max_object_points"):
            presets.check_int(self, name, minimum=1)
        for name in ("max_planes", "outlier_neighbors", "seed"):
            presets.check_int(self, name, minimum=0)
        if self.max_object_points < self.min_object_points:
            raise InputError(f"SegmentationConfig.max_object_points ({self.max_object_points}) is smaller than "
                             f"min_object_points ({self.min_object_points})")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "SegmentationConfig":
        """Build from a mapping of field names (unknown keys raise, missing ones keep their defaults)."""
        return presets.from_mapping(cls, values, "segmentation settings")

    def to_dict(self) -> dict:
        return asdict(self)


def _check_number(cfg: SegmentationConfig, name: str, minimum: float, strict: bool) -> None:
    value = getattr(cfg, name)
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    ok = ok and np.isfinite(value) and (value > minimum if strict else value >= minimum)
    if not ok:
        rel = ">" if strict else ">="
        raise InputError(f"SegmentationConfig.{name} must be a number {rel} {minimum}, got {value!r}")
    object.__setattr__(cfg, name, float(value))


def list_segmentation_presets(config_file: str | Path | None = None) -> list[str]:
    """Names of the presets in ``configs/scene.yaml`` (or in ``config_file``)."""
    if config_file is None:
        return presets.list_presets("segmentation")
    return sorted(presets.read_yaml(Path(config_file)).get("presets") or {})


def load_segmentation_config(preset: str = "tabletop", *, config_file: str | Path | None = None,
                             **overrides: Any) -> SegmentationConfig:
    """A preset of ``configs/scene.yaml`` (``tabletop`` or ``room``), with keyword overrides.

    Example: ``load_segmentation_config("room", voxel_size=0.03)``. A preset lists only what differs from
    :class:`SegmentationConfig`'s defaults; ``config_file`` reads another file laid out the same way.

    Raises:
        InputError: unknown preset (the message lists them), unknown setting, invalid value.
    """
    values = presets.load_preset("segmentation", preset, config_file_=Path(config_file) if config_file else None)
    return presets.from_mapping(SegmentationConfig, {**values, **overrides}, f"segmentation preset {preset}")


# --------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class SceneObject:
    """One segmented object, in the input's frame and units (metres)."""

    points: np.ndarray  # (M, 3) float32: the object's full-resolution input points
    centroid: np.ndarray  # (3,) float64: mean of ``points``
    bbox_min: np.ndarray  # (3,) float64: axis-aligned box of ``points`` in the input frame, lower corner
    bbox_max: np.ndarray  # (3,) float64: upper corner
    num_points: int  # M
    indices: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (M,) int64: rows of the input

    def to_dict(self) -> dict:
        """``centroid``, ``bbox_min``, ``bbox_max`` (lists of floats) and ``num_points``: JSON-serialisable."""
        return {
            "centroid": [float(v) for v in self.centroid],
            "bbox_min": [float(v) for v in self.bbox_min],
            "bbox_max": [float(v) for v in self.bbox_max],
            "num_points": int(self.num_points),
        }


class Plane(NamedTuple):
    """A removed support plane: ``normal . p + offset = 0``; the normal is a unit vector pointing to the side of
    the input frame's origin (for a sensor frame: towards the sensor, i.e. "up" for a table seen from above)."""

    normal: np.ndarray  # (3,) float64, unit length
    offset: float  # metres
    num_points: int  # full-resolution input points removed with it (within plane_distance)


class SceneSegmentation(NamedTuple):
    objects: list[SceneObject]  # ordered by centroid distance from the origin, nearest first
    planes: list[Plane]  # in the order they were removed (largest first)


# --------------------------------------------------------------------------------------------------
# segmentation
# --------------------------------------------------------------------------------------------------

def segment(points: Any, config: SegmentationConfig | None = None) -> list[SceneObject]:
    """Objects of a scene point cloud: support planes and outliers removed, the rest clustered.

    Args:
        points: ``(N, 3)`` (or ``(N, C>=3)``, extra columns ignored) array-like or tensor, metres, any frame.
            Rows with NaN / infinite coordinates are dropped (``SceneObject.indices`` still refer to the input).
        config: settings; ``None``: :class:`SegmentationConfig`'s defaults (the ``tabletop`` preset).

    Returns:
        The objects, nearest centroid (to the frame's origin) first; ``[]`` for an empty, all-NaN or
        plane-only scene.

    Raises:
        InputError: ``points`` is not an ``(N, 3)`` array of real numbers.
    """
    return segment_scene(points, config).objects


def segment_scene(points: Any, config: SegmentationConfig | None = None) -> SceneSegmentation:
    """:func:`segment`, plus the support planes it removed (their normals give the scene's "up")."""
    cfg = SegmentationConfig() if config is None else config
    if not isinstance(cfg, SegmentationConfig):
        raise InputError(f"config must be a SegmentationConfig, got {type(cfg).__name__}")
    pts, rows = _scene_points(points)
    if len(pts) == 0:
        return SceneSegmentation([], [])

    inverse, voxels = _voxelize(pts, cfg.voxel_size)
    alive = np.ones(len(voxels), dtype=bool)  # voxels not yet removed
    rng = np.random.default_rng(cfg.seed)  # local: calls from several threads do not share it
    planes: list[tuple[np.ndarray, float]] = []
    while len(planes) < cfg.max_planes:
        idx = np.flatnonzero(alive)
        if len(idx) < max(_RANSAC_N, cfg.min_object_points):
            break
        found = _find_plane(voxels[idx], cfg, rng)
        if found is None:
            break
        normal, offset, inliers = found
        planes.append((normal, offset))
        alive[idx[inliers]] = False

    on_plane = np.zeros(len(pts), dtype=bool)
    plane_results = []
    for normal, offset in planes:
        near = np.abs(pts @ normal + offset) <= cfg.plane_distance
        plane_results.append(Plane(normal, offset, int(np.count_nonzero(near & ~on_plane))))
        on_plane |= near

    idx = np.flatnonzero(alive)
    if len(idx) < cfg.min_object_points:
        return SceneSegmentation([], plane_results)
    idx = _remove_outliers(voxels, idx, cfg)
    labels = _cluster(voxels[idx], cfg)
    voxel_label = np.full(len(voxels), -1, dtype=np.int64)
    voxel_label[idx] = labels
    sizes = np.bincount(labels[labels >= 0], minlength=0) if len(labels) else np.zeros(0, dtype=np.int64)
    good = (sizes >= cfg.min_object_points) & (sizes <= cfg.max_object_points)
    if not good.any():
        return SceneSegmentation([], plane_results)

    point_label = voxel_label[inverse]
    point_label[on_plane] = -1  # the exact cut at plane_distance, not voxel-wide
    point_label[point_label >= 0] = np.where(good, np.arange(len(good)), -1)[point_label[point_label >= 0]]
    members = np.flatnonzero(point_label >= 0)
    order = members[np.argsort(point_label[members], kind="stable")]  # input order kept within an object
    starts = np.searchsorted(point_label[order], np.flatnonzero(good))
    ends = np.append(starts[1:], len(order))

    objects = []
    for s, e in zip(starts, ends):
        sel = order[s:e]
        if len(sel) == 0:
            continue
        obj_pts = pts[sel]
        objects.append(SceneObject(
            points=obj_pts.astype(np.float32),
            centroid=obj_pts.mean(axis=0),
            bbox_min=obj_pts.min(axis=0),
            bbox_max=obj_pts.max(axis=0),
            num_points=int(len(sel)),
            indices=rows[sel],
        ))
    objects.sort(key=lambda o: (float(np.linalg.norm(o.centroid)), -o.num_points))
    return SceneSegmentation(objects, plane_results)


def _scene_points(points: Any) -> tuple[np.ndarray, np.ndarray]:
    """Finite rows of the input as float64 ``(N, 3)`` and their row numbers in the input."""
    arr = io.xyz_columns(io.as_array(points, "scene points"), "scene points").astype(np.float64)
    finite = np.isfinite(arr).all(axis=1)
    if finite.all():
        return arr, np.arange(len(arr), dtype=np.int64)
    logger.debug("scene: dropped %d of %d points with NaN / inf coordinates", int((~finite).sum()), len(arr))
    rows = np.flatnonzero(finite).astype(np.int64)
    return arr[rows], rows


def _voxelize(pts: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray]:
    """Voxel of every point (``inverse``, (N,)) and the mean point of every occupied voxel ((V, 3))."""
    if voxel_size <= 0:
        return np.arange(len(pts)), pts
    keys = np.floor((pts - pts.min(axis=0)) / voxel_size).astype(np.int64)
    dims = keys.max(axis=0) + 1
    if float(dims[0]) * float(dims[1]) * float(dims[2]) < 2.0 ** 62:  # one int64 key per voxel: a fast 1-D unique
        flat = (keys[:, 0] * dims[1] + keys[:, 1]) * dims[2] + keys[:, 2]
        _, inverse = np.unique(flat, return_inverse=True)
    else:
        _, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse).astype(np.float64)
    means = np.stack([np.bincount(inverse, weights=pts[:, i]) for i in range(3)], axis=1) / counts[:, None]
    return inverse, means


def _o3d_cloud(points: np.ndarray):
    import open3d as o3d

    return o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.ascontiguousarray(points, dtype=np.float64)))


def _find_plane(points: np.ndarray, cfg: SegmentationConfig,
                rng: np.random.Generator) -> tuple[np.ndarray, float, np.ndarray] | None:
    """The largest RANSAC plane of ``points`` if it qualifies as a support plane, else None."""
    found = _ransac_plane(points, cfg.plane_distance, cfg.plane_iterations, rng)
    if found is None:
        return None
    normal, offset, inliers = found
    if offset < 0:  # orient the normal towards the origin (the sensor)
        normal, offset = -normal, -offset
    if len(inliers) < cfg.min_plane_fraction * len(points):
        logger.debug("scene: largest plane holds %d of %d points, below min_plane_fraction; kept",
                     len(inliers), len(points))
        return None
    span = _patch_span(points[inliers], normal, cfg.cluster_tolerance)
    if span < cfg.min_plane_size:
        logger.debug("scene: largest plane spans %.3g m, below min_plane_size; kept", span)
        return None
    return normal, offset, inliers


def _ransac_plane(points: np.ndarray, distance: float, iterations: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, float, np.ndarray] | None:
    """The plane with most points within ``distance`` among ``iterations`` 3-point hypotheses, refitted by
    least squares on its inliers; ``(unit normal, offset, inlier indices)`` or None.

    RANSAC as open3d's ``segment_plane`` (same hypotheses, inlier test and early stop at probability
    ``_RANSAC_CONFIDENCE``), but vectorised numpy on a seeded generator: open3d 0.20's own draws its samples
    from TBB threads in a varying order, so its result changes from run to run on a multi-core machine even
    after ``open3d.utility.random.seed``.
    """
    n = len(points)
    if n < _RANSAC_N:
        return None
    samples = rng.integers(0, n, size=(iterations, _RANSAC_N))
    a, b, c = (points[samples[:, i]] for i in range(_RANSAC_N))
    normals = np.cross(b - a, c - a)
    norms = np.linalg.norm(normals, axis=1)
    valid = norms > 1e-12  # skip repeated or collinear samples
    normals, a = normals[valid] / norms[valid, None], a[valid]
    offsets = -np.einsum("ij,ij->i", normals, a)
    chunk = max(1, _RANSAC_BLOCK_ELEMENTS // n)
    best, best_count, needed = -1, 0, len(normals)
    start = 0
    while start < min(needed, len(normals)):
        stop = min(start + chunk, needed, len(normals))
        counts = (np.abs(points @ normals[start:stop].T + offsets[start:stop]) <= distance).sum(axis=0)
        k = int(np.argmax(counts))
        if counts[k] > best_count:
            best, best_count = start + k, int(counts[k])
            w = best_count / n  # early stop once a better plane is this unlikely to be missed
            miss = 1.0 - w ** _RANSAC_N
            if miss <= 0.0:
                needed = stop
            elif miss < 1.0:
                needed = min(needed, int(np.ceil(np.log(1.0 - _RANSAC_CONFIDENCE) / np.log(miss))))
        start = stop
    if best < 0 or best_count < _RANSAC_N:
        return None
    normal, offset = normals[best], float(offsets[best])
    inliers = np.flatnonzero(np.abs(points @ normal + offset) <= distance)
    # least-squares refit on the inliers (the smallest principal axis is the normal)
    centre = points[inliers].mean(axis=0)
    _, _, vt = np.linalg.svd(points[inliers] - centre, full_matrices=False)
    refit = vt[-1]
    refit_offset = -float(refit @ centre)
    refit_inliers = np.flatnonzero(np.abs(points @ refit + refit_offset) <= distance)
    if len(refit_inliers) >= len(inliers):
        normal, offset, inliers = refit, refit_offset, refit_inliers
    return normal, offset, inliers


def _patch_span(points: np.ndarray, normal: np.ndarray, gap: float) -> float:
    """Span of the largest connected patch of coplanar points along its shorter in-plane principal axis.

    RANSAC's inliers are every point near an infinite plane: a plane that slices through several objects
    collects points far apart. Only a connected patch (no gap wider than ``gap``) is a surface, so the span
    is measured on the largest one (most points): points binned on an in-plane grid of ``gap`` cells, cells
    joined when they touch (8-neighbourhood, through DBSCAN on the cell centres), and the span is that of the
    central 90 % of the patch's points.
    """
    centred = points - points.mean(axis=0)
    centred = centred - np.outer(centred @ normal, normal)  # onto the plane
    helper = np.eye(3)[int(np.argmin(np.abs(normal)))]
    e1 = np.cross(normal, helper)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(normal, e1)
    uv = np.stack([centred @ e1, centred @ e2], axis=1)
    cells = np.floor((uv - uv.min(axis=0)) / gap).astype(np.int64)
    unique_cells, cell_of_point = np.unique(cells, axis=0, return_inverse=True)
    cell_of_point = cell_of_point.reshape(-1)
    centres = np.zeros((len(unique_cells), 3))
    centres[:, :2] = unique_cells
    patch_of_cell = np.asarray(_o3d_cloud(centres).cluster_dbscan(1.5, 1, print_progress=False), dtype=np.int64)
    patch = patch_of_cell[cell_of_point]
    largest = int(np.argmax(np.bincount(patch)))
    sel = uv[patch == largest]
    sel = sel - sel.mean(axis=0)
    _, _, vt = np.linalg.svd(sel, full_matrices=False)  # rows: principal axes, largest first
    lo, hi = np.percentile(sel @ vt[-1], _PLANE_SPAN_PERCENTILES)
    return float(hi - lo)


def _remove_outliers(voxels: np.ndarray, idx: np.ndarray, cfg: SegmentationConfig) -> np.ndarray:
    if cfg.outlier_neighbors == 0 or len(idx) <= cfg.outlier_neighbors:
        return idx
    _, keep = _o3d_cloud(voxels[idx]).remove_statistical_outlier(cfg.outlier_neighbors, cfg.outlier_std_ratio)
    return idx[np.sort(np.asarray(keep, dtype=np.int64))]


def _cluster(points: np.ndarray, cfg: SegmentationConfig) -> np.ndarray:
    if len(points) == 0:
        return np.zeros(0, dtype=np.int64)
    labels = _o3d_cloud(points).cluster_dbscan(cfg.cluster_tolerance, cfg.cluster_min_points, print_progress=False)
    return np.asarray(labels, dtype=np.int64)


# --------------------------------------------------------------------------------------------------
# segmentation + recognition
# --------------------------------------------------------------------------------------------------

@dataclass(eq=False)
class RecognizedObject:
    """A segmented object with its recognition: its place in the input frame and its best labels."""

    label: str  # the best label
    probability: float  # its probability
    predictions: list  # [Prediction] best first (top_k of them)
    points: np.ndarray  # (M, 3) float32: the object's full-resolution input points
    indices: np.ndarray  # (M,) int64: their rows in the frame's points
    centroid: np.ndarray  # (3,) float64, metres
    bbox_min: np.ndarray  # (3,) float64: axis-aligned box in the input frame, lower corner
    bbox_max: np.ndarray  # (3,) float64: upper corner
    num_points: int  # M
    id: Optional[int] = None  # track id, when a tracker follows the objects over frames
    track_label: Optional[str] = None  # the label smoothed over the track
    reused: bool = False  # its view features were its track's earlier ones (the cloud barely changed), not recomputed

    @property
    def display_label(self) -> str:
        """The label to show: the track's smoothed label when tracked, else this frame's best label."""
        return str(self.track_label) if self.track_label else str(self.label)

    def probability_of(self, label: str) -> float:
        """This frame's probability of ``label`` (0 when it is not among the object's predictions)."""
        if label == str(self.label):
            return float(self.probability)
        return next((float(p.probability) for p in self.predictions or () if str(p.label) == label), 0.0)

    @property
    def text(self) -> str:
        """The caption shown beside the object: ``"mug 0.82 #3"`` (shown label, its probability in this frame,
        track id when tracked)."""
        label = self.display_label
        caption = f"{label} {self.probability_of(label):.2f}"
        return caption if self.id is None else f"{caption} #{int(self.id)}"

    def to_dict(self) -> dict:
        """JSON-ready: label, score (the probability), top_k, centroid, bbox_min, bbox_max, num_points, reused, and
        id and track_label when tracked."""
        out = {"label": self.label, "score": self.probability, "top_k": [p.to_dict() for p in self.predictions],
               "centroid": [float(v) for v in self.centroid], "bbox_min": [float(v) for v in self.bbox_min],
               "bbox_max": [float(v) for v in self.bbox_max], "num_points": int(self.num_points),
               "reused": bool(self.reused)}
        if self.id is not None:
            out.update(id=int(self.id), track_label=self.track_label)
        return out


@dataclass
class SceneResult:
    """One frame's recognised objects (nearest first), when it was taken, in which frame, and what it cost."""

    objects: list  # [RecognizedObject]
    timings: dict  # seconds by stage (see SceneRecognizer.last_timings)
    stamp_ns: Optional[int] = None  # acquisition time (a bag's header stamp), None for a single file
    frame_id: Optional[str] = None  # the coordinate frame of the points (PointCloud2 header.frame_id)

    def to_dict(self) -> dict:
        return {"stamp": None if self.stamp_ns is None else self.stamp_ns / 1e9, "frame_id": self.frame_id,
                "objects": [o.to_dict() for o in self.objects],
                "timings": {k: round(v, 4) for k, v in self.timings.items()}}


class SceneRecognizer:
    """Segment a scene and recognise every object, one recognizer call a frame.

    Build it once; call it on each frame. Calls from several threads are safe: the segmentation runs in
    the caller's thread, the recognizer under a lock (one model call at a time), and nothing per frame is
    shared. ``last_timings`` is the newest finished call's; with several calling threads use
    :meth:`recognize`, which returns each call's own timings.

    **Reuse of unchanged objects.** With a :class:`pointfalip.Recognizer` (anything with ``embed``, ``rank``
    and ``feature_settings``), ``track=True`` and ``reuse=True``, each frame's objects
    are first matched to the tracks; an object whose track continues and whose cloud barely changed since its
    features were computed (:meth:`pointfalip.tracking.Tracker.reusable_features`: centroid, box and point count
    within the tracking preset's ``reuse_*`` limits, at most ``reuse_max_age`` frames old, same model and feature
    settings) keeps those view features instead of being projected and encoded again; it is marked ``reused``.
    Logits are always computed afresh from the features (``Recognizer.logits``), so new labels or a few-shot cache
    take effect at once: view features do not depend on the labels.

    Args:
        recognizer: a :class:`pointfalip.Recognizer`, or any object with ``classify(list_of_point_arrays,
            top_k=k)`` returning, for each array, a list of `pointfalip.recognize.Prediction` best first (no reuse
            then). Arrays are the objects' full-resolution points, float32 ``(M_i, 3)`` in the scene's frame and
            metres (M_i differ); normalisation is the recognizer's job. If it has a ``last_timings`` mapping
            (e.g. ``projection``, ``encoder``), it is merged into this object's.
        config: segmentation settings (``None``: the ``tabletop`` defaults).
        top_k: predictions kept for each object.
        track: follow the objects over the frames: every :meth:`recognize` call (frames without objects
            too) runs a :class:`~pointfalip.tracking.Tracker`, and the objects get ``id`` and ``track_label``.
            Give the frames of one sequence in time order, from one thread at a time (the tracker's update runs
            under a lock, but frames from racing threads reach it in any order).
        tracking: the tracker's settings, a :class:`~pointfalip.tracking.TrackerConfig` or a mapping of them
            (``None``: the ``tabletop`` preset's, see :func:`pointfalip.tracking.load_tracking_config`); checked
            even when ``track`` is False.
        reuse: reuse the view features of unchanged tracked objects (see above; needs ``track``).
    """

    def __init__(self, recognizer: Any, config: SegmentationConfig | None = None, top_k: int = 5,
                 track: bool = False, tracking: TrackerConfig | Mapping[str, Any] | None = None,
                 reuse: bool = True):
        from .recognize import check_top_k

        if not callable(getattr(recognizer, "classify", None)):
            raise TypeError(f"recognizer must have a classify(clouds, top_k=...) method, got {type(recognizer).__name__}")
        if config is not None and not isinstance(config, SegmentationConfig):
            raise InputError(f"config must be a SegmentationConfig, got {type(config).__name__}")
        self.recognizer = recognizer
        self.config = config if config is not None else SegmentationConfig()
        self.top_k = check_top_k(top_k)
        if tracking is None:
            tracking = load_tracking_config("tabletop")
        elif isinstance(tracking, Mapping):
            tracking = TrackerConfig.from_dict(tracking)
        elif not isinstance(tracking, TrackerConfig):
            raise InputError(f"tracking must be a TrackerConfig or a mapping, got {type(tracking).__name__}")
        self.tracking = tracking
        self.tracker = Tracker(tracking) if track else None
        self.reuse = bool(reuse)
        self._model_lock = threading.Lock()
        self._track_lock = threading.Lock()
        self._last_timings: dict[str, float] = {}

    @property
    def track(self) -> bool:
        """Whether the objects are tracked over the frames."""
        return self.tracker is not None

    def reset_tracking(self) -> None:
        """Start a new sequence: forget the tracks (ids keep counting up, so none is reused)."""
        if self.tracker is not None:
            with self._track_lock:
                self.tracker.reset()

    @property
    def last_timings(self) -> dict[str, float]:
        """Seconds spent by the newest finished call: ``segmentation``, ``recognition`` (the recognizer call),
        ``wait`` (for another thread's recognizer call), ``tracking`` (when tracked), ``total``, plus the
        recognizer's own ``last_timings`` keys (a key that clashes gets the prefix ``recognizer_``). A copy."""
        return dict(self._last_timings)

    def __call__(self, points: Any) -> list[RecognizedObject]:
        """The frame's objects with their predictions, ordered as :func:`segment` orders objects (nearest
        first); ``[]`` when the scene holds no object."""
        return self.recognize(points).objects

    def recognize(self, points: Any, stamp_ns: Optional[int] = None, frame_id: Optional[str] = None,
                  pose: Any = None) -> SceneResult:
        """As calling the object, returning this call's timings, stamp and frame with the objects.

        With tracking, ``stamp_ns`` (nanoseconds) orders the frames: one older than the previous frame's (a
        recording replayed from its start) ends every track first. ``pose``: the frame's ``(4, 4)`` world-from-sensor
        transform (odometry), if known; the tracker then follows the objects in the world's frame (see
        :class:`pointfalip.tracking.Tracker`)."""
        t0 = time.perf_counter()
        objects = segment(points, self.config)
        t1 = time.perf_counter()
        timings = {"segmentation": t1 - t0, "recognition": 0.0, "wait": 0.0}
        matching = None
        if self.tracker is not None:
            with self._track_lock:
                matching = self.tracker.match(objects, stamp_ns, pose)
        predictions, features, key, cached, extra = [], None, None, [None] * len(objects), {}
        if objects:
            with self._model_lock:
                t2 = time.perf_counter()
                if _scores_features(self.recognizer):
                    key = _feature_key(self.recognizer)
                    if self.reuse and matching is not None:
                        cached = [self.tracker.reusable_features(t, o, key) for t, o in zip(matching.tracks, objects)]
                    predictions, features, extra = self._predict(objects, cached)
                else:
                    predictions = self.recognizer.classify([o.points for o in objects], top_k=self.top_k)
                    extra = getattr(self.recognizer, "last_timings", None)
                    extra = dict(extra) if isinstance(extra, Mapping) else {}
                t3 = time.perf_counter()
            timings["wait"] = t2 - t1
            timings["recognition"] = t3 - t2
            for key_name, value in extra.items():
                name = f"recognizer_{key_name}" if key_name in timings or key_name == "total" else str(key_name)
                try:
                    timings[name] = float(value)
                except (TypeError, ValueError):
                    continue
            predictions = _check_predictions(predictions, len(objects))
        results = []
        for obj, preds, reused in zip(objects, predictions, cached):
            top = list(preds[: self.top_k])
            results.append(RecognizedObject(label=top[0].label, probability=float(top[0].probability),
                                            predictions=top, points=obj.points, indices=obj.indices,
                                            centroid=obj.centroid, bbox_min=obj.bbox_min, bbox_max=obj.bbox_max,
                                            num_points=obj.num_points, reused=reused is not None))
        if self.tracker is not None:
            t4 = time.perf_counter()
            with self._track_lock:
                results = self.tracker.update(results, stamp_ns, matching, pose)
                if self.reuse and features is not None:
                    for obj, feats, reused in zip(results, features, cached):
                        if reused is None:
                            self.tracker.store_features(obj, feats, key)
            timings["tracking"] = time.perf_counter() - t4
        timings["total"] = time.perf_counter() - t0
        self._last_timings = timings  # a fresh dict each call, replaced in one step, never mutated after
        return SceneResult(results, dict(timings), stamp_ns=stamp_ns, frame_id=frame_id)

    def stream(self, frames: Any, **options: Any):
        """:func:`pointfalip.stream.stream` of this recogniser: frames in, a ``StreamedFrame`` per frame out, every
        result handed to the ``sinks`` (the one frame loop of the command line and the ROS 2 node)."""
        from .stream import stream

        return stream(self, frames, **options)

    def _predict(self, objects: list[SceneObject], cached: list) -> tuple[list, Any, dict]:
        """Predictions of the objects through ``embed`` -> ``rank`` (``logits``), encoding only those without cached
        view features; returns them with every object's view features ``(B, V, D)`` and the recognizer's timings of
        this call (zero projection and encoder when nothing was encoded)."""
        import torch

        rec = self.recognizer
        todo = [i for i, c in enumerate(cached) if c is None]
        slots = list(cached)
        timings = {"projection": 0.0, "encoder": 0.0}
        if todo:
            fresh = rec.embed([objects[i].points for i in todo])
            timings = dict(getattr(rec, "last_timings", None) or timings)
            for row, i in enumerate(todo):
                slots[i] = fresh[row].clone()
        features = torch.stack(slots)
        return rec.rank(features, self.top_k), features, timings


def load_scene_recognizer(labels: Optional[Sequence[str]] = None, dataset: Optional[str] = None, *,
                          model: Any = "ViT-B-16", pretrained: str = "openai", device: str = "auto",
                          precision: Optional[str] = None, compile: Union[bool, str, None] = None,
                          preset: str = "pointclip_v2",
                          scene_preset: str = "tabletop", segmentation: Optional[Mapping[str, Any]] = None,
                          track: bool = True, reuse: bool = True, top_k: int = 3,
                          **recognizer_options: Any) -> "SceneRecognizer":
    """The :class:`SceneRecognizer` named by settings: what ``pointfalip scene`` and the ROS 2 node build.

    Args:
        labels, dataset: the names to recognise (or a packaged label set), as for :class:`pointfalip.Recognizer`.
        model: an open_clip model name (loaded with ``pretrained``, ``device`` and ``precision``) or a loaded
            :class:`pointfalip.FalipCLIP`.
        device: a torch device; ``"auto"``: CUDA when available, else the CPU.
        precision: the model's precision; ``None``: the recognizer preset's (``auto`` in the packaged ones).
        compile: run the image encoder compiled (True, "inductor", "openvino"; False or "off": eager); ``None``: the
            recognizer preset's (off in the packaged ones).
        preset: recognizer preset (``configs/presets``: ``pointclip_v2``, ``pointclip``, ``robot_fast``) or YAML file.
        scene_preset: segmentation and tracking preset of ``configs/scene.yaml`` (``tabletop``, ``room``).
        segmentation: overrides of the segmentation preset's settings (``{"voxel_size": 0.01}``).
        track, reuse, top_k: as :class:`SceneRecognizer`'s.
        **recognizer_options: further :class:`pointfalip.Recognizer` keywords (``falip``, ``up_axis``,
            ``projection``, ``prompt_file``, ``fewshot``, ...).
    """
    from .recognize import Recognizer, load_preset
    from .tracking import list_tracking_presets

    config = load_segmentation_config(scene_preset, **dict(segmentation or {}))
    tracking = load_tracking_config(scene_preset) if scene_preset in list_tracking_presets() else None
    if isinstance(model, str):
        from .model import default_device, load_model

        if device == "auto":
            device = default_device()
        settings = load_preset(preset)
        model = load_model(model, pretrained, device=device, precision=precision or settings.precision,
                           compile=settings.compile if compile is None else compile)
    recognizer = Recognizer(model, labels=labels, dataset=dataset, preset=preset, **recognizer_options)
    return SceneRecognizer(recognizer, config, top_k=top_k, track=track, tracking=tracking, reuse=reuse)


SEGMENTATION_OPTIONS = ("voxel_size", "cluster_tolerance", "plane_distance", "min_object_points",
                        "max_object_points")  # the SegmentationConfig settings a run may override


@dataclass(frozen=True)
class SceneSettings:
    """Everything that builds a :class:`SceneRecognizer`, with its defaults: the one list of scene settings, which
    ``pointfalip scene``, ``pointfalip ros2`` and the ROS 2 node's parameters fill (:meth:`build`).

    ``None`` means "the preset's" (``precision``, ``up_axis``, ``projection``, the segmentation overrides) or "none"
    (``prompt_file``, ``fewshot``); ``labels`` is comma-separated text or a sequence of names.
    """

    labels: Optional[str | Sequence[str]] = None  # the names to recognise (or give dataset)
    dataset: Optional[str] = None  # a packaged label set: modelnet40, modelnet10, scanobjectnn
    model: str = "ViT-B-16"  # open_clip model name or config JSON
    pretrained: str = "openai"  # open_clip tag, hf-hub:ID, local checkpoint, or "none"
    device: str = "auto"  # torch device; auto: cuda when available, else cpu
    precision: Optional[str] = None  # auto, fp32, bf16, fp16 (None: the recognizer preset's)
    compile: Optional[str] = None  # encoder engine: inductor, openvino or off (None: the recognizer preset's)
    preset: str = "pointclip_v2"  # recognizer preset (configs/presets; robot_fast for 6 views) or YAML file
    scene_preset: str = "tabletop"  # segmentation and tracking preset of configs/scene.yaml
    voxel_size: Optional[float] = None  # metres
    cluster_tolerance: Optional[float] = None  # metres (DBSCAN eps)
    plane_distance: Optional[float] = None  # metres
    min_object_points: Optional[int] = None  # downsampled points
    max_object_points: Optional[int] = None  # downsampled points
    track: bool = True  # stable object ids across frames
    reuse: bool = True  # a tracked object whose cloud barely changed keeps its view features
    top_k: int = 3  # hypotheses per object
    falip: bool = True  # False: plain CLIP (the baseline)
    up_axis: Optional[str] = None  # up axis of the frames (z: robot and lidar frames, -y: optical frames)
    projection: Optional[str] = None  # realistic or simple (None: the preset's)
    prompt_file: Optional[str] = None  # per-class prompts in PointCLIP V2's JSON layout
    fewshot: Optional[str] = None  # a few-shot cache file (pointfalip fewshot build)

    def label_list(self) -> Optional[list[str]]:
        """The labels as a list (None when ``dataset`` names the label set)."""
        given = self.labels.split(",") if isinstance(self.labels, str) else list(self.labels or ())
        labels = [str(s).strip() for s in given if str(s).strip()]
        if not labels and not self.dataset:
            raise InputError("no labels to recognise: give labels (e.g. \"mug,bowl\") or a dataset's label set "
                             "(e.g. modelnet40)")
        return labels or None

    def segmentation(self) -> dict[str, Any]:
        """The segmentation settings this run overrides."""
        return {k: getattr(self, k) for k in SEGMENTATION_OPTIONS if getattr(self, k) is not None}

    def build(self, model: Any = None) -> "SceneRecognizer":
        """The :class:`SceneRecognizer` of these settings (``model``: an already loaded one instead of
        ``model``/``pretrained``/``device``/``precision``)."""
        options = {k: getattr(self, k) for k in ("up_axis", "projection", "prompt_file", "fewshot")
                   if getattr(self, k) is not None}
        return load_scene_recognizer(self.label_list(), self.dataset or None,
                                     model=self.model if model is None else model, pretrained=self.pretrained,
                                     device=self.device, precision=self.precision, compile=self.compile,
                                     preset=self.preset,
                                     scene_preset=self.scene_preset, segmentation=self.segmentation(),
                                     track=self.track, reuse=self.reuse, top_k=self.top_k, falip=self.falip,
                                     **options)


def _scores_features(recognizer: Any) -> bool:
    """Whether the recognizer offers the embed -> logits path (features that can be reused)."""
    return all(callable(getattr(recognizer, n, None)) for n in ("embed", "rank", "feature_settings"))


def _feature_key(recognizer: Any) -> tuple:
    """What view features depend on: the model (this instance) and the settings that shape them."""
    import json

    settings = json.dumps(recognizer.feature_settings(), sort_keys=True, default=str)
    return id(recognizer.model), settings, bool(getattr(recognizer, "falip", True))


def _check_predictions(predictions: Any, count: int) -> list:
    preds = list(predictions)
    if count == 1 and preds and hasattr(preds[0], "label"):  # a recognizer that unwraps a batch of one
        preds = [preds]
    if len(preds) != count:
        raise RuntimeError(f"the recognizer returned {len(preds)} prediction lists for {count} objects")
    for p in preds:
        if not p or not all(hasattr(x, "label") and hasattr(x, "probability") for x in p):
            raise RuntimeError("the recognizer must return, for each cloud, a non-empty list of Predictions "
                               "(label, probability)")
    return preds
