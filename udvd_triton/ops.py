"""The dynamic filter op: input checks, the PyTorch reference, and backend dispatch.

Layouts (see API.md). Depthwise: ``x`` (N, C, H, W), ``kernels`` (N, k*k*s*s, H, W), output (N, C, s*H, s*W)::

    y[n, c, s*h+i, s*w+j] = sum_{dy,dx} x[n, c, h+dy-p, w+dx-p] * kernels[n, (dx*k+dy)*s*s + i*s+j, h, w]

Full: ``kernels`` (N, C*k*k*C*s*s, H, W), a (C*k*k) x (C*s*s) matrix per pixel::

    y[n, o, s*h+i, s*w+j] = sum_{c,dy,dx} x[n, c, h+dy-p, w+dx-p] * kernels[n, ((c*k*k + dx*k+dy)*C + o)*s*s + i*s+j, h, w]

with p = (k-1)//2 and zero padding. The tap index ``dx*k+dy`` (x-offset major) is the unfold order of the
reference UDVD implementation, so its trained kernel-prediction convs plug in unchanged.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Backend = Literal["auto", "triton", "torch"]
SCALES = (1, 2, 3, 4)


def kernel_channels(channels: int, scale: int, kernel_size: int, depthwise: bool) -> int:
    """Number of per-pixel kernel channels the op expects for ``channels`` image channels."""
    taps = kernel_size * kernel_size * scale * scale
    return taps if depthwise else channels * taps * channels


def check_inputs(x: torch.Tensor, kernels: torch.Tensor, scale: int, kernel_size: int, depthwise: bool) -> None:
    """Raise ``ValueError`` naming the problem if the arguments do not fit the layouts above."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
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


def dynamic_filter_reference(
    x: torch.Tensor, kernels: torch.Tensor, scale: int, kernel_size: int, depthwise: bool = True
) -> torch.Tensor:
    """PyTorch reference of the op (any device, any float dtypes, differentiable in both inputs).

    x and kernels may differ in dtype: each product is formed in their promoted dtype and the result has x's dtype.

    Loops over the k*k taps and accumulates into the (N, C, s*s, H, W) result, so it never builds the
    (N, C*k*k, H, W) unfold tensor. Peak memory, forward: the padded input plus about three output-sized
    tensors (accumulator, product, sum); autograd keeps only views of the padded input and of ``kernels``.
    Full mode contracts over input channels per tap with einsum, which adds one kernels/(k*k)-sized copy.
    """
    n, c, h, w = x.shape
    k, s2 = kernel_size, scale * scale
    p = (k - 1) // 2
    dtype = torch.promote_types(x.dtype, kernels.dtype)
    xp = F.pad(x, (p, p, p, p))
    if depthwise:
        taps = kernels.view(n, k * k, 1, s2, h, w)
    else:
        taps = kernels.view(n, c, k * k, c, s2, h, w)
    out = None
    for dx in range(k):
        for dy in range(k):
            patch = xp[:, :, dy : dy + h, dx : dx + w]
            t = dx * k + dy
            if depthwise:
                term = patch.unsqueeze(2) * taps[:, t]  # (N, C, s2, H, W)
            else:
                term = torch.einsum("nchw,ncoshw->noshw", patch.to(dtype), taps[:, :, t].to(dtype))
            out = term if out is None else out + term
    return F.pixel_shuffle(out.reshape(n, c * s2, h, w), scale).to(x.dtype)


def dynamic_filter(
    x: torch.Tensor,
    kernels: torch.Tensor,
    scale: int = 2,
    kernel_size: int = 5,
    depthwise: bool = True,
    backend: Backend = "auto",
) -> torch.Tensor:
    """Filter every pixel of ``x`` with its own predicted k x k kernels and pixel-shuffle by ``scale``.

    Args:
        x: (N, C, H, W) floating-point image or features.
        kernels: (N, k*k*s*s, H, W) depthwise or (N, C*k*k*C*s*s, H, W) full, on ``x``'s device; any float
            dtype (e.g. bf16 kernels with an fp32 image, as autocast produces), read as is.
        scale: upsampling factor s in 1..4 (1 = no upsampling).
        kernel_size: odd k.
        depthwise: one k x k kernel per sub-pixel shared by all channels (True) or a full C -> C map.
        backend: "auto" (Triton for CUDA tensors, the reference otherwise), "triton" or "torch".

    Returns:
        (N, C, s*H, s*W) tensor of ``x``'s dtype.
    """
    check_inputs(x, kernels, scale, kernel_size, depthwise)
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "triton" or (backend == "auto" and x.is_cuda):
        from udvd_triton.kernels.dynamic_filter import dynamic_filter_triton

        return dynamic_filter_triton(x, kernels, scale, kernel_size, depthwise)
    return dynamic_filter_reference(x, kernels, scale, kernel_size, depthwise)
