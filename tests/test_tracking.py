"""Tracker: stable ids across frames, label smoothing, settings; on synthetic frames with known motion."""
import dataclasses
from dataclasses import dataclass
import itertools
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from pointfalip.errors import InputError
from pointfalip.recognize import Prediction
from pointfalip.scene import RecognizedObject
from pointfalip.tracking import Tracker, TrackerConfig, box_iou, list_tracking_presets, load_tracking_config


def make_object(centre, size=0.06, preds=(("mug", 0.8), ("cup", 0.2))):
    centre = np.asarray(centre, dtype=np.float64)
    half = np.full(3, size / 2) if np.isscalar(size) else np.asarray(size, dtype=np.float64) / 2
    predictions = [Prediction(label, p) for label, p in preds]
    return RecognizedObject(predictions[0].label, predictions[0].probability, predictions, np.zeros((0, 3)),
                            np.zeros(0, dtype=np.int64), centre, centre - half, centre + half, 100)


def test_objects_moving_a_few_centimetres_keep_their_ids():
    tracker = Tracker(TrackerConfig(max_distance=0.1))
    starts = np.array([[0.0, 0.0, 1.0], [0.3, 0.0, 1.0], [0.0, 0.3, 1.0]])
    steps = np.array([[0.02, 0.0, 0.0], [0.0, 0.02, 0.0], [-0.015, 0.0, 0.01]])  # metres per frame
    for frame in range(15):
        objects = tracker.update([make_object(s + frame * d) for s, d in zip(starts, steps)], stamp_ns=frame)
        assert [o.id for o in objects] == [0, 1, 2]
    assert len(tracker.tracks) == 3


def test_two_objects_swapping_list_order_keep_their_ids():
    tracker = Tracker()
    a, b = np.array([0.0, 0.0, 1.0]), np.array([0.2, 0.0, 1.0])
    first = tracker.update([make_object(a), make_object(b)])
    ids = {"a": first[0].id, "b": first[1].id}
    for frame in range(1, 8):
        shift = np.array([0.0, 0.01 * frame, 0.0])
        objs = [make_object(b + shift), make_object(a + shift)] if frame % 2 else \
            [make_object(a + shift), make_object(b + shift)]
        out = tracker.update(objs)
        got = {("b" if np.allclose(o.centroid, b + shift) else "a"): o.id for o in out}
        assert got == ids


@pytest.mark.parametrize("absent, same_id", [(1, True), (3, True), (4, False)])
def test_vanished_object_keeps_its_id_for_max_missed_frames(absent, same_id):
    tracker = Tracker(TrackerConfig(max_missed=3))
    anchor, mover = [0.5, 0.5, 1.0], [0.0, 0.0, 1.0]
    tracker.update([make_object(anchor), make_object(mover)])
    for _ in range(absent):
        assert [o.id for o in tracker.update([make_object(anchor)])] == [0]
    out = tracker.update([make_object(anchor), make_object(mover)])
    assert out[0].id == 0
    assert out[1].id == (1 if same_id else 2)  # a new track's id is the next unused one


def test_ids_are_never_reused():
    tracker = Tracker(TrackerConfig(max_missed=0))
    seen = []
    for frame in range(6):  # each frame's object is far from the previous one: a new track every frame
        seen += [o.id for o in tracker.update([make_object([frame * 1.0, 0.0, 1.0])])]
        tracker.update([])  # the track dies
    assert seen == list(range(6))
    assert tracker.tracks == ()
    tracker.reset()
    assert tracker.update([make_object([0.0, 0.0, 1.0])])[0].id == 6


def test_a_one_frame_flicker_does_not_change_track_label():
    tracker = Tracker(TrackerConfig(window=5))
    mug, cup = (("mug", 0.6), ("cup", 0.3), ("bowl", 0.1)), (("cup", 0.5), ("mug", 0.4), ("bowl", 0.1))
    for _ in range(4):
        (obj,) = tracker.update([make_object([0, 0, 1], preds=mug)])
        assert obj.track_label == "mug"
    (obj,) = tracker.update([make_object([0, 0, 1], preds=cup)])
    assert obj.label == "cup" and obj.track_label == "mug"
    (obj,) = tracker.update([make_object([0, 0, 1], preds=mug)])
    assert obj.track_label == "mug"


def test_track_label_sums_full_predictions_over_the_window():
    # best labels alternate a, b, a, b, ... but b's runner-up probability is always c's big share:
    # summed over the window, c wins although it is never the best label of a frame
    tracker = Tracker(TrackerConfig(window=4))
    frames = [(("a", 0.45), ("c", 0.40), ("b", 0.15)), (("b", 0.45), ("c", 0.40), ("a", 0.15))]
    for i in range(6):
        (obj,) = tracker.update([make_object([0, 0, 1], preds=frames[i % 2])])
    expected = {}
    for preds in [frames[i % 2] for i in range(2, 6)]:  # the last window=4 frames, summed by hand
        for label, p in preds:
            expected[label] = expected.get(label, 0.0) + p
    assert obj.track_label == max(expected, key=expected.get) == "c"


