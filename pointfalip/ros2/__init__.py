"""The ROS 2 node: PointCloud2 in, recognised and tracked objects out, over either of two transports.

    pointfalip ros2 --labels mug,bowl,bottle --input-topic /camera/depth/points     # auto: rclpy, else dds
    pointfalip ros2 --transport dds --labels mug,bowl,bottle   # Cyclone DDS, no ROS installation needed
    python -m pointfalip.ros2 --ros-args -p labels:="mug,bowl,bottle" -r points:=/camera/depth/points   # rclpy

The node subscribes to ``sensor_msgs/msg/PointCloud2`` on ``input_topic``, runs a
:class:`~pointfalip.scene.SceneRecognizer` (segmentation, recognition, tracking) on each message and publishes
``vision_msgs/msg/Detection3DArray`` on ``detections_topic`` and ``visualization_msgs/msg/MarkerArray`` (a box
and a caption per object, for RViz) on ``markers_topic``, both with the cloud's header (stamp and frame).

This module is the node without its transport, plain Python tested without ROS: a transport's subscriber hands
each message to a :class:`NodeLoop` (:meth:`NodeLoop.push` decodes it with :func:`frame_from_message`), whose worker
thread runs :func:`pointfalip.stream.stream` over the newest frames (the loop of ``pointfalip scene BAG``); its
sink (:class:`MessageSink`) describes the outgoing messages as dicts (:func:`detections_from_result`,
:func:`markers_from_result`), which :func:`detection_array_message` and :func:`marker_array_message` copy into a
transport's message classes. The transports (:data:`TRANSPORTS`) only move messages:

* ``rclpy`` (:mod:`pointfalip.ros2.rclpy_node`): a ROS 2 node of an installed ROS 2, rclpy's message classes.
* ``dds`` (:mod:`pointfalip.ros2.dds`): a DDS participant of Eclipse Cyclone DDS (``pip install
  'pointfalip[ros2]'``) on ROS 2's wire (topics ``rt/<name>``, ROS 2's type names and QoS), with the classes of
  :mod:`pointfalip.ros2.messages`. ``ROS_DOMAIN_ID`` picks the domain, ``CYCLONEDDS_URI`` configures Cyclone.

Neither ``rclpy`` nor ``cyclonedds`` is imported by importing this module: neither is a dependency of pointfalip.

Settings (:class:`NodeSettings`, the rclpy node's ROS parameters): every field of
:class:`pointfalip.scene.SceneSettings` (``labels`` (comma-separated) or ``dataset``, ``model``, ``pretrained``,
``precision``, ``device``, ``preset`` (recognizer preset; ``robot_fast`` for 6 views), ``scene_preset`` (segmentation
and tracking preset), the segmentation overrides, ``track``, ``reuse``, ``top_k``, ``falip``, ``up_axis``,
``projection``, ``prompt_file``, ``fewshot``), and ``input_topic``, ``detections_topic``, ``markers_topic``.
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import threading
import time
import typing
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

import numpy as np

from ..errors import InputError
from ..foxglove import label_color
from ..scene import SceneSettings
from ..sources import decode_pointcloud2
from ..stream import FrameQueue, stream

logger = logging.getLogger(__name__)

__all__ = [
    "AUTO",
    "CLOUD_QUEUE_DEPTH",
    "MessageSink",
    "NodeLoop",
    "NodeSettings",
    "OUTPUT_QUEUE_DEPTH",
    "ReceivedFrame",
    "TRANSPORTS",
    "Transport",
    "build_scene_recognizer",
    "describe_frame",
    "detection_array_message",
    "detections_from_result",
    "frame_from_message",
    "get_transport",
    "header_stamp_ns",
    "list_transports",
    "main",
    "marker_array_message",
    "markers_from_result",
]

_NS_PER_S = 1_000_000_000
# visualization_msgs/msg/Marker constants
MARKER_CUBE = 1
MARKER_TEXT_VIEW_FACING = 9
MARKER_ADD = 0
MARKER_DELETEALL = 3
BOX_NAMESPACE = "pointfalip/boxes"
TEXT_NAMESPACE = "pointfalip/labels"
_BOX_ALPHA = 0.35  # opacity of the boxes (0-1): the points inside stay visible
_TEXT_RGBA = (1.0, 1.0, 1.0, 1.0)
_TEXT_HEIGHT_M = 0.04  # metres: height of a caption's capital letters (a Marker text's scale.z)
_MIN_SIZE_M = 1e-3  # metres: thinner box sides are drawn this thick (RViz refuses a zero scale)
# QoS depths (keep-last) of every transport: the cloud subscription keeps the newest cloud only (recognition takes
# longer than a frame); detections and markers keep 10, ROS 2's default, which `ros2 topic echo` and RViz ask for
CLOUD_QUEUE_DEPTH = 1
OUTPUT_QUEUE_DEPTH = 10


_UNSET = {float: 0.0, int: 0, str: ""}  # a ROS parameter has a type: these values stand for "not set" (None)


@dataclass(frozen=True)
class NodeSettings(SceneSettings):
    """The node's ROS parameters: every :class:`~pointfalip.scene.SceneSettings` field (the settings of
    ``pointfalip scene``) with the node's defaults, and the topics. A parameter left at its "not set" value (0, 0.0
    or "") means what ``None`` means in :class:`~pointfalip.scene.SceneSettings`: the preset's."""

    labels: str = ""  # comma-separated label names (or give dataset)
    dataset: str = ""  # a packaged label set instead of labels: modelnet40, modelnet10, scanobjectnn
    precision: Optional[str] = "auto"  # auto, fp32, bf16, fp16 ("" or None: the recognizer preset's)
    compile: str = "off"  # encoder engine: off, inductor or openvino (the first frame compiles; see the README)
    up_axis: str = "z"  # up axis of the clouds' frame (z for robot and lidar frames, -y for optical frames)
    input_topic: str = "points"  # sensor_msgs/msg/PointCloud2 (relative: remap it with -r points:=/your/topic)
    detections_topic: str = "pointfalip/detections"  # vision_msgs/msg/Detection3DArray
    markers_topic: str = "pointfalip/markers"  # visualization_msgs/msg/MarkerArray

    def label_list(self) -> Optional[list[str]]:
        try:
            return super().label_list()
        except InputError:
            raise InputError("the node needs labels: set the parameter labels:=\"mug,bowl\" or "
                             "dataset:=modelnet40") from None

    @classmethod
    def parameter_defaults(cls, defaults: Optional["NodeSettings"] = None) -> dict[str, Any]:
        """Every parameter's default as a typed ROS value (``None`` fields as their "not set" value)."""
        defaults = defaults or cls()
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            value = getattr(defaults, f.name)
            if value is None:
                kind = next(a for a in typing.get_args(hints[f.name]) if a in _UNSET)
                value = _UNSET[kind]
            values[f.name] = value
        return values

    @classmethod
    def from_parameters(cls, values: dict[str, Any]) -> "NodeSettings":
        """The settings of the node's parameter values ("not set" values of ``None`` fields back to ``None``)."""
        hints = typing.get_type_hints(cls)
        optional = {f.name for f in dataclasses.fields(cls) if type(None) in typing.get_args(hints[f.name])}
        return cls(**{k: (None if k in optional and v in ("", 0) and not isinstance(v, bool) else v)
                      for k, v in values.items()})

    @classmethod
    def from_scene(cls, settings: SceneSettings, **topics: str) -> "NodeSettings":
        """The node's settings of a :class:`~pointfalip.scene.SceneSettings` (``pointfalip ros2`` fills one as
        ``pointfalip scene`` does) and the topics: labels as comma-separated text, a ``None`` of a field the node
        types without ``None`` (its parameters have types) as the node's default."""
        values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(SceneSettings)}
        if values["labels"] is not None and not isinstance(values["labels"], str):
            values["labels"] = ",".join(str(v) for v in values["labels"])
        hints = typing.get_type_hints(cls)
        node_defaults = cls()
        for name, value in values.items():
            if value is None and type(None) not in typing.get_args(hints[name]):
                values[name] = getattr(node_defaults, name)
        return cls(**values, **topics)


