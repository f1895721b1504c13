"""Scene segmentation and SceneRecognizer on synthetic scenes whose objects' places are known.

Every scene is built here: a noisy support plane plus objects sampled from meshes at known places, then
moved by a rigid transform (a camera-like frame, so nothing depends on "z is up"). The expected object
is its own points farther than ``plane_distance`` from the support plane (those the cut must keep), so the
centroids and boxes the segmentation reports are checked against an independent computation.
"""
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh

from pointfalip.errors import InputError
from pointfalip.io import load_points
from pointfalip.recognize import Prediction
from pointfalip.scene import (
    CONFIG_FILE,
    SceneObject,
    RecognizedObject,
    SceneRecognizer,
    SegmentationConfig,
    list_segmentation_presets,
    load_segmentation_config,
    segment,
    segment_scene,
)

MESHES = Path(__file__).resolve().parents[2] / "shared" / "data" / "meshes"
TABLE_SIDE = (1.2, 0.8)  # metres
TABLE_NOISE = 0.002  # metres, standard deviation along the normal
CENTROID_TOL = 0.01  # metres


def _rotation(axis, angle):
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


# a camera about 1 m from the table, looking down at it at an angle
CAMERA_R = _rotation([1.0, 0.3, 0.0], 2.3)
CAMERA_T = np.array([0.05, -0.1, 1.1])


def _to_camera(points):
    return points @ CAMERA_R.T + CAMERA_T


def _plane(rng, side_x, side_y, n, noise):
    return np.c_[rng.uniform(-side_x / 2, side_x / 2, n), rng.uniform(-side_y / 2, side_y / 2, n),
                 rng.normal(0.0, noise, n)]


def _box_points(tmp_path, extents, n, seed):
    """A box sampled through io.load_points from a trimesh-exported STL, resting on z = 0."""
    path = tmp_path / f"box_{seed}.stl"
    trimesh.creation.box(extents=extents).export(path)
    pts = load_points(path, num_points=n, seed=seed).astype(np.float64)
    return pts - [0.0, 0.0, pts[:, 2].min()]


def _sphere_points(tmp_path, radius, n, seed):
    path = tmp_path / f"sphere_{seed}.off"
    trimesh.creation.icosphere(subdivisions=3, radius=radius).export(path)
    pts = load_points(path, num_points=n, seed=seed).astype(np.float64)
    return pts - [0.0, 0.0, pts[:, 2].min()]


def _build(rng, support, objects, keep_above):
    """Scene (float32, camera frame), the source of every row (-1: support), the expected objects.

    objects: list of (points resting on z = 0, (x, y) place). Expected object: its points higher than
    ``keep_above`` over the support plane z = 0, in the camera frame.
    """
    parts, source, expected = [support], [np.full(len(support), -1)], []
    for i, (pts, (x, y)) in enumerate(objects):
        placed = pts + [x, y, 0.0]
        parts.append(placed)
        source.append(np.full(len(placed), i))
        expected.append(_to_camera(placed[placed[:, 2] > keep_above]))
    scene = _to_camera(np.concatenate(parts)).astype(np.float32)
    return scene, np.concatenate(source), expected


def _check_objects(found, source, expected, centroid_tol=CENTROID_TOL, box_tol=0.01, min_recall=0.95):
    assert len(found) == len(expected)
    matched = set()
    for obj in found:
        ids, counts = np.unique(source[obj.indices], return_counts=True)
        owner = int(ids[np.argmax(counts)])
        assert owner >= 0 and owner not in matched
        matched.add(owner)
        exp = expected[owner]
        purity = np.count_nonzero(source[obj.indices] == owner) / obj.num_points
        assert purity >= 0.99
        assert obj.num_points / len(exp) >= min_recall
        assert np.linalg.norm(obj.centroid - exp.mean(axis=0)) < centroid_tol
        # the box holds its object, and no more than its object
        inside = np.all((exp >= obj.bbox_min - 1e-6) & (exp <= obj.bbox_max + 1e-6), axis=1)
        assert inside.mean() >= min_recall
        assert np.all(obj.bbox_min >= exp.min(axis=0) - box_tol)
        assert np.all(obj.bbox_max <= exp.max(axis=0) + box_tol)


