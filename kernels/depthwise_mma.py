"""Tensor-core Triton kernels of the depthwise dynamic filter, for 16-bit x and kernels of one dtype, C >= 16.

With many channels in bf16 / fp16 the multiply-adds, not the bytes, bound the CUDA-core kernels (at C = 64, 1,600
FMA per HR pixel against ~1,630 issue slots at the bandwidth floor). The pixels of a block share nothing but their
channels, so per LR row of taps the work is a product over a band matrix: a window of UX LR columns of x
(``[C, UX]``, one row of the image) times ``B[u, (i, q, j)] = K[(dx*K + dy)*s*s + i*s + j, h, w0 + q]`` for the tap
``dx = u - q + p - OFF`` of each of P pixels (zero off the band), ``tl.dot`` with fp32 accumulation. Grad-x is the
transposed band over a window of grad_out (rows dy and sub-pixel rows i), grad-kernels the same product with the
band *stored*: ``R = x_window^T @ grad_out`` summed over channel blocks, whose band entries are dK. Most of each
product is zeros of the band (5 of 16 rows at k=5): tensor cores have the rate to spare (~5 us of their time for
~25 us of bytes at C=64, 480x270), and the band costs no memory traffic, only a masked gather of the kernels tile.
Windows start OFF (p rounded up to 4) columns left of the block so that x / grad_out rows load as 8- or 16-byte
vectors; programs loop over 8 rows; rows outside the image are read clamped and their band zeroed.
"""

import os

import triton
import triton.language as tl

from udvd_triton.kernels.tiles import channel_block, clamp_row, decode_program, strides_as, widen


# The interpreter multiplies bf16 tiles as raw integers: there the tensor-core kernels widen them to fp32 first (exact
# values, the same products); compiled, tl.dot takes them as they are.
_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _dot(a, b, acc):
    """acc + a @ b with fp32 accumulation."""
    if _INTERPRET and a.dtype == tl.bfloat16:
        a, b = widen(a, tl.float32), widen(b, tl.float32)
    return tl.dot(a, b, acc)


@triton.jit
def _mma_program(n_cb, n_rb, H, first, count, skip_at, skip, ROWS: tl.constexpr, P: tl.constexpr):
    """Decode the flat grid of a tensor-core program: (sample as int64, channel block, first row, end row, first
    column), for ROWS consecutive LR rows and P consecutive LR columns (see :func:`decode_program`)."""
    n, cb, _, rb, w0 = decode_program(n_cb, 1, n_rb, first, count, skip_at, skip, P)
    return n, cb, rb * ROWS, tl.minimum(rb * ROWS + ROWS, H), w0


@triton.jit
def _mma_band(w0, W, P: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, UX: tl.constexpr, OFF: tl.constexpr,
              K: tl.constexpr):
    """Index tensors of the band matrix [UX, SP*P*SP] that turns a row of a window of UX LR columns (column
    ``w0 - OFF + u``) into the taps of P pixels ``w0 + q`` (columns ordered (i, q, j), sub-pixel i*S + j): the tap
    column dx of (u, column), the sub-pixel clamped to a real one, whether the entry is a real tap of a real
    sub-pixel; per column: its HR row in the block (i, clamped), HR column, q, and whether it is a real output."""
    PAD: tl.constexpr = (K - 1) // 2
    col = tl.arange(0, SP * P * SP)
    i, q, j = col // (P * SP), (col // SP) % P, col % SP
    dx = tl.arange(0, UX)[:, None] - q[None, :] + (PAD - OFF)
    sub = (tl.minimum(i, S - 1) * S + tl.minimum(j, S - 1))[None, :]
    real = (i < S) & (j < S) & (w0 + q < W)
    ok = (dx >= 0) & (dx < K) & real[None, :]
    if SP == S:  # written so that the compiler sees runs of P*S consecutive HR columns: vector loads and stores
        hr = S * w0 + col % (P * S)
    else:
        hr = S * (w0 + q) + tl.minimum(j, S - 1)
    return dx, sub, ok, tl.minimum(i, S - 1), hr, q, real


