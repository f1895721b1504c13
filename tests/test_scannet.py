"""pointfalip.scannet: synthetic scenes written by the tests in ScanNet v2's exact layout (PLY mesh with colours and
faces, segments, aggregation, axisAlignment, label table, split files) read back; instances and boxes after the
alignment; the benchmark's prediction format written and read exactly; both metrics on a hand-computed scene and
against loop-by-loop transcriptions of ScanNet's evaluate_semantic_instance.py and VoteNet's eval_det.py rules on
random scenes; predictions of a random-weight model; bad inputs -> one-line InputErrors."""
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import trimesh
from conftest import raises_one_line

from pointfalip import scannet
from pointfalip.datasets import open_dataset
from pointfalip.scannet import (BENCHMARK_IDS, InstancePrediction, Scene, SceneMatches, label_ids_for,
                                matches_report, open_scannet, read_predictions, scene_matches, write_predictions)

OVERLAPS = np.append(np.arange(0.5, 0.95, 0.05), 0.25)
IDS = [3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39]  # written out from the benchmark script
NAMES = ["cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf", "picture", "counter", "desk",
         "curtain", "refrigerator", "shower curtain", "toilet", "sink", "bathtub", "otherfurniture"]
# a few rows of scannetv2-labels.combined.tsv: raw category -> NYU40 id
TABLE = {"wall": 1, "floor": 2, "chair": 5, "office chair": 5, "table": 7, "kitchen cabinets": 3, "lamp": 35,
         "trash can": 39, "door": 8}
ROTATE_Z_90_AND_SHIFT = np.array([[0, -1, 0, 1], [1, 0, 0, 2], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)


# ---- writing the release's layout ----------------------------------------------------------------------------------
def write_table(root: Path) -> None:
    header = "id\traw_category\tcategory\tcount\tnyu40id\teigen13id\tnyuClass\tnyu40class\tmpcat40index\tmpcat40\n"
    rows = "".join(f"{k}\t{raw}\t{raw}\t10\t{nyu}\t1\t{raw}\t{raw}\t1\t{raw}\n"
                   for k, (raw, nyu) in enumerate(TABLE.items(), 1))
    (root / "scannetv2-labels.combined.tsv").write_text(header + rows)


def write_scene(root: Path, scene_id: str, vertices, segments, groups, alignment=None, folder="scans",
                colors=None, faces=None):
    """scans/<id>/: the _vh_clean_2.ply mesh (binary, x y z red green blue alpha, triangle faces), segs.json,
    aggregation.json (groups: (objectId, raw label, [segment ids]) in file order) and <id>.txt."""
    d = root / folder / scene_id
    d.mkdir(parents=True, exist_ok=True)
    vertices = np.asarray(vertices, dtype=np.float32)
    n = len(vertices)
    if colors is None:
        colors = np.c_[np.arange(n) % 256, (np.arange(n) * 7) % 256, (np.arange(n) * 13) % 256].astype(np.uint8)
    if faces is None:
        faces = np.array([[i, i + 1, i + 2] for i in range(0, n - 2, 3)])
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=np.c_[colors, np.full(n, 255, np.uint8)],
                           process=False)
    (d / f"{scene_id}_vh_clean_2.ply").write_bytes(mesh.export(file_type="ply", encoding="binary"))
    (d / f"{scene_id}_vh_clean_2.0.010000.segs.json").write_text(json.dumps(
        {"params": {"kThresh": "0.0001", "segMinVerts": "20"}, "sceneId": scene_id,
         "segIndices": [int(s) for s in segments]}))
    if groups is not None:
        (d / f"{scene_id}.aggregation.json").write_text(json.dumps(
            {"sceneId": f"scannet.{scene_id}", "appId": "Aggregator.v2", "segmentsFile":
             f"scannet.{scene_id}_vh_clean_2.0.010000.segs.json", "segGroups": [
                 {"id": oid, "objectId": oid, "segments": list(segs), "label": label} for oid, label, segs in groups]}))
    meta = "colorHeight = 968\ncolorWidth = 1296\n"
    if alignment is not None:
        meta += "axisAlignment = " + " ".join(f"{v:g}" for v in np.asarray(alignment).ravel()) + "\n"
    (d / f"{scene_id}.txt").write_text(meta + "numDepthFrames = 100\n")
    return d


