"""The training loop: multi-stage L1, Adam, step LR schedule, EMA, checkpoints / exact resume, DDP, validation.

Run folder (``TrainConfig.out``)::

    checkpoint.pt   model, optimiser, scheduler, EMA, step, config, RNG states; replaced atomically
    log.csv         step, loss, lr, elapsed_s, steps_per_s, val_psnr, val_ssim, val_bicubic_psnr
    finetune.json   (fine-tuning only) which tensors came from the source model and which were re-initialised
    final/          ``save_pretrained`` output (EMA weights when EMA is on), loadable by ``UDVD.from_pretrained``

Randomness: the crops of step t on rank r and their degradations are drawn from generators seeded with
(seed, t, r) (``BatchSampler``, ``step_generator``), so a resumed run reproduces the uninterrupted one exactly
without carrying data-loader state; torch's global RNG state is saved and restored as well.

Distributed: under ``torchrun`` (WORLD_SIZE > 1) the process group is initialised from torchrun's environment
(nccl on CUDA, gloo on CPU), the model is wrapped in ``DistributedDataParallel``, each rank draws its own part of
the global batch, and only rank 0 validates and writes files.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from udvd_triton.degradation import pca_basis
from udvd_triton.model import UDVD, multistage_l1_loss
from udvd_triton.training.data import BatchSampler, CropDataset
from udvd_triton.training.evaluate import evaluate
from udvd_triton.training.synth import SIGMA_RANGES, SynthConfig, synthesize

CHECKPOINT = "checkpoint.pt"
LOG = "log.csv"
FINAL = "final"
LOG_FIELDS = ("step", "loss", "lr", "elapsed_s", "steps_per_s", "val_psnr", "val_ssim", "val_bicubic_psnr")
# Settings a resumed run may change; everything else is kept from the checkpoint.
RESUME_OVERRIDABLE = ("steps", "max_minutes", "device", "log_every", "val_every", "ckpt_every")
MODEL_DEFAULTS = {"scale": 2, "channels": 128, "blocks": 15, "variant": "UDD"}


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on. ``patch`` is the LR patch side (the HR crop is ``scale * patch``).

    scale / channels / blocks / variant: None takes the source model's value when fine-tuning, else
    ``MODEL_DEFAULTS``. lr_milestones: fractions of ``steps`` where the learning rate is multiplied by
    ``lr_gamma``. ema: decay of the weight EMA (0: off). grad_clip: max global gradient norm (0: off).
    loss_weights: per-stage weights of the multi-stage L1 (None: all 1). val_sigma: None = middle of the scale's
    training blur range. amp: bf16 autocast on CUDA (ignored elsewhere).
    """

    data: str
    out: str
    scale: int | None = None
    steps: int = 100_000
    batch: int = 16
    patch: int = 48
    channels: int | None = None
    blocks: int | None = None
    variant: str | None = None
    lr: float = 2e-4
    lr_milestones: tuple[float, ...] = (0.5, 0.75)
    lr_gamma: float = 0.5
    grad_clip: float = 1.0
    ema: float = 0.0
    loss_weights: tuple[float, ...] | None = None
    anisotropic: float = 0.0
    clean_fraction: float = 0.0
    noise_max: float = 75.0
    quantize: bool = True
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    val_every: int = 1000
    val_sigma: float | None = None
    val_noise: float = 15.0
    ckpt_every: int = 1000
    log_every: int = 50
    max_minutes: float | None = None
    finetune_from: str | None = None

    def check(self) -> None:
        """Raise ValueError naming the first bad setting."""
        positive = {"steps": self.steps, "batch": self.batch, "patch": self.patch, "lr": self.lr}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        for name in ("val_every", "ckpt_every", "log_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0: never), got {getattr(self, name)}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be a decay in [0, 1), got {self.ema}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0, got {self.grad_clip}")
        if any(not 0 < f <= 1 for f in self.lr_milestones):
            raise ValueError(f"lr_milestones are fractions of the steps in (0, 1], got {self.lr_milestones}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be positive, got {self.max_minutes}")


