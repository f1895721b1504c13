"""Ids that hold (issue 26): the ambiguity gate, velocity from the first match, camera motion (estimated, or from a
pose per frame), on hand-made centroids and boxes (no model); then two bags through `pointfalip scene --json`.

Layout of the unit tests: objects of ~20 cm, 45 cm or more apart, frames at 5 Hz unless said otherwise."""
import json
from typing import NamedTuple, Optional

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin

from pointfalip.errors import InputError
from pointfalip.scene import SceneRecognizer
from pointfalip.stream import stream
from pointfalip.tracking import Tracker, TrackerConfig, load_tracking_config

from conftest import TINY
from test_scene import FakeRecognizer
from test_sources import PC2, make_cloud, write_bag
from test_tracking import make_object

PERIOD_NS = 200_000_000  # 5 Hz


def tabletop_tracker(**overrides) -> Tracker:
    return Tracker(load_tracking_config("tabletop", **overrides))


def run(tracker, frames, stamps=None, sizes=None, poses=None) -> list[list[int]]:
    """Ids per frame of objects at ``frames`` (a list of (K, 3) centres), stamped every 200 ms unless ``stamps``."""
    ids = []
    for k, centres in enumerate(frames):
        objects = [make_object(c, 0.2 if sizes is None else sizes[i]) for i, c in enumerate(centres)]
        stamp = k * PERIOD_NS if stamps is None else stamps[k]
        ids.append([o.id for o in tracker.update(objects, stamp_ns=stamp, pose=None if poses is None else poses[k])])
    return ids


def columns(ids: list[list[int]]) -> list[set]:
    """The set of ids each object (column) had over the frames."""
    return [set(col) for col in zip(*ids)]


STILL = [np.array([0.5, 0.0, 1.0]), np.array([0.5, 0.6, 1.0])]  # two objects that stay where they are


# ---- the ambiguity gate ----------------------------------------------------------------------------------------
def test_an_object_carried_12_cm_a_frame_keeps_its_id():
    frames = [[np.array([0.0, 0.12 * k, 1.0]), *STILL] for k in range(8)]  # 0.6 m/s at 5 Hz
    assert columns(run(tabletop_tracker(), frames)) == [{0}, {1}, {2}]
    # the size rule loses it at every frame: 12 cm is beyond its 10 cm gate and half the 20 cm box
    old = columns(run(tabletop_tracker(gate="size"), frames))
    assert len(old[0]) == 8 and old[1:] == [{1}, {2}]


@pytest.mark.parametrize("direction", [(0.0, -1.0), (1.0, 0.0)], ids=["away", "towards-a-neighbour"])
def test_a_15_cm_push_keeps_its_id(direction):
    """Pushed 15 cm in one frame, then still; the neighbours are 45 cm or more away (towards one: 30 cm after)."""
    start = np.array([0.05, 0.0, 1.0])
    pushed = start + 0.15 * np.array([*direction, 0.0])
    frames = [[start, *STILL], [start, *STILL], [pushed, *STILL], [pushed, *STILL], [pushed, *STILL]]
    assert columns(run(tabletop_tracker(), frames)) == [{0}, {1}, {2}]
    assert len(columns(run(tabletop_tracker(gate="size"), frames))[0]) == 2


def test_three_objects_shifted_together_keep_their_ids_and_the_shift_is_estimated():
    """All three objects shift 11 cm at once (the camera moved); the one whose longest side is 19 cm lost its id
    under the size rule. The new rule removes the common shift first."""
    sizes = [0.19, 0.23, 0.24]
    starts = np.array([[0.0, 0.0, 1.0], [0.5, 0.0, 1.0], [0.0, 0.55, 1.0]])
    shift = np.array([0.11, 0.0, 0.0])
    frames = [starts, starts, starts + shift, starts + shift]
    tracker = tabletop_tracker()
    run(tracker, frames[:2], sizes=sizes)
    objects = [make_object(c, s) for c, s in zip(frames[2], sizes)]
    matching = tracker.match(objects, stamp_ns=2 * PERIOD_NS)
    np.testing.assert_allclose(matching.shift, shift, atol=1e-9)
    assert [t.id for t in matching.tracks] == [0, 1, 2] and all(matching.clear)
    assert [o.id for o in tracker.update(objects, 2 * PERIOD_NS, matching)] == [0, 1, 2]
    np.testing.assert_allclose(np.stack([t.velocity for t in tracker.tracks]), 0.0, atol=1e-9)  # the camera moved
    assert columns(run(tracker, frames[3:], stamps=[3 * PERIOD_NS], sizes=sizes)) == [{0}, {1}, {2}]
    assert columns(run(tabletop_tracker(gate="size"), frames, sizes=sizes)) == [{0, 3}, {1}, {2}]