def cube(center, n, seed, size=0.5):
    rng = np.random.default_rng(seed)
    return (np.asarray(center, dtype=np.float64) + rng.uniform(-size / 2, size / 2, (n, 3))).astype(np.float32)


def reader_scene(root: Path, scene_id="scene0000_00"):
    """Floor (void), chair (objectId 2, segments 10 and 11), table (objectId 0, segments 20 and 11: the table's group
    comes later in the file, so segment 11 is the table's), lamp (not a benchmark class), a 60-vertex office chair and
    unannotated vertices. Returns the vertices and the expected instance of each vertex (objectId order)."""
    parts = [("floor", 200, 0), ("chair", 150, 10), ("chair11", 40, 11), ("table", 120, 20), ("lamp", 80, 30),
             ("office chair", 60, 40), ("none", 50, 50)]
    vertices = np.concatenate([cube((k, 0, 0.5), n, k) for k, (_, n, _) in enumerate(parts)])
    segments = np.concatenate([np.full(n, s) for _, n, s in parts])
    groups = [(2, "chair", [10, 11]), (4, "floor", [0]), (0, "table", [20, 11]), (1, "lamp", [30]),
              (3, "office chair", [40])]
    write_scene(root, scene_id, vertices, segments, groups, ROTATE_Z_90_AND_SHIFT)
    # instances by objectId: 0 table (seg 20 + 11), 1 lamp, 2 chair (seg 10), 3 office chair, 4 floor
    expected = np.full(len(vertices), -1)
    expected[segments == 20] = expected[segments == 11] = 0
    expected[segments == 30], expected[segments == 10], expected[segments == 40], expected[segments == 0] = 1, 2, 3, 4
    return vertices, expected


@pytest.fixture
def release(tmp_path):
    write_table(tmp_path)
    reader_scene(tmp_path)
    (tmp_path / "scannetv2_val.txt").write_text("scene0000_00\n")
    return tmp_path