def build_scene_recognizer(settings: NodeSettings, model: Any = None) -> Any:
    """The :class:`~pointfalip.scene.SceneRecognizer` the settings describe (``model``: an already loaded one)."""
    return settings.build(model)


# --------------------------------------------------------------------------------------------------
# messages as plain data
# --------------------------------------------------------------------------------------------------

def header_stamp_ns(header: Any) -> Optional[int]:
    """Nanoseconds of a ``std_msgs/msg/Header`` stamp (``stamp.sec``, ``stamp.nanosec``); None when it is zero."""
    ns = int(header.stamp.sec) * _NS_PER_S + int(header.stamp.nanosec)
    return ns or None


def _header(result: Any) -> dict:
    stamp_ns = getattr(result, "stamp_ns", None)
    return {"stamp_ns": int(stamp_ns or 0), "frame_id": str(getattr(result, "frame_id", None) or "")}


class ReceivedFrame(NamedTuple):
    """A cloud the node received, as the frame :func:`pointfalip.stream.stream` reads, and when it came."""

    stamp_ns: Optional[int]  # the header's stamp (None when zero)
    points: np.ndarray  # (N, 3) float32, metres, in the header's frame; N >= 1
    frame_id: Optional[str]  # the header's frame_id (None when empty)
    received: float  # time.perf_counter() when the message was handed to the node: the start of its latency


