"""What the tool writes: an existing file is replaced only when the tool wrote it or with --force, default-named
outputs take the next free name, every written file is named on stdout; the samples folder and what it holds;
reports that name their objects; --tune saying that it switched the cache off."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, one_line_error, raises_one_line


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "pf-out-16.json"
    path.write_text(json.dumps(TINY["pf-tiny-16"]))
    return str(path)


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    from pointfalip.samples import write_samples

    folder = tmp_path_factory.mktemp("s") / "samples"
    return folder, write_samples(folder)


# ---- the mark and the rule -------------------------------------------------------------------------------------
def test_the_tools_own_files_carry_its_mark(tmp_path):
    from pointfalip.batches import write_report
    from pointfalip.files import made_by_pointfalip, mark_ply, save_npy
    from pointfalip.render import save_image

    picture = Image.new("RGB", (8, 8))
    for suffix in (".png", ".jpg"):
        save_image(picture, tmp_path / f"ours{suffix}")
        picture.save(tmp_path / f"theirs{suffix}")
        assert made_by_pointfalip(tmp_path / f"ours{suffix}") and not made_by_pointfalip(tmp_path / f"theirs{suffix}")
    values = np.arange(7, dtype=np.int64)
    with open(tmp_path / "ours.npy", "wb") as f:
        save_npy(f, values)
    np.save(tmp_path / "theirs.npy", values)
    assert np.array_equal(np.load(tmp_path / "ours.npy"), values)  # numpy reads the marked header as ever
    assert made_by_pointfalip(tmp_path / "ours.npy") and not made_by_pointfalip(tmp_path / "theirs.npy")
    ply = b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n"
    (tmp_path / "ours.ply").write_bytes(mark_ply(ply))
    (tmp_path / "theirs.ply").write_bytes(ply)
    assert (tmp_path / "ours.ply").read_bytes().split(b"\n")[:3] == [b"ply", b"format ascii 1.0",
                                                                     b"comment made by pointfalip"]
    assert made_by_pointfalip(tmp_path / "ours.ply") and not made_by_pointfalip(tmp_path / "theirs.ply")
    write_report(tmp_path / "ours.json", {"task": "classification", "runs": {}})
    (tmp_path / "theirs.json").write_text('{"runs": 1}')
    assert made_by_pointfalip(tmp_path / "ours.json") and not made_by_pointfalip(tmp_path / "theirs.json")
    np.savez(tmp_path / "ours.npz", indices=values, categories=values, pred_tokens=values[:, None])
    np.savez(tmp_path / "theirs.npz", indices=values)
    assert made_by_pointfalip(tmp_path / "ours.npz") and not made_by_pointfalip(tmp_path / "theirs.npz")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    assert not made_by_pointfalip(tmp_path / "broken.png") and not made_by_pointfalip(tmp_path / "missing.png")


def test_check_output_replaces_only_its_own_files(tmp_path):
    from pointfalip.files import check_output, free_name, replacing
    from pointfalip.render import save_image

    theirs, ours = tmp_path / "theirs.png", tmp_path / "ours.png"
    Image.new("RGB", (4, 4)).save(theirs)
    save_image(Image.new("RGB", (4, 4)), ours)
    raises_one_line(check_output, theirs, "-o", match="was not written by pointfalip; add --force")
    assert check_output(ours, "-o") == ours
    with replacing():
        assert check_output(theirs, "-o") == theirs
    raises_one_line(check_output, theirs, "-o", match="--force")  # only inside the block
    assert free_name(tmp_path / "new.png") == tmp_path / "new.png"
    assert free_name(theirs) == tmp_path / "theirs-2.png"
    (tmp_path / "theirs-2.png").write_bytes(b"")
    assert free_name(theirs) == tmp_path / "theirs-3.png"


def test_render_output_rule_and_default_names(main, samples, tmp_path, monkeypatch):
    folder, _ = samples
    chair = folder / "chair.off"
    mine = tmp_path / "mine.png"
    Image.new("RGB", (4, 4), "blue").save(mine)
    before = mine.read_bytes()
    one_line_error(*main("render", chair, "-o", mine, "--model", "ViT-B-32")[::2], "pointfalip render",
                   "mine.png exists", "--force")
    assert mine.read_bytes() == before
    code, out, err = main("render", chair, "-o", mine, "--model", "ViT-B-32", "--force")
    assert code == 0 and out == f"wrote {mine}: 10 depth views of {chair} with their foveal masks\n", err
    assert main("render", chair, "-o", mine, "--model", "ViT-B-32")[0] == 0  # now it is the tool's own
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (4, 4)).save(tmp_path / "views.png")
    taken = (tmp_path / "views.png").read_bytes()
    outs = [json.loads(main("render", chair, "--model", "ViT-B-32", "--json")[1])["output"] for _ in range(2)]
    assert outs == ["views-2.png", "views-3.png"] and (tmp_path / "views.png").read_bytes() == taken


def test_evaluate_default_report_takes_a_free_name(main, tmp_path, tiny_json, monkeypatch):
    root = tmp_path / "objects"
    for label in ("box", "plank"):
        (root / label).mkdir(parents=True)
        np.save(root / label / "0.npy", np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evaluate_folder.json").write_text("my notes")
    code, out, err = main("evaluate", "--dataset", "folder", "--root", root, "--model", tiny_json,
                          "--pretrained", "none")
    assert code == 0, err
    assert "report: evaluate_folder-2.json" in out and "confusion matrix: evaluate_folder-2.confusion.png" in out
    assert (tmp_path / "evaluate_folder.json").read_text() == "my notes"


# ---- samples -------------------------------------------------------------------------------------------------
def test_samples_are_what_the_readers_expect(samples):
    from pointfalip import io
    from pointfalip.datasets import open_dataset
    from pointfalip.refcoco import open_rec_dataset
    from pointfalip.samples import CAR_BOX, DEPTH_INTRINSICS, IMAGE_SIZE
    from pointfalip.sources import read_frames

    folder, written = samples
    assert all((folder / s.path).exists() for s in written)
    for name in ("chair.off", "chair.ply", "cloud.npy", "scan.pcd", "mug.pcd", "table.pcd"):
        assert len(io.load_points(folder / name)) >= 1000
    sizes = {"modelnet40": 5, "scanobjectnn-obj_only": 4, "scanobjectnn-obj_bg": 4, "scanobjectnn": 4}
    for name, n in sizes.items():
        root = folder / ("DATA/modelnet40_ply_hdf5_2048" if name == "modelnet40" else "DATA/h5_files")
        dataset = open_dataset(name, root)
        assert len(dataset) == n and dataset.source(0).endswith(".h5[0]")
    train = open_dataset("modelnet40", folder / "DATA/modelnet40_ply_hdf5_2048", split="train")
    assert sorted(train.labels.tolist()) == list(range(40))  # one example of every class: the few-shot protocol
    parts = open_dataset("shapenetpart", folder / "shapenet_part_seg_hdf5_data")
    assert [parts.classes[c] for c in parts.labels] == ["mug", "guitar", "chair"]
    scans = open_dataset("folder", folder / "my_scans")
    assert scans.classes == ["chair", "lamp", "table"] and len(scans) == 6
    bag = read_frames(folder / "run_42", "/camera/points")
    assert bag.sequence and len(list(bag.frames)) == 3
    depth = read_frames(folder / "depth.png", intrinsics=DEPTH_INTRINSICS)
    assert len(next(depth.frames).points) > 10_000
    rec = open_rec_dataset("refcoco", folder / "train2014", folder / "refcoco_testa.jsonl",
                           folder / "refcoco_dets_dict.json")
    assert len(rec.expressions) == 8
    with Image.open(folder / "street.jpg") as street, Image.open(folder / "region.png") as mask:
        assert street.size == mask.size == IMAGE_SIZE
        inside = np.asarray(mask)[CAR_BOX[1]:CAR_BOX[3], CAR_BOX[0]:CAR_BOX[2]]
        assert np.asarray(mask).sum() == inside.sum() > 0  # the mask is the car, inside its box


def test_samples_are_seeded(samples, tmp_path):
    from pointfalip.samples import write_samples

    folder, written = samples
    again = tmp_path / "again"
    write_samples(again)
    for name in ("cloud.npy", "street.jpg", "depth.png", "DATA/modelnet40_ply_hdf5_2048/ply_data_test0.h5"):
        assert (again / name).read_bytes() == (folder / name).read_bytes(), name


def test_samples_folder_rule(main, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    one_line_error(*main("samples", tmp_path / "mine")[::2], "not empty", "--force")
    one_line_error(*main("samples", tmp_path / "no" / "where")[::2], "does not exist")
    (tmp_path / "file").write_text("")
    one_line_error(*main("samples", tmp_path / "file")[::2], "is a file")
    code, out, err = main("samples", tmp_path / "mine", "--force")
    assert code == 0, err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    assert re.search(r"^  run_42/\s+a ROS 2 bag", out, re.M) and out.strip().splitlines()[-1].startswith("next: cd")
    code, out, err = main("samples", tmp_path / "mine", "--json")  # its own samples: filled again
    assert code == 0 and {"folder", "files"} == set(json.loads(out))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "run_42").mkdir()
    one_line_error(*main("samples", tmp_path / "other", "--force")[::2], "run_42", "not a bag pointfalip wrote")


# ---- reports name their objects -------------------------------------------------------------------------------
def test_evaluate_reports_name_the_files(main, samples, tiny_json, tmp_path):
    folder, _ = samples
    code, out, err = main("evaluate", "--dataset", "folder", "--root", folder / "my_scans", "--model", tiny_json,
                          "--pretrained", "none", "--out", tmp_path / "scans.json")
    assert code == 0, err
    report = json.loads((tmp_path / "scans.json").read_text())
    files = sorted((folder / "my_scans").rglob("*.*"))
    assert sorted(report["sources"]) == [str(f) for f in files]
    wrong = [i for i, (p, t) in enumerate(zip(report["runs"]["falip"]["predictions"], report["labels"])) if p != t]
    assert wrong  # random weights: some scan is misclassified, and the summary names it
    for i in wrong:
        assert f"{report['sources'][i]}: {report['classes'][report['labels'][i]]} -> " in out
    code, out, err = main("evaluate", "--dataset", "modelnet40", "--root", folder / "DATA/modelnet40_ply_hdf5_2048",
                          "--model", tiny_json, "--pretrained", "none", "--out", tmp_path / "mn.json", "--json")
    assert code == 0, err
    assert json.loads(out)["sources"] == [f"{folder}/DATA/modelnet40_ply_hdf5_2048/ply_data_test0.h5[{k}]"
                                          for k in range(5)]


def test_tune_says_when_it_switched_the_cache_off(main, samples, tiny_json, tmp_path, monkeypatch):
    from pointfalip import fewshot

    folder, _ = samples
    monkeypatch.setattr(fewshot, "tune", lambda cache, logits, grid=fewshot.DEFAULT_GRID: (0.0, 5.5))
    args = ["fewshot", "build", "--dataset", "folder", "--root", folder / "my_objects", "--shots", "2", "--tune",
            "--model", tiny_json, "--pretrained", "none", "-o"]
    code, out, err = main(*args, tmp_path / "a.fewshot")
    assert code == 0, err
    assert "alpha 0: --tune switched the cache off" in out and "zero-shot" in out
    code, out, err = main(*args, tmp_path / "b.fewshot", "--json")
    assert json.loads(out)["cache_off"] is True
    monkeypatch.setattr(fewshot, "tune", lambda cache, logits, grid=fewshot.DEFAULT_GRID: (1.5, 5.5))
    code, out, err = main(*args, tmp_path / "a.fewshot")  # replaces its own cache
    assert code == 0 and "switched the cache off" not in out, err
