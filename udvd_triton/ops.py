"""The dynamic filter op: the PyTorch reference and backend dispatch (layouts: :mod:`udvd_triton.kernels.layout`).

Depthwise: ``x`` (N, C, H, W), ``kernels`` (N, k*k*s*s, H, W), output (N, C, s*H, s*W)::

    y[n, c, s*h+i, s*w+j] = sum_{dy,dx} x[n, c, h+dy-p, w+dx-p] * kernels[n, (dx*k+dy)*s*s + i*s+j, h, w]

Full mode (``depthwise=False``): a (C*k*k) x (C*s*s) matrix per pixel. CUDA tensors run the fused Triton kernels
(:mod:`udvd_triton.kernels.op`), CPU tensors the reference below.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from udvd_triton.kernels.layout import FILTER_SCALES, check_inputs, kernel_channels

Backend = Literal["auto", "triton", "torch"]
__all__ = ["FILTER_SCALES", "Backend", "check_inputs", "dynamic_filter", "dynamic_filter_reference", "kernel_channels"]


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
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch', got {backend!r}")
    if backend == "triton" or (backend == "auto" and isinstance(x, torch.Tensor) and x.is_cuda):
        from udvd_triton.kernels.op import dynamic_filter_triton  # Triton only when it runs: CPU use needs none

        return dynamic_filter_triton(x, kernels, scale, kernel_size, depthwise)  # checks the inputs
    check_inputs(x, kernels, scale, kernel_size, depthwise)
    return dynamic_filter_reference(x, kernels, scale, kernel_size, depthwise)
