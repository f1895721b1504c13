"""The hostile corpus and hostile arguments through the commands, in-process: for each, exit 2 with one stderr line
(no traceback) or a correct answer; the inputs' bytes and modes unchanged; nothing left behind but the outputs."""
import json
import os

import numpy as np
import pytest
import torch
from conftest import TINY
from PIL import Image
from test_hostile_files import CASES, ROOT, Error, _state

POINT_CASES = [c for c in CASES if c.reader == "points" and not (c.root_skips and ROOT)]
IMAGE_CASES = [c for c in CASES if c.reader == "image" and not (c.root_skips and ROOT)]
MASK_CASES = [c for c in CASES if c.reader == "mask" and not (c.root_skips and ROOT)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile_cli")
    for case in CASES:
        case.write(folder / case.name)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(folder / "ok.png")
    yield folder
    for case in CASES:
        path = folder / case.name
        if path.is_file() and not path.is_symlink():
            path.chmod(0o644)


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "pf-hostile-16.json"
    path.write_text(json.dumps(TINY["pf-tiny-16"]))
    return str(path)


def check(result, error_expected: bool, may_succeed: bool = False):
    code, out, err = result
    assert "Traceback" not in err, err
    if code == 2 or error_expected and not may_succeed:
        assert code == 2, (code, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("pointfalip "), err
        assert "allow_pickle" not in err and "weights_only=False" not in err
        assert out == ""
    else:
        assert code == 0, err
        assert "nan" not in out.lower()


def run_on(main, corpus, case, args, out_dir):
    path = corpus / case.name
    before, listing = _state(path), sorted(os.listdir(corpus))
    result = main(*[path if a == "FILE" else a for a in args])
    assert _state(path) == before
    assert sorted(os.listdir(corpus)) == listing
    assert not [p for p in out_dir.iterdir() if p.name.startswith(".")]  # no temporary left behind
    return result


@pytest.mark.parametrize("case", POINT_CASES, ids=[c.name.replace("\n", "\\n") for c in POINT_CASES])
def test_point_files_through_classify_and_render(main, corpus, case, tiny_json, tmp_path):
    model = ["--model", tiny_json, "--pretrained", "none"]
    check(run_on(main, corpus, case, ["classify", "FILE", "--labels", "a,b", "--json", *model], tmp_path),
          isinstance(case.expect, Error))
    out = tmp_path / "views.png"
    result = run_on(main, corpus, case, ["render", "FILE", "-o", out, "--model", tiny_json], tmp_path)
    check(result, isinstance(case.expect, Error))
    assert out.exists() == (result[0] == 0)


@pytest.mark.parametrize("case", POINT_CASES[::3], ids=[c.name.replace("\n", "\\n") for c in POINT_CASES[::3]])
def test_point_files_as_scenes(main, corpus, case, tiny_json, tmp_path):
    """A scene frame drops non-finite points instead of refusing them: garbage still fails, in one line."""
    check(run_on(main, corpus, case, ["scene", "FILE", "--labels", "a,b", "--model", tiny_json, "--pretrained",
                                      "none", "--json"], tmp_path), isinstance(case.expect, Error), may_succeed=True)


@pytest.mark.parametrize("case", IMAGE_CASES, ids=[c.name for c in IMAGE_CASES])
def test_images_through_classify_image_and_refer(main, corpus, case, tiny_json, tmp_path):
    model = ["--model", tiny_json, "--pretrained", "none"]
    check(run_on(main, corpus, case, ["classify-image", "FILE", "--labels", "a,b", "--json", *model], tmp_path),
          isinstance(case.expect, Error))
    check(run_on(main, corpus, case, ["refer", "FILE", "--boxes", "0,0,4,4", "--caption", "x", "--json", *model],
                 tmp_path), isinstance(case.expect, Error), may_succeed=True)


@pytest.mark.parametrize("case", MASK_CASES, ids=[c.name for c in MASK_CASES])
def test_masks_through_classify_image(main, corpus, case, tiny_json, tmp_path):
    check(run_on(main, corpus, case, ["classify-image", corpus / "ok.png", "--labels", "a,b", "--mask", "FILE",
                                      "--model", tiny_json, "--pretrained", "none"], tmp_path),
          isinstance(case.expect, Error), may_succeed=True)


# ---- hostile arguments ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("args")
    np.save(folder / "cloud.npy", np.random.default_rng(0).normal(size=(300, 3)).astype(np.float32))
    (folder / "broken.json").write_text('{"embed_dim": 32, "vision_cfg": ')
    (folder / "not_a_model.json").write_text('{"hello": 1}')
    (folder / "bad.safetensors").write_bytes(b"\xff\xff\xff\xff\x00\x00\x00\x00{not json")
    torch.save({"visual.proj": 1.5}, folder / "float.pt")
    (folder / "garbage.pt").write_bytes(b"this is not a checkpoint")
    (folder / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (folder / "bom.txt").write_bytes("\ufeffchair\ntable\n".encode("utf-8"))
    for name, text in {"layers.yaml": "foveal: {layers: [99]}", "alpha.yaml": "foveal: {alpha: abc}",
                       "heads.yaml": "foveal: {heads: x}", "section.yaml": "foveal: 3",
                       "weights.yaml": "view_weights: [1, 2]", "precision.yaml": "precision: fp8",
                       "notyaml.yaml": "a: [", "list.yaml": "- 1\n- 2", "templates.yaml": "templates: 5",
                       "normalize.yaml": "normalize_images: maybe", "promptfile.yaml": "prompt_file: 5",
                       "views.yaml": "views: 5", "projection.yaml": "projection: 5",
                       "heads99.yaml": "foveal: {heads: [99]}", "nanweights.yaml": "view_weights: [.nan, 1]"}.items():
        (folder / name).write_text(text)
    (folder / "a_folder").mkdir()
    return folder


ARGUMENT_CASES = {
    "num-points huge": (["--num-points", "100000000000"], ["--num-points"]),
    "num-points tiny": (["--num-points", "3"], ["--num-points"]),
    "device cuda": (["--device", "cuda"], ["cuda"]),
    "device mps": (["--device", "mps"], ["mps"]),
    "device meta": (["--device", "meta"], ["meta"]),
    "device nonsense": (["--device", "gpu0"], ["gpu0"]),
    "malformed model config": (["--model", "{broken.json}"], ["broken.json"]),
    "not a model config": (["--model", "{not_a_model.json}"], ["not_a_model.json"]),
    "broken safetensors": (["--pretrained", "{bad.safetensors}"], ["bad.safetensors"]),
    "float in a state dict": (["--pretrained", "{float.pt}"], ["float.pt", "not a tensor"]),
    "garbage checkpoint": (["--pretrained", "{garbage.pt}"], ["garbage.pt"]),
    "layers beyond the model": (["--preset", "{layers.yaml}"], ["99"]),
    "alpha of the wrong type": (["--preset", "{alpha.yaml}"], ["alpha"]),
    "heads of the wrong type": (["--preset", "{heads.yaml}"], ["heads"]),
    "a section that is no mapping": (["--preset", "{section.yaml}"], ["foveal"]),
    "view weights for other views": (["--preset", "{weights.yaml}"], ["view weights"]),
    "unknown precision": (["--preset", "{precision.yaml}"], ["precision"]),
    "invalid YAML": (["--preset", "{notyaml.yaml}"], ["yaml"]),
    "YAML that is no mapping": (["--preset", "{list.yaml}"], ["mapping"]),
    "labels file not UTF-8": (["--labels-file", "{latin1.txt}"], ["utf-8"]),
    "templates of the wrong type": (["--preset", "{templates.yaml}"], ["templates"]),
    "normalize_images not a boolean": (["--preset", "{normalize.yaml}"], ["normalize_images"]),
    "prompt_file not a path": (["--preset", "{promptfile.yaml}"], ["prompt_file"]),
    "views of the wrong type": (["--preset", "{views.yaml}"], ["views"]),
    "projection of the wrong type": (["--preset", "{projection.yaml}"], ["projection"]),
    "top-k zero": (["--top-k", "0"], ["--top-k"]),
    "foveal heads beyond the model": (["--preset", "{heads99.yaml}"], ["heads", "99"]),
    "NaN view weights": (["--preset", "{nanweights.yaml}"], ["view_weights"]),
    "labels file that is a folder": (["--labels-file", "{a_folder}"], ["folder"]),
    "labels file that is a device": (["--labels-file", "/dev/null"], ["device"]),
    "preset that is a device": (["--preset", "/dev/null"], ["device"]),
    "prompt file that is a folder": (["--prompt-file", "{a_folder}"], ["folder"]),
    "few-shot cache that is a device": (["--fewshot", "/dev/null"], ["device"]),
    "checkpoint that is a device": (["--pretrained", "/dev/null"], ["device"]),
}


@pytest.mark.parametrize("name", list(ARGUMENT_CASES))
def test_hostile_arguments_are_one_line(main, files, tiny_json, name):
    extra, words = ARGUMENT_CASES[name]
    extra = [str(files / e[1:-1]) if e.startswith("{") else e for e in extra]
    args = ["classify", files / "cloud.npy", "--model", tiny_json, "--pretrained", "none"]
    if "--labels-file" not in extra:
        args += ["--labels", "a,b"]
    args += extra  # given last, they win over the defaults above
    code, out, err = main(*args)
    check((code, out, err), True)
    for word in words:
        assert word.lower() in err.lower(), err


def test_bom_in_a_labels_file_is_not_part_of_a_label(main, files, tiny_json):
    code, out, err = main("classify", files / "cloud.npy", "--labels-file", files / "bom.txt", "--model", tiny_json,
                          "--pretrained", "none", "--json")
    assert code == 0, err
    assert {p["label"] for p in json.loads(out)[0]["predictions"]} == {"chair", "table"}


@pytest.mark.parametrize("extra,words", [(["--voxel-size", "1e-300"], ["--voxel-size"]),
                                         (["--cluster-tolerance", "nan"], ["--cluster-tolerance"]),
                                         (["--intrinsics", "1,2,3"], ["--intrinsics"]),
                                         (["--intrinsics", "0,500,1,1"], ["focal"]),
                                         (["--depth-scale", "-1"], ["--depth-scale"])])
def test_hostile_scene_options(main, files, tiny_json, tmp_path, extra, words):
    depth = tmp_path / "depth.png"
    Image.fromarray(np.full((16, 16), 1000, np.uint16)).save(depth)
    source = depth if "--intrinsics" in extra else files / "cloud.npy"
    code, out, err = main("scene", source, "--labels", "a,b", "--model", tiny_json, "--pretrained", "none", *extra)
    check((code, out, err), True)
    for word in words:
        assert word.lower() in err.lower(), err


def test_depth_npy_with_intrinsics_is_a_depth_image(main, tiny_json, tmp_path):
    depth = np.full((24, 32), 1.0, np.float32)
    depth[8:16, 10:20] = 0.8
    np.save(tmp_path / "depth.npy", depth)
    code, out, err = main("scene", tmp_path / "depth.npy", "--intrinsics", "30,30,16,12", "--labels", "a,b",
                          "--model", tiny_json, "--pretrained", "none", "--json")
    assert code == 0, err
    code, _, err = main("scene", tmp_path / "depth.npy", "--depth-scale", "1000", "--labels", "a,b",
                        "--model", tiny_json, "--pretrained", "none")
    check((code, "", err), True)
    assert "point file" in err