def step_generator(device: torch.device, seed: int, step: int, rank: int) -> torch.Generator:
    """The generator of the degradations of ``step`` on ``rank``: seeded from (seed, step, rank), on ``device``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(np.random.default_rng([seed, step, rank, 2]).integers(2**62)))
    return gen


def transfer_weights(model: torch.nn.Module, source: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy every tensor of ``source`` whose name and shape match into ``model``.

    Returns (loaded names, re-initialised names: the model's tensors that kept their fresh initialisation).
    """
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(matched, strict=False)
    return sorted(matched), sorted(k for k in own if k not in matched)


def _ema_avg_fn(decay: float) -> Any:
    """EMA update with warm-up: decay min(decay, (1 + n) / (10 + n)) after n updates, so that the average does
    not keep the random initial weights for thousands of steps in short runs."""

    def avg(averaged: torch.Tensor, current: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        d = torch.clamp((1 + n) / (10 + n), max=decay).to(averaged.dtype)
        return averaged + (current - averaged) * (1 - d)

    return avg


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def _resolve_device(name: str, local_rank: int, world: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda requested but CUDA is not available")
        if world > 1:  # one GPU per process, picked by torchrun's LOCAL_RANK
            device = torch.device("cuda", local_rank)
    return device


def _build_model(cfg: TrainConfig, resume: bool, log: Any) -> tuple[UDVD, dict[str, Any] | None]:
    """A fresh model for ``cfg`` (config fields resolved in place); when fine-tuning (and not resuming) filled with
    the source model's matching tensors. Returns the model and the fine-tune report."""
    source = UDVD.from_pretrained(cfg.finetune_from) if cfg.finetune_from else None
    src_cfg = source.config if source is not None else {}
    for field, key in (("scale", "scale"), ("channels", "n_feats"), ("blocks", "n_blocks"), ("variant", "variant")):
        if getattr(cfg, field) is None:
            setattr(cfg, field, src_cfg.get(key, MODEL_DEFAULTS[field]))
    kwargs = {k: v for k, v in src_cfg.items() if k not in ("scale", "n_feats", "n_blocks", "variant")}
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only
        torch.manual_seed(cfg.seed)
        model = UDVD(scale=cfg.scale, n_feats=cfg.channels, n_blocks=cfg.blocks, variant=cfg.variant, **kwargs)
    report = None
    if source is not None and not resume:
        loaded, reinit = transfer_weights(model, source.state_dict())
        report = {"source": cfg.finetune_from, "source_config": src_cfg, "loaded": loaded, "reinitialised": reinit}
        log(f"finetune: loaded {len(loaded)} of {len(loaded) + len(reinit)} tensors from {cfg.finetune_from}")
        if reinit:
            log(f"finetune: re-initialised (shape or name differs): {', '.join(reinit)}")
    # The synthesis encodes kernels with degradation.pca_basis(); a model trained with another basis would be fed
    # codes it cannot read.
    basis = torch.tensor(pca_basis()[: model.code_len], dtype=model.kernel_basis.dtype)
    if not torch.allclose(model.kernel_basis, basis, atol=1e-6):
        raise ValueError("the model's kernel_basis differs from degradation.pca_basis(): training it is not supported")
    return model, report


class _CsvLog:
    """Rank 0's CSV log; on resume, rows after the checkpoint's step (written after it, then lost) are dropped."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        rows = []
        if resume_step is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self.file = open(path, "w", newline="")
        self.writer = csv.DictWriter(self.file, LOG_FIELDS)
        self.writer.writeheader()
        self.writer.writerows(rows)
        self.file.flush()

    def write(self, row: dict[str, Any]) -> None:
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def train(config: TrainConfig, resume: bool = False, progress: bool = True) -> Path | None:
    """Train (or fine-tune, ``config.finetune_from``) a UDVD; see the module docstring for the run folder.

    ``resume``: continue from ``out/checkpoint.pt`` with the checkpoint's settings (except ``RESUME_OVERRIDABLE``).
    Returns the ``final`` folder on rank 0 (written when the run reaches ``steps`` or stops at ``max_minutes``),
    None on other ranks. Raises ValueError / FileNotFoundError / FileExistsError for bad settings or folders.
    """
    config.check()
    run_dir = Path(config.out)
    ckpt_path = run_dir / CHECKPOINT
    state: dict[str, Any] | None = None
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"nothing to resume: {ckpt_path} does not exist")
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        saved = TrainConfig(**state["config"])
        for name in RESUME_OVERRIDABLE:
            setattr(saved, name, getattr(config, name))
        config = saved
    elif ckpt_path.exists():
        raise FileExistsError(f"{run_dir} already holds a run ({CHECKPOINT}): use --resume or another --out")
    cfg = config

    rank, local_rank, world = _dist_env()
    own_group = world > 1 and not dist.is_initialized()
    device = _resolve_device(cfg.device, local_rank, world)
    if own_group:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    is_main = rank == 0

    def log(msg: str) -> None:
        if is_main:
            tqdm.write(msg)

    try:
        dataset = CropDataset(cfg.data)
        model, finetune_report = _build_model(cfg, resume, log)
        sampler = BatchSampler(dataset, cfg.batch, cfg.scale * cfg.patch, cfg.seed, rank, world)
        synth = SynthConfig(
            cfg.scale,
            anisotropic=cfg.anisotropic,
            clean_fraction=cfg.clean_fraction,
            noise_range=(0.0, cfg.noise_max),
            quantize=cfg.quantize,
            augment=cfg.augment,
        )
        val_images = dataset.val_images() if is_main and cfg.val_every else []
        val_sigma = cfg.val_sigma if cfg.val_sigma is not None else round(sum(SIGMA_RANGES[cfg.scale]) / 2, 3)
        n_stages = 1 + len(model.refine)
        weights = list(cfg.loss_weights) if cfg.loss_weights is not None else [1.0] * n_stages
        if len(weights) != n_stages:
            raise ValueError(f"got {len(weights)} loss weights for the {n_stages} stage outputs of variant {cfg.variant}")

        cuda = device.type == "cuda"
        memory_format = torch.channels_last if cuda else torch.contiguous_format
        model.to(device=device, memory_format=memory_format)
        net: torch.nn.Module = DistributedDataParallel(model, device_ids=[device] if cuda else None) if world > 1 else model
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        milestones = sorted({max(1, round(f * cfg.steps)) for f in cfg.lr_milestones})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=cfg.lr_gamma)
        ema = AveragedModel(model, avg_fn=_ema_avg_fn(cfg.ema)) if cfg.ema > 0 else None
        step, elapsed_before = 0, 0.0
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if ema is not None:
                ema.load_state_dict(state["ema"])
            torch.set_rng_state(state["rng"]["torch"])
            if cuda and state["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state(state["rng"]["cuda"], device)
            step, elapsed_before = state["step"], state["elapsed_s"]
            log(f"resumed {run_dir} at step {step}")

        if is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
            if finetune_report is not None:
                (run_dir / "finetune.json").write_text(json.dumps(finetune_report, indent=1))
        csv_log = _CsvLog(run_dir / LOG, step if state is not None else None) if is_main else None
        board = _tensorboard(run_dir) if is_main else None

        def save_checkpoint() -> None:
            if not is_main:
                return
            _atomic_torch_save(
                {
                    "step": step,
                    "config": dataclasses.asdict(cfg),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "rng": {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device) if cuda else None},
                    "elapsed_s": elapsed_before + time.monotonic() - t_start,
                    "log": {"loss_sum": loss_sum.item(), "since": step_log},  # the CSV row in progress
                },
                ckpt_path,
            )

        def validate() -> dict[str, float]:
            target = ema.module if ema is not None else model
            row = evaluate(target, val_images, [val_sigma], [cfg.val_noise], seed=cfg.seed)[0]
            return {"val_psnr": row["psnr"], "val_ssim": row["ssim"], "val_bicubic_psnr": row["bicubic_psnr"]}

        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.amp else nullcontext()
        t_start = time.monotonic()
        t_log, step_log, step_timed = t_start, step, step
        loss_sum = torch.zeros((), device=device)
        if state is not None:
            loss_sum.fill_(state["log"]["loss_sum"])
            step_log = state["log"]["since"]
        stopped_early = False
        postfix: dict[str, str] = {}
        bar = tqdm(total=cfg.steps, initial=step, unit="step", desc="train", disable=not (is_main and progress))
        model.train()
        with ThreadPoolExecutor(1) as pool:  # gathers the next batch's crops while this step runs
            pending = pool.submit(sampler.batch_at, step)
            while step < cfg.steps:
                crops = torch.from_numpy(pending.result())
                pending = pool.submit(sampler.batch_at, step + 1)
                if cuda:
                    crops = crops.pin_memory().to(device, non_blocking=True)
                batch = synthesize(crops, synth, step_generator(device, cfg.seed, step, rank))
                lr_img, code, noise, hr = (t.contiguous(memory_format=memory_format) for t in batch)
                with autocast:
                    outputs = net(lr_img, code, noise)
                loss = multistage_l1_loss(outputs, hr, weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                loss_sum += loss.detach()
                step += 1
                bar.update()

                row: dict[str, Any] = {}
                if cfg.log_every and (step % cfg.log_every == 0 or step == cfg.steps):
                    if world > 1:
                        dist.all_reduce(loss_sum)
                        loss_sum /= world
                    now = time.monotonic()
                    row = {
                        "step": step,
                        "loss": loss_sum.item() / (step - step_log),
                        "lr": optimizer.param_groups[0]["lr"],
                        "elapsed_s": round(elapsed_before + now - t_start, 3),
                        "steps_per_s": round((step - step_timed) / (now - t_log), 4),
                    }
                    postfix.update(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                    loss_sum.zero_()
                    t_log, step_log, step_timed = now, step, step
                if is_main and cfg.val_every and val_images and (step % cfg.val_every == 0 or step == cfg.steps):
                    row.update(validate(), step=step)
                    postfix["val_psnr"] = f"{row['val_psnr']:.2f}"
                if row and is_main:
                    bar.set_postfix(postfix)
                    csv_log.write(row)  # type: ignore[union-attr]
                    if board is not None:
                        for key, value in row.items():
                            if key != "step":
                                board.add_scalar(key, value, step)

                if cfg.max_minutes is not None:
                    over = torch.tensor(float(time.monotonic() - t_start > 60 * cfg.max_minutes), device=device)
                    if world > 1:
                        dist.broadcast(over, 0)  # rank 0's clock decides, so all ranks stop at the same step
                    stopped_early = bool(over.item()) and step < cfg.steps
                if stopped_early or step == cfg.steps or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
                    save_checkpoint()
                if stopped_early:
                    log(f"stopped at step {step} of {cfg.steps} after --max-minutes {cfg.max_minutes}; continue with --resume")
                    break
            pending.cancel()
        bar.close()
        if csv_log is not None:
            csv_log.close()
        if board is not None:
            board.close()
        if not is_main:
            return None
        final = run_dir / FINAL
        tmp = run_dir / (FINAL + ".tmp")
        # Export from a fresh float32 CPU model: contiguous tensors whatever the training device and memory format.
        trained = ema.module if ema is not None else model
        export = UDVD(**trained.config)
        export.load_state_dict({k: v.detach().float().cpu() for k, v in trained.state_dict().items()})
        export.save_pretrained(tmp)
        if final.exists():
            for f in final.iterdir():
                f.unlink()
            final.rmdir()
        os.replace(tmp, final)
        log(f"saved {final} (step {step}{', EMA weights' if ema is not None else ''})")
        return final
    finally:
        if own_group:
            dist.barrier()
            dist.destroy_process_group()
