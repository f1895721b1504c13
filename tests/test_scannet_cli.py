"""`pointfalip evaluate --dataset scannet`: another method's predictions, the model's own (proposals from ground
truth), --save-predictions then --predictions giving the same numbers, and bad combinations as one line."""
import json

import numpy as np
import pytest

from conftest import one_line_error
from pointfalip import scannet
from pointfalip.scannet import InstancePrediction, open_scannet, write_predictions
from test_scannet import hand_scene, write_table

MODEL = ("--model", "pf-tiny-16", "--pretrained", "none", "--device", "cpu", "--precision", "fp32")


@pytest.fixture
def release(tmp_path):
    root = tmp_path / "release"
    root.mkdir()
    write_table(root)
    region = hand_scene(root)
    (root / "scannetv2_val.txt").write_text("scene0000_00\n")
    return root, region


def test_predictions_of_another_method(main, release, tmp_path):
    root, region = release
    preds = [InstancePrediction(region["chair1"], 5, 0.9), InstancePrediction(region["table"], 5, 0.7),
             InstancePrediction(region["chair2"], 5, 0.5)]
    write_predictions(tmp_path / "pred", "scene0000_00", preds)
    out = tmp_path / "report.json"
    code, stdout, err = main("evaluate", "--dataset", "scannet", "--root", root, "--predictions", tmp_path / "pred",
                             "--out", out)
    assert code == 0, err
    report = json.loads(out.read_text())
    expected = scannet.evaluate_predictions(open_scannet(root), tmp_path / "pred")["runs"]
    assert report["task"] == scannet.TASK and report["split"] == "val" and report["runs"] == expected
    assert report["runs"]["predictions"]["instance"]["classes"]["chair"]["ap"] == pytest.approx(19 / 24)
    assert "chair" in stdout and "79.17" in stdout
    assert not (tmp_path / "report.json.partial").exists()


def test_the_model_on_ground_truth_proposals_then_its_saved_predictions(main, release, tmp_path):
    root, _ = release
    code, _, err = main("evaluate", "--dataset", "scannet", "--root", root, "--proposals", "gt", "--compare",
                        "--save-predictions", tmp_path / "saved", "--out", tmp_path / "model.json", *MODEL)
    assert code == 0, err
    report = json.loads((tmp_path / "model.json").read_text())
    assert set(report["runs"]) == {"falip", "baseline"} and report["settings"]["proposals"] == "gt"
    assert report["runs"]["falip"]["predictions"] == 3  # three benchmark instances, one label each
    code, _, err = main("evaluate", "--dataset", "scannet", "--root", root, "--predictions", tmp_path / "saved",
                        "--out", tmp_path / "again.json")
    assert code == 0, err
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["runs"]["predictions"] == report["runs"]["falip"]
    scene = open_scannet(root).scene(0)
    masks = np.stack([p.mask for p in scannet.read_predictions(tmp_path / "saved", "scene0000_00",
                                                                scene.num_vertices)])
    np.testing.assert_array_equal(masks, scene.instance_masks(scene.benchmark_instances()))


@pytest.mark.parametrize("args,words", [
    (["--predictions", "P", "--compare"], ["--predictions", "no model"]),
    (["--category", "chair"], ["--category", "shapenetpart"]),
    (["--predictions", "missing"], ["missing", "folder"]),
    (["--proposals", "gt", "--labels", "chair,spaceship"], ["spaceship", "NYU40"]),
])
def test_bad_combinations_are_one_line(main, release, tmp_path, args, words):
    root, _ = release
    (tmp_path / "P").mkdir()
    args = [str(tmp_path / a) if a in ("P", "missing") else a for a in args]
    code, _, err = main("evaluate", "--dataset", "scannet", "--root", root, "--out", tmp_path / "r.json", *args)
    one_line_error(code, err, *words)
    assert not (tmp_path / "r.json").exists()


def test_a_run_failing_midway_leaves_no_predictions(main, release, tmp_path):
    """Two scenes; the proposals folder holds masks for the first only: the run fails on the second (one line,
    exit 2) and leaves no predictions folder, report or resume cache."""
    root, region = release
    hand_scene(root, "scene0001_00")
    (root / "scannetv2_val.txt").write_text("scene0000_00\nscene0001_00\n")
    write_predictions(tmp_path / "masks", "scene0000_00", [InstancePrediction(region["chair1"], 5, 1.0)])
    saved = tmp_path / "saved"
    code, _, err = main("evaluate", "--dataset", "scannet", "--root", root, "--proposals", tmp_path / "masks",
                        "--save-predictions", saved, "--batch-size", "1", "--out", tmp_path / "r.json", *MODEL)
    one_line_error(code, err, "scene0001_00")
    assert not saved.exists()
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "r.json.partial").exists()
