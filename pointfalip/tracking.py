"""Stable object ids across the frames of a scene (robotics): a tracking-by-detection tracker.

:class:`Tracker` matches each frame's recognised objects to the live tracks by Hungarian assignment
(``scipy.optimize.linear_sum_assignment``) on a cost built from the 3D centroid distance ``d`` and the IoU of
the axis-aligned 3D boxes::

    cost = d / max_distance + (1 - IoU)        for pairs with d <= max_distance and IoU >= min_iou

Other pairs cannot match. An object left unmatched starts a new track (ids count up from 0 and are never
reused); a track unseen for more than ``max_missed`` consecutive frames ends. A track's label is smoothed:
``track_label`` is the label with the highest summed probability over the track's last ``window``
observations, summing each frame's full prediction list (so a one-frame flicker of the best label does not
change it).

Tracks hold the newest observed centroid and box (no motion model): the tracker expects a static sensor,
or objects given in a fixed (world / map) frame, and moves of at most ``max_distance`` between processed
frames. Settings: :class:`TrackerConfig`; presets in the ``tracking`` section of ``configs/scene.yaml``
through :func:`load_tracking_config` (defaults when the file has no such section).

Objects are read by duck typing: ``label``, ``probability``, ``predictions`` (items with ``label`` and
``probability`` attributes, ``{"label", "probability" | "score"}`` mappings or ``(label, probability)``
pairs), ``centroid``, ``bbox_min``, ``bbox_max``; the tracker sets ``id`` and ``track_label``.
"""
from __future__ import annotations

import dataclasses
import logging
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from . import presets
from .errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["Track", "Tracker", "TrackerConfig", "list_tracking_presets", "load_tracking_config"]

CONFIG_FILE = presets.config_file("scene.yaml")
CONFIG_SECTION = "tracking"  # the preset kind, and the top-level key of configs/scene.yaml holding its presets

_MIN_EXTENT = 1e-3  # metres: box sides thinner than this are widened to it for the IoU (flat objects overlap)
_INFEASIBLE = 1e6  # cost of a pair that may not match (larger than any feasible cost, which is at most 2)


