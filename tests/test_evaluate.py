"""pointfalip.evaluate and `pointfalip evaluate`: reports that agree with the Recognizer and with metrics computed
here, --compare equal to separate runs, resuming after an interruption, two torchrun ranks equal to one
process, skipped meshes counted, and bad input ending in one line with exit code 2."""
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import open_clip
import pytest

import torch
import torch.nn.functional as F
import trimesh
from PIL import Image

import pointfalip.evaluate as ev
from pointfalip import io, prompts
from pointfalip.datasets import open_dataset
from pointfalip.evaluate import evaluate, metrics, partial_path
from pointfalip.model import load_model
from pointfalip.projection import project
from pointfalip.recognize import Recognizer

from conftest import TINY, assert_user_error, interrupt_after

MODELNET40 = ["airplane", "bathtub", "bed", "bench", "bookshelf", "bottle", "bowl", "car", "chair", "cone", "cup",
              "curtain", "desk", "door", "dresser", "flower_pot", "glass_box", "guitar", "keyboard", "lamp", "laptop",
              "mantel", "monitor", "night_stand", "person", "piano", "plant", "radio", "range_hood", "sink", "sofa",
              "stairs", "stool", "table", "tent", "toilet", "tv_stand", "vase", "wardrobe", "xbox"]
SCANOBJECTNN = ["bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed", "pillow",
                "sink", "sofa", "toilet"]
H5_PREFIX = "data/modelnet40_ply_hdf5_2048/"
POINTS = 256
N = 10
BATCH = 4
CORRUPT_OFF = "OFF\n4 2 0\n0 0 0\n1 0 0\nthis is not a vertex\n"


