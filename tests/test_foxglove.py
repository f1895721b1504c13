"""Foxglove output: MCAP recordings read back with the mcap reader and protobuf, and the live WebSocket server
spoken to by a minimal client of Foxglove's protocol (loopback only)."""
import asyncio
import base64
import json
import struct
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

pytest.importorskip("foxglove")
mcap_reader = pytest.importorskip("mcap.reader")
pytest.importorskip("google.protobuf")
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # noqa: E402

from pointfalip.errors import InputError  # noqa: E402
from pointfalip.recognize import Prediction  # noqa: E402
from pointfalip.scene import RecognizedObject, SceneResult  # noqa: E402
from pointfalip.stream import RealtimePacer  # noqa: E402
from pointfalip.foxglove import (  # noqa: E402
    OBJECTS_TOPIC,
    POINTS_TOPIC,
    TRANSFORMS_TOPIC,
    LiveServer,
    McapRecording,
    SceneChannels,
    label_color,
    record,
)


BACKGROUND = (170, 170, 170, 255)


def make_frame(frame: int, with_objects: bool = True, frame_id: Optional[str] = "camera_depth_optical_frame"):
    """A floor of 200 grey points and two 50-point blobs (ids 3 and 7); stamps 1 s apart."""
    rng = np.random.default_rng(frame)
    floor = np.c_[rng.uniform(-1, 1, (200, 2)), np.zeros(200)]
    mug = rng.uniform(0, 0.08, (50, 3)) + [0.2 + 0.01 * frame, 0.0, 0.0]
    box = rng.uniform(0, 0.2, (50, 3)) + [-0.5, 0.3, 0.0]
    points = np.vstack([floor, mug, box]).astype(np.float32)
    objects = []
    if with_objects:
        for rows, label, p, track in ((np.arange(200, 250), "mug", 0.82, 3), (np.arange(250, 300), "box", 0.64, 7)):
            pts = points[rows].astype(np.float64)
            preds = [Prediction(label, p), Prediction("other", 1 - p)]
            objects.append(RecognizedObject(label, p, preds, points[rows], rows, pts.mean(0), pts.min(0), pts.max(0),
                                            len(rows), id=track, track_label=label))
    return points, SceneResult(objects, {}, 1_700_000_000_000_000_000 + frame * 1_000_000_000, frame_id)


