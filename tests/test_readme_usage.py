"""Every command line of the README's Usage section runs as written from a `pointfalip samples` folder, with only
``--pretrained none`` added, as the README tells a user without the weights to do; so the README cannot drift.

The lines are parsed from README.md itself and run in README order in one folder (later lines use what earlier
ones wrote, e.g. ``objects.fewshot``). For speed the test also appends ``--model`` with a tiny ViT config (the
same code path on a 4x4 patch grid) and runs ``pointfalip`` lines in this process; ``torchrun`` lines run as
processes. A line with ``--loop`` streams until Ctrl-C: it runs until its live server waits for a viewer, then gets
SIGINT and must end with exit code 130 (port 8765, the line's default, must be free).
"""
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
NEEDS_ROS = ("source /opt/ros/", "python -m pointfalip.ros2")  # lines of the ROS 2 node: ROS is not installed here
SERVE_PORT = 8765  # the --serve default the README's line relies on


def usage_lines() -> list[str]:
    """The command lines of the bash blocks of the README's ``## Usage`` section (continuations joined)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Usage\n", 1)[1]
    section = re.split(r"\n## ", section, maxsplit=1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


LINES = usage_lines()
RUN = [line for line in LINES if not line.startswith(NEEDS_ROS)]


def test_the_usage_section_is_all_runnable_lines():
    """Every line is a `pointfalip` or `torchrun` command (or the ROS 2 node's, which needs ROS); the first makes
    the samples."""
    assert RUN[0].startswith("pointfalip samples ") and "&& cd " in RUN[0]
    assert all(line.startswith(("pointfalip ", "torchrun ")) for line in RUN), [
        line for line in RUN if not line.startswith(("pointfalip ", "torchrun "))]
    assert len(RUN) >= 30


# the smallest ViT the pipeline takes: a 2x2 patch grid, the four foveal blocks (the lines test the commands)
USAGE_MODEL = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 16},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("model") / "pf-usage.json"
    path.write_text(json.dumps(USAGE_MODEL))
    return str(path)


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    """The folder the lines run in (set by the first line's ``cd``) and the text-feature cache."""
    return {"cwd": tmp_path_factory.mktemp("usage"), "cache": tmp_path_factory.mktemp("text_cache")}


def _takes_pretrained(words: list) -> bool:
    from pointfalip.cli import build_parser

    parser = build_parser().command_parsers
    name = " ".join(words[:2]) if " ".join(words[:2]) in parser else words[0]
    return any("--pretrained" in a.option_strings for a in parser[name]._actions)


def _interrupt_when(waiting: threading.Event, done: threading.Event) -> None:
    """SIGINT to this process (Ctrl-C) once the command waits for a viewer, unless ``done`` comes first."""
    while not done.is_set():
        if waiting.wait(0.1):
            os.kill(os.getpid(), signal.SIGINT)
            return


@pytest.mark.parametrize("line", RUN, ids=[f"{k:02d} {line[:70]}" for k, line in enumerate(RUN)])
def test_usage_line_runs_as_written(line, main, state, tiny_model, monkeypatch):
    monkeypatch.setenv("POINTFALIP_CACHE", str(state["cache"]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for command in " ".join(shlex.split(line, comments=True, posix=False)).split("&&"):
        words = shlex.split(command)
        monkeypatch.chdir(state["cwd"])
        if words[0] == "cd":
            state["cwd"] = (Path(state["cwd"]) / words[1]).resolve()
            assert state["cwd"].is_dir()
            continue
        tool, args = words[0], words[1:]
        if tool == "torchrun":
            extra = ["--pretrained", "none", "--model", tiny_model]
            proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", *args, *extra], capture_output=True,
                                  text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
            assert proc.returncode == 0, proc.stderr[-3000:]
            assert "report:" in proc.stdout
            continue
        assert tool == "pointfalip", line
        if _takes_pretrained(args):
            args += ["--pretrained", "none", "--model", tiny_model]
        if "--loop" in args:  # streams until Ctrl-C: interrupted once its live server waits for a viewer
            from pointfalip.stream import SceneOutputs

            with socket.socket() as probe:  # a busy port would fail the line, not the README
                probe.bind(("127.0.0.1", SERVE_PORT))
            waiting, done = threading.Event(), threading.Event()
            wait_for_viewer = SceneOutputs.wait_for_viewer
            monkeypatch.setattr(SceneOutputs, "wait_for_viewer",
                                lambda self, timeout: waiting.set() or wait_for_viewer(self, timeout))
            watcher = threading.Thread(target=_interrupt_when, args=(waiting, done), daemon=True)
            watcher.start()
            try:
                code, out, err = main(*args)
            finally:
                done.set()
                watcher.join()
            assert code == 130, err
            assert f"ws://127.0.0.1:{SERVE_PORT}" in err and "interrupted" in err
            continue
        code, out, err = main(*args)
        assert code == 0, f"{line}\n{err}"
        assert "Traceback" not in err
        if "--json" in args:
            json.loads(out)
        else:
            assert out.strip(), f"{line}: printed nothing"
