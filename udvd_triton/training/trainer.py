"""The training loop: multi-stage L1, Adam, a cosine LR schedule with warm-up, EMA, checkpoints / exact resume, DDP.

Run folder: :mod:`udvd_triton.training.run_folder`. A checkpoint is written into a temporary folder,
renamed into place, and only then does ``checkpoint.json`` (replaced atomically) point at it, so a run killed while
writing resumes from the previous checkpoint.

Sync-free steps: a training step (crop gather, synthesis, forward, backward, clipping, Adam, EMA) never waits for
the device; the loss is summed and checked for NaN/inf on the device. The host reads them back only every
``log_every`` steps (and at validation / checkpoints), where it also checks the time budget.

Randomness: the crops of step t on rank r and their degradations are drawn from generators seeded with
(seed, t, r) (``BatchSampler``, ``seed_for``), so a resumed run reproduces the uninterrupted one exactly without
carrying data-loader state; torch's global RNG states are saved and restored as well.

Schedule: fixed by the run's total step count (``Schedule``), stored in every checkpoint, so a resume continues the
same curve; a resume with another ``steps`` re-plans the rest explicitly (``Schedule.replan``).

Distributed: under ``torchrun`` (WORLD_SIZE > 1) the process group is initialised from torchrun's environment
(nccl on CUDA, gloo on CPU), the model is wrapped in ``DistributedDataParallel``, each rank draws its own part of
the global batch, and only rank 0 validates and writes files.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import secrets
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from udvd_triton.checkpoint import CheckpointError, save_checkpoint, save_tensors
from udvd_triton.degradation import SIGMA_RANGES, pca_basis
from udvd_triton.devices import parse_device
from udvd_triton.evaluate import evaluate, model_upscaler
from udvd_triton.files import exists, write_json
from udvd_triton.hub import load_pretrained
from udvd_triton.model import ModelConfig, UDVDNet, multistage_l1_loss
from udvd_triton.training.config import MODEL_FIELDS, RESUME_CHANGEABLE, TrainConfig, flag
from udvd_triton.training.data import BatchSampler, CropDataset
from udvd_triton.training.run_folder import (
    CHECKPOINT_NAME,
    CHECKPOINTS,
    FINAL,
    FINETUNE,
    LOG,
    POINTER,
    STATE,
    STATE_FORMAT,
    STATE_VERSION,
    TENSORS,
    CsvLog,
    check_new_run_folder,
    empty_unstarted,
    load_checkpoint,
    locked,
    rng_state,
    set_rng_state,
    settings_file,
    tensorboard_writer,
)
from udvd_triton.training.schedule import Schedule
from udvd_triton.training.synth import SynthConfig, synthesize


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite: the run was stopped without saving anything after its last checkpoint."""


def seed_for(seed: int, step: int, rank: int, stream: int) -> int:
    """The seed of random stream ``stream`` (1: crops, 2: degradations) of ``step`` on ``rank``."""
    return int(np.random.default_rng([seed, step, rank, stream]).integers(2**62))


def transfer_weights(model: torch.nn.Module, source: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
    """Copy every tensor of ``source`` whose name and shape match into ``model``; a dynamic stage (``upsample``,
    ``refine.i``) only whole.

    A fresh stage starts as bicubic / identity filtering; trained tensors mixed with fresh ones (an x2 stage's
    kernel predictor fed by a new x3 feature aligner) instead start from noise, which cost an x3 fine-tune 4 dB
    below bicubic after 500 steps. Returns (loaded names, re-initialised names: the model's tensors that kept
    their fresh initialisation).
    """
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and own[k].shape == v.shape}
    incomplete = {_stage(k) for k in own if k not in matched} - {None}
    matched = {k: v for k, v in matched.items() if _stage(k) not in incomplete}
    model.load_state_dict(matched, strict=False)
    return sorted(matched), sorted(k for k in own if k not in matched)


def _stage(name: str) -> str | None:
    """The dynamic stage a state-dict entry belongs to ("upsample", "refine.0", ...), else None."""
    parts = name.split(".")
    if parts[0] == "upsample":
        return "upsample"
    return ".".join(parts[:2]) if parts[0] == "refine" else None