@triton.jit
def fwd_mma_kernel(
    x_ptr, k_ptr, y_ptr,
    C, H, W,
    sxn, sxc, sxh, sxw,
    skn, skc, skh, skw,
    syn, syc, syh, syw,
    n_cb, n_rb, first, count, skip_at, skip,
    K: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, P: tl.constexpr, UX: tl.constexpr, OFF: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr, MASKED: tl.constexpr, IDX: tl.constexpr,
):
    # Per LR row h and row of taps dy, the block's outputs are one matrix product: y[c, (i, q, j)] += x[c, window
    # column u] @ B[u, (i, q, j)], B the band of the kernels (B[u, (i, q, j)] = K[(dx*K + dy)*S*S + i*S + j, h,
    # w0 + q] where dx = u - q + PAD - OFF is a tap). Rows of x outside the image are read clamped, their B zeroed.
    PAD: tl.constexpr = (K - 1) // 2
    n, cb, h0, h1, w0 = _mma_program(n_cb, n_rb, H, first, count, skip_at, skip, ROWS, P)
    sxn, sxc, sxh, sxw = strides_as(sxn, sxc, sxh, sxw, IDX)
    skn, skc, skh, skw = strides_as(skn, skc, skh, skw, IDX)
    syn, syc, syh, syw = strides_as(syn, syc, syh, syw, IDX)
    c, c_ok = channel_block(cb, C, BLOCK_C, -1)  # padding channels read a real one and are not stored
    c, c_ok = c[:, None], c_ok[:, None]
    col = w0 - OFF + tl.arange(0, UX)[None, :]
    dx, sub, b_ok, i, hr, q, real = _mma_band(w0, W, P, S, SP, UX, OFF, K)
    x_pix = x_ptr + n * sxn + c * sxc + col * sxw
    k_pix = k_ptr + n * skn + (w0 + q)[None, :] * skw + (dx * K * S * S + sub) * skc
    y_pix = y_ptr + n * syn + c * syc + i[None, :] * syh + hr[None, :] * syw
    y_ok = c_ok & real[None, :]
    for h in tl.range(h0, h1):
        acc = tl.zeros([BLOCK_C, SP * P * SP], dtype=tl.float32)
        for dy in tl.static_range(K):
            row, row_ok = clamp_row(h + dy - PAD, H)
            x_row = x_pix + row * sxh  # one scalar offset per load: one multiply-add per element forms its address
            if MASKED:
                a = tl.load(x_row, mask=(col >= 0) & (col < W), other=0.0)
            else:
                a = tl.load(x_row)
            b = tl.load(k_pix + (h * skh + (dy * S * S) * skc), mask=b_ok, other=0.0)
            acc = _dot(a, tl.where(row_ok, b, 0.0), acc)
        tl.store(y_pix + (S * h) * syh, acc.to(y_ptr.dtype.element_ty), mask=y_ok)


@triton.jit
def dx_mma_kernel(
    g_ptr, k_ptr, dx_ptr,
    C, H, W,
    sgn, sgc, sgh, sgw,
    skn, skc, skh, skw,
    sdn, sdc, sdh, sdw,
    n_cb, n_rb, first, count, skip_at, skip,
    K: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, P: tl.constexpr, UX: tl.constexpr, OFF: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr, MASKED: tl.constexpr, IDX: tl.constexpr,
):
    # dx[c, y, x0 + q] = sum over taps of the LR pixels (h, w) that read it: per row of taps dy (source row
    # h = y - dy + PAD) and sub-pixel row i, a product grad_out[c, (u, j)] @ B[(u, j), q] over a window of UX source
    # columns w = x0 - OFF + u and their sub-pixel columns j, B[(u, j), q] = K[(dx*K + dy)*S*S + i*S + j, h, w]
    # where dx = q - u + OFF + PAD is a tap (the transposed band of the forward).
    PAD: tl.constexpr = (K - 1) // 2
    n, cb, y0, y1, x0 = _mma_program(n_cb, n_rb, H, first, count, skip_at, skip, ROWS, P)
    sgn, sgc, sgh, sgw = strides_as(sgn, sgc, sgh, sgw, IDX)
    skn, skc, skh, skw = strides_as(skn, skc, skh, skw, IDX)
    sdn, sdc, sdh, sdw = strides_as(sdn, sdc, sdh, sdw, IDX)
    c, c_ok = channel_block(cb, C, BLOCK_C, -1)
    c, c_ok = c[:, None], c_ok[:, None]
    kk = tl.arange(0, UX * SP)  # (u, j): with SP == S consecutive HR columns from S*(x0 - OFF)
    u, j = kk // SP, kk % SP
    w = x0 - OFF + u
    q = tl.arange(0, P)
    dx = q[None, :] - u[:, None] + (OFF + PAD)
    b_ok = (dx >= 0) & (dx < K) & (j < S)[:, None]
    if MASKED:
        b_ok = b_ok & ((w >= 0) & (w < W))[:, None]
    if SP == S:  # consecutive HR columns, as the compiler sees them: vector loads
        g_pix = g_ptr + n * sgn + c * sgc + (S * (x0 - OFF) + kk)[None, :] * sgw
    else:
        g_pix = g_ptr + n * sgn + c * sgc + (S * w + tl.minimum(j, S - 1))[None, :] * sgw
    k_pix = k_ptr + n * skn + w[:, None] * skw + (dx * K * S * S + tl.minimum(j, S - 1)[:, None]) * skc
    d_pix = dx_ptr + n * sdn + c * sdc + (x0 + q)[None, :] * sdw
    for y in tl.range(y0, y1):
        acc = tl.zeros([BLOCK_C, P], dtype=tl.float32)
        for dy in tl.static_range(K):
            hc, row_ok = clamp_row(y - dy + PAD, H)
            for i in tl.static_range(S):
                g_row = g_pix + (S * hc + i) * sgh
                if MASKED:
                    g = tl.load(g_row, mask=((w >= 0) & (w < W))[None, :], other=0.0)
                else:
                    g = tl.load(g_row)
                b = tl.load(k_pix + (hc * skh + (dy * S * S + i * S) * skc), mask=b_ok, other=0.0)
                acc = _dot(g, tl.where(row_ok, b, 0.0), acc)
        tl.store(d_pix + y * sdh, acc.to(dx_ptr.dtype.element_ty), mask=c_ok & (x0 + q < W)[None, :])


