"""One parser for the device a user names (``--device``, ``device=``), shared by inference, the zoo and training."""

from __future__ import annotations

import torch

DEVICE_TYPES = ("cpu", "cuda")  # what the package runs on; torch knows more (meta, mps, ...) that it cannot use


def parse_device(device: str | torch.device | None, what: str = "device") -> torch.device:
    """The ``torch.device`` for ``device``: None or "auto" is CUDA when available, else the CPU; "cuda" without an
    index is the current CUDA device. ValueError naming ``what`` for a malformed name, a type the package cannot
    run on, or a CUDA device that is not there."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"invalid {what} {str(device)!r} (e.g. cpu, cuda, cuda:1)") from None
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f"{what} {str(device)!r} is not supported: use cpu or cuda (cuda:N)")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            use = f"{what} cpu" if what.startswith("--") else f"{what}='cpu'"
            raise ValueError(f"{what} {str(device)!r} requested but CUDA is not available (torch {torch.__version__}, "
                             f"{build}); use {use}")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{what} {str(device)!r} requested but only {torch.cuda.device_count()} CUDA device(s) "
                             "exist")
    return dev
