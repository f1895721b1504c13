"""Hostile input, round three, by class: (A) no output is an input of the run or lands inside an input folder, every
output is checked before any work and a run that fails after starting leaves nothing it made; (B) garbage in a
few-shot cache or a ShapeNetPart shape is refused; (C) no traceback for bad seeds, non-finite preset numbers,
foveal heads the model lacks, or a result that is not finite; (D) folders, devices, named pipes and process
substitutions are named for what they are, pipes can be read where a file is read once, and a named pipe with no
writer never hangs."""
import json
import os
import threading
from argparse import Namespace

import h5py
import numpy as np
import pytest
import torch

from pointfalip import files, fewshot
from pointfalip.batches import BatchCache, partial_path, run_batches, run_key
from pointfalip.errors import InputError
from pointfalip.evaluate import BatchResult

from conftest import TINY, load_random, one_line_error, raises_one_line


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "pf-r3-16.json"
    path.write_text(json.dumps(TINY["pf-tiny-16"]))
    return str(path)


@pytest.fixture
def cloud(tmp_path):
    path = tmp_path / "cloud.npy"
    np.save(path, np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32))
    return path


def _folder_dataset(root, classes=("cube", "ball"), per_class=2, points=64):
    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            np.save(root / c / f"{c}_{k}.npy", rng.normal(size=(points, 3)).astype(np.float32))
    return root


def _snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes() if p.is_file() else None) for p in folder.rglob("*"))


# ---- A: harm and leftovers -------------------------------------------------------------------------------
def test_an_output_inside_an_input_folder_is_refused(tmp_path):
    bag = tmp_path / "bag"
    bag.mkdir()
    (bag / "bag_0.mcap").write_bytes(b"recording")
    for target in (bag / "bag_0.mcap", bag / "new.mcap", tmp_path / "bag" / "." / "other.mcap"):
        with pytest.raises(InputError, match="input folder|input of this run"):
            files.check_output(target, "--mcap", inputs=[bag], suffixes=(".mcap",))
    link = tmp_path / "alias"
    link.symlink_to(bag)
    with pytest.raises(InputError, match="input"):
        files.check_output(link / "x.mcap", "--mcap", inputs=[bag])
    assert files.check_output(tmp_path / "beside.mcap", "--mcap", inputs=[bag]) == tmp_path / "beside.mcap"
    assert (bag / "bag_0.mcap").read_bytes() == b"recording"


@pytest.mark.parametrize("target", ["bag/bag_0.mcap", "bag/new.mcap", "data/r.json"])
def test_a_bag_or_a_dataset_root_is_never_written_into(main, tiny_json, tmp_path, target):
    """`scene BAG --mcap BAG/BAG.mcap` replaced the bag; an evaluation report inside its dataset root joins it."""
    bag = tmp_path / "bag"
    bag.mkdir()
    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    (bag / "bag_0.mcap").write_bytes(b"the user's recording")
    root = _folder_dataset(tmp_path / "data")
    before = _snapshot(tmp_path)
    if target.startswith("bag"):
        code, _, err = main("scene", bag, "--labels", "a,b", "--mcap", tmp_path / target, "--model", tiny_json,
                            "--pretrained", "none")
    else:
        code, _, err = main("evaluate", "--dataset", "folder", "--root", root, "--out", tmp_path / target, "--model",
                            tiny_json, "--pretrained", "none")
    one_line_error(code, err, "input folder")
    assert _snapshot(tmp_path) == before


def test_a_device_is_never_an_output(tmp_path):
    with pytest.raises(InputError, match="device"):
        files.check_output("/dev/null", "-o")


