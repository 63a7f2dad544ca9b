"""A training run's folder: file names, the checkpoint a resume starts from, the log, the RNG state as JSON.

Layout (``TrainConfig.out``)::

    settings.json        the run's settings (rewritten when a resume changes one; config.json before 0.2)
    checkpoint.json      which checkpoint is the latest: {"checkpoint": "checkpoints/step-00005000", "step": 5000}
    checkpoints/step-00005000/
        tensors.safetensors (or tensors-0000i-of-0000n.safetensors + tensors.safetensors.index.json, <= 16 MiB
                         each): model.*, ema.* and optimizer.<param>.{step,exp_avg,exp_avg_sq}
        state.json       step, settings, schedule, model config, RNG states, data fingerprint, the log row in progress
    log.csv              step, loss, lr, elapsed_s, steps_per_s, val_psnr, val_ssim, val_bicubic_psnr
    finetune.json        (fine-tuning only) which tensors came from the source model and which were re-initialised
    final/               the exported model (``checkpoint.save_checkpoint``), loadable by ``UDVD.from_pretrained``

No pickle anywhere: tensors in safetensors, everything else JSON.
"""

from __future__ import annotations

import base64
import binascii
import csv
import fcntl
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from udvd_triton.checkpoint import CheckpointError, find_tensors, read_tensors
from udvd_triton.files import check_writable_folder, exists, write_text

SETTINGS = "settings.json"
LEGACY_SETTINGS = "config.json"  # the settings file's name in runs of udvd-triton <= 0.1
POINTER = "checkpoint.json"
CHECKPOINTS = "checkpoints"
STATE = "state.json"
TENSORS = "tensors"
LOG = "log.csv"
FINAL = "final"
FINETUNE = "finetune.json"
STATE_FORMAT = "udvd-train-state"
STATE_VERSION = 1
LOG_FIELDS = ("step", "loss", "lr", "elapsed_s", "steps_per_s", "val_psnr", "val_ssim", "val_bicubic_psnr")
LOCK = ".udvd-run.lock"  # held (flock) by the one process working in the run folder
CHECKPOINT_NAME = re.compile(r"^(step-\d{8}|\.step-\d{8}\.tmp-[0-9a-f]{8})$")


def settings_file(run_dir: Path) -> Path:
    """The run's settings file: ``settings.json``, or ``config.json`` in a run folder of udvd-triton <= 0.1."""
    legacy = run_dir / LEGACY_SETTINGS
    return legacy if legacy.is_file() and not (run_dir / SETTINGS).exists() else run_dir / SETTINGS


def rng_state(device: torch.device) -> dict[str, str | None]:
    def b64(t: torch.Tensor) -> str:
        return base64.b64encode(t.numpy().tobytes()).decode()

    cuda = b64(torch.cuda.get_rng_state(device)) if device.type == "cuda" else None
    return {"torch": b64(torch.get_rng_state()), "cuda": cuda}


