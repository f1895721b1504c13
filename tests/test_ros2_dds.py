"""The ROS 2 node over DDS without ROS (`pointfalip ros2 --transport dds`), against a real DDS implementation.

Independent references: the message layouts and CDR bytes of `rosbags` (its Humble and Jazzy type stores, and
vision_msgs 4.x registered from the `.msg` text below), and, end to end, a peer whose Cyclone DDS types are built
here from those rosbags definitions (not from `pointfalip.ros2.messages`), with ROS 2's type names and QoS.

Every participant stays on loopback: the Cyclone configuration below (`CYCLONEDDS_URI`) selects the `lo` interface
only, turns multicast off and discovers through the one peer 127.0.0.1, in a test domain far from ROS' default 0
(`test_the_test_config_keeps_dds_on_loopback` checks this in Cyclone's own trace)."""
import dataclasses
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

cyclonedds = pytest.importorskip("cyclonedds")
from cyclonedds.domain import DomainParticipant  # noqa: E402
from cyclonedds.pub import DataWriter  # noqa: E402
from cyclonedds.qos import Policy, Qos  # noqa: E402
from cyclonedds.sub import DataReader  # noqa: E402
from cyclonedds.topic import Topic  # noqa: E402
from cyclonedds.util import duration  # noqa: E402
from rosbags.interfaces import Nodetype  # noqa: E402
from rosbags.typesys import Stores, get_types_from_msg, get_typestore  # noqa: E402

from conftest import TINY, one_line_error  # noqa: E402
from test_ros2 import STAMP_NS, _node_run, _object, _result  # noqa: E402
from test_scene import FakeRecognizer  # noqa: E402
from test_sources import PC2, make_cloud  # noqa: E402

from pointfalip.ros2 import (NodeSettings, detections_from_result, frame_from_message,  # noqa: E402
                             markers_from_result)
from pointfalip.ros2 import dds, messages  # noqa: E402
from pointfalip.scene import SceneRecognizer, SceneResult  # noqa: E402
from pointfalip.sources import decode_pointcloud2  # noqa: E402

DOMAIN = 150 + os.getpid() % 80  # a test domain (not ROS' 0), apart from other test sessions on this machine
LOOPBACK_XML = """<?xml version="1.0" encoding="UTF-8"?>
<CycloneDDS xmlns="https://cdds.io/config">
  <Domain Id="any">
    <General>
      <Interfaces><NetworkInterface name="lo" multicast="false"/></Interfaces>
      <AllowMulticast>false</AllowMulticast>
    </General>
    <Discovery>
      <ParticipantIndex>auto</ParticipantIndex>
      <MaxAutoParticipantIndex>20</MaxAutoParticipantIndex>
      <Peers AddLocalhost="false"><Peer address="127.0.0.1"/></Peers>
    </Discovery>{tracing}
  </Domain>
</CycloneDDS>
"""
# vision_msgs 4.x (Humble, Jazzy), as in ros-perception/vision_msgs' msg/*.msg (comments left out)
VISION_MSGS = {
    "vision_msgs/msg/ObjectHypothesis": "string class_id\nfloat64 score\n",
    "vision_msgs/msg/ObjectHypothesisWithPose": "ObjectHypothesis hypothesis\ngeometry_msgs/PoseWithCovariance pose\n",
    "vision_msgs/msg/BoundingBox3D": "geometry_msgs/Pose center\ngeometry_msgs/Vector3 size\n",
    "vision_msgs/msg/Detection3D": "std_msgs/Header header\nObjectHypothesisWithPose[] results\nBoundingBox3D bbox\n"
                                   "string id\n",
    "vision_msgs/msg/Detection3DArray": "std_msgs/Header header\nDetection3D[] detections\n",
}
DETECTIONS, MARKERS = "vision_msgs/msg/Detection3DArray", "visualization_msgs/msg/MarkerArray"
STORES = {"humble": Stores.ROS2_HUMBLE, "jazzy": Stores.ROS2_JAZZY}
LABELS = ["mug", "box", "bowl"]
CUBE = 0.1  # metres: edge of the cubes on the table
WAIT_S = 120.0  # the longest any step of the end-to-end run may take (a loaded shared machine)