def frame_from_message(msg: Any) -> ReceivedFrame:
    """A ``sensor_msgs/msg/PointCloud2`` (rclpy's, Cyclone's, or any object with its fields, e.g. from ``rosbags``)
    as the frame :func:`pointfalip.stream.stream` reads: its points, header stamp and frame id.

    Raises:
        InputError: the message is not a usable PointCloud2, or holds no point with finite coordinates (see
            :func:`pointfalip.sources.decode_pointcloud2`): nothing to recognise, nothing to publish.
    """
    received = time.perf_counter()
    return ReceivedFrame(header_stamp_ns(msg.header), decode_pointcloud2(msg, min_points=1),
                         str(msg.header.frame_id) or None, received)


def describe_frame(result: Any, latency_s: float) -> str:
    """The node's line about a frame: its stamp and frame, the objects (label, probability, track id) and the
    latency (seconds from the message's arrival to its answer's publication)."""
    stamp = getattr(result, "stamp_ns", None)
    where = [f"t={stamp / _NS_PER_S:.3f}" if stamp else "", getattr(result, "frame_id", None) or ""]
    count = len(result.objects)
    objects = ", ".join(obj.text for obj in result.objects) or "nothing"
    return (" ".join(["frame", *filter(None, where)]) + f": {count} object{'' if count == 1 else 's'} ({objects}); "
            f"latency {latency_s * 1000:.0f} ms")


class MessageSink:
    """A :func:`~pointfalip.stream.stream` sink that describes each result as the node's outgoing messages.

    Args:
        publish_detections: called with ``(header, detections)``: the result's header dict and
            :func:`detections_from_result`'s list.
        publish_markers: called with :func:`markers_from_result`'s list.
        labels: the label set (the markers' colours).
    """

    def __init__(self, publish_detections: Callable[[dict, list], None], publish_markers: Callable[[list], None],
                 labels: Sequence[str] | None = None):
        self.publish_detections = publish_detections
        self.publish_markers = publish_markers
        self.labels = list(labels) if labels is not None else None

    def log_frame(self, points: Any, result: Any, *, stamp_ns: Optional[int] = None) -> None:
        self.publish_detections(_header(result), detections_from_result(result))
        self.publish_markers(markers_from_result(result, self.labels))


