"""Fused Triton kernels of the dynamic filter (forward, grad wrt x, grad wrt kernels) and their torch.library op.

Layouts and formulas are those of :mod:`udvd_triton.ops` (API.md "Dynamic filter op"); ``t = dx*k + dy`` is the tap,
``sub = i*s + j`` the sub-pixel, ``p = (k-1)//2``.

Design
------
* Forward: one program per (sample n, channel block, run of ``BLOCK_Q`` consecutive elements of the flattened
  high-resolution plane). Element ``r`` is HR row ``oh = r // (s*W)`` = ``s*h+i`` and column ``q`` = ``s*w+j``, so a
  program writes one contiguous run of the pixel-shuffled output (coalesced stores, also for narrow images) and no
  unfold or (N, C*s*s, H, W) tensor ever exists. Depthwise: the tile is [channels, plane run]; per tap, the weight of
  each element is loaded once and applied to the whole channel block. Full mode: the tile is [output channels, plane
  run]; per (input channel, tap) one input value per element is loaded and applied to all output channels.
* Grad wrt x (gather form, no atomics): one program per (n, channel block, run of the flattened LR plane) owns its
  ``dx`` elements and sums, over taps and sub-pixels, grad_out at the LR pixel ``(y-dy+p, x-dx+p)`` times that
  pixel's weight. Every weight is read once per channel block.
* Grad wrt kernels: one program per (n, run of the LR plane[, output-channel block in full mode]) writes
  ``dK[n, t*s*s+sub, h, w]`` runs; depthwise sums x_pad * grad_out over channels inside the program (a reduction
  along the tile's channel axis), full mode is an outer product and needs no reduction at all.
* All programs of a launch sit on grid axis 0 (decoded in the kernel) so no grid-axis limit applies. Sample bases are
  int64; offsets inside a sample are int32 unless a tensor's per-sample extent reaches 2**31 (then ``IDX`` = int64).
* Inputs are read through their strides, never copied: a ``.contiguous()`` of a channels-last kernels tensor (the
  largest tensor) would add a read and a write of it, more than doubling the traffic of the RGB op.
* fp16/bf16/fp32 accumulate in fp32, float64 (used by gradcheck) in float64; results have the input dtype.
* Tiles: about 1024 accumulators on a GPU, long along the contiguous plane axis; under the interpreter as large as the
  problem allows. A heuristic, no autotuning (which the interpreter cannot run).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from udvd_triton.ops import check_inputs, kernel_channels

# Triton reads TRITON_INTERPRET when kernels are defined; CPU tensors can only run under the interpreter.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _program_run(plane, n_blocks, BLOCK: tl.constexpr, IDX: tl.constexpr):
    """Decode the flat grid (axis 0 = sample, channel block, run of the flattened plane, fastest last): returns
    the sample ``n`` (int64), the channel block, the run's plane indices ``r`` [BLOCK] and their mask."""
    n_r = tl.cdiv(plane, BLOCK)
    pid = tl.program_id(0)
    rest = pid // n_r
    r = tl.cast(pid % n_r, IDX) * BLOCK + tl.arange(0, BLOCK)
    return tl.cast(rest // n_blocks, tl.int64), rest % n_blocks, r, r < plane


@triton.jit
def _tap(h, w, t, mask, H, W, K: tl.constexpr, SIGN: tl.constexpr):
    """Row / column h + SIGN*(dy - P), w + SIGN*(dx - P) of tap t = dx*K + dy, and whether it lies in the image
    (SIGN = 1: the input pixel a tap reads; SIGN = -1: the LR pixel whose tap t reads (h, w))."""
    P: tl.constexpr = (K - 1) // 2
    yy = h + SIGN * ((t % K) - P)
    xx = w + SIGN * ((t // K) - P)
    return yy, xx, mask & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)


@triton.jit
def _dynamic_filter_fwd_kernel(
    x_ptr, k_ptr, y_ptr,
    C, H, W,
    sxn, sxc, sxh, sxw,
    skn, skc, skh, skw,
    syn, syc, syh, syw,
    K: tl.constexpr, S: tl.constexpr, DEPTHWISE: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    OW = S * W
    # BLOCK_Q consecutive elements of the pixel-shuffled output plane: HR row oh = s*h+i, column q = s*w+j
    n, cb, r, r_mask = _program_run(tl.cast(S * H, IDX) * OW, tl.cdiv(C, BLOCK_C), BLOCK_Q, IDX)
    oh = r // OW
    q = r % OW
    h = oh // S
    w = q // S
    sub = (oh % S) * S + q % S
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    ci_off = tl.cast(c, IDX)

    x_base = x_ptr + n * sxn
    k_pix = k_ptr + n * skn + (h * skh + w * skw + sub * skc)
    acc = tl.zeros([BLOCK_C, BLOCK_Q], dtype=ACC)
    if DEPTHWISE:
        # the pixel's weight of each tap is loaded once and applied to the whole channel block
        x_chan = x_base + (ci_off * sxc)[:, None]
        for t in range(K * K):
            yy, xx, valid = _tap(h, w, t, r_mask, H, W, K, 1)
            wt = tl.load(k_pix + tl.cast(t * S * S, IDX) * skc, mask=r_mask, other=0.0).to(ACC)
            xv = tl.load(x_chan + (yy * sxh + xx * sxw)[None, :], mask=c_mask[:, None] & valid[None, :], other=0.0)
            acc += xv.to(ACC) * wt[None, :]
    else:
        # kernels channel ((ci*K*K + t)*C + o)*S*S + sub, output channel o along the tile's first axis
        k_out = k_pix[None, :] + (ci_off * S * S * skc)[:, None]
        kq_mask = c_mask[:, None] & r_mask[None, :]
        for ci in range(C):
            x_chan = x_base + tl.cast(ci, IDX) * sxc
            for t in range(K * K):
                yy, xx, valid = _tap(h, w, t, r_mask, H, W, K, 1)
                xv = tl.load(x_chan + yy * sxh + xx * sxw, mask=valid, other=0.0).to(ACC)
                wt = tl.load(k_out + tl.cast((ci * K * K + t) * C * S * S, IDX) * skc, mask=kq_mask, other=0.0)
                acc += xv[None, :] * wt.to(ACC)

    y_off = n * syn + (ci_off * syc)[:, None] + (oh * syh + q * syw)[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=c_mask[:, None] & r_mask[None, :])


@triton.jit
def _dynamic_filter_dx_kernel(
    g_ptr, k_ptr, dx_ptr,
    C, H, W,
    sgn, sgc, sgh, sgw,
    skn, skc, skh, skw,
    sdn, sdc, sdh, sdw,
    K: tl.constexpr, S: tl.constexpr, DEPTHWISE: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_X: tl.constexpr,
):
    # dx[n, c, y, x] = sum_{t, i, j} g[n, c|o, S*h+i, S*w+j] * K[n, ., h, w] with (h, w) = (y - dy + P, x - dx + P):
    # each program owns its dx elements and gathers their contributions, so no atomics are needed
    n, cb, r, r_mask = _program_run(tl.cast(H, IDX) * W, tl.cdiv(C, BLOCK_C), BLOCK_X, IDX)
    y = r // W
    x = r % W
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    ci_off = tl.cast(c, IDX)
    g_base = g_ptr + n * sgn
    k_base = k_ptr + n * skn
    acc = tl.zeros([BLOCK_C, BLOCK_X], dtype=ACC)
    if DEPTHWISE:
        g_chan = g_base + (ci_off * sgc)[:, None]
        for t in range(K * K):
            h, w, valid = _tap(y, x, t, r_mask, H, W, K, -1)
            gv_mask = c_mask[:, None] & valid[None, :]
            k_pix = k_base + (h * skh + w * skw) + tl.cast(t * S * S, IDX) * skc
            for i in tl.static_range(S):
                for j in tl.static_range(S):
                    wt = tl.load(k_pix + (i * S + j) * skc, mask=valid, other=0.0).to(ACC)
                    g_off = (S * h + i) * sgh + (S * w + j) * sgw
                    gv = tl.load(g_chan + g_off[None, :], mask=gv_mask, other=0.0).to(ACC)
                    acc += gv * wt[None, :]
    else:
        # kernels channel ((c*K*K + t)*C + o)*S*S + i*S + j, input channel c along the tile's first axis
        k_in = k_base + (ci_off * (K * K * S * S) * C * skc)[:, None]
        for o in range(C):
            g_chan = g_base + tl.cast(o, IDX) * sgc
            for t in range(K * K):
                h, w, valid = _tap(y, x, t, r_mask, H, W, K, -1)
                wk_mask = c_mask[:, None] & valid[None, :]
                k_pix = k_in + (h * skh + w * skw)[None, :] + tl.cast((t * C + o) * S * S, IDX) * skc
                for i in tl.static_range(S):
                    for j in tl.static_range(S):
                        gv = tl.load(g_chan + (S * h + i) * sgh + (S * w + j) * sgw, mask=valid, other=0.0)
                        wt = tl.load(k_pix + (i * S + j) * skc, mask=wk_mask, other=0.0).to(ACC)
                        acc += gv.to(ACC)[None, :] * wt

    d_off = n * sdn + (ci_off * sdc)[:, None] + (y * sdh + x * sdw)[None, :]
    tl.store(dx_ptr + d_off, acc.to(dx_ptr.dtype.element_ty), mask=c_mask[:, None] & r_mask[None, :])


@triton.jit
def _dynamic_filter_dk_kernel(
    x_ptr, g_ptr, dk_ptr,
    C, H, W,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    sdn, sdc, sdh, sdw,
    K: tl.constexpr, S: tl.constexpr, DEPTHWISE: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # depthwise: dK[n, t*S*S+i*S+j, h, w] = sum_c x[n, c, h+dy-P, w+dx-P] * g[n, c, S*h+i, S*w+j]
    # full:      dK[n, ((c*K*K+t)*C+o)*S*S+i*S+j, h, w] = x[n, c, h+dy-P, w+dx-P] * g[n, o, S*h+i, S*w+j]
    n, ob, r, r_mask = _program_run(tl.cast(H, IDX) * W, 1 if DEPTHWISE else tl.cdiv(C, BLOCK_C), BLOCK_W, IDX)
    h = r // W
    w = r % W
    x_base = x_ptr + n * sxn
    g_base = g_ptr + n * sgn
    d_pix = dk_ptr + n * sdn + (h * sdh + w * sdw)
    if DEPTHWISE:
        # the channel sum is a reduction along the tile's first axis, inside the program
        cl = tl.arange(0, BLOCK_C)
        for i in tl.static_range(S):
            for j in tl.static_range(S):
                g_pix = g_base + (S * h + i) * sgh + (S * w + j) * sgw
                for t in range(K * K):
                    yy, xx, valid = _tap(h, w, t, r_mask, H, W, K, 1)
                    x_pix = x_base + yy * sxh + xx * sxw
                    acc = tl.zeros([BLOCK_W], dtype=ACC)
                    for c0 in range(0, C, BLOCK_C):
                        c = c0 + cl
                        c_mask = c < C
                        ci_off = tl.cast(c, IDX)
                        gv = tl.load(
                            g_pix[None, :] + (ci_off * sgc)[:, None], mask=c_mask[:, None] & r_mask[None, :], other=0.0
                        ).to(ACC)
                        xv = tl.load(
                            x_pix[None, :] + (ci_off * sxc)[:, None], mask=c_mask[:, None] & valid[None, :], other=0.0
                        ).to(ACC)
                        acc += tl.sum(xv * gv, axis=0)
                    ch = tl.cast(t * S * S + i * S + j, IDX)
                    tl.store(d_pix + ch * sdc, acc.to(dk_ptr.dtype.element_ty), mask=r_mask)
    else:
        # an outer product per (c, t, sub): no reduction, output channel o along the tile's first axis
        o = ob * BLOCK_C + tl.arange(0, BLOCK_C)
        o_mask = o < C
        oi_off = tl.cast(o, IDX)
        d_out = d_pix[None, :] + (oi_off * S * S * sdc)[:, None]
        ow_mask = o_mask[:, None] & r_mask[None, :]
        for i in tl.static_range(S):
            for j in tl.static_range(S):
                g_off = (S * h + i) * sgh + (S * w + j) * sgw
                gv = tl.load(g_base + (oi_off * sgc)[:, None] + g_off[None, :], mask=ow_mask, other=0.0).to(ACC)
                for ci in range(C):
                    x_chan = x_base + tl.cast(ci, IDX) * sxc
                    for t in range(K * K):
                        yy, xx, valid = _tap(h, w, t, r_mask, H, W, K, 1)
                        xv = tl.load(x_chan + yy * sxh + xx * sxw, mask=valid, other=0.0).to(ACC)
                        ch = tl.cast((ci * K * K + t) * C * S * S + i * S + j, IDX)
                        tl.store(d_out + ch * sdc, (gv * xv[None, :]).to(dk_ptr.dtype.element_ty), mask=ow_mask)


def _acc_dtype(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


# In-sample offsets (and flattened plane indices) stay int32 unless some tensor's per-sample extent could pass 2**31;
# the margin covers a tile running past the end of the plane.
_INT32_LIMIT = 2**31 - 2**16


def _index_dtype(*tensors: torch.Tensor) -> tl.dtype:
    span = max(sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:])) for t in tensors)
    return tl.int64 if span >= _INT32_LIMIT else tl.int32


def _tile(channels: int, plane: int, max_c: int, on_gpu: bool) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_P, num_warps) for a [channels, flattened-plane] tile.

    On a GPU the tile holds about 1024 accumulators (8 per thread with 4 warps), long along the contiguous plane
    axis for coalescing. Under the interpreter every program costs a fixed Python overhead per operation, so tiles
    are as large as the problem allows (up to 16k elements).
    """
    block_c = min(triton.next_power_of_2(channels), max_c)
    budget = 1024 if on_gpu else 16384
    block_p = max(16, min(triton.next_power_of_2(plane), budget // block_c))
    num_warps = 4 if block_c * block_p >= 1024 else 2
    return block_c, block_p, num_warps


def _check_device(t: torch.Tensor) -> None:
    if t.device.type == "cpu" and not _INTERPRET:
        raise ValueError(
            "the Triton dynamic filter got CPU tensors but Triton's interpreter is off: set TRITON_INTERPRET=1 "
            "before importing udvd_triton, move the tensors to CUDA, or use backend='torch'"
        )


def _output(out: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    if out is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    if tuple(out.shape) != shape or out.dtype != like.dtype or out.device != like.device:
        raise ValueError(
            f"out must be a {shape} {like.dtype} tensor on {like.device}, "
            f"got {tuple(out.shape)} {out.dtype} on {out.device}"
        )
    return out


def dynamic_filter_forward(
    x: torch.Tensor,
    kernels: torch.Tensor,
    scale: int,
    kernel_size: int,
    depthwise: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fused forward (no autograd): x (N, C, H, W), kernels (N, k*k*s*s | C*k*k*C*s*s, H, W) -> (N, C, s*H, s*W).

    The result has x's dtype. ``out``, if given, must have that shape, dtype and device (any strides); every
    element of it is written and it is returned.
    """
    check_inputs(x, kernels, scale, kernel_size, depthwise)
    _check_device(x)
    n, c, h, w = x.shape
    out = _output(out, (n, c, scale * h, scale * w), x)
    if out.numel() == 0:
        return out
    plane = scale * h * scale * w
    block_c, block_p, warps = _tile(c, plane, 8 if depthwise else 16, x.device.type != "cpu")
    grid = (n * triton.cdiv(c, block_c) * triton.cdiv(plane, block_p),)
    _dynamic_filter_fwd_kernel[grid](
        x, kernels, out, c, h, w, *x.stride(), *kernels.stride(), *out.stride(),
        K=kernel_size, S=scale, DEPTHWISE=depthwise, ACC=_acc_dtype(x.dtype), IDX=_index_dtype(x, kernels, out),
        BLOCK_C=block_c, BLOCK_Q=block_p, num_warps=warps,
    )  # fmt: skip
    return out


def dynamic_filter_grad_x(
    grad_out: torch.Tensor,
    kernels: torch.Tensor,
    scale: int,
    kernel_size: int,
    depthwise: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient wrt x (no autograd): grad_out (N, C, s*H, s*W), kernels (N, ., H, W) -> (N, C, H, W).

    The result has kernels' dtype; ``out`` as in :func:`dynamic_filter_forward`.
    """
    _check_device(kernels)
    n, c, oh, ow = grad_out.shape
    h, w = oh // scale, ow // scale
    out = _output(out, (n, c, h, w), kernels)
    if out.numel() == 0:
        return out
    block_c, block_p, warps = _tile(c, h * w, 8 if depthwise else 16, kernels.device.type != "cpu")
    grid = (n * triton.cdiv(c, block_c) * triton.cdiv(h * w, block_p),)
    _dynamic_filter_dx_kernel[grid](
        grad_out, kernels, out, c, h, w, *grad_out.stride(), *kernels.stride(), *out.stride(),
        K=kernel_size, S=scale, DEPTHWISE=depthwise, ACC=_acc_dtype(kernels.dtype),
        IDX=_index_dtype(grad_out, kernels, out), BLOCK_C=block_c, BLOCK_X=block_p, num_warps=warps,
    )  # fmt: skip
    return out


def dynamic_filter_grad_kernels(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    scale: int,
    kernel_size: int,
    depthwise: bool,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Gradient wrt kernels (no autograd): grad_out (N, C, s*H, s*W), x (N, C, H, W) -> (N, kernel channels, H, W).

    The result has x's dtype; ``out`` as in :func:`dynamic_filter_forward`.
    """
    _check_device(x)
    n, c, h, w = x.shape
    out = _output(out, (n, kernel_channels(c, scale, kernel_size, depthwise), h, w), x)
    if out.numel() == 0:
        return out
    # depthwise: BLOCK_C is the chunk of the in-program channel sum; full mode: a block of output channels
    block_c, block_p, warps = _tile(c, h * w, 16, x.device.type != "cpu")
    n_c = 1 if depthwise else triton.cdiv(c, block_c)
    grid = (n * n_c * triton.cdiv(h * w, block_p),)
    _dynamic_filter_dk_kernel[grid](
        x, grad_out, out, c, h, w, *x.stride(), *grad_out.stride(), *out.stride(),
        K=kernel_size, S=scale, DEPTHWISE=depthwise, ACC=_acc_dtype(x.dtype), IDX=_index_dtype(x, grad_out, out),
        BLOCK_C=block_c, BLOCK_W=block_p, num_warps=warps,
    )  # fmt: skip
    return out


# torch.library integration: opaque custom ops with fake (meta) implementations so torch.compile traces through
# without graph breaks, and an autograd formula that calls the two gather-form backward ops.


@torch.library.custom_op("udvd_triton::dynamic_filter", mutates_args=())
def _dynamic_filter_op(
    x: torch.Tensor, kernels: torch.Tensor, scale: int, kernel_size: int, depthwise: bool
) -> torch.Tensor:
    return dynamic_filter_forward(x, kernels, scale, kernel_size, depthwise)


@_dynamic_filter_op.register_fake
def _(x, kernels, scale, kernel_size, depthwise):
    n, c, h, w = x.shape
    return x.new_empty((n, c, scale * h, scale * w))


@torch.library.custom_op("udvd_triton::dynamic_filter_grad_x", mutates_args=())
def _grad_x_op(
    grad_out: torch.Tensor, kernels: torch.Tensor, scale: int, kernel_size: int, depthwise: bool
) -> torch.Tensor:
    return dynamic_filter_grad_x(grad_out, kernels, scale, kernel_size, depthwise)


@_grad_x_op.register_fake
def _(grad_out, kernels, scale, kernel_size, depthwise):
    n, c, oh, ow = grad_out.shape
    return kernels.new_empty((n, c, oh // scale, ow // scale))


@torch.library.custom_op("udvd_triton::dynamic_filter_grad_kernels", mutates_args=())
def _grad_kernels_op(
    grad_out: torch.Tensor, x: torch.Tensor, scale: int, kernel_size: int, depthwise: bool
) -> torch.Tensor:
    return dynamic_filter_grad_kernels(grad_out, x, scale, kernel_size, depthwise)


@_grad_kernels_op.register_fake
def _(grad_out, x, scale, kernel_size, depthwise):
    n, c, h, w = x.shape
    return x.new_empty((n, kernel_channels(c, scale, kernel_size, depthwise), h, w))


def _setup_context(ctx, inputs, output) -> None:
    x, kernels, scale, kernel_size, depthwise = inputs
    ctx.save_for_backward(x, kernels)
    ctx.args = (scale, kernel_size, depthwise)


def _backward(ctx, grad_out):
    x, kernels = ctx.saved_tensors
    dx = _grad_x_op(grad_out, kernels, *ctx.args) if ctx.needs_input_grad[0] else None
    dk = _grad_kernels_op(grad_out, x, *ctx.args) if ctx.needs_input_grad[1] else None
    return dx, dk, None, None, None


_dynamic_filter_op.register_autograd(_backward, setup_context=_setup_context)


def dynamic_filter_triton(
    x: torch.Tensor, kernels: torch.Tensor, scale: int, kernel_size: int, depthwise: bool
) -> torch.Tensor:
    """Differentiable fused dynamic filter (see :func:`udvd_triton.ops.dynamic_filter` for layouts).

    x (N, C, H, W) and kernels (N, k*k*s*s | C*k*k*C*s*s, H, W) of one float dtype on one device (CUDA, or CPU
    under TRITON_INTERPRET=1) -> (N, C, s*H, s*W) of that dtype. Works inside ``torch.compile(fullgraph=True)``.
    """
    check_inputs(x, kernels, scale, kernel_size, depthwise)
    _check_device(x)
    return _dynamic_filter_op(x, kernels, scale, kernel_size, depthwise)
