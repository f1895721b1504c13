"""The one frame loop (`stream.stream`) and reuse of unchanged objects' view features, on synthetic tabletop frames
with a tiny random-weight model. Reuse is checked against runs that encode everything and against
`Recognizer.classify` of each object's cloud (the path without any tracking)."""
import io
import json

import numpy as np
import pytest

from conftest import load_random

from pointfalip import Recognizer
from pointfalip.errors import InputError
from pointfalip.sources import BagFrame
from pointfalip.scene import SceneRecognizer, SceneResult, load_scene_recognizer
from pointfalip.stream import FrameQueue, JsonLines, RealtimePacer, stream
from pointfalip.tracking import load_tracking_config

PERIOD_NS = 200_000_000  # 5 Hz
CENTRES = [(-0.3, 0.0), (0.25, 0.15), (0.0, -0.25)]
SIZES = [(0.10, 0.10, 0.10), (0.16, 0.08, 0.12), (0.06, 0.06, 0.20)]


def _box_surface(rng, size, count=1500):
    half = np.asarray(size) / 2
    pts = rng.uniform(-half, half, size=(count, 3))
    axis = rng.integers(0, 3, count)
    pts[np.arange(count), axis] = np.where(rng.random(count) < 0.5, -1, 1) * half[axis]
    return pts


def tabletop(shifts=None, seed=0) -> np.ndarray:
    """A 1.2 m x 0.8 m table with three boxes on it; ``shifts[i]`` moves box i (metres, x/y)."""
    rng = np.random.default_rng(seed)
    parts = [np.c_[rng.uniform(-0.6, 0.6, 8000), rng.uniform(-0.4, 0.4, 8000), rng.normal(0, 0.002, 8000)]]
    for i, ((x, y), size) in enumerate(zip(CENTRES, SIZES)):
        dx, dy = (shifts or {}).get(i, (0.0, 0.0))
        parts.append(_box_surface(rng, size) + [x + dx, y + dy, size[2] / 2])
    return np.concatenate(parts).astype(np.float32)


def frames_of(clouds):
    return [BagFrame(k * PERIOD_NS, cloud, "lidar") for k, cloud in enumerate(clouds)]