class NodeLoop:
    """The node's frame loop: :meth:`push` a message from the subscriber's callback; a worker thread runs
    :func:`pointfalip.stream.stream` over the newest frames (older waiting ones are dropped: recognition is slower
    than a sensor) and hands every result to the sinks. :meth:`stop` ends it after the frames already pushed.

    Args:
        scene: the :class:`~pointfalip.scene.SceneRecognizer`.
        sinks: :func:`~pointfalip.stream.stream` sinks, e.g. a :class:`MessageSink`.
        warn: where a message that is not a usable cloud, or a frame that failed, is reported (one line).
        info: where each answered frame is described (one line, :func:`describe_frame`).
        queue_size: frames waiting at most.
    """

    def __init__(self, scene: Any, sinks: Sequence[Any], warn: Callable[[str], None] = logger.warning,
                 info: Callable[[str], None] = logger.info, queue_size: int = CLOUD_QUEUE_DEPTH):
        self.scene = scene
        self.sinks = list(sinks)
        self.warn = warn
        self.info = info
        self.frames = FrameQueue(queue_size)
        self.processed = 0
        self._current: Any = None  # the frame stream() is working on
        self._thread = threading.Thread(target=self._run, name="pointfalip-frames", daemon=True)
        self._thread.start()

    def push(self, msg: Any) -> None:
        """Queue a PointCloud2 message (a message that is not a usable cloud is reported and skipped)."""
        try:
            self.frames.put(frame_from_message(msg))
        except InputError as e:
            self.warn(" ".join(str(e).split()))

    def _taken(self) -> Iterator[Any]:
        for frame in self.frames:
            self._current = frame
            yield frame

    def _run(self) -> None:
        while True:
            try:
                for item in stream(self.scene, self._taken(), sinks=self.sinks):
                    self.processed += 1
                    received = getattr(self._current, "received", None)
                    self.info(describe_frame(item.result, 0.0 if received is None else
                                             time.perf_counter() - received))
                return
            except InputError as e:
                if self.frames.closed:  # stopped with no frame left: nothing to report
                    return
                self.warn(" ".join(str(e).split()))
            except Exception as e:  # noqa: BLE001 - one bad frame must not stop the node
                logger.exception("a frame failed")
                self.warn(f"a frame failed: {e}")

    def stop(self, timeout: Optional[float] = None) -> None:
        """Process the frames already pushed, then end the worker thread."""
        self.frames.close()
        self._thread.join(timeout)


def _box(obj: Any) -> tuple[list[float], list[float]]:
    lo = np.asarray(obj.bbox_min, dtype=np.float64).reshape(3)
    hi = np.asarray(obj.bbox_max, dtype=np.float64).reshape(3)
    return [float(v) for v in (lo + hi) / 2], [float(v) for v in hi - lo]


def _hypotheses(obj: Any) -> list[dict]:
    """This frame's predictions, best first; a tracked object's smoothed label goes first (its score is this
    frame's probability of it, 0 when it fell out of the top k), as consumers read ``results[0]``."""
    hyps = [{"class_id": str(p.label), "score": float(p.probability)} for p in obj.predictions]
    shown = obj.display_label
    rest = [h for h in hyps if h["class_id"] != shown]
    return [{"class_id": shown, "score": obj.probability_of(shown)}] + rest


def detections_from_result(result: Any) -> list[dict]:
    """One dict a ``vision_msgs/msg/Detection3D`` for every object of a scene result, in its order.

    Each: ``header`` ``{"stamp_ns", "frame_id"}`` (the result's; stamp 0 when unknown), ``id`` (the track id as a
    string, ``""`` untracked), ``bbox`` ``{"center": [x, y, z], "size": [sx, sy, sz]}`` (metres, the axis-aligned
    box in the frame, identity orientation), ``hypotheses`` ``[{"class_id", "score"}]`` (see below) and, beyond
    the message, ``track_label`` (or None) and ``num_points``.

    Hypotheses are the frame's top-k predictions, best first, except that a tracked object's smoothed label
    (``track_label``) comes first, with this frame's probability of it.
    """
    header = _header(result)
    out = []
    for obj in result.objects:
        centre, size = _box(obj)
        track_id = getattr(obj, "id", None)
        out.append({"header": dict(header), "id": "" if track_id is None else str(int(track_id)),
                    "bbox": {"center": centre, "size": size}, "hypotheses": _hypotheses(obj),
                    "track_label": getattr(obj, "track_label", None), "num_points": int(obj.num_points)})
    return out


