"""The ROS 2 node's message handling as plain data (no ROS needed), and the node itself where rclpy exists.

PointCloud2 messages are built with rosbags' message types, which carry the same fields as rclpy's."""
import importlib.util
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin

from conftest import load_random
from test_sources import PC2, TS, make_cloud, write_bag
from test_scene import FakeRecognizer

from pointfalip.errors import InputError
from pointfalip.foxglove import label_color
from pointfalip.recognize import Prediction
from pointfalip.sources import read_bag
from pointfalip.ros2 import (
    BOX_NAMESPACE,
    MARKER_ADD,
    MARKER_CUBE,
    MARKER_DELETEALL,
    MARKER_TEXT_VIEW_FACING,
    TEXT_NAMESPACE,
    MessageSink,
    NodeLoop,
    NodeSettings,
    build_scene_recognizer,
    detections_from_result,
    frame_from_message,
    header_stamp_ns,
    markers_from_result,
)
from pointfalip.scene import RecognizedObject, SceneRecognizer, SceneResult
from pointfalip.stream import stream

STAMP_NS = 1_700_000_000_123_456_789


def _object(lo, hi, preds, track_id=None, track_label=None):
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    predictions = [Prediction(label, p) for label, p in preds]
    return RecognizedObject(label=preds[0][0], probability=preds[0][1], predictions=predictions,
                            points=np.zeros((0, 3), np.float32), indices=np.zeros(0, np.int64),
                            centroid=(lo + hi) / 2, bbox_min=lo, bbox_max=hi, num_points=120, id=track_id,
                            track_label=track_label)


def _result():
    """A mug whose track label is its best label, and a flat box whose track says "bowl" (a flicker to box)."""
    mug = _object([0.1, 0.2, 0.0], [0.18, 0.26, 0.11], [("mug", 0.82), ("bowl", 0.1), ("box", 0.08)], 3, "mug")
    flat = _object([-0.5, 0.3, 0.0], [-0.3, 0.4, 0.0], [("box", 0.5), ("bowl", 0.4), ("mug", 0.1)], 7, "bowl")
    return SceneResult([mug, flat], {}, stamp_ns=STAMP_NS, frame_id="camera_link")


def test_detections_describe_each_object():
    dets = detections_from_result(_result())
    assert [d["id"] for d in dets] == ["3", "7"]
    assert all(d["header"] == {"stamp_ns": STAMP_NS, "frame_id": "camera_link"} for d in dets)
    assert dets[0]["bbox"] == {"center": pytest.approx([0.14, 0.23, 0.055]), "size": pytest.approx([0.08, 0.06, 0.11])}
    assert dets[1]["bbox"]["size"] == pytest.approx([0.2, 0.1, 0.0])
    assert dets[0]["hypotheses"] == [{"class_id": "mug", "score": 0.82}, {"class_id": "bowl", "score": 0.1},
                                     {"class_id": "box", "score": 0.08}]
    # a tracked object's smoothed label leads, with this frame's probability of it
    assert dets[1]["hypotheses"] == [{"class_id": "bowl", "score": 0.4}, {"class_id": "box", "score": 0.5},
                                     {"class_id": "mug", "score": 0.1}]
    assert (dets[1]["track_label"], dets[1]["num_points"]) == ("bowl", 120)

    untracked = _object([0, 0, 0], [1, 1, 1], [("cup", 0.9), ("mug", 0.1)])
    (det,) = detections_from_result(SceneResult([untracked], {}))
    assert det["id"] == "" and det["header"] == {"stamp_ns": 0, "frame_id": ""}
    assert [h["class_id"] for h in det["hypotheses"]] == ["cup", "mug"]
    assert detections_from_result(SceneResult([], {}, STAMP_NS, "camera_link")) == []


