"""Training loop (overfit, exact resume, fine-tune across scales, DDP under torchrun) and the eval command."""

import csv
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch.utils._python_dispatch import TorchDispatchMode

from udvd_triton import UDVD, multistage_l1_loss
from udvd_triton.cli import build_parser, main, run_command
from udvd_triton.degradation import imresize
from udvd_triton.evaluate import degraded_input
from udvd_triton.training.synth import SynthConfig, synthesize
from udvd_triton.training.trainer import Run, Schedule, TrainConfig, load_checkpoint, resume, train

from conftest import TRAIN_TINY, tiny_model

# On the CPU on every machine: these tests check the loop's logic bit for bit (resume, schedules), which a GPU's
# non-deterministic convolution gradients would blur; the CUDA path has its own GPU-marked test.
TINY = TRAIN_TINY


def _state(run: Path) -> dict:
    return load_file(run / "final" / "model.safetensors")


def _rows(run: Path) -> list[dict]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 6, 6, generator=g), size=32, mode="bilinear")
    batch = synthesize(smooth.permute(0, 2, 3, 1).mul(255).to(torch.uint8), SynthConfig(2, noise_range=(0, 0)), g)
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    losses = []
    for _ in range(250):
        loss = multistage_l1_loss(model(batch.lr, batch.code_map, batch.noise_map), batch.hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    # A fresh model starts as bicubic (losses[0] is bicubic's L1 over the 3 stages, ~0.105 on this blurred batch):
    # learning must take it well below that.
    assert min(losses[-20:]) < 0.7 * losses[0]


def test_resume_reproduces_the_uninterrupted_run_bit_exactly(data, tmp_path):
    common = ["--data", str(data), "--steps", "6", "--ema", "0.9", "--val-every", "3", "--log-every", "2",
              "--warmup", "0.3", *TINY]
    assert run_command(["train", "--out", str(tmp_path / "a"), *common]) == 0
    # --max-minutes tiny: the run stops at its first host check (step 2), with a checkpoint and a final/ of that step.
    run_command(["train", "--out", str(tmp_path / "b"), *common, "--max-minutes", "1e-9"])
    assert json.loads((tmp_path / "b" / "checkpoint.json").read_text())["step"] == 2
    # Resumed with no flag but --out: every setting (steps 6, not the default 100000) comes from the run folder.
    run_command(["train", "--out", str(tmp_path / "b"), "--resume", "--max-minutes", "60", "--quiet"])
    a, b = _state(tmp_path / "a"), _state(tmp_path / "b")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    (sa, ta), (sb, tb) = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert sa["step"] == sb["step"] == 6 and sa["settings"]["steps"] == 6
    assert ta.keys() == tb.keys() and {k.split(".")[0] for k in ta} == {"model", "ema", "optimizer"}
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    rows_a, rows_b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert [int(r["step"]) for r in rows_b] == [int(r["step"]) for r in rows_a] == [2, 3, 4, 6]
    for ra, rb in zip(rows_a, rows_b):  # timings differ, the numbers do not
        assert (ra["loss"], ra["lr"], ra["val_psnr"], ra["val_ssim"]) == (rb["loss"], rb["lr"], rb["val_psnr"], rb["val_ssim"])
    model = UDVD.from_pretrained(tmp_path / "b" / "final")
    assert model.config.channels == 8 and model.scale == 2


def test_the_device_step_reads_only_the_staged_inputs(data, tmp_path):
    """What ``--cuda-graph`` captures (``Run.device_step``) must take everything that changes between steps from what
    ``Run.stage`` put on the device: a run whose step counter is garbage while the device work runs trains exactly as
    the plain loop does."""
    def run(name: str) -> Run:
        cfg = TrainConfig(data=str(data), out=str(tmp_path / name), steps=5, ema=0.9, warmup=0.4, val_every=0,
                          batch=2, patch=8, channels=8, blocks=1, device="cpu")
        return Run.new(cfg, progress=False)

    plain, staged = run("plain"), run("staged")
    for step in range(4):
        plain.train_step()
        staged.stage(step)
        staged.step = 10**6 + step  # nothing the device work does may depend on it
        staged.device_step()
    a, b = plain._tensors(), staged._tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(plain.loss_sum, staged.loss_sum)


def test_cuda_graph_needs_one_cuda_process(data, tmp_path, capsys):
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--cuda-graph",
                 *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("udvd: error: --cuda-graph needs a CUDA device") and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_lr_follows_the_planned_curve_after_resume_and_after_an_extension(data, tmp_path):
    common = ["--data", str(data), "--steps", "20", "--log-every", "1", "--val-every", "0", "--warmup", "0.2",
              "--lr", "1e-3", "--lr-min", "1e-5", *TINY]
    run_command(["train", "--out", str(tmp_path / "full"), *common])
    run_command(["train", "--out", str(tmp_path / "cont"), *common, "--max-minutes", "1e-9", "--log-every", "5"])
    run_command(["train", "--out", str(tmp_path / "cont"), "--resume", "--max-minutes", "60", "--log-every", "1", "--quiet"])
    planned = Schedule.plan(1e-3, 1e-5, 0.2, 20)
    full = {int(r["step"]): float(r["lr"]) for r in _rows(tmp_path / "full")}
    assert full == {t: planned.lr_at(t - 1) for t in range(1, 21)}  # the LR of the update of step t - 1
    assert full[1] < full[2] < full[3] < full[4] > full[5] > full[6]  # 4 warm-up steps, then the cosine
    assert full[1] == pytest.approx(1e-3 / 4, rel=0.01) and 1e-5 < full[20] < 2e-5  # near lr_min at the end
    cont = {int(r["step"]): float(r["lr"]) for r in _rows(tmp_path / "cont")}
    assert cont == {5: full[5], **{t: full[t] for t in range(6, 21)}}  # continued exactly on the same curve

    # Extended: the finished 20-step run (LR ~1e-5) is re-planned for 60 steps.
    run_command(["train", "--out", str(tmp_path / "full"), "--resume", "--steps", "60", "--quiet"])
    ext = {int(r["step"]): float(r["lr"]) for r in _rows(tmp_path / "full")}
    assert {t: ext[t] for t in range(1, 21)} == full  # the log before the extension is kept
    ramp = round(0.2 * 60)
    for t in range(21 + ramp, 61):  # after the ramp: the cosine of a run planned for 60 steps
        assert ext[t] == pytest.approx(Schedule.plan(1e-3, 1e-5, 0.2, 60).lr_at(t - 1), rel=1e-12)
    rising = [ext[t] for t in range(20, 21 + ramp)]
    assert rising == sorted(rising) and rising[-1] > 0.4e-3  # back up from 1e-5, not stuck at the lowest LR
    assert json.loads((tmp_path / "full" / "settings.json").read_text())["steps"] == 60
    with pytest.raises(ValueError, match="already at step 60"):
        run_command(["train", "--out", str(tmp_path / "full"), "--resume", "--steps", "40", "--quiet"])


def test_resume_applies_safe_changes_with_a_note_and_refuses_the_others(data, tmp_path, capsys):
    common = ["--data", str(data), "--steps", "4", "--log-every", "2", "--val-every", "0", *TINY]
    run_command(["train", "--out", str(tmp_path / "r"), *common, "--max-minutes", "1e-9"])
    for change in (["--lr", "1e-3"], ["--batch", "2"], ["--seed", "1"], ["--no-augment"], ["--clean-fraction", "0"]):
        with pytest.raises(ValueError, match=f"keeps its settings.*{change[0]}"):
            run_command(["train", "--out", str(tmp_path / "r"), "--resume", *change, "--quiet"])
    # Equal values are no change; a moved data folder is fine, other crops are not.
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    run_command(["train", "--out", str(tmp_path / "r"), "--resume", "--data", str(moved), "--batch", "4",
                 "--max-minutes", "60", "--quiet"])
    out = capsys.readouterr().out
    assert f"--data {moved} replaces the run's {data}" in out and "--max-minutes 60.0 replaces the run's 1e-09" in out
    assert json.loads((tmp_path / "r" / "settings.json").read_text())["data"] == str(moved)
    other = tmp_path / "other"
    shutil.copytree(data, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="other crops than this run was trained on"):
        run_command(["train", "--out", str(tmp_path / "r"), "--resume", "--data", str(other), "--steps", "8", "--quiet"])


def test_a_run_folder_of_an_earlier_version_resumes(data, tmp_path):
    """Runs of udvd-triton <= 0.1 kept their settings in config.json and their model config as n_feats / n_blocks:
    they resume, and a changed setting is written back to their own config.json."""
    run = tmp_path / "old"
    run_command(["train", "--out", str(run), "--data", str(data), "--steps", "4", "--log-every", "2",
                 "--val-every", "0", *TINY, "--max-minutes", "1e-9"])
    (run / "settings.json").rename(run / "config.json")
    state_file = run / json.loads((run / "checkpoint.json").read_text())["checkpoint"] / "state.json"
    state = json.loads(state_file.read_text())
    config = state["model_config"]
    config["n_feats"], config["n_blocks"] = config.pop("channels"), config.pop("blocks")
    state_file.write_text(json.dumps(state))
    run_command(["train", "--out", str(run), "--resume", "--max-minutes", "60", "--quiet"])
    assert json.loads((run / "config.json").read_text())["max_minutes"] == 60 and not (run / "settings.json").exists()
    assert UDVD.from_pretrained(run / "final").config.channels == 8


def test_bad_or_missing_checkpoints_are_one_line_errors(data, tmp_path, capsys):
    run = tmp_path / "r"
    run_command(["train", "--data", str(data), "--out", str(run), "--steps", "2", "--val-every", "0", *TINY])
    pointer = json.loads((run / "checkpoint.json").read_text())
    tensors = run / pointer["checkpoint"] / "tensors.safetensors"
    intact = tensors.read_bytes()
    cases = [
        (lambda: tensors.write_bytes(intact[: len(intact) // 2]), "not a complete safetensors file"),
        (lambda: tensors.write_bytes(b""), "not a complete safetensors file"),
        (lambda: (run / pointer["checkpoint"] / "state.json").write_text('{"step": 2'), "truncated or not JSON"),
        (lambda: (run / "checkpoint.json").write_text(""), "empty, truncated or not JSON"),
        (lambda: (run / "checkpoint.json").write_text('{"checkpoint": "../../etc"}'), "does not name a checkpoint"),
        (lambda: (run / "checkpoint.json").unlink(), "nothing to resume"),
    ]
    for damage, message in cases:
        damage()
        assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("udvd: error: ") and message in err and err.count("\n") == 1, err
    # A pickled checkpoint of an older version is never loaded: unpickling it would run this payload.
    old = tmp_path / "old"
    old.mkdir()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"step": 1, "x": Payload()}, old / "checkpoint.pt")
    assert main(["train", "--out", str(old), "--resume"]) == 2
    assert "never loaded" in capsys.readouterr().err and not marker.exists()


def test_a_run_killed_while_checkpointing_resumes_from_the_previous_checkpoint(data, tmp_path, monkeypatch):
    from udvd_triton.training import trainer

    common = ["--data", str(data), "--steps", "6", "--log-every", "2", "--ckpt-every", "2", "--val-every", "0", *TINY]
    run_command(["train", "--out", str(tmp_path / "ref"), *common])
    calls = []
    real = trainer.write_json

    def dies_in_the_second_checkpoint(path, obj, **kw):
        calls.append(Path(path).name)
        if calls.count("state.json") == 2:
            raise KeyboardInterrupt  # killed after the tensors of step 4, before its state and the pointer
        return real(path, obj, **kw)

    monkeypatch.setattr(trainer, "write_json", dies_in_the_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_command(["train", "--out", str(tmp_path / "k"), *common])
    monkeypatch.setattr(trainer, "write_json", real)
    assert json.loads((tmp_path / "k" / "checkpoint.json").read_text())["step"] == 2
    run_command(["train", "--out", str(tmp_path / "k"), "--resume", "--quiet"])
    a, b = _state(tmp_path / "ref"), _state(tmp_path / "k")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in (tmp_path / "k" / "checkpoints").iterdir()) == ["step-00000006"]  # debris removed


def test_paper_size_training_checkpoint_is_sharded_under_16_mib(data, tmp_path):
    """Model + EMA + Adam state of the paper model (~74 MiB) in <= 16 MiB safetensors shards with an index."""
    run = tmp_path / "paper"
    run_command(["train", "--data", str(data), "--out", str(run), "--steps", "1", "--batch", "1", "--patch", "8",
                 "--val-every", "0", "--device", "cpu", "--quiet"])
    folder = run / json.loads((run / "checkpoint.json").read_text())["checkpoint"]
    shards = sorted(folder.glob("tensors-*.safetensors"))
    assert len(shards) >= 5 and all(p.stat().st_size <= 16 * 2**20 for p in shards)
    index = json.loads((folder / "tensors.safetensors.index.json").read_text())
    state, tensors = load_checkpoint(run)
    assert set(index["weight_map"]) == set(tensors)
    assert sum(t.numel() for k, t in tensors.items() if k.startswith("ema.")) == 4_835_999
    weights = sorted(p.name for p in (run / "final").iterdir())
    assert weights == ["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                       "model.safetensors.index.json"]
    assert UDVD.from_pretrained(run / "final").config.channels == 128


@pytest.mark.parametrize(("args", "message"), [
    (["--loss-weights", "nan", "1", "1"], "--loss-weights must be finite"),
    (["--loss-weights", "0", "0", "0"], "not all 0"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "-1"], "--lr must be a finite number in (0, inf)"),
    (["--lr-min", "1"], "--lr-min must be a finite number in [0, 0.0002)"),
    (["--warmup", "1"], "--warmup must be"),
    (["--ema", "1"], "--ema must be"),
    (["--grad-clip", "inf"], "--grad-clip must be"),
    (["--clean-fraction", "1.5"], "--clean-fraction must be"),
    (["--noise-max", "300"], "--noise-max must be"),
    (["--max-minutes", "0"], "--max-minutes must be"),
    (["--steps", "0"], "--steps must be a positive integer"),
    (["--log-every", "0"], "--log-every must be a positive integer"),
    (["--val-every", "-1"], "--val-every must be an integer >= 0"),
    (["--seed", "-3"], "--seed must be an integer >= 0"),
])
def test_bad_settings_are_refused_before_anything_runs(data, tmp_path, capsys, args, message):
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "r"), *args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("udvd: error: ") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_non_finite_loss_stops_the_run_and_writes_no_final(data, tmp_path, monkeypatch, capsys):
    from udvd_triton.training import trainer

    def poisoned(outputs, target, weights=None):  # the loss of step 4 onwards is NaN
        loss = multistage_l1_loss(outputs, target, weights)
        poisoned.calls += 1
        return loss * float("nan") if poisoned.calls >= 4 else loss

    poisoned.calls = 0
    monkeypatch.setattr(trainer, "multistage_l1_loss", poisoned)
    run = tmp_path / "r"
    assert main(["train", "--data", str(data), "--out", str(run), "--steps", "8", "--log-every", "2",
                 "--ckpt-every", "2", "--val-every", "0", *TINY]) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite between steps 2 and 4" in err and "last checkpoint (step 2) is kept" in err
    assert not (run / "final").exists() and json.loads((run / "checkpoint.json").read_text())["step"] == 2


def test_new_runs_never_write_into_a_model_or_a_used_folder(data, tmp_path):
    src = tmp_path / "model"
    tiny_model().save_pretrained(src)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    common = ["--data", str(data), "--steps", "1", "--val-every", "0", *TINY]
    for out in (src, src / "sub"):
        with pytest.raises(ValueError, match="source model's folder"):
            run_command(["finetune", "--from", str(src), "--out", str(out), *common])
    with pytest.raises(ValueError, match="source model's folder"):
        run_command(["finetune", "--from", str(src / "model.safetensors"), "--out", str(src), *common])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        run_command(["train", "--out", str(tmp_path / "busy"), *common])
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_every_train_finetune_eval_flag_has_help_with_its_default():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them only here
    for name in ("train", "finetune", "eval"):
        sub = commands[name]
        assert sub.description, name
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help and ("default" in action.help or "required" in action.help), (name, action.option_strings)


class _FailOnSync(TorchDispatchMode):
    """Fails on every op that makes the host wait for the device: reading a value back (``.item()``, ``bool()``),
    ``nonzero`` (its output size), device -> host copies."""

    SYNCING = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "equal", "allclose"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        assert name not in self.SYNCING, f"host-device sync in a training step: aten.{name}"
        if name in ("_to_copy", "copy_"):
            src = args[1] if name == "copy_" else args[0]
            dst = args[0].device if name == "copy_" else (kwargs or {}).get("device", src.device)
            assert not (src.device.type != "cpu" and torch.device(dst).type == "cpu"), f"device -> host copy: {name}"
        return func(*args, **(kwargs or {}))


@contextmanager
def _cuda_sync_errors():
    torch.cuda.set_sync_debug_mode("error")  # raises on any synchronising CUDA call
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def _sync_free_steps(data, tmp_path, device):
    cfg = TrainConfig(data=str(data), out=str(tmp_path / "r"), steps=100, batch=4, patch=12, channels=8, blocks=1,
                      clean_fraction=0.3, anisotropic=0.5, device=device)
    run = Run.new(cfg, progress=False)
    for _ in range(2):  # first steps fill caches (dihedral tables, the PCA basis on the device, cuDNN plans)
        run.train_step()
    with _FailOnSync(), (_cuda_sync_errors() if device == "cuda" else nullcontext()):
        for _ in range(12):  # 4 crops per step out of 3 x 4 + 2 crops: crosses epoch boundaries
            run.train_step()
    assert run.step == 14 and float(run.loss_sum) > 0


def test_training_step_never_waits_for_the_device(data, tmp_path):
    """Crop sampling, synthesis, forward, backward, clipping, Adam and EMA: no op that syncs (run on the CPU)."""
    _sync_free_steps(data, tmp_path, "cpu")


@pytest.mark.gpu
def test_training_step_never_syncs_on_cuda(data, tmp_path):
    _sync_free_steps(data, tmp_path, "cuda")


@pytest.mark.gpu
def test_cuda_graph_trains_like_the_eager_loop_on_cuda(data, tmp_path):
    """--cuda-graph: warm-up steps, capture, replays with the staged inputs; the run follows the eager one (cuDNN may
    pick other algorithms between runs: close, not bit-exact)."""
    def run(name: str, graph: bool) -> Run:
        cfg = TrainConfig(data=str(data), out=str(tmp_path / name), steps=8, ema=0.9, warmup=0.3, val_every=0,
                          batch=4, patch=12, channels=8, blocks=1, device="cuda", amp=False, cuda_graph=graph)
        return Run.new(cfg, progress=False)

    eager, graphed = run("eager", False), run("graph", True)
    for _ in range(8):
        eager.train_step()
        graphed.train_step()
    assert graphed.graph is not None
    a, b = eager._tensors(), graphed._tensors()
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=1e-3, atol=1e-5, msg=k)
    torch.testing.assert_close(eager.loss_sum, graphed.loss_sum, rtol=1e-4, atol=0)