# ---- the reader ----------------------------------------------------------------------------------------------------
def test_reader_instances_labels_colours_and_alignment(release):
    vertices, expected = reader_scene(release)
    ds = open_scannet(release, "val")
    assert ds.scene_ids == ["scene0000_00"] and len(ds) == 1 and ds.classes == NAMES and ds.up_axis == "z"
    scene = ds.scene(0)
    np.testing.assert_array_equal(scene.vertices, vertices)
    assert scene.colors.dtype == np.uint8 and scene.colors[7].tolist() == [7, 49, 91]
    assert scene.faces.shape == (len(vertices) // 3, 3)
    np.testing.assert_array_equal(scene.instance, expected)
    assert scene.instance_object_ids.tolist() == [0, 1, 2, 3, 4]
    assert scene.instance_labels.tolist() == [7, 35, 5, 5, 2]
    assert scene.instance_raw_labels == ("table", "lamp", "chair", "office chair", "floor")
    assert scene.instance_sizes().tolist() == [160, 80, 150, 60, 200]
    assert scene.benchmark_instances().tolist() == [0, 2, 3]  # table, chair, office chair
    np.testing.assert_array_equal(scene.alignment, ROTATE_Z_90_AND_SHIFT)
    # aligned: (x, y, z) -> (1 - y, x + 2, z), stored as float32
    x, y, z = vertices.astype(np.float64).T
    aligned = np.c_[1 - y, x + 2, z].astype(np.float32)
    np.testing.assert_array_equal(scene.aligned, aligned)
    boxes = scene.instance_boxes()
    chair = aligned[expected == 2].astype(np.float64)
    np.testing.assert_array_equal(boxes[2], np.r_[chair.min(0), chair.max(0)])
    assert 2.75 <= boxes[2, 1] < boxes[2, 4] <= 3.25  # the chair sat at x = 0.75..1.25 before the turn
    np.testing.assert_array_equal(scene.instance_masks([2])[0], expected == 2)


def test_registry_splits_limit_and_test_scenes(release):
    vertices, _ = reader_scene(release, "scene0001_00")
    write_scene(release, "scene0707_00", vertices, np.zeros(len(vertices)), None, folder="scans_test")
    (release / "scannetv2_val.txt").write_text("scene0000_00\nscene0001_00\n")
    (release / "scannetv2_test.txt").write_text("scene0707_00\n")
    ds = open_dataset("ScanNet", release, split="val", limit=1)
    assert isinstance(ds, scannet.ScanNetDataset) and ds.scene_ids == ["scene0000_00"]
    assert len(open_scannet(release, "val")) == 2
    test = open_scannet(release, "test")
    scene = test.scene(0)
    assert not scene.annotated and scene.num_vertices == len(vertices)
    assert "no annotations" in raises_one_line(scene_matches, scene, [])
    listing = release / "mine.txt"
    listing.write_text("scene0001_00\n")
    assert open_scannet(release, split_file=listing).scene_ids == ["scene0001_00"]
    points, label = ds[0]
    assert points.shape == (len(vertices), 3) and label == -1
    # scans/ itself as the root: the table and split files are found in its parent
    assert open_scannet(release / "scans", "val").scene_ids == ["scene0000_00", "scene0001_00"]


def test_scene_without_alignment_keeps_its_frame(release, caplog):
    vertices, _ = reader_scene(release)
    meta = release / "scans" / "scene0000_00" / "scene0000_00.txt"
    meta.write_text("colorHeight = 968\n")
    with caplog.at_level(logging.WARNING):
        scene = open_scannet(release).scene(0)
    np.testing.assert_array_equal(scene.aligned, vertices)
    assert "no axisAlignment" in caplog.text


def test_bad_releases_are_one_line_errors(release):
    assert "no such folder" in raises_one_line(open_scannet, release / "nowhere")
    assert "unknown ScanNet split" in raises_one_line(open_scannet, release, "dev")
    assert "scannetv2_train.txt" in raises_one_line(open_scannet, release, "train")
    (release / "scannetv2_train.txt").write_text("scene0999_00\n")
    assert "scene0999_00" in raises_one_line(open_scannet, release, "train")
    (release / "scannetv2_train.txt").write_text("../../etc\n")
    assert "not a scene id" in raises_one_line(open_scannet, release, "train")
    (release / "scannetv2-labels.combined.tsv").unlink()
    assert "scannetv2-labels.combined.tsv" in raises_one_line(open_scannet, release, "val")


def _broken(release, name, content):
    write_table(release)
    path = release / "scans" / "scene0000_00" / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return lambda: open_scannet(release).scene(0)


@pytest.mark.parametrize("name,content,words", [
    ("scene0000_00_vh_clean_2.ply", b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
     b"property float z\nend_header\n0 0 0\n1 0 0\n0 1 0\n", "not a mesh"),
    ("scene0000_00_vh_clean_2.ply", b"this is no mesh at all", "ply"),
    ("scene0000_00_vh_clean_2.0.010000.segs.json", '{"segIndices": [0, 0, 1]}', "segment ids but the mesh has"),
    ("scene0000_00_vh_clean_2.0.010000.segs.json", "{not json", "not valid JSON"),
    ("scene0000_00.aggregation.json", '{"segGroups": [{"objectId": 0, "label": "chair", "segments": [77]}]}',
     "segment 77"),
    ("scene0000_00.aggregation.json", '{"segGroups": [{"objectId": 0, "label": "sofa bed", "segments": [10]}]}',
     "sofa bed"),
    ("scene0000_00.aggregation.json", '{"segGroups": [{"objectId": "x", "label": "chair", "segments": [10]}]}',
     "objectId"),
    ("scene0000_00.txt", "axisAlignment = 1 0 0 0 1 0 0 0 1\n", "16 finite numbers"),
])
def test_bad_scene_files_are_one_line_errors(release, name, content, words):
    assert words in raises_one_line(_broken(release, name, content))


def test_missing_scene_files_are_one_line_errors(release):
    folder = release / "scans" / "scene0000_00"
    for name in ("scene0000_00_vh_clean_2.0.010000.segs.json", "scene0000_00.txt", "scene0000_00_vh_clean_2.ply"):
        (folder / name).unlink()
        assert name in raises_one_line(lambda: open_scannet(release).scene(0))
        reader_scene(release)


def test_label_ids_for_names_and_mappings():
    assert label_ids_for(scannet.benchmark_labels()) == IDS
    assert label_ids_for(NAMES) == IDS
    assert label_ids_for(["Wall", "night_stand", "Other Furniture", "refridgerator"]) == [1, 32, 39, 24]
    assert label_ids_for({"couch": 6, "mug": 40}) == [6, 40]
    assert "spaceship" in raises_one_line(label_ids_for, ["chair", "spaceship"])


# ---- the prediction format -----------------------------------------------------------------------------------------
def test_predictions_round_trip_exactly(tmp_path):
    rng = np.random.default_rng(0)
    preds = [InstancePrediction(rng.random(500) < 0.3, int(label), float(conf))
             for label, conf in [(5, 0.1 + 0.2), (7, 1 / 3), (1, 1e-7), (5, 0.5)]]
    txt = write_predictions(tmp_path / "out", "scene0000_00", preds)
    lines = txt.read_text().splitlines()
    assert lines[0].split()[:2] == ["pred_mask/scene0000_00_0.txt", "5"]
    mask_text = (tmp_path / "out" / "pred_mask" / "scene0000_00_0.txt").read_text().splitlines()
    assert mask_text == [str(int(v)) for v in preds[0].mask]
    back = read_predictions(tmp_path / "out", "scene0000_00", 500)
    assert [(p.label_id, p.confidence) for p in back] == [(p.label_id, p.confidence) for p in preds]
    for a, b in zip(back, preds):
        np.testing.assert_array_equal(a.mask, b.mask)
    # written again with fewer predictions: the new .txt names only the new masks
    write_predictions(tmp_path / "out", "scene0000_00", preds[:1])
    assert len(read_predictions(tmp_path / "out", "scene0000_00", 500)) == 1


def test_predictions_other_tools_write(tmp_path, caplog):
    # non-zero integers are the instance, CRLF lines, a label id as a float, a mask listed twice (the last counts)
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "a.txt").write_text("0\r\n2\r\n-1\r\n0\r\n")
    (tmp_path / "masks" / "b.txt").write_text("1\n1\n0\n0\n")
    (tmp_path / "s.txt").write_text("masks/a.txt 5 0.5\n\nmasks/b.txt 7.0 0.25\nmasks/a.txt 3 0.75\n")
    with caplog.at_level(logging.WARNING):
        preds = read_predictions(tmp_path, "s", 4)
    assert [(p.mask.tolist(), p.label_id, p.confidence) for p in preds] == [
        ([False, True, True, False], 3, 0.75), ([True, True, False, False], 7, 0.25)]
    assert "listed again" in caplog.text