def test_markers_draw_boxes_and_captions():
    labels = ["mug", "bowl", "box"]
    markers = markers_from_result(_result(), labels, text_height=0.05)
    assert markers[0]["action"] == MARKER_DELETEALL and len(markers) == 1 + 2 * 2
    boxes = [m for m in markers[1:] if m["ns"] == BOX_NAMESPACE]
    texts = [m for m in markers[1:] if m["ns"] == TEXT_NAMESPACE]
    assert [m["id"] for m in boxes] == [m["id"] for m in texts] == [3, 7]
    assert all(m["type"] == MARKER_CUBE and m["action"] == MARKER_ADD for m in boxes)
    assert all(m["type"] == MARKER_TEXT_VIEW_FACING and m["scale"][2] == 0.05 for m in texts)
    assert boxes[0]["position"] == pytest.approx([0.14, 0.23, 0.055]) and boxes[0]["orientation"] == [0, 0, 0, 1]
    assert boxes[0]["scale"] == pytest.approx([0.08, 0.06, 0.11])
    assert boxes[1]["scale"] == pytest.approx([0.2, 0.1, 0.001])  # a flat box is drawn 1 mm thick
    assert boxes[0]["color"][:3] == pytest.approx([c / 255 for c in label_color("mug", labels)])
    assert boxes[1]["color"][:3] == pytest.approx([c / 255 for c in label_color("bowl", labels)])  # the track's
    assert [m["text"] for m in texts] == ["mug 0.82 #3", "bowl 0.40 #7"]
    assert texts[0]["position"] == pytest.approx([0.14, 0.23, 0.11])  # the top face's centre
    assert all(m["header"] == {"stamp_ns": STAMP_NS, "frame_id": "camera_link"} for m in markers)
    untracked = markers_from_result(SceneResult([_object([0, 0, 0], [1, 1, 1], [("cup", 0.9)])] * 2, {}))
    assert [m["id"] for m in untracked[1:]] == [0, 0, 1, 1]


def _scene_points(rng, shift):
    table = np.c_[rng.uniform(-0.6, 0.6, 8000), rng.uniform(-0.4, 0.4, 8000), rng.normal(0, 0.002, 8000)]
    cubes = []
    for centre in ((-0.3, 0.0, 0.05), (0.25, 0.15, 0.05)):
        faces = rng.uniform(-0.05, 0.05, size=(1500, 3))
        faces[np.arange(1500), rng.integers(0, 3, 1500)] = np.where(rng.random(1500) < 0.5, -0.05, 0.05)
        cubes.append(faces + np.add(centre, shift))
    return np.concatenate([table] + cubes)


def _node_run(scene, msgs, warnings_seen):
    """Push the messages through a NodeLoop one at a time (as a subscriber's callback does, waiting for each so none
    is dropped) and collect what its sink publishes."""
    published = []
    sink = MessageSink(lambda header, dets: published.append((header, dets)), lambda markers: None)
    loop = NodeLoop(scene, [sink], warn=warnings_seen.append)
    try:
        for msg in msgs:
            done = loop.processed
            loop.push(msg)
            for _ in range(500):
                if loop.processed > done or warnings_seen:
                    break
                threading.Event().wait(0.01)
    finally:
        loop.stop(timeout=10)
    return published


def test_node_loop_is_the_bag_path(tmp_path):
    """The node's loop (callback -> FrameQueue -> stream -> MessageSink) publishes what `pointfalip scene BAG`'s
    path (read_bag + the same stream) computes from the same messages."""
    rng = np.random.default_rng(2)
    msgs = [make_cloud(_scene_points(rng, (0.02 * k, -0.01 * k, 0.0)), STAMP_NS + k * 100_000_000) for k in range(3)]
    frames = [frame_from_message(m) for m in msgs]
    assert [f.stamp_ns - STAMP_NS for f in frames] == [0, 100_000_000, 200_000_000]
    assert {f.frame_id for f in frames} == {"lidar"}

    warned = []
    published = _node_run(SceneRecognizer(FakeRecognizer(), track=True), msgs, warned)
    assert warned == [] and len(published) == 3
    assert [h["stamp_ns"] for h, _ in published] == [header_stamp_ns(m.header) for m in msgs]
    assert [sorted(int(d["id"]) for d in dets) for _, dets in published] == [[0, 1]] * 3

    bag = write_bag(tmp_path / "bag", StoragePlugin.SQLITE3, [("/points", PC2, k, m) for k, m in enumerate(msgs)])
    bag_scene = SceneRecognizer(FakeRecognizer(), track=True)
    bag_results = [item.result for item in stream(bag_scene, list(read_bag(bag)))]
    assert [dets for _, dets in published] == [detections_from_result(r) for r in bag_results]

    broken = TS.types[PC2](header=msgs[0].header, height=1, width=3, fields=[], is_bigendian=False, point_step=12,
                           row_step=36, data=np.zeros(36, np.uint8), is_dense=True)
    with pytest.raises(InputError, match="no field"):
        frame_from_message(broken)
    warned = []
    empty = make_cloud(np.zeros((0, 3)), STAMP_NS + 300_000_000)
    published = _node_run(SceneRecognizer(FakeRecognizer(), track=True), [broken, empty, msgs[0]], warned)
    assert len(warned) == 2 and all("\n" not in w for w in warned)  # each reported in one line, skipped
    assert "no field" in warned[0] and "empty" in warned[1]
    assert [h["stamp_ns"] for h, _ in published] == [STAMP_NS]  # nothing for them; the next cloud is answered