def test_a_continuous_pan_moves_missed_tracks_along():
    """The camera pans 10 cm a frame; an object hidden for two frames comes back 30 cm from where it was seen."""
    starts = np.array([[0.0, 0.0, 1.0], [0.5, 0.0, 1.0], [0.0, 0.5, 1.0], [0.5, 0.5, 1.0]])
    pan = np.array([0.1, 0.0, 0.0])
    tracker = tabletop_tracker()
    for k in range(6):
        visible = starts if k not in (2, 3) else starts[1:]
        out = tracker.update([make_object(c) for c in visible + k * pan], stamp_ns=k * PERIOD_NS)
        assert [o.id for o in out] == ([0, 1, 2, 3] if k not in (2, 3) else [1, 2, 3])


def test_two_similar_objects_crossing_fall_back_to_the_size_rule():
    """Two 12 cm objects pass each other 4 cm apart at 5 cm a frame: while they are side by side no pair is clear
    (the other one is as near), so the size rule with its prediction decides, and both keep their ids."""
    frames = [[np.array([-0.3 + 0.05 * k, 0.0, 1.0]), np.array([0.3 - 0.05 * k, 0.04, 1.0])] for k in range(13)]
    tracker = tabletop_tracker()
    fallback = []
    for k, centres in enumerate(frames):
        objects = [make_object(c, 0.12) for c in centres]
        matching = tracker.match(objects, stamp_ns=k * PERIOD_NS)
        if k and not any(matching.clear):
            fallback.append(k)
        assert [o.id for o in tracker.update(objects, k * PERIOD_NS, matching)] == [0, 1], k
    assert 6 in fallback  # the frame where they are side by side
    assert run(tabletop_tracker(gate="size"), frames) == [[0, 1]] * 13  # the same answer as the size rule's


def test_an_ambiguous_pair_is_not_taken_by_its_nearest_track():
    """Tracks at 0 and 6 cm, objects at 5 and 15 cm (no common shift explains both): the 5 cm object is nearest to
    the second track, but the first one is not much farther; the assignment (the size rule) continues both tracks
    instead of giving the second one the nearer object and starting a new track."""
    tracker = tabletop_tracker()
    run(tracker, [[np.array([0.0, 0, 1]), np.array([0.06, 0, 1])]], sizes=[0.001, 0.001])
    objects = [make_object([0.05, 0, 1], 0.001), make_object([0.15, 0, 1], 0.001)]
    matching = tracker.match(objects, stamp_ns=PERIOD_NS)
    assert matching.clear == (False, False) and [t.id for t in matching.tracks] == [0, 1]


def test_a_jump_then_stop_keeps_its_id_and_the_velocity_follows():
    frames = [[np.array([0.0, 0.0, 1.0]), *STILL]] * 2 + [[np.array([0.0, -0.25, 1.0]), *STILL]] * 4
    tracker = tabletop_tracker()
    assert columns(run(tracker, frames[:3])) == [{0}, {1}, {2}]
    np.testing.assert_allclose(tracker.tracks[0].velocity, [0.0, -1.25, 0.0])  # 25 cm in 0.2 s, taken at once
    assert columns(run(tracker, frames[3:4], stamps=[3 * PERIOD_NS])) == [{0}, {1}, {2}]
    np.testing.assert_allclose(tracker.tracks[0].velocity, 0.0)  # the prediction missed by 25 cm: a stop, at once
    assert columns(run(tracker, frames[4:], stamps=[4 * PERIOD_NS, 5 * PERIOD_NS])) == [{0}, {1}, {2}]


