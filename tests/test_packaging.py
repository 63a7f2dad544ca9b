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


def _imports(path: Path, package_root: Path) -> set[str]:
    """The udvd_triton modules a source file imports, at module level or inside functions."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("udvd_triton"):
            found.add(node.module)
            for alias in node.names:  # `from udvd_triton import files` imports a module
                if (package_root / node.module.removeprefix("udvd_triton").lstrip(".").replace(".", "/") / f"{alias.name}.py").exists():
                    found.add(f"{node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("udvd_triton")}
    return found


def _module_files() -> dict[str, Path]:
    files = {}
    for folder, package in ((ROOT / "udvd_triton", "udvd_triton"), (ROOT / "kernels", "udvd_triton.kernels")):
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            files[name] = path
    return files


def test_imports_point_one_way_without_a_circle() -> None:
    """kernels <- ops <- model <- checkpoint / registry / inference <- hub <- evaluate / training <- cli, lazy imports
    inside functions included: the module graph has no cycle (a package's lazy __init__ exports are not edges)."""
    files = _module_files()
    tree = ROOT / "udvd_triton"
    graph = {name: {m for m in _imports(path, tree) if m in files and m != name}
             for name, path in files.items() if not path.name == "__init__.py"}
    visiting, done = [], set()

    def visit(node: str) -> None:
        if node in done:
            return
        assert node not in visiting, "import circle: " + " -> ".join([*visiting[visiting.index(node):], node])
        visiting.append(node)
        for nxt in graph.get(node, ()):
            visit(nxt)
        visiting.pop()
        done.add(node)

    for name in graph:
        visit(name)
    assert "udvd_triton.hub" not in graph["udvd_triton.model"] and "udvd_triton.kernels.op" in graph["udvd_triton.ops"]


def test_the_network_and_the_upscale_command_load_only_what_they_need() -> None:
    """``import udvd_triton.model`` loads neither huggingface_hub nor PIL; ``udvd upscale`` never imports the
    trainer (parsing its arguments and loading a model)."""
    code = (
        "import sys\n"
        "import udvd_triton.model\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'huggingface_hub', 'PIL', 'safetensors', 'triton'}))\n"
        "from udvd_triton.cli import build_parser\n"
        "build_parser().parse_args(['upscale', 'a.png', '-o', 'out'])\n"
        "from udvd_triton import UDVD\n"
        "UDVD.from_pretrained('udvd-x2-small')\n"
        "print(sorted(m for m in sys.modules if m.startswith('udvd_triton.training.') or m == 'torch.distributed.fsdp'))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    first, second = res.stdout.splitlines()
    assert first == "[]"
    assert "udvd_triton.training.trainer" not in second and "udvd_triton.training.data" not in second, second


def test_no_source_file_over_800_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in [*(ROOT / "udvd_triton").rglob("*.py"), *(ROOT / "kernels").rglob("*.py")]
            if (n := len(p.read_text().splitlines())) > 800}
    assert long == {}
