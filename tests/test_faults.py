"""Faults and the newest inputs (issue 27), by class: (A) resume keyed by the data's identity; (B) a robust resume
folder: damaged or tampered batches computed again, one run at a time (a lock naming its pid), an unwritable folder
refused before any work; (C) interrupted by SIGINT, SIGTERM or SIGKILL, then resumed: the uninterrupted report, per
object; (D) validation at the door: deep JSON/YAML, damaged bag storage, h5 arrays of odd dtypes, torchrun variables,
names that are not UTF-8; (E) nothing left after a late failure; (F) REC garbage refused; (G) pacing that never
hangs on an odd stamp; (H) each frame once per Foxglove channel set; (I) true, short messages."""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from PIL import Image

from conftest import TINY, interrupt_after, load_random, one_line_error, raises_one_line
from pointfalip import batches, files
from pointfalip import evaluate as ev
from pointfalip import refcoco
from pointfalip.batches import BatchCache, partial_path, run_key
from pointfalip.datasets import open_dataset
from pointfalip.errors import InputError, shown
from pointfalip.evaluate import BatchResult, evaluate
from pointfalip.stream import RealtimePacer, stream

MODEL = "pf-tiny-16"
CLASSES = ("ball", "cube", "cone")


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "pf-faults-16.json"
    path.write_text(json.dumps(TINY[MODEL]))
    return str(path)


@pytest.fixture(scope="module")
def model():
    return load_random(MODEL, precision="fp32")


def _shapes(root: Path, per_class: int = 2, points: int = 64, seed: int = 1) -> Path:
    """A folder dataset: CLASSES x per_class clouds of distinct shapes (so predictions differ between items)."""
    rng = np.random.default_rng(seed)
    for k, c in enumerate(CLASSES):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            cloud = rng.normal(size=(points, 3)) * (1 + k, 1, 0.3 + i) + k
            np.save(root / c / f"{c}_{i}.npy", cloud.astype(np.float32))
    return root


def _run(report: dict) -> dict:
    """A report without the paths that name where it was written."""
    return {k: v for k, v in report.items() if k not in ("report", "confusion_png")}


def _eval(model, root, out, **kwargs):
    return evaluate(model, open_dataset("folder", root), batch_size=1, out=out, progress=False, **kwargs)