@pytest.fixture(scope="module")
def tabletop(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("meshes")
    rng = np.random.default_rng(0)
    table = _plane(rng, *TABLE_SIDE, 60000, TABLE_NOISE)
    objects = [
        (_box_points(tmp, (0.10, 0.10, 0.10), 4000, 1), (-0.30, -0.20)),
        (_box_points(tmp, (0.08, 0.15, 0.20), 5000, 2), (0.20, 0.10)),
        (_box_points(tmp, (0.06, 0.06, 0.06), 3000, 3), (0.35, -0.25)),
        (_sphere_points(tmp, 0.05, 4000, 4), (0.00, -0.10)),
        (_sphere_points(tmp, 0.08, 5000, 5), (-0.35, 0.20)),
    ]
    cfg = SegmentationConfig()
    scene, source, expected = _build(rng, table, objects, cfg.plane_distance)
    return scene, source, expected


# ---------------------------------------------------------------------------------------------- segmentation

def test_tabletop_scene_finds_every_object_at_its_place(tabletop):
    scene, source, expected = tabletop
    result = segment_scene(scene)
    _check_objects(result.objects, source, expected)
    # the table went, as one plane whose normal is the table's (z of the table frame, in the camera frame)
    assert len(result.planes) == 1
    assert abs(abs(result.planes[0].normal @ CAMERA_R[:, 2]) - 1) < 1e-3
    assert result.planes[0].num_points >= np.count_nonzero(source == -1) * 0.99


def test_objects_report_full_resolution_input_points(tabletop):
    scene, _, _ = tabletop
    cfg = SegmentationConfig()
    for obj in segment(scene, cfg):
        assert isinstance(obj, SceneObject)
        assert obj.points.dtype == np.float32 and obj.points.shape == (obj.num_points, 3)
        np.testing.assert_array_equal(obj.points, scene[obj.indices])  # rows of the input, not voxel means
        voxels = np.unique(np.floor(obj.points / cfg.voxel_size).astype(np.int64), axis=0)
        assert obj.num_points > len(voxels)  # denser than the downsampled cloud
        np.testing.assert_allclose(obj.centroid, obj.points.astype(np.float64).mean(axis=0), atol=1e-6)
        np.testing.assert_allclose(obj.bbox_min, obj.points.min(axis=0), atol=1e-6)
        np.testing.assert_allclose(obj.bbox_max, obj.points.max(axis=0), atol=1e-6)


def test_objects_are_ordered_nearest_first_and_deterministic(tabletop):
    scene, _, _ = tabletop
    first, second = segment(scene), segment(scene)
    distances = [np.linalg.norm(o.centroid) for o in first]
    assert distances == sorted(distances)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.indices, b.indices)


def test_nan_rows_are_dropped_and_indices_refer_to_the_input(tabletop):
    scene, source, expected = tabletop
    holes = np.full((5000, 3), np.nan, dtype=np.float32)
    holes[::2, 0] = np.inf
    perm = np.random.default_rng(1).permutation(len(scene) + len(holes))  # holes spread through the cloud
    noisy = np.concatenate([scene, holes])[perm]
    noisy_source = np.concatenate([source, np.full(len(holes), -2)])[perm]
    found = segment(noisy)
    for obj in found:
        assert np.isfinite(obj.points).all()
        np.testing.assert_array_equal(obj.points, noisy[obj.indices])
    _check_objects(found, noisy_source, expected)


def test_plane_only_empty_and_all_nan_scenes_give_no_objects():
    rng = np.random.default_rng(2)
    table = _to_camera(_plane(rng, *TABLE_SIDE, 40000, TABLE_NOISE)).astype(np.float32)
    assert segment(table) == []
    assert segment(np.zeros((0, 3), dtype=np.float32)) == []
    assert segment(np.full((1000, 3), np.nan, dtype=np.float32)) == []
    assert segment(table[:10]) == []  # too few points for anything