def test_run_inputs_holds_every_file_the_command_line_reads(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("{}")
    args = Namespace(files=["a.npy", "b.ply"], preset=str(preset), prompt_file="prompts.json", labels_file="l.txt",
                     fewshot="c.fewshot", pretrained="openai", model="ViT-B-16", root=str(tmp_path / "data"))
    got = {str(p) for p in files.run_inputs(args)}
    assert got == {"a.npy", "b.ply", str(preset), "prompts.json", "l.txt", "c.fewshot", str(tmp_path / "data")}


@pytest.mark.parametrize("option", ["--prompt-file", "--preset", "--labels-file"])
def test_render_and_classify_inputs_are_never_overwritten(main, cloud, tiny_json, tmp_path, option):
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"not really a png but the user's file")
    if option == "--preset":  # render reads a preset only
        code, out, err = main("render", cloud, "-o", victim, "--model", tiny_json, option, victim)
        one_line_error(code, err, "input of this run")
    args = ["evaluate", "--dataset", "folder", "--root", _folder_dataset(tmp_path / "data"), "--model", tiny_json,
            "--pretrained", "none", "--out", tmp_path / "victim.json"]
    (tmp_path / "victim.json").write_text('{"mine": 1}\n')
    flag = {"--preset": "--preset", "--prompt-file": "--prompt-file", "--labels-file": "--train-root"}[option]
    code, out, err = main(*args, flag, tmp_path / "victim.json")
    one_line_error(code, err, "input")
    assert (tmp_path / "victim.json").read_text() == '{"mine": 1}\n'
    assert victim.read_bytes() == b"not really a png but the user's file"


def test_fewshot_build_never_writes_over_its_inputs(main, tiny_json, tmp_path):
    root = _folder_dataset(tmp_path / "data")
    code, _, err = main("fewshot", "build", "--dataset", "folder", "--root", root, "-o", root / "cube" / "c.fewshot",
                        "--model", tiny_json, "--pretrained", "none")
    one_line_error(code, err, "input folder")
    assert not (root / "cube" / "c.fewshot").exists()


def test_evaluate_checks_the_confusion_picture_before_any_work(main, tiny_json, tmp_path):
    root = _folder_dataset(tmp_path / "data")
    (tmp_path / "r.confusion.png").mkdir()
    code, out, err = main("evaluate", "--dataset", "folder", "--root", root, "--model", tiny_json, "--pretrained",
                          "none", "--out", tmp_path / "r.json")
    one_line_error(code, err, "confusion", "folder")
    assert not (tmp_path / "r.json").exists() and not partial_path(tmp_path / "r.json").exists()


def test_a_fewshot_cache_of_another_width_fails_before_any_batch(main, tiny_json, tmp_path):
    root = _folder_dataset(tmp_path / "data")
    model = load_random(tiny_json, precision="fp32")
    from pointfalip import Recognizer

    rec = Recognizer(model, labels=["cube", "ball"], cache_dir=False)
    wide = fewshot.build_cache(torch.nn.functional.normalize(torch.randn(2, 10, 48), dim=-1), [0, 1],
                               ["cube", "ball"], torch.ones(10), rec.fewshot_metadata(1, None))
    fewshot.save_cache(tmp_path / "wide.fewshot", wide)
    code, _, err = main("evaluate", "--dataset", "folder", "--root", root, "--model", tiny_json, "--pretrained",
                        "none", "--precision", "fp32", "--fewshot", tmp_path / "wide.fewshot", "--out",
                        tmp_path / "r.json")
    one_line_error(code, err, "48 features", "rebuild")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "wide.fewshot"]


def _record(start, n=2):
    return BatchResult(start, np.arange(start, start + n), np.zeros(n, np.int64), {"falip": np.zeros(n, np.int64)},
                       [(start, "x", "why")])


def test_a_user_error_mid_run_removes_what_the_run_wrote(tmp_path):
    key = run_key({"what": "test"})

    def failing(lo, hi):
        yield _record(lo)
        raise InputError("item 3 is garbage")

    cache = BatchCache(tmp_path / "r.json.partial", key, ("falip",), BatchResult)
    with pytest.raises(InputError):
        run_batches(cache, 6, 2, failing, False, "t")
    assert not (tmp_path / "r.json.partial").exists()
    # a resumed run removes only the batches it wrote itself
    cache = BatchCache(tmp_path / "r.json.partial", key, ("falip",), BatchResult)
    assert run_batches(cache, 2, 2, lambda lo, hi: iter([_record(lo)]), False, "t")
    cache = BatchCache(tmp_path / "r.json.partial", key, ("falip",), BatchResult)
    with pytest.raises(InputError):
        run_batches(cache, 6, 2, failing, False, "t")
    assert sorted(p.name for p in (tmp_path / "r.json.partial").iterdir()) == ["batch_000000000.npz", "key.json"]