def test_track_label_follows_a_lasting_change_after_the_window():
    tracker = Tracker(TrackerConfig(window=3))
    for _ in range(5):
        tracker.update([make_object([0, 0, 1], preds=(("mug", 0.9), ("cup", 0.1)))])
    labels = [tracker.update([make_object([0, 0, 1], preds=(("cup", 0.9), ("mug", 0.1)))])[0].track_label
              for _ in range(3)]
    assert labels == ["mug", "cup", "cup"]


def test_hungarian_assignment_beats_greedy_nearest():
    # tracks at x=0 and x=0.06; objects at x=0.05 and x=0.11 (tiny boxes: no overlap, the distance decides).
    # Greedy nearest would give the 0.05 object to the 0.06 track and leave the 0.11 one unmatched; the
    # minimum-cost assignment continues both tracks.
    tracker = Tracker(TrackerConfig(max_distance=0.1))
    first = tracker.update([make_object([0.0, 0, 1], size=0.001), make_object([0.06, 0, 1], size=0.001)])
    out = tracker.update([make_object([0.05, 0, 1], size=0.001), make_object([0.11, 0, 1], size=0.001)])
    assert [o.id for o in out] == [first[0].id, first[1].id]


def test_min_iou_gates_matches():
    tracker = Tracker(TrackerConfig(max_distance=0.2, min_iou=0.5))
    tracker.update([make_object([0, 0, 1], size=0.1)])
    assert tracker.update([make_object([0.01, 0, 1], size=0.1)])[0].id == 0  # IoU 0.82
    assert tracker.update([make_object([0.08, 0, 1], size=0.1)])[0].id == 1  # IoU 0.16: a new track


def _naive_iou(a_lo, a_hi, b_lo, b_hi):
    inter = 1.0
    for k in range(3):
        inter *= max(0.0, min(a_hi[k], b_hi[k]) - max(a_lo[k], b_lo[k]))
    vol = lambda lo, hi: (hi[0] - lo[0]) * (hi[1] - lo[1]) * (hi[2] - lo[2])
    return inter / (vol(a_lo, a_hi) + vol(b_lo, b_hi) - inter)


def test_cost_matrix_matches_a_pairwise_loop():
    rng = np.random.default_rng(0)
    cfg = TrackerConfig(max_distance=0.15, min_iou=0.05)
    tracker = Tracker(cfg)
    t_c, o_c = rng.uniform(0, 0.3, (5, 3)), rng.uniform(0, 0.3, (7, 3))
    t_s, o_s = rng.uniform(0.02, 0.2, (5, 3)), rng.uniform(0.02, 0.2, (7, 3))
    cost = tracker.cost_matrix(t_c, t_c - t_s / 2, t_c + t_s / 2, o_c, o_c - o_s / 2, o_c + o_s / 2)
    assert cost.shape == (5, 7)
    feasible = 0
    for i, j in itertools.product(range(5), range(7)):
        d = float(np.sqrt(((t_c[i] - o_c[j]) ** 2).sum()))
        iou = _naive_iou(t_c[i] - t_s[i] / 2, t_c[i] + t_s[i] / 2, o_c[j] - o_s[j] / 2, o_c[j] + o_s[j] / 2)
        if d <= cfg.max_distance and iou >= cfg.min_iou:
            feasible += 1
            assert cost[i, j] == pytest.approx(d / cfg.max_distance + 1 - iou, abs=1e-12)
        else:
            assert cost[i, j] > 1e5
    assert 0 < feasible < 35  # the draw exercises both branches


def test_box_iou_of_hand_made_boxes():
    lo, hi = np.array([[0.0, 0, 0]]), np.array([[2.0, 2, 2]])
    other_lo = np.array([[1.0, 0, 0], [3.0, 3, 3], [0.0, 0, 0]])
    other_hi = np.array([[3.0, 2, 2], [4.0, 4, 4], [2.0, 2, 2]])
    np.testing.assert_allclose(box_iou(lo, hi, other_lo, other_hi), [[4 / 12, 0.0, 1.0]])
    # a flat box (zero thickness) still overlaps itself
    flat_lo, flat_hi = np.array([[0.0, 0, 0.5]]), np.array([[1.0, 1, 0.5]])
    assert box_iou(flat_lo, flat_hi, flat_lo, flat_hi)[0, 0] == pytest.approx(1.0)