@triton.jit
def dk_mma_kernel(
    x_ptr, g_ptr, dk_ptr,
    C, H, W,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    sdn, sdc, sdh, sdw,
    n_cb, n_rb, first, count, skip_at, skip,
    K: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, P: tl.constexpr, UX: tl.constexpr, OFF: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_C: tl.constexpr, MASKED: tl.constexpr, IDX: tl.constexpr,
):
    # dK of the block's pixels, per row of taps dy: R[u, (i, q, j)] = sum_c x[c, h + dy - PAD, u]^T @ grad_out[c,
    # (i, q, j)] over blocks of channels (n_cb of them, a loop), whose band entries (dx = u - q + PAD - OFF a tap)
    # are dK[(dx*K + dy)*S*S + i*S + j, h, w0 + q]: the forward's band, stored instead of loaded.
    PAD: tl.constexpr = (K - 1) // 2
    n, _, h0, h1, w0 = _mma_program(1, n_rb, H, first, count, skip_at, skip, ROWS, P)
    sxn, sxc, sxh, sxw = strides_as(sxn, sxc, sxh, sxw, IDX)
    sgn, sgc, sgh, sgw = strides_as(sgn, sgc, sgh, sgw, IDX)
    sdn, sdc, sdh, sdw = strides_as(sdn, sdc, sdh, sdw, IDX)
    c = tl.arange(0, BLOCK_C)[:, None]
    col = w0 - OFF + tl.arange(0, UX)[None, :]
    dx, sub, d_ok, i, hr, q, real = _mma_band(w0, W, P, S, SP, UX, OFF, K)
    x_pix = x_ptr + n * sxn + c * sxc + col * sxw
    g_pix = g_ptr + n * sgn + c * sgc + i[None, :] * sgh + hr[None, :] * sgw
    d_pix = dk_ptr + n * sdn + (w0 + q)[None, :] * sdw + (dx * K * S * S + sub) * sdc
    g_ok = real[None, :]
    for h in tl.range(h0, h1):
        for dy in tl.static_range(K):
            row, row_ok = clamp_row(h + dy - PAD, H)
            x_row = x_pix + row * sxh
            acc = tl.zeros([UX, SP * P * SP], dtype=tl.float32)
            for cb in tl.range(0, n_cb):
                c0 = cb * BLOCK_C
                if MASKED:  # x and grad_out are zero outside the image: both enter the channel sum
                    a = tl.load(x_row + c0 * sxc, mask=(c0 + c < C) & (col >= 0) & (col < W), other=0.0)
                    g = tl.load(g_pix + (c0 * sgc + (S * h) * sgh), mask=(c0 + c < C) & g_ok, other=0.0)
                else:
                    a = tl.load(x_row + c0 * sxc, mask=c0 + c < C, other=0.0)
                    g = tl.load(g_pix + (c0 * sgc + (S * h) * sgh), mask=c0 + c < C, other=0.0)
                acc = _dot(tl.trans(a), g, acc)
            acc = tl.where(row_ok, acc, 0.0)
            tl.store(d_pix + (h * sdh + (dy * S * S) * sdc), acc.to(dk_ptr.dtype.element_ty), mask=d_ok)