def set_rng_state(state: dict[str, str | None], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved; CheckpointError when it is not such a state."""

    def tensor(text: object) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text, validate=True)), dtype=torch.uint8)  # type: ignore[arg-type]

    try:
        torch.set_rng_state(tensor(state["torch"]))
        if device.type == "cuda" and state.get("cuda"):
            torch.cuda.set_rng_state(tensor(state["cuda"]), device)
    except (KeyError, TypeError, ValueError, RuntimeError, binascii.Error) as e:
        raise CheckpointError(f"cannot resume: the checkpoint's random-number state is damaged ({type(e).__name__})") from None


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"cannot resume: {what} {path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"cannot resume: {what} {path} is empty, truncated or not JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"cannot resume: {what} {path} is not a JSON object")
    return data


def load_checkpoint(run_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The latest checkpoint of a run folder: (state.json contents, tensors on the CPU). Pickle-free.

    Raises FileNotFoundError when there is none, ``CheckpointError`` (a ValueError) when it is unreadable,
    truncated or of another format.
    """
    run_dir = Path(run_dir)
    pointer = run_dir / POINTER
    if not pointer.is_file():
        if (run_dir / "checkpoint.pt").exists():
            raise CheckpointError(
                f"cannot resume {run_dir}: it holds a checkpoint.pt of an older udvd-triton (pickle, which is never "
                "loaded: it can run code); start a new run"
            )
        hint = " (the run stopped before its first checkpoint)" if settings_file(run_dir).is_file() else ""
        raise FileNotFoundError(f"nothing to resume: {run_dir} has no {POINTER}{hint}")
    where = read_json(pointer, "checkpoint pointer")
    name = where.get("checkpoint")
    if not isinstance(name, str) or not CHECKPOINT_NAME.match(Path(name).name) or Path(name).parent != Path(CHECKPOINTS):
        raise CheckpointError(f"cannot resume: {pointer} does not name a checkpoint folder ({name!r})")
    folder = run_dir / name
    state = read_json(folder / STATE, "checkpoint state")
    if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
        raise CheckpointError(f"cannot resume: {folder / STATE} is not a {STATE_FORMAT} version {STATE_VERSION} file")
    weights = find_tensors(folder, TENSORS)
    if weights is None:
        raise CheckpointError(f"cannot resume: no {TENSORS}.safetensors (or its index) in {folder}")
    tensors, _ = read_tensors(weights)
    return state, tensors


def check_new_run_folder(run_dir: Path, source: str | None) -> None:
    """A new run writes only into a new or empty folder, never into (or under) the model it fine-tunes."""
    if source is not None and Path(source).expanduser().exists():
        src = Path(source).expanduser().resolve()
        src_dir = src if src.is_dir() else src.parent
        out = run_dir.expanduser().resolve()
        if out == src_dir or src_dir in out.parents:
            raise ValueError(
                f"--out {run_dir} is the source model's folder {src_dir} or inside it: the run would write over "
                "the model it fine-tunes; choose another --out"
            )
    if exists(run_dir):
        if not run_dir.is_dir():
            raise NotADirectoryError(f"--out {run_dir} exists and is not a folder")
        if (run_dir / POINTER).exists() or settings_file(run_dir).exists():
            raise FileExistsError(f"{run_dir} already holds a run: continue it with --resume or choose another --out")
        if any(p.name != LOCK for p in run_dir.iterdir()):
            raise FileExistsError(f"--out {run_dir} is not empty: a new run needs a new or empty folder")
    check_writable_folder(run_dir)


class CsvLog:
    """Rank 0's CSV log; on resume, rows after the checkpoint's step (written after it, then lost) are dropped."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        rows = []
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
        text = io.StringIO()
        writer = csv.DictWriter(text, LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        write_text(path, text.getvalue())  # atomically; new rows are appended
        self.file = open(path, "a", newline="")
        self.writer = csv.DictWriter(self.file, LOG_FIELDS)

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def tensorboard_writer(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


class RunFolderBusy(ValueError):
    """Another process holds the run folder's lock."""


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock (``flock`` on ``RUN/.udvd-run.lock``, created with the folder if needed) while the
    block runs: one process per run folder. The kernel releases it when the process ends, however it ends, so a
    crashed run leaves no stale lock. ``RunFolderBusy`` (one line, with the holder's pid) for a second process."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunFolderBusy(f"{run_dir} is in use by another udvd process (pid {holder}): one process per run "
                            "folder; wait for it to finish or stop it") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would let two processes lock two files)


def empty_unstarted(run_dir: Path, created: bool) -> bool:
    """After a new run failed before its first checkpoint: remove what it wrote (its settings, log, fine-tuning
    report, TensorBoard folder, unfinished checkpoint folders, lock), and the folder if this run created it and it is
    then empty. Files others put there are kept. Returns whether the folder is left reusable for a new run."""
    if (run_dir / POINTER).exists():
        return False
    for name in (SETTINGS, LOG, FINETUNE):
        with suppress(FileNotFoundError):
            (run_dir / name).unlink()
    shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    checkpoints = run_dir / CHECKPOINTS
    if checkpoints.is_dir():
        for entry in checkpoints.iterdir():
            if CHECKPOINT_NAME.match(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
        with suppress(OSError):
            checkpoints.rmdir()
    with suppress(FileNotFoundError):
        (run_dir / LOCK).unlink()
    if created:
        with suppress(OSError):
            run_dir.rmdir()
    return not exists(run_dir) or not any(run_dir.iterdir())