def markers_from_result(result: Any, labels: Sequence[str] | None = None,
                        text_height: float = _TEXT_HEIGHT_M) -> list[dict]:
    """The ``visualization_msgs/msg/Marker`` dicts that draw a scene result in RViz.

    First a ``DELETEALL`` (objects that left the scene disappear), then per object a translucent ``CUBE`` in the
    namespace ``pointfalip/boxes`` (pose at the box centre, scale its size, at least 1 mm, the label's colour as in
    the Foxglove output) and a ``TEXT_VIEW_FACING`` caption ``"mug 0.82 #3"`` in ``pointfalip/labels`` at the
    centre of the box's top face (+z). Marker ids are the track ids (the object's index when untracked).

    Each dict: ``header``, ``ns``, ``id``, ``type``, ``action``, ``position`` [x, y, z], ``orientation``
    [x, y, z, w], ``scale`` [x, y, z], ``color`` [r, g, b, a] (0-1), ``text``.
    """
    header = _header(result)
    identity = [0.0, 0.0, 0.0, 1.0]
    markers = [{"header": dict(header), "ns": "", "id": 0, "type": MARKER_CUBE, "action": MARKER_DELETEALL,
                "position": [0.0, 0.0, 0.0], "orientation": identity, "scale": [1.0, 1.0, 1.0],
                "color": [0.0, 0.0, 0.0, 0.0], "text": ""}]
    for i, obj in enumerate(result.objects):
        centre, size = _box(obj)
        track_id = getattr(obj, "id", None)
        marker_id = i if track_id is None else int(track_id)
        r, g, b = (c / 255.0 for c in label_color(obj.display_label, labels))
        top = [centre[0], centre[1], float(np.asarray(obj.bbox_max, dtype=np.float64).reshape(3)[2])]
        markers.append({"header": dict(header), "ns": BOX_NAMESPACE, "id": marker_id, "type": MARKER_CUBE,
                        "action": MARKER_ADD, "position": centre, "orientation": identity,
                        "scale": [max(s, _MIN_SIZE_M) for s in size], "color": [r, g, b, _BOX_ALPHA], "text": ""})
        markers.append({"header": dict(header), "ns": TEXT_NAMESPACE, "id": marker_id,
                        "type": MARKER_TEXT_VIEW_FACING, "action": MARKER_ADD, "position": top,
                        "orientation": identity, "scale": [0.0, 0.0, float(text_height)], "color": list(_TEXT_RGBA),
                        "text": obj.text})
    return markers


# --------------------------------------------------------------------------------------------------
# the dicts as a transport's messages (``t``: a namespace of its message classes, named as in ROS)
# --------------------------------------------------------------------------------------------------

def _stamp(t: Any, stamp_ns: int) -> Any:
    sec, nanosec = divmod(int(stamp_ns), _NS_PER_S)
    return t.Time(sec=sec, nanosec=nanosec)


def _ros_header(t: Any, header: dict) -> Any:
    return t.Header(stamp=_stamp(t, header["stamp_ns"]), frame_id=header["frame_id"])


def _pose(t: Any, position: Sequence[float], orientation: Sequence[float] = (0.0, 0.0, 0.0, 1.0)) -> Any:
    x, y, z = (float(v) for v in position)
    qx, qy, qz, qw = (float(v) for v in orientation)
    return t.Pose(position=t.Point(x=x, y=y, z=z), orientation=t.Quaternion(x=qx, y=qy, z=qz, w=qw))


