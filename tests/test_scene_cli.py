"""`pointfalip scene` for robotics: MCAP recordings read back with the mcap reader, the live Foxglove server spoken
to over loopback by a WebSocket client, object ids across a bag's frames, and bad input (one line, exit 2, nothing
half-written left behind). Bags are written by the tests; the model is a tiny random-weight ViT."""
import asyncio
import base64
import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

pytest.importorskip("foxglove")
pytest.importorskip("mcap.reader")
from rosbags.rosbag2 import StoragePlugin  # noqa: E402

from conftest import TINY, one_line_error  # noqa: E402
from test_foxglove import message_class, read_mcap  # noqa: E402
from test_sources import PC2, make_cloud, write_bag  # noqa: E402

LABELS = "mug,box,bowl"
STEP_S = 0.1  # seconds between the bag's frames
START_NS = 1_700_000_000_000_000_000
CUBE = 0.1  # metres: edge of the two cubes
MOVES = [(0.02, 0.0), (0.0, -0.03)]  # metres per frame of each cube: "a few centimetres"
STARTS = [(-0.3, 0.0), (0.25, 0.15)]
NUM_FRAMES = 3  # frames with the cubes; one plane-only frame follows


def _frame(rng, k: int, with_cubes: bool = True) -> np.ndarray:
    table = np.c_[rng.uniform(-0.6, 0.6, 8000), rng.uniform(-0.4, 0.4, 8000), rng.normal(0, 0.002, 8000)]
    parts = [table]
    for centre in _centres(k) if with_cubes else ():
        faces = rng.uniform(-CUBE / 2, CUBE / 2, size=(1500, 3))
        axis = rng.integers(0, 3, 1500)
        faces[np.arange(1500), axis] = np.where(rng.random(1500) < 0.5, -CUBE / 2, CUBE / 2)
        parts.append(faces + [centre[0], centre[1], CUBE / 2])
    return np.concatenate(parts).astype(np.float32)


def _centres(k: int) -> list[tuple[float, float]]:
    return [(x + k * dx, y + k * dy) for (x, y), (dx, dy) in zip(STARTS, MOVES)]


@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    """An mcap-storage bag: 3 frames of two cubes on a table moving a few cm a frame, then a table alone."""
    rng = np.random.default_rng(5)
    folder = tmp_path_factory.mktemp("bags") / "moving"
    messages = [("/points", PC2, k, make_cloud(_frame(rng, k, k < NUM_FRAMES), START_NS + int(k * STEP_S * 1e9)))
                for k in range(NUM_FRAMES + 1)]
    return write_bag(folder, StoragePlugin.MCAP, messages)


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "pf-scene-16.json"
    path.write_text(json.dumps(TINY["pf-tiny-16"]))
    return str(path)


def _model(tiny_json):
    return ["--labels", LABELS, "--model", tiny_json, "--pretrained", "none", "--precision", "fp32"]


def _leftovers(folder) -> list[str]:
    """Recordings and temporaries in a folder."""
    return sorted(p.name for p in folder.iterdir() if ".mcap" in p.name or p.name.endswith(".part"))


def _cube_of(obj, k: int) -> int:
    return int(np.argmin([np.hypot(obj["centroid"][0] - x, obj["centroid"][1] - y) for x, y in _centres(k)]))


# ---- recordings and ids ----------------------------------------------------------------------------------
def test_bag_to_mcap_with_stable_ids(main, bag, tiny_json, tmp_path):
    out = tmp_path / "scene.mcap"
    code, stdout, err = main("scene", bag, "--mcap", out, "--json", *_model(tiny_json))
    assert code == 0, err
    result = json.loads(stdout)
    assert result["mcap"] == str(out) and _leftovers(tmp_path) == ["scene.mcap"]
    assert result["topic"] == "/points"  # the bag's only PointCloud2 topic, named though --topic was not given
    frames = result["frames"]
    assert [f["stamp"] for f in frames] == pytest.approx([START_NS / 1e9 + k * STEP_S for k in range(NUM_FRAMES + 1)])
    assert {f["frame_id"] for f in frames} == {"lidar"}  # make_cloud's header.frame_id
    assert [len(f["objects"]) for f in frames] == [2] * NUM_FRAMES + [0]

    assert all("tracking" in f["timings"] and "output" in f["timings"] for f in frames)
    ids = {0: set(), 1: set()}  # cube -> the ids it had
    for k, frame in enumerate(frames[:NUM_FRAMES]):
        for obj in frame["objects"]:
            cube = _cube_of(obj, k)
            x, y = _centres(k)[cube]
            assert np.hypot(obj["centroid"][0] - x, obj["centroid"][1] - y) < 0.01
            assert obj["track_label"] in LABELS.split(",")
            ids[cube].add(obj["id"])
    assert all(len(v) == 1 for v in ids.values()) and ids[0] != ids[1]  # each cube keeps one id, its own

    messages = read_mcap(out)
    schemas = {topic: schema for topic, schema, _, _ in messages}
    assert schemas == {"/pointfalip/points": "foxglove.PointCloud", "/pointfalip/objects": "foxglove.SceneUpdate",
                       "/pointfalip/transforms": "foxglove.FrameTransform"}
    updates = [(t, m) for topic, _, t, m in messages if topic == "/pointfalip/objects"]
    assert len(updates) == len(frames)  # one SceneUpdate a frame
    for (log_time, update), frame in zip(updates, frames):
        assert log_time == pytest.approx(frame["stamp"] * 1e9, abs=1e3)
        assert len(update.entities) == len(frame["objects"])
        for entity, obj in zip(update.entities, frame["objects"]):
            score = {p["label"]: p["score"] for p in obj["top_k"]}.get(obj["track_label"], 0.0)
            assert entity.id == str(obj["id"]) and entity.frame_id == "lidar"
            assert entity.texts[0].text == f"{obj['track_label']} {score:.2f} #{obj['id']}"
            meta = {kv.key: kv.value for kv in entity.metadata}
            assert meta["label"] == obj["label"] and meta["reused"] == str(obj["reused"]).lower()
            np.testing.assert_allclose([entity.cubes[0].size.x, entity.cubes[0].size.y, entity.cubes[0].size.z],
                                       np.subtract(obj["bbox_max"], obj["bbox_min"]), atol=1e-6)