def shapes(n: int, seed: int = 0) -> np.ndarray:
    """(n, POINTS, 3) clouds of five kinds (sphere, box surface, rod, plate, L) at random scales."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        u = rng.normal(size=(POINTS, 3))
        kind = k % 5
        if kind == 0:
            x = u / np.linalg.norm(u, axis=1, keepdims=True)
        elif kind == 1:
            x = rng.uniform(-1, 1, (POINTS, 3))
            face = rng.integers(0, 3, POINTS)
            x[np.arange(POINTS), face] = np.sign(x[np.arange(POINTS), face])
        elif kind == 2:
            x = u * [0.05, 1.0, 0.05]
        elif kind == 3:
            x = u * [1.0, 0.05, 0.6]
        else:
            x = np.concatenate([u[:POINTS // 2] * [1, 0.1, 0.1], u[POINTS // 2:] * [0.1, 1, 0.1] + [1, 1, 0]])
        out.append((x * rng.uniform(0.5, 2.0, 3)).astype(np.float32))
    return np.stack(out)


# --------------------------------------------------------------------------------------------------
# fixtures: one checkpoint for every run, small datasets in the releases' layouts
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A random pf-tiny-16 in open_clip's format, saved once so that every process loads the same weights.

    A random ViT maps all depth images to nearly one feature, so every object would get the same class and a
    prediction list could not tell two runs apart. The common direction of the features of a few calibration
    views is projected out of the image projection, so objects (and FALIP vs plain) get different classes.
    """
    torch.manual_seed(0)
    clip = open_clip.create_model("pf-tiny-16")
    size = TINY["pf-tiny-16"]["vision_cfg"]["image_size"]
    calibration = np.stack([io.normalize(c) for c in shapes(10, seed=100)])
    images = torch.cat([project(calibration, method=m, views=v, image_size=size).images.flatten(0, 1)
                        for m, v in (("realistic", "pointclip_v2"), ("simple", "pointclip"))])
    with torch.no_grad():
        u = F.normalize(clip.encode_image(images).mean(dim=0), dim=0)
        clip.visual.proj.copy_(clip.visual.proj @ (torch.eye(len(u)) - torch.outer(u, u)))
    path = tmp_path_factory.mktemp("ckpt") / "pf-tiny-16.pt"
    torch.save(clip.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def model(checkpoint):
    # fp32 everywhere (the command line's too): the checks compare predictions exactly
    return load_model("pf-tiny-16", checkpoint, precision="fp32")


@pytest.fixture(scope="module")
def clouds() -> np.ndarray:
    return shapes(N)


def top1(model, clouds, labels, falip=True, **kwargs) -> list[int]:
    """Each cloud's best label by Recognizer.classify, as an index into ``labels``."""
    rec = Recognizer(model, labels=labels, falip=falip, cache_dir=False, **kwargs)
    return [labels.index(p[0].label) for p in rec.classify(list(clouds), top_k=1)]


@pytest.fixture(scope="module")
def mn40(tmp_path_factory, model, clouds):
    """ModelNet40's h5 layout (two files, 6 + 4 clouds, so a batch spans both) and the labels written. Half the
    labels are the classes Recognizer.classify picks, half are not, so accuracies are neither 0 nor 1."""
    root = tmp_path_factory.mktemp("mn40") / "modelnet40_ply_hdf5_2048"
    root.mkdir()
    names = [prompts.humanize(c) for c in MODELNET40]
    picked = np.array(top1(model, clouds, names))
    labels = np.where(np.arange(N) % 2 == 0, picked, (picked + 1 + np.arange(N)) % 40)
    for k, (lo, hi) in enumerate(((0, 6), (6, N))):
        with h5py.File(root / f"ply_data_test{k}.h5", "w") as f:
            f.create_dataset("data", data=clouds[lo:hi])
            f.create_dataset("label", data=labels[lo:hi, None].astype(np.uint8))
    (root / "test_files.txt").write_text("".join(f"{H5_PREFIX}ply_data_test{k}.h5\n" for k in range(2)))
    return root.parent, labels.astype(np.int64)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("textcache")
    # one thread, as torchrun gives each rank, so that one process and two ranks compute alike
    return {**os.environ, "HF_HUB_OFFLINE": "1", "POINTFALIP_CACHE": str(cache), "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("cfg") / "pf-eval-16.json"
    path.write_text(json.dumps(TINY["pf-tiny-16"]))
    return str(path)


def pf(env, *args, ok=True, launcher=None, timeout=300):
    cmd = [sys.executable, *(launcher or []), "-m", "pointfalip", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def cli_eval(env, tiny_json, checkpoint, root, out, *extra, ok=True, launcher=None, dataset="modelnet40"):
    return pf(env, "evaluate", "--dataset", dataset, "--root", root, "--model", tiny_json, "--pretrained",
              checkpoint, "--precision", "fp32", "--batch-size", BATCH, "--num-points", POINTS, "--out", out, *extra,
              ok=ok, launcher=launcher)


def main_eval(main, tiny_json, checkpoint, root, out, *extra, dataset="modelnet40"):
    return main("evaluate", "--dataset", dataset, "--root", root, "--model", tiny_json, "--pretrained", checkpoint,
                "--precision", "fp32", "--batch-size", BATCH, "--num-points", POINTS, "--out", out, *extra)


def assert_one_line_error(code, err, *words):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pointfalip evaluate: error:"), err
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]


def naive_metrics(labels, predictions, classes) -> dict:
    """Accuracies and confusion by counting, object by object."""
    c = len(classes)
    confusion = [[0] * c for _ in range(c)]
    for t, p in zip(labels, predictions):
        confusion[t][p] += 1
    per_class = {}
    for k in range(c):
        total = sum(confusion[k])
        if total:
            per_class[classes[k]] = confusion[k][k] / total
    correct = sum(1 for t, p in zip(labels, predictions) if t == p)
    return {"overall_accuracy": correct / len(labels), "per_class": per_class,
            "mean_class_accuracy": sum(per_class.values()) / len(per_class), "confusion": confusion}


def assert_consistent(run: dict, labels, classes):
    preds = [p for p in run["predictions"] if p is not None]
    kept = [t for t, p in zip(labels, run["predictions"]) if p is not None]
    expected = naive_metrics(kept, preds, classes)
    assert run["confusion"] == expected["confusion"]
    assert run["per_class"] == pytest.approx(expected["per_class"])
    assert run["overall_accuracy"] == pytest.approx(expected["overall_accuracy"])
    assert run["mean_class_accuracy"] == pytest.approx(expected["mean_class_accuracy"])


def results(report: dict) -> dict:
    """The report less the paths it was written to."""
    return {k: v for k, v in report.items() if k not in ("report", "confusion_png")}


# --------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------

def test_metrics_by_hand():
    m = metrics([0, 0, 1, 1, 1], [0, 1, 1, 2, 1], ["a", "b", "c"])
    assert m["confusion"] == [[1, 1, 0], [0, 2, 1], [0, 0, 0]]
    assert m["overall_accuracy"] == pytest.approx(3 / 5)
    assert m["per_class"] == pytest.approx({"a": 1 / 2, "b": 2 / 3})  # "c" is absent from the labels
    assert m["mean_class_accuracy"] == pytest.approx((1 / 2 + 2 / 3) / 2)


# --------------------------------------------------------------------------------------------------
# in-process
# --------------------------------------------------------------------------------------------------

def test_compare_report_agrees_with_recognizer_and_counts(tmp_path, model, clouds, mn40):
    root, labels = mn40
    out = tmp_path / "sub" / "report.json"
    report = evaluate(model, open_dataset("modelnet40", root), compare=True, batch_size=BATCH, out=out,
                      progress=False)
    names = [prompts.humanize(c) for c in MODELNET40]
    falip, plain = top1(model, clouds, names, falip=True), top1(model, clouds, names, falip=False)
    assert report["runs"]["falip"]["predictions"] == falip
    assert report["runs"]["baseline"]["predictions"] == plain
    assert falip != plain and len(set(falip)) > 1  # the data tells the two runs and the objects apart
    for run in report["runs"].values():
        assert_consistent(run, labels.tolist(), MODELNET40)
        assert 0 < run["overall_accuracy"] < 1
    assert report["n"] == report["items"] == N and report["skipped"] == []
    assert report["labels"] == labels.tolist() and report["classes"] == MODELNET40
    assert (report["dataset"], report["model"], report["preset"]) == ("modelnet40", "pf-tiny-16", "pointclip_v2")
    assert json.loads(out.read_text()) == report
    assert not partial_path(out).exists()  # the resume cache is gone once the report is written
    png = Image.open(report["confusion_png"])
    assert png.mode == "RGB" and png.width > png.height  # two panels side by side


def test_resume_after_interrupt_gives_the_uninterrupted_report(tmp_path, model, mn40, monkeypatch):
    root, _ = mn40
    whole = evaluate(model, open_dataset("modelnet40", root), compare=True, batch_size=BATCH,
                     out=tmp_path / "whole.json", progress=False)
    real = ev.score_batch
    calls = []
    out = tmp_path / "resumed.json"
    monkeypatch.setattr(ev, "score_batch", interrupt_after(2, real))  # Ctrl-C during the third batch
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, open_dataset("modelnet40", root), compare=True, batch_size=BATCH, out=out, progress=False)
    assert not out.exists()
    assert sorted(p.name for p in partial_path(out).glob("batch_*.npz")) == ["batch_000000000.npz",
                                                                              "batch_000000004.npz"]

    calls.clear()
    monkeypatch.setattr(ev, "score_batch", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = evaluate(model, open_dataset("modelnet40", root), compare=True, batch_size=BATCH, out=out,
                       progress=False)
    assert len(calls) == 1  # only the batch that was not done
    assert results(resumed) == results(whole)
    assert not partial_path(out).exists()


def test_cache_of_other_arguments_is_not_used(tmp_path, model, mn40, monkeypatch):
    root, _ = mn40
    out = tmp_path / "r.json"
    real = ev.score_batch
    calls = []
    monkeypatch.setattr(ev, "score_batch", interrupt_after(1, real))
    with pytest.raises(KeyboardInterrupt):
        evaluate(model, open_dataset("modelnet40", root), falip=False, batch_size=BATCH, out=out, progress=False)
    assert partial_path(out).is_dir()
    calls.clear()
    monkeypatch.setattr(ev, "score_batch", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    report = evaluate(model, open_dataset("modelnet40", root), falip=True, batch_size=BATCH, out=out,
                      progress=False)
    assert len(calls) == 3 and list(report["runs"]) == ["falip"]  # a FALIP run reuses nothing of a baseline run


def test_scanobjectnn_baseline(tmp_path, model, clouds):
    data, labels = clouds[:6], np.array([14, 0, 3, 3, 9, 12], dtype=np.uint8)
    path = tmp_path / "main_split" / "test_objectdataset_augmentedrot_scale75.h5"
    path.parent.mkdir()
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data)
        f.create_dataset("label", data=labels)
    report = evaluate(model, open_dataset("scanobjectnn", tmp_path), falip=False, batch_size=BATCH,
                      out=tmp_path / "r.json", progress=False)
    assert report["dataset"] == "scanobjectnn-pb_t50_rs" and list(report["runs"]) == ["baseline"]
    run = report["runs"]["baseline"]
    assert run["predictions"] == top1(model, data, [prompts.humanize(c) for c in SCANOBJECTNN], falip=False)
    assert_consistent(run, labels.tolist(), SCANOBJECTNN)


def _write_box(path: Path, half) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if half is None:
        path.write_text(CORRUPT_OFF)
    else:
        trimesh.creation.box(extents=[2 * half, half, 0.5 * half]).export(str(path), file_type="off")


def test_raw_tree_counts_unreadable_meshes_as_skipped(tmp_path, model):
    # batch size 2: items 2 and 3 (both corrupt) fill a whole batch, which the dataset does not yield
    files = [("airplane", "airplane_0627.off", 0.5), ("airplane", "airplane_0628.off", 1.5),
             ("chair", "chair_0890.off", None), ("chair", "chair_0891.off", None),
             ("chair", "chair_0892.off", 3.0), ("toilet", "toilet_0345.off", 0.25)]
    for cls, name, half in files:
        _write_box(tmp_path / "ModelNet40" / cls / "test" / name, half)
    ds = open_dataset("modelnet40", tmp_path, num_points=POINTS)
    assert ds.up_axis == "z"
    report = evaluate(model, ds, batch_size=2, out=tmp_path / "r.json", progress=False)
    assert [(s["index"], Path(s["source"]).name) for s in report["skipped"]] == [(2, "chair_0890.off"),
                                                                                 (3, "chair_0891.off")]
    assert report["n"] == 4 and report["items"] == 6
    run = report["runs"]["falip"]
    assert run["predictions"][2] is None and run["predictions"][3] is None
    good = [0, 1, 4, 5]
    names = [prompts.humanize(c) for c in MODELNET40]
    meshes = [open_dataset("modelnet40", tmp_path, num_points=POINTS)[i][0] for i in good]
    assert [run["predictions"][i] for i in good] == top1(model, meshes, names, up_axis="z")
    assert_consistent(run, report["labels"], MODELNET40)
    assert sorted(run["per_class"]) == ["airplane", "chair", "toilet"]


def test_folder_dataset_uses_its_own_class_names(tmp_path, model, clouds):
    for k, c in enumerate(["coffee_mug", "lamp", "coffee_mug", "lamp"]):
        (tmp_path / "scans" / c).mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / "scans" / c / f"scan{k}.npy", clouds[k])
    ds = open_dataset("folder", tmp_path / "scans", num_points=POINTS)
    report = evaluate(model, ds, batch_size=BATCH, out=tmp_path / "r.json", progress=False)
    assert report["classes"] == ["coffee_mug", "lamp"] and report["labels"] == [0, 0, 1, 1]
    expected = top1(model, [ds[i][0] for i in range(4)], ["coffee mug", "lamp"])
    assert report["runs"]["falip"]["predictions"] == expected


# --------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compare_cli(tmp_path_factory, env, tiny_json, checkpoint, mn40):
    out = tmp_path_factory.mktemp("cli") / "compare.json"
    proc = cli_eval(env, tiny_json, checkpoint, mn40[0], out, "--compare")
    return proc, json.loads(out.read_text())


def test_cli_compare_equals_separate_runs(tmp_path, main, tiny_json, checkpoint, mn40, compare_cli):
    proc, both = compare_cli
    single = {}
    for name, flags in (("falip", []), ("baseline", ["--no-falip"])):
        out = tmp_path / f"{name}.json"
        code, stdout, _ = main_eval(main, tiny_json, checkpoint, mn40[0], out, "--json", *flags)
        assert code == 0
        single[name] = json.loads(out.read_text())
        assert json.loads(stdout) == single[name] and list(single[name]["runs"]) == [name]
    for name in ("falip", "baseline"):
        assert both["runs"][name]["predictions"] == single[name]["runs"][name]["predictions"]
        assert_consistent(both["runs"][name], mn40[1].tolist(), MODELNET40)
    # the table on stdout: one row per run and per class present, the accuracies of the report
    lines = proc.stdout.splitlines()
    overall = next(line for line in lines if line.startswith("overall")).split()
    assert overall[1:] == [f"{both['runs'][r]['overall_accuracy']:.2%}" for r in ("falip", "baseline")]
    assert sum(line.split()[0] in MODELNET40 for line in lines if line.strip()) == len(set(mn40[1].tolist()))
    assert not Path(str(both["report"]) + ".partial").exists()


def test_torchrun_two_ranks_equal_one_process(tmp_path, env, tiny_json, checkpoint, mn40, compare_cli):
    out = tmp_path / "ranks.json"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = cli_eval(env, tiny_json, checkpoint, mn40[0], out, "--compare", launcher=launcher)
    report = json.loads(out.read_text())
    assert results(report) == results(compare_cli[1])
    assert sum(line.startswith("overall") for line in proc.stdout.splitlines()) == 1  # rank 0 alone prints


def _h5(path: Path, **keys) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in keys.items():
            f.create_dataset(k, data=v)


def _modelnet40_h5(root: Path, **keys) -> Path:
    _h5(root / "ply_data_test0.h5", **keys)
    (root / "test_files.txt").write_text(f"{H5_PREFIX}ply_data_test0.h5\n")
    return root


BAD = {
    "missing h5 key": (lambda tmp: _modelnet40_h5(tmp, data=shapes(2)), [], ["'label'"]),
    "label outside the classes": (lambda tmp: _modelnet40_h5(tmp, data=shapes(2), label=np.array([[3], [40]])), [],
                                  ["40", "outside"]),
    "empty dataset": (lambda tmp: _modelnet40_h5(tmp, data=np.zeros((0, POINTS, 3), np.float32),
                                                 label=np.zeros((0, 1), np.uint8)), [], ["empty"]),
    "compare without falip": (lambda tmp: tmp, ["--compare", "--no-falip"], ["--no-falip"]),
    "batch size 0": (lambda tmp: _modelnet40_h5(tmp, data=shapes(2), label=np.array([[3], [4]])),
                     ["--batch-size", "0"], ["batch-size", "outside"]),  # given last, it wins over the helper's
}


def test_missing_root_one_line_exit_2(tmp_path, env, tiny_json, checkpoint):
    proc = cli_eval(env, tiny_json, checkpoint, tmp_path / "nowhere", tmp_path / "r.json", ok=False)
    assert_user_error(proc, "nowhere", "no such folder")


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_exit_2(tmp_path, main, tiny_json, checkpoint, case):
    make_root, flags, words = BAD[case]
    (tmp_path / "data").mkdir()  # the report goes beside the dataset root, never inside it
    code, out, err = main_eval(main, tiny_json, checkpoint, make_root(tmp_path / "data"), tmp_path / "r.json",
                               *flags)
    assert_one_line_error(code, err, *words)
    assert out == "" and not (tmp_path / "r.json").exists()


def test_nothing_evaluable_exit_2(tmp_path, main, tiny_json, checkpoint):
    for name in ("chair_0001.off", "chair_0002.off"):
        _write_box(tmp_path / "data" / "chair" / "test" / name, None)
    code, _, err = main_eval(main, tiny_json, checkpoint, tmp_path / "data", tmp_path / "r.json")
    assert_one_line_error(code, err, "nothing to evaluate", "all 2 item(s)", "chair_0001.off")
    assert not (tmp_path / "r.json").exists() and not partial_path(tmp_path / "r.json").exists()


def test_torchrun_ranks_share_one_random_model(tmp_path, env, tiny_json, mn40):
    """pretrained='none' draws the same weights in every process: two ranks score like one process."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    one = tmp_path / "one.json"
    two = tmp_path / "two.json"
    cli_eval(env, tiny_json, "none", mn40[0], one)
    cli_eval(env, tiny_json, "none", mn40[0], two, launcher=launcher)
    assert results(json.loads(two.read_text())) == results(json.loads(one.read_text()))