def test_velocity_from_the_first_match_then_smoothed():
    tracker = tabletop_tracker(velocity_smoothing=0.5)
    run(tracker, [[np.array([0.0, 0.0, 1.0])], [np.array([0.12, 0.0, 1.0])]])
    np.testing.assert_allclose(tracker.tracks[0].velocity, [0.6, 0.0, 0.0])  # 12 cm in 0.2 s
    run(tracker, [[np.array([0.12 + 0.08, 0.04, 1.0])]], stamps=[2 * PERIOD_NS])  # 4.5 cm off the prediction
    np.testing.assert_allclose(tracker.tracks[0].velocity, 0.5 * np.array([0.4, 0.2, 0.0]) + 0.5 * np.array([0.6, 0, 0]))
    run(tracker, [[np.array([0.2, 0.3, 1.0])]], stamps=[3 * PERIOD_NS])  # 26 cm off: the new move at once
    np.testing.assert_allclose(tracker.tracks[0].velocity, [0.0, 1.3, 0.0])


def test_frames_without_stamps_take_the_nominal_rate():
    tracker = tabletop_tracker(nominal_rate=4.0)
    for x in (0.0, 0.12):
        tracker.update([make_object([x, 0.0, 1.0])])
    np.testing.assert_allclose(tracker.tracks[0].velocity, [0.12 * 4.0, 0.0, 0.0])  # metres a second
    assert tracker.tracks[0].time == pytest.approx(0.25)


def test_dropped_frames_keep_the_ids():
    """A mover at 0.5 m/s stamped at 10 Hz with frames dropped (gaps of up to 4 periods: 20 cm), and at the reach
    of the gate: 1.5 m/s over the 0.4 s since it was last seen."""
    kept = [0, 1, 2, 5, 6, 9, 10, 11, 15, 16]
    frames = [[np.array([0.05 * k, 0.0, 1.0]), np.array([0.0, 0.6, 1.0])] for k in kept]
    stamps = [k * 100_000_000 for k in kept]
    assert columns(run(tabletop_tracker(), frames, stamps=stamps)) == [{0}, {1}]
    jump = [[np.array([0.0, 0.0, 1.0])], [np.array([0.0, 0.0, 1.0])], [np.array([0.55, 0.0, 1.0])]]
    assert run(tabletop_tracker(), jump, stamps=[0, 10**8, 5 * 10**8]) == [[0], [0], [0]]  # 0.55 m < 1.5 m/s * 0.4 s
    assert run(tabletop_tracker(), jump, stamps=[0, 10**8, 2 * 10**8]) == [[0], [0], [1]]  # beyond 1.5 m/s * 0.1 s


def test_a_new_object_beyond_reach_gets_a_new_id():
    """An object vanishes; 0.2 s later one appears 1 m away: beyond 1.5 m/s, a new track."""
    frames = [[np.array([0.0, 0.0, 1.0]), STILL[0]], [STILL[0]], [np.array([-1.0, 0.0, 1.0]), STILL[0]]]
    assert run(tabletop_tracker(), frames) == [[0, 1], [1], [2, 1]]