def ema_decay(decay: float, updates: int) -> float:
    """EMA decay after ``updates`` earlier updates: min(decay, (1 + n) / (10 + n)), so that short runs do not keep
    averaging in the random initial weights."""
    return min(decay, (1 + updates) / (10 + updates))


def data_fingerprint(dataset: CropDataset) -> str:
    """sha256 over the shards' checksums: the same crops give the same fingerprint wherever the folder lies."""
    shards = [s["sha256"] for s in dataset.manifest["shards"]]
    return hashlib.sha256(json.dumps(shards).encode()).hexdigest()




GRAPH_WARMUP = 3  # eager steps before a --cuda-graph run captures its step


def _check_graph_support(device: torch.device, world: int, compiled: bool) -> None:
    """Raise ValueError naming what ``--cuda-graph`` cannot run with."""
    if device.type != "cuda":
        raise ValueError(f"--cuda-graph needs a CUDA device, got --device {device}")
    if world > 1:
        raise ValueError("--cuda-graph runs one process (DistributedDataParallel's communication is not captured)")
    if compiled:
        raise ValueError("--cuda-graph and --compile exclude each other (torch.compile has its own CUDA graphs)")
    if not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        raise ValueError(f"--cuda-graph: torch {torch.__version__} cannot capture the training's own random generators "
                         "(torch.cuda.CUDAGraph.register_generator_state)")


def _dist_env() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def _resolve_device(name: str, local_rank: int, world: int) -> torch.device:
    device = parse_device(name, "--device")
    if device.type == "cuda":
        # Always with an index: torch.cuda.set_device refuses a bare "cuda" (torch 2.11). Several processes: one GPU
        # each, picked by torchrun's LOCAL_RANK.
        index = local_rank if world > 1 else device.index if device.index is not None else torch.cuda.current_device()
        device = torch.device("cuda", index)
    return device