class CountingRecognizer(Recognizer):
    """A Recognizer that records how many clouds each `embed` call encodes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.encoded = []

    def embed(self, points, *args, **kwargs):
        self.encoded.append(len(points) if isinstance(points, list) else 1)
        return super().embed(points, *args, **kwargs)


@pytest.fixture(scope="module")
def model():
    return load_random("pf-tiny-16")


def _scene(rec, reuse=True, **tracking):
    return SceneRecognizer(rec, top_k=3, track=True, reuse=reuse,
                           tracking=load_tracking_config("tabletop", **tracking))


def _summary(result: SceneResult):
    return [(o.id, o.label, o.track_label, [(p.label, p.probability) for p in o.predictions]) for o in result.objects]


def test_static_objects_reuse_their_features_and_answer_as_without_reuse(model):
    clouds = [tabletop(seed=0)] * 5
    rec = CountingRecognizer(model, labels=["mug", "box", "bowl", "bottle"], up_axis="z")
    reused = [item.result for item in _scene(rec).stream(frames_of(clouds))]  # SceneRecognizer.stream is stream
    assert rec.encoded == [3]  # the first frame's three objects, then nothing
    assert [[o.reused for o in r.objects] for r in reused] == [[False] * 3] + [[True] * 3] * 4
    assert all(r.timings["encoder"] == 0.0 for r in reused[1:])

    plain_rec = CountingRecognizer(model, labels=rec.labels, up_axis="z")
    plain = [item.result for item in stream(_scene(plain_rec, reuse=False), frames_of(clouds))]
    assert plain_rec.encoded == [3] * 5
    assert [_summary(r) for r in reused] == [_summary(r) for r in plain]  # identical ids, labels, probabilities
    for obj in reused[-1].objects:  # each equals the tracking-free answer for its own cloud
        expected = rec.classify(obj.points, top_k=3)
        assert [p.label for p in obj.predictions] == [p.label for p in expected]
        np.testing.assert_allclose([p.probability for p in obj.predictions], [p.probability for p in expected],
                                   rtol=1e-5)


def test_a_moved_object_is_encoded_again_and_keeps_its_id(model):
    moves = [{}, {}, {1: (0.03, 0.0)}, {1: (0.03, 0.0)}, {1: (0.06, 0.0)}]
    clouds = [tabletop(m, seed=0) for m in moves]
    rec = CountingRecognizer(model, labels=["mug", "box", "bowl"], up_axis="z")
    results = [item.result for item in stream(_scene(rec), frames_of(clouds))]
    assert rec.encoded == [3, 1, 1]  # frames 2 and 4: only the moved box (frame 3 repeats frame 2)
    mover = [next(o for o in r.objects if abs(o.centroid[1] - CENTRES[1][1]) < 0.02) for r in results]
    assert [o.reused for o in mover] == [False, True, False, True, False]
    assert len({o.id for o in mover}) == 1
    assert all(o.reused for r in results[1:] for o in r.objects if o is not mover[results.index(r)])
    for obj in (mover[2], mover[4]):
        expected = rec.classify(obj.points, top_k=3)
        np.testing.assert_allclose([p.probability for p in obj.predictions], [p.probability for p in expected],
                                   rtol=1e-5)


def test_reuse_max_age_forces_encoding(model):
    rec = CountingRecognizer(model, labels=["mug", "box"], up_axis="z")
    list(stream(_scene(rec, reuse_max_age=2), frames_of([tabletop()] * 5)))
    assert rec.encoded == [3, 3, 3]  # frames 0, 2, 4
    rec = CountingRecognizer(model, labels=["mug", "box"], up_axis="z")
    list(stream(_scene(rec, reuse_max_age=1), frames_of([tabletop()] * 3)))
    assert rec.encoded == [3, 3, 3]  # 1: never reuse


def test_new_labels_rescore_cached_features_and_new_feature_settings_encode_again(model):
    clouds = frames_of([tabletop()] * 3)
    rec = CountingRecognizer(model, labels=["mug", "box"], up_axis="z")
    scene = _scene(rec)
    first = scene.recognize(clouds[0].points, clouds[0].stamp_ns, "lidar")
    scene.recognizer = relabelled = CountingRecognizer(model, labels=["bowl", "can", "cup"], up_axis="z")
    second = scene.recognize(clouds[1].points, clouds[1].stamp_ns, "lidar")
    assert relabelled.encoded == [] and all(o.reused for o in second.objects)
    assert [o.id for o in second.objects] == [o.id for o in first.objects]
    for obj in second.objects:  # the new labels, scored on the features cached from frame 0
        expected = relabelled.classify(obj.points, top_k=3)
        assert [p.label for p in obj.predictions] == [p.label for p in expected]
        np.testing.assert_allclose([p.probability for p in obj.predictions], [p.probability for p in expected],
                                   rtol=1e-5)
    scene.recognizer = plain = CountingRecognizer(model, labels=["bowl", "can"], up_axis="z", falip=False)
    third = scene.recognize(clouds[2].points, clouds[2].stamp_ns, "lidar")
    assert plain.encoded == [3] and not any(o.reused for o in third.objects)


def test_load_scene_recognizer_and_the_fast_preset(model):
    scene = load_scene_recognizer(["mug", "box"], model=model, preset="robot_fast", scene_preset="room",
                                  segmentation={"voxel_size": 0.01}, reuse=False, up_axis="z")
    assert scene.config.voxel_size == 0.01 and scene.tracking.max_distance == 0.5 and not scene.reuse
    assert scene.recognizer.config.views == "pointclip" and scene.recognizer.config.projection == "realistic"
    assert scene.recognizer.embed(tabletop()[-1500:]).shape[1] == 6  # PointCLIP's 6 views
    with pytest.raises(InputError):
        load_scene_recognizer(["mug"], model=model, scene_preset="garden")


# ---- the loop itself, with a stand-in recognizer and fake clocks -------------------------------------------------
class EchoScene:
    """Answers each frame with a result carrying its stamp; counts calls."""

    def __init__(self):
        self.calls = []

    def recognize(self, points, stamp_ns=None, frame_id=None):
        self.calls.append(stamp_ns)
        return SceneResult([], {"total": 0.0}, stamp_ns=stamp_ns, frame_id=frame_id)


class ListSink:
    def __init__(self):
        self.logged = []
        self.closed = 0

    def log_frame(self, points, result, *, stamp_ns=None):
        self.logged.append((result.stamp_ns, stamp_ns))

    def close(self):
        self.closed += 1


class FakeClock:
    def __init__(self):
        self.now = 100.0
        self.slept = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_sinks_get_every_frame_and_recordings_the_first_pass_only():
    frames = frames_of([np.zeros((1, 3), np.float32)] * 3)
    scene, live, recording = EchoScene(), ListSink(), ListSink()
    clock = FakeClock()
    wall = iter(range(10**12, 10**12 + 100))
    items = []
    for item in stream(scene, frames, sinks=[live], record=[recording], loop=True, clock=clock, sleep=clock.sleep,
                       now_ns=lambda: next(wall)):
        items.append(item)
        if len(items) == 7:
            break
    assert [i.pass_index for i in items] == [0, 0, 0, 1, 1, 1, 2] and not any(i.resent for i in items)
    assert scene.calls == [0, PERIOD_NS, 2 * PERIOD_NS] * 2 + [0]  # a repeat recomputes (stamps go back)
    assert live.logged[:3] == [(0, None), (PERIOD_NS, None), (2 * PERIOD_NS, None)]  # the recording's stamps
    assert [s for _, s in live.logged[3:]] == [10**12, 10**12 + 1, 10**12 + 2, 10**12 + 3]  # repeats: the time now
    assert recording.logged == live.logged[:3] and recording.closed == 1
    assert all("output" in i.result.timings for i in items)
    assert clock.slept == []  # no pacing asked for


def test_realtime_paces_by_the_stamps_and_a_single_file_is_resent():
    clock = FakeClock()
    scene, live = EchoScene(), ListSink()
    list(stream(scene, frames_of([np.zeros((1, 3))] * 4), sinks=[live], realtime=True, clock=clock,
                sleep=clock.sleep))
    assert clock.slept == [0.2, 0.2, 0.2] and len(live.logged) == 4

    clock, scene, live = FakeClock(), EchoScene(), ListSink()
    single = [BagFrame(None, np.zeros((1, 3)), None)]
    items = []
    for item in stream(scene, single, sinks=[live], loop=True, resend_s=0.5, clock=clock, sleep=clock.sleep,
                       now_ns=lambda: 7):
        items.append(item)
        if len(items) == 4:
            break
    assert scene.calls == [None]  # computed once
    assert [i.resent for i in items] == [False, True, True, True] and clock.slept == [0.5, 0.5, 0.5]
    assert live.logged == [(None, None)] + [(None, 7)] * 3


def test_stream_refuses_what_it_cannot_do():
    with pytest.raises(InputError, match="no frame"):
        list(stream(EchoScene(), []))
    with pytest.raises(InputError, match="read again"):
        next(stream(EchoScene(), iter(frames_of([np.zeros((1, 3))])), loop=True))
    with pytest.raises(InputError, match="resend_s"):
        next(stream(EchoScene(), [], resend_s=0))
    reopened = []

    def reopen():  # a one-shot reader made again for each pass
        reopened.append(1)
        return iter(frames_of([np.zeros((1, 3))] * 2))

    items = stream(EchoScene(), reopen, loop=True)
    assert [next(items).pass_index for _ in range(5)] == [0, 0, 1, 1, 2] and len(reopened) == 3


def test_frame_queue_keeps_the_newest_and_ends_when_closed():
    q = FrameQueue(maxsize=2)
    for k in range(5):
        q.put(k)
    q.close()
    q.put(99)  # after close: ignored
    assert list(q) == [3, 4] and q.dropped == 3 and q.closed


def test_json_lines_sink_writes_one_result_a_line(model):
    out = io.StringIO()
    rec = Recognizer(model, labels=["mug", "box"], up_axis="z")
    items = list(stream(_scene(rec), frames_of([tabletop()] * 2), sinks=[JsonLines(out)]))
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    for line, item in zip(lines, items):
        record = json.loads(line)
        expected = item.result.to_dict()
        del record["timings"], expected["timings"]  # the sink runs before "output" is timed
        assert record == json.loads(json.dumps(expected))
    assert [o["reused"] for o in json.loads(lines[1])["objects"]] == [True] * 3


def test_realtime_pacer_is_the_streams():
    clock = FakeClock()
    pacer = RealtimePacer(clock=clock, sleep=clock.sleep)
    assert pacer.wait(0) == 0.0 and pacer.wait(500_000_000) == 0.5 and clock.slept == [0.5]
