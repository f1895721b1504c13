"""The ``rclpy`` transport: the node as a ROS 2 node of an installed ROS 2 (Humble or newer, with vision_msgs).

    source /opt/ros/humble/setup.bash
    python -m pointfalip.ros2 --ros-args -p labels:="mug,bowl,bottle" -r points:=/camera/depth/points
    pointfalip ros2 --transport rclpy --labels mug,bowl,bottle --input-topic /camera/depth/points

Its parameters are the fields of :class:`pointfalip.ros2.NodeSettings` (``--ros-args -p name:=value``); the
messages are ROS's own classes, filled from the node's dicts by the functions every transport shares.
``rclpy`` and the message packages are imported when the node is built, never by importing this module.
"""
from __future__ import annotations

import importlib
import sys
import threading
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

from ..errors import InputError
from . import (CLOUD_QUEUE_DEPTH, OUTPUT_QUEUE_DEPTH, MessageSink, NodeLoop, NodeSettings, build_scene_recognizer,
               detection_array_message, marker_array_message)

__all__ = ["create_node", "main", "missing", "serve"]

_SPIN_S = 0.2  # seconds one spin waits for work before the stop flag is looked at again


def missing() -> Optional[str]:
    """Why this transport cannot run here (one line saying what to install), None when it can."""
    try:
        importlib.import_module("rclpy")
        _message_types()
    except ImportError as e:
        return (f"ROS 2 is not available ({e}); source your ROS 2 setup (e.g. /opt/ros/humble/setup.bash) and "
                "install ros-$ROS_DISTRO-vision-msgs, or use --transport dds (no ROS needed)")
    return None


def _message_types() -> Any:
    """The ROS message classes the node uses, as attributes of one namespace."""
    from builtin_interfaces.msg import Time
    from geometry_msgs.msg import Point, Pose, Quaternion, Vector3
    from sensor_msgs.msg import PointCloud2
    from std_msgs.msg import ColorRGBA, Header
    from vision_msgs.msg import BoundingBox3D, Detection3D, Detection3DArray, ObjectHypothesisWithPose
    from visualization_msgs.msg import Marker, MarkerArray

    return SimpleNamespace(**{c.__name__: c for c in (
        Time, Point, Pose, Quaternion, Vector3, PointCloud2, ColorRGBA, Header, BoundingBox3D, Detection3D,
        Detection3DArray, ObjectHypothesisWithPose, Marker, MarkerArray)})


def create_node(settings: NodeSettings | None = None, model: Any = None,
                info: Optional[Callable[[str], None]] = None, warn: Optional[Callable[[str], None]] = None,
                **node_options: Any) -> Any:
    """The ``pointfalip`` rclpy node (call ``rclpy.init()`` first). Its parameters default to ``settings``; values
    given on the command line (``--ros-args -p name:=value``) or in ``node_options`` (e.g. ``parameter_overrides``)
    take precedence. ``model``: an already loaded model (skips ``model`` / ``pretrained`` / ``precision``);
    ``info`` / ``warn``: where the frame lines and warnings go (the node's logger by default)."""
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

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
            output = QoSProfile(depth=OUTPUT_QUEUE_DEPTH, history=HistoryPolicy.KEEP_LAST,
                                reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
            self.detections = self.create_publisher(t.Detection3DArray, self.settings.detections_topic, output)
            self.markers = self.create_publisher(t.MarkerArray, self.settings.markers_topic, output)
            sink = MessageSink(
                lambda header, dets: self.detections.publish(detection_array_message(t, header, dets)),
                lambda markers: self.markers.publish(marker_array_message(t, markers)), self.labels)
            logger = self.get_logger()
            say = info or logger.info
            self.loop = NodeLoop(self.scene, [sink], warn=warn or logger.warning, info=say)
            clouds = QoSProfile(depth=CLOUD_QUEUE_DEPTH, history=HistoryPolicy.KEEP_LAST,
                                reliability=ReliabilityPolicy.BEST_EFFORT)  # takes reliable publishers too
            self.subscription = self.create_subscription(t.PointCloud2, self.settings.input_topic, self.on_cloud,
                                                         clouds)
            say(f"recognising {len(self.labels)} labels on {self.settings.input_topic} "
                f"(tracking {'on' if self.settings.track else 'off'})")

        def on_cloud(self, msg: Any) -> None:
            self.loop.push(msg)

        def destroy_node(self) -> None:
            self.loop.stop(timeout=5.0)
            super().destroy_node()

    return PointfalipNode()


def serve(settings: NodeSettings, *, stop: threading.Event, model: Any = None,
          info: Optional[Callable[[str], None]] = None, warn: Optional[Callable[[str], None]] = None) -> int:
    """Run the node until ``stop`` is set; the number of frames it answered. For ``pointfalip ros2 --transport
    rclpy``: the command line's settings, no ``--ros-args``; the caller handles SIGINT / SIGTERM. ``info`` / ``warn``:
    as :func:`create_node`'s."""
    import rclpy

    options = {}
    try:
        from rclpy.signals import SignalHandlerOptions

        options["signal_handler_options"] = SignalHandlerOptions.NO  # the caller's handlers set ``stop``
    except ImportError:  # older than Humble
        pass
    rclpy.init(args=[], **options)
    node = None
    try:
        node = create_node(settings, model=model, info=info, warn=warn)
        while not stop.is_set():
            rclpy.spin_once(node, timeout_sec=_SPIN_S)
        return node.loop.processed
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the node until Ctrl-C (``python -m pointfalip.ros2 [--ros-args ...]``); exit 2 without ROS 2."""
    reason = missing()
    if reason is not None:
        print(f"pointfalip.ros2: {reason}", file=sys.stderr)
        return 2
    import rclpy

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