@pytest.mark.parametrize("line,mask,words", [
    ("masks/a.txt 5", "1\n0\n", "expected '<mask path> <label id> <confidence>'"),
    ("masks/zz.txt 5 0.5", "1\n0\n", "does not exist"),
    ("masks/a.txt 5 0.5", "1\n0\n1\n", "has 3 lines but the mesh has 2"),
    ("masks/a.txt 5 0.5", "1\nx\n", "line 2"),
    ("masks/a.txt nan 0.5", "1\n0\n", "finite"),
    ("masks/a.txt 5 inf", "1\n0\n", "finite"),
    ("masks/a.txt chair 0.5", "1\n0\n", "must be numbers"),
    ("/etc/passwd 5 0.5", "1\n0\n", "relative"),
    ("../a.txt 5 0.5", "1\n0\n", "outside the predictions folder"),
])
def test_bad_predictions_are_one_line_errors(tmp_path, line, mask, words):
    (tmp_path / "p" / "masks").mkdir(parents=True)
    (tmp_path / "p" / "masks" / "a.txt").write_text(mask)
    (tmp_path / "a.txt").write_text("1\n0\n")
    (tmp_path / "p" / "s.txt").write_text(line + "\n")
    assert words in raises_one_line(read_predictions, tmp_path / "p", "s", 2)


def test_missing_prediction_file_and_bad_writes(tmp_path):
    assert "nothing for scene s" in raises_one_line(read_predictions, tmp_path, "s", 2)
    bad = InstancePrediction(np.ones(3, bool), 5, float("nan"))
    assert "finite" in raises_one_line(write_predictions, tmp_path, "s", [bad])
    assert not (tmp_path / "s.txt").exists()


