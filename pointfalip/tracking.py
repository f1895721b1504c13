"""Stable object ids across the frames of a scene (robotics): a tracking-by-detection tracker.

:class:`Tracker` matches each frame's recognised objects to the live tracks. Every track **predicts** where its
object is now with a constant velocity (metres per second; the seconds between the frames' stamps, or
``1 / nominal_rate`` a frame when they carry none). A track takes its newest move as its velocity at once when the
move is its first or its prediction missed by more than ``max_distance`` (a start, a stop, a jump: a steady mover is
predicted from its second frame on); otherwise the newest move is smoothed in with weight ``velocity_smoothing``.

**The rule (``gate: ambiguity``).** A frame's tracks and objects are compared by ``d``: the distance from an
object's centroid to the nearer of the track's two predictions, "moved on at its velocity" and "stopped where it was
last seen" (a mover that stops, or a still object that starts, is near one of them). A pair is **clear** when the
two are mutually nearest, ``d`` is within reach, ``d <= max(max_distance, max_speed · seconds since the track was
last seen)``, and every other candidate of either (another object for the track, another track for the object) is
at least ``max(ambiguity_ratio · d, d + ambiguity_margin)`` away. Clear pairs are matched and set aside, and the
test is repeated on what is left (once the still objects are matched, a jump beside them is clear). Whatever stays
ambiguous (two similar objects crossing, an object split in two) falls back to the conservative rule below with
Hungarian assignment, on the predictions with the camera motion removed. Before matching, a **camera (ego) motion** is removed: with a ``pose`` per frame (a 4x4
world-from-sensor transform, e.g. odometry or ``tf``) the tracker works in world coordinates; without one, the
common shift of the scene is estimated (``ego_motion``): of the displacements from a track's prediction to an
object within reach, the one that brings the most tracks within ``ego_tolerance`` of an object, if it brings more
than no shift and at least two; the median of those tracks' displacements is the shift.

**The conservative rule (``gate: size``, and the fallback).** For a track ``t`` and an object ``o`` let ``d`` be
the distance from ``t``'s predicted centroid to ``o``'s centroid and ``e`` the longest side of ``t``'s box. The pair
may match when ``d <= max_distance`` (the absolute gate), or ``d < relative_distance · e`` and ``o`` is the object
nearest to ``t`` and ``t`` the track nearest to ``o``; and the IoU of their axis-aligned boxes is at least
``min_iou``. Among those pairs the assignment (``scipy.optimize.linear_sum_assignment``) minimises
``d / gate + (1 - IoU)`` with ``gate = max(max_distance, relative_distance · e)``. ``gate: size`` is this rule
alone, as the tracker had it before: the newest move as velocity, no ego-motion.

An object left unmatched starts a new track (ids count up from 0 and are never reused); a track unseen for more
than ``max_missed`` consecutive frames ends. A track's label is smoothed: ``track_label`` is the label with the
highest summed probability over the track's last ``window`` observations, summing each frame's full prediction
list (so a one-frame flicker of the best label does not change it).

**Feature reuse.** A track can keep the view features its object was last encoded with
(:meth:`Tracker.store_features`); :meth:`Tracker.reusable_features` gives them back for a continuing object
whose cloud barely changed since then, in the sensor's frame (the cloud that is encoded; a camera that moved makes
it change too): centroid moved at most ``reuse_max_move``, no side of its box changed by more than
``reuse_max_extent_change``, point count within a factor ``reuse_max_point_ratio``, encoded fewer than
``reuse_max_age`` frames ago, and the same feature settings (``key``). An object that moved is encoded again
whatever its id. See :class:`pointfalip.scene.SceneRecognizer`.

Settings: :class:`TrackerConfig`; presets in the ``tracking`` section of ``configs/scene.yaml`` through
:func:`load_tracking_config` (defaults when the file has no such section).

Objects are read by duck typing: ``label``, ``probability``, ``predictions`` (items with ``label`` and
``probability`` attributes, ``{"label", "probability" | "score"}`` mappings or ``(label, probability)``
pairs), ``centroid``, ``bbox_min``, ``bbox_max`` (and ``num_points`` for reuse); the tracker sets ``id`` and
``track_label``.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Optional, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from . import metrics, presets
from .errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["GATES", "Encoding", "Matching", "Track", "Tracker", "TrackerConfig", "list_tracking_presets",
           "load_tracking_config"]

CONFIG_FILE = presets.config_file("scene.yaml")
CONFIG_SECTION = "tracking"  # the preset kind, and the top-level key of configs/scene.yaml holding its presets
GATES = ("ambiguity", "size")  # TrackerConfig.gate: the rule of issue 26, or the size rule alone (the rule before)

_MIN_EXTENT = 1e-3  # metres: box sides thinner than this are widened to it for the IoU (flat objects overlap)
_INFEASIBLE = 1e6  # cost of a pair that may not match (larger than any feasible cost, which is at most 2)


@dataclass(frozen=True)
class TrackerConfig:
    """Tracker settings; the defaults suit the ``tabletop`` scene preset (3-40 cm objects, 1-30 Hz)."""

    gate: str = "ambiguity"  # "ambiguity": match clear pairs first, the size rule for the rest; "size": the size
    # rule alone (the rule before issue 26)
    max_distance: float = 0.10  # metres: a centroid this close to a track's predicted one may continue it
    relative_distance: float = 0.5  # share of a track's longest box side within which a mutually nearest object
    # continues it (the size rule)
    min_iou: float = 0.0  # 0-1: ... and their axis-aligned boxes overlap at least this much (0: no overlap needed)
    max_speed: float = 1.5  # metres per second: a clear pair's object moved at most this fast since last seen
    ambiguity_ratio: float = 2.0  # a pair is clear when every other candidate of either is this many times farther
    ambiguity_margin: float = 0.05  # metres: ... and at least this much farther
    velocity_smoothing: float = 0.5  # 0-1: weight of the newest move in a track's velocity (1: the newest move alone)
    ego_motion: bool = True  # estimate and remove the scene's common shift (a moving camera) when no pose is given
    ego_tolerance: float = 0.03  # metres: tracks whose shifted prediction is this close to an object agree on a shift
    nominal_rate: float = 5.0  # Hz: frames without stamps are taken to be 1 / nominal_rate seconds apart
    max_missed: int = 5  # frames (count): a track unseen for more consecutive frames than this ends
    window: int = 10  # observations (count) of a track whose summed probabilities give its track_label
    predict: bool = True  # predict each track's centroid with a constant velocity (False: its last centroid)
    reuse_max_move: float = 0.01  # metres: an object whose centroid moved more since it was encoded is encoded again
    reuse_max_extent_change: float = 0.01  # metres: ... or whose box changed more along any side
    reuse_max_point_ratio: float = 1.25  # ... or whose point count changed by more than this factor either way
    reuse_max_age: int = 30  # frames: features older than this are computed again (1: never reuse)

    def __post_init__(self) -> None:
        if self.gate not in GATES:
            raise InputError(f"TrackerConfig.gate must be one of {', '.join(GATES)}, got {self.gate!r}")
        _check_number(self, "max_distance", lambda v: v > 0, "> 0")
        _check_number(self, "relative_distance", lambda v: v >= 0, ">= 0")
        _check_number(self, "min_iou", lambda v: 0 <= v <= 1, "in [0, 1]")
        _check_number(self, "max_speed", lambda v: v >= 0, ">= 0")
        _check_number(self, "ambiguity_ratio", lambda v: v >= 1, ">= 1")
        _check_number(self, "ambiguity_margin", lambda v: v > 0, "> 0")
        _check_number(self, "velocity_smoothing", lambda v: 0 < v <= 1, "in (0, 1]")
        _check_number(self, "ego_tolerance", lambda v: v > 0, "> 0")
        _check_number(self, "nominal_rate", lambda v: v > 0, "> 0")
        for name in ("predict", "ego_motion"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"TrackerConfig.{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("reuse_max_move", "reuse_max_extent_change"):
            _check_number(self, name, lambda v: v >= 0, ">= 0")
        _check_number(self, "reuse_max_point_ratio", lambda v: v >= 1, ">= 1")
        presets.check_int(self, "max_missed", minimum=0)
        presets.check_int(self, "window", minimum=1)
        presets.check_int(self, "reuse_max_age", minimum=1)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "TrackerConfig":
        """Build from a mapping of field names (unknown keys raise, missing ones keep their defaults)."""
        return presets.from_mapping(cls, values, "tracking settings")

    def to_dict(self) -> dict:
        return asdict(self)


def _check_number(cfg: TrackerConfig, name: str, valid, rule: str) -> None:
    value = getattr(cfg, name)
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if not (ok and np.isfinite(value) and valid(value)):
        raise InputError(f"TrackerConfig.{name} must be a number {rule}, got {value!r}")
    object.__setattr__(cfg, name, float(value))


def list_tracking_presets() -> list[str]:
    """Names of the packaged tracking presets (the ``tracking`` section of ``configs/scene.yaml``)."""
    return presets.list_presets(CONFIG_SECTION)


def load_tracking_config(preset: str = "tabletop", *, config_file: str | Path | None = None,
                         **overrides: Any) -> TrackerConfig:
    """The ``tracking`` settings of a preset of ``configs/scene.yaml`` (or ``config_file``), with overrides.

    The file's ``tracking`` section maps preset names (as its segmentation ``presets``) to settings; a
    ``config_file`` without that section gives :class:`TrackerConfig`'s defaults (plus ``overrides``).

    Raises:
        InputError: unknown preset (the message lists them), unknown setting, invalid value.
    """
    if config_file is not None and CONFIG_SECTION not in presets.read_yaml(Path(config_file)):
        logger.debug("%s has no %r section; default tracking settings", config_file, CONFIG_SECTION)
        return TrackerConfig.from_dict(overrides)
    values = presets.load_preset(CONFIG_SECTION, preset, config_file_=Path(config_file) if config_file else None)
    return presets.from_mapping(TrackerConfig, {**values, **overrides}, f"tracking preset {preset}")


@dataclass(eq=False)
class Encoding:
    """View features of a track's object and the observation they were computed from (for reuse; sensor frame)."""

    features: Any  # (V, D) view features
    key: Any  # the feature settings they were made with (equal keys: interchangeable features)
    centroid: np.ndarray  # (3,) of the observation that was encoded, in the sensor's frame
    extent: np.ndarray  # (3,) its box's sides
    num_points: int
    frame: int  # the tracker's frame count when it was encoded