def test_the_batch_cache_reads_back_what_it_saved(tmp_path):
    cache = BatchCache(tmp_path / "c", run_key({"k": 1}), ("falip", "baseline"), BatchResult)
    cache.open()
    b = BatchResult(4, np.array([4, 5]), np.array([1, 0]), {"falip": np.array([1, 1]), "baseline": np.array([0, 0])},
                    [(6, "f.npy", "NaN coordinates")])
    cache.save(b)
    got = cache.load(4)
    assert got.start == 4 and got.skipped == [(6, "f.npy", "NaN coordinates")]
    assert all(np.array_equal(getattr(got, f), getattr(b, f)) for f in ("indices", "labels"))
    assert all(np.array_equal(got.predictions[r], b.predictions[r]) for r in ("falip", "baseline"))
    np.savez(cache.path(6), start=np.int64(6), indices=np.arange(3), labels=np.arange(2))  # inconsistent
    assert cache.load(6) is None


def _part_release(root, data, pid):
    folder = root / "hdf5_data"
    folder.mkdir(parents=True)
    with h5py.File(folder / "ply_data_test0.h5", "w") as f:
        f["data"] = data
        f["label"] = np.full((len(data), 1), 11, np.uint8)  # mug: parts 36, 37
        f["pid"] = pid
    (folder / "test_hdf5_file_list.txt").write_text("ply_data_test0.h5\n")
    return root


def _good_shapes(n=3, points=64):
    rng = np.random.default_rng(3)
    return rng.normal(size=(n, points, 3)).astype(np.float32), np.full((n, points), 36, np.uint8)


@pytest.mark.parametrize("damage", ["nan", "four points", "one repeated point", "part of another category"])
def test_a_damaged_shapenetpart_shape_fails_in_one_line_and_leaves_nothing(main, tiny_json, tmp_path, damage):
    data, pid = _good_shapes()
    if damage == "nan":
        data[2, 5] = np.nan
    elif damage == "four points":
        data, pid = data[:, :4], pid[:, :4]
    elif damage == "one repeated point":
        data[2] = data[2, 0]
    else:
        pid[2, 0] = 4  # a bag's part
    root = _part_release(tmp_path / "release", data, pid)
    before = _snapshot(root)
    code, out, err = main("evaluate", "--dataset", "shapenetpart", "--root", root, "--model", tiny_json,
                          "--pretrained", "none", "--batch-size", "1", "--out", tmp_path / "parts.json")
    words = {"nan": ["non-finite"], "four points": ["distinct"], "one repeated point": ["distinct"],
             "part of another category": ["part 4"]}[damage]
    one_line_error(code, err, *words)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]
    assert _snapshot(root) == before


# ---- B: garbage accepted -----------------------------------------------------------------------------------
def _cache(**changes):
    feats = torch.nn.functional.normalize(torch.randn(4, 3, 8), dim=-1)
    values = dict(view_keys=feats, keys=fewshot.fuse_views(feats, torch.ones(3)), labels=["a", "b"],
                  targets=torch.tensor([0, 1, 0, 1]), alpha=1.0, beta=5.5)
    values.update(changes)
    return values


@pytest.mark.parametrize("change,words", [
    ({"alpha": float("nan")}, ["alpha"]), ({"alpha": float("inf")}, ["alpha"]), ({"beta": -1.0}, ["beta"]),
    ({"beta": float("nan")}, ["beta"]), ({"alpha": "1"}, ["alpha"]),
    ({"keys": torch.full((4, 8), float("nan"))}, ["nan"]), ({"keys": torch.ones(4, 8)}, ["unit"]),
    ({"view_keys": torch.full((4, 3, 8), float("inf"))}, ["infinite"]), ({"keys": torch.ones(4, 7)}, ["shapes"]),
])
def test_a_garbage_cache_is_refused(change, words):
    message = raises_one_line(fewshot.FewShotCache, **_cache(**change))
    for w in words:
        assert w.lower() in message.lower(), message


def _save_with_header(path, **header_changes):
    """A cache file whose JSON metadata is edited after saving (what a hostile or damaged file holds)."""
    from safetensors.torch import load, save

    fewshot.save_cache(path, fewshot.FewShotCache(**_cache()))
    data = path.read_bytes()
    size = int.from_bytes(data[:8], "little")
    strings = json.loads(data[8:8 + size])["__metadata__"]
    strings.update({k: v for k, v in header_changes.items()})
    path.write_bytes(save(load(data), metadata=strings))