def test_a_lone_object_keeps_its_top_face(tmp_path):
    """After the table goes, a cube's top face holds a fifth of what is left: it must not go as a 'plane'."""
    rng = np.random.default_rng(3)
    table = _plane(rng, *TABLE_SIDE, 60000, TABLE_NOISE)
    scene, source, expected = _build(rng, table, [(_box_points(tmp_path, (0.12, 0.12, 0.12), 5000, 6), (0.1, 0.0))],
                                     SegmentationConfig().plane_distance)
    result = segment_scene(scene)
    assert len(result.planes) == 1
    _check_objects(result.objects, source, expected)


def test_equal_height_boxes_in_a_row_keep_their_tops(tmp_path):
    """Coplanar tops of several boxes span more than min_plane_size together, but are no connected surface."""
    rng = np.random.default_rng(4)
    table = _plane(rng, *TABLE_SIDE, 60000, TABLE_NOISE)
    objects = [(_box_points(tmp_path, (0.1, 0.1, 0.08), 3000, 10 + i), (x, 0.0)) for i, x in
               enumerate((-0.45, -0.25, -0.05, 0.15, 0.35))]
    scene, source, expected = _build(rng, table, objects, SegmentationConfig().plane_distance)
    result = segment_scene(scene)
    assert len(result.planes) == 1
    _check_objects(result.objects, source, expected)


def test_real_meshes_on_a_table():
    paths = [MESHES / name for name in ("chair_0001.off", "stool_0002.off", "toilet_0001.off")]
    if not all(p.is_file() for p in paths):
        pytest.skip(f"reference meshes absent from {MESHES}")
    rng = np.random.default_rng(5)
    objects = []
    for path, place in zip(paths, [(-0.3, -0.15), (0.05, 0.15), (0.35, -0.1)]):
        pts = load_points(path, num_points=20000, seed=0).astype(np.float64)  # ModelNet meshes are z-up
        pts = (pts - pts.mean(axis=0)) * (0.2 / np.ptp(pts, axis=0).max())  # about 20 cm
        objects.append((pts - [0.0, 0.0, pts[:, 2].min()], place))
    table = _plane(rng, *TABLE_SIDE, 60000, TABLE_NOISE)
    scene, source, expected = _build(rng, table, objects, SegmentationConfig().plane_distance)
    _check_objects(segment(scene), source, expected, min_recall=0.9)


def test_small_clusters_are_dropped_by_min_object_points(tabletop):
    """min/max_object_points count downsampled points (occupied voxels), not input points."""
    scene, source, expected = tabletop
    cfg = SegmentationConfig()
    occupied = sorted((len(np.unique(np.floor(e / cfg.voxel_size).astype(np.int64), axis=0)), i)
                      for i, e in enumerate(expected))
    (smallest, small_id), (second, _) = occupied[:2]
    assert second > 1.3 * smallest  # the 6 cm cube is well apart from the others
    threshold = int(np.sqrt(smallest * second))
    kept = segment(scene, load_segmentation_config(min_object_points=threshold))
    owners = {int(np.bincount(source[o.indices] + 1).argmax()) - 1 for o in kept}
    assert owners == set(range(len(expected))) - {small_id}
    kept = segment(scene, load_segmentation_config(max_object_points=threshold))
    owners = {int(np.bincount(source[o.indices] + 1).argmax()) - 1 for o in kept}
    assert owners == {small_id}


