"""Stable object ids across the frames of a scene (robotics): a tracking-by-detection tracker.

:class:`Tracker` matches each frame's recognised objects to the live tracks by Hungarian assignment
(``scipy.optimize.linear_sum_assignment``). Every track **predicts** where its object is now with a constant
velocity from its last two observations (seconds between the frames' stamps, or frames when they carry none;
a track seen once predicts it did not move). For a track ``t`` and an object ``o`` let ``d`` be the distance from
``t``'s predicted centroid to ``o``'s centroid and ``e`` the longest side of ``t``'s box. The pair may match when

* ``d <= max_distance`` (the absolute gate), or
* ``d < relative_distance · e`` and ``o`` is the object nearest to ``t`` and ``t`` the track nearest to ``o``
  (an object moved by less than half its own extent, with no other candidate nearer, keeps its id),

and the IoU of their axis-aligned boxes is at least ``min_iou``. Among those pairs the assignment minimises
``d / gate + (1 - IoU)`` with ``gate = max(max_distance, relative_distance · e)``.

An object left unmatched starts a new track (ids count up from 0 and are never reused); a track unseen for more
than ``max_missed`` consecutive frames ends. A track's label is smoothed: ``track_label`` is the label with the
highest summed probability over the track's last ``window`` observations, summing each frame's full prediction
list (so a one-frame flicker of the best label does not change it).

**Feature reuse.** A track can keep the view features its object was last encoded with
(:meth:`Tracker.store_features`); :meth:`Tracker.reusable_features` gives them back for a continuing object
whose cloud barely changed since then: centroid moved at most ``reuse_max_move``, no side of its box changed by
more than ``reuse_max_extent_change``, point count within a factor ``reuse_max_point_ratio``, encoded fewer than
``reuse_max_age`` frames ago, and the same feature settings (``key``). See :class:`pointfalip.scene.SceneRecognizer`.

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

from . import metrics, presets
from .errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["Encoding", "Matching", "Track", "Tracker", "TrackerConfig", "list_tracking_presets", "load_tracking_config"]

CONFIG_FILE = presets.config_file("scene.yaml")
CONFIG_SECTION = "tracking"  # the preset kind, and the top-level key of configs/scene.yaml holding its presets

_MIN_EXTENT = 1e-3  # metres: box sides thinner than this are widened to it for the IoU (flat objects overlap)
_INFEASIBLE = 1e6  # cost of a pair that may not match (larger than any feasible cost, which is at most 2)


@dataclass(frozen=True)
class TrackerConfig:
    """Tracker settings; the defaults suit the ``tabletop`` scene preset (static camera, 3-40 cm objects)."""

    max_distance: float = 0.10  # metres: a centroid this close to a track's predicted one may continue it
    relative_distance: float = 0.5  # share of a track's longest box side within which a mutually nearest object
    # continues it
    min_iou: float = 0.0  # 0-1: ... and their axis-aligned boxes overlap at least this much (0: no overlap needed)
    max_missed: int = 5  # frames (count): a track unseen for more consecutive frames than this ends
    window: int = 10  # observations (count) of a track whose summed probabilities give its track_label
    predict: bool = True  # predict each track's centroid with a constant velocity (False: its last centroid)
    reuse_max_move: float = 0.01  # metres: an object whose centroid moved more since it was encoded is encoded again
    reuse_max_extent_change: float = 0.01  # metres: ... or whose box changed more along any side
    reuse_max_point_ratio: float = 1.25  # ... or whose point count changed by more than this factor either way
    reuse_max_age: int = 30  # frames: features older than this are computed again (1: never reuse)

    def __post_init__(self) -> None:
        _check_number(self, "max_distance", lambda v: v > 0, "> 0")
        _check_number(self, "relative_distance", lambda v: v >= 0, ">= 0")
        _check_number(self, "min_iou", lambda v: 0 <= v <= 1, "in [0, 1]")
        if not isinstance(self.predict, bool):
            raise InputError(f"TrackerConfig.predict must be true or false, got {self.predict!r}")
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
    """View features of a track's object and the observation they were computed from (for reuse)."""

    features: Any  # (V, D) view features
    key: Any  # the feature settings they were made with (equal keys: interchangeable features)
    centroid: np.ndarray  # (3,) of the observation that was encoded
    extent: np.ndarray  # (3,) its box's sides
    num_points: int
    frame: int  # the tracker's frame count when it was encoded


@dataclass(eq=False)
class Track:
    """One live track: the newest observation of its object and its recent label probabilities."""

    id: int  # never reused
    centroid: np.ndarray  # (3,) float64, metres: the newest observed centroid
    bbox_min: np.ndarray  # (3,) float64: the newest observed box
    bbox_max: np.ndarray  # (3,) float64
    time: float = 0.0  # when it was last observed: seconds (stamped frames) or the frame count
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(3))  # metres per unit of `time`
    label: str = ""  # the smoothed label (what objects of this track get as track_label)
    hits: int = 0  # frames it was observed in
    missed: int = 0  # consecutive frames it has not been observed in
    history: deque = field(default_factory=deque)  # per observation: {label: probability}, newest last
    encoding: Optional[Encoding] = None  # the features it was last encoded with (feature reuse)

    def predicted(self, now: float) -> np.ndarray:
        """The centroid expected at ``now`` (same unit as ``time``) under constant velocity."""
        return self.centroid + self.velocity * (now - self.time)


