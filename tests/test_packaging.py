"""An installed wheel (not only the editable install) carries the kernels and the data under weights/."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: the test extra pins a setuptools that can build the project, so this works offline.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        cwd=out,
    )
    (path,) = out.glob("udvd_triton-*.whl")
    return path


def test_wheel_contains_every_tracked_kernel_and_weights_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    tracked = subprocess.run(
        ["git", "ls-files", "kernels", "weights"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "kernels/__init__.py" in tracked and "weights/__init__.py" in tracked
    expected = {"udvd_triton/" + p for p in tracked}
    assert expected <= names, f"missing from the wheel: {sorted(expected - names)}"


def test_installed_wheel_imports_without_source_tree(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # a pure-Python wheel installs by extraction
    code = (
        "import udvd_triton, udvd_triton.kernels, udvd_triton.weights\n"
        "from importlib.resources import files\n"
        "print(udvd_triton.__file__)\n"
        "print(sorted(p.name for p in files('udvd_triton.weights').iterdir()))\n"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].startswith(str(site))
