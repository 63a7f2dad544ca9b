"""Training loop (overfit, exact resume, fine-tune across scales, DDP under torchrun) and the eval command."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from udvd_triton import UDVD, multistage_l1_loss
from udvd_triton.degradation import imresize
from udvd_triton.cli import run_command
from udvd_triton.training.data import prepare_data
from udvd_triton.training.evaluate import degraded_input
from udvd_triton.training.synth import SynthConfig, synthesize
from udvd_triton.training.trainer import TrainConfig, train

TINY = ["--channels", "8", "--blocks", "1", "--batch", "4", "--patch", "12", "--quiet"]



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A prepared folder: crops of 48px from three smooth random photos, one 96px validation image."""
    root = tmp_path_factory.mktemp("train")
    (root / "photos").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        small = (rng.random((14, 14, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((120, 120), Image.BICUBIC).save(root / "photos" / f"p{i}.png")
    prepare_data(root / "photos", root / "prepared", crop=48, val_count=1, val_crop=96, progress=False)
    return root / "prepared"


def _state(run: Path) -> dict:
    return load_file(run / "final" / "model.safetensors")


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 6, 6, generator=g), size=32, mode="bilinear")
    batch = synthesize(smooth.permute(0, 2, 3, 1).mul(255).to(torch.uint8), SynthConfig(2, noise_range=(0, 0)), g)
    model = UDVD(2, n_feats=8, n_blocks=1)
    opt = torch.optim.Adam(model.parameters(), 2e-3)
    losses = []
    for _ in range(250):
        loss = multistage_l1_loss(model(batch.lr, batch.code_map, batch.noise_map), batch.hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-20:]) < losses[0] / 10


def test_resume_reproduces_the_uninterrupted_run_bit_exactly(data, tmp_path):
    common = ["--data", str(data), "--steps", "6", "--ema", "0.9", "--val-every", "3", "--log-every", "2", *TINY]
    assert run_command(["train", "--out", str(tmp_path / "a"), *common]) == 0
    # --max-minutes tiny: the run stops after its first step, with a checkpoint (and a final/ of that step).
    run_command(["train", "--out", str(tmp_path / "b"), *common, "--max-minutes", "1e-9"])
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["step"] == 1
    run_command(["train", "--out", str(tmp_path / "b"), *common, "--resume"])
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ca, cb = (torch.load(p / "checkpoint.pt", weights_only=False) for p in (tmp_path / "a", tmp_path / "b"))
    assert ca["step"] == cb["step"] == 6
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    rows_a, rows_b = (list(csv.DictReader(open(tmp_path / r / "log.csv"))) for r in ("a", "b"))
    assert [int(r["step"]) for r in rows_b] == [int(r["step"]) for r in rows_a] == [2, 3, 4, 6]
    for ra, rb in zip(rows_a, rows_b):  # timings differ, the numbers do not
        assert (ra["loss"], ra["lr"], ra["val_psnr"], ra["val_ssim"]) == (rb["loss"], rb["lr"], rb["val_psnr"], rb["val_ssim"])
    model = UDVD.from_pretrained(tmp_path / "b" / "final")
    assert model.config["n_feats"] == 8 and model.scale == 2


def test_finetune_x3_from_x2_loads_the_matching_tensors(data, tmp_path):
    src = UDVD(2, n_feats=8, n_blocks=1)
    src.save_pretrained(tmp_path / "x2")
    run_command(["finetune", "--from", str(tmp_path / "x2"), "--scale", "3", "--data", str(data), "--out", str(tmp_path / "ft"),
          "--steps", "1", "--val-every", "0", "--patch", "12", "--batch", "2", "--quiet"])
    report = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    s2, s3 = UDVD(2, 8, 1).state_dict(), UDVD(3, 8, 1).state_dict()
    assert set(report["reinitialised"]) == {k for k in s3 if k not in s2 or s2[k].shape != s3[k].shape}
    assert "body.0.conv.0.weight" in report["loaded"] and "upsample.feat_kernel.weight" in report["reinitialised"]
    assert UDVD.from_pretrained(tmp_path / "ft" / "final").scale == 3


def test_train_errors(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        train(TrainConfig(data=str(tmp_path), out=str(tmp_path / "r"), channels=8, blocks=1), progress=False)
    with pytest.raises(ValueError, match="does not fit"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "r"), patch=40, channels=8, blocks=1), progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "r")), resume=True)


def test_ddp_two_gloo_processes(data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(Path(__file__).parents[1] / "scripts" / "train.py"),
           "--data", str(data), "--out", str(tmp_path / "ddp"), "--steps", "3", "--val-every", "3", "--log-every", "1",
           "--device", "cpu", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "ddp" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]  # one writer: rank 0
    assert UDVD.from_pretrained(tmp_path / "ddp" / "final").config["n_blocks"] == 1


def _y(img):
    """MATLAB rgb2ycbcr luma of uint8 RGB, rounded to uint8 levels as MATLAB returns it for uint8 input."""
    img = img.astype(np.float64)
    return np.floor(16 + (65.481 * img[..., 0] + 128.553 * img[..., 1] + 24.966 * img[..., 2]) / 255 + 0.5)


def test_eval_table_and_json(tmp_path, capsys):
    import skimage.data

    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(skimage.data.chelsea()[100:160, 150:222]).save(images / "cat.png")
    Image.fromarray(skimage.data.coffee()[:50, :64]).save(images / "cup.png")
    UDVD(2, n_feats=8, n_blocks=1).save_pretrained(tmp_path / "m")
    run_command(["eval", "--model", str(tmp_path / "m"), "--images", str(images), "--sigma", "0.5", "1.5", "--noise", "0", "10",
          "--json", str(tmp_path / "r.json"), "--quiet"])
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| blur sigma | noise |") and len(table) == 2 + 4
    result = json.loads((tmp_path / "r.json").read_text())
    assert [(r["sigma"], r["noise"]) for r in result["results"]] == [(0.5, 0), (0.5, 10), (1.5, 0), (1.5, 10)]
    assert result["images"] == ["cat.png", "cup.png"]
    # Bicubic PSNR recomputed independently: Y (BT.601 studio), border 2, float64.
    row = result["results"][1]
    for i, (name, crop) in enumerate([("cat.png", (60, 72)), ("cup.png", (50, 64))]):
        hr = np.asarray(Image.open(images / name).convert("RGB"))[: crop[0], : crop[1]]
        rng = np.random.default_rng([0, i, 500, 10000])
        lr = degraded_input(hr, 2, 0.5, 10.0, rng)
        bic = np.clip(np.round(imresize(lr / 255.0, 2) * 255), 0, 255)
        err = (_y(bic) - _y(hr))[2:-2, 2:-2]
        ref = 10 * np.log10(255**2 / np.mean(err**2))
        assert row["per_image"][i]["bicubic_psnr"] == pytest.approx(ref, abs=1e-6)
    assert f"| 0.5 | 10 | {row['bicubic_psnr']:.2f} | {row['bicubic_ssim']:.4f} | {row['psnr']:.2f} |" in table[3]