def detection_array_message(t: Any, header: dict, detections: list[dict]) -> Any:
    """A ``vision_msgs/msg/Detection3DArray`` from :func:`detections_from_result`'s dicts.

    ``t``: the message classes (rclpy's, or :mod:`pointfalip.ros2.messages`). vision_msgs 4 (Humble and newer)
    layout; on older ones (Foxy) the hypothesis' ``id`` and the detection's ``tracking_id`` are filled instead."""
    out = t.Detection3DArray(header=_ros_header(t, header))
    for det in detections:
        msg = t.Detection3D(header=_ros_header(t, det["header"]))
        sx, sy, sz = (float(v) for v in det["bbox"]["size"])
        msg.bbox = t.BoundingBox3D(center=_pose(t, det["bbox"]["center"]), size=t.Vector3(x=sx, y=sy, z=sz))
        for hyp in det["hypotheses"]:
            h = t.ObjectHypothesisWithPose()
            if hasattr(h, "hypothesis"):
                h.hypothesis.class_id, h.hypothesis.score = hyp["class_id"], float(hyp["score"])
            else:
                h.id, h.score = hyp["class_id"], float(hyp["score"])
            h.pose.pose = _pose(t, det["bbox"]["center"])
            msg.results.append(h)
        if hasattr(msg, "id"):
            msg.id = det["id"]
        elif det["id"]:
            msg.is_tracking, msg.tracking_id = True, det["id"]
        out.detections.append(msg)
    return out


def marker_array_message(t: Any, markers: list[dict]) -> Any:
    """A ``visualization_msgs/msg/MarkerArray`` from :func:`markers_from_result`'s dicts (``t``: as above)."""
    out = t.MarkerArray()
    for m in markers:
        r, g, b, a = (float(v) for v in m["color"])
        sx, sy, sz = (float(v) for v in m["scale"])
        out.markers.append(t.Marker(header=_ros_header(t, m["header"]), ns=m["ns"], id=int(m["id"]),
                                    type=int(m["type"]), action=int(m["action"]),
                                    pose=_pose(t, m["position"], m["orientation"]), scale=t.Vector3(x=sx, y=sy, z=sz),
                                    color=t.ColorRGBA(r=r, g=g, b=b, a=a), text=m["text"]))
    return out


# --------------------------------------------------------------------------------------------------
# transports
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Transport:
    """A way to reach a ROS 2 graph. Its module (imported on use; its own libraries only when it runs) offers
    ``missing() -> str | None`` (why it cannot run here: one line saying what to install) and
    ``serve(settings, *, stop, model=None, info, warn) -> int`` (run the node until ``stop`` is set; the number of
    frames answered), wiring its subscriber and publishers to a :class:`NodeLoop` and a :class:`MessageSink`."""

    name: str
    help: str
    module: str  # relative to this package

    def load(self) -> ModuleType:
        return importlib.import_module(self.module, __name__)


TRANSPORTS: dict[str, Transport] = {t.name: t for t in (  # in the order "auto" tries them
    Transport("rclpy", "a node of an installed ROS 2 (source its setup first)", ".rclpy_node"),
    Transport("dds", "Eclipse Cyclone DDS on ROS 2's wire, no ROS needed (pip install 'pointfalip[ros2]')", ".dds"),
)}
AUTO = "auto"  # the first transport that can run here


def list_transports() -> list[str]:
    """The transport names, in the order ``auto`` tries them."""
    return list(TRANSPORTS)


def get_transport(name: str = AUTO) -> tuple[Transport, ModuleType]:
    """The transport called ``name`` (``auto``: rclpy where it imports, else dds) and its module.

    Raises:
        InputError: an unknown name, or the transport cannot run here (one line saying what to install).
    """
    if name == AUTO:
        reasons = []
        for transport in TRANSPORTS.values():
            module = transport.load()
            reason = module.missing()
            if reason is None:
                return transport, module
            reasons.append(f"{transport.name}: {reason}")
        raise InputError("no ROS 2 transport can run here: " + "; ".join(reasons))
    if name not in TRANSPORTS:
        raise InputError(f"unknown transport {name!r}: choose {AUTO}, {', '.join(TRANSPORTS)}")
    module = TRANSPORTS[name].load()
    reason = module.missing()
    if reason is not None:
        raise InputError(f"the {name} transport cannot run: {reason}")
    return TRANSPORTS[name], module


_RCLPY_NAMES = ("create_node", "main", "_message_types")  # the rclpy node's, importable from here as before


def __getattr__(name: str) -> Any:
    if name in _RCLPY_NAMES:
        from . import rclpy_node

        return getattr(rclpy_node, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