@dataclass(eq=False)
class Track:
    """One live track: the newest observation of its object and its recent label probabilities.

    Positions are in the tracker's frame: the world's when frames come with a pose, else the newest frame's sensor
    frame (a track unseen in a frame is carried along by the camera motion estimated for it)."""

    id: int  # never reused
    centroid: np.ndarray  # (3,) float64, metres: the newest observed centroid
    bbox_min: np.ndarray  # (3,) float64: the newest observed box
    bbox_max: np.ndarray  # (3,) float64
    time: float = 0.0  # seconds: when it was last observed (the stamp, or frames / nominal_rate)
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(3))  # metres per second, camera motion removed
    label: str = ""  # the smoothed label (what objects of this track get as track_label)
    hits: int = 0  # frames it was observed in
    missed: int = 0  # consecutive frames it has not been observed in
    history: deque = field(default_factory=deque)  # per observation: {label: probability}, newest last
    encoding: Optional[Encoding] = None  # the features it was last encoded with (feature reuse)

    def predicted(self, now: float) -> np.ndarray:
        """The centroid expected at ``now`` (seconds, as ``time``) under constant velocity."""
        return self.centroid + self.velocity * (now - self.time)


class Matching(NamedTuple):
    """One frame's assignment, from :meth:`Tracker.match`: the track each object continues (None: a new one)."""

    tracks: list  # [Track | None], one per object
    frame: int  # the tracker's frame count the matching was made at
    restart: bool  # the frame's stamp went back: every track ends before it
    shift: Optional[np.ndarray] = None  # (3,) metres: the camera motion removed from the tracks (None: none)
    pose: Optional[np.ndarray] = None  # (4, 4): the world-from-sensor transform the objects were read with
    clear: tuple = ()  # per object: continued by a clear pair (False: by the size rule, or a new track)