def test_time_going_back_restarts_the_tracks():
    tracker = Tracker()
    assert tracker.update([make_object([0, 0, 1])], stamp_ns=2_000)[0].id == 0
    assert tracker.update([make_object([0, 0, 1])], stamp_ns=3_000)[0].id == 0
    assert tracker.update([make_object([0, 0, 1])], stamp_ns=1_000)[0].id == 1  # a replay from the start


def test_empty_frames_age_tracks_and_return_empty():
    tracker = Tracker(TrackerConfig(max_missed=1))
    tracker.update([make_object([0, 0, 1])])
    assert tracker.update([]) == []
    assert len(tracker.tracks) == 1
    tracker.update([])
    assert tracker.tracks == ()


def test_frozen_objects_are_returned_as_copies():
    @dataclass(frozen=True)
    class Frozen:
        label: str
        probability: float
        predictions: tuple
        centroid: np.ndarray
        bbox_min: np.ndarray
        bbox_max: np.ndarray
        id: Optional[int] = None
        track_label: Optional[str] = None

    obj = Frozen("mug", 0.9, (), np.zeros(3), -np.ones(3) * 0.01, np.ones(3) * 0.01)
    (out,) = Tracker().update([obj])
    assert (out.id, out.track_label) == (0, "mug") and obj.id is None
    assert dataclasses.is_dataclass(out)


def test_config_from_dict_and_validation():
    cfg = TrackerConfig.from_dict({"max_distance": 0.3, "window": 4})
    assert cfg == TrackerConfig(max_distance=0.3, window=4)
    assert Tracker({"max_missed": 2}).config.max_missed == 2
    with pytest.raises(InputError, match="unknown key"):
        TrackerConfig.from_dict({"max_dist": 0.1})
    for bad in ({"max_distance": 0}, {"min_iou": 1.5}, {"max_missed": -1}, {"window": 0}, {"window": 2.5},
                {"max_distance": float("nan")}, {"max_missed": True}):
        with pytest.raises(InputError):
            TrackerConfig.from_dict(bad)


def test_load_tracking_config(tmp_path):
    without = tmp_path / "plain.yaml"
    without.write_text("presets:\n  tabletop: {voxel_size: 0.005}\n")
    assert load_tracking_config("tabletop", config_file=without) == TrackerConfig()
    assert load_tracking_config("tabletop", config_file=without, window=3).window == 3
    with_section = tmp_path / "scene.yaml"
    with_section.write_text("tracking:\n  tabletop: {max_distance: 0.05}\n  room:\n    description: big\n"
                            "    max_distance: 0.3\n    max_missed: 10\n")
    assert load_tracking_config("room", config_file=with_section) == TrackerConfig(max_distance=0.3, max_missed=10)
    assert load_tracking_config("tabletop", config_file=with_section).max_distance == 0.05
    with pytest.raises(InputError, match="choose one of"):
        load_tracking_config("garden", config_file=with_section)


def test_packaged_scene_config_gives_tracking_settings():
    """A tracking preset for every segmentation preset, read through pointfalip.presets as the file holds it."""
    import yaml

    from pointfalip import presets
    from pointfalip.scene import list_segmentation_presets

    path = Path(__file__).resolve().parents[1] / "configs" / "scene.yaml"
    section = yaml.safe_load(path.read_text())["tracking"]
    assert list_tracking_presets() == presets.list_presets("tracking") == list_segmentation_presets() == sorted(section)
    for name in section:
        values = {k: v for k, v in section[name].items() if k != "description"}
        assert load_tracking_config(name) == TrackerConfig(**values)
    assert load_tracking_config("room", window=3).window == 3
    with pytest.raises(InputError, match="choose one of"):
        load_tracking_config("garden")
    assert load_tracking_config("tabletop") == TrackerConfig()  # the dataclass defaults are the tabletop preset


# ---- motion model and size-relative gate -------------------------------------------------------------------------
@pytest.mark.parametrize("rate_hz", [1, 2, 5])
@pytest.mark.parametrize("move", [0.105, 0.125, 0.15])
def test_objects_pushed_by_10_to_15_cm_keep_their_ids(rate_hz, move):
    """Objects of 32-40 cm moved by 10-15 cm between processed frames (beyond the 10 cm gate, below half their
    size), once and then again in another direction, keep their ids; nothing else is near."""
    tracker = Tracker(load_tracking_config("tabletop"))
    period = 1_000_000_000 // rate_hz
    sizes = (0.32, 0.36, 0.40)
    starts = np.array([[0.0, 0.0, 1.0], [0.8, 0.0, 1.0], [0.0, 0.9, 1.0]])
    directions = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.0, 0.8]])
    positions = [starts, starts + move * directions, starts + move * directions + move * directions[::-1]]
    for frame, centres in enumerate(positions):
        out = tracker.update([make_object(c, s) for c, s in zip(centres, sizes)], stamp_ns=frame * period)
        assert [o.id for o in out] == [0, 1, 2]
    assert np.linalg.norm(positions[1][0] - positions[0][0]) > tracker.config.max_distance  # the old rule lost it