# ---- odometry ----------------------------------------------------------------------------------------------------
def _yaw(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    pose = np.eye(4)
    pose[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return pose


def test_a_pose_per_frame_is_used_when_given():
    """The robot turns 30 degrees a frame; three still objects 1 m away move 52 cm a frame in its sensor's frame (in
    different directions, so no common shift explains it). With the odometry pose they keep their ids, their tracks
    sit at their world positions and do not move."""
    world = np.array([[1.0, 0.0, 0.2], [-0.5, 0.87, 0.2], [-0.5, -0.87, 0.2]])
    poses = [_yaw(30 * k) for k in range(5)]
    frames = [(world - pose[:3, 3]) @ pose[:3, :3] for pose in poses]  # sensor = R^T (world - t)
    tracker = tabletop_tracker()
    assert columns(run(tracker, frames, poses=poses)) == [{0}, {1}, {2}]
    np.testing.assert_allclose(np.stack([t.centroid for t in tracker.tracks]), world, atol=1e-9)
    np.testing.assert_allclose(np.stack([t.velocity for t in tracker.tracks]), 0.0, atol=1e-9)
    assert len(set().union(*columns(run(tabletop_tracker(), frames)))) > 3  # without the pose the ids are lost
    # a frame without a pose after posed ones keeps the last pose (the robot has not moved since)
    assert run(tracker, [frames[-1]], stamps=[5 * PERIOD_NS]) == [[0, 1, 2]]
    np.testing.assert_allclose(np.stack([t.centroid for t in tracker.tracks]), world, atol=1e-9)


def test_a_pose_turns_boxes_into_world_boxes():
    tracker = tabletop_tracker()
    box = make_object([1.0, 0.0, 0.0], size=(0.4, 0.1, 0.2))
    pose = _yaw(90)
    pose[:3, 3] = [0.0, 0.0, 0.5]
    tracker.update([box], stamp_ns=0, pose=pose)
    (track,) = tracker.tracks
    np.testing.assert_allclose(track.centroid, [0.0, 1.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(track.bbox_max - track.bbox_min, [0.1, 0.4, 0.2], atol=1e-12)  # x and y swapped
    for bad in (np.eye(3), np.full((4, 4), np.nan), np.ones((4, 4)), "pose"):
        with pytest.raises(InputError, match="pose"):
            tracker.match([box], stamp_ns=1, pose=bad)


# ---- reuse stays correct -----------------------------------------------------------------------------------------
def test_a_track_that_moved_is_encoded_again():
    """Features are reused only for an object whose own cloud (sensor frame) barely changed, whatever its id."""
    tracker = tabletop_tracker()
    key = ("model", "settings")
    (obj,) = tracker.update([make_object([0.0, 0.0, 1.0])], stamp_ns=0)
    tracker.store_features(obj, "features-0", key)

    def reusable(centre, k):
        candidate = make_object(centre)
        matching = tracker.match([candidate], stamp_ns=k * PERIOD_NS)
        cached = tracker.reusable_features(matching.tracks[0], candidate, key)
        (out,) = tracker.update([candidate], k * PERIOD_NS, matching)
        return out, cached

    assert reusable([0.0, 0.0, 1.0], 1)[1] == "features-0"
    out, cached = reusable([0.12, 0.0, 1.0], 2)  # carried: the same id, encoded again
    assert out.id == 0 and cached is None
    tracker.store_features(out, "features-2", key)
    assert reusable([0.12, 0.0, 1.0], 3)[1] == "features-2"


def test_a_panning_camera_re_encodes_objects_that_keep_their_ids():
    tracker = tabletop_tracker()
    starts = np.array([[0.0, 0.0, 1.0], [0.5, 0.0, 1.0], [0.0, 0.5, 1.0]])
    for obj in tracker.update([make_object(c) for c in starts], stamp_ns=0):
        tracker.store_features(obj, f"features-{obj.id}", "key")
    moved = [make_object(c) for c in starts + [0.11, 0.0, 0.0]]
    matching = tracker.match(moved, stamp_ns=PERIOD_NS)
    assert [t.id for t in matching.tracks] == [0, 1, 2]
    assert [tracker.reusable_features(t, o, "key") for t, o in zip(matching.tracks, moved)] == [None] * 3


# ---- settings and the pipeline ----------------------------------------------------------------------------------
def test_new_settings_are_checked():
    assert TrackerConfig().gate == "ambiguity" and load_tracking_config("tabletop", gate="size").gate == "size"
    for bad in ({"gate": "nearest"}, {"max_speed": -1}, {"ambiguity_ratio": 0.5}, {"ambiguity_margin": 0},
                {"velocity_smoothing": 0}, {"velocity_smoothing": 1.5}, {"ego_motion": "yes"}, {"ego_tolerance": 0},
                {"nominal_rate": 0}):
        with pytest.raises(InputError):
            TrackerConfig.from_dict(bad)


def _frame(rng, centres, offset=(0.0, 0.0), size=0.16, n=3000) -> np.ndarray:
    """A 1.6 m x 1.2 m table with a box of ``size`` at each centre (x, y), all shifted by ``offset``, z up."""
    table = np.c_[rng.uniform(-0.8, 0.8, 6000), rng.uniform(-0.6, 0.6, 6000), rng.normal(0, 0.002, 6000)]
    parts = [table]
    for x, y in centres:
        faces = rng.uniform(-size / 2, size / 2, size=(n, 3))
        axis = rng.integers(0, 3, n)
        faces[np.arange(n), axis] = np.where(rng.random(n) < 0.5, -size / 2, size / 2)
        parts.append(faces + [x, y, size / 2])
    return (np.concatenate(parts) + [offset[0], offset[1], 0.0]).astype(np.float32)


class PosedFrame(NamedTuple):
    """A frame as `stream` reads it, with odometry."""

    stamp_ns: Optional[int]
    points: np.ndarray
    frame_id: Optional[str]
    pose: Optional[np.ndarray]


def test_stream_hands_each_frames_pose_to_the_tracker():
    """A frame's pose reaches the tracker through stream and SceneRecognizer.recognize: the camera turns 30 degrees
    a frame about its vertical axis; with the poses the two boxes keep their ids."""
    rng = np.random.default_rng(3)
    world = [(0.45, 0.0), (-0.3, 0.3)]
    frames = []
    for k in range(3):
        pose = _yaw(30 * k)
        points = _frame(rng, world) @ pose[:3, :3]  # the world cloud seen from the turned sensor
        frames.append(PosedFrame(k * PERIOD_NS, points, "base", pose))
    scene = SceneRecognizer(FakeRecognizer(), track=True)
    ids = [sorted(o.id for o in item.result.objects) for item in stream(scene, frames)]
    assert ids == [[0, 1]] * 3
    found = sorted(t.centroid[:2].tolist() for t in scene.tracker.tracks)
    np.testing.assert_allclose(found, sorted(world), atol=0.02)  # the tracks sit in the world's frame


# ---- end to end: bags through `pointfalip scene --json` -----------------------------------------------------------
START_NS = 1_700_000_000_000_000_000


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "pf-track-16.json"
    path.write_text(json.dumps(TINY["pf-tiny-16"]))
    return str(path)


def _scene_ids(main, bag, tiny_json, truth, *extra) -> list[set]:
    """The ids each true box had over the frames of `pointfalip scene BAG --json` (nearest box within 3 cm)."""
    code, stdout, err = main("scene", bag, "--json", "--labels", "mug,box,bowl", "--model", tiny_json,
                             "--pretrained", "none", "--precision", "fp32", "--preset", "robot_fast", *extra)
    assert code == 0, err
    frames = json.loads(stdout)["frames"]
    assert len(frames) == len(truth)
    ids = [set() for _ in truth[0]]
    for frame, centres in zip(frames, truth):
        assert len(frame["objects"]) == len(centres)
        for obj in frame["objects"]:
            gaps = [np.hypot(obj["centroid"][0] - x, obj["centroid"][1] - y) for x, y in centres]
            assert min(gaps) < 0.03
            ids[int(np.argmin(gaps))].add(obj["id"])
    return ids


def test_scene_bag_with_an_object_carried_12_cm_a_frame(main, tiny_json, tmp_path):
    """5 Hz, one box carried 12 cm a frame past two still ones: every box keeps one id of its own."""
    rng = np.random.default_rng(11)
    truth = [[(-0.5, -0.4 + 0.12 * k), (0.1, 0.0), (0.5, 0.3)] for k in range(5)]
    bag = write_bag(tmp_path / "carried", StoragePlugin.MCAP,
                    [("/points", PC2, k, make_cloud(_frame(rng, c), START_NS + k * PERIOD_NS))
                     for k, c in enumerate(truth)])
    ids = _scene_ids(main, bag, tiny_json, truth)
    assert all(len(s) == 1 for s in ids) and len(set().union(*ids)) == 3


def test_scene_bag_of_a_panning_camera_with_dropped_frames(main, tiny_json, tmp_path):
    """The camera pans at 0.55 m/s: the whole table shifts 11 cm a frame at 5 Hz, and two frames are missing
    (a 22 cm step); three boxes of 16 cm keep their ids."""
    rng = np.random.default_rng(12)
    centres = [(-0.45, -0.3), (0.05, 0.1), (0.45, -0.2)]
    kept = [0, 1, 2, 4, 5, 7]
    truth = [[(x + 0.11 * k, y) for x, y in centres] for k in kept]
    bag = write_bag(tmp_path / "panning", StoragePlugin.SQLITE3,
                    [("/points", PC2, k, make_cloud(_frame(rng, centres, (0.11 * k, 0.0)), START_NS + k * PERIOD_NS))
                     for k in kept])
    ids = _scene_ids(main, bag, tiny_json, truth)
    assert all(len(s) == 1 for s in ids) and len(set().union(*ids)) == 3