class Tracker:
    """Assigns stable ids and smoothed labels to the objects of consecutive frames.

    Build it once per sequence (one sensor); call :meth:`update` on every frame, including frames without objects
    (they age the tracks). Give every frame its ``pose`` (world from sensor) when odometry is known, or none; a frame
    without one after frames with one is taken to share the previous pose.

    Args:
        config: settings (``None``: :class:`TrackerConfig`'s defaults), or a mapping of them.
    """

    def __init__(self, config: TrackerConfig | Mapping[str, Any] | None = None):
        if config is None:
            config = TrackerConfig()
        elif isinstance(config, Mapping):
            config = TrackerConfig.from_dict(config)
        elif not isinstance(config, TrackerConfig):
            raise InputError(f"config must be a TrackerConfig or a mapping, got {type(config).__name__}")
        self.config = config
        self._tracks: list[Track] = []
        self._next_id = 0
        self._last_stamp_ns: int | None = None
        self._pose: np.ndarray | None = None  # the newest frame's world-from-sensor transform
        self._frames = 0  # frames updated so far

    @property
    def tracks(self) -> tuple[Track, ...]:
        """The live tracks, oldest first (read them, do not modify them)."""
        return tuple(self._tracks)

    def reset(self) -> None:
        """Forget every track; ids keep counting up (a new track never gets an old id)."""
        self._tracks = []
        self._last_stamp_ns = None
        self._pose = None

    def _now(self, stamp_ns: int | None) -> float:
        return stamp_ns * 1e-9 if stamp_ns is not None else self._frames / self.config.nominal_rate

    def match(self, objects: Sequence[Any], stamp_ns: int | None = None, pose: Any = None) -> Matching:
        """Which track each object would continue, without changing anything (see the module docstring).

        Args:
            objects: the frame's objects (centroids and boxes in the sensor's frame, metres).
            stamp_ns: the frame's time in nanoseconds, if known.
            pose: ``(4, 4)`` world-from-sensor transform of the frame (odometry), or None (the previous frame's,
                if any).
        """
        restart = stamp_ns is not None and self._last_stamp_ns is not None and stamp_ns < self._last_stamp_ns
        objects = list(objects)
        pose = self._pose if pose is None else _check_pose(pose)
        tracks: list = [None] * len(objects)
        clear = [False] * len(objects)
        shift = None
        if not restart and self._tracks and objects:
            centroids, lows, highs = _observed(objects, pose)
            now = self._now(stamp_ns)
            decided: list = []
            if self.config.gate == "size":
                pairs = self._match_size(centroids, lows, highs, now)
            else:
                decided, pairs, shift = self._match_ambiguity(centroids, lows, highs, now, estimate_ego=pose is None)
            for r, c in decided:
                tracks[c], clear[c] = self._tracks[r], True
            for r, c in pairs:
                tracks[c] = self._tracks[r]
        return Matching(tracks, self._frames, restart, shift, pose, tuple(clear))

    def _match_size(self, centroids: np.ndarray, lows: np.ndarray, highs: np.ndarray, now: float) -> list:
        """The size rule alone: (track, object) index pairs."""
        predicted = np.stack([t.predicted(now) if self.config.predict else t.centroid for t in self._tracks])
        cost = self.cost_matrix(predicted, np.stack([t.bbox_min for t in self._tracks]),
                                np.stack([t.bbox_max for t in self._tracks]), centroids, lows, highs)
        rows, cols = linear_sum_assignment(cost)
        return [(r, c) for r, c in zip(rows, cols) if cost[r, c] < _INFEASIBLE]

    def _match_ambiguity(self, centroids: np.ndarray, lows: np.ndarray, highs: np.ndarray, now: float,
                         estimate_ego: bool) -> tuple[list, list, Optional[np.ndarray]]:
        """Clear pairs first, the size rule for the rest: the clear (track, object) index pairs, the size rule's, and
        the camera shift removed."""
        cfg = self.config
        last = np.stack([t.centroid for t in self._tracks])
        elapsed = np.maximum([now - t.time for t in self._tracks], 0.0)  # (T,) seconds since each was last seen
        moving = last + np.stack([t.velocity for t in self._tracks]) * elapsed[:, None] if cfg.predict else last
        reach = np.maximum(cfg.max_distance, cfg.max_speed * elapsed)
        shift = self.ego_shift(moving, centroids, reach) if estimate_ego and cfg.ego_motion else None
        offset = np.zeros(3) if shift is None else shift
        moving, last = moving + offset, last + offset
        t_min = np.stack([t.bbox_min for t in self._tracks]) + offset
        t_max = np.stack([t.bbox_max for t in self._tracks]) + offset
        dist = np.minimum(_distances(moving, centroids), _distances(last, centroids))
        allowed = (dist <= reach[:, None]) & (box_iou(t_min, t_max, lows, highs) >= cfg.min_iou)
        decided = _clear_pairs(dist, allowed, cfg.ambiguity_ratio, cfg.ambiguity_margin)
        rows = np.setdiff1d(np.arange(len(last)), [r for r, _ in decided])
        cols = np.setdiff1d(np.arange(len(centroids)), [c for _, c in decided])
        pairs = []
        if len(rows) and len(cols):
            cost = self.cost_matrix(moving[rows], t_min[rows], t_max[rows], centroids[cols], lows[cols], highs[cols])
            sub_r, sub_c = linear_sum_assignment(cost)
            pairs = [(rows[r], cols[c]) for r, c in zip(sub_r, sub_c) if cost[r, c] < _INFEASIBLE]
        return decided, pairs, shift

    def ego_shift(self, predicted: np.ndarray, centroids: np.ndarray, reach: np.ndarray) -> Optional[np.ndarray]:
        """The scene's common shift ``(3,)`` since the tracks' predictions ``(T, 3)`` (a moving camera), from the
        objects' centroids ``(M, 3)`` and each track's reach ``(T,)`` (metres); None when no shift is supported.

        Every displacement from a track's prediction to an object within its reach is a candidate; a candidate's
        support is the number of tracks whose shifted prediction lies within ``ego_tolerance`` of an object. The
        best supported one wins if at least two tracks and more than support no shift (ties: the shorter shift);
        the result is the median displacement of its supporting tracks."""
        tol = self.config.ego_tolerance
        if len(predicted) < 2 or len(centroids) < 2:
            return None
        rows, cols = np.nonzero(_distances(predicted, centroids) <= reach[:, None])
        candidates = centroids[cols] - predicted[rows]
        candidates = np.vstack([np.zeros((1, 3)), candidates[np.argsort(np.linalg.norm(candidates, axis=1))]])
        tree = cKDTree(centroids)
        near, _ = tree.query((predicted[None] + candidates[:, None]).reshape(-1, 3), distance_upper_bound=tol)
        support = np.isfinite(near).reshape(len(candidates), len(predicted)).sum(axis=1)
        best = int(np.argmax(support))  # the first of equal supports: no shift, else the shortest
        if best == 0 or support[best] < 2:
            return None
        near, nearest = tree.query(predicted + candidates[best], distance_upper_bound=tol)
        agree = np.isfinite(near)
        return np.median(centroids[nearest[agree]] - predicted[agree], axis=0)

    def update(self, objects: Sequence[Any], stamp_ns: int | None = None,
               matching: Matching | None = None, pose: Any = None) -> list[Any]:
        """Match one frame's objects to the tracks; set ``id`` and ``track_label`` on each object.

        Args:
            objects: the frame's recognised objects (see the module docstring for the attributes read).
            stamp_ns: the frame's time in nanoseconds, if known. A stamp older than the previous frame's
                (a recording replayed from its start) ends every track first.
            matching: :meth:`match` of these objects made just before (nothing updated in between); None:
                matched here.
            pose: ``(4, 4)`` world-from-sensor transform of the frame, as for :meth:`match` (a ``matching`` holds
                the one it was made with).

        Returns:
            The objects in their order, with ``id`` and ``track_label`` set (the same instances; a frozen
            dataclass is replaced by a copy).
        """
        objects = list(objects)
        if matching is None or matching.frame != self._frames or len(matching.tracks) != len(objects):
            matching = self.match(objects, stamp_ns, pose)
        if matching.restart:
            logger.info("tracking: time went back (%d ns < %d ns); tracks restarted", stamp_ns, self._last_stamp_ns)
            self._tracks = []
        if stamp_ns is not None:
            self._last_stamp_ns = int(stamp_ns)
        self._pose = matching.pose
        now = self._now(stamp_ns)
        self._frames += 1
        centroids, lows, highs = _observed(objects, matching.pose)
        shift = np.zeros(3) if matching.shift is None else matching.shift
        track_of = matching.tracks
        seen = {id(t) for t in track_of if t is not None}
        for track in self._tracks:
            if id(track) not in seen:
                track.missed += 1
                track.centroid, track.bbox_min, track.bbox_max = (track.centroid + shift, track.bbox_min + shift,
                                                                  track.bbox_max + shift)
        ended = [t.id for t in self._tracks if t.missed > self.config.max_missed]
        if ended:
            logger.debug("tracking: tracks %s ended (unseen for more than %d frames)", ended, self.config.max_missed)
        self._tracks = [t for t in self._tracks if t.missed <= self.config.max_missed]

        out = []
        for i, obj in enumerate(objects):
            track = track_of[i]
            if track is None:
                track = Track(self._next_id, centroids[i], lows[i], highs[i], time=now,
                              history=deque(maxlen=self.config.window))
                self._next_id += 1
                self._tracks.append(track)
            else:
                self._continue(track, centroids[i], lows[i], highs[i], now, shift)
            track.hits += 1
            track.missed = 0
            track.history.append(_probabilities(obj))
            track.label = _smoothed_label(track.history)
            out.append(_assign(obj, track.id, track.label))
        return out

    def _continue(self, track: Track, centroid: np.ndarray, low: np.ndarray, high: np.ndarray, now: float,
                  shift: np.ndarray) -> None:
        """A track's new observation: its velocity from the move (camera shift removed), then its position."""
        cfg = self.config
        elapsed = now - track.time
        move = (centroid - track.centroid - shift) / elapsed if elapsed > 0 else np.zeros(3)
        expected = track.predicted(now) if cfg.predict else track.centroid
        missed_by = np.linalg.norm(centroid - expected - shift)
        if cfg.gate == "size" or track.hits < 2 or missed_by > cfg.max_distance:
            track.velocity = move  # the size rule's newest move; a first move, a start, a stop or a jump: at once
        else:
            track.velocity = cfg.velocity_smoothing * move + (1.0 - cfg.velocity_smoothing) * track.velocity
        track.centroid, track.bbox_min, track.bbox_max, track.time = centroid, low, high, now

    def cost_matrix(self, track_centroids: np.ndarray, track_min: np.ndarray, track_max: np.ndarray,
                    centroids: np.ndarray, bbox_min: np.ndarray, bbox_max: np.ndarray) -> np.ndarray:
        """The size rule's matching cost ``(T, M)`` between T tracks (their predicted centroids and last boxes) and
        M objects (all arrays ``(·, 3)``, metres); infeasible pairs cost ``_INFEASIBLE``."""
        cfg = self.config
        dist = _distances(track_centroids, centroids)
        iou = box_iou(track_min, track_max, bbox_min, bbox_max)
        reach = cfg.relative_distance * (np.asarray(track_max) - np.asarray(track_min)).max(axis=1)  # (T,)
        mutual = (dist == dist.min(axis=1, keepdims=True)) & (dist == dist.min(axis=0, keepdims=True))
        feasible = ((dist <= cfg.max_distance) | ((dist < reach[:, None]) & mutual)) & (iou >= cfg.min_iou)
        cost = dist / np.maximum(cfg.max_distance, reach)[:, None] + (1.0 - iou)
        return np.where(feasible, cost, _INFEASIBLE)

    # ---- feature reuse -------------------------------------------------------------------------------------
    def reusable_features(self, track: Optional[Track], obj: Any, key: Any) -> Any:
        """The view features ``track`` holds for ``obj``'s object if they may stand for ``obj``'s cloud (made with
        feature settings equal to ``key``, recently, from a cloud that barely changed since); else None."""
        enc = None if track is None else track.encoding
        if enc is None or enc.key != key or self._frames - enc.frame >= self.config.reuse_max_age:
            return None
        cfg = self.config
        centroid, low, high = (np.asarray(getattr(obj, n), dtype=np.float64).reshape(3)
                               for n in ("centroid", "bbox_min", "bbox_max"))
        ratio = max(int(obj.num_points), 1) / max(enc.num_points, 1)
        if (np.linalg.norm(centroid - enc.centroid) > cfg.reuse_max_move
                or np.abs((high - low) - enc.extent).max() > cfg.reuse_max_extent_change
                or not 1.0 / cfg.reuse_max_point_ratio <= ratio <= cfg.reuse_max_point_ratio):
            return None
        return enc.features

    def store_features(self, obj: Any, features: Any, key: Any) -> None:
        """Keep the view features just computed for ``obj`` (an object :meth:`update` returned) on its track."""
        track = next((t for t in self._tracks if t.id == getattr(obj, "id", None)), None)
        if track is None:
            return
        low, high = (np.asarray(getattr(obj, n), dtype=np.float64).reshape(3) for n in ("bbox_min", "bbox_max"))
        track.encoding = Encoding(features, key, np.asarray(obj.centroid, dtype=np.float64).reshape(3), high - low,
                                  int(obj.num_points), self._frames - 1)