def test_node_settings_build_the_scene_recognizer():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_random("pf-tiny-16")
    scene = build_scene_recognizer(NodeSettings(labels="mug, bowl ,", scene_preset="room", top_k=2), model=model)
    assert scene.recognizer.labels == ["mug", "bowl"] and scene.top_k == 2 and scene.track
    assert scene.config.voxel_size == 0.02 and scene.tracking.max_distance == 0.5  # the room preset, both parts
    untracked = build_scene_recognizer(NodeSettings(dataset="modelnet10", track=False), model=model)
    assert len(untracked.recognizer.labels) == 10 and not untracked.track
    with pytest.raises(InputError, match="labels"):
        build_scene_recognizer(NodeSettings(), model=model)
    with pytest.raises(InputError):
        build_scene_recognizer(NodeSettings(labels="a,b", scene_preset="garden"), model=model)


def test_main_without_ros_is_one_line():
    if importlib.util.find_spec("rclpy") is not None:
        pytest.skip("ROS 2 is installed here")
    proc = subprocess.run([sys.executable, "-m", "pointfalip.ros2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "ROS 2" in proc.stderr


# ---- with ROS 2 (skipped where rclpy or the message packages are absent) ---------------------------------------
@pytest.fixture
def ros():
    rclpy = pytest.importorskip("rclpy")
    pytest.importorskip("vision_msgs.msg")
    pytest.importorskip("visualization_msgs.msg")
    rclpy.init()
    yield rclpy
    rclpy.shutdown()


def test_message_conversion_copies_the_dicts(ros):
    from pointfalip.ros2 import _message_types, detection_array_message, marker_array_message

    t = _message_types()
    result = _result()
    dets = detections_from_result(result)
    array = detection_array_message(t, dets[0]["header"], dets)
    assert (array.header.stamp.sec, array.header.stamp.nanosec) == divmod(STAMP_NS, 10**9)
    assert array.header.frame_id == "camera_link" and len(array.detections) == 2
    first = array.detections[0]
    assert first.id == "3"
    assert [first.bbox.center.position.x, first.bbox.size.z] == pytest.approx([0.14, 0.11])
    assert [(h.hypothesis.class_id, h.hypothesis.score) for h in first.results] == [
        (h["class_id"], pytest.approx(h["score"])) for h in dets[0]["hypotheses"]]
    markers = marker_array_message(t, markers_from_result(result))
    assert [m.action for m in markers.markers] == [MARKER_DELETEALL] + [MARKER_ADD] * 4
    assert markers.markers[2].text == "mug 0.82 #3"


def test_node_publishes_detections_for_a_cloud(ros):
    import array

    from sensor_msgs.msg import PointField

    from pointfalip.ros2 import _message_types, create_node

    t = _message_types()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_random("pf-tiny-16")
    node = create_node(NodeSettings(labels="mug,box"), model=model)
    received = []
    node.create_subscription(t.Detection3DArray, node.settings.detections_topic, received.append, 10)
    try:
        assert node.get_parameter("labels").value == "mug,box" and node.settings.track
        pts = _scene_points(np.random.default_rng(3), (0.0, 0.0, 0.0)).astype(np.float32)
        msg = t.PointCloud2(height=1, width=len(pts), is_bigendian=False, point_step=12, row_step=12 * len(pts),
                            is_dense=True, data=array.array("B", pts.tobytes()),
                            fields=[PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                                    for i, n in enumerate("xyz")])
        msg.header.frame_id, msg.header.stamp.sec = "lidar", 5
        node.on_cloud(msg)
        for _ in range(50):
            ros.spin_once(node, timeout_sec=0.1)
            if received:
                break
        assert received and len(received[0].detections) == 2
        assert received[0].header.frame_id == "lidar" and received[0].header.stamp.sec == 5
    finally:
        node.destroy_node()
