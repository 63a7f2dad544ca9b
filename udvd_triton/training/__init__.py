"""Training pipeline: settings (``config``), offline data preparation (``data``), online degradation synthesis
(``synth``), the LR schedule (``schedule``), the run folder (``run_folder``), the training loop (``trainer``) and the
``udvd`` training commands (``cli``). Names load their modules on first use, so the command line's registration of
these commands does not import the trainer."""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BatchSampler": "udvd_triton.training.data",
    "CropDataset": "udvd_triton.training.data",
    "prepare_data": "udvd_triton.training.data",
    "SynthConfig": "udvd_triton.training.synth",
    "synthesize": "udvd_triton.training.synth",
    "TrainConfig": "udvd_triton.training.config",
    "resume": "udvd_triton.training.trainer",
    "train": "udvd_triton.training.trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'udvd_triton.training' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