def test_constant_motion_is_followed_by_prediction():
    """Size rule: an object that starts at 4 cm a frame and goes on at 8 cm stays matched with a 5 cm gate (its
    predicted centroid is where it is); without prediction it is lost at each 8 cm step."""
    centres = [np.array([x, 0.0, 1.0]) for x in (0.0, 0.04, 0.12, 0.20, 0.28, 0.36)]
    for predict, expected in ((True, [0] * 6), (False, [0, 0, 1, 2, 3, 4])):
        tracker = Tracker(TrackerConfig(gate="size", max_distance=0.05, relative_distance=0.0, predict=predict))
        ids = [tracker.update([make_object(c, 0.06)], stamp_ns=k * 200_000_000)[0].id for k, c in enumerate(centres)]
        assert ids == expected
    tracker = Tracker(TrackerConfig(max_distance=0.05, relative_distance=0.0))
    tracker.update([make_object(centres[0], 0.06)], stamp_ns=0)
    tracker.update([make_object(centres[1], 0.06)], stamp_ns=100_000_000)
    (track,) = tracker.tracks
    np.testing.assert_allclose(track.velocity, [0.4, 0.0, 0.0])  # metres a second from the two stamps
    np.testing.assert_allclose(track.predicted(0.25), [0.10, 0.0, 1.0])  # 0.04 + 0.4 m/s * 0.15 s


def test_two_objects_crossing_near_each_other_keep_their_ids():
    """Two 20 cm objects pass each other 12 cm apart, each moving 6 cm a frame (at the crossing their boxes
    overlap); constant-velocity prediction keeps each on its own track."""
    tracker = Tracker(load_tracking_config("tabletop"))
    for k in range(12):
        a = np.array([-0.33 + 0.06 * k, 0.0, 1.0])
        b = np.array([0.33 - 0.06 * k, 0.12, 1.0])
        objects = [make_object(b, 0.2), make_object(a, 0.2)] if k % 2 else [make_object(a, 0.2), make_object(b, 0.2)]
        out = tracker.update(objects, stamp_ns=k * 500_000_000)
        by_side = {("a" if o.centroid[1] == 0.0 else "b"): o.id for o in out}
        assert by_side == {"a": 0, "b": 1}, k


def test_a_new_object_far_away_gets_a_new_id_and_the_relative_gate_needs_mutual_nearest():
    tracker = Tracker(load_tracking_config("tabletop"))
    big = make_object([0.0, 0.0, 1.0], 0.4)
    tracker.update([big], stamp_ns=0)
    out = tracker.update([make_object([0.0, 0.0, 1.0], 0.4), make_object([1.5, 0.0, 1.0], 0.4)], stamp_ns=10**9)
    assert [o.id for o in out] == [0, 1]
    # 15 cm from track 0 (inside half its 40 cm size) but another object is nearer to it: no steal, a new id
    tracker = Tracker(load_tracking_config("tabletop"))
    tracker.update([make_object([0.0, 0.0, 1.0], 0.4)], stamp_ns=0)
    out = tracker.update([make_object([0.15, 0.0, 1.0], 0.4), make_object([-0.12, 0.0, 1.0], 0.4)], stamp_ns=10**9)
    assert [o.id for o in out] == [1, 0]
    cfg = TrackerConfig(relative_distance=0.5)
    cost = Tracker(cfg).cost_matrix(np.zeros((1, 3)), np.full((1, 3), -0.2), np.full((1, 3), 0.2),
                                    np.array([[0.15, 0.0, 0.0], [0.3, 0.0, 0.0]]),
                                    np.array([[-0.05, -0.2, -0.2], [0.1, -0.2, -0.2]]),
                                    np.array([[0.35, 0.2, 0.2], [0.5, 0.2, 0.2]]))
    iou = box_iou(np.full((1, 3), -0.2), np.full((1, 3), 0.2), np.array([[-0.05, -0.2, -0.2]]),
                  np.array([[0.35, 0.2, 0.2]]))[0, 0]
    assert cost[0, 0] == pytest.approx(0.15 / 0.2 + 1 - iou)  # gate: half the 40 cm side
    assert cost[0, 1] >= 1e6  # 30 cm: beyond both gates


def test_new_tracker_settings_are_checked():
    for bad in ({"relative_distance": -0.1}, {"predict": "yes"}, {"reuse_max_point_ratio": 0.5},
                {"reuse_max_age": 0}, {"reuse_max_move": float("nan")}):
        with pytest.raises(InputError):
            TrackerConfig.from_dict(bad)