@pytest.mark.parametrize("alpha", ["NaN", "Infinity", "-2", '"x"'])
def test_a_cache_file_with_a_bad_alpha_is_refused_on_load(tmp_path, alpha):
    _save_with_header(tmp_path / "c.fewshot", alpha=alpha)
    message = raises_one_line(fewshot.load_cache, tmp_path / "c.fewshot")
    assert "alpha" in message and "c.fewshot" in message


def test_a_nan_cache_never_reaches_a_printed_probability(main, cloud, tiny_json, tmp_path):
    _save_with_header(tmp_path / "c.fewshot", alpha="NaN")
    code, out, err = main("classify", cloud, "--labels", "a,b", "--fewshot", tmp_path / "c.fewshot", "--model",
                          tiny_json, "--pretrained", "none")
    one_line_error(code, err, "alpha")
    assert "nan" not in out.lower()


# ---- C: tracebacks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seeds", ["-1", "1,-5", "x", ",", "99999999999"])
def test_bad_seeds_are_one_line(main, tiny_json, tmp_path, seeds):
    code, _, err = main("evaluate", "--dataset", "folder", "--root", tmp_path, "--shots", "1", f"--seeds={seeds}",
                        "--model", tiny_json, "--pretrained", "none")
    one_line_error(code, err, "--seeds")


@pytest.mark.parametrize("text,words", [
    ("projection: {translation: [.nan, 0, 0]}", ["translation"]),
    ("projection: {depth_bias: .inf}", ["depth_bias"]),
    ("projection: {obj_ratio: .nan}", ["obj_ratio"]),
    ("projection: {gaussian_sigma: .nan}", ["gaussian_sigma"]),
    ("projection: {crop: [1.5, 100]}", ["crop"]),
    ("projection: {resolution: .inf}", ["resolution"]),
])
def test_non_finite_parts_preset_numbers_are_one_line(main, cloud, tiny_json, tmp_path, text, words):
    preset = tmp_path / "parts.yaml"
    preset.write_text(text)
    code, _, err = main("segment", cloud, "--parts", "a,b", "--preset", preset, "--model", tiny_json,
                        "--pretrained", "none")
    one_line_error(code, err, *words)


def test_foveal_heads_the_model_lacks_are_one_line(main, cloud, tiny_json, tmp_path):
    preset = tmp_path / "heads.yaml"
    preset.write_text("foveal: {heads: [99]}")
    code, _, err = main("classify", cloud, "--labels", "a,b", "--preset", preset, "--model", tiny_json,
                        "--pretrained", "none")
    one_line_error(code, err, "heads", "99")
    with pytest.raises(InputError, match="heads"):
        load_random("pf-tiny-16").resolve_heads([-3])


@pytest.mark.parametrize("as_json", [True, False])
def test_a_non_finite_result_prints_nothing(main, monkeypatch, as_json):
    from pointfalip import cli

    command = cli.COMMANDS["classify"]
    monkeypatch.setitem(cli.COMMANDS, "classify", cli.Command(
        command.name, command.help, command.arguments,
        lambda args: [{"file": "x", "predictions": [{"label": "a", "score": float("nan")}]}], command.printer))
    code, out, err = main("classify", "x.npy", "--labels", "a", *(["--json"] if as_json else []))
    assert code == 1 and out == ""
    assert "non-finite" in err and "[0].predictions[0].score" in err and "Traceback" not in err


# ---- D: true messages ----------------------------------------------------------------------------------------
def _pipe(data: bytes) -> str:
    """/dev/fd/N of a pipe holding ``data`` with its writer closed, as ``<(printf ...)`` gives a program."""
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return f"/dev/fd/{r}"


