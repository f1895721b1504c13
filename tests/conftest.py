"""Shared fixtures: tiny open_clip ViT configs registered under their own names, and reference data paths."""
import json
import warnings
from pathlib import Path

import open_clip
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
_TINY_DIR = Path(__file__).resolve().parent / "_tiny_configs"


def _tiny_config(patch: int, image: int, quick_gelu: bool = False) -> dict:
    # head width 64 as in OpenAI's CLIPs, so OpenAI-format checkpoints of it rebuild by shape
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": image, "layers": 4, "width": 128, "patch_size": patch},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
    }
    if quick_gelu:
        cfg["quick_gelu"] = True
    return cfg


TINY = {
    "pf-tiny-16": _tiny_config(16, 64),
    "pf-tiny-14": _tiny_config(14, 56),
    "pf-tiny-32": _tiny_config(32, 96),
    "pf-tiny-16-rect": {**_tiny_config(16, 64), "vision_cfg": {"image_size": [48, 80], "layers": 4,
                                                               "width": 128, "patch_size": 16}},
}


def _register() -> None:
    _TINY_DIR.mkdir(exist_ok=True)
    for name, cfg in TINY.items():
        path = _TINY_DIR / f"{name}.json"
        text = json.dumps(cfg)
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    if "pf-tiny-16" not in open_clip.list_models():
        open_clip.add_model_config(_TINY_DIR)


_register()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


def raises_one_line(fn, *args, match=None, **kwargs) -> str:
    """The one-line InputError message that fn(*args, **kwargs) raises."""
    from pointfalip.errors import InputError

    with pytest.raises(InputError, match=match) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert msg and "\n" not in msg, msg
    return msg


def assert_user_error(proc, *words):
    """A finished CLI subprocess that failed on user input: exit 2, one stderr line holding `words`."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]


def load_random(name: str = "pf-tiny-16", **kwargs):
    import pointfalip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pointfalip.load_model(name, pretrained="none", **kwargs)


@pytest.fixture
def main(capsys):
    """`pointfalip.cli.main` in this process: ``run(*args) -> (exit code, stdout, stderr)``; the logging levels it
    sets are restored afterwards."""
    import logging

    from pointfalip.cli import main as cli_main

    level = logging.getLogger().level

    def run(*args):
        code = cli_main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield run
    logging.getLogger().setLevel(level)


def one_line_error(code, err, *words):
    """An in-process CLI run that failed on user input: exit 2, one stderr line holding ``words``."""
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w.lower() in lines[0].lower(), lines[0]


def interrupt_after(calls: int, fn):
    """``fn`` that raises KeyboardInterrupt on call number ``calls + 1`` (Ctrl-C in the middle of a run)."""
    done = []

    def wrapped(*args, **kwargs):
        if len(done) == calls:
            raise KeyboardInterrupt
        done.append(1)
        return fn(*args, **kwargs)

    return wrapped