@pytest.mark.parametrize("name, local_rank, world, index", [("auto", 0, 1, 0), ("cuda", 0, 1, 0), ("cuda:1", 0, 1, 1),
                                                            ("cuda", 3, 4, 3)])
def test_a_cuda_device_always_gets_an_index(monkeypatch, name, local_rank, world, index):
    """`udvd train` on a GPU failed at once: torch.cuda.set_device refuses a bare "cuda" (torch 2.11)."""
    from udvd_triton.training import trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert trainer._resolve_device(name, local_rank, world) == torch.device("cuda", index)


def test_no_pickle_loading_anywhere():
    root = Path(__file__).parents[1]
    needle = "weights_only=" + "False"  # spelled apart so that this file does not match itself
    hits = [str(p) for d in ("udvd_triton", "scripts", "tests") for p in (root / d).rglob("*.py") if needle in p.read_text()]
    assert hits == []
    assert "torch.load" not in (root / "udvd_triton" / "training" / "trainer.py").read_text()


def test_finetune_x3_from_x2_loads_the_matching_tensors(data, tmp_path):
    src = tiny_model()
    src.save_pretrained(tmp_path / "x2")
    run_command(["finetune", "--from", str(tmp_path / "x2"), "--scale", "3", "--data", str(data), "--out", str(tmp_path / "ft"),
          "--steps", "1", "--val-every", "0", "--patch", "12", "--batch", "2", "--quiet"])
    report = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    s2, s3 = tiny_model().state_dict(), tiny_model(scale=3).state_dict()
    changed = {k for k in s3 if k not in s2 or s2[k].shape != s3[k].shape}
    stage = lambda k: k.split(".")[0] if k.startswith("upsample.") else ".".join(k.split(".")[:2])  # noqa: E731
    # every dynamic stage holding a changed tensor starts fresh whole; head and body load
    assert set(report["reinitialised"]) == {k for k in s3 if k.startswith(("upsample.", "refine."))
                                            and stage(k) in {stage(c) for c in changed}}
    assert "body.0.conv.0.weight" in report["loaded"] and "upsample.feat_kernel.weight" in report["reinitialised"]
    assert UDVD.from_pretrained(tmp_path / "ft" / "final").scale == 3