class Matching(NamedTuple):
    """One frame's assignment, from :meth:`Tracker.match`: the track each object continues (None: a new one)."""

    tracks: list  # [Track | None], one per object
    frame: int  # the tracker's frame count the matching was made at
    restart: bool  # the frame's stamp went back: every track ends before it


class Tracker:
    """Assigns stable ids and smoothed labels to the objects of consecutive frames.

    Build it once per sequence (one sensor, one frame of reference); call :meth:`update` on every frame,
    including frames without objects (they age the tracks).

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
        self._frames = 0  # frames updated so far

    @property
    def tracks(self) -> tuple[Track, ...]:
        """The live tracks, oldest first (read them, do not modify them)."""
        return tuple(self._tracks)

    def reset(self) -> None:
        """Forget every track; ids keep counting up (a new track never gets an old id)."""
        self._tracks = []
        self._last_stamp_ns = None

    def _now(self, stamp_ns: int | None) -> float:
        return stamp_ns * 1e-9 if stamp_ns is not None else float(self._frames)

    def match(self, objects: Sequence[Any], stamp_ns: int | None = None) -> Matching:
        """Which track each object would continue, without changing anything (see the module docstring)."""
        restart = stamp_ns is not None and self._last_stamp_ns is not None and stamp_ns < self._last_stamp_ns
        objects = list(objects)
        tracks: list = [None] * len(objects)
        if not restart and self._tracks and objects:
            centroids, lows, highs = _geometry(objects)
            now = self._now(stamp_ns)
            predicted = np.stack([t.predicted(now) if self.config.predict else t.centroid for t in self._tracks])
            cost = self.cost_matrix(predicted, np.stack([t.bbox_min for t in self._tracks]),
                                    np.stack([t.bbox_max for t in self._tracks]), centroids, lows, highs)
            rows, cols = linear_sum_assignment(cost)
            for r, c in zip(rows, cols):
                if cost[r, c] < _INFEASIBLE:
                    tracks[c] = self._tracks[r]
        return Matching(tracks, self._frames, restart)

    def update(self, objects: Sequence[Any], stamp_ns: int | None = None,
               matching: Matching | None = None) -> list[Any]:
        """Match one frame's objects to the tracks; set ``id`` and ``track_label`` on each object.

        Args:
            objects: the frame's recognised objects (see the module docstring for the attributes read).
            stamp_ns: the frame's time in nanoseconds, if known. A stamp older than the previous frame's
                (a recording replayed from its start) ends every track first.
            matching: :meth:`match` of these objects made just before (nothing updated in between); None:
                matched here.

        Returns:
            The objects in their order, with ``id`` and ``track_label`` set (the same instances; a frozen
            dataclass is replaced by a copy).
        """
        objects = list(objects)
        if matching is None or matching.frame != self._frames or len(matching.tracks) != len(objects):
            matching = self.match(objects, stamp_ns)
        if matching.restart:
            logger.info("tracking: time went back (%d ns < %d ns); tracks restarted", stamp_ns, self._last_stamp_ns)
            self._tracks = []
        if stamp_ns is not None:
            self._last_stamp_ns = int(stamp_ns)
        now = self._now(stamp_ns)
        self._frames += 1
        centroids, lows, highs = _geometry(objects)
        track_of = matching.tracks
        seen = {id(t) for t in track_of if t is not None}
        for track in self._tracks:
            if id(track) not in seen:
                track.missed += 1
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
                elapsed = now - track.time
                track.velocity = (centroids[i] - track.centroid) / elapsed if elapsed > 0 else np.zeros(3)
                track.centroid, track.bbox_min, track.bbox_max, track.time = centroids[i], lows[i], highs[i], now
            track.hits += 1
            track.missed = 0
            track.history.append(_probabilities(obj))
            track.label = _smoothed_label(track.history)
            out.append(_assign(obj, track.id, track.label))
        return out

    def cost_matrix(self, track_centroids: np.ndarray, track_min: np.ndarray, track_max: np.ndarray,
                    centroids: np.ndarray, bbox_min: np.ndarray, bbox_max: np.ndarray) -> np.ndarray:
        """Matching cost ``(T, M)`` between T tracks (their predicted centroids and last boxes) and M objects (all
        arrays ``(·, 3)``, metres); infeasible pairs cost ``_INFEASIBLE``."""
        cfg = self.config
        dist = np.linalg.norm(track_centroids[:, None, :] - centroids[None, :, :], axis=2)
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
