"""The fused dynamic filter as a differentiable ``torch.library`` op: ``udvd_triton::dynamic_filter``.

Opaque custom ops with fake (meta) implementations, so ``torch.compile`` traces through them without graph breaks,
and an autograd formula that calls the two gather-form backward ops.
"""

from __future__ import annotations

import torch

from udvd_triton.kernels.launch import (
    check_device,
    dynamic_filter_forward,
    dynamic_filter_grad_kernels,
    dynamic_filter_grad_x,
)
from udvd_triton.kernels.layout import check_inputs, kernel_channels


@torch.library.custom_op("udvd_triton::dynamic_filter", mutates_args=())
def _dynamic_filter_op(
    x: torch.Tensor, kernels: torch.Tensor, scale: int, kernel_size: int, depthwise: bool
) -> torch.Tensor:
    return dynamic_filter_forward(x, kernels, scale, kernel_size, depthwise, check=False)


@_dynamic_filter_op.register_fake
def _dynamic_filter_fake(x, kernels, scale, kernel_size, depthwise):
    n, c, h, w = x.shape
    return x.new_empty((n, c, scale * h, scale * w))


@torch.library.custom_op("udvd_triton::dynamic_filter_grad_x", mutates_args=())
def _grad_x_op(
    grad_out: torch.Tensor, kernels: torch.Tensor, scale: int, kernel_size: int, depthwise: bool
) -> torch.Tensor:
    return dynamic_filter_grad_x(grad_out, kernels, scale, kernel_size, depthwise)


@_grad_x_op.register_fake
def _grad_x_fake(grad_out, kernels, scale, kernel_size, depthwise):
    n, c, oh, ow = grad_out.shape
    return grad_out.new_empty((n, c, oh // scale, ow // scale))


@torch.library.custom_op("udvd_triton::dynamic_filter_grad_kernels", mutates_args=())
def _grad_kernels_op(
    grad_out: torch.Tensor, x: torch.Tensor, scale: int, kernel_size: int, depthwise: bool, dtype: torch.dtype
) -> torch.Tensor:
    return dynamic_filter_grad_kernels(grad_out, x, scale, kernel_size, depthwise, dtype=dtype)


@_grad_kernels_op.register_fake
def _grad_kernels_fake(grad_out, x, scale, kernel_size, depthwise, dtype):
    n, c, h, w = x.shape
    return x.new_empty((n, kernel_channels(c, scale, kernel_size, depthwise), h, w), dtype=dtype)


def _setup_context(ctx, inputs, output) -> None:
    x, kernels, scale, kernel_size, depthwise = inputs
    ctx.save_for_backward(x, kernels)
    ctx.args = (scale, kernel_size, depthwise)


def _backward(ctx, grad_out):
    x, kernels = ctx.saved_tensors
    dx = _grad_x_op(grad_out, kernels, *ctx.args) if ctx.needs_input_grad[0] else None
    dk = _grad_kernels_op(grad_out, x, *ctx.args, kernels.dtype) if ctx.needs_input_grad[1] else None
    return dx, dk, None, None, None


_dynamic_filter_op.register_autograd(_backward, setup_context=_setup_context)


def dynamic_filter_triton(
    x: torch.Tensor, kernels: torch.Tensor, scale: int, kernel_size: int, depthwise: bool
) -> torch.Tensor:
    """Differentiable fused dynamic filter (layouts: :mod:`udvd_triton.kernels.layout`).

    x (N, C, H, W) and kernels (N, k*k*s*s | C*k*k*C*s*s, H, W), float dtypes that may differ, on one device (CUDA,
    or CPU under TRITON_INTERPRET=1) -> (N, C, s*H, s*W) of x's dtype; the gradients have their input's dtype.
    Works inside ``torch.compile(fullgraph=True)``.
    """
    check_inputs(x, kernels, scale, kernel_size, depthwise)
    check_device(x)
    return _dynamic_filter_op(x, kernels, scale, kernel_size, depthwise)