def test_no_track_removes_ids_and_a_single_file_is_untracked(main, bag, tiny_json, tmp_path):
    code, stdout, err = main("scene", bag, "--no-track", "--json", *_model(tiny_json))
    assert code == 0, err
    frames = json.loads(stdout)["frames"]
    assert sum(len(f["objects"]) for f in frames) == 2 * NUM_FRAMES
    assert all("id" not in o and "track_label" not in o for f in frames for o in f["objects"])
    assert all("tracking" not in f["timings"] for f in frames)

    cloud = tmp_path / "one.npy"
    np.save(cloud, _frame(np.random.default_rng(1), 0))
    code, stdout, err = main("scene", cloud, "--json", *_model(tiny_json))
    assert code == 0, err
    assert [sorted(o) for o in json.loads(stdout)["objects"]] == [
        sorted(["label", "score", "top_k", "centroid", "bbox_min", "bbox_max", "num_points", "reused"])] * 2


def test_static_bag_reuses_features_unless_no_reuse(main, tiny_json, tmp_path):
    """A bag of the same frame three times: after the first frame every object's features are reused, and the answers
    equal those of --no-reuse (which encodes every object of every frame)."""
    rng = np.random.default_rng(9)
    cloud = _frame(rng, 0)
    bag = write_bag(tmp_path / "static", StoragePlugin.SQLITE3,
                    [("/points", PC2, k, make_cloud(cloud, START_NS + k * 100_000_000)) for k in range(3)])
    runs = {}
    for flag in ((), ("--no-reuse",)):
        code, stdout, err = main("scene", bag, "--json", *flag, *_model(tiny_json))
        assert code == 0, err
        runs[flag] = json.loads(stdout)["frames"]
    assert [[o["reused"] for o in f["objects"]] for f in runs[()]] == [[False, False], [True, True], [True, True]]
    assert all(not o["reused"] for f in runs[("--no-reuse",)] for o in f["objects"])
    strip = [[{k: v for k, v in o.items() if k != "reused"} for o in f["objects"]] for f in runs[()]]
    assert strip == [[{k: v for k, v in o.items() if k != "reused"} for o in f["objects"]]
                     for f in runs[("--no-reuse",)]]


# ---- bad input -------------------------------------------------------------------------------------------
def test_bad_input_is_one_line_and_leaves_nothing(main, bag, tiny_json, tmp_path):
    out = tmp_path / "out.mcap"
    code, _, err = main("scene", bag, "--topic", "/camera", "--mcap", out, *_model(tiny_json))
    one_line_error(code, err, "/camera")
    code, _, err = main("scene", bag, "--mcap", tmp_path / "missing" / "out.mcap", *_model(tiny_json))
    one_line_error(code, err, "does not exist")
    storage = bag / "moving.mcap"
    before = storage.read_bytes()
    code, _, err = main("scene", storage, "--mcap", storage, *_model(tiny_json))
    one_line_error(code, err, "input")
    code, _, err = main("scene", bag, "--mcap", storage, *_model(tiny_json))  # the bag folder's own storage file
    one_line_error(code, err, "input")
    assert storage.read_bytes() == before
    labels = tmp_path / "labels.mcap"  # any input of the run is protected, whatever its name
    labels.write_text("mug\nbox\n")
    code, _, err = main("scene", bag, "--labels-file", labels, "--mcap", labels, *_model(tiny_json)[2:])
    one_line_error(code, err, "input")
    assert labels.read_text() == "mug\nbox\n"
    labels.unlink()
    code, _, err = main("scene", bag, "--mcap", tmp_path / "out.json", *_model(tiny_json))
    one_line_error(code, err, ".mcap")
    code, _, err = main("scene", bag, "--loop", *_model(tiny_json))
    one_line_error(code, err, "--serve")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = main("scene", bag, "--serve", "--port", busy.getsockname()[1], "--mcap", out,
                            *_model(tiny_json))
    one_line_error(code, err, "in use")
    assert _leftovers(tmp_path) == [] and _leftovers(bag) == ["moving.mcap"]


