"""The settings of a training run: one documented field each (meaning, unit, allowed values, default, command-line
flag, whether ``--resume`` may change it), from which the checks, ``udvd train --help`` and the messages derive.

Defaults are the paper model's recipe (README, "Training defaults"). A run folder stores them as ``settings.json``
(``config.json`` in runs of udvd-triton <= 0.1, still read); the model's architecture is the model config
(:class:`~udvd_triton.model.ModelConfig`), stored with each checkpoint.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from udvd_triton import settings
from udvd_triton.degradation import SCALES
from udvd_triton.model import MAX_BLOCKS, MAX_CHANNELS, VARIANTS, ModelConfig
from udvd_triton.settings import setting

_MODEL = ModelConfig()
_SOURCE = "the source model's when fine-tuning, else {}"


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; each field's help says what it is (``udvd train --help`` shows them all)."""

    data: str = setting(dataclasses.MISSING, "folder written by `udvd prepare-data` (required for a new run; with "
                        "--resume only if the folder moved)", str, resume=True, default_text="the run's")
    out: str = setting(dataclasses.MISSING, "run folder: settings.json, checkpoint.json, checkpoints/, log.csv, "
                       "final/ (required; a new run needs a new or empty folder)", str, default_text="none")
    scale: int | None = setting(None, "upscaling factor", int, choices=SCALES, optional=True,
                                default_text=_SOURCE.format(_MODEL.scale))
    steps: int = setting(100_000, "total optimiser steps, which fix the LR schedule; with --resume a new count "
                         "re-plans the rest of the schedule", int, low=1, resume=True)
    batch: int = setting(16, "crops per step and process", int, low=1, high=4096)
    patch: int = setting(64, "LR patch side; HR crops are scale x patch (the paper model sees 38 LR px around each "
                         "pixel)", int, unit="LR pixels", low=1, high=4096)
    channels: int | None = setting(None, "width of the body", int, unit="feature channels", low=1, high=MAX_CHANNELS,
                                   optional=True, default_text=_SOURCE.format(_MODEL.channels))
    blocks: int | None = setting(None, "residual blocks of the body", int, low=0, high=MAX_BLOCKS, optional=True,
                                 default_text=_SOURCE.format(_MODEL.blocks))
    variant: str | None = setting(None, "ablation variant", str, choices=VARIANTS, optional=True,
                                  default_text=_SOURCE.format(_MODEL.variant))
    lr: float = setting(2e-4, "peak learning rate of the cosine schedule (Adam)", float, low=0, low_open=True)
    lr_min: float = setting(1e-6, "learning rate at the last step", float, low=0, high="lr", high_open=True)
    warmup: float = setting(0.01, "linear LR warm-up, a fraction of --steps", float, low=0, high=1, high_open=True)
    grad_clip: float = setting(1.0, "max global gradient norm, 0 = off", float, low=0)
    ema: float = setting(0.999, "EMA decay of the weights, 0 = off; final/ holds the EMA weights", float, low=0,
                         high=1, high_open=True)
    loss_weights: tuple[float, ...] | None = setting(None, "weights of the multi-stage L1, one per stage output, "
                                                     ">= 0 and not all 0", tuple, optional=True, default_text="all 1")
    anisotropic: float = setting(0.0, "fraction of samples with an anisotropic blur kernel", float, low=0, high=1)
    clean_fraction: float = setting(0.2, "fraction of noise-free samples", float, low=0, high=1)
    noise_max: float = setting(75.0, "highest AWGN sigma", float, unit="0..255 scale", low=0, high=255)
    quantize: bool = setting(True, "round the LR to 8 bits like a stored image (--no-quantize: keep it in float)",
                             bool, flag="--no-quantize")
    augment: bool = setting(True, "random flips and 90-degree rotations (--no-augment: off)", bool, flag="--no-augment")
    seed: int = setting(0, "seed of the initial weights, crops and degradations", int, low=0)
    device: str = setting("auto", "cpu, cuda, cuda:1, ... (auto: cuda if available)", str, resume=True)
    amp: bool = setting(True, "bf16 autocast on CUDA (--no-amp: float32; the CPU trains in float32)", bool,
                        flag="--no-amp")
    compile: bool = setting(False, "torch.compile the model (see benchmarks/README.md for when it pays)", bool,
                            resume=True)
    cuda_graph: bool = setting(False, "capture the training step once in a CUDA graph and replay it (fixed shapes; "
                               "removes the per-op launch cost): CUDA, one process, without --compile", bool,
                               resume=True)
    val_every: int = setting(5000, "validate every N steps, 0 = never", int, low=0, resume=True)
    val_sigma: float | None = setting(None, "validation blur width", float, unit="HR pixels", low=0, low_open=True,
                                      high=20, optional=True, default_text="middle of the scale's training range")
    val_noise: float = setting(15.0, "validation noise level", float, unit="0..255 scale", low=0, high=255)
    ckpt_every: int = setting(5000, "checkpoint every N steps, 0 = only at the end", int, low=0, resume=True)
    log_every: int = setting(100, "CSV log row every N steps; the loss and time budget are checked there, never in "
                             "between", int, low=1, resume=True)
    max_minutes: float | None = setting(None, "stop cleanly after this many minutes of this session, with a "
                                        "checkpoint and final/; continue with --resume", float, unit="minutes",
                                        low=0, low_open=True, optional=True, resume=True, default_text="no limit")
    finetune_from: str | None = setting(None, "source model: registry name, checkpoint folder or .safetensors file "
                                        "(required for a new fine-tuning run)", str, optional=True, flag="--from")

    def check(self) -> None:
        """Raise ValueError naming the first bad setting by its flag (NaN and infinity included)."""
        settings.check(self, lambda name: settings.flag(TrainConfig, name))
        w = self.loss_weights
        if w is not None and (not all(x >= 0 for x in w) or not any(w)):
            raise ValueError(f"--loss-weights must be finite, >= 0 and not all 0, got {' '.join(map(str, w))}")

    def model_fields(self) -> dict[str, Any]:
        """The model config fields these settings fix (None ones are left to the source model or the defaults)."""
        return {name: getattr(self, name) for name in MODEL_FIELDS if getattr(self, name) is not None}


MODEL_FIELDS = ("scale", "channels", "blocks", "variant")  # the settings that are model config fields
RESUME_CHANGEABLE = tuple(f.name for f, spec in settings.fields(TrainConfig) if spec.resume)


def flag(name: str) -> str:
    """The command-line flag of a ``TrainConfig`` field, for messages."""
    return settings.flag(TrainConfig, name)