@dataclass(frozen=True)
class TrackerConfig:
    """Tracker settings; the defaults suit the ``tabletop`` scene preset (static camera, 3-40 cm objects)."""

    max_distance: float = 0.10  # metres: an object continues a track only if their centroids are this close
    min_iou: float = 0.0  # 0-1: ... and their axis-aligned boxes overlap at least this much (0: no overlap needed)
    max_missed: int = 5  # frames (count): a track unseen for more consecutive frames than this ends
    window: int = 10  # observations (count) of a track whose summed probabilities give its track_label

    def __post_init__(self) -> None:
        _check_number(self, "max_distance", lambda v: v > 0, "> 0")
        _check_number(self, "min_iou", lambda v: 0 <= v <= 1, "in [0, 1]")
        presets.check_int(self, "max_missed", minimum=0)
        presets.check_int(self, "window", minimum=1)

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
class Track:
    """One live track: the newest observation of its object and its recent label probabilities."""

    id: int  # never reused
    centroid: np.ndarray  # (3,) float64, metres: the newest observed centroid
    bbox_min: np.ndarray  # (3,) float64: the newest observed box
    bbox_max: np.ndarray  # (3,) float64
    label: str = ""  # the smoothed label (what objects of this track get as track_label)
    hits: int = 0  # frames it was observed in
    missed: int = 0  # consecutive frames it has not been observed in
    history: deque = field(default_factory=deque)  # per observation: {label: probability}, newest last


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

    @property
    def tracks(self) -> tuple[Track, ...]:
        """The live tracks, oldest first (read them, do not modify them)."""
        return tuple(self._tracks)

    def reset(self) -> None:
        """Forget every track; ids keep counting up (a new track never gets an old id)."""
        self._tracks = []
        self._last_stamp_ns = None

    def update(self, objects: Sequence[Any], stamp_ns: int | None = None) -> list[Any]:
        """Match one frame's objects to the tracks; set ``id`` and ``track_label`` on each object.

        Args:
            objects: the frame's recognised objects (see the module docstring for the attributes read).
            stamp_ns: the frame's time in nanoseconds, if known. A stamp older than the previous frame's
                (a recording replayed from its start) ends every track first.

        Returns:
            The objects in their order, with ``id`` and ``track_label`` set (the same instances; a frozen
            dataclass is replaced by a copy).
        """
        if stamp_ns is not None:
            if self._last_stamp_ns is not None and stamp_ns < self._last_stamp_ns:
                logger.info("tracking: time went back (%d ns < %d ns); tracks restarted", stamp_ns,
                            self._last_stamp_ns)
                self._tracks = []
            self._last_stamp_ns = int(stamp_ns)
        objects = list(objects)
        centroids, lows, highs = _geometry(objects)
        rows, cols = self._match(centroids, lows, highs)

        track_of = [None] * len(objects)
        for r, c in zip(rows, cols):
            track_of[c] = self._tracks[r]
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
                track = Track(self._next_id, centroids[i], lows[i], highs[i],
                              history=deque(maxlen=self.config.window))
                self._next_id += 1
                self._tracks.append(track)
            else:
                track.centroid, track.bbox_min, track.bbox_max = centroids[i], lows[i], highs[i]
            track.hits += 1
            track.missed = 0
            track.history.append(_probabilities(obj))
            track.label = _smoothed_label(track.history)
            out.append(_assign(obj, track.id, track.label))
        return out

    def _match(self, centroids: np.ndarray, lows: np.ndarray, highs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (track row, object column) of the minimum-cost assignment among the feasible pairs."""
        if not self._tracks or len(centroids) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        cost = self.cost_matrix(np.stack([t.centroid for t in self._tracks]),
                                np.stack([t.bbox_min for t in self._tracks]),
                                np.stack([t.bbox_max for t in self._tracks]), centroids, lows, highs)
        rows, cols = linear_sum_assignment(cost)
        keep = cost[rows, cols] < _INFEASIBLE
        return rows[keep], cols[keep]

    def cost_matrix(self, track_centroids: np.ndarray, track_min: np.ndarray, track_max: np.ndarray,
                    centroids: np.ndarray, bbox_min: np.ndarray, bbox_max: np.ndarray) -> np.ndarray:
        """Matching cost ``(T, M)`` between T tracks and M objects (all arrays ``(·, 3)``, metres);
        infeasible pairs cost ``_INFEASIBLE``."""
        dist = np.linalg.norm(track_centroids[:, None, :] - centroids[None, :, :], axis=2)
        iou = box_iou(track_min, track_max, bbox_min, bbox_max)
        cost = dist / self.config.max_distance + (1.0 - iou)
        feasible = (dist <= self.config.max_distance) & (iou >= self.config.min_iou)
        return np.where(feasible, cost, _INFEASIBLE)


def box_iou(min_a: np.ndarray, max_a: np.ndarray, min_b: np.ndarray, max_b: np.ndarray) -> np.ndarray:
    """IoU ``(A, B)`` of axis-aligned 3D boxes given by corners ``(A, 3)`` and ``(B, 3)``; sides thinner
    than 1 mm count as 1 mm (centred), so flat boxes still overlap."""
    min_a, max_a = _widen(np.asarray(min_a, dtype=np.float64), np.asarray(max_a, dtype=np.float64))
    min_b, max_b = _widen(np.asarray(min_b, dtype=np.float64), np.asarray(max_b, dtype=np.float64))
    lo = np.maximum(min_a[:, None, :], min_b[None, :, :])
    hi = np.minimum(max_a[:, None, :], max_b[None, :, :])
    inter = np.prod(np.clip(hi - lo, 0.0, None), axis=2)
    vol_a = np.prod(max_a - min_a, axis=1)
    vol_b = np.prod(max_b - min_b, axis=1)
    return inter / (vol_a[:, None] + vol_b[None, :] - inter)


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
