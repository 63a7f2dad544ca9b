"""The ``udvd`` command line: upscale over files and folders, output naming and overwrite rules, user errors."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_zoo import make_hf_cache, registry_entry, tiny_model, write_registry

from udvd_triton import UDVD
from udvd_triton.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "chelsea.png"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt")
    tiny_model().save_pretrained(path)
    return path


def small_image(path: Path, size=(9, 7), mode="RGB") -> Path:
    rng = np.random.default_rng(len(str(path)))
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(arr[..., 0] if channels == 1 else arr, mode).save(path)
    return path


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_upscale_files_and_folders(ckpt: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    a = small_image(folder / "a.png")
    small_image(folder / "b.png", mode="RGBA")
    (folder / "notes.txt").write_text("not an image")  # skipped by suffix
    c = small_image(tmp_path / "c.bmp", mode="L")
    out = tmp_path / "out"
    code, stdout, _ = run([
        "upscale", str(folder), str(c), "-o", str(out), "--model", str(ckpt), "--sigma", "1.5", "--noise", "5",
        "--device", "cpu",
    ], capsys)
    assert code == 0 and "wrote 3 image(s)" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png", "b_x2.png", "c_x2.png"]
    model = UDVD.from_pretrained(ckpt)
    expected = model.upscale(Image.open(a), blur_sigma=1.5, noise_level=5)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a_x2.png")), np.asarray(expected))
    assert Image.open(out / "b_x2.png").mode == "RGBA" and Image.open(out / "c_x2.png").mode == "L"
    assert Image.open(out / "c_x2.png").size == (18, 14)


def test_tile_and_auto_noise(ckpt: Path, tmp_path: Path, capsys) -> None:
    src = small_image(tmp_path / "x.png", size=(13, 11))
    code, _, _ = run(["upscale", str(src), "-o", str(tmp_path / "t"), "--model", str(ckpt), "--tile", "4",
                      "--noise", "auto", "-q"], capsys)
    assert code == 0
    model = UDVD.from_pretrained(ckpt)
    expected = np.asarray(model.upscale(Image.open(src), noise_level="auto"))
    got = np.asarray(Image.open(tmp_path / "t" / "x_x2.png")).astype(int)
    assert np.abs(got - expected).max() <= 1  # tiled vs untiled: float rounding may flip a uint8 rounding


def test_overwrite_rules(ckpt: Path, tmp_path: Path, capsys) -> None:
    src = small_image(tmp_path / "p.png")
    args = ["upscale", str(src), "-o", str(tmp_path), "--model", str(ckpt), "-q"]
    assert run(args, capsys)[0] == 0
    before = (tmp_path / "p_x2.png").stat().st_mtime_ns
    code, _, err = run(args, capsys)
    assert code == 2 and "output exists" in err and "--overwrite" in err
    assert (tmp_path / "p_x2.png").stat().st_mtime_ns == before
    assert run([*args, "--overwrite"], capsys)[0] == 0
    # p_x2.png is now also an input: its output name would be an input's name -> refused
    code, _, err = run(["upscale", str(tmp_path), "-o", str(tmp_path), "--model", str(ckpt), "--overwrite"], capsys)
    assert code == 2 and "refusing to overwrite input" in err
    # two inputs with one stem
    other = tmp_path / "sub"
    other.mkdir()
    small_image(other / "p.png")
    code, _, err = run(["upscale", str(src), str(other / "p.png"), "-o", str(tmp_path / "o"), "--model", str(ckpt)],
                       capsys)
    assert code == 2 and "would both be written" in err


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["upscale", "{tmp}/missing.png", "-o", "{tmp}/o", "--model", "{ckpt}"], "input not found"),
        (["upscale", "{tmp}/junk.png", "-o", "{tmp}/o", "--model", "{ckpt}"], "cannot read image"),
        (["upscale", "{tmp}/empty", "-o", "{tmp}/o", "--model", "{ckpt}"], "no images"),
        (["upscale", "{tmp}/ok.png", "-o", "{tmp}/o", "--model", "udvd-x9"], "unknown model 'udvd-x9'"),
        (["upscale", "{tmp}/ok.png", "-o", "{tmp}/o", "--model", "{tmp}/nope"], "checkpoint not found"),
        (["upscale", "{tmp}/ok.png", "-o", "{tmp}/o", "--model", "{ckpt}", "--half", "--device", "cpu"], "--half"),
        (["upscale", "{tmp}/ok.png", "-o", "{tmp}/o", "--model", "{ckpt}", "--device", "tpu9"], "invalid --device"),
        (["upscale", "{tmp}/ok.png", "-o", "{tmp}/o", "--model", "{ckpt}", "--noise", "999"], "0..255"),
        (["upscale", "{tmp}/ok.png", "-o", "{tmp}/ok.png", "--model", "{ckpt}"], "not a folder"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(ckpt: Path, tmp_path: Path, capsys, argv, match) -> None:
    (tmp_path / "junk.png").write_bytes(b"this is no png")
    (tmp_path / "empty").mkdir()
    small_image(tmp_path / "ok.png")
    code, _, err = run([a.format(tmp=tmp_path, ckpt=ckpt) for a in argv], capsys)
    assert code == 2
    assert err.startswith("udvd: error: ") and match in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written


def test_argparse_mistakes_exit_2(capsys) -> None:
    assert main(["upscale", "x.png"]) == 2  # no -o
    assert main(["upscale", "x.png", "-o", "o", "--noise", "loud"]) == 2
    assert "auto" in capsys.readouterr().err
    assert main([]) == 2
    assert main(["--help"]) == 0 and "upscale" in capsys.readouterr().out


def test_models_table(ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    weights = ckpt / "model.safetensors"
    registry = write_registry(ckpt / "reg.json", [registry_entry("tiny-x2", weights, default=True),
                                                  registry_entry("other", weights)])
    monkeypatch.setenv("UDVD_REGISTRY", str(registry))
    code, out, _ = run(["models"], capsys)
    header, row, other = out.splitlines()
    assert code == 0 and header.split()[:4] == ["NAME", "SCALE", "DEFAULT", "ARCH"]
    assert row.split()[:3] == ["tiny-x2", "x2", "yes"] and "UDD 8ch x1" in row and "test: 0 steps" in row
    assert other.split()[:3] == ["other", "x2", "UDD"]
    monkeypatch.setenv("UDVD_REGISTRY", str(write_registry(tmp_path / "empty.json", [])))
    code, out, _ = run(["models"], capsys)
    assert code == 0 and "no models" in out
    monkeypatch.setenv("UDVD_REGISTRY", str(tmp_path / "absent.json"))
    code, _, err = run(["models"], capsys)
    assert code == 2 and "registry not found" in err


def test_console_script_offline_hf_model_on_the_bundled_example(ckpt: Path, tmp_path: Path) -> None:
    """A fresh process with HF_HUB_OFFLINE=1 and a pre-populated cache: the hub path end to end."""
    cache = tmp_path / "cache"
    make_hf_cache(cache, "someone/udvd-tiny", ckpt)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "TRITON_INTERPRET": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "udvd_triton.cli", "upscale", str(EXAMPLE), "-o", str(tmp_path / "out"),
         "--model", "hf:someone/udvd-tiny", "--tile", "64"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    out = Image.open(tmp_path / "out" / "chelsea_x2.png")
    assert out.size == (2 * 226, 2 * 150) and out.mode == "RGB"
    res = subprocess.run(
        [sys.executable, "-m", "udvd_triton.cli", "upscale", str(EXAMPLE), "-o", str(tmp_path / "o2"),
         "--model", "hf:someone/not-cached"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 2 and res.stderr.startswith("udvd: error: ") and "Traceback" not in res.stderr


def test_bundled_example_is_small_and_licensed() -> None:
    img = Image.open(EXAMPLE)
    assert img.mode == "RGB" and img.size == (226, 150)
    assert EXAMPLE.stat().st_size < 100_000
    assert "CC0" in (ROOT / "examples" / "LICENSE.md").read_text()


def test_upscale_without_model_uses_the_registry_default(tmp_path: Path, capsys) -> None:
    src = small_image(tmp_path / "d.png", size=(12, 10))
    code, _, err = run(["upscale", str(src), "-o", str(tmp_path / "o"), "-q"], capsys)
    assert code == 0, err
    assert Image.open(tmp_path / "o" / "d_x2.png").size == (24, 20)
    code, _, err = run(["upscale", str(src), "-o", str(tmp_path / "o4"), "--scale", "4", "-q"], capsys)
    assert code == 2 and "no default x4 model" in err  # until an x4 model is registered
    code, out, _ = run(["models"], capsys)
    assert code == 0 and "DEFAULT" in out.splitlines()[0]
