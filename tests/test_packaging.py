"""The wheel a user installs carries every packaged preset and data file, and the code finds them as resources."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(REPO)], capture_output=True, text=True)
    if proc.returncode != 0 and ("No module named" in proc.stderr or "invalid command 'bdist_wheel'" in proc.stderr):
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("pointfalip-*.whl")
    return zipfile.ZipFile(path)


@pytest.mark.parametrize("folder", ["configs", "data"])
def test_every_config_and_data_file_is_in_the_wheel(wheel, folder):
    tracked = subprocess.run(["git", "ls-files", folder], cwd=REPO, capture_output=True, text=True).stdout.split()
    files = tracked or [str(p.relative_to(REPO)) for p in (REPO / folder).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts]
    assert files, f"{folder}/ is empty"
    names = set(wheel.namelist())
    missing = [f for f in files if f"pointfalip/{f}" not in names]
    assert not missing, f"not in the wheel: {missing}"


def test_every_package_is_in_the_wheel(wheel):
    packages = sorted(str(p.parent.relative_to(REPO)) for p in (REPO / "pointfalip").rglob("__init__.py"))
    names = set(wheel.namelist())
    missing = [f for f in packages if f"{f}/__init__.py" not in names]
    assert "pointfalip/ros2" in packages and not missing, f"packages not in the wheel: {missing}"


def test_resources_are_read_through_the_package():
    from pointfalip import presets

    assert presets.list_presets("recognizer") == sorted(p.stem for p in (REPO / "configs/presets").glob("*.yaml"))
    assert presets.preset_path("recognizer", "pointclip").read_text() == (REPO / "configs/presets/pointclip.yaml"
                                                                         ).read_text()
    assert "modelnet40" in presets.read_data_json("classnames.json")


def test_every_module_is_in_the_wheel(wheel):
    """`pointfalip samples` and the rest of the command line work from an installed wheel: every module ships."""
    modules = [str(p.relative_to(REPO)) for p in (REPO / "pointfalip").rglob("*.py") if "__pycache__" not in p.parts]
    assert {"pointfalip/samples.py", "pointfalip/weights.py", "pointfalip/cli/help.py"} <= set(modules)
    missing = [m for m in modules if m not in set(wheel.namelist())]
    assert not missing, f"not in the wheel: {missing}"
