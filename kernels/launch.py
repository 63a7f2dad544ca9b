"""Launchers of the dynamic filter's Triton kernels: forward, grad wrt x, grad wrt kernels (no autograd).

Each picks the kernel family — CUDA-core depthwise (:mod:`~udvd_triton.kernels.depthwise`), tensor-core depthwise
(:mod:`~udvd_triton.kernels.depthwise_mma`) or full mode (:mod:`~udvd_triton.kernels.full`) — sizes its programs
with a :class:`~udvd_triton.kernels.policy.LaunchPolicy` and launches it over the whole output.

* Inputs are read through their strides, never copied: a ``.contiguous()`` of a channels-last kernels tensor (the
  largest tensor) would add a read and a write of it. Sample bases are int64; offsets inside a sample are int32
  unless a tensor's per-sample extent reaches 2**31 (then ``IDX`` = int64, and every offset product is formed in
  IDX before multiplying by a stride).
* x and kernels may have different float dtypes (fp32 x with bf16 kernels under autocast): each is loaded in its
  own dtype and converted in registers; fp16/bf16/fp32 accumulate in fp32, float64 (gradcheck) in float64.
  Results: y and dx in x's dtype, dkernels in kernels' dtype.
* fp contraction (FMA) is requested explicitly (``enable_fp_fusion=True``; Triton's default changes in 3.10).
* Tile sizes come from a :class:`~udvd_triton.kernels.policy.LaunchPolicy`; under the interpreter the same kernels
  run with bigger channel blocks (every program costs Python overhead there), so the code tested on the CPU is the
  code a GPU runs.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from udvd_triton.kernels.depthwise import (
    dk_depthwise_kernel,
    dk_depthwise_loop_kernel,
    dx_depthwise_kernel,
    fwd_depthwise_kernel,
)
from udvd_triton.kernels.depthwise_mma import dk_mma_kernel, dx_mma_kernel, fwd_mma_kernel
from udvd_triton.kernels.full import dk_full_kernel, dx_full_kernel, fwd_full_kernel
from udvd_triton.kernels.layout import check_inputs, kernel_channels
from udvd_triton.kernels.policy import DEFAULT_POLICY, LaunchPolicy, mma_tile, vec_columns, window

# Triton reads TRITON_INTERPRET when kernels are defined; CPU tensors can only run under the interpreter.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _acc_dtype(*dtypes: torch.dtype) -> tl.dtype:
    return tl.float64 if torch.float64 in dtypes else tl.float32


# In-sample offsets (and flattened plane indices) stay int32 unless some tensor's per-sample extent could pass 2**31;
# the margin covers a tile running past the end of the plane.
_INT32_LIMIT = 2**31 - 2**16


def _index_dtype(*tensors: torch.Tensor) -> tl.dtype:
    span = max(sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:])) for t in tensors)
    return tl.int64 if span >= _INT32_LIMIT else tl.int32


def _column_launches(width: int, block: int, left: int, reach: int) -> list[tuple[int, int, int, int, bool]]:
    """(first, count, skip_at, skip, masked) of the launches that cover a row with blocks of ``block`` columns (see
    :func:`decode_program`): the interior blocks, whose columns ``w0 - left`` to ``w0 + reach - 1`` (every column their
    programs read or write) lie inside the image, without masks; and the edge blocks at both ends, with masks."""
    n = triton.cdiv(width, block)
    lo = min(n, triton.cdiv(left, block))  # first block with w0 >= left
    hi = max(lo, min(n, (width - reach) // block + 1))  # blocks before it end inside the image
    launches = [(lo, hi - lo, hi - lo, 0, False), (0, lo + n - hi, lo, hi - lo, True)]
    return [launch for launch in launches if launch[1] > 0]


def _rows_aligned(*tensors: torch.Tensor) -> bool:
    """Whether every row of every tensor starts on 16 bytes, as far as Triton can tell (it specialises integer
    arguments divisible by 16, so strides in elements must be multiples of 16 for it to emit vector loads)."""
    return all(st % 16 == 0 or size == 1 for t in tensors for size, st in zip(t.shape[:-1], t.stride()[:-1]))


def _launch_depthwise(kernel, a, b, out, c, h, w, scale, kernel_size, policy, *, vec, sub_rows, channel_sum=False,
                      run_bytes=None, acc=None, edge_acc=None):  # fmt: skip
    """Launch a depthwise kernel on (a, b) -> out over every (sample, row, column block, channel block, sub-pixel-row
    block): interior and edge column blocks are two launches (:func:`_column_launches`). ``vec``: LR columns per
    thread; ``sub_rows``: the kernel can split sub-pixel rows over programs; ``channel_sum``: it is grad-kernels,
    which sums over channels (all of them in one block when they fit, else :func:`dk_depthwise_loop_kernel`, one
    column per thread, over blocks of tap rows instead of channel blocks); ``run_bytes``: itemsize of the HR tensor
    it moves in 16-byte runs (E); ``acc``: accumulator budget per thread (default the policy's); ``edge_acc``: that of
    edge blocks (default a half, a quarter at s = 4)."""
    on_gpu = out.device.type != "cpu"
    acc = policy.acc_per_thread if acc is None else acc
    sp = triton.next_power_of_2(scale)
    if not _rows_aligned(a, b, out):  # no vector loads possible: one column per thread
        vec = 1
    loop = channel_sum and c > policy.depthwise_tile(c, scale, vec, sub_rows, on_gpu, acc)[0]
    if loop:
        kernel, vec = dk_depthwise_loop_kernel, 1
        tap_rows, loop_sib = policy.dk_loop_tile(scale, kernel_size, on_gpu)
    pad = (kernel_size - 1) // 2
    if edge_acc is None:  # edge blocks' masks and zero-filled loads need registers too
        edge_acc = acc // 2 if sp < 4 else acc // 4
    bw = policy.lanes * vec
    # E: HR elements of a 16-byte run of the HR tensor (1 at s = 3, whose padded sub-pixels load no runs)
    e = None if run_bytes is None else (min(16 // run_bytes, vec * scale) if sp == scale else 1)
    # columns a block reads left of its first / right of it: grad-kernels' shifted x tiles reach pad; a thread's
    # window reaches OFF left and UW - OFF right of its first column; grad-x's kernels, the aligned vectors around
    # a tap's shifted columns, kv
    left, right, extra = pad, bw + pad, {}
    if kernel is fwd_depthwise_kernel:  # x windows in runs of 16 bytes of x (at most the thread's columns)
        xe = min(16 // a.element_size(), vec)
        off, uw = window(1, vec, pad, xe)
        left, right = off, bw - vec + uw - off
        extra = dict(OFF=off, UW=uw, XE=xe)
    if kernel is dx_depthwise_kernel:
        off, uw = window(scale, vec, pad, e)
        kv = -(-pad // vec) * vec
        left = max(off, kv)
        right = bw - vec + max(uw - off, kv + vec)
        extra = dict(OFF=off, UW=uw, DY=kernel_size if kernel_size <= policy.dx_unroll else 1)
    for first, count, skip_at, skip, masked in _column_launches(w, bw, left, right):
        constants = dict(
            K=kernel_size, S=scale, SP=sp, BW=bw, LANES=policy.lanes, MASKED=masked, LANES_FIRST=policy.run_lanes_first,
            ACC=_acc_dtype(a.dtype, b.dtype), IDX=_index_dtype(a, b, out), **extra,
        )  # fmt: skip
        if loop:
            sib, n_cb = loop_sib, triton.cdiv(kernel_size, tap_rows)
            constants.update(SIB=sib, TR=tap_rows, TP=triton.next_power_of_2(tap_rows * kernel_size))
        elif kernel is dx_depthwise_kernel:
            block_c, sib = policy.dx_channels(c, scale, kernel_size, vec, extra["UW"], on_gpu, masked), sp
        else:
            budget = acc if channel_sum or not masked else edge_acc
            block_c, sib = policy.depthwise_tile(c, scale, vec, sub_rows, on_gpu, budget)
        if not loop:
            n_cb = 1 if channel_sum else triton.cdiv(c, block_c)
            constants.update(SIB=sib, BLOCK_C=block_c, C_STATIC=c if c < block_c else (0 if c % block_c == 0 else -1))
        if e is not None:
            constants["E"] = e
        grid = (out.shape[0] * h * count * (sp // sib) * n_cb,)
        kernel[grid](
            a, b, out, c, h, w, *a.stride(), *b.stride(), *out.stride(), n_cb, sp // sib, first, count, skip_at, skip,
            **constants, num_warps=1, num_stages=1, enable_fp_fusion=True,
            **({"maxnreg": policy.max_registers} if policy.max_registers and on_gpu else {}),
        )  # fmt: skip


def _launch_mma(kernel, op, a, b, out, c, h, w, scale, kernel_size, policy, *, channel_grid):
    """Launch a tensor-core kernel over (sample, block of rows, block of columns (:func:`policy.mma_tile`), channel block
    when ``channel_grid``; otherwise the kernel loops over the channel blocks). The window of LR columns a block
    reads starts OFF (a multiple of 4: aligned vector loads) columns to its left and spans UX >= 16 (a product's
    depth)."""
    pixels, warps = mma_tile(op, scale)
    pad = (kernel_size - 1) // 2
    off = triton.cdiv(pad, 4) * 4
    ux = max(16, triton.next_power_of_2(off + pixels + pad))
    block_c = min(64, triton.next_power_of_2(c))
    rows = policy.mma_row_count(h, out.device.type != "cpu")
    n_rb, n_cb = triton.cdiv(h, rows), triton.cdiv(c, block_c)
    for first, count, skip_at, skip, masked in _column_launches(w, pixels, off, ux - off):
        grid = (out.shape[0] * n_rb * count * (n_cb if channel_grid else 1),)
        kernel[grid](
            a, b, out, c, h, w, *a.stride(), *b.stride(), *out.stride(), n_cb, n_rb, first, count, skip_at, skip,
            K=kernel_size, S=scale, SP=triton.next_power_of_2(scale), P=pixels, UX=ux, OFF=off, ROWS=rows,
            BLOCK_C=block_c, MASKED=masked, IDX=_index_dtype(a, b, out), num_warps=warps, num_stages=1,
            enable_fp_fusion=True,
        )  # fmt: skip


def check_device(t: torch.Tensor) -> None:
    if t.device.type == "cpu" and not INTERPRET:
        raise ValueError(
            "the Triton dynamic filter got CPU tensors but Triton's interpreter is off: set TRITON_INTERPRET=1 "
            "before importing udvd_triton, move the tensors to CUDA, or use backend='torch'"
        )


def _output(out: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != shape or out.dtype != dtype or out.device != device:
        raise ValueError(
            f"out must be a {shape} {dtype} tensor on {device}, got {tuple(out.shape)} {out.dtype} on {out.device}"
        )
    return out


def dynamic_filter_forward(
    x: torch.Tensor,
    kernels: torch.Tensor,
    scale: int,
    kernel_size: int,
    depthwise: bool,
    out: torch.Tensor | None = None,
    *,
    policy: LaunchPolicy = DEFAULT_POLICY,
    check: bool = True,
) -> torch.Tensor:
    """Fused forward (no autograd): x (N, C, H, W), kernels (N, k*k*s*s | C*k*k*C*s*s, H, W) -> (N, C, s*H, s*W).

    x and kernels may differ in float dtype; the result has x's dtype. ``out``, if given, must have that shape,
    dtype and device (any strides); every element of it is written and it is returned. ``policy``: how programs are
    sized; ``check=False`` skips the layout checks (:func:`udvd_triton.kernels.op.dynamic_filter_triton` did them).
    """
    if check:
        check_inputs(x, kernels, scale, kernel_size, depthwise)
    check_device(x)
    n, c, h, w = x.shape
    out = _output(out, (n, c, scale * h, scale * w), x.dtype, x.device)
    if out.numel() == 0:
        return out
    if depthwise and policy.use_mma(c, x, kernels):
        _launch_mma(fwd_mma_kernel, "forward", x, kernels, out, c, h, w, scale, kernel_size, policy, channel_grid=True)
        return out
    if depthwise:
        _launch_depthwise(fwd_depthwise_kernel, x, kernels, out, c, h, w, scale, kernel_size, policy,
                          vec=vec_columns(kernels), sub_rows=True, run_bytes=out.element_size())  # fmt: skip
        return out
    plane = scale * h * scale * w
    block_c, block_p, warps = policy.full_mode_tile(c, plane, out.device.type != "cpu")
    fwd_full_kernel[(n * triton.cdiv(c, block_c) * triton.cdiv(plane, block_p),)](
        x, kernels, out, c, h, w, *x.stride(), *kernels.stride(), *out.stride(),
        K=kernel_size, S=scale, ACC=_acc_dtype(x.dtype, kernels.dtype), IDX=_index_dtype(x, kernels, out),
        BLOCK_C=block_c, BLOCK_Q=block_p, num_warps=warps, enable_fp_fusion=True,
    )  # fmt: skip
    return out


def dynamic_filter_grad_x(
    grad_out: torch.Tensor,
    kernels: torch.Tensor,
    scale: int,
    kernel_size: int,
    depthwise: bool,
    out: torch.Tensor | None = None,
    *,
    policy: LaunchPolicy = DEFAULT_POLICY,
) -> torch.Tensor:
    """Gradient wrt x (no autograd): grad_out (N, C, s*H, s*W), kernels (N, ., H, W) -> (N, C, H, W).

    The result has grad_out's dtype (x's, as the forward's output has it); ``out`` as in
    :func:`dynamic_filter_forward`.
    """
    check_device(kernels)
    n, c, oh, ow = grad_out.shape
    h, w = oh // scale, ow // scale
    out = _output(out, (n, c, h, w), grad_out.dtype, grad_out.device)
    if out.numel() == 0:
        return out
    if depthwise and policy.use_mma(c, grad_out, kernels):
        _launch_mma(dx_mma_kernel, "grad_x", grad_out, kernels, out, c, h, w, scale, kernel_size, policy,
                    channel_grid=True)
        return out
    if depthwise:
        # V LR columns per thread: 16 bytes of kernels up to s = 2; 2 at s >= 3, whose windows hold s*UW values per
        # sub-pixel row and channel; channels per program: LaunchPolicy.dx_channels
        vec = min(4, vec_columns(kernels), max(1, 8 // triton.next_power_of_2(scale)))
        _launch_depthwise(dx_depthwise_kernel, grad_out, kernels, out, c, h, w, scale, kernel_size, policy,
                          vec=vec, sub_rows=False, run_bytes=grad_out.element_size())  # fmt: skip
        return out
    block_c, block_p, warps = policy.full_mode_tile(c, h * w, out.device.type != "cpu")
    dx_full_kernel[(n * triton.cdiv(c, block_c) * triton.cdiv(h * w, block_p),)](
        grad_out, kernels, out, c, h, w, *grad_out.stride(), *kernels.stride(), *out.stride(),
        K=kernel_size, S=scale, ACC=_acc_dtype(grad_out.dtype, kernels.dtype),
        IDX=_index_dtype(grad_out, kernels, out), BLOCK_C=block_c, BLOCK_X=block_p, num_warps=warps,
        enable_fp_fusion=True,
    )  # fmt: skip
    return out


def dynamic_filter_grad_kernels(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    scale: int,
    kernel_size: int,
    depthwise: bool,
    out: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    *,
    policy: LaunchPolicy = DEFAULT_POLICY,
) -> torch.Tensor:
    """Gradient wrt kernels (no autograd): grad_out (N, C, s*H, s*W), x (N, C, H, W) -> (N, kernel channels, H, W).

    The result has ``dtype`` (the kernels' dtype; default x's); ``out`` as in :func:`dynamic_filter_forward`.
    """
    check_device(x)
    n, c, h, w = x.shape
    dtype = x.dtype if dtype is None else dtype
    out = _output(out, (n, kernel_channels(c, scale, kernel_size, depthwise), h, w), dtype, x.device)
    if out.numel() == 0:
        return out
    if depthwise and policy.use_mma(c, grad_out, x):
        _launch_mma(dk_mma_kernel, "grad_kernels", x, grad_out, out, c, h, w, scale, kernel_size, policy,
                    channel_grid=False)
        return out
    if depthwise:
        _launch_depthwise(dk_depthwise_kernel, x, grad_out, out, c, h, w, scale, kernel_size, policy,
                          vec=min(4, vec_columns(out)), sub_rows=True, channel_sum=True,
                          run_bytes=grad_out.element_size())  # fmt: skip
        return out
    block_c, block_p, warps = policy.full_mode_tile(c, h * w, out.device.type != "cpu")
    dk_full_kernel[(n * triton.cdiv(c, block_c) * triton.cdiv(h * w, block_p),)](
        x, grad_out, out, c, h, w, *x.stride(), *grad_out.stride(), *out.stride(),
        K=kernel_size, S=scale, ACC=_acc_dtype(x.dtype, grad_out.dtype), IDX=_index_dtype(x, grad_out, out),
        BLOCK_C=block_c, BLOCK_W=block_p, num_warps=warps, enable_fp_fusion=True,
    )  # fmt: skip
    return out
