"""The `pointfalip` command in subprocesses: outputs, exit codes, one-line errors for bad input."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, assert_user_error, load_random, one_line_error


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "HF_HUB_OFFLINE": "1", "POINTFALIP_CACHE": str(cache)}


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    """A small ViT config the CLI registers from its path (--model FILE.json)."""
    path = tmp_path_factory.mktemp("cfg") / "pf-cli-16.json"
    path.write_text(json.dumps(TINY["pf-tiny-16"]))
    return str(path)


def pf(env, *args, ok=True):
    proc = subprocess.run([sys.executable, "-m", "pointfalip", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def cloud(tmp_path_factory):
    path = tmp_path_factory.mktemp("pc") / "cloud.npy"
    rng = np.random.default_rng(0)
    np.save(path, rng.normal(size=(600, 3)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def picture(tmp_path_factory):
    folder = tmp_path_factory.mktemp("img")
    rng = np.random.default_rng(1)
    path = folder / "scene.png"
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(path)
    mask = np.zeros((120, 160), np.uint8)
    mask[30:90, 40:100] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(mask[:60]).save(folder / "small_mask.png")
    return folder


def test_classify_json_and_per_view(env, tiny_json, cloud):
    """The command's answers equal the Recognizer's in this process: random weights come from a fixed seed, so the
    subprocess holds the same model."""
    proc = pf(env, "classify", cloud, cloud, "--labels", "chair,table,lamp", "--model", tiny_json,
              "--pretrained", "none", "--precision", "fp32", "--json", "--per-view", "--top-k", "3")
    out = json.loads(proc.stdout)
    assert [item["file"] for item in out] == [str(cloud)] * 2
    from pointfalip import Recognizer

    rec = Recognizer(load_random("pf-tiny-16"), labels=["chair", "table", "lamp"], cache_dir=False)
    points = np.load(cloud)
    expected = rec.classify(points, top_k=3)
    views = rec.classify_views(points)
    for item in out:
        assert [p["label"] for p in item["predictions"]] == [p.label for p in expected]
        assert [p["score"] for p in item["predictions"]] == pytest.approx([p.probability for p in expected], abs=1e-5)
        assert [v["label"] for v in item["views"]] == [v.label for v in views]
        assert [v["score"] for v in item["views"]] == pytest.approx([v.probability for v in views], abs=1e-5)


def test_classify_real_mesh_against_dataset(env, tiny_json, shared_data):
    proc = pf(env, "classify", shared_data / "meshes" / "chair_0002.off", "--dataset", "modelnet40", "--up-axis", "z",
              "--model", tiny_json, "--pretrained", "none", "--projection", "simple", "--top-k", "2", "--verbose")
    assert "chair_0002.off" in proc.stdout and proc.stdout.count("%") == 2
    assert "model input" in proc.stderr


def test_render_draws_the_projection_and_its_foveal_region(env, tmp_path):
    """Tiles in rows of five, each the depth view the projection makes (grey levels of `project`'s image): the
    foveal region outlined in red over a light red tint that leaves the depth visible, plain grey far from the
    object where the mask is not; a legend under the tiles; the written file said on stdout."""
    import torch

    from pointfalip import io
    from pointfalip.foveal import from_occupancy
    from pointfalip.projection import project
    from pointfalip.render import LABEL_HEIGHT, OUTLINE, TILE_GAP, TINT_OPACITY

    from pointfalip.demo import demo_clouds

    cloud = tmp_path / "chair.npy"  # its top and bottom views leave patches outside the foveal region
    np.save(cloud, demo_clouds()["chair"])
    out = tmp_path / "views.png"
    proc = pf(env, "render", cloud, "-o", out, "--model", "ViT-B-32")
    assert proc.stdout.startswith(f"wrote {out}: 10 depth views")  # text, not JSON, without --json
    sheet = np.asarray(Image.open(out).convert("RGB")).astype(int)
    depth = project(io.normalize(np.load(cloud), "y"), method="realistic", views="pointclip_v2", image_size=224)
    region = from_occupancy(depth.occupancy[0], (7, 7)) > 0  # the patches that get the bias: ViT-B-32's 7x7 grid
    region = region.repeat_interleave(32, 1).repeat_interleave(32, 2).numpy()
    assert (~region).any()
    cell = 224 + LABEL_HEIGHT
    assert sheet.shape[1] == 5 * 224 + 4 * TILE_GAP and sheet.shape[0] > 2 * cell  # five a row; the legend below
    for v in range(10):
        x, y = (v % 5) * (224 + TILE_GAP), (v // 5) * cell
        tile = sheet[y:y + 224, x:x + 224]
        grey = (depth.images[0, v, 0].clamp(0, 1) * 255).round().to(torch.int64).numpy()
        rows, cols = np.nonzero(depth.occupancy[0, v].numpy())
        centre = int(rows.mean()), int(cols.mean())
        assert tile[centre][0] > tile[centre][1] + 40  # red tint over the object's middle
        assert tile[centre][1] >= (1 - TINT_OPACITY) * grey[centre] - 1  # ... with the depth visible under it
        outline = (tile == OUTLINE).all(axis=-1)
        assert outline.sum() > 100 and not outline[~region[v]].any()  # the region's outline, inside it
        assert (tile[~region[v]] == grey[~region[v], None]).all()  # outside the region: the image as it is


def test_demo_answers_as_the_recognizer_does(main, tiny_json, tmp_path):
    """The demo's table equals the Recognizer's answers for the built-in objects (same seeded random weights), and
    its contact sheet holds every view of every object."""
    from pointfalip import Recognizer
    from pointfalip.demo import demo_clouds

    out = tmp_path / "demo.png"
    code, stdout, err = main("demo", "--pretrained", "none", "--model", tiny_json, "--precision", "fp32", "-o", out,
                             "--json")
    assert code == 0, err
    result = json.loads(stdout)
    rec = Recognizer(load_random(tiny_json, precision="fp32"), dataset="modelnet40", cache_dir=False)
    clouds = demo_clouds()
    assert [o["object"] for o in result["objects"]] == list(clouds)
    for obj in result["objects"]:
        expected = rec.classify(clouds[obj["object"]], top_k=3)
        assert [p["label"] for p in obj["predictions"]] == [p.label for p in expected]
        np.testing.assert_allclose([p["score"] for p in obj["predictions"]], [p.probability for p in expected],
                                   rtol=1e-4)
    from pointfalip.render import LABEL_HEIGHT, TILE_GAP

    with Image.open(out) as im:  # one row an object, its ten views of 64 pixels; the legend under them
        assert im.size[0] >= 10 * 64 + 9 * TILE_GAP and im.size[1] > len(clouds) * (64 + LABEL_HEIGHT)


def test_classify_image_prompts_mean_what_they_say(main, tiny_json, picture, tmp_path):
    """"crop" scores the box's pixels alone (as the whole picture cut by hand), "none" ignores the region, FALIP
    keeps the pixels but changes the answer; probabilities sum to one, best first."""
    common = ["--labels", "cat,dog,car", "--model", tiny_json, "--pretrained", "none", "--json"]

    def scores(image, *extra):
        code, out, err = main("classify-image", image, *common, *extra)
        assert code == 0, err
        preds = json.loads(out)["predictions"]
        values = [p["score"] for p in preds]
        assert sum(values) == pytest.approx(1, abs=1e-5) and sorted(values, reverse=True) == values
        return {p["label"]: p["score"] for p in preds}

    with Image.open(picture / "scene.png") as im:
        im.crop((10, 20, 90, 100)).save(tmp_path / "cut.png")
    box = ["--box", "10,20,90,100"]
    cropped, by_hand = scores(picture / "scene.png", *box, "--prompt", "crop"), scores(tmp_path / "cut.png")
    assert cropped == pytest.approx(by_hand, abs=1e-6)
    whole = scores(picture / "scene.png")
    assert scores(picture / "scene.png", *box, "--prompt", "none") == pytest.approx(whole, abs=1e-6)
    falip = scores(picture / "scene.png", *box, "--prompt", "falip")
    assert max(abs(falip[k] - whole[k]) for k in whole) > 1e-6
    for prompt in ("circle", "blur"):
        assert set(scores(picture / "scene.png", *box, "--prompt", prompt)) == {"cat", "dog", "car"}


def test_classify_image_mask_and_refer(env, tiny_json, picture):
    proc = pf(env, "classify-image", picture / "scene.png", "--labels", "cat,dog", "--mask", picture / "mask.png",
              "--model", tiny_json, "--pretrained", "none", "--json")
    assert len(json.loads(proc.stdout)["predictions"]) == 2
    proc = pf(env, "refer", picture / "scene.png", "--boxes", "0,0,50,50;60,20,150,110;10,10,20,20",
              "--caption", "the dog on the left", "--model", tiny_json, "--pretrained", "none", "--json")
    out = json.loads(proc.stdout)
    assert {p["label"] for p in out["predictions"]} == {"0,0,50,50", "60,20,150,110", "10,10,20,20"}
    assert sum(p["score"] for p in out["predictions"]) == pytest.approx(1, abs=1e-5)


# ---- bad input ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "empty.ply").write_bytes(b"")
    (folder / "corrupt.off").write_text("OFF\n3 1 0\n0 0 zero\n")
    (folder / "cloud.xyzw").write_text("0 0 0\n")
    nan = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    nan[5] = np.nan
    np.save(folder / "nan.npy", nan)
    inf = nan.copy()
    inf[5] = np.inf
    np.save(folder / "inf.npy", inf)
    np.save(folder / "few.npy", np.zeros((3, 3), np.float32))
    (folder / "not_an_image.png").write_text("hello")
    return folder


@pytest.mark.parametrize("name,words", [("missing.npy", ["missing.npy"]), ("empty.ply", ["empty"]),
                                        ("corrupt.off", ["corrupt.off"]), ("cloud.xyzw", ["unsupported file type"]),
                                        ("nan.npy", ["nan"]), ("inf.npy", ["inf"]), ("few.npy", ["distinct"])])
def test_classify_bad_files(env, bad_files, name, words):
    assert_user_error(pf(env, "classify", bad_files / name, "--labels", "a,b", "--pretrained", "none", ok=False),
                      *words)


def test_classify_bad_labels_and_model(env, cloud, tiny_json):
    assert_user_error(pf(env, "classify", cloud, "--dataset", "shapenet", ok=False), "unknown dataset")
    assert_user_error(pf(env, "classify", cloud, "--labels", " , ", ok=False), "label")
    assert_user_error(pf(env, "classify", cloud, "--labels", "a,b", "--model", "ViT-Q-99", "--pretrained", "none",
                         ok=False), "unknown model")
    assert_user_error(pf(env, "classify", cloud, "--labels", "a,b", "--model", "ViT-B-32", ok=False),
                      "--pretrained")


@pytest.mark.parametrize("extra,words", [(["--box", "10,10,500,50"], ["outside"]), (["--box", "40,40,40,90"], ["empty"]),
                                         (["--box", "1,2,3"], ["four numbers"]), (["--mask", "small_mask.png"], ["size"])])
def test_classify_image_bad_regions(env, picture, extra, words):
    extra = [str(picture / e) if e.endswith(".png") else e for e in extra]
    assert_user_error(pf(env, "classify-image", picture / "scene.png", "--labels", "a,b", *extra, ok=False), *words)


def test_image_bad_files_and_labels(env, picture, bad_files):
    assert_user_error(pf(env, "classify-image", picture / "nope.png", "--labels", "a", ok=False), "does not exist")
    assert_user_error(pf(env, "classify-image", bad_files / "not_an_image.png", "--labels", "a", ok=False),
                      "cannot read image")
    assert_user_error(pf(env, "classify-image", picture / "scene.png", "--labels", ",", ok=False), "label")
    assert_user_error(pf(env, "refer", picture / "scene.png", "--boxes", "0,0,500,10", "--caption", "x", ok=False),
                      "outside")
    assert_user_error(pf(env, "refer", picture / "scene.png", "--boxes", "0,0,5,10", "--caption", "x",
                         "--model", "RN50-nope", ok=False), "unknown model")


# ---- scene ---------------------------------------------------------------------------------------------
def _tabletop(rng):
    table = np.c_[rng.uniform(-0.6, 0.6, 30000), rng.uniform(-0.4, 0.4, 30000), rng.normal(0, 0.002, 30000)]
    cubes = []
    for centre in ((-0.3, 0.0), (0.25, 0.15)):
        faces = rng.uniform(-0.05, 0.05, size=(3000, 3))
        axis = rng.integers(0, 3, 3000)
        faces[np.arange(3000), axis] = np.where(rng.random(3000) < 0.5, -0.05, 0.05)
        cubes.append(faces + [centre[0], centre[1], 0.05])
    return np.concatenate([table] + cubes).astype(np.float32), cubes


def test_scene_file_json_and_render(env, tiny_json, tmp_path):
    scene, cubes = _tabletop(np.random.default_rng(3))
    scene[:50] = np.nan  # a sensor frame's missing returns are dropped, not refused
    path = tmp_path / "scene.npy"
    np.save(path, scene)
    top = tmp_path / "top.png"
    proc = pf(env, "scene", path, "--labels", "box,mug,bowl", "--model", tiny_json, "--pretrained", "none",
              "--json", "--render", top)
    out = json.loads(proc.stdout)
    assert len(out["objects"]) == 2 and top.is_file()
    for obj in out["objects"]:
        cube = min(cubes, key=lambda c: np.linalg.norm(c.mean(axis=0) - obj["centroid"]))
        assert np.linalg.norm(np.array(obj["centroid"])[:2] - cube.mean(axis=0)[:2]) < 0.01
        assert obj["label"] in {"box", "mug", "bowl"} and len(obj["top_k"]) == 3
        assert all(lo <= hi for lo, hi in zip(obj["bbox_min"], obj["bbox_max"]))


def test_scene_bag_frames_and_errors(env, tiny_json, tmp_path):
    from test_sources import PC2, make_cloud, write_bag

    scene, _ = _tabletop(np.random.default_rng(4))
    plane_only = scene[:30000]
    from rosbags.rosbag2 import StoragePlugin

    bag = write_bag(tmp_path / "bag", StoragePlugin.SQLITE3,
                    [("/points", PC2, 1, make_cloud(scene, 1_500_000_000)),
                     ("/points", PC2, 2, make_cloud(plane_only, 2_500_000_000))])
    proc = pf(env, "scene", bag, "--labels", "box,mug", "--topic", "/points", "--model", tiny_json,
              "--pretrained", "none", "--json")
    frames = json.loads(proc.stdout)["frames"]
    assert [f["stamp"] for f in frames] == [1.5, 2.5]
    assert len(frames[0]["objects"]) == 2 and frames[1]["objects"] == []
    assert_user_error(pf(env, "scene", bag, "--labels", "a,b", "--topic", "/camera", ok=False), "/camera")
    assert_user_error(pf(env, "scene", tmp_path / "depth.png", "--labels", "a", ok=False), "does not exist")
    Image.fromarray(np.full((8, 8), 1000, np.uint16)).save(tmp_path / "depth.png")
    assert_user_error(pf(env, "scene", tmp_path / "depth.png", "--labels", "a", ok=False), "intrinsics")


def test_render_and_demo_bad_input(env, bad_files, tmp_path):
    assert_user_error(pf(env, "render", bad_files / "nan.npy", "-o", tmp_path / "v.png", ok=False), "nan")
    assert_user_error(pf(env, "render", bad_files / "missing.off", ok=False), "missing.off")
    assert_user_error(pf(env, "render", bad_files / "few.npy", "--model", "RN50", ok=False), "not a vit")
    assert_user_error(pf(env, "demo", "--model", "ViT-B-16", ok=False), "--pretrained")  # offline, nothing cached


# ---- structure: the registry, presets and output paths ----------------------------------------------------
def test_a_command_is_one_registration(main, monkeypatch):
    """A toy command, nested under a group, registered once: it parses, runs and prints through main."""
    from pointfalip import cli

    monkeypatch.setattr(cli, "COMMANDS", dict(cli.COMMANDS))
    shown = []

    @cli.command("toy echo", "say a word back", lambda p: p.add_argument("word"), printer=shown.append)
    def run_toy(args):
        if args.word == "bad":
            raise cli.InputError("bad word")
        return {"word": args.word}

    assert {"classify", "render", "demo", "scene", "classify-image", "refer", "evaluate", "toy echo"} <= set(
        cli.list_commands())
    assert main("toy", "echo", "hi") == (0, "", "") and shown == [{"word": "hi"}]
    assert json.loads(main("toy", "echo", "hi", "--json")[1]) == {"word": "hi"}
    one_line_error(*main("toy", "echo", "bad")[::2], "bad word")


@pytest.mark.parametrize("section,key", [("foveal", "alpah"), ("", "view_wieghts")])
def test_misspelt_preset_key_is_one_line(main, tmp_path, cloud, tiny_json, section, key):
    import yaml

    preset = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/presets/pointclip_v2.yaml").read_text())
    (preset[section] if section else preset)[key] = 1
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(preset))
    code, _, err = main("classify", cloud, "--labels", "a,b", "--preset", path, "--model", tiny_json,
                        "--pretrained", "none")
    one_line_error(code, err, key)


@pytest.mark.parametrize("weights", ["[0, 0, 0, 0, 0, 0, 0, 0, 0, 0]", "[.nan, 1, 1, 1, 1, 1, 1, 1, 1, 1]", "abc"])
def test_bad_view_weights_never_print_nan(main, tmp_path, cloud, tiny_json, weights):
    path = tmp_path / "w.yaml"
    path.write_text(f"view_weights: {weights}\n")
    code, out, err = main("classify", cloud, "--labels", "a,b", "--preset", path, "--model", tiny_json,
                          "--pretrained", "none", "--json")
    one_line_error(code, err, "view_weights")
    assert "nan" not in out.lower()


def test_non_square_model_is_one_line_and_the_grid_is_the_models(main, cloud, tmp_path):
    from pointfalip.model import config_grid

    rect = tmp_path / "pf-rect.json"
    rect.write_text(json.dumps(TINY["pf-tiny-16-rect"]))
    assert config_grid(str(rect)) == ((3, 5), (48, 80))
    code, _, err = main("render", cloud, "-o", tmp_path / "v.png", "--model", rect)
    one_line_error(code, err, "square")
    assert not (tmp_path / "v.png").exists()


@pytest.mark.parametrize("top_k", ["0", "-2", "x"])
def test_top_k_is_one_rule_everywhere(main, picture, cloud, top_k):
    for args in (["classify", cloud, "--labels", "a,b"], ["classify-image", picture / "scene.png", "--labels", "a,b"],
                 ["scene", cloud, "--labels", "a,b"]):
        code, out, err = main(*args, "--top-k", top_k)
        assert code == 2 and out == "" and "--top-k" in err and len(err.strip().splitlines()) == 1


def test_outputs_are_checked_before_the_work(main, cloud, tmp_path, tiny_json):
    folder = tmp_path / "taken"
    folder.mkdir()
    under_file = tmp_path / "file.txt"
    under_file.write_text("mine")
    for out, words in ((folder, ["folder"]), (under_file / "v.png", ["not a folder"]),
                       (tmp_path / "v.bmpx", ["unknown file type"]), (tmp_path / "no" / "v.png", ["does not exist"])):
        code, _, err = main("render", cloud, "-o", out, "--model", tiny_json)
        one_line_error(code, err, *words)
    assert under_file.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "taken"]


def test_scene_render_never_overwrites_its_input(main, tmp_path, tiny_json):
    depth = tmp_path / "depth.png"
    Image.fromarray(np.full((16, 16), 1000, np.uint16)).save(depth)
    before = depth.read_bytes()
    code, _, err = main("scene", depth, "--intrinsics", "20,20,8,8", "--labels", "a,b", "--render", depth,
                        "--model", tiny_json, "--pretrained", "none")
    one_line_error(code, err, "input")
    assert depth.read_bytes() == before


def test_evaluate_never_deletes_a_folder_it_did_not_make(main, tmp_path, tiny_json):
    root = tmp_path / "objects"
    for label in ("box", "plank"):
        (root / label).mkdir(parents=True)
        np.save(root / label / "0.npy", np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32))
    partial = tmp_path / "mine.json.partial"
    partial.mkdir()
    (partial / "notes.txt").write_text("my notes")
    code, _, err = main("evaluate", "--dataset", "folder", "--root", root, "--out", tmp_path / "mine.json",
                        "--model", tiny_json, "--pretrained", "none")
    one_line_error(code, err, "not made by pointfalip")
    assert (partial / "notes.txt").read_text() == "my notes"
    report = tmp_path / "r.json"
    report.write_text("{}")
    report.chmod(0o644)
    code, _, err = main("evaluate", "--dataset", "folder", "--root", root, "--out", report, "--model", tiny_json,
                        "--pretrained", "none")
    one_line_error(code, err, "was not written by pointfalip", "--force")  # a file the tool did not write stays
    assert report.read_text() == "{}"
    code, _, err = main("evaluate", "--dataset", "folder", "--root", root, "--out", report, "--model", tiny_json,
                        "--pretrained", "none", "--force")
    assert code == 0, err
    assert (report.stat().st_mode & 0o777) == 0o644 and json.loads(report.read_text())["n"] == 2
    assert not (tmp_path / "r.json.partial").exists()


def test_random_weights_warning_is_one_line(main, cloud, tiny_json):
    code, _, err = main("classify", cloud, "--labels", "a,b", "--model", tiny_json, "--pretrained", "none")
    assert code == 0
    assert [line for line in err.splitlines() if line.strip()] == [
        "pointfalip: model 'pf-cli-16' has random weights (pretrained='none'); its predictions are meaningless"]


def test_scene_num_points_samples_meshes(main, tmp_path, tiny_json):
    import trimesh

    mesh = tmp_path / "box.off"
    trimesh.creation.box((0.1, 0.08, 0.06)).export(mesh)
    counts = {}
    for n in (400, 900):
        code, out, err = main("scene", mesh, "--labels", "box,mug", "--num-points", n, "--model", tiny_json,
                              "--pretrained", "none", "--json")
        assert code == 0, err
        counts[n] = sum(o["num_points"] for o in json.loads(out)["objects"])
    assert 0 < counts[400] <= 400 < counts[900] <= 900