@pytest.mark.parametrize("reader", ["point file", "image", "checkpoint", "model config"])
def test_kinds_of_paths_are_named_for_what_they_are(main, cloud, tiny_json, tmp_path, reader):
    fifo = tmp_path / "fifo.npy"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.npy"
    folder.mkdir()
    for path, words in ((folder, ["folder"]), ("/dev/null", ["device"]), (fifo, ["named pipe"]),
                        (_pipe(b"x"), ["pipe", "process substitution"])):
        if reader == "point file":
            args = ["classify", path, "--labels", "a,b", "--model", tiny_json, "--pretrained", "none"]
        elif reader == "image":
            args = ["classify-image", path, "--labels", "a,b", "--model", tiny_json, "--pretrained", "none"]
        elif reader == "checkpoint":
            args = ["classify", cloud, "--labels", "a,b", "--model", tiny_json, "--pretrained", path]
        else:
            if path == folder:
                path = tmp_path / "folder.json"
                path.mkdir()
            args = ["render", cloud, "-o", tmp_path / "v.png", "--model", path]
            if str(path).startswith(("/dev/fd", "/dev/null")) or path == fifo:
                continue  # a model config is named by its .json suffix
        code, _, err = main(*args)
        one_line_error(code, err, *words)


def test_labels_prompts_and_presets_read_from_pipes(main, cloud, tiny_json):
    code, out, err = main("classify", cloud, "--labels-file", _pipe(b"chair\ntable\n"), "--prompt-file",
                          _pipe(json.dumps({"chair": ["a chair"], "table": ["a table"]}).encode()), "--preset",
                          _pipe(b"projection: simple\n"), "--model", tiny_json, "--pretrained", "none", "--json")
    assert code == 0, err
    assert {p["label"] for p in json.loads(out)[0]["predictions"]} == {"chair", "table"}


def test_a_parts_preset_read_from_a_pipe_serves_every_step(main, cloud, tiny_json):
    code, out, err = main("segment", cloud, "--parts", "a,b", "--preset", _pipe(b"dense: clearclip\n"), "--model",
                          tiny_json, "--pretrained", "none", "--json")
    assert code == 0, err
    assert json.loads(out)["dense"] == "clearclip"


def test_a_named_pipe_with_no_writer_never_hangs(main, cloud, tiny_json, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "PIPE_WAIT_S", 0.3)
    fifo = tmp_path / "labels.fifo"
    os.mkfifo(fifo)
    result = {}
    worker = threading.Thread(target=lambda: result.update(zip(("code", "out", "err"), main(
        "classify", cloud, "--labels-file", fifo, "--model", tiny_json, "--pretrained", "none"))))
    worker.start()
    worker.join(60)
    if worker.is_alive():  # unblock the reader so that the test run itself ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("reading a named pipe with no writer hung")
    one_line_error(result["code"], result["err"], "nothing came through", "labels file")


def test_a_named_pipe_with_a_writer_is_read(tmp_path):
    fifo = tmp_path / "p.fifo"
    os.mkfifo(fifo)

    def write():
        with open(fifo, "wb") as f:
            f.write(b"a\nb\n")

    writer = threading.Thread(target=write)
    writer.start()
    assert files.read_input_text(fifo, "labels file") == "a\nb\n"
    writer.join(10)


def test_a_listed_shapenetpart_file_that_is_a_folder_is_named_a_folder(tmp_path):
    from pointfalip.datasets import open_dataset

    folder = tmp_path / "hdf5_data"
    (folder / "ply_data_test0.h5").mkdir(parents=True)
    (folder / "test_hdf5_file_list.txt").write_text("ply_data_test0.h5\n")
    message = raises_one_line(open_dataset, "shapenetpart", tmp_path)
    assert "is a folder" in message and "does not exist" not in message


def test_tuning_one_shot_a_label_does_not_claim_to_have_tuned():
    from pointfalip import Recognizer

    rec = Recognizer(load_random("pf-tiny-16", precision="fp32"), labels=["a", "b"], cache_dir=False)
    feats = rec.embed(np.random.default_rng(0).normal(size=(2, 64, 3)).astype(np.float32))
    one = fewshot.cache_from_features(rec, feats, [0, 1], 1, 64, tune_cache=True)
    assert one.metadata["tuned"] is False and (one.alpha, one.beta) == (fewshot.DEFAULT_ALPHA, fewshot.DEFAULT_BETA)
    two = fewshot.cache_from_features(rec, torch.cat([feats, feats]), [0, 1, 0, 1], 2, 64, tune_cache=True)
    assert two.metadata["tuned"] is True
