"""A command line that helps: usage with the command list, help with defaults and examples, the nearest command or
option for a misspelt one, --help and --version without torch, weights that fail fast offline, `pointfalip models`."""
import json
import re
import socket
import subprocess
import sys

import pytest

from conftest import one_line_error

HELP_WITHOUT_TORCH = """
import sys
from pointfalip.cli import COMMANDS, main
for name in sorted(COMMANDS):
    assert main([*name.split(), "--help"]) == 0, name
main(["--version"])
"""


def _imported(stderr: str) -> set:
    """The modules a ``python -X importtime`` run imported (its stderr)."""
    return {m.group(1).strip() for m in re.finditer(r"^import time:\s+\d+ \|\s+\d+ \|\s+(.+)$", stderr, re.M)}


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["classify", "--help"]])
def test_help_and_version_import_neither_torch_nor_open_clip(args):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "pointfalip", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    heavy = {m for m in _imported(proc.stderr) if m.split(".")[0] in ("torch", "open_clip", "open3d", "trimesh")}
    assert not heavy, sorted(heavy)[:5]
    assert "pointfalip" in proc.stdout


def test_every_commands_help_imports_no_torch():
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", HELP_WITHOUT_TORCH], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not {m for m in _imported(proc.stderr) if m.split(".")[0] in ("torch", "open_clip")}


def test_bare_command_prints_usage_and_every_command(main):
    from pointfalip.cli import COMMANDS

    code, out, err = main()
    assert code == 2 and not out
    assert err.startswith("usage: pointfalip")
    for name in COMMANDS:
        assert re.search(rf"^\s+{re.escape(name.split()[0])}\s", err, re.M), name
    assert "pointfalip samples" in err  # where a newcomer starts


def test_a_group_alone_prints_its_usage(main):
    code, out, err = main("fewshot")
    assert code == 2 and "usage: pointfalip fewshot" in err and re.search(r"^\s+build\s", err, re.M)
    assert "sub_1" not in err


def test_every_help_shows_defaults_and_examples(main):
    from pointfalip.cli import COMMANDS
    from pointfalip.cli.help import EXAMPLES

    assert set(EXAMPLES) == set(COMMANDS)  # a new command brings its examples
    for name in COMMANDS:
        code, out, _ = main(*name.split(), "--help")
        assert code == 0
        examples = out.split("examples:\n", 1)[1]
        assert all(f"  {line}" in examples for line in EXAMPLES[name]) and f"pointfalip {name}" in examples
    out = main("classify", "--help")[1]
    assert re.search(r"--top-k TOP_K\s+labels listed per file \(default: 5\)", out)
    assert "default ViT-B-16" in out and "default openai" in out
    assert "default views.png" in main("render", "--help")[1]
    assert "--force" in main("render", "--help")[1] and "--force" not in main("classify", "--help")[1]


def test_examples_use_only_options_that_exist():
    """Each example line parses (the parser would reject a stale option)."""
    import shlex

    from pointfalip.cli import build_parser
    from pointfalip.cli.help import EXAMPLES

    parser = build_parser()
    for lines in EXAMPLES.values():
        for line in lines:
            words = shlex.split(line.split("&&")[0])
            assert words[0] == "pointfalip"
            parser.parse_args(words[1:])


@pytest.mark.parametrize("args,words", [
    (["clasify", "x.npy"], ["pointfalip: error", "unknown command 'clasify'", "did you mean 'classify'"]),
    (["fewshot", "biuld"], ["pointfalip fewshot: error", "did you mean 'build'"]),
    (["classify", "x.npy", "--topk", "3"], ["pointfalip classify: error", "--topk", "did you mean --top-k"]),
    (["scene", "x.npy", "--labels", "a", "--voxelsize", "0.1"], ["pointfalip scene: error", "--voxel-size"]),
    (["classify-image", "x.png", "--labels", "a", "--prompt", "crp"],
     ["pointfalip classify-image: error", "did you mean 'crop'"]),
    (["classify", "x.npy", "--zzz"], ["pointfalip classify: error", "unrecognized arguments: --zzz",
                                       "pointfalip classify --help"]),
])
def test_misspelt_words_name_the_command_and_the_nearest(main, args, words):
    one_line_error(*main(*args)[::2], *words)


def test_prompt_choices_are_the_visual_prompts():
    from pointfalip.cli.images import PROMPT_CHOICES
    from pointfalip.visual_prompts import PROMPTS

    assert PROMPT_CHOICES == PROMPTS


