"""Every Python block of the README runs (random weights, CPU, ViT-B-32 for speed), so the examples cannot drift."""
import re
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
NEEDS = "# needs "  # a block whose first line says what it needs that tests lack (e.g. "# needs ROS 2")
SWAPS = (('pretrained="openai"', 'pretrained="none"'), ('"openai"', '"none"'), ('device="cuda"', 'device="cpu"'),
         ('precision="fp16"', 'precision="fp32"'), ('"ViT-B-16"', '"ViT-B-32"'))


def test_the_readme_has_python_examples():
    assert BLOCKS


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    code = BLOCKS[index]
    if code.lstrip().startswith(NEEDS):
        pytest.skip(code.lstrip().splitlines()[0])
    for old, new in SWAPS:
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme"})
