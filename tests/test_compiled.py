"""The compiled encoder (`load_model(..., compile=True)`) against the eager one, and how runs turn it on."""
import argparse
from pathlib import Path

import pytest
import torch
from conftest import load_random

from pointfalip import compiled
from pointfalip.cli.options import load_model as cli_load_model
from pointfalip.errors import InputError


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).norm(dim=-1) / b.norm(dim=-1)).max())


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(eager, compiled) tiny models with the same weights; inductor's cache in a folder of this test's own."""
    mp = pytest.MonkeyPatch()
    mp.setenv(compiled.CACHE_ENV, str(tmp_path_factory.mktemp("inductor")))
    eager = load_random("pf-tiny-16")
    fast = load_random("pf-tiny-16", compile=True)
    fast.load_state_dict(eager.state_dict())
    yield eager, fast
    mp.undo()


def test_compiled_equals_eager_for_every_batch_and_bias_without_recompiling(pair):
    """The bias is an input of the compiled code (a new bias, a new batch size: no new graph), fp32 to 1e-5."""
    from torch._dynamo.utils import counters

    eager, fast = pair
    assert fast.compiled and not eager.compiled
    torch.manual_seed(0)
    with torch.inference_mode():
        images, bias = torch.rand(3, 3, 64, 64), torch.rand(3, 4, 4)
        assert _relative(fast.encode_image(images, bias), eager.encode_image(images, bias)) < 1e-5
        graphs = counters["stats"]["unique_graphs"]
        for n in (5, 2):
            images, bias = torch.rand(n, 3, 64, 64), torch.rand(n, 4, 4) * 3
            assert _relative(fast.encode_image(images, bias), eager.encode_image(images, bias)) < 1e-5
        assert counters["stats"]["unique_graphs"] == graphs
        plain, ref = fast.encode_image(images), eager.encode_image(images)
        assert _relative(plain, ref) < 1e-5
        both, ref = fast.encode_image_pair(images, bias), eager.encode_image_pair(images, bias)
        assert all(_relative(a, b) < 1e-5 for a, b in zip(both, ref))
        assert _relative(both[1], eager.clip.encode_image(images)) < 1e-5


def test_compile_keeps_its_code_on_disk(pair):
    eager, fast = pair
    assert compiled.cache_dir().is_dir() and any(compiled.cache_dir().rglob("*.py"))


def test_cache_dir_is_torchs_variable_or_the_projects_folder(monkeypatch, tmp_path):
    monkeypatch.delenv(compiled.CACHE_ENV, raising=False)
    assert compiled.cache_dir() == Path("~/.cache/pointfalip/inductor").expanduser()
    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path))
    assert compiled.cache_dir() == tmp_path


def test_set_compile_turns_it_off_and_on():
    model = load_random("pf-tiny-16")
    assert model.set_compile(True).compile_engine == "inductor"
    assert not model.set_compile(False).compiled and model.compile_engine is None
    with pytest.raises(InputError, match="unknown compile engine 'tvm'"):
        model.set_compile("tvm")


def test_openvino_engine_equals_eager_in_fp32():
    """Each kind of call converted once with a dynamic batch; the image tower's dtype is left as it was."""
    pytest.importorskip("openvino")
    eager = load_random("pf-tiny-16")
    fast = load_random("pf-tiny-16", compile="openvino")
    fast.load_state_dict(eager.state_dict())
    torch.manual_seed(0)
    with torch.inference_mode():
        for n in (3, 5):
            images, bias = torch.rand(n, 3, 64, 64), torch.rand(n, 4, 4) * 3
            assert _relative(fast.encode_image(images, bias), eager.encode_image(images, bias)) < 1e-5
        both, ref = fast.encode_image_pair(images, bias), eager.encode_image_pair(images, bias)
        assert all(_relative(a, b) < 1e-5 for a, b in zip(both, ref))
        feats, tokens = fast.encode_image(images, bias, return_tokens=True)
        ref_feats, ref_tokens = eager.encode_image(images, bias, return_tokens=True)
        assert _relative(feats, ref_feats) < 1e-5 and _relative(tokens, ref_tokens) < 1e-5
    assert len(fast._compiled_encoder._requests) == 3
    assert next(fast.visual.parameters()).dtype == torch.float32


def _args(**kw) -> argparse.Namespace:
    base = dict(model="pf-tiny-16", pretrained="none", device="cpu", precision=None, preset=None, compile=None)
    return argparse.Namespace(**{**base, **kw})


def test_command_line_compiles_when_told_or_when_the_preset_says(tmp_path):
    assert not cli_load_model(_args()).compiled  # the packaged presets: off
    assert cli_load_model(_args(compile=True)).compiled
    preset = tmp_path / "fast.yaml"
    preset.write_text("compile: true\n")
    assert cli_load_model(_args(preset=str(preset))).compiled
    assert not cli_load_model(_args(preset=str(preset), compile="off")).compiled
    preset.write_text("compile: sometimes\n")
    with pytest.raises(InputError, match="compile must be true, false or an engine"):
        cli_load_model(_args(preset=str(preset)))


def test_compile_option_reads_an_engine():
    from pointfalip.cli import build_parser

    parse = build_parser().parse_args
    base = ["classify", "x.ply", "--labels", "a,b"]
    assert parse(base + ["--compile"]).compile == "inductor"
    assert parse(base + ["--compile", "openvino"]).compile == "openvino"
    assert parse(base + ["--no-compile"]).compile == "off"
    assert parse(base).compile is None


def test_an_unknown_engine_is_one_line_and_exit_2(main):
    code, out, err = main("classify", "x.ply", "--labels", "a,b", "--compile", "tvm")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--compile" in err and "'tvm'" in err and "openvino" in err
