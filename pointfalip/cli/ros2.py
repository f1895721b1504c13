"""`ros2`: the ROS 2 node (`pointfalip.ros2`) over rclpy or Cyclone DDS, until Ctrl-C or SIGTERM."""
from __future__ import annotations

import signal
import sys
import threading

from .options import read_labels, subcommand
from .scene import scene_settings, scene_settings_args

_PREFIX = "pointfalip ros2"


def _ros2_args(p) -> None:
    from ..ros2 import AUTO, TRANSPORTS, NodeSettings

    g = p.add_argument_group("ROS 2")
    g.add_argument("--transport", choices=(AUTO, *TRANSPORTS), default=AUTO,
                   help="; ".join([f"{AUTO}: rclpy where ROS 2 is sourced, else dds"] +
                                  [f"{t.name}: {t.help}" for t in TRANSPORTS.values()]) + " (default %(default)s)")
    g.add_argument("--input-topic", default=NodeSettings.input_topic,
                   help="sensor_msgs/msg/PointCloud2 topic (default %(default)s)")
    g.add_argument("--detections-topic", default=NodeSettings.detections_topic,
                   help="vision_msgs/msg/Detection3DArray topic (default %(default)s)")
    g.add_argument("--markers-topic", default=NodeSettings.markers_topic,
                   help="visualization_msgs/msg/MarkerArray topic for RViz (default %(default)s)")
    scene_settings_args(p, track_help="no object ids across frames", up_default="z")


def _say(line: str) -> None:
    print(f"{_PREFIX}: {line}", file=sys.stderr, flush=True)


def _warn(line: str) -> None:
    print(f"{_PREFIX}: warning: {' '.join(line.split())}", file=sys.stderr, flush=True)


def _print_ros2(result: dict) -> None:
    print(f"{result['frames']} frame(s) answered over {result['transport']}")


@subcommand("ros2", "the ROS 2 node: PointCloud2 in, Detection3DArray and MarkerArray out, until Ctrl-C "
            "(rclpy, or Cyclone DDS without ROS)", _ros2_args, _print_ros2)
def run_ros2(args) -> dict:
    """Run the node with the scene settings of the command line until SIGINT or SIGTERM (then exit 0): one line a
    frame and one line a warning on stderr as they happen."""
    from ..ros2 import NodeSettings, get_transport

    labels, dataset = read_labels(args)
    settings = NodeSettings.from_scene(scene_settings(args, labels, dataset, track=not args.no_track),
                                       input_topic=args.input_topic, detections_topic=args.detections_topic,
                                       markers_topic=args.markers_topic)
    transport, module = get_transport(args.transport)
    stop = threading.Event()
    on_main = threading.current_thread() is threading.main_thread()  # only the main thread may set handlers
    previous = {}
    if on_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    try:
        frames = module.serve(settings, stop=stop, info=_say, warn=_warn)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return {"transport": transport.name, "frames": frames, "topics": {
        "input": settings.input_topic, "detections": settings.detections_topic, "markers": settings.markers_topic}}
