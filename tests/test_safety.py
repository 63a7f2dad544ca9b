"""What the package promises about files and inputs, probed as an adversary would: outputs that appear while we
work are kept, one process per run folder, nothing absurd accepted, metadata kept, every mistake one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from udvd_triton import UDVD, files, imageio
from udvd_triton.cli import main
from udvd_triton.hub import load_pretrained
from udvd_triton.inference import upscale
from udvd_triton.model import ModelConfig, UDVDNet
from udvd_triton.registry import load_registry

from conftest import TRAIN_TINY, registry_entry, tiny_model, write_registry

UDVD_BIN = [sys.executable, "-m", "udvd_triton.cli"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ckpt")
    tiny_model().save_pretrained(path)
    return path


def photo(path: Path, size=(24, 20), **save) -> Path:
    arr = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, **save)
    return path


def one_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("udvd: error: ") and err.count("\n") == 1, (code, err)
    return err


def cpu(argv: list[str]) -> list[str]:
    return [*argv, "--device", "cpu"]


# ---------------------------------------------------------------------------------------------- data loss


def test_an_output_that_appears_while_computing_is_kept(ckpt, tmp_path, capsys, monkeypatch):
    src, dst = photo(tmp_path / "a.png"), tmp_path / "a_x2.png"
    real = UDVD.upscale

    def someone_writes_meanwhile(self, *args, **kwargs):  # another program creates the output during the compute
        dst.write_bytes(b"theirs")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(UDVD, "upscale", someone_writes_meanwhile)
    err = one_error(capsys, cpu(["upscale", str(src), "-o", str(dst), "--model", str(ckpt)]))
    assert "appeared" in err and dst.read_bytes() == b"theirs"
    err = one_error(capsys, cpu(["upscale", str(src), "-o", str(dst), "--model", str(ckpt), "--overwrite"]))
    assert "not written by udvd-triton" in err and dst.read_bytes() == b"theirs"  # refused at planning
    dst.unlink()
    err = one_error(capsys, cpu(["upscale", str(src), "-o", str(dst), "--model", str(ckpt), "--overwrite"]))
    assert "appeared" in err and dst.read_bytes() == b"theirs"  # appeared meanwhile, not ours: kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "a_x2.png"]  # no temporary file left


def test_two_concurrent_runs_to_one_output_write_it_once(ckpt, tmp_path):
    """Real processes: exactly one writes the output, the other says why it did not (before the fix both said
    'wrote' when they overlapped)."""
    src, dst = photo(tmp_path / "big.png", size=(400, 300)), tmp_path / "out.png"
    cmd = [*UDVD_BIN, "upscale", str(src), "-o", str(dst), "--model", str(ckpt), "--device", "cpu"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    assert sorted(code for code, _, _ in results) == [0, 2], results
    loser = next(err for code, _, err in results if code == 2)
    assert loser.startswith("udvd: error: ") and ("appeared" in loser or "exists" in loser), loser
    assert imageio.is_ours(dst) and sorted(p.name for p in tmp_path.iterdir()) == ["big.png", "out.png"]


def test_one_process_per_run_folder(data, tmp_path):
    """Real processes: a second `udvd train` on a running run's folder (new or --resume) is refused with one line
    while the first runs; after the first is killed (SIGKILL: no clean-up at all) the lock is free again."""
    run = tmp_path / "run"
    first = subprocess.Popen([*UDVD_BIN, "train", "--data", str(data), "--out", str(run), "--steps", "100000",
                              "--ckpt-every", "4", "--log-every", "4", "--val-every", "0", "--max-minutes", "2",
                              *TRAIN_TINY], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (run / "checkpoint.json").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        for argv in (["train", "--out", str(run), "--resume"],
                     ["train", "--data", str(data), "--out", str(run), *TRAIN_TINY]):
            res = subprocess.run([*UDVD_BIN, *argv], capture_output=True, text=True, timeout=60)
            assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
            assert "in use by another udvd process" in res.stderr or "already holds a run" in res.stderr
        assert first.poll() is None  # the first run was not taken over
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    res = subprocess.run([*UDVD_BIN, "train", "--out", str(run), "--resume", "--max-minutes", "0.0001", "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_sigterm_leaves_no_temporary_file_and_hidden_files_are_never_inputs(ckpt, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    photo(folder / "a.png", size=(64, 48))
    (folder / ".a.png.0123abcd.tmp.png").write_bytes(b"truncated")  # an interrupted writer's leftover
    out = tmp_path / "out"
    res = subprocess.run([*UDVD_BIN, "upscale", str(folder), "-o", str(out), "--model", str(ckpt), "--device", "cpu",
                          "-q"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and sorted(p.name for p in out.iterdir()) == ["a_x2.png"], res.stderr
    # SIGTERM in the middle of a write: the temporary file is removed as on Ctrl-C
    files.exit_on_sigterm()
    try:
        with pytest.raises(SystemExit) as exit_info, files.atomic_output(tmp_path / "x.png") as tmp:
            tmp.write_bytes(b"partial")
            os.kill(os.getpid(), signal.SIGTERM)
        assert exit_info.value.code == 143
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    assert not list(tmp_path.glob(".x.png.*")) and not (tmp_path / "x.png").exists()


def test_a_run_that_fails_before_its_first_checkpoint_leaves_a_reusable_folder(data, tmp_path, capsys, monkeypatch):
    from udvd_triton.training import trainer

    monkeypatch.setattr(trainer, "multistage_l1_loss", lambda outputs, target, weights=None: outputs[-1].sum() * np.nan)
    run = tmp_path / "r"
    err = one_error(capsys, ["train", "--data", str(data), "--out", str(run), "--steps", "4", "--log-every", "2",
                             "--val-every", "0", *TRAIN_TINY])
    assert "NaN" in err and "ready for a new run" in err and not run.exists()
    run.mkdir()
    one_error(capsys, ["train", "--data", str(data), "--out", str(run), "--steps", "4", "--log-every", "2",
                       "--val-every", "0", *TRAIN_TINY])
    assert run.is_dir() and list(run.iterdir()) == []  # the user's (empty) folder stays, emptied of ours
    monkeypatch.undo()
    assert main(["train", "--data", str(data), "--out", str(run), "--steps", "2", "--val-every", "0", *TRAIN_TINY]) == 0


# ---------------------------------------------------------------------------------------------- silent wrong results


def test_config_values_are_bounded_and_non_finite_outputs_are_errors(ckpt, tmp_path, capsys):
    for bad in ({"res_scale": float("nan")}, {"res_scale": 1e30}, {"blocks": 10**5}, {"blocks": 10**7},
                {"channels": 10**9}, {"image_channels": -5}, {"kernel_size": 1000001}, {"res_scale": "abc"},
                {"res_scale": None}, {"scale": True}):
        start = time.monotonic()
        with pytest.raises(ValueError, match=f"UDVD {next(iter(bad))}"):
            UDVD(**bad)
        assert time.monotonic() - start < 1
    config = json.loads((ckpt / "config.json").read_text())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((ckpt / "model.safetensors").read_bytes())
    (broken / "config.json").write_text(json.dumps({**config, "res_scale": 1e30}))
    assert "invalid config" in one_error(capsys, cpu(["upscale", str(photo(tmp_path / "a.png")), "-o",
                                                      str(tmp_path / "o.png"), "--model", str(broken)]))
    huge = tiny_model()
    with torch.no_grad():
        huge.head.weight.fill_(1e30)  # finite weights whose output overflows
    with pytest.raises(ValueError, match="NaN or infinite"):
        upscale(huge, np.zeros((8, 8, 3), np.uint8))


def test_a_corrupted_shard_is_refused(data, tmp_path, capsys):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    shard = sorted(copy.glob("shard-*.npy"))[0]
    raw = bytearray(shard.read_bytes())
    raw[-100] ^= 0xFF  # one flipped byte in the pixels, same size
    shard.write_bytes(bytes(raw))
    err = one_error(capsys, ["train", "--data", str(copy), "--out", str(tmp_path / "r"), *TRAIN_TINY])
    assert "does not match its sha256" in err and shard.name in err


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_colour_profile_and_resolution_are_kept(ckpt, tmp_path, capsys, suffix):
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()  # any profile that is not sRGB
    save = dict(icc_profile=profile, dpi=(150, 150))
    if suffix == ".tif":
        save = dict(tiffinfo={34675: profile}, dpi=(150, 150))
    src = photo(tmp_path / f"a{suffix}", **save)
    assert main(cpu(["upscale", str(src), "-o", str(tmp_path / "out"), "--model", str(ckpt), "-q"])) == 0
    (out,) = (tmp_path / "out").iterdir()
    _, info = imageio.read_image(out)
    assert info.icc == profile
    assert info.dpi == pytest.approx((300, 300), rel=1e-3)  # the same print size at twice the pixels (PNG: px/m)


# ---------------------------------------------------------------------------------------------- one line, at once


def test_absurd_settings_and_inputs_are_one_line_errors(ckpt, data, tmp_path, capsys):
    src = photo(tmp_path / "a.png")
    start = time.monotonic()
    one_error(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "r"), *TRAIN_TINY, "--blocks", "10000000"])
    assert time.monotonic() - start < 2
    for device in ("meta", "mps"):
        assert "not supported" in one_error(capsys, ["upscale", str(src), "-o", str(tmp_path / "o.png"),
                                                     "--model", str(ckpt), "--device", device])
        assert "not supported" in one_error(capsys, ["train", "--data", str(data), "--out", str(tmp_path / "r"),
                                                     *TRAIN_TINY, "--device", device])
    empty, text, fifo = tmp_path / "empty.npy", tmp_path / "text.npy", tmp_path / "fifo.png"
    empty.write_bytes(b"")
    text.write_text("0.5 0.5\n")
    os.mkfifo(fifo)
    base = cpu(["upscale", str(src), "-o", str(tmp_path / "o.png"), "--model", str(ckpt)])
    assert "not a .npy array file" in one_error(capsys, [*base, "--sigma-map", str(empty)])
    assert "pickled" not in one_error(capsys, [*base, "--sigma-map", str(text)])
    assert "not a regular file" in one_error(capsys, [*base, "--sigma-map", str(tmp_path)])
    assert "not a regular file" in one_error(capsys, cpu(["upscale", str(fifo), "-o", str(tmp_path / "o.png"),
                                                          "--model", str(ckpt)]))
    assert "blur_sigma must be finite" in one_error(capsys, [*base, "--sigma", "inf"])
    with pytest.raises(ValueError, match=r"floating point \(float16, bfloat16, float32 or float64\)"):
        upscale(tiny_model(), torch.zeros(3, 8, 8, dtype=torch.float8_e4m3fn))
    little = np.random.default_rng(0).random((6, 7, 3)).astype(np.float32)
    big_endian = little.astype(">f4")
    np.testing.assert_array_equal(upscale(tiny_model(), big_endian), upscale(tiny_model(), little))


def test_broken_run_and_data_files_are_one_line_errors(data, tmp_path, capsys):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "shards"}))
    assert "incomplete" in one_error(capsys, ["train", "--data", str(copy), "--out", str(tmp_path / "r1"), *TRAIN_TINY])
    (copy / "manifest.json").write_text(json.dumps(manifest))
    shard = sorted(copy.glob("shard-*.npy"))[0]
    shard.write_bytes(shard.read_bytes()[:-1000])  # truncated
    err = one_error(capsys, ["train", "--data", str(copy), "--out", str(tmp_path / "r2"), *TRAIN_TINY])
    assert shard.name in err and "mmap length" not in err
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--steps", "2", "--val-every", "0", *TRAIN_TINY]) == 0
    state_file = run / json.loads((run / "checkpoint.json").read_text())["checkpoint"] / "state.json"
    state = json.loads(state_file.read_text())
    state["rng"]["torch"] = 12345
    state_file.write_text(json.dumps(state))
    assert "random-number state" in one_error(capsys, ["train", "--out", str(run), "--resume", "--steps", "4"])


def test_registry_depth_and_json_true_scale_are_refused(ckpt, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="not valid JSON"):
        load_registry(deep)
    entry = registry_entry("m", ckpt / "model.safetensors", scale=True)
    with pytest.raises(ValueError, match="'scale' must be a int"):
        load_registry(write_registry(ckpt / "registry.json", [entry]))


def test_messages_are_plain_and_quiet_is_quiet(ckpt, data, tmp_path, capsys, monkeypatch):
    src = photo(tmp_path / "a.png", size=(40, 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1200 px: over PIL's warning limit, under its error one
    assert main(cpu(["upscale", str(src), "-o", str(tmp_path / "q.png"), "--model", str(ckpt), "-q"])) == 0
    assert capsys.readouterr().err == ""  # neither PIL's bomb warning nor torch's read-only-array warning
    monkeypatch.undo()

    def full(fd: int) -> None:
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(os, "fsync", full)
    err = one_error(capsys, cpu(["upscale", str(src), "-o", str(tmp_path / "f.png"), "--model", str(ckpt)]))
    assert "[Errno" not in err and "No space left on device" in err
    monkeypatch.undo()
    photos = tmp_path / "photos"
    photos.mkdir()
    photo(photos / "p.png", size=(100, 100))
    photo(photos / "tiny.png", size=(10, 10))
    assert main(["prepare-data", str(photos), str(tmp_path / "prep"), "--crop", "32", "--val", "0"]) == 0
    err = capsys.readouterr().err
    assert "udvd: note: skipping tiny.png" in err and "UserWarning" not in err
    assert "--lr must be a finite number in (0, inf)" in one_error(capsys, ["train", "--data", str(data), "--out",
                                                                          str(tmp_path / "r"), "--lr", "inf"])
    monkeypatch.chdir(data.parent)
    run = tmp_path / "rel"
    assert main(["train", "--data", data.name, "--out", str(run), "--steps", "2", "--val-every", "0", *TRAIN_TINY]) == 0
    assert json.loads((run / "settings.json").read_text())["data"] == str(data.resolve())


def test_model_config_bounds_hold_for_loading(ckpt):
    """The network itself refuses absurd configs before building anything (the loader relies on it)."""
    with pytest.raises(ValueError):
        UDVDNet(ModelConfig(channels=8, blocks=1), blocks=2)
    assert load_pretrained(UDVDNet, ckpt).config.channels == 8
