"""A ROS 2 node: PointCloud2 in, recognised and tracked objects out (optional; needs a ROS 2 installation).

    source /opt/ros/humble/setup.bash        # any ROS 2 distribution with vision_msgs (Humble or newer)
    python -m pointfalip.ros2 --ros-args -p labels:="mug,bowl,bottle" -p scene_preset:=tabletop \\
        -r points:=/camera/depth/points

The node subscribes to ``sensor_msgs/msg/PointCloud2`` on ``input_topic``, runs a
:class:`~pointfalip.scene.SceneRecognizer` (segmentation, recognition, tracking) on each message and publishes
``vision_msgs/msg/Detection3DArray`` on ``detections_topic`` and ``visualization_msgs/msg/MarkerArray`` (a box
and a caption per object, for RViz) on ``markers_topic``, both with the cloud's header (stamp and frame).

Everything between the messages is plain Python, the same loop as the bag path (``pointfalip scene BAG``) and
tested without ROS: the subscriber's callback turns a message into a frame (:func:`frame_from_message`) and pushes
it to a :class:`NodeLoop`, whose worker thread runs :func:`pointfalip.stream.stream` over the newest frames; its
sink (:class:`MessageSink`) describes the outgoing messages as dicts (:func:`detections_from_result`,
:func:`markers_from_result`) and hands them to publish functions. The node class only copies those dicts into ROS
message types. ``rclpy`` and the message packages are imported when the node is built, never by
importing this module: they are not dependencies of pointfalip.

Parameters (:class:`NodeSettings`): every field of :class:`pointfalip.scene.SceneSettings` (``labels``
(comma-separated) or ``dataset``, ``model``, ``pretrained``, ``precision``, ``device``, ``preset`` (recognizer preset;
``robot_fast`` for 6 views), ``scene_preset`` (segmentation and tracking preset), the segmentation overrides,
``track``, ``reuse``, ``top_k``, ``falip``, ``up_axis``, ``projection``, ``prompt_file``, ``fewshot``), and
``input_topic``, ``detections_topic``, ``markers_topic``.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import threading
import typing
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .errors import InputError
from .foxglove import label_color
from .scene import SceneSettings
from .sources import BagFrame, decode_pointcloud2
from .stream import FrameQueue, stream

logger = logging.getLogger(__name__)

__all__ = [
    "MessageSink",
    "NodeLoop",
    "NodeSettings",
    "build_scene_recognizer",
    "detections_from_result",
    "frame_from_message",
    "header_stamp_ns",
    "main",
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
_QUEUE_DEPTH = 1  # clouds waiting while one is processed: only the newest (recognition takes longer than a frame)


_UNSET = {float: 0.0, int: 0, str: ""}  # a ROS parameter has a type: these values stand for "not set" (None)


@dataclass(frozen=True)
class NodeSettings(SceneSettings):
    """The node's ROS parameters: every :class:`~pointfalip.scene.SceneSettings` field (the settings of
    ``pointfalip scene``) with the node's defaults, and the topics. A parameter left at its "not set" value (0, 0.0
    or "") means what ``None`` means in :class:`~pointfalip.scene.SceneSettings`: the preset's."""

    labels: str = ""  # comma-separated label names (or give dataset)
    dataset: str = ""  # a packaged label set instead of labels: modelnet40, modelnet10, scanobjectnn
    precision: str = "auto"  # auto, fp32, bf16, fp16
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


