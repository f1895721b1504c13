"""`pointfalip segment` and `pointfalip evaluate --dataset shapenetpart`: outputs read back with other libraries
(trimesh, h5py, numpy), figures recomputed here by hand from the per-point predictions, resuming, and bad input
ending in one line with exit code 2."""
import json

import h5py
import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

import pointfalip.evaluate_parts as evp
from pointfalip import io
from pointfalip.datasets import open_dataset
from pointfalip.evaluate import partial_path
from pointfalip.evaluate_parts import evaluate_parts, predictions_path
from pointfalip.parts import PartSegmenter
from pointfalip.render import part_colors

from conftest import TINY, interrupt_after, load_random, one_line_error

POINTS = 160
# two categories of the release: bag (label 1, parts 4 handle / 5 body), mug (label 11, parts 36 handle / 37 cup)
BAG, MUG = 1, 11
FILES = [[BAG, MUG, BAG], [MUG, MUG]]


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "pf-seg-16.json"
    path.write_text(json.dumps(TINY["pf-tiny-16"]))
    return str(path)


@pytest.fixture(scope="module")
def model():
    return load_random("pf-tiny-16", precision="fp32")


def _chair(n: int = 900, seed: int = 0) -> np.ndarray:
    """A chair-like cloud, y up: a seat plate, a back plate, four legs."""
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1, 1, (n, 3))
    kind = rng.integers(0, 3, n)
    seat = np.c_[u[:, 0] * 0.5, 0.05 * u[:, 1], u[:, 2] * 0.5]
    back = np.c_[u[:, 0] * 0.5, 0.5 + 0.5 * u[:, 1], -0.5 + 0.05 * u[:, 2]]
    corner = rng.integers(0, 4, n)
    legs = np.c_[np.where(corner % 2, 0.45, -0.45) + 0.03 * u[:, 0], -0.5 + 0.5 * u[:, 1],
                 np.where(corner // 2, 0.45, -0.45) + 0.03 * u[:, 2]]
    return np.choose(kind[:, None], [seat, back, legs]).astype(np.float32)


@pytest.fixture(scope="module")
def chair(tmp_path_factory):
    path = tmp_path_factory.mktemp("pc") / "chair.npy"
    np.save(path, _chair())
    return path


# ---- segment -------------------------------------------------------------------------------------------

def test_segment_writes_ply_sheet_and_per_point_indices(main, tmp_path, tiny_json, chair, model):
    ply, png, npy = tmp_path / "parts.ply", tmp_path / "parts.png", tmp_path / "parts.npy"
    code, out, err = main("segment", chair, "--parts", "back,seat,leg,arm", "--category", "chair", "--dense",
                          "clearclip", "-o", ply, "--render", png, "--per-point", npy, "--model", tiny_json,
                          "--pretrained", "none", "--precision", "fp32", "--device", "cpu", "--json")
    assert code == 0, err
    result = json.loads(out)
    cloud = np.load(chair)
    index = np.load(npy)
    assert index.shape == (len(cloud),) and index.dtype == np.int64
    assert [p["part"] for p in result["parts"]] == ["back", "seat", "leg", "arm"]
    assert [p["points"] for p in result["parts"]] == np.bincount(index, minlength=4).tolist()
    assert result["points"] == len(cloud) and result["output"] == str(ply) and result["per_point"] == str(npy)

    # the same answer as the segmenter in this process (random weights come from a fixed seed)
    seg = PartSegmenter(model, parts="back,seat,leg,arm", category="chair", dense="clearclip", cache_dir=False)
    assert np.array_equal(seg.segment(io.normalize(cloud, "y")).numpy(), index)

    # the PLY: the input's points in order, one colour per predicted part, the same colour for the same part
    mesh = trimesh.load(ply)
    assert isinstance(mesh, trimesh.PointCloud)
    np.testing.assert_allclose(mesh.vertices, cloud, atol=1e-6)
    colors = np.asarray(mesh.colors)[:, :3]
    pairs = {(int(i), tuple(c)) for i, c in zip(index, colors)}
    assert len(pairs) == len(set(index.tolist())) == len({c for _, c in pairs})  # a bijection parts <-> colours
    assert all(c == tuple(part_colors(4)[i]) for i, c in pairs)

    sheet = np.asarray(Image.open(png).convert("RGB"))
    used = part_colors(4)[sorted(set(index.tolist()))]
    for c in used:  # every predicted part shows on the sheet (the points and the legend)
        assert (sheet == c).all(axis=-1).sum() > 10


def test_segment_of_a_category_uses_its_parts_and_prints_a_table(main, tiny_json, chair):
    code, out, err = main("segment", chair, "--category", "chair", "--model", tiny_json, "--pretrained", "none",
                          "--precision", "fp32")
    assert code == 0, err
    lines = out.splitlines()
    assert "900 points, 4 parts" in lines[0]
    assert [line.split()[1] for line in lines[1:5]] == ["back", "seat", "leg", "armrest"]
    assert sum(int(line.split()[-2]) for line in lines[1:5]) == 900


@pytest.mark.parametrize("args, words", [
    (["--parts", ""], ["empty"]),
    (["--parts", " , "], ["empty"]),
    (["--parts", "leg,seat,leg"], ["duplicate", "leg"]),
    (["--category", "spaceship"], ["unknown category", "spaceship", "airplane", "table"]),
    ([], ["give the parts"]),
    (["--parts", "a,b", "--per-point", "out.txt"], ["--per-point", ".npy"]),
    (["--parts", "a,b", "--preset", "nope"], ["nope", "pointclip_v2_parts"]),
])
def test_segment_bad_input_is_one_line(main, tmp_path, chair, args, words):
    args = [a if a != "out.txt" else tmp_path / a for a in args]
    code, _, err = main("segment", chair, *args, "--model", "no-such-model.json", "--pretrained", "none")
    one_line_error(code, err, *words)  # refused before the model is looked at


@pytest.mark.parametrize("name, flag", [("cloud.ply", "-o"), ("cloud.npy", "--per-point")])
def test_segment_refuses_to_overwrite_its_input(main, tmp_path, name, flag):
    path = tmp_path / name
    if path.suffix == ".ply":
        trimesh.PointCloud(_chair(200)).export(path)
    else:
        np.save(path, _chair(200))
    before = path.read_bytes()
    alias = tmp_path / "sub" / ".." / name  # the same file under another name
    (tmp_path / "sub").mkdir()
    for target in (path, alias):
        code, _, err = main("segment", path, "--parts", "a,b", flag, target, "--model", "no-such-model.json",
                            "--pretrained", "none")
        one_line_error(code, err, "input of this run")
    assert path.read_bytes() == before


# ---- ShapeNetPart --------------------------------------------------------------------------------------

def _shape(category: int, rng) -> tuple[np.ndarray, np.ndarray]:
    pts = (rng.normal(size=(POINTS, 3)) * [0.5, 1.0, 0.5]).astype(np.float32)
    if category == BAG:
        return pts, np.where(pts[:, 1] > 0.6, 4, 5)
    return pts, np.where(pts[:, 0] > 0.4, 36, 37)


def _release(root, files=FILES, bad_pid=None):
    """shapenet_part_seg_hdf5_data in ``root/hdf5_data``: h5 files named by test_hdf5_file_list.txt."""
    folder = root / "hdf5_data"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(7)
    truth = []
    for k, cats in enumerate(files):
        data, pid = zip(*[_shape(c, rng) for c in cats])
        pid = np.stack(pid).astype(np.uint8)
        if bad_pid is not None and k == bad_pid[0]:
            pid[bad_pid[1], 3] = bad_pid[2]
        with h5py.File(folder / f"ply_data_test{k}.h5", "w") as f:
            f["data"] = np.stack(data)
            f["label"] = np.array(cats, np.uint8)[:, None]
            f["pid"] = pid
        truth += list(zip(cats, data, pid.astype(np.int64)))
    (folder / "test_hdf5_file_list.txt").write_text("".join(f"ply_data_test{k}.h5\n" for k in range(len(files))))
    return truth


def _miou_by_hand(pred: np.ndarray, truth: np.ndarray, labels: range) -> float:
    ious = []
    for label in labels:
        p, t = pred == label, truth == label
        union = np.sum(p | t)
        ious.append(1.0 if union == 0 else np.sum(p & t) / union)
    return float(np.mean(ious))


def test_evaluate_shapenetpart_figures_recomputed_by_hand(main, tmp_path, tiny_json, model):
    truth = _release(tmp_path / "release")
    out = tmp_path / "parts.json"
    code, stdout, err = main("evaluate", "--dataset", "ShapeNetPart", "--root", tmp_path / "release", "--compare",
                             "--batch-size", 2, "--out", out, "--model", tiny_json, "--pretrained", "none",
                             "--precision", "fp32", "--device", "cpu")
    assert code == 0, err
    report = json.loads(out.read_text())
    assert report["task"] == "part segmentation" and report["n"] == 5 and report["points"] == POINTS
    assert set(report["runs"]) == {"tokens", "clearclip"}
    assert report["categories"] == {"bag": {"n": 2, "parts": ["handle", "body"], "labels": [4, 5]},
                                    "mug": {"n": 3, "parts": ["handle", "cup"], "labels": [36, 37]}}
    assert "bag" in stdout and "class mIoU" in stdout and "clearclip" in stdout

    with np.load(predictions_path(out)) as z:
        assert z["indices"].tolist() == [0, 1, 2, 3, 4]
        preds = {r: z[f"pred_{r}"].astype(np.int64) for r in ("tokens", "clearclip")}
    labels = {BAG: range(4, 6), MUG: range(36, 38)}
    for run, pred in preds.items():
        assert pred.shape == (5, POINTS)
        shape = [_miou_by_hand(pred[i], pid, labels[c]) for i, (c, _, pid) in enumerate(truth)]
        bag = np.mean([m for m, (c, _, _) in zip(shape, truth) if c == BAG])
        mug = np.mean([m for m, (c, _, _) in zip(shape, truth) if c == MUG])
        figures = report["runs"][run]
        assert figures["shape_miou"] == pytest.approx(shape)
        assert figures["instance_miou"] == pytest.approx(np.mean(shape))
        assert figures["per_category"] == pytest.approx({"bag": bag, "mug": mug})
        assert figures["class_miou"] == pytest.approx((bag + mug) / 2)
        assert figures["accuracy"] == pytest.approx(np.mean([np.mean(pred[i] == pid)
                                                             for i, (_, _, pid) in enumerate(truth)]))
        # the predictions are the segmenter's, each shape with its category's parts
        for i, (c, points, _) in enumerate(truth):
            seg = PartSegmenter(model, category="bag" if c == BAG else "mug", dense=run, cache_dir=False)
            assert np.array_equal(seg.segment(points).numpy() + labels[c].start, pred[i])


def test_evaluate_one_category_and_resume(tmp_path, model, monkeypatch):
    _release(tmp_path / "release")
    dataset = open_dataset("shapenetpart", tmp_path / "release").restrict("mug")
    assert len(dataset) == 3 and dataset.release_rows().tolist() == [1, 3, 4]
    whole = evaluate_parts(model, dataset, batch_size=1, out=tmp_path / "whole.json", progress=False)
    assert whole["category"] == "mug" and whole["n"] == 3 and list(whole["categories"]) == ["mug"]

    real, calls = evp.segment_batch, []
    out = tmp_path / "resumed.json"
    monkeypatch.setattr(evp, "segment_batch", interrupt_after(2, real))  # Ctrl-C during the third batch
    with pytest.raises(KeyboardInterrupt):
        evaluate_parts(model, open_dataset("shapenetpart", tmp_path / "release").restrict("mug"), batch_size=1,
                       out=out, progress=False)
    assert not out.exists() and len(list(partial_path(out).glob("batch_*.npz"))) == 2
    calls.clear()
    monkeypatch.setattr(evp, "segment_batch", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = evaluate_parts(model, open_dataset("shapenetpart", tmp_path / "release").restrict("mug"), batch_size=1,
                             out=out, progress=False)
    assert len(calls) == 1  # only the batch that was not done
    strip = ("report", "predictions")
    assert {k: v for k, v in resumed.items() if k not in strip} == {k: v for k, v in whole.items() if k not in strip}
    with np.load(predictions_path(out)) as a, np.load(tmp_path / "whole.predictions.npz") as b:
        assert np.array_equal(a["pred_tokens"], b["pred_tokens"])
    assert not partial_path(out).exists()


def test_compare_equals_separate_runs(tmp_path, model):
    _release(tmp_path / "release")
    both = evaluate_parts(model, open_dataset("shapenetpart", tmp_path / "release"), compare=True, batch_size=4,
                          out=tmp_path / "both.json", progress=False)
    for run in ("tokens", "clearclip"):
        alone = evaluate_parts(model, open_dataset("shapenetpart", tmp_path / "release"), dense=run, batch_size=4,
                               out=tmp_path / f"{run}.json", progress=False)
        assert alone["runs"][run]["shape_miou"] == pytest.approx(both["runs"][run]["shape_miou"], abs=1e-9)


def test_view_tokens_of_two_modes_share_the_trunk_and_equal_single_runs(model):
    seg = PartSegmenter(model, parts="a,b", cache_dir=False)
    images = torch.rand(3, 3, 64, 64)
    both = seg.view_tokens(images, ("tokens", "clearclip"))
    for mode in ("tokens", "clearclip"):
        _, alone = model.encode_image(images, return_tokens=True, dense=mode, normalize=True)
        assert torch.allclose(both[mode], alone, atol=1e-5)


@pytest.mark.parametrize("args, words", [
    (["--category", "spaceship"], ["unknown category", "spaceship", "airplane"]),
    (["--compare", "--dense", "tokens"], ["--compare", "--dense"]),
    (["--projection", "simple"], ["--projection", "part segmentation"]),
    (["--preset", "pointclip"], ["not a parts preset", "pointclip_v2_parts"]),
])
def test_evaluate_shapenetpart_bad_arguments_are_one_line(main, tmp_path, tiny_json, args, words):
    _release(tmp_path / "release")
    code, _, err = main("evaluate", "--dataset", "shapenetpart", "--root", tmp_path / "release", *args,
                        "--out", tmp_path / "r.json", "--model", tiny_json, "--pretrained", "none")
    one_line_error(code, err, *words)


def test_part_options_are_refused_for_classification_datasets(main, tmp_path, tiny_json):
    code, _, err = main("evaluate", "--dataset", "modelnet40", "--root", tmp_path, "--category", "chair",
                        "--model", tiny_json, "--pretrained", "none")
    one_line_error(code, err, "--category", "shapenetpart")


def test_bad_pid_is_one_line_naming_file_and_item(main, tmp_path, tiny_json):
    _release(tmp_path / "release", bad_pid=(1, 1, 4))  # a bag part id on a mug (file 1, row 1: item 4)
    code, _, err = main("evaluate", "--dataset", "shapenetpart", "--root", tmp_path / "release", "--out",
                        tmp_path / "r.json", "--model", tiny_json, "--pretrained", "none")
    one_line_error(code, err, "ply_data_test1.h5[1]", "item 4", "part 4", "mug")


def test_release_without_pid_is_one_line(main, tmp_path, tiny_json):
    _release(tmp_path / "release")
    with h5py.File(tmp_path / "release" / "hdf5_data" / "ply_data_test0.h5", "a") as f:
        del f["pid"]
    code, _, err = main("evaluate", "--dataset", "shapenetpart", "--root", tmp_path / "release", "--out",
                        tmp_path / "r.json", "--model", tiny_json, "--pretrained", "none")
    one_line_error(code, err, "ply_data_test0.h5", "'pid'")


def test_reader_streams_clouds_categories_and_part_ids(tmp_path):
    truth = _release(tmp_path / "release")
    dataset = open_dataset("shapenetpart", tmp_path / "release", num_points=100)
    assert len(dataset) == 5 and dataset.classes[BAG] == "bag" and dataset.up_axis == "y"
    batches = list(dataset.iter_segments(2, start=1))
    assert [b[0] for b in batches] == [[1, 2], [3, 4]]  # the second batch spans both files
    for indices, clouds, cats, pids in batches:
        assert clouds.shape == (len(indices), 100, 3) and pids.shape == (len(indices), 100)
        for j, i in enumerate(indices):
            assert cats[j] == truth[i][0]
            assert np.array_equal(clouds[j], truth[i][1][:100]) and np.array_equal(pids[j], truth[i][2][:100])
    points, category, pid = dataset.segment(0)
    assert category == BAG and np.array_equal(pid, truth[0][2][:100])
    assert np.array_equal(dataset[3][0], truth[3][1][:100])  # and it is a classification dataset too