def _typestore(store):
    ts = get_typestore(store)
    found = {}
    for name, text in VISION_MSGS.items():
        found.update(get_types_from_msg(text, name))
    ts.register(found)
    return ts


@pytest.fixture(scope="module", params=list(STORES))
def ts(request):
    return _typestore(STORES[request.param])


@pytest.fixture(scope="module", autouse=True)
def loopback(tmp_path_factory):
    """CYCLONEDDS_URI (loopback only) and ROS_DOMAIN_ID for this process and the node's, restored afterwards."""
    path = tmp_path_factory.mktemp("dds") / "loopback.xml"
    path.write_text(LOOPBACK_XML.format(tracing=""))
    saved = {k: os.environ.get(k) for k in ("CYCLONEDDS_URI", "ROS_DOMAIN_ID")}
    os.environ.update(CYCLONEDDS_URI=path.as_uri(), ROS_DOMAIN_ID=str(DOMAIN))
    yield path
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_the_test_config_keeps_dds_on_loopback(tmp_path):
    """Cyclone's own trace of a participant under the test configuration: the `lo` interface alone, no multicast,
    discovery sent to 127.0.0.1 only."""
    trace = tmp_path / "trace.log"
    config = tmp_path / "traced.xml"
    config.write_text(LOOPBACK_XML.format(tracing=f"\n    <Tracing><Category>config,discovery</Category>"
                                                  f"<OutputFile>{trace}</OutputFile></Tracing>"))
    code = ("from cyclonedds.domain import DomainParticipant; import time; "
            f"p = DomainParticipant({DOMAIN}); time.sleep(0.5)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   env={**os.environ, "CYCLONEDDS_URI": config.as_uri()})
    text = trace.read_text()
    assert re.search(r"AllowMulticast/#text: false", text)
    (selected,) = re.findall(r"selected interfaces: (.*)", text)
    assert selected.startswith("lo (") and selected.count("(") == 1 and "mc {}" in selected, selected
    peers = re.findall(r"add_peer_address: add (\S+)", text)
    assert peers and all(p.startswith("udp/127.0.0.1:") for p in peers), peers
    assert re.findall(r"ownip: (\S+)", text) == ["udp/127.0.0.1"]


# ---- the message types, against rosbags' definitions -------------------------------------------------------
MESSAGE_CLASSES = [getattr(messages, n) for n in messages.__all__ if isinstance(getattr(messages, n), type)]


def _peer_types(ts):
    """``ros_name -> class``: Cyclone DDS classes built here from rosbags' definitions, with ROS 2's DDS type names
    (a peer that shares no code with `pointfalip.ros2.messages`)."""
    from cyclonedds.idl import IdlStruct
    from cyclonedds.idl import types as t

    base = {"bool": bool, "string": str, "int32": t.int32, "uint32": t.uint32, "uint8": t.uint8,
            "float32": t.float32, "float64": t.float64}
    made = {}

    def make(name):
        if name not in made:
            def kind(desc):
                node, arg = desc
                if node == Nodetype.BASE:
                    return base[arg[0]]
                if node == Nodetype.NAME:
                    return make(arg)
                return t.array[kind(arg[0]), arg[1]] if node == Nodetype.ARRAY else t.sequence[kind(arg[0])]

            package, _, short = name.split("/")
            annotations = {f: kind(d) for f, d in ts.fielddefs[name][1]}
            cls = types.new_class(short, (IdlStruct,), {"typename": f"{package}::msg::dds_::{short}_"},
                                  lambda ns: ns.update(__annotations__=annotations, __module__=__name__))
            made[name] = dataclasses.dataclass(cls)
        return made[name]

    return make


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.__name__)
def test_each_message_is_its_msg_definition(ts, cls):
    """Field names in order, and the XTypes type information (the type name, every member's name and type: what DDS
    matches a reader and a writer by) equal to a type built from rosbags' definition."""
    name = messages.ros_type_name(cls)
    package, _, short = name.split("/")
    assert cls.__idl_typename__ == f"{package}::msg::dds_::{short}_"
    assert [f.name for f in dataclasses.fields(cls)] == [f for f, _ in ts.fielddefs[name][1]]
    assert cls.__idl__.get_type_info() == _peer_types(ts)(name).__idl__.get_type_info()