# ---- A: resume keyed by the data ------------------------------------------------------------------------
def test_data_identity_sees_content_size_and_mtime(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(bytes(range(256)) * 100)  # 25.6 kB: sampled, not hashed whole
    b.write_bytes(b"small")
    first = files.data_identity([a, b])
    assert first == files.data_identity([a, b]) and first["files"] == 2
    stat = a.stat()
    data = bytearray(a.read_bytes())
    data[len(data) // 2] ^= 0xFF  # the middle block, same size, the old mtime kept (as cp -p would)
    a.write_bytes(bytes(data))
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert files.data_identity([a, b]) != first
    os.utime(b, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched only
    second = files.data_identity([a, b])
    assert second != first and files.data_identity([b, a]) != second  # the order of the items counts
    b.unlink()
    assert files.data_identity([a, b])["files"] == 2  # a missing file has an identity too: the run reports it


def test_a_repaired_dataset_starts_over_instead_of_mixing(tmp_path, model, monkeypatch, caplog):
    root = _shapes(tmp_path / "data")
    real = ev.score_batch
    monkeypatch.setattr(ev, "score_batch", interrupt_after(2, real))
    with pytest.raises(KeyboardInterrupt):
        _eval(model, root, tmp_path / "r.json")
    assert len(list(partial_path(tmp_path / "r.json").glob("batch_*.npz"))) == 2
    victim = root / "ball" / "ball_0.npy"  # a file of a batch already done is repaired, its mtime kept
    stat = victim.stat()
    np.save(victim, np.random.default_rng(9).normal(size=(64, 3)).astype(np.float32) * 5)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    calls = []
    monkeypatch.setattr(ev, "score_batch", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    with caplog.at_level(logging.WARNING, logger="pointfalip"):
        resumed = _eval(model, root, tmp_path / "r.json")
    assert len(calls) == 6  # nothing reused: every batch computed from the repaired data
    assert any("changed: data" in r.getMessage() for r in caplog.records)
    fresh = _eval(model, root, tmp_path / "fresh.json")
    assert _run(resumed) == _run(fresh)


def _rec_data(folder: Path) -> Path:
    (folder / "images").mkdir(parents=True)
    for i in (1, 2):
        pixels = np.random.default_rng(i).integers(0, 255, (60, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "images" / f"COCO_train2014_{i:012d}.jpg")
    lines = [_rec_line(1, [[5, 5, 30, 20], [40, 10, 30, 40]], 10), _rec_line(2, [[0, 0, 40, 40]], 20)]
    (folder / "a.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return folder


def _rec_line(image: int, boxes, first_id: int, text: str = "the thing", **changes) -> dict:
    line = {"file_name": f"COCO_train2014_{image:012d}_{first_id}.jpg", "image_id": image,
            "anns": [{"bbox": b, "id": first_id + k} for k, b in enumerate(boxes)], "ann_id": first_id,
            "sentences": [{"raw": text}]}
    return {**line, **changes}


def test_the_rec_and_part_keys_name_the_data_itself(tmp_path):
    data = _rec_data(tmp_path / "rec")
    fake = SimpleNamespace(name="m", pretrained="none", precision="fp32")

    def rec_key():
        dataset = refcoco.open_rec_dataset("refcoco", data / "images", data / "a.jsonl")
        return run_key(refcoco.RecTask(fake, dataset, ("falip",), 4, refcoco.foveal.FovealConfig()).key())["hash"]

    before = rec_key()
    image = data / "images" / "COCO_train2014_000000000002.jpg"
    stat = image.stat()
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(image)  # another picture of the same size, old mtime
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert rec_key() != before

    from pointfalip.evaluate_parts import part_run_key
    from pointfalip.parts import load_part_preset

    root = tmp_path / "parts" / "hdf5_data"
    root.mkdir(parents=True)
    pid = np.tile(np.array([36, 37], np.uint8), 32)[None].repeat(2, 0)
    with h5py.File(root / "ply_data_test0.h5", "w") as f:
        f["data"], f["label"], f["pid"] = np.zeros((2, 64, 3), np.float32), np.full((2, 1), 11, np.uint8), pid
    (root / "test_hdf5_file_list.txt").write_text("ply_data_test0.h5\n")

    def part_key():
        dataset = open_dataset("shapenetpart", root.parent)
        return run_key(part_run_key(fake, dataset, "p", load_part_preset(), ("tokens",), 4))["hash"]

    before = part_key()
    stat = (root / "ply_data_test0.h5").stat()
    with h5py.File(root / "ply_data_test0.h5", "r+") as f:
        f["data"][0, 0] = (1.0, 2.0, 3.0)
    os.utime(root / "ply_data_test0.h5", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert part_key() != before


# ---- B: the resume folder --------------------------------------------------------------------------------
def _record(start, n=1, label=0, pred=0):
    return BatchResult(start, np.arange(start, start + n), np.full(n, label, np.int64), {"falip": np.full(n, pred)},
                       [])


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "noise":
        path.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "other fields":
        np.savez(path, start=np.int64(0), something=np.arange(3))
    elif how == "a folder":
        path.unlink()
        path.mkdir()


@pytest.mark.parametrize("how", ["truncated", "noise", "empty", "other fields"])
def test_a_damaged_batch_file_is_computed_again_with_a_warning(tmp_path, how, caplog):
    cache = BatchCache(tmp_path / "r.json.partial", run_key({"k": 1}), ("falip",), BatchResult)
    cache.open()
    cache.save(_record(0))
    _damage(cache.path(0), how)
    with caplog.at_level(logging.WARNING, logger="pointfalip"):
        assert cache.load(0) is None
    assert "computing the batch again" in caplog.text


def test_a_tampered_batch_is_computed_again_and_the_report_is_the_uninterrupted_one(tmp_path, model, monkeypatch,
                                                                                      caplog):
    root = _shapes(tmp_path / "data")
    whole = _eval(model, root, tmp_path / "whole.json")
    real = ev.score_batch
    monkeypatch.setattr(ev, "score_batch", interrupt_after(4, real))
    out = tmp_path / "r.json"
    with pytest.raises(KeyboardInterrupt):
        _eval(model, root, out)
    folder = partial_path(out)
    tampered = {0: dict(predictions=np.array([7])),  # a class that does not exist (3 classes)
                1: dict(labels=np.array([2])),  # not the dataset's label of item 1
                2: dict(indices=np.array([5]))}  # an item of another batch
    for start, change in tampered.items():
        with np.load(folder / f"batch_{start:09d}.npz") as z:
            arrays = dict(z)
        for name, value in change.items():
            arrays["predictions@falip" if name == "predictions" else name] = value
        np.savez(folder / f"batch_{start:09d}.npz", **arrays)
    _damage(folder / "batch_000000003.npz", "truncated")
    calls = []
    monkeypatch.setattr(ev, "score_batch", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    with caplog.at_level(logging.WARNING, logger="pointfalip"):
        resumed = _eval(model, root, out)
    assert len(calls) == 6  # four tampered or damaged, two never done
    for words in ("predictions outside the classes", "labels that are not the dataset's", "outside its batch",
                  "unreadable"):
        assert words in caplog.text
    assert _run(resumed) == _run(whole)


def test_a_batch_path_taken_by_a_folder_is_an_error_not_a_traceback(tmp_path):
    cache = BatchCache(tmp_path / "r.json.partial", run_key({"k": 1}), ("falip",), BatchResult)
    cache.open()
    cache.path(0).mkdir()
    assert cache.load(0) is None
    raises_one_line(cache.save, _record(0), match="cannot write")


_HOLDER = """
import sys, time
from pathlib import Path
from pointfalip.batches import BatchCache, run_key
cache = BatchCache(Path(sys.argv[1]), run_key({"k": 1}), ("falip",))
cache.acquire()
Path(sys.argv[2]).write_text("ready")
time.sleep(120)
"""


def _wait_for(path: Path, proc, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the helper process never got ready"
        time.sleep(0.05)


def test_a_second_run_on_the_same_report_is_refused_before_any_work(main, tiny_json, tmp_path, monkeypatch):
    root = _shapes(tmp_path / "data")
    out = tmp_path / "r.json"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(partial_path(out)), str(tmp_path / "ready")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(tmp_path / "ready", holder)
        loads = []
        monkeypatch.setattr("pointfalip.cli.evaluate.load_model", lambda args: loads.append(1))
        code, _, err = main("evaluate", "--dataset", "folder", "--root", root, "--out", out, "--model", tiny_json,
                            "--pretrained", "none")
        one_line_error(code, err, f"pid {holder.pid}", "another run", "--out")
        assert not loads  # refused before the model was loaded
        with pytest.raises(InputError, match=f"pid {holder.pid}"):  # the library's own door too
            BatchCache(partial_path(out), run_key({"k": 1}), ("falip",)).acquire()
    finally:
        holder.kill()  # SIGKILL: the system releases the lock, the file stays
        holder.wait(30)
    assert (partial_path(out) / "lock").exists()
    cache = BatchCache(partial_path(out), run_key({"k": 1}), ("falip",))
    cache.acquire()  # a killed holder blocks nobody
    assert (partial_path(out) / "lock").read_text() == f"pointfalip evaluate pid {os.getpid()}\n"
    cache.release()
    assert not partial_path(out).exists()


def test_an_unwritable_resume_folder_is_refused_before_any_work(main, tiny_json, tmp_path, monkeypatch):
    root = _shapes(tmp_path / "data")
    out = tmp_path / "r.json"
    BatchCache(partial_path(out), run_key({"k": 1}), ("falip",)).open()  # a cache of an earlier run
    folder = str(partial_path(out))
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == folder and mode & os.W_OK
                        else real(p, mode, **kw))  # root may write anywhere: the folder's answer is faked
    loads = []
    monkeypatch.setattr("pointfalip.cli.evaluate.load_model", lambda args: loads.append(1))
    code, _, err = main("evaluate", "--dataset", "folder", "--root", root, "--out", out, "--model", tiny_json,
                        "--pretrained", "none")
    one_line_error(code, err, "not writable", folder)
    assert not loads


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_resume_folder_is_refused(tmp_path):
    cache = BatchCache(tmp_path / "r.json.partial", run_key({"k": 1}), ("falip",))
    cache.open()
    cache.folder.chmod(0o500)
    try:
        raises_one_line(BatchCache(cache.folder, run_key({"k": 1}), ("falip",)).acquire, match="not writable")
    finally:
        cache.folder.chmod(0o700)


def test_a_folder_holding_only_our_lock_is_ours_and_a_strange_lock_is_not(tmp_path):
    folder = tmp_path / "r.json.partial"
    folder.mkdir()
    (folder / "lock").write_text("pointfalip evaluate pid 1\n")  # a run killed before it wrote its key
    cache = BatchCache(folder, run_key({"k": 1}), ("falip",))
    cache.acquire()
    cache.open()
    cache.release()
    assert sorted(p.name for p in folder.iterdir()) == ["key.json"]
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "lock").write_text("the user's notes")
    raises_one_line(BatchCache(folder, run_key({"k": 1}), ("falip",)).acquire, match="not made by pointfalip")
    assert (folder / "lock").read_text() == "the user's notes"


# ---- C: SIGINT, SIGTERM, SIGKILL, then resume -------------------------------------------------------------
_DRIVER = """
import sys, time
from pointfalip import batches
from pointfalip.cli import main
log, stop_after = sys.argv[1], int(sys.argv[2])
real = batches.BatchCache.save
def save(self, b):
    real(self, b)
    with open(log, "a") as f:
        f.write(f"{b.start}\\n")
    if stop_after and len(self.written) == stop_after:
        open(log + ".ready", "w").close()
        time.sleep(120)
batches.BatchCache.save = save
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def signal_setup(tmp_path_factory, tiny_json):
    """The driver (the CLI, its batch saves logged, optionally stopping after N of them), a dataset, and the report
    of an uninterrupted run."""
    folder = tmp_path_factory.mktemp("signals")
    driver = folder / "driver.py"
    driver.write_text(_DRIVER)
    root = _shapes(folder / "data")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)

    def command(out, log, stop_after=0):
        return [sys.executable, str(driver), str(log), str(stop_after), "evaluate", "--dataset", "folder", "--root",
                str(root), "--out", str(out), "--model", tiny_json, "--pretrained", "none", "--precision", "fp32",
                "--batch-size", "1", "--json"]

    whole = subprocess.run(command(folder / "whole.json", folder / "whole.log"), env=env, capture_output=True,
                           text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    return SimpleNamespace(command=command, env=env, whole=json.loads(whole.stdout), root=root)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 130), (signal.SIGKILL, -9)],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_an_interrupted_evaluation_resumes_to_the_uninterrupted_report(signal_setup, tmp_path, sig, code):
    out, log = tmp_path / "r.json", tmp_path / "run.log"
    proc = subprocess.Popen(signal_setup.command(out, log, stop_after=2), env=signal_setup.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(Path(str(log) + ".ready"), proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    if code == 130:
        assert err.strip().splitlines()[-1] == "pointfalip evaluate: interrupted"
    assert not out.exists()
    done = sorted(p.name for p in partial_path(out).glob("batch_*.npz"))
    assert done == ["batch_000000000.npz", "batch_000000001.npz"]

    log.unlink()
    resumed = subprocess.run(signal_setup.command(out, log), env=signal_setup.env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert log.read_text().split() == ["2", "3", "4", "5"]  # only the batches not done
    report = json.loads(resumed.stdout)
    assert _run(report) == _run(signal_setup.whole)
    for run in report["runs"]:  # per object
        assert report["runs"][run]["predictions"] == signal_setup.whole["runs"][run]["predictions"]
    assert not partial_path(out).exists()


# ---- D: validation at the door ---------------------------------------------------------------------------
DEEP_JSON = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("option,suffix,text,words", [
    ("--prompt-file", ".json", DEEP_JSON, ["prompt file", "nests too deeply"]),
    ("--preset", ".yaml", "foveal: " + "[" * 5000 + "]" * 5000 + "\n", ["config file", "nests too deeply"]),
    ("--preset", ".yaml", "foveal: {alpha: " + "[" * 20 + "1" + "]" * 20 + "}\n", ["alpha", "nested"]),
])
def test_deep_json_and_yaml_are_one_line(main, tiny_json, tmp_path, option, suffix, text, words):
    cloud = tmp_path / "c.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32))
    path = tmp_path / f"deep{suffix}"
    path.write_text(text)
    code, _, err = main("classify", cloud, "--labels", "a,b", option, path, "--model", tiny_json, "--pretrained",
                        "none")
    one_line_error(code, err, *words)


def test_deep_rec_files_and_model_configs_are_one_line(main, tmp_path):
    data = _rec_data(tmp_path / "rec")
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP_JSON)
    common = ("evaluate", "--dataset", "refcoco", "--root", data / "images", "--model", MODEL, "--pretrained",
              "none", "--out", tmp_path / "r.json")
    one_line_error(*main(*common, "--annotations", deep)[::2], "line 1", "nests too deeply")
    one_line_error(*main(*common, "--annotations", data / "a.jsonl", "--detections", deep)[::2], "detections",
                   "nests too deeply")
    cloud = tmp_path / "c.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32))
    one_line_error(*main("classify", cloud, "--labels", "a,b", "--model", deep)[::2], "model config")


def test_a_damaged_bag_storage_is_one_line_and_leaves_no_recording(main, tiny_json, tmp_path):
    from rosbags.rosbag2 import StoragePlugin

    from test_sources import PC2, make_cloud, write_bag

    rng = np.random.default_rng(0)
    bag = write_bag(tmp_path / "bag", StoragePlugin.SQLITE3,
                    [("/points", PC2, (k + 1) * 10**8, make_cloud(rng.uniform(-1, 1, (2000, 3)), (k + 1) * 10**8))
                     for k in range(6)])
    db = next(bag.glob("*.db3"))
    data = bytearray(db.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4000] = np.random.default_rng(1).bytes(4000)  # pages of the messages
    db.write_bytes(bytes(data))
    code, _, err = main("scene", bag, "--labels", "a,b", "--model", tiny_json, "--pretrained", "none", "--no-track",
                        "--mcap", tmp_path / "out.mcap")
    one_line_error(code, err, "storage is damaged", "/points")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]


@pytest.mark.parametrize("data,label,words", [
    (np.array([[[b"x", b"y", b"z"]]], dtype="S1"), np.array([[0]]), ["'data' holds byte-string values"]),
    (np.zeros((1, 4, 3), dtype=[("a", "f4"), ("b", "i4")]), np.array([[0]]), ["compound"]),
    (np.zeros((1, 4, 3), dtype=np.complex64), np.array([[0]]), ["complex"]),
    (np.zeros((1, 4, 3), np.float32), np.array([[b"a"]]), ["'label' holds byte-string values"]),
    (np.zeros((1, 4, 3), np.float32), np.array([[np.inf]]), ["label", "infinite"]),
])
def test_h5_arrays_of_unexpected_dtypes_are_one_line(tmp_path, data, label, words):
    root = tmp_path / "modelnet40_ply_hdf5_2048"
    root.mkdir()
    with h5py.File(root / "ply_data_test0.h5", "w") as f:
        f["data"], f["label"] = data, label
    (root / "test_files.txt").write_text("data/modelnet40_ply_hdf5_2048/ply_data_test0.h5\n")
    msg = raises_one_line(open_dataset, "modelnet40", root)
    assert all(w in msg for w in words), msg


@pytest.mark.parametrize("env,words", [
    ({"RANK": "abc"}, ["RANK=abc", "not an integer"]),
    ({"WORLD_SIZE": "two"}, ["WORLD_SIZE=two"]),
    ({"WORLD_SIZE": "0"}, ["WORLD_SIZE=0", "at least 1"]),
    ({"WORLD_SIZE": "2"}, ["RANK is not set"]),
    ({"WORLD_SIZE": "2", "RANK": "5"}, ["RANK=5", "outside"]),
    ({"LOCAL_RANK": "-1"}, ["LOCAL_RANK=-1"]),
    ({"LOCAL_RANK": "x" * 5000}, ["LOCAL_RANK=xxx", "(5000 characters)"]),
])
def test_torchrun_variables_holding_garbage_are_one_line_before_any_work(main, tiny_json, tmp_path, monkeypatch,
                                                                          env, words):
    root = _shapes(tmp_path / "data")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _, err = main("evaluate", "--dataset", "folder", "--root", root, "--out", tmp_path / "r.json", "--model",
                        tiny_json, "--pretrained", "none")
    one_line_error(code, err, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_a_class_folder_or_label_that_is_not_utf8_is_one_line(main, tiny_json, tmp_path):
    root = _shapes(tmp_path / "data")
    os.rename(root / "ball", os.fsdecode(bytes(root) + b"/caf\xe9"))
    code, _, err = main("evaluate", "--dataset", "folder", "--root", root, "--out", tmp_path / "r.json", "--model",
                        tiny_json, "--pretrained", "none")
    one_line_error(code, err, "class folder", "caf\\udce9", "not valid utf-8")
    cloud = root / "cube" / "cube_0.npy"
    one_line_error(*main("classify", cloud, "--labels", "a,caf\udce9", "--model", tiny_json, "--pretrained",
                         "none")[::2], "label", "not valid utf-8")
    prompts = tmp_path / "p.json"
    prompts.write_text('{"a": ["a photo of \\ud800"], "b": ["b"]}')
    one_line_error(*main("classify", cloud, "--labels", "a,b", "--prompt-file", prompts, "--model", tiny_json,
                         "--pretrained", "none")[::2], "prompt file", "not valid utf-8")


def test_a_file_name_that_is_not_utf8_is_reported_and_printed_escaped(main, tiny_json, tmp_path):
    root = _shapes(tmp_path / "data")
    bad = os.fsdecode(bytes(root) + b"/cube/broken\xfe.npy")
    Path(bad).write_bytes(b"not a cloud")
    out = tmp_path / "r.json"
    code, text, err = main("evaluate", "--dataset", "folder", "--root", root, "--out", out, "--model", tiny_json,
                           "--pretrained", "none")
    assert code == 0, err
    report = json.loads(out.read_text(encoding="utf-8"))  # valid UTF-8 JSON; the name's byte escaped
    assert [s["source"] for s in report["skipped"]] == [bad]
    assert "broken\\udcfe" in err  # the warning, escaped
    assert not partial_path(out).exists()


def test_a_rec_caption_with_a_lone_surrogate_is_one_line(main, tmp_path):
    data = _rec_data(tmp_path / "rec")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_rec_line(1, [[5, 5, 30, 20]], 10, text="the \ud800 thing")) + "\n")
    code, _, err = main("evaluate", "--dataset", "refcoco", "--root", data / "images", "--annotations", bad,
                        "--model", MODEL, "--pretrained", "none", "--out", tmp_path / "r.json")
    one_line_error(code, err, "line 1", "sentence 0", "not valid utf-8")


# ---- E: nothing left after a late failure -----------------------------------------------------------------
def test_a_failing_render_leaves_no_recording(main, tiny_json, tmp_path, monkeypatch):
    cloud = tmp_path / "scene.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(500, 3)).astype(np.float32))

    def broken(*args, **kwargs):
        raise InputError("the picture cannot be drawn")

    monkeypatch.setattr("pointfalip.render.save_scene", broken)
    code, _, err = main("scene", cloud, "--labels", "a,b", "--model", tiny_json, "--pretrained", "none", "--mcap",
                        tmp_path / "out.mcap", "--render", tmp_path / "top.png")
    one_line_error(code, err, "cannot be drawn")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene.npy"]


def test_a_failing_part_picture_takes_the_written_ply_with_it(main, tiny_json, tmp_path, monkeypatch):
    cloud = tmp_path / "c.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(200, 3)).astype(np.float32))

    def broken(*args, **kwargs):
        raise InputError("the picture cannot be drawn")

    monkeypatch.setattr("pointfalip.render.save_part_sheet", broken)
    code, _, err = main("segment", cloud, "--parts", "a,b", "--model", tiny_json, "--pretrained", "none", "-o",
                        tmp_path / "parts.ply", "--render", tmp_path / "parts.png")
    one_line_error(code, err, "cannot be drawn")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npy"]


def test_an_empty_last_frame_is_rendered_not_a_traceback(tmp_path):
    from pointfalip.render import save_scene

    save_scene(tmp_path / "empty.png", np.zeros((0, 3), np.float32), [], up_axis="z")
    assert Image.open(tmp_path / "empty.png").size[0] > 0


def test_a_report_that_cannot_be_written_takes_the_task_files_with_it(tmp_path, model, monkeypatch):
    root = _shapes(tmp_path / "data", per_class=1)
    out = tmp_path / "r.json"

    def refuse(path, text):
        raise InputError("the disk is full")

    monkeypatch.setattr(batches, "_write_text", refuse)
    with pytest.raises(InputError, match="disk is full"):
        _eval(model, root, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no report, no picture, no resume folder


# ---- F: REC garbage --------------------------------------------------------------------------------------
@pytest.mark.parametrize("lines,dets,words", [
    ([_rec_line(1, [[5, 5, -30, 20]], 10)], None, ["negative width"]),
    ([_rec_line(1, [[5, 5, 30, 0]], 10)], None, ["zero height"]),
    ([_rec_line(1, [[5, 5, 30, 20], [1, 1, 5, 5]], 10, anns=[{"bbox": [5, 5, 30, 20], "id": 10},
                                                             {"bbox": [1, 1, 5, 5], "id": 10}])], None,
     ["two anns have the id 10"]),
    ([_rec_line(1, [[5, 5, 30, 20]], 10, anns=[{"bbox": [5, 5, 30, 20], "id": {"x": 1}}])], None, ["ann 0 has id"]),
    ([_rec_line(1, [[5, 5, 30, 20]], 10, image_id=2)], None, ["image_id 2", "(1)"]),
    ([_rec_line(1, [[5, 5, 30, 20]], 10, image_id=-1)], None, ["negative"]),
    ([_rec_line(1, [[5, 5, 30, 20]], 10)], {"999": [[0, 0, 10, 10]]}, ["name none of the 1 images", "999"]),
])
def test_rec_garbage_is_refused(main, tmp_path, lines, dets, words):
    data = _rec_data(tmp_path / "rec")
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    extra = []
    if dets is not None:
        (tmp_path / "d.json").write_text(json.dumps(dets))
        extra = ["--detections", tmp_path / "d.json"]
    code, _, err = main("evaluate", "--dataset", "refcoco", "--root", data / "images", "--annotations", bad, *extra,
                        "--model", MODEL, "--pretrained", "none", "--out", tmp_path / "r.json")
    one_line_error(code, err, *words)
    assert not (tmp_path / "r.json").exists() and not partial_path(tmp_path / "r.json").exists()


def test_detections_naming_some_of_the_images_warn(tmp_path, caplog):
    data = _rec_data(tmp_path / "rec")
    (tmp_path / "d.json").write_text(json.dumps({"1": [[0, 0, 10, 10]]}))
    with caplog.at_level(logging.WARNING, logger="pointfalip"):
        dataset = refcoco.open_rec_dataset("refcoco", data / "images", data / "a.jsonl", tmp_path / "d.json")
    assert "name 1 of the 2 images" in caplog.text
    assert dataset.images[1].boxes == [(0.0, 0.0, 80.0, 60.0)]  # image 2: the whole image, as ReCLIP does


def test_the_same_image_under_two_ids_is_refused(tmp_path):
    data = _rec_data(tmp_path / "rec")
    shutil.copy(data / "images" / "COCO_train2014_000000000001.jpg", data / "images" / "photo.jpg")
    lines = [{**_rec_line(1, [[5, 5, 30, 20]], 10), "file_name": "photo.jpg", "image_id": k} for k in (1, 1, 2)]
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    raises_one_line(refcoco.open_rec_dataset, "refcoco", data / "images", tmp_path / "x.jsonl",
                    match="line 3: image_id 2 for photo.jpg, which an earlier line gives the image_id 1")
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(x) for x in lines[:2]))
    assert len(refcoco.open_rec_dataset("refcoco", data / "images", tmp_path / "x.jsonl").images) == 1


# ---- G: pacing -------------------------------------------------------------------------------------------
class FakeClock:
    def __init__(self):
        self.now, self.slept = 50.0, []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.slept.append(round(seconds, 9))
        self.now += seconds


def test_an_odd_stamp_is_paced_by_arrival_with_one_warning(caplog):
    clock = FakeClock()
    pacer = RealtimePacer(clock=clock, sleep=clock.sleep)
    t = 1_700_000_000 * 10**9
    stamps = [t, t + 10**8, 0, t + 2 * 10**8, t + 3 * 10**8, t + 10**18, t + 10**18 + 10**8, t + 4 * 10**8]
    with caplog.at_level(logging.WARNING, logger="pointfalip"):
        for s in stamps:
            pacer.wait(s)
    # 0.1 s paced; the stamp 0 and the frame after it at arrival; 0.1 s; the jump of 31 years and the frame back
    # at arrival, the one after the jump 0.1 s after it
    assert clock.slept == [0.1, 0.1, 0.1]
    assert clock.now - 50.0 == pytest.approx(0.3)
    assert pacer.odd_stamps == 4
    assert len([r for r in caplog.records if "pacing such frames by their arrival" in r.getMessage()]) == 1


def test_a_loop_starting_over_is_not_an_odd_stamp(caplog):
    from test_stream import EchoScene, frames_of

    clock = FakeClock()
    items = []
    with caplog.at_level(logging.WARNING, logger="pointfalip"):
        for item in stream(EchoScene(), lambda: frames_of([np.zeros((1, 3))] * 3), realtime=True, loop=True,
                           clock=clock, sleep=clock.sleep, now_ns=lambda: 0):
            items.append(item)
            if len(items) == 6:
                break
    assert "arrival" not in caplog.text and len(clock.slept) == 4  # two passes, two paced steps each


def test_the_pacer_refuses_a_gap_that_is_not_a_duration():
    with pytest.raises(InputError, match="max_gap_s"):
        RealtimePacer(max_gap_s=0)


# ---- H: one log per frame whatever the number of sinks ---------------------------------------------------
def _topic_counts(path: Path) -> dict:
    from mcap.reader import make_reader

    counts: dict = {}
    with open(path, "rb") as fh:
        for _, channel, _ in make_reader(fh).iter_messages():
            counts[channel.topic] = counts.get(channel.topic, 0) + 1
    return counts


def test_a_recording_holds_each_frame_once_with_or_without_the_live_view(main, tiny_json, tmp_path):
    pytest.importorskip("mcap.reader")
    from rosbags.rosbag2 import StoragePlugin

    from test_sources import PC2, make_cloud, write_bag

    rng = np.random.default_rng(0)
    bag = write_bag(tmp_path / "bag", StoragePlugin.MCAP,
                    [("/points", PC2, (k + 1) * 10**8, make_cloud(rng.uniform(-1, 1, (400, 3)), (k + 1) * 10**8))
                     for k in range(3)])
    counts = {}
    for serve in (False, True):
        out = tmp_path / f"serve_{serve}.mcap"
        extra = ["--serve", "--port", "0", "--wait", "0"] if serve else []
        code, _, err = main("scene", bag, "--labels", "a,b", "--model", tiny_json, "--pretrained", "none", "--mcap",
                            out, *extra)
        assert code == 0, err
        counts[serve] = _topic_counts(out)
    assert counts[False] == counts[True] == {"/pointfalip/points": 3, "/pointfalip/objects": 3,
                                             "/pointfalip/transforms": 3}


# ---- I: true and short messages --------------------------------------------------------------------------
def test_shown_cuts_a_value_and_says_how_long_it_was():
    assert shown("short") == "short" and shown([1, 2]) == "[1, 2]"
    text = shown("x" * 150_000)
    assert len(text) < 120 and text.endswith("... (150000 characters)")


@pytest.mark.parametrize("text,words", [
    ("projection: " + "x" * 150_000 + "\n", ["projection", "150000 characters"]),
    ("foveal: {mode: " + "y" * 150_000 + "}\n", ["foveal: mode", "150000 characters"]),
    ("foveal: {layers: [" + ",".join(["1.5"] * 20_000) + "]}\n", ["foveal: layers", "20000 items"]),
    ("foveal: {sigma: 1.0e-308}\n", ["foveal: sigma", "1e-308"]),
    ("foveal: {eps: 1.0e-320}\n", ["foveal: eps"]),
    ("foveal: {alpha: 1.0e+308}\n", ["foveal: alpha", "1e+308"]),
    ("foveal: {alpha: 1000.0}\n", ["foveal alpha", "0 to 100"]),
    ("foveal: {amplify: -1.0e+6}\n", ["foveal amplify", "-100 to 100"]),
    ("foveal: {sigma: 1.0e-6}\n", ["foveal sigma", "0.001"]),
])
def test_extreme_or_huge_preset_values_are_short_lines_naming_the_setting(main, tiny_json, tmp_path, text, words):
    cloud = tmp_path / "c.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32))
    (tmp_path / "p.yaml").write_text(text)
    code, _, err = main("classify", cloud, "--labels", "a,b", "--preset", tmp_path / "p.yaml", "--model", tiny_json,
                        "--pretrained", "none")
    one_line_error(code, err, *words)
    assert len(err) < 400, len(err)


def test_an_extreme_parts_setting_is_one_line_naming_it(main, tiny_json, tmp_path):
    import yaml

    from pointfalip.presets import config_file

    settings = yaml.safe_load(config_file("parts/pointfalip_parts.yaml").read_text())
    settings["projection"]["gaussian_sigma"] = 1e-308
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(settings))
    cloud = tmp_path / "c.npy"
    np.save(cloud, np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32))
    code, _, err = main("segment", cloud, "--parts", "a,b", "--preset", tmp_path / "p.yaml", "--model", tiny_json,
                        "--pretrained", "none")
    one_line_error(code, err, "gaussian_sigma", "1e-308")


def test_an_enormous_error_keeps_its_start_and_its_end(main, monkeypatch):
    import dataclasses

    from pointfalip.cli import COMMANDS

    def fail(args):
        raise InputError("start " + "z" * 50_000 + " what to do")

    monkeypatch.setitem(COMMANDS, "demo", dataclasses.replace(COMMANDS["demo"], run=fail))
    code, _, err = main("demo")
    one_line_error(code, err, "start zzz", "characters cut", "what to do")
    assert len(err) < 1100