def test_a_pixel_prompt_needs_a_region(main, tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "p.png")
    one_line_error(*main("classify-image", tmp_path / "p.png", "--labels", "a,b", "--prompt", "crop",
                         "--pretrained", "none")[::2], "--prompt crop", "--box", "--mask")


# ---- weights: fail fast offline, `pointfalip models` ------------------------------------------------------
@pytest.fixture
def no_download(monkeypatch):
    """open_clip's download path, made to fail the test if anything reaches it."""
    import open_clip

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(open_clip, "create_model", refuse)
    from pointfalip import downloads as weights

    monkeypatch.setattr(weights, "cached_file", lambda cfg: None)  # nothing cached, whatever this machine holds


def test_unreachable_host_fails_before_any_download(no_download, monkeypatch):
    import pointfalip
    from pointfalip import downloads as weights

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked = []
    monkeypatch.setattr(weights, "reachable", lambda host, port, timeout=3: asked.append(host) or "refused")
    with pytest.raises(pointfalip.WeightsUnavailable, match="cannot be reached: refused") as info:
        pointfalip.load_model("ViT-B-32", "openai")
    assert asked and "\n" not in str(info.value) and "--pretrained none" in str(info.value)
    assert "pointfalip models" in str(info.value)


def test_hub_offline_mode_fails_without_asking_the_network(no_download, monkeypatch):
    import pointfalip
    from pointfalip import downloads as weights

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(weights, "reachable", lambda *a, **k: pytest.fail("the network was asked"))
    with pytest.raises(pointfalip.WeightsUnavailable, match="HF_HUB_OFFLINE"):
        pointfalip.load_model("ViT-B-32", "laion2b_s34b_b79k")
    with pytest.raises(pointfalip.WeightsUnavailable, match="HF_HUB_OFFLINE"):
        pointfalip.load_model("ViT-B-32", "hf-hub:org/not-cached")


def test_reachable_answers_for_loopback():
    from pointfalip.downloads import reachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        assert reachable("127.0.0.1", server.getsockname()[1], timeout=2) is None
        port = server.getsockname()[1]
    assert reachable("127.0.0.1", port, timeout=2)  # closed now: a reason, not None


def test_hub_files_follow_open_clips_naming():
    from open_clip.pretrained import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    from pointfalip.downloads import _hub_files

    assert _hub_files("timm/vit_base_patch16_clip_224.openai/") == (
        "timm/vit_base_patch16_clip_224.openai", [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME])
    assert _hub_files("org/repo/weights.bin") == ("org/repo", ["weights.safetensors", "weights.bin"])


def test_models_lists_vit_tags_and_what_is_cached(main, monkeypatch):
    import open_clip

    from pointfalip import downloads as weights

    cached = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    monkeypatch.setattr(weights, "cached_file", lambda cfg: "/cache/b32.safetensors" if cfg == cached else None)
    code, out, err = main("models", "--json")
    assert code == 0, err
    result = json.loads(out)
    by_name = {m["model"]: m for m in result["models"]}
    assert {"ViT-B-16", "ViT-B-32", "ViT-L-14"} <= set(by_name) and all(m["foveal"] for m in result["models"])
    assert not any(name.startswith("RN") for name in by_name)  # ResNet towers take no foveal mask
    tags = {t["tag"]: t for t in by_name["ViT-B-32"]["tags"]}
    assert tags["openai"]["cached"] and tags["openai"]["file"] == "/cache/b32.safetensors"
    same_file = [t for m in result["models"] for t in m["tags"] if t["source"] == tags["openai"]["source"]]
    assert result["cached"] == len(same_file) and all(t["cached"] for t in same_file)  # e.g. its -quickgelu twin
    assert result["tags"] == sum(len(m["tags"]) for m in result["models"])
    code, out, _ = main("models")
    assert code == 0 and re.search(r"ViT-B-32\s+openai\*", out) and "--pretrained none" in out
    code, out, _ = main("models", "--cached", "--json")
    assert "ViT-B-32" in [m["model"] for m in json.loads(out)["models"]] and json.loads(out)["tags"] == len(same_file)


def test_every_command_prints_text_unless_json_is_asked():
    """JSON only with --json: each command has a text printer."""
    from pointfalip.cli import COMMANDS

    assert all(cmd.printer is not None for cmd in COMMANDS.values()), [
        name for name, cmd in COMMANDS.items() if cmd.printer is None]
