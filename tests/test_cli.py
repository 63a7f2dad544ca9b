"""The ``udvd`` command line: upscale over files and folders, output naming and overwrite rules, user errors."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from udvd_triton import UDVD, files, imageio
from udvd_triton.cli import main

from conftest import make_hf_cache, registry_entry, tiny_model, write_registry

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
    # Outputs are compared with models run here on the CPU; on a CUDA machine `upscale` would default to the GPU,
    # whose convolutions round differently (the GPU path has its own tests in test_inference.py).
    if argv[0] == "upscale" and "--device" not in argv:
        argv = [*argv, "--device", "cpu"]
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
        (["upscale", "{tmp}/ok.png", "-o", "{tmp}/ok.png", "--model", "{ckpt}"], "refusing to overwrite input"),
        (["upscale", "{tmp}/ok.png", "-o", "{tmp}/notes.txt", "--model", "{ckpt}"], "not a folder"),
        (["upscale", "{tmp}/ok.png", "-o", "{tmp}/notes.txt/o", "--model", "{ckpt}"], "not a folder"),
        (["upscale", "{tmp}/ok.png", "{tmp}/ok.png", "-o", "{tmp}/o.png", "--model", "{ckpt}"], "give a folder"),
        (["upscale", "{tmp}/ok.png", "-o", "{tmp}/o.jpg", "--model", "{ckpt}"], ".png, .tif, .tiff"),
        (["upscale", "{tmp}/ok.png", "-o", "{tmp}/o", "--sigma", "1", "--sigma-map", "{tmp}/ok.png"], "not both"),
        (["upscale", "{tmp}/ok.png", "-o", "{tmp}/o", "--noise-map", "{tmp}/ok.png"], "must be a grayscale image"),
        (["upscale", "{tmp}/ok.png", "-o", "{tmp}/o", "--noise-map", "{tmp}/missing.npy"], "--noise-map not found"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(ckpt: Path, tmp_path: Path, capsys, argv, match) -> None:
    (tmp_path / "junk.png").write_bytes(b"this is no png")
    (tmp_path / "notes.txt").write_text("a file")
    (tmp_path / "empty").mkdir()
    small_image(tmp_path / "ok.png")
    code, _, err = run([a.format(tmp=tmp_path, ckpt=ckpt) for a in argv], capsys)
    assert code == 2
    assert err.startswith("udvd: error: ") and match in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.png").exists()  # nothing written


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
    header, row, other, _, estimator = out.splitlines()
    assert code == 0 and header.split()[:4] == ["NAME", "SCALE", "DEFAULT", "ARCH"]
    assert "estimated by degradation-estimator" in estimator  # the bundled one, whatever UDVD_REGISTRY says
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
    assert code == 0, err  # udvd-x4-small, the registry's default x4 model
    assert Image.open(tmp_path / "o4" / "d_x4.png").size == (48, 40)
    code, out, _ = run(["models"], capsys)
    assert code == 0 and "DEFAULT" in out.splitlines()[0]


# --- issue 10: outputs are files or folders as asked, come back as they went in, and replace only our own files ---


def test_output_file_for_one_input_and_folders_otherwise(ckpt: Path, tmp_path: Path, capsys) -> None:
    """`-o result.png` with one input made a folder named result.png."""
    src = small_image(tmp_path / "a.png")
    code, out, _ = run(["upscale", str(src), "-o", str(tmp_path / "result.png"), "--model", str(ckpt)], capsys)
    assert code == 0 and (tmp_path / "result.png").is_file() and f"wrote {tmp_path / 'result.png'}" in out
    assert Image.open(tmp_path / "result.png").size == (18, 14)
    (tmp_path / "dir.png").mkdir()  # an existing folder stays a folder, whatever its name
    assert run(["upscale", str(src), "-o", str(tmp_path / "dir.png"), "--model", str(ckpt), "-q"], capsys)[0] == 0
    assert (tmp_path / "dir.png" / "a_x2.png").is_file()
    assert run(["upscale", str(src), "-o", str(tmp_path / "plain"), "--model", str(ckpt), "-q"], capsys)[0] == 0
    assert (tmp_path / "plain" / "a_x2.png").is_file()


@pytest.mark.parametrize("case", ["gray16.png", "float.tif", "rgb16.png", "rgba16.tif", "gray8.png", "rgba8.png"])
def test_bit_depth_and_channels_round_trip(ckpt: Path, tmp_path: Path, capsys, case: str) -> None:
    """16-bit gray PNG came out white, float TIFF black, 16-bit RGB 8-bit."""
    rng = np.random.default_rng(0)
    arr = {
        "gray16.png": (rng.random((9, 11)) * 65535).astype(np.uint16),
        "float.tif": rng.random((9, 11)).astype(np.float32),
        "rgb16.png": (rng.random((9, 11, 3)) * 65535).astype(np.uint16),
        "rgba16.tif": (rng.random((9, 11, 4)) * 65535).astype(np.uint16),
        "gray8.png": (rng.random((9, 11)) * 255).astype(np.uint8),
        "rgba8.png": (rng.random((9, 11, 4)) * 255).astype(np.uint8),
    }[case]
    src = tmp_path / case
    if case == "gray16.png":
        Image.fromarray(arr).save(src)  # PIL's own 16-bit gray PNG (mode I;16)
    elif case == "float.tif":
        Image.fromarray(arr, mode="F").save(src)
    else:
        imageio.write_image(src, arr)
    code, _, err = run(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(ckpt), "-q"], capsys)
    assert code == 0, err
    dst = tmp_path / "out" / f"{src.stem}_x2{'.tif' if case.endswith('.tif') else '.png'}"
    got, info = imageio.read_image(dst)
    expected = UDVD.from_pretrained(ckpt).upscale(arr)
    assert got.dtype == arr.dtype and got.shape == expected.shape and imageio.is_ours(dst)
    np.testing.assert_array_equal(got, expected)


def test_overwrite_replaces_only_our_own_outputs(ckpt: Path, tmp_path: Path, capsys) -> None:
    src = small_image(tmp_path / "p.png")
    out = tmp_path / "out"
    out.mkdir()
    theirs = small_image(out / "p_x2.png")  # someone else's file at the output path
    before = theirs.read_bytes()
    args = ["upscale", str(src), "-o", str(out), "--model", str(ckpt), "-q"]
    code, _, err = run([*args, "--overwrite"], capsys)
    assert code == 2 and "not written by udvd-triton" in err and err.count("\n") == 1
    assert theirs.read_bytes() == before
    theirs.unlink()
    (out / "p_x2.png").symlink_to(tmp_path / "nowhere.png")  # a dangling link exists, and is never written through
    code, _, err = run(args, capsys)
    assert code == 2 and "output exists" in err
    code, _, err = run([*args, "--overwrite"], capsys)
    assert code == 2 and "symbolic link" in err and not (tmp_path / "nowhere.png").exists()
    (out / "p_x2.png").unlink()
    assert run(args, capsys)[0] == 0  # our own output ...
    assert run([*args, "--overwrite"], capsys)[0] == 0  # ... is replaced


def test_write_failure_keeps_the_old_output_and_stops(ckpt: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """A full disk replaced a good output with a truncated file."""
    a, b = small_image(tmp_path / "a.png"), small_image(tmp_path / "b.png")
    out = tmp_path / "out"
    assert run(["upscale", str(a), "-o", str(out), "--model", str(ckpt), "-q"], capsys)[0] == 0
    good = (out / "a_x2.png").read_bytes()
    calls = []
    upscale = UDVD.upscale
    monkeypatch.setattr(UDVD, "upscale", lambda self, *x, **k: calls.append(1) or upscale(self, *x, **k))

    def full(fd: int) -> None:  # a full disk reports ENOSPC when the written data is flushed
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code, _, err = run(["upscale", str(a), str(b), "-o", str(out), "--model", str(ckpt), "--overwrite"], capsys)
    assert code == 2 and err.startswith("udvd: error: ") and f"cannot write {out / 'a_x2.png'}" in err
    assert "No space left" in err
    assert err.count("\n") == 1 and len(calls) == 1  # b was never computed
    assert (out / "a_x2.png").read_bytes() == good and sorted(p.name for p in out.iterdir()) == ["a_x2.png"]


def test_unwritable_output_folder_is_refused_before_any_compute(ckpt: Path, tmp_path: Path, capsys, monkeypatch):
    src = small_image(tmp_path / "a.png")
    monkeypatch.setattr(UDVD, "upscale", lambda *a, **k: pytest.fail("computed before checking the output folder"))

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    code, _, err = run(["upscale", str(src), "-o", str(tmp_path / "ro"), "--model", str(ckpt)], capsys)
    assert code == 2 and "cannot create files in" in err and err.count("\n") == 1


def test_gif_is_read_in_folders_with_a_note(ckpt: Path, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    frames = [Image.new("RGB", (9, 7), c) for c in ("red", "blue")]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    code, _, err = run(["upscale", str(folder), "-o", str(tmp_path / "out"), "--model", str(ckpt)], capsys)
    assert code == 0 and "anim.gif has 2 frames: only the first is used" in err
    assert Image.open(tmp_path / "out" / "anim_x2.png").size == (18, 14)


def test_out_of_memory_and_decompression_bombs_are_one_line(ckpt: Path, tmp_path: Path, capsys, monkeypatch):
    src = small_image(tmp_path / "a.png", size=(40, 36))
    monkeypatch.setattr(UDVD, "forward", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("CUDA out of memory")))
    code, _, err = run(["upscale", str(src), "-o", str(tmp_path / "o"), "--model", str(ckpt), "--tile", "500"], capsys)
    assert code == 2 and "out of memory" in err and "Traceback" not in err.splitlines()[-1]
    assert err.splitlines()[-1].startswith("udvd: error: out of memory")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    code, _, err = run(["upscale", str(src), "-o", str(tmp_path / "o"), "--model", str(ckpt)], capsys)
    assert code == 2 and "MAX_IMAGE_PIXELS" in err and err.count("\n") == 1


def test_sigma_and_noise_maps(ckpt: Path, tmp_path: Path, capsys) -> None:
    src = small_image(tmp_path / "a.png", size=(13, 11))
    model = UDVD.from_pretrained(ckpt)
    img = np.asarray(Image.open(src))

    def upscaled(*flags: str) -> np.ndarray:
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}.png"
        code, _, err = run(["upscale", str(src), "-o", str(out), "--model", str(ckpt), "-q", *flags], capsys)
        assert code == 0, err
        return np.asarray(Image.open(out))

    np.save(tmp_path / "sigma.npy", np.full((4, 5), 1.5))
    Image.fromarray(np.full((6, 6), 51, np.uint8)).save(tmp_path / "sigma.png")  # 51 / 63.75 = 0.8 HR pixels
    Image.fromarray(np.full((3, 3), 20, np.uint8)).save(tmp_path / "noise8.png")  # level 20
    Image.fromarray(np.full((3, 3), 20 * 257, np.uint16)).save(tmp_path / "noise16.png")  # level 20 in 16 bits
    np.testing.assert_array_equal(upscaled("--sigma-map", str(tmp_path / "sigma.npy")),
                                  model.upscale(img, blur_sigma=1.5))
    np.testing.assert_array_equal(upscaled("--sigma-map", str(tmp_path / "sigma.png")),
                                  model.upscale(img, blur_sigma=0.8))
    expected = model.upscale(img, noise_level=20)
    np.testing.assert_array_equal(upscaled("--noise-map", str(tmp_path / "noise8.png")), expected)
    np.testing.assert_array_equal(upscaled("--noise-map", str(tmp_path / "noise16.png")), expected)
    np.testing.assert_array_equal(upscaled("--noise", "auto-map"), model.upscale(img, noise_level="auto-map"))


def test_progress_lines_when_not_on_a_terminal(ckpt: Path, tmp_path: Path, capsys) -> None:
    a, b = small_image(tmp_path / "a.png"), small_image(tmp_path / "b.png")
    code, _, err = run(["upscale", str(a), str(b), "-o", str(tmp_path / "o"), "--model", str(ckpt)], capsys)
    assert code == 0 and "udvd: [1/2] " in err and "udvd: [2/2] " in err and "a_x2.png" in err


def test_every_upscale_flag_has_help_with_its_default() -> None:
    import argparse

    from udvd_triton.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser = sub.choices["upscale"]
    assert parser.description and len(parser.description) > 100
    for action in parser._actions:
        if action.option_strings and action.dest not in ("help", "output"):
            assert action.help and "default" in action.help, action.dest


def test_every_subcommand_and_flag_is_documented() -> None:
    """Each sub-command has a description; each flag a help line, and a value flag names its default (or that it
    is required)."""
    import argparse

    from udvd_triton.cli import build_parser

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    problems = []
    for name, parser in subparsers.choices.items():
        if not parser.description:
            problems.append(f"{name}: no description")
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            flag = f"{name} {'/'.join(action.option_strings) or action.dest}"
            if not action.help:
                problems.append(f"{flag}: no help")
            elif action.option_strings and action.nargs != 0 and not action.required:
                if not any(word in action.help.lower() for word in ("default", "required")):
                    problems.append(f"{flag}: help does not give the default: {action.help!r}")
    assert not problems, "\n".join(problems)