# ---- metrics on a scene computed by hand ---------------------------------------------------------------------------
def hand_scene(root: Path, scene_id="scene0000_00"):
    """chair 1 (150 vertices), chair 2 (150), table (150) far apart; floor (100, void) and 50 unannotated vertices."""
    parts = [(0, "chair", 150, (0, 0, 0)), (1, "chair", 150, (3, 0, 0)), (2, "table", 150, (6, 0, 0)),
             (3, "floor", 100, (0, 3, 0)), (None, None, 50, (0, 6, 0))]
    vertices = np.concatenate([cube(c, n, k) for k, (_, _, n, c) in enumerate(parts)])
    segments = np.concatenate([np.full(n, k) for k, (_, _, n, _) in enumerate(parts)])
    groups = [(oid, label, [k]) for k, (oid, label, _, _) in enumerate(parts) if oid is not None]
    write_scene(root, scene_id, vertices, segments, groups, np.eye(4))
    return {name: segments == k for k, name in enumerate(["chair1", "chair2", "table", "floor", "none"])}


def test_hand_computed_scene_both_metrics_through_files(tmp_path):
    write_table(tmp_path)
    region = hand_scene(tmp_path)
    (tmp_path / "scannetv2_val.txt").write_text("scene0000_00\n")
    preds = [
        InstancePrediction(region["chair1"], 5, 0.9),  # TP
        InstancePrediction(region["table"], 5, 0.7),  # FP: annotated table vertices
        InstancePrediction(region["chair2"], 5, 0.5),  # TP
        InstancePrediction(region["chair1"], 1, 0.99),  # wall: a NYU40 id outside the 18 classes, ignored
        InstancePrediction(region["floor"], 7, 0.8),  # table on void vertices: ignored by ScanNet, a box FP
        InstancePrediction(region["none"], 5, 0.95),  # 50 vertices: under ScanNet's minimum, a box FP
    ]
    write_predictions(tmp_path / "pred", "scene0000_00", preds)
    ds = open_scannet(tmp_path)
    report = scannet.evaluate_predictions(ds, tmp_path / "pred")
    run = report["runs"]["predictions"]
    chair, table = run["instance"]["classes"]["chair"], run["instance"]["classes"]["table"]
    # ScanNet: TP .9, FP .7, TP .5 over two chairs at every overlap (perfect masks) -> 19/24; table: no prediction
    assert chair == pytest.approx({"ap": 19 / 24, "ap50": 19 / 24, "ap25": 19 / 24}, abs=1e-12)
    assert table == {"ap": 0.0, "ap50": 0.0, "ap25": 0.0}
    assert run["instance"]["classes"]["sofa"] == {"ap": None, "ap50": None, "ap25": None}
    assert run["instance"]["mean"]["ap"] == pytest.approx(19 / 48, abs=1e-12)
    # VOC: FP .95, TP .9, FP .7, TP .5 -> precision envelope 1/2 over recall 0-1 -> 1/2; table: one FP -> 0
    det = run["detection"]["classes"]
    assert det["chair"] == pytest.approx({"ap25": 0.5, "ap50": 0.5}, abs=1e-12)
    assert det["table"] == {"ap25": 0.0, "ap50": 0.0} and det["sofa"] == {"ap25": None, "ap50": None}
    assert run["detection"]["mean"] == pytest.approx({"ap25": 0.25, "ap50": 0.25})
    assert (run["predictions"], run["ignored_predictions"]) == (6, 1)
    assert run["counts"]["chair"] == {"gt_instances": 2, "predictions": 3, "gt_boxes": 2, "detections": 4}
    # the same numbers from the predictions in memory, and the text table
    direct = matches_report(scene_matches(ds.scene(0), preds))
    assert direct == run
    text = scannet.summary(report)
    assert "chair" in text and "79.17" in text and "50.00" in text
    json.dumps(report, allow_nan=False)