# ---- the live view and Ctrl-C, in subprocesses ---------------------------------------------------------------
class _Scene:
    """`pointfalip scene ...` in a subprocess, its stderr lines collected by a thread."""

    def __init__(self, *args, cwd):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "POINTFALIP_CACHE": str(cwd)}
        self.proc = subprocess.Popen([sys.executable, "-m", "pointfalip", "scene", *map(str, args)], cwd=cwd, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            self.lines.put(line)

    def wait_for_line(self, pattern: str, timeout: float = 60) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            match = re.search(pattern, line)
            if match:
                return match
        self.stop(signal.SIGKILL)
        raise AssertionError(f"no line matching {pattern!r} in {timeout} s: {''.join(self.stderr)}")

    def stop(self, sig=signal.SIGINT, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


async def _receive_scene_update(url: str) -> tuple[dict, bytes]:
    """Subscribe to the objects channel as the Foxglove app does; the channel and the first message's bytes."""
    from websockets.asyncio.client import connect

    async with connect(url, subprotocols=["foxglove.sdk.v1"], open_timeout=10, close_timeout=2) as ws:
        assert ws.subprotocol == "foxglove.sdk.v1"
        channels = {}
        while "/pointfalip/objects" not in channels:
            reply = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(reply, str) and json.loads(reply)["op"] == "advertise":
                channels.update({c["topic"]: c for c in json.loads(reply)["channels"]})
        channel = channels["/pointfalip/objects"]
        await ws.send(json.dumps({"op": "subscribe", "subscriptions": [{"id": 7, "channelId": channel["id"]}]}))
        while True:
            reply = await asyncio.wait_for(ws.recv(), 30)
            if isinstance(reply, bytes):
                return channel, reply


def test_serve_streams_scene_updates_to_a_websocket_client(bag, tiny_json, tmp_path):
    pytest.importorskip("websockets")
    scene = _Scene(bag, "--serve", "--port", 0, "--host", "127.0.0.1", "--wait", 30, "--realtime", "--loop",
                   *_model(tiny_json), cwd=tmp_path)
    try:
        url = scene.wait_for_line(r"ws://127\.0\.0\.1:\d+").group(0)
        channel, data = asyncio.run(asyncio.wait_for(_receive_scene_update(url), 60))
    finally:
        code = scene.stop(signal.SIGTERM)
    assert code == 130 and "Traceback" not in "".join(scene.stderr), "".join(scene.stderr)
    assert channel["schemaName"] == "foxglove.SceneUpdate" and channel["encoding"] == "protobuf"
    opcode, subscription, log_time = struct.unpack_from("<BIQ", data)
    assert (opcode, subscription) == (1, 7)  # message data, for our subscription
    bag_stamps = {START_NS + int(k * STEP_S * 1e9) for k in range(NUM_FRAMES + 1)}
    assert log_time in bag_stamps or abs(log_time - time.time_ns()) < 600e9  # repeated passes: the time now
    update = message_class("foxglove.SceneUpdate", base64.b64decode(channel["schema"])).FromString(data[13:])
    assert len(update.entities) in (0, 2)  # the bag's frames hold two objects or none
    for entity in update.entities:
        assert re.fullmatch(rf"({LABELS.replace(',', '|')}) \d\.\d\d #\d+", entity.texts[0].text)


def test_ctrl_c_while_waiting_for_a_viewer_removes_the_recording(bag, tiny_json, tmp_path):
    scene = _Scene(bag, "--serve", "--port", 0, "--wait", 60, "--mcap", "out.mcap", *_model(tiny_json), cwd=tmp_path)
    try:
        scene.wait_for_line(r"ws://")
        deadline = time.monotonic() + 60
        while not any(p.name.endswith(".part") for p in tmp_path.iterdir()):  # the recording is open
            assert time.monotonic() < deadline and scene.proc.poll() is None, "".join(scene.stderr)
            time.sleep(0.05)
    finally:
        code = scene.stop(signal.SIGINT)
    assert code == 130, "".join(scene.stderr)
    assert "Traceback" not in "".join(scene.stderr) and "interrupted" in scene.stderr[-1]
    assert _leftovers(tmp_path) == []