def test_train_errors(data, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        train(TrainConfig(data=str(tmp_path / "nothing"), out=str(tmp_path / "r"), channels=8, blocks=1), progress=False)
    with pytest.raises(ValueError, match="does not fit"):
        train(TrainConfig(data=str(data), out=str(tmp_path / "r"), patch=40, channels=8, blocks=1), progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        resume(tmp_path / "r")
    with pytest.raises(ValueError, match="a new run needs --data"):
        run_command(["train", "--out", str(tmp_path / "r")])


def test_ddp_two_gloo_processes(data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(Path(__file__).parents[1] / "scripts" / "train.py"),
           "--data", str(data), "--out", str(tmp_path / "ddp"), "--steps", "3", "--val-every", "3", "--log-every", "1",
           "--device", "cpu", *TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _rows(tmp_path / "ddp")
    assert [int(r["step"]) for r in rows] == [1, 2, 3]  # one writer: rank 0
    assert UDVD.from_pretrained(tmp_path / "ddp" / "final").config.blocks == 1


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
    tiny_model().save_pretrained(tmp_path / "m")
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


def test_eval_blind_scores_the_model_told_nothing(tmp_path, capsys):
    """``udvd eval --blind``: the score of ``upscale`` with blur and noise estimated from the degraded input."""
    import skimage.data

    from udvd_triton.inference import upscale
    from udvd_triton.metrics import psnr

    images = tmp_path / "imgs"
    images.mkdir()
    hr = skimage.data.chelsea()[100:196, 150:246]
    Image.fromarray(hr).save(images / "cat.png")
    model = tiny_model()
    model.save_pretrained(tmp_path / "m")
    run_command(["eval", "--model", str(tmp_path / "m"), "--images", str(images), "--sigma", "1.5", "--noise", "10",
                 "--blind", "--json", str(tmp_path / "r.json"), "--quiet"])
    capsys.readouterr()
    result = json.loads((tmp_path / "r.json").read_text())
    lr = degraded_input(hr, 2, 1.5, 10.0, np.random.default_rng([0, 0, 1500, 10000]))
    assert result["blind"] is True
    assert result["results"][0]["per_image"][0]["psnr"] == pytest.approx(psnr(upscale(model, lr), hr, border=2), abs=1e-9)
    told = upscale(model, lr, blur_sigma=1.5, noise_level=10.0)
    assert result["results"][0]["psnr"] != pytest.approx(psnr(told, hr, border=2), abs=1e-9)


def test_eval_json_is_replaced_only_with_overwrite_and_only_if_ours(tmp_path):
    import skimage.data

    images = tmp_path / "imgs"
    images.mkdir()
    Image.fromarray(skimage.data.chelsea()[100:148, 150:198]).save(images / "cat.png")
    tiny_model().save_pretrained(tmp_path / "m")
    args = ["eval", "--model", str(tmp_path / "m"), "--images", str(images), "--sigma", "1", "--noise", "0", "--quiet"]
    result = tmp_path / "r.json"
    run_command([*args, "--json", str(result)])
    with pytest.raises(FileExistsError, match="use --overwrite"):
        run_command([*args, "--json", str(result)])
    run_command([*args, "--json", str(result), "--overwrite"])
    assert json.loads(result.read_text())["results"][0]["sigma"] == 1.0
    (tmp_path / "mine.json").write_text('{"my": "notes"}')
    with pytest.raises(FileExistsError, match="not a `udvd eval` result"):
        run_command([*args, "--json", str(tmp_path / "mine.json"), "--overwrite"])
    assert (tmp_path / "mine.json").read_text() == '{"my": "notes"}'


def test_finetune_reuses_a_dynamic_stage_whole_or_not_at_all():
    """x2 -> x3: the refine stages' kernel predictors fit in shape, but their feature aligners do not; mixing
    trained and fresh tensors would start them from noise instead of identity filtering."""
    from udvd_triton.training.trainer import transfer_weights

    torch.manual_seed(0)
    source = tiny_model()
    with torch.no_grad():
        for p in source.parameters():  # "trained": no tensor equals a fresh one
            p.add_(1.0)
    target = tiny_model(scale=3)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    loaded, reinit = transfer_weights(target, source.state_dict())
    assert loaded and all(k.split(".")[0] in ("head", "body", "kernel_basis") for k in loaded)
    assert "refine.0.feat_kernel.weight" in reinit and "upsample.image_conv.0.weight" in reinit
    state = target.state_dict()
    assert all(torch.equal(state[k], fresh[k]) for k in reinit)
    assert transfer_weights(tiny_model(), source.state_dict())[1] == []  # same scale: all of it
