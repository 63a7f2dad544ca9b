"""Triton kernels of the full-mode dynamic filter (``depthwise=False``: a C x C map per pixel and tap).

Full mode (depthwise=False) keeps the simpler flattened-plane kernels with run-time tap and channel loops: the
model does not use it, and its per-pixel C x C matrices make it compute-heavy rather than bandwidth-bound.
"""

import triton
import triton.language as tl



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
def fwd_full_kernel(
    x_ptr, k_ptr, y_ptr,
    C, H, W,
    sxn, sxc, sxh, sxw,
    skn, skc, skh, skw,
    syn, syc, syh, syw,
    K: tl.constexpr, S: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    # y[o, s*h+i, s*w+j] = sum_{ci, t} x[ci, tap] * K[((ci*K*K + t)*C + o)*S*S + sub]: per (ci, t) one input value
    # per element, applied to the block of output channels o along the tile's first axis
    OW = S * W
    n, cb, r, r_mask = _program_run(tl.cast(S * H, IDX) * OW, tl.cdiv(C, BLOCK_C), BLOCK_Q, IDX)
    oh = r // OW
    q = r % OW
    h = oh // S
    w = q // S
    sub = (oh % S) * S + q % S
    o = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    o_mask = o < C
    o_idx = tl.cast(o, IDX)
    x_base = x_ptr + n * sxn
    k_out = k_ptr + n * skn + (h * skh + w * skw + sub * skc)[None, :] + (o_idx * S * S * skc)[:, None]
    kq_mask = o_mask[:, None] & r_mask[None, :]
    acc = tl.zeros([BLOCK_C, BLOCK_Q], dtype=ACC)
    for ci in range(C):
        x_chan = x_base + tl.cast(ci, IDX) * sxc
        for t in range(K * K):
            yy, xx, valid = _tap(h, w, t, r_mask, H, W, K, 1)
            xv = tl.load(x_chan + yy * sxh + xx * sxw, mask=valid, other=0.0).to(ACC)
            wt = tl.load(k_out + (tl.cast(ci * K * K + t, IDX) * C * S * S) * skc, mask=kq_mask, other=0.0)
            acc += xv[None, :] * wt.to(ACC)
    y_off = n * syn + (o_idx * syc)[:, None] + (oh * syh + q * syw)[None, :]
    tl.store(y_ptr + y_off, acc.to(y_ptr.dtype.element_ty), mask=kq_mask)


@triton.jit
def dx_full_kernel(
    g_ptr, k_ptr, dx_ptr,
    C, H, W,
    sgn, sgc, sgh, sgw,
    skn, skc, skh, skw,
    sdn, sdc, sdh, sdw,
    K: tl.constexpr, S: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_X: tl.constexpr,
):
    # dx[c, y, x] = sum_{o, t, i, j} g[o, S*h+i, S*w+j] * K[((c*K*K + t)*C + o)*S*S + i*S+j, h, w] with
    # (h, w) = (y - dy + P, x - dx + P); input channel c along the tile's first axis
    n, cb, r, r_mask = _program_run(tl.cast(H, IDX) * W, tl.cdiv(C, BLOCK_C), BLOCK_X, IDX)
    y = r // W
    x = r % W
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    c_idx = tl.cast(c, IDX)
    g_base = g_ptr + n * sgn
    k_in = k_ptr + n * skn + (c_idx * (K * K * S * S) * C * skc)[:, None]
    acc = tl.zeros([BLOCK_C, BLOCK_X], dtype=ACC)
    for o in range(C):
        g_chan = g_base + tl.cast(o, IDX) * sgc
        for t in range(K * K):
            h, w, valid = _tap(y, x, t, r_mask, H, W, K, -1)
            wk_mask = c_mask[:, None] & valid[None, :]
            k_pix = k_in + (h * skh + w * skw)[None, :] + (tl.cast(t * C + o, IDX) * S * S) * skc
            for i in tl.static_range(S):
                for j in tl.static_range(S):
                    gv = tl.load(g_chan + (S * h + i) * sgh + (S * w + j) * sgw, mask=valid, other=0.0)
                    wt = tl.load(k_pix + tl.cast(i * S + j, IDX) * skc, mask=wk_mask, other=0.0).to(ACC)
                    acc += gv.to(ACC)[None, :] * wt
    d_off = n * sdn + (c_idx * sdc)[:, None] + (y * sdh + x * sdw)[None, :]
    tl.store(dx_ptr + d_off, acc.to(dx_ptr.dtype.element_ty), mask=c_mask[:, None] & r_mask[None, :])


@triton.jit
def dk_full_kernel(
    x_ptr, g_ptr, dk_ptr,
    C, H, W,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    sdn, sdc, sdh, sdw,
    K: tl.constexpr, S: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # dK[((c*K*K+t)*C+o)*S*S+i*S+j, h, w] = x[c, h+dy-P, w+dx-P] * g[o, S*h+i, S*w+j]: an outer product per
    # (c, t, sub), no reduction; output channel o along the tile's first axis
    n, ob, r, r_mask = _program_run(tl.cast(H, IDX) * W, tl.cdiv(C, BLOCK_C), BLOCK_W, IDX)
    h = r // W
    w = r % W
    x_base = x_ptr + n * sxn
    o = ob * BLOCK_C + tl.arange(0, BLOCK_C)
    o_mask = o < C
    o_idx = tl.cast(o, IDX)
    d_out = dk_ptr + n * sdn + (h * sdh + w * sdw)[None, :] + (o_idx * S * S * sdc)[:, None]
    ow_mask = o_mask[:, None] & r_mask[None, :]
    for i in tl.static_range(S):
        for j in tl.static_range(S):
            g_off = (S * h + i) * sgh + (S * w + j) * sgw
            gv = tl.load(g_ptr + n * sgn + (o_idx * sgc)[:, None] + g_off[None, :], mask=ow_mask, other=0.0)
            gv = gv.to(ACC)
            for ci in range(C):
                x_chan = x_base + tl.cast(ci, IDX) * sxc
                for t in range(K * K):
                    yy, xx, valid = _tap(h, w, t, r_mask, H, W, K, 1)
                    xv = tl.load(x_chan + yy * sxh + xx * sxw, mask=valid, other=0.0).to(ACC)
                    ch = tl.cast(ci * K * K + t, IDX) * C * S * S + (i * S + j)
                    tl.store(d_out + ch * sdc, (gv * xv[None, :]).to(dk_ptr.dtype.element_ty), mask=ow_mask)
