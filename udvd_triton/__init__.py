"""UDVD super-resolution with fused Triton dynamic-filter kernels.

The top-level names load their modules on first use, so ``import udvd_triton.model`` (the network alone) stays free
of the zoo's dependencies (huggingface_hub, safetensors) and of PIL.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_EXPORTS = {
    "UDVD": "udvd_triton.hub",
    "UDVDNet": "udvd_triton.model",
    "ModelConfig": "udvd_triton.model",
    "convert_reference_state_dict": "udvd_triton.model",
    "multistage_l1_loss": "udvd_triton.model",
    "dynamic_filter": "udvd_triton.ops",
    "estimate_degradation": "udvd_triton.blind",
    "list_models": "udvd_triton.registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'udvd_triton' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
