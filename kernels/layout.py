"""The dynamic filter's tensor layouts and their checks (plain PyTorch: no Triton needed to import this).

Depthwise: ``x`` (N, C, H, W), ``kernels`` (N, k*k*s*s, H, W), output (N, C, s*H, s*W)::

    y[n, c, s*h+i, s*w+j] = sum_{dy,dx} x[n, c, h+dy-p, w+dx-p] * kernels[n, (dx*k+dy)*s*s + i*s+j, h, w]

Full: ``kernels`` (N, C*k*k*C*s*s, H, W), a (C*k*k) x (C*s*s) matrix per pixel::

    y[n, o, s*h+i, s*w+j] = sum_{c,dy,dx} x[n, c, h+dy-p, w+dx-p] * kernels[n, ((c*k*k + dx*k+dy)*C + o)*s*s + i*s+j, h, w]

with p = (k-1)//2 and zero padding. The tap index ``dx*k+dy`` (x-offset major) is the unfold order of the
reference UDVD implementation, so its trained kernel-prediction convs plug in unchanged. Here "kernels" are the
per-pixel filter weights (what the model predicts), not the blur kernel of the degradation.
"""

from __future__ import annotations

import torch

FILTER_SCALES = (1, 2, 3, 4)  # upsampling factors of the op (1: filtering only, as the model's refinement stages)


def kernel_channels(channels: int, scale: int, kernel_size: int, depthwise: bool) -> int:
    """Number of per-pixel kernel channels the op expects for ``channels`` image channels."""
    taps = kernel_size * kernel_size * scale * scale
    return taps if depthwise else channels * taps * channels


def check_inputs(x: torch.Tensor, kernels: torch.Tensor, scale: int, kernel_size: int, depthwise: bool) -> None:
    """Raise ``ValueError`` naming the problem if the arguments do not fit the layouts above."""
    if scale not in FILTER_SCALES or isinstance(scale, bool):
        raise ValueError(f"scale must be one of {FILTER_SCALES}, got {scale!r}")
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size!r}")
    for name, t in (("x", x), ("kernels", kernels)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if x.device != kernels.device:
        raise ValueError(f"x and kernels must be on one device, got {x.device} and {kernels.device}")
    n, c, h, w = x.shape
    expected = (n, kernel_channels(c, scale, kernel_size, depthwise), h, w)
    if tuple(kernels.shape) != expected:
        layout = "k*k*s*s" if depthwise else "C*k*k*C*s*s"
        raise ValueError(
            f"kernels must have shape (N, {layout}, H, W) = {expected} for x of shape {tuple(x.shape)}, "
            f"scale={scale}, kernel_size={kernel_size}, depthwise={depthwise}; got {tuple(kernels.shape)}"
        )