def box_iou(min_a: np.ndarray, max_a: np.ndarray, min_b: np.ndarray, max_b: np.ndarray) -> np.ndarray:
    """The tracker's IoU ``(A, B)`` of axis-aligned 3D boxes given by corners ``(A, 3)`` and ``(B, 3)``: that of
    `metrics.box_iou`, except that sides thinner than 1 mm count as 1 mm (centred), so flat boxes still overlap."""
    min_a, max_a = _widen(np.asarray(min_a, dtype=np.float64), np.asarray(max_a, dtype=np.float64))
    min_b, max_b = _widen(np.asarray(min_b, dtype=np.float64), np.asarray(max_b, dtype=np.float64))
    return metrics.box_iou(min_a, max_a, min_b, max_b)


def _widen(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pad = np.clip(_MIN_EXTENT - (hi - lo), 0.0, None) / 2
    return lo - pad, hi + pad


def _geometry(objects: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroids, box lower and upper corners of the objects, each ``(M, 3)`` float64."""
    if not objects:
        empty = np.zeros((0, 3))
        return empty, empty, empty
    arrays = []
    for name in ("centroid", "bbox_min", "bbox_max"):
        try:
            arr = np.stack([np.asarray(getattr(o, name), dtype=np.float64).reshape(3) for o in objects])
        except (AttributeError, TypeError, ValueError) as e:
            raise InputError(f"every object needs a 3-vector '{name}' ({e})") from e
        if not np.isfinite(arr).all():
            raise InputError(f"an object's '{name}' is NaN or infinite")
        arrays.append(arr)
    return arrays[0], arrays[1], arrays[2]


def _observed(objects: Sequence[Any], pose: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_geometry` of the objects in the tracker's frame: the world's through ``pose`` (a box becomes the
    axis-aligned box around its 8 transformed corners), else the sensor's."""
    centroids, lows, highs = _geometry(objects)
    if pose is None or not len(centroids):
        return centroids, lows, highs
    rotation, translation = pose[:3, :3], pose[:3, 3]
    corners = np.stack(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij"), axis=-1).reshape(8, 3)
    boxes = np.where(corners[None], highs[:, None], lows[:, None]) @ rotation.T + translation  # (M, 8, 3)
    return centroids @ rotation.T + translation, boxes.min(axis=1), boxes.max(axis=1)


def _check_pose(pose: Any) -> np.ndarray:
    try:
        pose = np.asarray(pose, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"a pose must be a 4x4 world-from-sensor transform ({e})") from e
    if pose.shape != (4, 4) or not np.isfinite(pose).all() or not np.allclose(pose[3], [0, 0, 0, 1]):
        raise InputError(f"a pose must be a finite 4x4 world-from-sensor transform with last row 0 0 0 1, "
                         f"got shape {pose.shape}")
    return pose


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``(A, B)`` between points ``(A, 3)`` and ``(B, 3)``."""
    return np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)


def _clear_pairs(dist: np.ndarray, allowed: np.ndarray, ratio: float, margin: float) -> list:
    """(row, column) pairs of ``dist`` ``(T, M)`` that are clear: allowed, mutually nearest, and every other entry
    of their row and column at least ``max(ratio · d, d + margin)``; found again among the rows and columns left
    after each round's pairs are set aside, until a round finds none."""
    open_rows, open_cols = np.ones(dist.shape[0], dtype=bool), np.ones(dist.shape[1], dtype=bool)
    pairs: list = []
    while open_rows.any() and open_cols.any():
        d = np.where(open_rows[:, None] & open_cols[None, :], dist, np.inf)
        mutual = (d == d.min(axis=1, keepdims=True)) & (d == d.min(axis=0, keepdims=True)) & np.isfinite(d)
        row_second = np.sort(d, axis=1)[:, 1] if d.shape[1] > 1 else np.full(d.shape[0], np.inf)
        col_second = np.sort(d, axis=0)[1] if d.shape[0] > 1 else np.full(d.shape[1], np.inf)
        need = np.maximum(ratio * d, d + margin)
        rows, cols = np.nonzero(mutual & allowed & (row_second[:, None] >= need) & (col_second[None, :] >= need))
        if not len(rows):
            break
        pairs += zip(rows.tolist(), cols.tolist())
        open_rows[rows], open_cols[cols] = False, False
    return pairs


def _pair(p: Any) -> tuple[str, float]:
    if hasattr(p, "label"):
        return str(p.label), float(p.probability)
    if isinstance(p, Mapping):
        return str(p["label"]), float(p["probability"] if "probability" in p else p["score"])
    label, probability = p
    return str(label), float(probability)


def _probabilities(obj: Any) -> dict[str, float]:
    """``{label: probability}`` of one observation: its full prediction list (or its best label alone)."""
    preds = getattr(obj, "predictions", None) or [(obj.label, obj.probability)]
    probs: dict[str, float] = {}
    for p in preds:
        label, probability = _pair(p)
        probs[label] = probs.get(label, 0.0) + probability
    return probs


def _smoothed_label(history: deque) -> str:
    """The label with the highest summed probability; ties go to the label seen most recently."""
    totals: dict[str, float] = {}
    for probs in reversed(history):  # newest first: max() keeps the first of equal totals
        for label, probability in probs.items():
            totals[label] = totals.get(label, 0.0) + probability
    return max(totals, key=totals.__getitem__)


def _assign(obj: Any, track_id: int, track_label: str) -> Any:
    try:
        obj.id = track_id
        obj.track_label = track_label
        return obj
    except dataclasses.FrozenInstanceError:
        return dataclasses.replace(obj, id=track_id, track_label=track_label)