def test_room_preset_on_a_floor_with_a_wall(tmp_path):
    cfg = load_segmentation_config("room")
    rng = np.random.default_rng(6)
    noise = 0.005
    floor = _plane(rng, 4.0, 4.0, 80000, noise)
    wall = np.c_[rng.uniform(-2, 2, 50000), 2.0 + rng.normal(0, noise, 50000), rng.uniform(0, 2.5, 50000)]
    objects = [
        (_box_points(tmp_path, (0.6, 0.6, 0.8), 12000, 20), (-1.0, -0.5)),  # a cabinet
        (_box_points(tmp_path, (1.2, 0.6, 0.75), 15000, 21), (0.8, 0.6)),  # a table-sized box: its top stays
        (_sphere_points(tmp_path, 0.3, 10000, 22), (0.3, -1.2)),  # a big ball
    ]
    scene, source, expected = _build(rng, np.concatenate([floor, wall]), objects, cfg.plane_distance)
    source[len(floor):len(floor) + len(wall)] = -1
    result = segment_scene(scene, cfg)
    assert len(result.planes) == 2  # the floor and the wall
    _check_objects(result.objects, source, expected, centroid_tol=0.02, box_tol=0.04)


# ---------------------------------------------------------------------------------------------- settings

def test_tabletop_preset_is_the_dataclass_default():
    assert load_segmentation_config() == SegmentationConfig()
    assert load_segmentation_config("tabletop") == SegmentationConfig()
    room = load_segmentation_config("room")
    assert room.voxel_size > SegmentationConfig().voxel_size
    assert room.cluster_tolerance > SegmentationConfig().cluster_tolerance
    assert set(list_segmentation_presets()) >= {"tabletop", "room"}
    assert CONFIG_FILE.is_file()


def test_overrides_and_bad_settings():
    cfg = load_segmentation_config("room", voxel_size=0.03, max_planes=1)
    assert cfg.voxel_size == 0.03 and cfg.max_planes == 1
    assert cfg.cluster_tolerance == load_segmentation_config("room").cluster_tolerance
    with pytest.raises(InputError, match="unknown segmentation preset 'kitchen'.*room.*tabletop"):
        load_segmentation_config("kitchen")
    with pytest.raises(InputError, match="segmentation preset tabletop: unknown key voxel"):
        load_segmentation_config(voxel=0.01)
    for bad in ({"voxel_size": -0.01}, {"plane_distance": 0}, {"cluster_tolerance": float("nan")},
                {"min_plane_fraction": 1.5}, {"max_planes": -1}, {"min_object_points": 0},
                {"min_object_points": 100, "max_object_points": 10}, {"plane_iterations": 2.5},
                {"max_planes": True}):
        with pytest.raises(InputError):
            SegmentationConfig(**bad)


def test_config_file_with_a_partial_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("presets:\n  shelf:\n    voxel_size: 0.004\n    max_planes: 3\n")
    cfg = load_segmentation_config("shelf", config_file=path)
    assert cfg == SegmentationConfig(voxel_size=0.004, max_planes=3)
    (tmp_path / "bad.yaml").write_text("just: text\n")
    with pytest.raises(InputError, match="no 'presets'"):
        load_segmentation_config("shelf", config_file=tmp_path / "bad.yaml")


def test_an_object_without_a_table_is_one_object(tmp_path):
    """A cropped cloud of a single object: its largest face is no support plane, nothing is removed."""
    import torch

    pts = _to_camera(_box_points(tmp_path, (0.15, 0.1, 0.12), 6000, 40))
    result = segment_scene(torch.from_numpy(pts))  # tensors are accepted too
    assert result.planes == []
    (obj,) = result.objects
    assert obj.num_points >= 0.95 * len(pts)  # statistical outlier removal trims a few corner points
    assert np.linalg.norm(obj.centroid - pts.mean(axis=0)) < 0.005


def test_bad_scene_points_raise_input_error():
    for bad in (np.zeros((10, 2)), np.zeros(30), "points", np.array([["a", "b", "c"]])):
        with pytest.raises(InputError):
            segment(bad)


# ---------------------------------------------------------------------------------------------- recognition glue