class Run:
    """One training run, built and ready to step: ``train_step`` (no host sync) and ``fit`` (the loop with logging,
    validation, checkpoints and the final export). ``new`` / ``resumed`` build it; nothing is written until ``fit``.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        schedule: Schedule,
        state: dict[str, Any] | None = None,
        tensors: dict[str, torch.Tensor] | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg, self.schedule, self.progress = cfg, schedule, progress
        self.run_dir = Path(cfg.out)
        self.rank, local_rank, self.world = _dist_env()
        self.device = _resolve_device(cfg.device, local_rank, self.world)
        self.own_group = self.world > 1 and not dist.is_initialized()
        if self.own_group:
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.is_main = self.rank == 0
        cuda = self.device.type == "cuda"

        self.dataset = CropDataset(cfg.data)
        self.data_id = data_fingerprint(self.dataset)
        if state is not None and state["data"] != self.data_id:
            raise ValueError(
                f"--data {cfg.data} holds other crops than this run was trained on (the shards' checksums differ); "
                "a resumed run keeps its data"
            )
        self.dataset.verify()  # every run start reads the crops once anyway (to the device): check what it reads
        self.model, self.finetune_report = self._build_model(state)
        self.sampler = BatchSampler(
            self.dataset, cfg.batch, cfg.scale * cfg.patch, cfg.seed, self.rank, self.world, self.device  # type: ignore[operator]
        )
        self.synth = SynthConfig(
            cfg.scale,  # type: ignore[arg-type]
            anisotropic=cfg.anisotropic,
            clean_fraction=cfg.clean_fraction,
            noise_range=(0.0, cfg.noise_max),
            quantize=cfg.quantize,
            augment=cfg.augment,
        )
        n_stages = 1 + len(self.model.refine)
        self.weights = list(cfg.loss_weights) if cfg.loss_weights is not None else [1.0] * n_stages
        if len(self.weights) != n_stages:
            raise ValueError(
                f"got {len(self.weights)} loss weights for the {n_stages} stage outputs of variant {cfg.variant}"
            )
        # channels_last and bf16 autocast are what tensor cores want; the CPU kernels prefer plain NCHW float32.
        self.memory_format = torch.channels_last if cuda else torch.contiguous_format
        self.model.to(device=self.device, memory_format=self.memory_format)
        self.params = list(self.model.parameters())
        net: torch.nn.Module = self.model
        if self.world > 1:
            net = DistributedDataParallel(self.model, device_ids=[self.device] if cuda else None)
        self.net = torch.compile(net) if cfg.compile else net
        if cfg.cuda_graph:
            _check_graph_support(self.device, self.world, cfg.compile)
        # fused: one kernel for all parameters, and its step counters stay on the device (no host round trip). A
        # captured step reads the LR from a device tensor (a float would be frozen into the graph).
        lr = torch.tensor(schedule.lr_at(0), device=self.device) if cfg.cuda_graph else schedule.lr_at(0)
        self.optimizer = torch.optim.Adam(self.params, lr=lr, fused=True, capturable=cfg.cuda_graph)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False) if cfg.ema > 0 else None
        self.ema_params = list(self.ema_model.parameters()) if self.ema_model is not None else []
        # no cast cache: a CUDA graph must not keep casts of one replay's weights for the next (and each weight is
        # cast once per forward anyway)
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if cuda and cfg.amp
                         else nullcontext())
        self.generator = torch.Generator(device=self.device)
        # The host's inputs of a step, staged in fixed device tensors that the device work reads (train_step)
        self.indices = torch.zeros(cfg.batch, dtype=torch.int64, device=self.device)
        self.ema_weight = torch.zeros((), device=self.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_steps = 0

        self.step, self.elapsed_before, self.log_since = 0, 0.0, 0
        self.loss_sum = torch.zeros((), device=self.device)
        self.non_finite = torch.zeros((), dtype=torch.bool, device=self.device)
        if state is not None:
            assert tensors is not None
            self._restore(state, tensors)

    @classmethod
    def new(cls, config: TrainConfig, progress: bool = True) -> Run:
        """A fresh run of ``config`` (which is checked; ``data`` is stored resolved, so the run resumes from any
        working folder)."""
        config.check()
        config.data = str(Path(config.data).expanduser().resolve())
        check_new_run_folder(Path(config.out), config.finetune_from)
        schedule = Schedule.plan(config.lr, config.lr_min, config.warmup, config.steps)
        return cls(config, schedule, progress=progress)

    @classmethod
    def resumed(cls, run_dir: str | os.PathLike[str], changes: dict[str, Any] | None = None, progress: bool = True) -> Run:
        """The run in ``run_dir`` at its latest checkpoint, with every setting it was started with.

        ``changes``: settings given again on resume (field -> value). Equal ones are ignored; ``RESUME_CHANGEABLE``
        ones are applied with a printed note (``steps`` re-plans the schedule); any other difference is a
        ValueError naming them.
        """
        state, tensors = load_checkpoint(run_dir)
        try:
            cfg = TrainConfig(**state["settings"])
            cfg.loss_weights = tuple(cfg.loss_weights) if cfg.loss_weights is not None else None
            schedule = Schedule.from_json(state["schedule"])
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"cannot resume {run_dir}: its {STATE} has unusable settings ({e})") from None
        cfg.out = str(run_dir)
        notes, refused = [], []
        for name, value in (changes or {}).items():
            if name == "out":
                continue
            if name not in {f.name for f in dataclasses.fields(TrainConfig)}:
                raise ValueError(f"unknown setting {name!r}")
            old = getattr(cfg, name)
            value = tuple(value) if name == "loss_weights" and value is not None else value
            if name == "data" and isinstance(value, str):
                value = str(Path(value).expanduser().resolve())
            if value == old:
                continue
            if name not in RESUME_CHANGEABLE:
                refused.append(f"{flag(name)} ({old} -> {value})")
            elif name == "steps":
                notes.append(schedule.replan(state["step"], value))
                cfg.steps = value
            else:
                notes.append(f"note: {flag(name)} {value} replaces the run's {old}")
                setattr(cfg, name, value)
        if refused:
            raise ValueError(
                f"a resumed run keeps its settings; these differ from the run's: {', '.join(refused)} "
                "(start a new run, or fine-tune from its final/ with `udvd finetune --from`)"
            )
        cfg.check()
        if cfg.steps != schedule.steps:  # settings and plan disagree only if the state was edited by hand
            raise CheckpointError(f"cannot resume {run_dir}: its settings and schedule disagree on the step count")
        for note in notes:
            tqdm.write(note)
        run = cls(cfg, schedule, state, tensors, progress)
        run.settings_changed = bool(notes)
        return run

    settings_changed = True  # settings.json is written for a new run and when a resume changed a setting

    def _build_model(self, state: dict[str, Any] | None) -> tuple[UDVDNet, dict[str, Any] | None]:
        """The network: on resume from the stored model config; new, from the settings (model fields left unset
        are resolved in place from the source model when fine-tuning, else from the defaults), filled with the
        source model's matching tensors when fine-tuning."""
        cfg = self.cfg
        if state is not None:
            try:
                return UDVDNet(ModelConfig.from_dict(state["model_config"])), None
            except (TypeError, ValueError) as e:
                raise CheckpointError(f"cannot resume {self.run_dir}: its {STATE} has an unusable model config ({e})") from None
        source = load_pretrained(UDVDNet, cfg.finetune_from) if cfg.finetune_from else None
        base = source.config if source is not None else ModelConfig()
        config = dataclasses.replace(base, **cfg.model_fields())
        for name in MODEL_FIELDS:
            setattr(cfg, name, getattr(config, name))
        with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only
            torch.manual_seed(cfg.seed)
            model = UDVDNet(config)
        report = None
        if source is not None:
            loaded, reinit = transfer_weights(model, source.state_dict())
            report = {"source": cfg.finetune_from, "source_config": base.to_dict(), "loaded": loaded,
                      "reinitialised": reinit}
            self.log(f"finetune: loaded {len(loaded)} of {len(loaded) + len(reinit)} tensors from {cfg.finetune_from}")
            if reinit:
                self.log(f"finetune: re-initialised (shape or name differs): {', '.join(reinit)}")
        # The synthesis encodes kernels with degradation.pca_basis(); a model trained with another basis would be
        # fed codes it cannot read.
        basis = torch.tensor(pca_basis()[: model.code_len], dtype=model.kernel_basis.dtype)
        if not torch.allclose(model.kernel_basis, basis, atol=1e-6):
            raise ValueError("the model's kernel_basis differs from degradation.pca_basis(): training it is not supported")
        return model, report

    def log(self, msg: str) -> None:
        if self.is_main:
            tqdm.write(msg)

    # ------------------------------------------------------------------------------------------ state

    def _param_names(self) -> list[str]:
        return [name for name, _ in self.model.named_parameters()]

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        for name, p in zip(self._param_names(), self.ema_params):
            out[f"ema.{name}"] = p
        for name, p in zip(self._param_names(), self.params):
            for key, value in self.optimizer.state.get(p, {}).items():
                out[f"optimizer.{name}.{key}"] = value
        return out

    def _restore(self, state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        try:
            self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
            names = self._param_names()
            if self.ema_model is not None:
                ema = {f"ema.{n}" for n in names}
                if not ema <= tensors.keys():
                    raise KeyError("EMA tensors missing")
                with torch.no_grad():
                    for n, p in zip(names, self.ema_params):
                        p.copy_(tensors[f"ema.{n}"])
            opt_state = {}
            for i, n in enumerate(names):
                keys = {k[len(f"optimizer.{n}.") :]: v for k, v in tensors.items() if k.startswith(f"optimizer.{n}.")}
                if keys:
                    opt_state[i] = keys
            full = self.optimizer.state_dict()
            self.optimizer.load_state_dict({"state": opt_state, "param_groups": full["param_groups"]})
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"cannot resume {self.run_dir}: its tensors do not fit the run ({e})") from None
        set_rng_state(state["rng"], self.device)
        self.step, self.elapsed_before = int(state["step"]), float(state["elapsed_s"])
        self.loss_sum.fill_(state["log"]["loss_sum"])
        self.log_since = int(state["log"]["since"])
        self.log(f"resumed {self.run_dir} at step {self.step} of {self.cfg.steps}")

    def _save_checkpoint(self, elapsed: float) -> None:
        """Write ``checkpoints/step-N`` (temporary folder, renamed), point ``checkpoint.json`` at it, then remove
        the previous checkpoint folders (ours by name)."""
        folder = self.run_dir / CHECKPOINTS
        name = f"step-{self.step:08d}"
        tmp = folder / f".{name}.tmp-{secrets.token_hex(4)}"
        state = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "step": self.step,
            "settings": dataclasses.asdict(self.cfg),
            "schedule": self.schedule.to_json(),
            "model_config": self.model.config.to_dict(),
            "data": self.data_id,
            "elapsed_s": elapsed,
            "log": {"loss_sum": float(self.loss_sum), "since": self.log_since},  # the CSV row in progress
            "rng": rng_state(self.device),
        }
        save_tensors(self._tensors(), tmp, TENSORS, metadata={"format": STATE_FORMAT})
        write_json(tmp / STATE, state)
        target = folder / name
        if exists(target):  # a checkpoint of this step from an interrupted earlier attempt
            shutil.rmtree(target)
        os.replace(tmp, target)
        write_json(self.run_dir / POINTER, {"checkpoint": f"{CHECKPOINTS}/{name}", "step": self.step})
        for old in folder.iterdir():
            if old.name != name and CHECKPOINT_NAME.match(old.name):
                shutil.rmtree(old)

    def _export_final(self) -> Path:
        """``final/``: the EMA (or raw) weights as float32 on the CPU, written beside and swapped in."""
        trained = self.ema_model if self.ema_model is not None else self.model
        state = {k: v.detach().float().cpu() for k, v in trained.state_dict().items()}
        bad = sorted(k for k, v in state.items() if not torch.isfinite(v).all())
        if bad:
            raise NonFiniteLossError(f"not writing {FINAL}/: NaN or infinite weights in {', '.join(bad)}")
        export = UDVDNet(trained.config)
        export.load_state_dict(state)  # a fresh module: contiguous tensors whatever the training memory format
        final = self.run_dir / FINAL
        token = secrets.token_hex(4)
        tmp, old = self.run_dir / f".{FINAL}.tmp-{token}", self.run_dir / f".{FINAL}.old-{token}"
        save_checkpoint(export, tmp)
        if exists(final):
            os.replace(final, old)
        os.replace(tmp, final)
        if exists(old):
            shutil.rmtree(old)
        return final

    # ------------------------------------------------------------------------------------------ the loop

    def train_step(self) -> None:
        """One optimiser step on the batch of ``self.step``; queues device work only, never waits for it.

        The host's part of a step (the crop indices, the seeds of the crop offsets and of the degradations, the LR,
        the EMA weight) is staged into fixed device tensors and generators first (:meth:`stage`); the device work
        (:meth:`device_step`) reads only those. With ``--cuda-graph`` it runs eagerly for ``GRAPH_WARMUP`` steps (on
        a side stream, as capture requires; cuDNN picks its algorithms), is then captured once and replayed at every
        later step with the staged inputs: the same numbers without a launch per op."""
        cfg = self.cfg
        self.stage(self.step)
        if self.graph is not None:
            self.graph.replay()
        elif cfg.cuda_graph and self.eager_steps >= GRAPH_WARMUP:
            self.graph = self._capture()
            self.graph.replay()
        elif cfg.cuda_graph:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.device_step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.eager_steps += 1
        else:
            self.device_step()
        self.step += 1

    def stage(self, step: int) -> None:
        """Put the host's inputs of ``step`` where :meth:`device_step` reads them."""
        self.sampler.seed_offsets(step)
        self.indices.copy_(self.sampler.indices(step))
        self.generator.manual_seed(seed_for(self.cfg.seed, step, self.rank, 2))
        lr = self.schedule.lr_at(step)
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
        self.ema_weight.fill_(1.0 - ema_decay(self.cfg.ema, step))

    def device_step(self) -> None:
        """The device work of a step from the staged inputs (see :meth:`train_step`): crop gather, synthesis,
        forward / backward, clipping, Adam, EMA, the loss sum and NaN flag. Nothing here reads a host value that
        changes between steps or waits for the device, so it can be captured in a CUDA graph."""
        crops = self.sampler.gather(self.indices)
        batch = synthesize(crops, self.synth, self.generator)
        lr_img, code, noise, hr = (t.contiguous(memory_format=self.memory_format) for t in batch)
        with self.autocast:
            outputs = self.net(lr_img, code, noise)
        loss = multistage_l1_loss(outputs, hr, self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.optimizer.step()
        self.update_ema()
        loss = loss.detach()
        self.loss_sum += loss
        self.non_finite |= ~torch.isfinite(loss)

    def update_ema(self) -> None:
        """ema += (weights - ema) * ``ema_weight`` (a device tensor: the weight changes while it warms up)."""
        if self.ema_model is None:
            return
        with torch.no_grad():
            drift = torch._foreach_sub(self.params, self.ema_params)
            torch._foreach_mul_(drift, self.ema_weight)
            torch._foreach_add_(self.ema_params, drift)

    def _capture(self) -> torch.cuda.CUDAGraph:
        """:meth:`device_step` captured as a CUDA graph that replays with the generators' seeds of the moment."""
        graph = torch.cuda.CUDAGraph()
        for generator in (self.sampler.generator, self.generator):
            graph.register_generator_state(generator)
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph):
            self.device_step()
        return graph

    def _validate(self, images: list[tuple[str, np.ndarray]]) -> dict[str, float]:
        cfg = self.cfg
        sigma = cfg.val_sigma if cfg.val_sigma is not None else round(sum(SIGMA_RANGES[cfg.scale]) / 2, 3)  # type: ignore[index]
        target = self.ema_model if self.ema_model is not None else self.model
        row = evaluate(model_upscaler(target), cfg.scale, images, [sigma], [cfg.val_noise], seed=cfg.seed)[0]
        return {"val_psnr": row["psnr"], "val_ssim": row["ssim"], "val_bicubic_psnr": row["bicubic_psnr"]}

    def fit(self) -> Path | None:
        """Train to ``cfg.steps`` (or until ``max_minutes``); returns ``final/`` on rank 0, None on other ranks.

        Raises NonFiniteLossError when the loss turns NaN/inf (nothing is written after the last checkpoint).
        """
        cfg, run_dir = self.cfg, self.run_dir
        bench = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest algorithms once
        try:
            resuming = self.step > 0 or (run_dir / POINTER).exists()
            if self.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                if self.settings_changed:
                    write_json(settings_file(run_dir), dataclasses.asdict(cfg))
                if self.finetune_report is not None:
                    write_json(run_dir / FINETUNE, self.finetune_report)
            if self.step >= cfg.steps:
                self.log(f"{run_dir} is complete (step {self.step} of {cfg.steps}); give a larger --steps to extend it")
                return run_dir / FINAL if self.is_main else None
            return self._loop(resuming)
        finally:
            torch.backends.cudnn.benchmark = bench
            if self.own_group:
                dist.barrier()
                dist.destroy_process_group()

    def _loop(self, resuming: bool) -> Path | None:
        cfg, run_dir = self.cfg, self.run_dir
        csv_log = CsvLog(run_dir / LOG, self.step if resuming else None) if self.is_main else None
        board = tensorboard_writer(run_dir) if self.is_main else None
        val_images = self.dataset.val_images() if self.is_main and cfg.val_every else []
        t_start = time.monotonic()
        t_log, step_timed, checked = t_start, self.step, self.step
        stopped_early = False
        postfix: dict[str, str] = {}
        bar = tqdm(total=cfg.steps, initial=self.step, unit="step", desc="train", disable=not (self.is_main and self.progress))
        self.model.train()
        try:
            while self.step < cfg.steps:
                self.train_step()
                bar.update()
                step = self.step
                end = step == cfg.steps
                log_due = step % cfg.log_every == 0 or end
                val_due = bool(val_images) and (step % cfg.val_every == 0 or end)
                ckpt_due = bool(cfg.ckpt_every) and step % cfg.ckpt_every == 0
                if not (log_due or val_due or ckpt_due):
                    continue
                # A host check point: the only place the loop waits for the device.
                flags = torch.stack([self.non_finite.float(), torch.zeros((), device=self.device)])
                if cfg.max_minutes is not None and self.is_main:
                    flags[1] = float(time.monotonic() - t_start > 60 * cfg.max_minutes)
                if self.world > 1:
                    dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # any rank's NaN; rank 0's clock
                non_finite, over_time = (bool(v) for v in flags.tolist())
                if non_finite:
                    last = json.loads((run_dir / POINTER).read_text())["step"] if (run_dir / POINTER).is_file() else None
                    kept = f"the last checkpoint (step {last}) is kept" if last is not None else "no checkpoint was written"
                    raise NonFiniteLossError(
                        f"the loss became NaN or infinite between steps {checked} and {step}: training diverged and was "
                        f"stopped; {kept}, no {FINAL}/ was written (try a lower --lr or --grad-clip)"
                    )
                checked = step
                stopped_early = over_time and not end
                row: dict[str, Any] = {}
                now = time.monotonic()
                if log_due:
                    loss_sum = self.loss_sum.clone()
                    if self.world > 1:
                        dist.all_reduce(loss_sum)
                        loss_sum /= self.world
                    row = {
                        "step": step,
                        "loss": loss_sum.item() / (step - self.log_since),
                        "lr": self.schedule.lr_at(step - 1),
                        "elapsed_s": round(self.elapsed_before + now - t_start, 3),
                        "steps_per_s": round((step - step_timed) / (now - t_log), 4),
                    }
                    postfix.update(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                    self.loss_sum.zero_()
                    t_log, self.log_since, step_timed = now, step, step
                if val_due:
                    row.update(self._validate(val_images), step=step)
                    postfix["val_psnr"] = f"{row['val_psnr']:.2f}"
                if row and csv_log is not None:
                    bar.set_postfix(postfix)
                    csv_log.write(row)
                    if board is not None:
                        for key, value in row.items():
                            if key != "step":
                                board.add_scalar(key, value, step)
                if self.is_main and (ckpt_due or stopped_early or end):
                    self._save_checkpoint(self.elapsed_before + time.monotonic() - t_start)
                if stopped_early:
                    self.log(f"stopped at step {step} of {cfg.steps} after --max-minutes {cfg.max_minutes}; continue with --resume")
                    break
        finally:
            bar.close()
            if csv_log is not None:
                csv_log.close()
            if board is not None:
                board.close()
        if not self.is_main:
            return None
        final = self._export_final()
        self.log(f"saved {final} (step {self.step}{', EMA weights' if self.ema_model is not None else ''})")
        return final


def train(config: TrainConfig, progress: bool = True) -> Path | None:
    """Train (or fine-tune, ``config.finetune_from``) a UDVD in the new run folder ``config.out``; see the module
    docstring. Returns ``final/`` on rank 0 (written when the run reaches ``steps`` or stops at ``max_minutes``),
    None on other ranks. Raises ValueError / FileNotFoundError / FileExistsError for bad settings or folders,
    NonFiniteLossError (a ValueError) when the loss diverges, ``RunFolderBusy`` when another process works in the
    folder. A run that fails before its first checkpoint leaves the folder empty (or removes it if it created it),
    ready for a new run, and says so in its error."""
    config.check()
    run_dir = Path(config.out)
    check_new_run_folder(run_dir, config.finetune_from)  # before anything is created
    created = not exists(run_dir)
    rank = _dist_env()[0]
    with locked(run_dir) if rank == 0 else nullcontext():
        try:
            return Run.new(config, progress).fit()
        except BaseException as e:
            if rank != 0 or not empty_unstarted(run_dir, created):
                raise
            note = f"nothing was kept: {run_dir} is {'removed' if created else 'empty'}, ready for a new run"
            if type(e) in (ValueError, FileNotFoundError, FileExistsError, NonFiniteLossError, CheckpointError):
                raise type(e)(f"{e}; {note}") from None
            tqdm.write(f"udvd: {note}")
            raise


def resume(run_dir: str | os.PathLike[str], changes: dict[str, Any] | None = None, progress: bool = True) -> Path | None:
    """Continue the run in ``run_dir`` from its latest checkpoint with its own settings; ``changes`` as in
    ``Run.resumed`` (e.g. ``{"steps": 30000}`` extends it, re-planning the schedule). Returns as ``train``; raises
    ``RunFolderBusy`` while another process works in the folder."""
    with locked(Path(run_dir)) if _dist_env()[0] == 0 and exists(run_dir) else nullcontext():
        return Run.resumed(run_dir, changes, progress).fit()