# ---- wire bytes: what the dds transport writes is rosbags' CDR of the same message -----------------------------
_ROSBAGS_NAMES = ("builtin_interfaces/msg/Time", "builtin_interfaces/msg/Duration", "std_msgs/msg/Header",
                  "std_msgs/msg/ColorRGBA", "geometry_msgs/msg/Point", "geometry_msgs/msg/Quaternion",
                  "geometry_msgs/msg/Pose", "geometry_msgs/msg/Vector3", "geometry_msgs/msg/PoseWithCovariance",
                  "sensor_msgs/msg/PointField", PC2, "sensor_msgs/msg/CompressedImage",
                  "visualization_msgs/msg/UVCoordinate", "visualization_msgs/msg/MeshFile",
                  "visualization_msgs/msg/Marker", MARKERS, *VISION_MSGS)


def _t(ts):
    """rosbags' message classes by their short names."""
    return types.SimpleNamespace(**{n.split("/")[-1]: ts.types[n] for n in _ROSBAGS_NAMES})


def _ros_header(T, header):
    sec, nanosec = divmod(header["stamp_ns"], 10**9)
    return T.Header(stamp=T.Time(sec=sec, nanosec=nanosec), frame_id=header["frame_id"])


def _ros_pose(T, position, orientation=(0.0, 0.0, 0.0, 1.0)):
    return T.Pose(position=T.Point(*position), orientation=T.Quaternion(*orientation))


def _rosbags_detections(ts, header, dets):
    """The Detection3DArray of the node's dicts, built field by field with rosbags' classes."""
    T = _t(ts)
    return T.Detection3DArray(header=_ros_header(T, header), detections=[
        T.Detection3D(header=_ros_header(T, d["header"]), results=[
            T.ObjectHypothesisWithPose(hypothesis=T.ObjectHypothesis(class_id=h["class_id"], score=h["score"]),
                                       pose=T.PoseWithCovariance(pose=_ros_pose(T, d["bbox"]["center"]),
                                                                 covariance=np.zeros(36)))
            for h in d["hypotheses"]],
            bbox=T.BoundingBox3D(center=_ros_pose(T, d["bbox"]["center"]), size=T.Vector3(*d["bbox"]["size"])),
            id=d["id"]) for d in dets])


def _rosbags_markers(ts, markers):
    T = _t(ts)
    empty = np.zeros(0, np.uint8)
    return T.MarkerArray(markers=[T.Marker(
        header=_ros_header(T, m["header"]), ns=m["ns"], id=m["id"], type=m["type"], action=m["action"],
        pose=_ros_pose(T, m["position"], m["orientation"]), scale=T.Vector3(*m["scale"]), color=T.ColorRGBA(*m["color"]),
        lifetime=T.Duration(sec=0, nanosec=0), frame_locked=False, points=[], colors=[], texture_resource="",
        texture=T.CompressedImage(header=_ros_header(T, {"stamp_ns": 0, "frame_id": ""}), format="", data=empty),
        uv_coordinates=[], text=m["text"], mesh_resource="", mesh_file=T.MeshFile(filename="", data=empty),
        mesh_use_embedded_materials=False) for m in markers])


@pytest.fixture
def written(monkeypatch):
    """The serialised samples every DataWriter of this process hands to Cyclone, by topic."""
    import cyclonedds.pub

    seen = []
    real = cyclonedds.pub.ddspy_write

    def record(ref, data):
        seen.append(bytes(data))
        return real(ref, data)

    monkeypatch.setattr(cyclonedds.pub, "ddspy_write", record)
    return seen