def frame_from_message(msg: Any) -> BagFrame:
    """A ``sensor_msgs/msg/PointCloud2`` (rclpy's, or any object with its fields, e.g. from ``rosbags``) as the frame
    :func:`pointfalip.stream.stream` reads: its points, header stamp and frame id.

    Raises:
        InputError: the message is not a usable PointCloud2 (see :func:`pointfalip.sources.decode_pointcloud2`).
    """
    return BagFrame(header_stamp_ns(msg.header), decode_pointcloud2(msg), str(msg.header.frame_id) or None)


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
        queue_size: frames waiting at most.
    """

    def __init__(self, scene: Any, sinks: Sequence[Any], warn: Callable[[str], None] = logger.warning,
                 queue_size: int = _QUEUE_DEPTH):
        self.scene = scene
        self.sinks = list(sinks)
        self.warn = warn
        self.frames = FrameQueue(queue_size)
        self.processed = 0
        self._thread = threading.Thread(target=self._run, name="pointfalip-frames", daemon=True)
        self._thread.start()

    def push(self, msg: Any) -> None:
        """Queue a PointCloud2 message (a message that is not a usable cloud is reported and skipped)."""
        try:
            self.frames.put(frame_from_message(msg))
        except InputError as e:
            self.warn(" ".join(str(e).split()))

    def _run(self) -> None:
        while True:
            try:
                for _ in stream(self.scene, self.frames, sinks=self.sinks):
                    self.processed += 1
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
# the node (rclpy and the message packages are imported here only)
# --------------------------------------------------------------------------------------------------

def _stamp(msg_types: Any, stamp_ns: int) -> Any:
    sec, nanosec = divmod(int(stamp_ns), _NS_PER_S)
    return msg_types.Time(sec=sec, nanosec=nanosec)


def _ros_header(msg_types: Any, header: dict) -> Any:
    return msg_types.Header(stamp=_stamp(msg_types, header["stamp_ns"]), frame_id=header["frame_id"])


def _message_types() -> Any:
    """The ROS message classes the node uses, as attributes of one namespace."""
    from types import SimpleNamespace

    from builtin_interfaces.msg import Time
    from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import ColorRGBA, Header
    from vision_msgs.msg import BoundingBox3D, Detection3D, Detection3DArray, ObjectHypothesisWithPose
    from visualization_msgs.msg import Marker, MarkerArray

    return SimpleNamespace(**{c.__name__: c for c in (
        Time, Point, Pose, Quaternion, Vector3, PointCloud2, ColorRGBA, Header, BoundingBox3D, Detection3D,
        Detection3DArray, ObjectHypothesisWithPose, Marker, MarkerArray)})


def _pose(t: Any, position: Sequence[float], orientation: Sequence[float] = (0.0, 0.0, 0.0, 1.0)) -> Any:
    x, y, z = (float(v) for v in position)
    qx, qy, qz, qw = (float(v) for v in orientation)
    return t.Pose(position=t.Point(x=x, y=y, z=z), orientation=t.Quaternion(x=qx, y=qy, z=qz, w=qw))


def detection_array_message(t: Any, header: dict, detections: list[dict]) -> Any:
    """A ``vision_msgs/msg/Detection3DArray`` from :func:`detections_from_result`'s dicts (``t``: the message types).

    vision_msgs 4 (Humble and newer) layout; on older ones (Foxy) the hypothesis' ``id`` and the detection's
    ``tracking_id`` are filled instead."""
    out = t.Detection3DArray(header=_ros_header(t, header))
    for det in detections:
        msg = t.Detection3D(header=_ros_header(t, det["header"]))
        sx, sy, sz = det["bbox"]["size"]
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
    """A ``visualization_msgs/msg/MarkerArray`` from :func:`markers_from_result`'s dicts."""
    out = t.MarkerArray()
    for m in markers:
        r, g, b, a = (float(v) for v in m["color"])
        sx, sy, sz = (float(v) for v in m["scale"])
        out.markers.append(t.Marker(header=_ros_header(t, m["header"]), ns=m["ns"], id=int(m["id"]),
                                    type=int(m["type"]), action=int(m["action"]),
                                    pose=_pose(t, m["position"], m["orientation"]), scale=t.Vector3(x=sx, y=sy, z=sz),
                                    color=t.ColorRGBA(r=r, g=g, b=b, a=a), text=m["text"]))
    return out


def create_node(settings: NodeSettings | None = None, model: Any = None, **node_options: Any) -> Any:
    """The ``pointfalip`` rclpy node (call ``rclpy.init()`` first). Its parameters default to ``settings``; values
    given on the command line (``--ros-args -p name:=value``) or in ``node_options`` (e.g. ``parameter_overrides``)
    take precedence. ``model``: an already loaded model (skips ``model`` / ``pretrained`` / ``precision``)."""
    from rclpy.node import Node
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    t = _message_types()
    defaults = settings or NodeSettings()

    class PointfalipNode(Node):
        """Subscribes to PointCloud2, publishes Detection3DArray and MarkerArray (see :mod:`pointfalip.ros2`)."""

        def __init__(self) -> None:
            super().__init__("pointfalip", **node_options)
            values = {name: self.declare_parameter(name, value).value
                      for name, value in NodeSettings.parameter_defaults(defaults).items()}
            self.settings = NodeSettings.from_parameters(values)
            self.scene = build_scene_recognizer(self.settings, model=model)
            self.labels = list(self.scene.recognizer.labels)
            self.detections = self.create_publisher(t.Detection3DArray, self.settings.detections_topic, 10)
            self.markers = self.create_publisher(t.MarkerArray, self.settings.markers_topic, 10)
            sink = MessageSink(
                lambda header, dets: self.detections.publish(detection_array_message(t, header, dets)),
                lambda markers: self.markers.publish(marker_array_message(t, markers)), self.labels)
            self.loop = NodeLoop(self.scene, [sink], warn=self.get_logger().warning)
            qos = QoSProfile(depth=_QUEUE_DEPTH, history=HistoryPolicy.KEEP_LAST,
                             reliability=ReliabilityPolicy.BEST_EFFORT)  # takes reliable publishers too
            self.subscription = self.create_subscription(t.PointCloud2, self.settings.input_topic, self.on_cloud, qos)
            self.get_logger().info(f"recognising {len(self.labels)} labels on {self.settings.input_topic} "
                                   f"(tracking {'on' if self.settings.track else 'off'})")

        def on_cloud(self, msg: Any) -> None:
            self.loop.push(msg)

        def destroy_node(self) -> None:
            self.loop.stop(timeout=5.0)
            super().destroy_node()

    return PointfalipNode()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the node until Ctrl-C (``python -m pointfalip.ros2 [--ros-args ...]``); exit 2 without ROS 2."""
    try:
        import rclpy
        _message_types()
    except ImportError as e:
        print(f"pointfalip.ros2: ROS 2 is not available ({e}); source your ROS 2 setup "
              "(e.g. /opt/ros/humble/setup.bash) and install ros-$ROS_DISTRO-vision-msgs", file=sys.stderr)
        return 2
    rclpy.init(args=list(argv) if argv is not None else sys.argv)
    node = None
    try:
        node = create_node()
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    except InputError as e:
        print(f"pointfalip.ros2: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