class FakeRecognizer:
    """Labels a cloud by its number of points; counts calls; checks that calls never overlap."""

    LABELS = ("small", "medium", "large")
    SIZES = (1000.0, 3000.0, 6000.0)

    def __init__(self, delay=0.0):
        self.calls = []
        self.delay = delay
        self.active = 0
        self.max_active = 0
        self.last_timings = {}

    def classify(self, clouds, top_k=5):
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        time.sleep(self.delay)
        self.calls.append([len(c) for c in clouds])
        out = []
        for cloud in clouds:
            assert cloud.ndim == 2 and cloud.shape[1] == 3
            logits = -np.abs(np.log(len(cloud)) - np.log(self.SIZES))
            scores = np.exp(logits) / np.exp(logits).sum()
            order = np.argsort(-scores, kind="stable")[:top_k]
            out.append([Prediction(self.LABELS[i], float(scores[i])) for i in order])
        self.last_timings = {"projection": 0.001, "encoder": 0.002}
        self.active -= 1
        return out


def test_scene_recognizer_outputs_one_entry_per_object(tabletop):
    scene, _, _ = tabletop
    fake = FakeRecognizer()
    sr = SceneRecognizer(fake, top_k=2)
    recognized = sr(scene)
    objects = segment(scene)
    assert len(recognized) == len(objects) == 5
    assert fake.calls == [[o.num_points for o in objects]]  # one batched call for all objects
    for rec_obj, obj in zip(recognized, objects):  # typed results keep each object's points and rows
        assert isinstance(rec_obj, RecognizedObject)
        np.testing.assert_array_equal(rec_obj.indices, obj.indices)
        np.testing.assert_array_equal(rec_obj.points, obj.points)
        assert rec_obj.probability == rec_obj.predictions[0].probability
    results = [o.to_dict() for o in recognized]
    for res, obj in zip(results, objects):
        assert set(res) == {"label", "score", "top_k", "centroid", "bbox_min", "bbox_max", "num_points", "reused"}
        assert len(res["top_k"]) == 2
        assert res["label"] == res["top_k"][0]["label"]
        assert res["score"] == res["top_k"][0]["score"] and type(res["score"]) is float
        expected_label = FakeRecognizer.LABELS[int(np.argmin(np.abs(np.log(obj.num_points)
                                                                    - np.log(FakeRecognizer.SIZES))))]
        assert res["label"] == expected_label
        assert res["num_points"] == obj.num_points
        np.testing.assert_allclose(res["centroid"], obj.centroid)
        np.testing.assert_allclose(res["bbox_min"], obj.bbox_min)
        np.testing.assert_allclose(res["bbox_max"], obj.bbox_max)
    assert json.loads(json.dumps(results)) == results
    t = sr.last_timings
    assert {"segmentation", "recognition", "wait", "total", "projection", "encoder"} <= set(t)
    assert t["projection"] == 0.001 and t["encoder"] == 0.002
    assert t["total"] >= t["segmentation"] + t["recognition"] - 1e-9


def test_scene_recognizer_without_objects_does_not_call_the_model():
    fake = FakeRecognizer()
    sr = SceneRecognizer(fake)
    rng = np.random.default_rng(7)
    assert sr(_plane(rng, *TABLE_SIDE, 20000, TABLE_NOISE)) == []  # no object: an empty list, not an error
    assert sr(np.full((100, 3), np.nan)) == []
    assert fake.calls == []
    assert sr.last_timings["recognition"] == 0.0


def test_scene_recognizer_checks_its_arguments_and_the_model_output(tabletop):
    with pytest.raises(TypeError):
        SceneRecognizer(object())
    with pytest.raises(InputError):
        SceneRecognizer(FakeRecognizer(), top_k=0)

    class Wrong(FakeRecognizer):
        def classify(self, clouds, top_k=5):
            return super().classify(clouds, top_k)[:-1]

    with pytest.raises(RuntimeError, match="prediction lists"):
        SceneRecognizer(Wrong())(tabletop[0])