def _padded(cdr: bytes) -> bytes:
    """A CDR message as it goes on the wire: zeros up to a multiple of 4 bytes (the RTPS payload's padding)."""
    return bytes(cdr) + b"\0" * (-len(cdr) % 4)


def test_written_messages_are_rosbags_cdr(ts, written):
    untracked = _object([0, 0, 0], [1, 2, 0.5], [("cup", 0.9), ("mug", 0.1)])
    results = [_result(),  # two tracked objects
               SceneResult([untracked], {}),  # no id (empty string), no stamp, no frame (empty string)
               SceneResult([], {}, STAMP_NS, "camera_link")]  # no objects: empty arrays
    endpoint = dds.DdsEndpoint(NodeSettings())
    try:
        for result in results:
            dets = detections_from_result(result)
            header = {"stamp_ns": result.stamp_ns or 0, "frame_id": result.frame_id or ""}
            endpoint.publish_detections(header, dets)
            endpoint.publish_markers(markers_from_result(result, LABELS))
    finally:
        endpoint.close()
    assert len(written) == 2 * len(results)
    for k, result in enumerate(results):
        dets = detections_from_result(result)
        header = {"stamp_ns": result.stamp_ns or 0, "frame_id": result.frame_id or ""}
        assert written[2 * k][:4] == b"\x00\x01\x00\x00"  # plain CDR, little endian: ROS 2's encoding
        assert written[2 * k] == _padded(ts.serialize_cdr(_rosbags_detections(ts, header, dets), DETECTIONS))
        markers = markers_from_result(result, LABELS)
        assert written[2 * k + 1] == _padded(ts.serialize_cdr(_rosbags_markers(ts, markers), MARKERS))
    assert len(ts.deserialize_cdr(written[0], DETECTIONS).detections) == 2