def test_matches_concatenate_and_survive_json():
    a, b = _random_scene(1), _random_scene(2)
    ma, mb = scene_matches(*a), scene_matches(*b)
    both = SceneMatches.concatenate([ma, mb])
    again = SceneMatches.from_dict(json.loads(json.dumps(both.to_dict())))
    assert matches_report(again) == matches_report(both)
    assert both.scenes == 2 and len(both.instance_score) == len(ma.instance_score) + len(mb.instance_score)
    assert matches_report(SceneMatches.concatenate([]))["instance"]["mean"]["ap"] is None


# ---- against the references' rules, transcribed loop by loop -------------------------------------------------------
def _random_scene(seed):
    """A scene in memory: 2400 vertices, 8 instances of few classes (one outside the benchmark; sizes 40-200, so
    some under 100) in overlapping boxes, unannotated vertices; 24 predictions: one or two instances with vertices
    dropped and added, or exactly half an instance (IoU 1/2 for even sizes); few labels, confidences with ties."""
    rng = np.random.default_rng(seed)
    n = 2400
    sizes = rng.integers(20, 130, 8) * 2
    labels = rng.choice([5, 7, 35], 8)
    instance = np.full(n, -1)
    start = 0
    vertices = rng.uniform(0, 3, (n, 3))
    for k, s in enumerate(sizes):
        instance[start:start + s] = k
        vertices[start:start + s] = rng.uniform(0, 1, 3) + rng.uniform(0, 1, (s, 3))
        start += s
    scene = Scene("s", vertices.astype(np.float32), None, np.zeros((0, 3), np.int64), np.eye(4), None, instance,
                  labels.astype(np.int64), np.arange(8), tuple(str(v) for v in labels))
    preds = []
    for _ in range(24):
        picked = rng.choice(8, rng.integers(1, 3), replace=False)
        base = np.isin(instance, picked)
        if rng.random() < 0.2:
            rows = np.flatnonzero(instance == picked[0])
            mask = np.zeros(n, bool)
            mask[rows[: len(rows) // 2]] = True
        else:
            mask = (base & (rng.random(n) < rng.uniform(0.4, 1))) | (rng.random(n) < rng.uniform(0, 0.1))
        preds.append(InstancePrediction(mask, int(rng.choice([5, 5, 7, 35, 40])), float(rng.integers(1, 5) / 4)))
    return scene, preds


def reference_curve_ap(score, true, hard_fn):
    """ScanNet's integration: precision and recall at each distinct confidence, half-gap weights."""
    if len(score) == 0:
        return 0.0  # where the script would raise
    order = np.argsort(score, kind="stable")
    s, t = score[order], true[order]
    cum = np.append(np.cumsum(t), 0)
    total = cum[-2]
    _, first = np.unique(s, return_index=True)
    prec, rec = [], []
    for i in first:
        tp = total - cum[i - 1]
        fp = len(s) - i - tp
        fn = cum[i - 1] + hard_fn
        prec.append(tp / (tp + fp))
        rec.append(tp / (tp + fn))
    prec.append(1.0)
    rec.append(0.0)
    padded = np.concatenate([[rec[0]], rec, [0.0]])
    return float(np.dot(prec, np.convolve(padded, [-0.5, 0, 0.5], "valid")))


def reference_scannet(scenes):
    """(18, 10) APs by evaluate_semantic_instance.py's rules on ground-truth ids label*1000 + objectId + 1."""
    aps = np.full((18, len(OVERLAPS)), np.nan)
    for oi, th in enumerate(OVERLAPS):
        for li, lid in enumerate(IDS):
            y_score, y_true, hard_fn, has_gt, has_pred = [], [], 0, False, False
            for scene, preds in scenes:
                gt_ids = np.where(scene.instance >= 0, scene.instance_labels[scene.instance] * 1000
                                  + scene.instance_object_ids[scene.instance] + 1, 0)
                void = ~np.isin(gt_ids // 1000, IDS)
                gts = [(i, int((gt_ids == i).sum())) for i in np.unique(gt_ids) if i // 1000 == lid]
                plist = []
                for mask, label, conf in preds:
                    if label == lid and mask.sum() >= 100:
                        plist.append({"n": int(mask.sum()), "conf": conf, "void": int((mask & void).sum()),
                                      "inter": {i: int((mask & (gt_ids == i)).sum()) for i, _ in gts},
                                      "visited": False})
                big = [(i, c) for i, c in gts if c >= 100]
                has_gt |= bool(big)
                has_pred |= bool(plist)
                for i, c in big:
                    score = None
                    for p in plist:
                        inter = p["inter"][i]
                        if inter == 0 or p["visited"] or inter / (c + p["n"] - inter) <= th:
                            continue
                        if score is None:
                            score, p["visited"] = p["conf"], True
                        else:
                            y_score.append(min(score, p["conf"]))
                            y_true.append(0)
                            score = max(score, p["conf"])
                    if score is None:
                        hard_fn += 1
                    else:
                        y_score.append(score)
                        y_true.append(1)
                for p in plist:
                    if any(p["inter"][i] > 0 and p["inter"][i] / (c + p["n"] - p["inter"][i]) > th for i, c in gts):
                        continue
                    ignore = p["void"] + sum(p["inter"][i] for i, c in gts if c < 100)
                    if ignore / p["n"] <= th:
                        y_score.append(p["conf"])
                        y_true.append(0)
            if has_gt and has_pred:
                aps[li, oi] = reference_curve_ap(np.array(y_score, float), np.array(y_true, int), hard_fn)
            elif has_gt:
                aps[li, oi] = 0.0
    return aps


def reference_box_iou(a, b):
    """VoteNet's calc_iou on (center, size) boxes made from min/max corners."""
    ca, sa = (a[:3] + a[3:]) / 2, a[3:] - a[:3]
    cb, sb = (b[:3] + b[3:]) / 2, b[3:] - b[:3]
    lo = np.maximum(ca - sa / 2, cb - sb / 2)
    hi = np.minimum(ca + sa / 2, cb + sb / 2)
    if not (hi > lo).all():
        return 0.0
    inter = np.prod(hi - lo)
    return inter / (np.prod(sa) + np.prod(sb) - inter)


def reference_votenet(scenes, lid, th):
    """eval_det_cls's rules for one class: detections of all scenes by decreasing confidence (stable), each takes its
    best box (the first of equal IoUs), TP when above th and free; VOC AP with the envelope."""
    dets, gts = [], {}
    for k, (scene, preds) in enumerate(scenes):
        v = scene.aligned.astype(np.float64)
        gts[k] = [np.r_[v[scene.instance == j].min(0), v[scene.instance == j].max(0)]
                  for j in range(len(scene.instance_labels))
                  if scene.instance_labels[j] == lid and (scene.instance == j).any()]
        dets += [(k, np.r_[v[m].min(0), v[m].max(0)], c) for m, label, c in preds if label == lid and m.any()]
    npos = sum(len(g) for g in gts.values())
    if npos == 0:
        return None
    taken = {k: [False] * len(g) for k, g in gts.items()}
    hits = []
    for k, box, _ in sorted(dets, key=lambda d: -d[2]):
        best, jbest = -np.inf, -1
        for j, g in enumerate(gts[k]):
            iou = reference_box_iou(box, g)
            if iou > best:
                best, jbest = iou, j
        hit = best > th and not taken[k][jbest]
        if hit:
            taken[k][jbest] = True
        hits.append(hit)
    tp = np.cumsum(hits)
    fp = np.cumsum(np.logical_not(hits))
    rec = list(tp / npos)
    prec = list(tp / np.maximum(tp + fp, np.finfo(float).eps))
    mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    return sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])


@pytest.mark.parametrize("seeds", [(0, 1, 2), (3, 4), (5, 6, 7)])
def test_metrics_equal_loop_transcriptions_of_the_references(seeds):
    scenes = [_random_scene(s) for s in seeds]
    report = matches_report(SceneMatches.concatenate(scene_matches(*s) for s in scenes))
    aps = reference_scannet(scenes)
    checked = 0
    for li, name in enumerate(NAMES):
        got = report["instance"]["classes"][name]
        if np.isnan(aps[li]).all():
            assert got == {"ap": None, "ap50": None, "ap25": None}
            continue
        checked += 1
        assert got["ap"] == pytest.approx(np.mean(aps[li, :9]), abs=1e-12)
        assert got["ap50"] == pytest.approx(aps[li, 0], abs=1e-12)
        assert got["ap25"] == pytest.approx(aps[li, 9], abs=1e-12)
        for t, th in ((25, 0.25), (50, 0.5)):
            expected = reference_votenet(scenes, IDS[li], th)
            assert report["detection"]["classes"][name][f"ap{t}"] == pytest.approx(expected, abs=1e-12)
    assert checked >= 2


# ---- predictions of a model ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recognizer():
    from pointfalip import Recognizer, load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model("pf-tiny-16", pretrained="none", precision="fp32")
    return Recognizer(model, labels=scannet.benchmark_labels() + ["wall"], up_axis="z")


def test_proposal_clouds_resample_every_proposal_to_one_size(tmp_path):
    write_table(tmp_path)
    region = hand_scene(tmp_path)
    scene = scannet.read_scene(tmp_path / "scans" / "scene0000_00", scannet.read_label_table(
        tmp_path / "scannetv2-labels.combined.tsv"))
    tiny = np.zeros(scene.num_vertices, bool)
    tiny[:5] = True  # fewer distinct points than a cloud needs: left out
    masks = np.stack([region["chair1"], tiny, region["none"]])
    clouds, kept = scannet.proposal_clouds(scene, masks, num_points=100)
    assert clouds.shape == (2, 100, 3) and kept.tolist() == [0, 2]
    chair = {tuple(p) for p in scene.aligned[region["chair1"]]}
    assert len({tuple(p) for p in clouds[0]}) == 100 and {tuple(p) for p in clouds[0]} <= chair
    assert {tuple(p) for p in clouds[1]} == {tuple(p) for p in scene.aligned[region["none"]]}  # all 50, repeated


def test_predict_scene_gt_oracle_top_k_and_round_trip(tmp_path, recognizer):
    write_table(tmp_path)
    hand_scene(tmp_path)
    (tmp_path / "scannetv2_val.txt").write_text("scene0000_00\n")
    ds = open_scannet(tmp_path)
    scene = ds.scene(0)
    preds = scannet.predict_scene(recognizer, scene, "gt", top_k=2, num_points=256)
    assert len(preds) == 2 * 3  # three benchmark instances, two labels each
    ids = set(BENCHMARK_IDS) | {1}
    for k in range(3):
        a, b = preds[2 * k], preds[2 * k + 1]
        np.testing.assert_array_equal(a.mask, scene.instance_masks([k])[0])
        assert np.shares_memory(a.mask, b.mask) and a.label_id != b.label_id and {a.label_id, b.label_id} <= ids
        assert 1 >= a.confidence >= b.confidence > 0
    # the evaluation of the model's run equals the evaluation of its saved predictions
    report = scannet.evaluate_recognizer(recognizer, ds, "gt", top_k=2, save_predictions=tmp_path / "saved",
                                         num_points=256)
    again = scannet.evaluate_predictions(ds, tmp_path / "saved")
    assert report["runs"]["falip"] == again["runs"]["predictions"]
    # proposals from a folder: its masks, its labels ignored
    folder = scannet.evaluate_recognizer(recognizer, ds, tmp_path / "saved", num_points=256)
    assert folder["runs"]["falip"]["predictions"] == 6


def test_predict_scene_with_the_project_segmentation_and_both_runs(tmp_path, recognizer):
    write_table(tmp_path)
    hand_scene(tmp_path)
    scene = scannet.read_scene(tmp_path / "scans" / "scene0000_00",
                               scannet.read_label_table(tmp_path / "scannetv2-labels.combined.tsv"))
    masks = scannet.propose(scene, "segment")
    assert masks.ndim == 2 and masks.shape[1] == scene.num_vertices
    assert not (masks.sum(axis=0) > 1).any()  # objects do not share vertices
    preds = scannet.predict_scene(recognizer, scene, "segment", num_points=128)
    assert all(p.mask.shape == (scene.num_vertices,) for p in preds)
    clouds, kept = scannet.proposal_clouds(scene, scene.instance_masks(scene.benchmark_instances()), 128)
    both = scannet.score_proposals(recognizer, clouds, with_plain=True)
    assert set(both) == {"falip", "baseline"} and both["falip"].shape == (3, len(recognizer.labels))
    np.testing.assert_allclose(both["falip"].sum(axis=1), 1, atol=1e-5)
    assert "unknown proposals" in raises_one_line(scannet.propose, scene, "boxes")