def message_class(schema_name: str, schema_data: bytes):
    """The protobuf class of a schema given as a serialized FileDescriptorSet (as MCAP and Foxglove carry it)."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(schema_data)
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(schema_name))


def read_mcap(path: Path) -> list[tuple[str, str, int, object]]:
    """(topic, schema name, log time, decoded message) of every message, in log-time order."""
    out = []
    with open(path, "rb") as fh:
        reader = mcap_reader.make_reader(fh)
        for schema, channel, message in reader.iter_messages(log_time_order=True):
            assert channel.message_encoding == "protobuf" and schema.encoding == "protobuf"
            cls = message_class(schema.name, schema.data)
            out.append((channel.topic, schema.name, message.log_time, cls.FromString(message.data)))
    return out


def decode_points(msg) -> tuple[np.ndarray, np.ndarray]:
    """xyz (N, 3) and rgba (N, 4) of a decoded foxglove.PointCloud, from its own field table."""
    types = {7: "<f4", 1: "u1"}  # PackedElementField.NumericType: FLOAT32, UINT8
    dtype = np.dtype({"names": [f.name for f in msg.fields], "formats": [types[f.type] for f in msg.fields],
                      "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_stride})
    rec = np.frombuffer(msg.data, dtype=dtype)
    return (np.stack([rec["x"], rec["y"], rec["z"]], axis=1),
            np.stack([rec["red"], rec["green"], rec["blue"], rec["alpha"]], axis=1))


def test_recording_of_three_frames_reads_back(tmp_path):
    frames = [make_frame(i) for i in range(3)]
    out = record(tmp_path / "scene.mcap", frames, metadata={"labels": "mug,box"}, labels=["mug", "box"])
    assert out == tmp_path / "scene.mcap"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.mcap"]  # no temporary left

    messages = read_mcap(out)
    schemas = {topic: name for topic, name, _, _ in messages}
    assert schemas == {POINTS_TOPIC: "foxglove.PointCloud", OBJECTS_TOPIC: "foxglove.SceneUpdate",
                       TRANSFORMS_TOPIC: "foxglove.FrameTransform"}
    updates = [(t, m) for topic, _, t, m in messages if topic == OBJECTS_TOPIC]
    clouds = [(t, m) for topic, _, t, m in messages if topic == POINTS_TOPIC]
    transforms = [m for topic, _, _, m in messages if topic == TRANSFORMS_TOPIC]
    assert len(updates) == len(clouds) == len(transforms) == 3

    for (points, result), (log_time, update), (_, cloud), tf in zip(frames, updates, clouds, transforms):
        assert log_time == result.stamp_ns
        assert len(update.entities) == len(result.objects)
        assert [d.type for d in update.deletions] == [1]  # ALL: objects of earlier frames disappear
        for obj, entity in zip(result.objects, update.entities):
            assert entity.id == str(obj.id)
            assert entity.frame_id == result.frame_id
            assert entity.timestamp.seconds * 10**9 + entity.timestamp.nanos == result.stamp_ns
            assert entity.texts[0].text == f"{obj.label} {obj.probability:.2f} #{obj.id}"
            cube = entity.cubes[0]
            centre = (obj.bbox_min + obj.bbox_max) / 2
            np.testing.assert_allclose([cube.pose.position.x, cube.pose.position.y, cube.pose.position.z], centre)
            np.testing.assert_allclose([cube.size.x, cube.size.y, cube.size.z], obj.bbox_max - obj.bbox_min)
            assert cube.pose.orientation.w == 1.0
            assert 0 < cube.color.a < 1
        xyz, rgba = decode_points(cloud)
        assert cloud.frame_id == result.frame_id
        np.testing.assert_array_equal(xyz, points)
        assert (rgba[:200] == BACKGROUND).all()
        assert (rgba[200:250, :3] == label_color("mug", ["mug", "box"])).all()
        assert (rgba[250:300, :3] == label_color("box", ["mug", "box"])).all()
        assert (tf.parent_frame_id, tf.child_frame_id) == ("world", result.frame_id)
        assert (tf.rotation.w, tf.translation.x) == (1.0, 0.0)

    with open(out, "rb") as fh:
        metadata = list(mcap_reader.make_reader(fh).iter_metadata())
    assert [(m.name, m.metadata) for m in metadata] == [("pointfalip", {"labels": "mug,box"})]


def test_frame_without_objects_and_without_frame_id(tmp_path):
    points, result = make_frame(0, with_objects=False, frame_id=None)
    points[5] = np.nan
    with McapRecording(tmp_path / "empty.mcap") as rec:
        rec.log_frame(points, result)
    messages = read_mcap(tmp_path / "empty.mcap")
    assert sorted(topic for topic, *_ in messages) == [OBJECTS_TOPIC, POINTS_TOPIC]  # no transform
    (update,) = [m for topic, _, _, m in messages if topic == OBJECTS_TOPIC]
    assert len(update.entities) == 0
    (cloud,) = [m for topic, _, _, m in messages if topic == POINTS_TOPIC]
    assert cloud.frame_id == "pointfalip"
    xyz, _ = decode_points(cloud)
    assert len(xyz) == len(points) - 1  # the NaN row is left out


def test_untracked_objects_get_index_ids_and_smoothed_labels_show(tmp_path):
    points, result = make_frame(0)
    result.objects[0].id = None
    result.objects[0].track_label = None
    result.objects[1].track_label = "other"  # the track's label differs from this frame's best label
    record(tmp_path / "r.mcap", [(points, result)])
    (update,) = [m for topic, _, _, m in read_mcap(tmp_path / "r.mcap") if topic == OBJECTS_TOPIC]
    assert [e.id for e in update.entities] == ["object-0", "7"]
    assert [e.texts[0].text for e in update.entities] == ["mug 0.82", "other 0.36 #7"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failing_writer_leaves_no_file(tmp_path, error):
    path = tmp_path / "broken.mcap"
    with pytest.raises(error):
        with McapRecording(path) as rec:
            rec.log_frame(*make_frame(0))
            assert len(list(tmp_path.iterdir())) == 1  # the temporary, hidden
            raise error("stop")
    assert list(tmp_path.iterdir()) == []

    def frames():
        yield make_frame(0)
        raise error("the source failed")

    with pytest.raises(error):
        record(path, frames())
    assert list(tmp_path.iterdir()) == []


def test_bad_output_paths(tmp_path):
    with pytest.raises(InputError, match="not an existing folder"):
        record(tmp_path / "missing" / "out.mcap", [])
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError):
        record(tmp_path / "file" / "out.mcap", [])
    existing = tmp_path / "old.mcap"
    existing.write_bytes(b"keep")
    with pytest.raises(InputError, match="exists"):
        record(existing, [make_frame(0)])
    assert existing.read_bytes() == b"keep"
    record(existing, [make_frame(0)], overwrite=True)
    assert len(read_mcap(existing)) == 3


def test_points_must_be_n_by_3(tmp_path):
    _, result = make_frame(0, with_objects=False)
    with pytest.raises(InputError):
        with McapRecording(tmp_path / "x.mcap") as rec:
            rec.log_frame(np.zeros((5, 2)), result)
    assert list(tmp_path.iterdir()) == []


def test_label_colours_are_stable_and_distinct_for_a_label_set():
    labels = ["mug", "bowl", "can", "box"]
    colours = [label_color(label, labels) for label in labels]
    assert len(set(colours)) == len(labels)
    assert label_color("unlisted") == label_color("unlisted") and BACKGROUND[:3] not in colours


# ---- live server -------------------------------------------------------------------------------------

def test_port_in_use_is_an_input_error():
    with LiveServer(port=0) as first:
        with pytest.raises(InputError, match="in use"):
            LiveServer(port=first.port).start()


async def _client(server: LiveServer, points, result) -> tuple[str, dict, bytes, object]:
    from websockets.asyncio.client import connect

    async with connect(f"ws://127.0.0.1:{server.port}", subprotocols=["foxglove.sdk.v1", "foxglove.websocket.v1"],
                       open_timeout=5, close_timeout=2) as ws:
        channels = {}
        while OBJECTS_TOPIC not in channels:
            reply = await asyncio.wait_for(ws.recv(), 5)
            if isinstance(reply, str) and json.loads(reply)["op"] == "advertise":
                channels.update({c["topic"]: c for c in json.loads(reply)["channels"]})
        channel = channels[OBJECTS_TOPIC]
        await ws.send(json.dumps({"op": "subscribe", "subscriptions": [{"id": 42, "channelId": channel["id"]}]}))
        assert await asyncio.to_thread(server.wait_for_subscriber, OBJECTS_TOPIC, 5.0)
        server.log_frame(points, result)
        while True:
            reply = await asyncio.wait_for(ws.recv(), 5)
            if isinstance(reply, bytes):
                return ws.subprotocol, channel, reply, None


def test_live_server_streams_scene_updates():
    pytest.importorskip("websockets")
    points, result = make_frame(1)
    with LiveServer(port=0, host="127.0.0.1") as server:
        assert server.url == f"ws://127.0.0.1:{server.port}"
        subprotocol, channel, data, _ = asyncio.run(asyncio.wait_for(_client(server, points, result), 15))
    assert subprotocol in ("foxglove.sdk.v1", "foxglove.websocket.v1")
    assert channel["schemaName"] == "foxglove.SceneUpdate" and channel["encoding"] == "protobuf"
    opcode, subscription, log_time = struct.unpack_from("<BIQ", data)
    assert (opcode, subscription, log_time) == (1, 42, result.stamp_ns)  # 1: message data
    update = message_class("foxglove.SceneUpdate", base64.b64decode(channel["schema"])).FromString(data[13:])
    assert [e.texts[0].text for e in update.entities] == ["mug 0.82 #3", "box 0.64 #7"]
    with pytest.raises(RuntimeError):
        server.port  # stopped


def test_live_server_and_recording_share_channels(tmp_path):
    scene = SceneChannels()
    with McapRecording(tmp_path / "both.mcap", scene=scene), LiveServer(port=0, scene=scene):
        scene.log_frame(*make_frame(0))
    assert len(read_mcap(tmp_path / "both.mcap")) == 3


def test_closing_inside_the_block_publishes_once(tmp_path):
    with McapRecording(tmp_path / "early.mcap") as rec:
        rec.log_frame(*make_frame(0))
        assert rec.close() == tmp_path / "early.mcap"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["early.mcap"]
    assert len(read_mcap(tmp_path / "early.mcap")) == 3


# ---- pacing a recording --------------------------------------------------------------------------------

class FakeClock:
    """A monotonic clock that only moves when slept on or told to (processing time)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_realtime_pacer_releases_frames_at_their_stamps():
    clock = FakeClock()
    pacer = RealtimePacer(clock=clock, sleep=clock.sleep)
    start = 1_700_000_000 * 10**9
    released = []
    for stamp_s, work_s in ((0.0, 0.02), (0.1, 0.02), (0.2, 0.35), (0.3, 0.0), (0.8, 0.0)):
        pacer.wait(start + int(stamp_s * 1e9))
        released.append(round(clock.now - 100.0, 9))
        clock.now += work_s  # the frame's processing
    # due at 0, 0.1, 0.2, 0.3, 0.8 s after the first; the fourth is late (processing took 0.35 s) and goes at once
    assert released == pytest.approx([0.0, 0.1, 0.2, 0.55, 0.8])
    assert pacer.late_s == 0.0
    assert pacer.wait(None) == 0.0  # frames without a stamp are never held

    pacer.wait(start)  # the recording starts over: due at once, then paced from there
    assert clock.now - 100.0 == pytest.approx(0.8)
    assert pacer.wait(start + 50_000_000) == pytest.approx(0.05)
    pacer.reset()
    assert pacer.wait(start + 10**9) == 0.0