def test_every_marker_field_is_rosbags_cdr(ts):
    """A Marker with every field set (texture, mesh file, points, colours, uv coordinates) serialises as rosbags'."""
    T = _t(ts)
    header = {"stamp_ns": STAMP_NS, "frame_id": "map"}
    png, mesh = np.arange(7, dtype=np.uint8), np.arange(5, dtype=np.uint8)
    ours = messages.Marker(
        header=messages.Header(stamp=messages.Time(sec=STAMP_NS // 10**9, nanosec=STAMP_NS % 10**9), frame_id="map"),
        ns="n", id=-4, type=11, action=0, lifetime=messages.Duration(sec=2, nanosec=5), frame_locked=True,
        points=[messages.Point(x=1.0, y=2.0, z=3.0)], colors=[messages.ColorRGBA(r=0.5, g=0.25, b=1.0, a=1.0)],
        texture_resource="embedded://t", texture=messages.CompressedImage(format="png", data=png.tolist()),
        uv_coordinates=[messages.UVCoordinate(u=0.5, v=0.75)], text="", mesh_resource="embedded://m",
        mesh_file=messages.MeshFile(filename="m.stl", data=mesh.tolist()), mesh_use_embedded_materials=True)
    theirs = T.Marker(
        header=_ros_header(T, header), ns="n", id=-4, type=11, action=0, pose=_ros_pose(T, (0, 0, 0)),
        scale=T.Vector3(0.0, 0.0, 0.0), color=T.ColorRGBA(0.0, 0.0, 0.0, 0.0), lifetime=T.Duration(sec=2, nanosec=5),
        frame_locked=True, points=[T.Point(1.0, 2.0, 3.0)], colors=[T.ColorRGBA(0.5, 0.25, 1.0, 1.0)],
        texture_resource="embedded://t",
        texture=T.CompressedImage(header=_ros_header(T, {"stamp_ns": 0, "frame_id": ""}), format="png", data=png),
        uv_coordinates=[T.UVCoordinate(0.5, 0.75)], text="", mesh_resource="embedded://m",
        mesh_file=T.MeshFile(filename="m.stl", data=mesh), mesh_use_embedded_materials=True)
    assert ours.serialize(use_version_2=False) == bytes(ts.serialize_cdr(theirs, "visualization_msgs/msg/Marker"))


# ---- clouds: rosbags' CDR read by Cyclone, decoded as the bag path does; bad clouds skipped ---------------------
def _dds_cloud(ts, msg, xcdr2=False):
    """A rosbags PointCloud2 as the dds transport receives it: its CDR bytes (ROS 2's plain CDR, or re-encoded as
    XCDR2 by Cyclone, as a non-ROS DDS writer may send) read by the transport's reader type."""
    raw = bytes(ts.serialize_cdr(msg, PC2))
    if xcdr2:
        raw = messages.PointCloud2.deserialize(raw).serialize(use_version_2=True)
        assert raw[:2] != b"\x00\x01"
    return dds.cloud_reader_type().deserialize(raw)


def test_the_cloud_reader_is_the_pointcloud2_type():
    """The reader's type (its samples read by rosbags) has PointCloud2's type information: it matches any writer."""
    reader = dds.cloud_reader_type()
    assert reader.__idl_typename__ == messages.PointCloud2.__idl_typename__
    assert reader.__idl__.get_type_info() == messages.PointCloud2.__idl__.get_type_info()


def _int16_cloud(ts, points_mm):
    """x, y, z as int16 (e.g. millimetres of a depth sensor), with a float32 intensity after them."""
    T = _t(ts)
    dtype = np.dtype({"names": ["x", "y", "z", "i"], "formats": ["<i2"] * 3 + ["<f4"], "offsets": [0, 2, 4, 8],
                      "itemsize": 12})
    records = np.zeros(len(points_mm), dtype)
    for i, n in enumerate("xyz"):
        records[n] = points_mm[:, i]
    fields = [T.PointField(name=n, offset=o, datatype=d, count=1) for n, o, d in
              (("x", 0, 3), ("y", 2, 3), ("z", 4, 3), ("i", 8, 7))]
    return T.PointCloud2(header=_ros_header(T, {"stamp_ns": STAMP_NS, "frame_id": "tof"}), height=1,
                         width=len(records), fields=fields, is_bigendian=False, point_step=12,
                         row_step=12 * len(records), data=np.frombuffer(records.tobytes(), np.uint8), is_dense=True)


@pytest.mark.parametrize("layout", [dict(), dict(xyz="f8"), dict(bigendian=True), dict(xyz="f8", bigendian=True),
                                    dict(height=4, row_padding=6), dict(intensity_first=True)],
                         ids=["f4", "f8", "f4-big", "f8-big", "organised-padded", "intensity-first"])
def test_a_cloud_over_dds_decodes_as_the_bag_path(ts, layout):
    pts = np.random.default_rng(1).uniform(-3, 3, (400, 3))
    pts[[5, 77]] = np.nan  # a non-dense cloud's missing returns
    msg = make_cloud(pts, STAMP_NS, **layout)
    keep = np.isfinite(pts).all(axis=1)
    for xcdr2 in (False, True):
        frame = frame_from_message(_dds_cloud(ts, msg, xcdr2))
        assert (frame.stamp_ns, frame.frame_id) == (STAMP_NS, "lidar")
        np.testing.assert_array_equal(frame.points, pts[keep].astype(np.float32))
        np.testing.assert_array_equal(frame.points, decode_pointcloud2(msg))  # what `sources` gives the bag path


def test_int16_fields_are_converted(ts):
    mm = np.array([[1200, -35, 800], [-32768, 32767, 0], [7, 8, 9]], dtype=np.int16)
    frame = frame_from_message(_dds_cloud(ts, _int16_cloud(ts, mm)))
    np.testing.assert_array_equal(frame.points, mm.astype(np.float32))  # the values as they are (no scale known)


def _bad_clouds(ts):
    """(name, message, a word the warning holds): clouds the node must skip with one warning line."""
    T = _t(ts)
    good = make_cloud(np.random.default_rng(2).uniform(-1, 1, (50, 3)), STAMP_NS + 1)
    no_z = T.PointCloud2(header=good.header, height=1, width=50, fields=good.fields[:2], is_bigendian=False,
                         point_step=good.point_step, row_step=good.row_step, data=good.data, is_dense=True)
    short = T.PointCloud2(header=good.header, height=1, width=50, fields=good.fields, is_bigendian=False,
                          point_step=good.point_step, row_step=good.row_step, data=good.data[:-1], is_dense=True)
    return [("no-z", no_z, "no field z"), ("short", short, "truncated"),
            ("all-nan", make_cloud(np.full((20, 3), np.nan), STAMP_NS + 2), "NaN"),
            ("empty", make_cloud(np.zeros((0, 3)), STAMP_NS + 3), "empty")]


def test_bad_clouds_warn_once_and_publish_nothing(ts):
    rng = np.random.default_rng(3)
    table = np.c_[rng.uniform(-0.6, 0.6, 6000), rng.uniform(-0.4, 0.4, 6000), rng.normal(0, 0.002, 6000)]
    cube = rng.uniform(-0.05, 0.05, (1500, 3)) + (0.2, 0.1, 0.05)
    valid = make_cloud(np.r_[table, cube], STAMP_NS + 10)
    bad = _bad_clouds(ts)
    warned = []
    published = _node_run(SceneRecognizer(FakeRecognizer(), track=True),
                          [_dds_cloud(ts, m) for _, m, _ in bad] + [_dds_cloud(ts, valid)], warned)
    assert len(warned) == len(bad) and all("\n" not in w for w in warned), warned
    for (name, _, word), line in zip(bad, warned):
        assert word.lower() in line.lower(), (name, line)
    assert [h["stamp_ns"] for h, _ in published] == [STAMP_NS + 10]  # only the valid cloud, after them
    assert len(published[0][1]) == 1


# ---- the command: errors before anything starts ---------------------------------------------------------------
def test_dds_without_cyclonedds_is_one_line(main, monkeypatch):
    for name in ("cyclonedds", "cyclonedds.domain"):
        monkeypatch.setitem(sys.modules, name, None)  # "not installed"
    one_line_error(*main("ros2", "--transport", "dds", "--labels", "mug")[::2], "pip install 'pointfalip[ros2]'")
    one_line_error(*main("ros2", "--labels", "mug")[::2], "rclpy", "dds", "pointfalip[ros2]")  # auto: neither


@pytest.mark.parametrize("args,env,words", [
    (["--input-topic", "my points"], {}, ["topic name"]),
    (["--markers-topic", "a//b"], {}, ["topic name"]),
    ([], {"ROS_DOMAIN_ID": "300"}, ["ROS_DOMAIN_ID", "232"]),
    (["--transport", "zmq"], {}, ["--transport", "zmq", "dds"]),
])
def test_bad_node_options_are_one_line(main, monkeypatch, args, env, words):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    one_line_error(*main("ros2", "--transport", "dds", "--labels", "mug", *args)[::2], *words)


def test_topic_names_map_as_ros2_does():
    assert [dds.dds_topic(n) for n in ("points", "/points", "/camera/depth/points", "pointfalip/detections")] == [
        "rt/points", "rt/points", "rt/camera/depth/points", "rt/pointfalip/detections"]
    assert dds.domain_id({}) == 0 and dds.domain_id({"ROS_DOMAIN_ID": " 42 "}) == 42


def test_settings_of_the_command_line_are_the_scene_settings():
    from pointfalip.scene import SceneSettings

    scene = SceneSettings(labels=["mug", "bowl"], model="m.json", precision=None, up_axis=None, voxel_size=0.01,
                          track=False, reuse=False)
    node = NodeSettings.from_scene(scene, input_topic="/cam/points")
    assert (node.labels, node.input_topic, node.detections_topic) == ("mug,bowl", "/cam/points", "pointfalip/detections")
    assert (node.precision, node.up_axis, node.dataset, node.voxel_size) == (None, "z", "", 0.01)
    assert (node.model, node.track, node.reuse) == ("m.json", False, False)
    assert NodeSettings.from_parameters(NodeSettings.parameter_defaults(node)) == node  # the rclpy node's round trip


# ---- end to end: the node as a subprocess, a ROS 2-style peer in this process ----------------------------------
def _ros2_default_qos():
    """rclpy's default publisher / subscriber profile: reliable, volatile, keep-last 10."""
    return Qos(Policy.Reliability.Reliable(duration(milliseconds=100)), Policy.Durability.Volatile,
               Policy.History.KeepLast(10))


def _tabletop(rng, shift=(0.0, 0.0)):
    table = np.c_[rng.uniform(-0.6, 0.6, 8000), rng.uniform(-0.4, 0.4, 8000), rng.normal(0, 0.002, 8000)]
    parts = [table]
    for cx, cy in _centres(shift):
        faces = rng.uniform(-CUBE / 2, CUBE / 2, (1500, 3))
        faces[np.arange(1500), rng.integers(0, 3, 1500)] = np.where(rng.random(1500) < 0.5, -CUBE / 2, CUBE / 2)
        parts.append(faces + (cx, cy, CUBE / 2))
    return np.concatenate(parts)


def _centres(shift):
    return [(-0.3 + shift[0], 0.0 + shift[1]), (0.25 + shift[0], 0.15 + shift[1])]


class _Lines:
    """The node's stderr, line by line, read by a thread."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream):
        for line in stream:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = WAIT_S) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"the node ended before {pattern!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n" + "\n".join(self.lines))

    def rest(self, timeout: float = 10.0) -> list[str]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                line = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
        return self.lines


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "pf-dds-16.json"
    path.write_text(__import__("json").dumps(TINY["pf-tiny-16"]))
    return str(path)


def _start_node(tiny_json, *extra):
    cmd = [sys.executable, "-m", "pointfalip", "ros2", "--transport", "dds", "--labels", ",".join(LABELS),
           "--model", tiny_json, "--pretrained", "none", "--precision", "fp32", "--device", "cpu", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    return proc, _Lines(proc.stderr)


def _matched(entity, status: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while getattr(entity, status)().current_count < 1:
        assert time.monotonic() < end, f"no match for {entity.topic.name} within {timeout} s"
        time.sleep(0.05)


def _stamp(sample) -> int:
    """The stamp of an answer: a Detection3DArray's header, a MarkerArray's first marker's."""
    header = sample.header if hasattr(sample, "header") else sample.markers[0].header
    return header.stamp.sec * 10**9 + header.stamp.nanosec


def _answer(reader, stamp_ns: int, timeout: float, seen: list):
    """The first sample with this stamp, or None; every valid sample taken is added to ``seen``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for sample in reader.take(N=10):
            if sample.sample_info.valid_data:
                seen.append(sample)
                if _stamp(sample) == stamp_ns:
                    return sample
        time.sleep(0.02)
    return None


def test_end_to_end_over_loopback_dds(tiny_json):
    """Clouds from a ROS 2-style publisher to `pointfalip ros2 --transport dds` in a subprocess; a default (reliable)
    subscriber gets Detection3DArray and MarkerArray with the cloud's stamp and frame and boxes around the cubes;
    malformed clouds in between are one warning line each and change nothing; SIGTERM ends it with exit 0."""
    ts = _typestore(Stores.ROS2_HUMBLE)
    make = _peer_types(ts)
    peer = types.SimpleNamespace(PointCloud2=make(PC2), Detection3DArray=make(DETECTIONS), MarkerArray=make(MARKERS))
    proc, err = _start_node(tiny_json, "--input-topic", "/camera/points")
    try:
        err.wait_for(r"recognising 3 labels on rt/camera/points")
        participant = DomainParticipant(DOMAIN)
        writer = DataWriter(participant, Topic(participant, "rt/camera/points", peer.PointCloud2),
                            qos=_ros2_default_qos())
        detections = DataReader(participant, Topic(participant, "rt/pointfalip/detections", peer.Detection3DArray),
                                qos=_ros2_default_qos())
        markers = DataReader(participant, Topic(participant, "rt/pointfalip/markers", peer.MarkerArray),
                             qos=_ros2_default_qos())
        for entity, status in ((writer, "get_publication_matched_status"),
                               (detections, "get_subscription_matched_status"),
                               (markers, "get_subscription_matched_status")):
            _matched(entity, status)

        def send(msg):
            writer.write(peer.PointCloud2.deserialize(bytes(ts.serialize_cdr(msg, PC2))))

        seen = {"detections": [], "markers": []}

        def exchange(msg, stamp_ns):
            for _ in range(3):  # the clouds are read best-effort: a lost one is sent again
                send(msg)
                answer = _answer(detections, stamp_ns, WAIT_S / 3, seen["detections"])
                if answer is not None:
                    return answer, _answer(markers, stamp_ns, 10.0, seen["markers"])
            raise AssertionError("no answer:\n" + "\n".join(err.lines))

        rng = np.random.default_rng(4)
        shifts = [(0.0, 0.0), (0.01, -0.01)]
        stamps = [STAMP_NS, STAMP_NS + 200_000_000]
        first = exchange(make_cloud(_tabletop(rng, shifts[0]), stamps[0]), stamps[0])
        for k, (name, msg, word) in enumerate(_bad_clouds(ts)[:2]):  # no z field, truncated data
            send(msg)
            assert word in err.wait_for(r"warning:", timeout=30.0)
        second = exchange(make_cloud(_tabletop(rng, shifts[1]), stamps[1]), stamps[1])
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        out = proc.stdout.read()
        for name, reader in (("detections", detections), ("markers", markers)):
            _answer(reader, -1, 0.5, seen[name])  # whatever else came
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = err.rest()
    assert proc.returncode == 0, "\n".join(lines)
    assert "Traceback" not in "\n".join(lines)
    answered = len([x for x in lines if re.search(r"^pointfalip ros2: frame t=\S+ lidar: 2 objects .*; latency", x)])
    assert f"{answered} frame(s) answered over dds" in out and answered >= 2, lines  # more: a cloud was resent
    assert len([x for x in lines if "warning:" in x and "random weights" not in x]) == 2, lines
    for name in ("detections", "markers"):  # the bad clouds published nothing
        assert {_stamp(s) for s in seen[name]} == set(stamps), name

    ids = []
    for (array, marker_array), stamp, shift in zip((first, second), stamps, shifts):
        assert marker_array is not None
        assert array.header.frame_id == "lidar" and len(array.detections) == 2
        centres = _centres(shift)
        found = {}
        for det in array.detections:
            assert (det.header.stamp.sec, det.header.stamp.nanosec) == divmod(stamp, 10**9)
            c, s = det.bbox.center.position, det.bbox.size
            cube = int(np.argmin([np.hypot(c.x - x, c.y - y) for x, y in centres]))
            assert np.hypot(c.x - centres[cube][0], c.y - centres[cube][1]) < 0.01
            assert [s.x, s.y] == pytest.approx([CUBE] * 2, abs=0.01)
            assert c.z + s.z / 2 == pytest.approx(CUBE, abs=0.01)  # the top; the bottom is cut by the table plane
            assert 0.7 * CUBE < s.z < 1.05 * CUBE
            assert det.results and {h.hypothesis.class_id for h in det.results} <= set(LABELS)
            assert all(0.0 <= h.hypothesis.score <= 1.0 for h in det.results)
            found[cube] = det.id
        assert sorted(found) == [0, 1]
        ids.append(found)
        assert marker_array.markers[0].action == 3  # DELETEALL, then a box and a caption per object
        assert sorted(m.type for m in marker_array.markers[1:]) == [1, 1, 9, 9]
        assert all(m.header.frame_id == "lidar" for m in marker_array.markers)
    assert ids[0] == ids[1] and ids[0][0] != ids[0][1]  # each cube kept its track id across the bad clouds


def test_the_node_stops_on_ctrl_c(tiny_json):
    proc, err = _start_node(tiny_json)
    try:
        err.wait_for(r"recognising 3 labels on rt/points")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        out = proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "0 frame(s) answered over dds" in out, "\n".join(err.rest())