def test_scene_recognizer_from_two_threads_matches_sequential_calls(tabletop, tmp_path):
    scene_a = tabletop[0]
    rng = np.random.default_rng(8)
    table = _plane(rng, *TABLE_SIDE, 40000, TABLE_NOISE)
    scene_b, _, _ = _build(rng, table, [(_box_points(tmp_path, (0.1, 0.2, 0.15), 6000, 30), (0.0, 0.0)),
                                        (_sphere_points(tmp_path, 0.06, 3000, 31), (0.3, 0.2))], 0.01)
    frames = [scene_a, scene_b, scene_b, scene_a]

    sequential = SceneRecognizer(FakeRecognizer())
    expected = [sequential(f) for f in frames]
    assert [o.to_dict() for o in expected[0]] != [o.to_dict() for o in expected[1]]

    fake = FakeRecognizer(delay=0.02)
    shared = SceneRecognizer(fake)
    got = {}
    errors = []

    def worker(name, indices):
        try:
            for i in indices:
                got[i] = shared.recognize(frames[i])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=("a", [0, 2])), threading.Thread(target=worker, args=("b", [1, 3]))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert fake.max_active == 1  # the model is never entered twice at once
    for i in range(len(frames)):
        assert [o.to_dict() for o in got[i].objects] == [o.to_dict() for o in expected[i]]
        assert {"segmentation", "recognition", "projection", "encoder"} <= set(got[i].timings)


# ---------------------------------------------------------------------------------------------- tracking

def test_scene_recognizer_tracks_objects_moving_a_few_centimetres(tabletop):
    scene = tabletop[0]
    sr = SceneRecognizer(FakeRecognizer(), track=True, tracking={"max_distance": 0.1, "max_missed": 1})
    assert sr.track and sr.tracking.max_missed == 1
    shift = np.array([0.02, -0.015, 0.01])  # metres a frame, in the scene's (camera-like) frame
    results = [sr.recognize(scene + k * shift, stamp_ns=k * 100_000_000, frame_id="cam") for k in range(3)]
    first = results[0].objects
    assert sorted(o.id for o in first) == list(range(5))
    for k, result in enumerate(results):
        assert "tracking" in result.timings and result.timings["tracking"] >= 0
        assert result.timings["total"] >= result.timings["tracking"]
        for obj in result.objects:
            origin = min(first, key=lambda o: np.linalg.norm(o.centroid + k * shift - obj.centroid))
            assert np.linalg.norm(origin.centroid + k * shift - obj.centroid) < CENTROID_TOL
            assert obj.id == origin.id and obj.track_label == obj.label  # a steady label is its own smoothing
            assert obj.to_dict()["id"] == obj.id and obj.to_dict()["track_label"] == obj.track_label

    # empty frames run the tracker too: after more than max_missed of them the objects come back with new ids
    for k in (3, 4):
        empty = sr.recognize(np.zeros((0, 3)), stamp_ns=k * 100_000_000)
        assert empty.objects == [] and "tracking" in empty.timings
    assert sr.tracker.tracks == ()
    again = sr.recognize(scene + 5 * shift, stamp_ns=500_000_000)
    assert sorted(o.id for o in again.objects) == list(range(5, 10))
    sr.reset_tracking()
    assert sorted(o.id for o in sr.recognize(scene + 5 * shift).objects) == list(range(10, 15))


def test_scene_recognizer_without_tracking_sets_no_ids(tabletop):
    sr = SceneRecognizer(FakeRecognizer())
    result = sr.recognize(tabletop[0], stamp_ns=1)
    assert not sr.track and sr.tracker is None and "tracking" not in result.timings
    assert all(o.id is None and "id" not in o.to_dict() for o in result.objects)
    with pytest.raises(InputError, match="unknown key"):
        SceneRecognizer(FakeRecognizer(), track=True, tracking={"max_dist": 0.1})
    with pytest.raises(InputError):
        SceneRecognizer(FakeRecognizer(), tracking="tabletop")
