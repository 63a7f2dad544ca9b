"""CUDA-core Triton kernels of the depthwise dynamic filter: forward, grad wrt x, grad wrt kernels.

Layouts: :mod:`udvd_triton.kernels.layout`; ``t = dx*k + dy`` is the tap, ``sub = i*s + j`` the sub-pixel,
``p = (k-1)//2``. Launched by :mod:`udvd_triton.kernels.launch` with tiles from :mod:`udvd_triton.kernels.policy`.

Depthwise kernels (what the model runs)
---------------------------------------
The op is memory-bound: per high-resolution output pixel the forward moves 25 kernel values (k=5) and ~4 image
values, and does 25 multiply-adds per channel. The kernels are built so that the instructions they issue stay
below the bytes they move (benchmarks/kernel_report.py reads that off the sm_90 build):

* One warp per program, one LR row ``h`` per program, ``BW = 32*V`` consecutive LR columns: each thread owns ``V``
  consecutive columns (``V*itemsize = 16`` bytes of the kernels tensor) and, in registers, every channel of the
  channel block and every sub-pixel. Loads of the kernels tensor are 16-byte vectors, and x / grad_out / weights
  all arrive in the accumulator's own register layout: no shared memory, no barrier.
* The k*k taps are unrolled (``tl.static_range``); rows outside the image are skipped by a branch that is uniform
  over the program (h is), so the row part of the zero padding costs nothing per element.
* The column part costs nothing either in *interior* column blocks (every tap inside the image): they are a
  separate launch compiled with ``MASKED=False``, without any mask. Only the first / last column blocks of each
  row (``MASKED=True``) test columns.
* Taps read columns shifted by ``dx - p``, yet forward and grad-x load only aligned 16-byte vectors: per row of
  taps a thread loads one aligned *window* of UW LR columns (``x0 - OFF`` on) of the shifted tensor (forward: x,
  grad-x: grad_out) holding the source columns of all its taps, splits it into columns in registers
  (:func:`split_columns`, tuples of tensors) and gives each tap its V columns (:func:`stack_columns`); the splits and joins
  move no data. Aligned vectors stay 16 bytes wide in the masked edge blocks too (their masks are constant per
  vector when W is a multiple of 16 elements).
* Channels are a tensor axis inside the thread (``BLOCK_C``), so the weights of a pixel are loaded once per
  channel block; the channel block is the fastest program index, so the programs sharing those weights run side by
  side and the kernels tensor comes from DRAM once (from L2 for the other channel blocks) whatever C is. When C is
  smaller than the block (RGB: 3 of 4) the count is compiled in (``C_STATIC``): the padding channel's loads fold
  away.
* Forward: ``y[c, s*h+i, s*w+j] += x[c, h+dy-p, w+dx-p] * K[t*s*s + i*s + j, h, w]``, accumulator
  ``[BLOCK_C, 1, LANES, V, SIB*SP]`` (SIB sub-pixel rows per program, SP = s rounded up to a power of two): x
  columns from the row's window, the kernels of a tap as a run tile of the sub-pixels. The thread's
  ``V x s`` values of one HR row are consecutive HR columns; :func:`to_runs` relabels them (no data moves) so
  the store is 16-byte vectors too.
* Grad-x (gather form, no atomics): the program owns ``dx[c, y, x0:x0+BW]`` and sums, over taps and sub-pixels,
  ``grad_out[c, s*h+i, s*w+j] * K[t*s*s+i*s+j, h, w]`` at the LR pixel ``(h, w) = (y-dy+p, x-dx+p)`` that reads it.
  grad_out comes as a window per row of taps and sub-pixel row (16-byte runs of HR columns); the kernels tensor,
  read at columns shifted by ``p - dx``, as the one or two aligned vectors around a tap's columns, shifted in
  registers the same way (:func:`load_shifted`). Accumulator ``[BLOCK_C, 1, LANES, V, SP]``, summed over the
  sub-pixel columns at the end. Rows of taps are unrolled up to k = 5, a loop beyond.
* Grad-kernels: ``dK[t*s*s+sub, h, w] = sum_c x[c, h+dy-p, w+dx-p] * grad_out[c, s*h+i, s*w+j]``. grad_out does
  not depend on the tap: with all channels in one block it is loaded once per program and kept in registers, and
  each tap is a product with a shifted x tile summed over the in-thread channel axis, stored right away (vector
  stores along w: 16 bytes, 8 for 16-bit kernels). More channels than a block (:func:`dk_depthwise_loop_kernel`):
  one LR column per thread keeps every tap and sub-pixel of its pixel in registers and loops over the channels once.
* s = 3 pads the sub-pixel axes to 4: the padding sub-pixels read a real one and are never stored (grad-x, which
  sums over sub-pixels, zeroes them with constant masks that fold away). When rows do not start on 16 bytes (widths
  that are not multiples of 16 elements) no vector access exists and a thread takes one column.
* Register budgets (:func:`_depthwise_tile`, the launchers) keep every build spill-free; tests/test_kernels_sm90.py
  compiles the specialisation families for sm_90 in CI and benchmarks/kernel_report.py reports the rest.
"""

import triton
import triton.language as tl

from udvd_triton.kernels.tiles import (
    channel_block,
    clamp_row,
    decode_program,
    from_runs,
    load_runs,
    load_shifted,
    run_columns,
    split_columns,
    stack_columns,
    store_runs,
    strides_as,
    to_runs,
    widen,
)


@triton.jit
def fwd_depthwise_kernel(
    x_ptr, k_ptr, y_ptr,
    C, H, W,
    sxn, sxc, sxh, sxw,
    skn, skc, skh, skw,
    syn, syc, syh, syw,
    n_cb, n_sb, first, count, skip_at, skip,
    K: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, SIB: tl.constexpr, BLOCK_C: tl.constexpr,
    BW: tl.constexpr, LANES: tl.constexpr, E: tl.constexpr, C_STATIC: tl.constexpr, MASKED: tl.constexpr,
    ACC: tl.constexpr, IDX: tl.constexpr, OFF: tl.constexpr, UW: tl.constexpr, XE: tl.constexpr,
    LANES_FIRST: tl.constexpr,
):
    P: tl.constexpr = (K - 1) // 2
    V: tl.constexpr = BW // LANES
    Q: tl.constexpr = SIB * SP  # the program's sub-pixels (i, j), i-major
    n, cb, sb, h, w0 = decode_program(n_cb, n_sb, H, first, count, skip_at, skip, BW)
    sxn, sxc, sxh, sxw = strides_as(sxn, sxc, sxh, sxw, IDX)
    skn, skc, skh, skw = strides_as(skn, skc, skh, skw, IDX)
    syn, syc, syh, syw = strides_as(syn, syc, syh, syw, IDX)
    ch, c_ok = channel_block(cb, C, BLOCK_C, C_STATIC)
    x0 = w0 + tl.arange(0, LANES)[None, None, None, :, None] * V  # first of the thread's V columns (run-tile axes)
    # x window of a thread: LR columns x0 - OFF + u (u < UW), every tap's source columns of a row, as runs of XE
    u = tl.arange(0, UW // XE)[None, None, :, None, None] * XE + tl.arange(0, XE)[None, None, None, None, :]
    x_col = x_ptr + n * sxn + h * sxh + ch[:, None, None, None, None] * sxc + (x0 - OFF) * sxw
    x_ok = (x0 - OFF + u >= 0) & (x0 - OFF + u < W)
    # kernels of a tap: the thread's V columns of the program's sub-pixels, a [1, Q, 1, LANES, V] run tile
    q = tl.arange(0, Q)[None, :, None, None, None]
    iq = tl.minimum(sb * SIB + q // SP, S - 1)  # s = 3: padding sub-pixels read a real one
    v = tl.arange(0, V)[None, None, None, None, :]
    k_pix = k_ptr + n * skn + h * skh + (x0 + v) * skw + (iq * S + tl.minimum(q % SP, S - 1)) * skc
    k_ok = x0 + v < W
    acc = tl.zeros([BLOCK_C, 1, LANES, V, Q], dtype=ACC)
    for dy in tl.static_range(K):
        if (h + dy - P >= 0) & (h + dy - P < H):  # uniform over the program: rows outside the image add nothing
            xw = widen(load_runs(x_col + (dy - P) * sxh + u * sxw, x_ok, MASKED, LANES_FIRST), ACC)  # [C, 1, G, LANES, XE]
            x_cols = split_columns(tl.reshape(tl.permute(xw, [0, 1, 3, 2, 4]), [BLOCK_C, 1, LANES, UW, 1]))
            for dx in tl.static_range(K):
                wt = widen(load_runs(k_pix + ((dx * K + dy) * S * S) * skc, k_ok, MASKED, LANES_FIRST), ACC)
                wt = tl.reshape(tl.permute(wt, [0, 3, 2, 4, 1]), [1, 1, LANES, V, Q])
                acc += stack_columns(x_cols, OFF + dx - P, V) * wt

    # -> [BLOCK_C, SIB, BW, SP]: LR column lane * V + v, the layout of to_runs
    out = tl.reshape(acc, [BLOCK_C, LANES, V, SIB, SP])
    out = tl.reshape(tl.permute(out, [0, 3, 1, 2, 4]), [BLOCK_C, SIB, BW, SP]).to(y_ptr.dtype.element_ty)
    i = sb * SIB + tl.arange(0, SIB)[None, :, None, None]
    y_base = y_ptr + n * syn + ch[:, None, None, None] * syc + (S * h + i) * syh
    if SP == S:  # 16-byte runs of consecutive HR columns
        r = run_columns(w0, BW, S, E, LANES)[None, None, :, :, :]
        ok = c_ok[:, None, None, None, None] & (r < S * W)
        store_runs(y_base[:, :, :, :, None] + r * syw, to_runs(out, BLOCK_C, SIB, BW, S, E, LANES), ok, LANES_FIRST)
    else:
        w = w0 + tl.arange(0, BW)[None, None, :, None]
        j = tl.arange(0, SP)[None, None, None, :]
        tl.store(y_base + (S * w + j) * syw, out, mask=c_ok[:, None, None, None] & (w < W) & (i < S) & (j < S))


@triton.jit
def dx_depthwise_kernel(
    g_ptr, k_ptr, dx_ptr,
    C, H, W,
    sgn, sgc, sgh, sgw,
    skn, skc, skh, skw,
    sdn, sdc, sdh, sdw,
    n_cb, n_sb, first, count, skip_at, skip,
    K: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, SIB: tl.constexpr, BLOCK_C: tl.constexpr,
    BW: tl.constexpr, LANES: tl.constexpr, E: tl.constexpr, C_STATIC: tl.constexpr, MASKED: tl.constexpr,
    ACC: tl.constexpr, IDX: tl.constexpr, OFF: tl.constexpr, UW: tl.constexpr, DY: tl.constexpr,
    LANES_FIRST: tl.constexpr,
):
    # dx[c, y, x] = sum_{t, i, j} g[c, S*h+i, S*w+j] * K[t*S*S + i*S+j, h, w] with (h, w) = (y-dy+P, x-dx+P)
    P: tl.constexpr = (K - 1) // 2
    V: tl.constexpr = BW // LANES
    n, cb, _, y, w0 = decode_program(n_cb, n_sb, H, first, count, skip_at, skip, BW)
    sgn, sgc, sgh, sgw = strides_as(sgn, sgc, sgh, sgw, IDX)
    skn, skc, skh, skw = strides_as(skn, skc, skh, skw, IDX)
    sdn, sdc, sdh, sdw = strides_as(sdn, sdc, sdh, sdw, IDX)
    ch, c_ok = channel_block(cb, C, BLOCK_C, C_STATIC)
    c = ch[:, None, None, None, None]
    lane = tl.arange(0, LANES)[None, None, None, :, None]  # lane axis of the run tiles (see load_runs)
    x0 = w0 + lane * V  # first of the thread's V output columns
    j = tl.arange(0, SP)[None, :, None, None, None]
    # grad_out window of a thread: LR columns x0 - OFF + u (u < UW), the source pixels of all its taps of a row
    if SP == S:  # as G runs of E HR columns, [BLOCK_C, 1, G, LANES, E]
        G: tl.constexpr = UW * S // E
        e = tl.arange(0, G)[None, None, :, None, None] * E + tl.arange(0, E)[None, None, None, None, :]
    else:  # s = 3: [BLOCK_C, SP, UW, LANES, 1] (sub-pixel column, window column); padding sub-pixels read a real one
        e = S * tl.arange(0, UW)[None, None, :, None, None] + tl.minimum(j, S - 1)
    q = S * (x0 - OFF) + e
    # a pointer per thread and channel, and the elements' constant offsets from it (immediates of the loads)
    g_col = c * sgc + (S * (x0 - OFF)) * sgw
    g_ok = (q >= 0) & (q < S * W)
    k_col = x0 * skw + tl.minimum(j, S - 1) * skc  # kernels as [1, SP, ., LANES, .] run tiles of the columns j
    acc = tl.zeros([BLOCK_C, 1, LANES, V, SP], dtype=ACC)
    g_row = g_ptr + n * sgn + S * (y + P) * sgh  # scalar pointers, moved by scalar steps
    k_row = k_ptr + n * skn + (y + P) * skh
    k_step = (K * S * S) * skc  # from tap (dy, dx) to (dy, dx + 1)
    for dy0 in range(0, K, DY):  # DY rows of taps unrolled per trip
        for d in tl.static_range(DY):
            dy = dy0 + d
            if (y - dy + P >= 0) & (y - dy + P < H):  # uniform over the program: rows outside add nothing
                for i in tl.static_range(S):
                    gw = widen(load_runs(g_row + i * sgh + g_col + e * sgw, g_ok, MASKED, LANES_FIRST), ACC)
                    if SP == S:  # -> [BLOCK_C, 1, LANES, UW, S]
                        gw = tl.reshape(tl.permute(gw, [0, 1, 3, 2, 4]), [BLOCK_C, 1, LANES, UW, S])
                    else:
                        gw = tl.where(j < S, gw, 0.0)
                        gw = tl.reshape(tl.permute(gw, [0, 4, 3, 2, 1]), [BLOCK_C, 1, LANES, UW, SP])
                    g_cols = split_columns(gw)
                    k_tap = k_row + i * S * skc
                    for dx in tl.static_range(K):
                        wt = widen(load_shifted(k_tap + k_col, skw, x0, W, P - dx, V, MASKED, LANES_FIRST), ACC)
                        acc += stack_columns(g_cols, OFF + P - dx, V) * wt
                        k_tap += k_step
            g_row -= S * sgh
            k_row += S * S * skc - skh

    dxv = tl.reshape(tl.sum(acc, axis=4), [BLOCK_C, BW])
    xo = w0 + tl.arange(0, BW)[None, :]
    d_off = n * sdn + ch[:, None] * sdc + y * sdh + xo * sdw
    tl.store(dx_ptr + d_off, dxv.to(dx_ptr.dtype.element_ty), mask=c_ok[:, None] & (xo < W))


@triton.jit
def _load_hr(rows, col_stride, w0, W, BLOCK_C: tl.constexpr, SIB: tl.constexpr, BW: tl.constexpr, S: tl.constexpr,
             SP: tl.constexpr, E: tl.constexpr, LANES: tl.constexpr, MASKED: tl.constexpr, ACC: tl.constexpr,
             LANES_FIRST: tl.constexpr):
    """grad_out at the block's HR pixels, [BLOCK_C, SIB, BW, SP], in the accumulator's layout and dtype, zero beyond
    column W (MASKED). ``rows``: [BLOCK_C, SIB, 1, 1] pointers to column 0 of the HR rows. With SP == S as 16-byte
    runs of HR columns (:func:`to_runs`); s = 3 pads the sub-pixels to 4, the padding ones reading a real one."""
    if SP == S:
        q = run_columns(w0, BW, S, E, LANES)[None, None, :, :, :]
        v = load_runs(rows[:, :, :, :, None] + q * col_stride, q < S * W, MASKED, LANES_FIRST)
        return widen(from_runs(v, BLOCK_C, SIB, BW, S, E, LANES), ACC)
    w = w0 + tl.arange(0, BW)[None, None, :, None]
    j = tl.minimum(tl.arange(0, SP), S - 1)[None, None, None, :]
    if MASKED:
        return widen(tl.load(rows + (S * w + j) * col_stride, mask=w < W, other=0.0), ACC)
    return widen(tl.load(rows + (S * w + j) * col_stride), ACC)


@triton.jit
def dk_depthwise_kernel(
    x_ptr, g_ptr, dk_ptr,
    C, H, W,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    sdn, sdc, sdh, sdw,
    n_cb, n_sb, first, count, skip_at, skip,
    K: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, SIB: tl.constexpr, BLOCK_C: tl.constexpr,
    BW: tl.constexpr, LANES: tl.constexpr, E: tl.constexpr, C_STATIC: tl.constexpr, MASKED: tl.constexpr,
    ACC: tl.constexpr, IDX: tl.constexpr, LANES_FIRST: tl.constexpr,
):
    # dK[t*S*S + i*S+j, h, w] = sum_c x[c, h+dy-P, w+dx-P] * g[c, S*h+i, S*w+j] with every channel in one block:
    # grad_out is loaded once and each tap is a product with a shifted x tile summed over the channel axis. grad_out
    # and x are zero where masked (edge blocks, padding sub-pixels and channels), since both enter the channel sum
    P: tl.constexpr = (K - 1) // 2
    n, _, sb, h, w0 = decode_program(n_cb, n_sb, H, first, count, skip_at, skip, BW)
    sxn, sxc, sxh, sxw = strides_as(sxn, sxc, sxh, sxw, IDX)
    sgn, sgc, sgh, sgw = strides_as(sgn, sgc, sgh, sgw, IDX)
    sdn, sdc, sdh, sdw = strides_as(sdn, sdc, sdh, sdw, IDX)
    i = sb * SIB + tl.arange(0, SIB)[None, :, None, None]
    w = w0 + tl.max_contiguous(tl.arange(0, BW), BW // LANES)[None, None, :, None]  # see dx_depthwise_kernel
    j = tl.arange(0, SP)[None, None, None, :]
    g_ok = (w < W) & (i < S) & (j < S)
    d_pix = dk_ptr + n * sdn + h * sdh + w * sdw + (i * S + j) * sdc
    c, c_ok = channel_block(0, C, BLOCK_C, C_STATIC)
    c = c[:, None, None, None]
    g_rows = g_ptr + n * sgn + c * sgc + (S * h + tl.minimum(i, S - 1)) * sgh
    g_all = _load_hr(g_rows, sgw, w0, W, BLOCK_C, SIB, BW, S, SP, E, LANES, MASKED, ACC, LANES_FIRST)
    if C_STATIC != 0:
        g_all = tl.where(c_ok[:, None, None, None], g_all, 0.0)
    x_chan = x_ptr + n * sxn + h * sxh + w * sxw + c * sxc
    for dy in tl.static_range(K):
        if (h + dy - P >= 0) & (h + dy - P < H):  # uniform over the program, one branch per row of taps
            for dx in tl.static_range(K):
                x_tap = x_chan + (dy - P) * sxh + (dx - P) * sxw
                if MASKED:
                    xv = tl.load(x_tap, mask=(w + dx - P >= 0) & (w + dx - P < W), other=0.0)
                else:
                    xv = tl.load(x_tap)
                if C_STATIC != 0:  # constants per register: folds away
                    xv = tl.where(c_ok[:, None, None, None], xv, 0.0)
                _store_taps(d_pix, tl.sum(widen(xv, ACC) * g_all, axis=0), dx, dy, sdc, g_ok, K, S, MASKED, SP == S)
        else:  # taps reading rows outside the image: zero
            for dx in tl.static_range(K):
                _store_taps(d_pix, tl.zeros([SIB, BW, SP], dtype=ACC), dx, dy, sdc, g_ok, K, S, MASKED, SP == S)


@triton.jit
def dk_depthwise_loop_kernel(
    x_ptr, g_ptr, dk_ptr,
    C, H, W,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    sdn, sdc, sdh, sdw,
    n_tb, n_sb, first, count, skip_at, skip,
    K: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, SIB: tl.constexpr, TR: tl.constexpr, TP: tl.constexpr,
    BW: tl.constexpr, LANES: tl.constexpr, E: tl.constexpr, MASKED: tl.constexpr, ACC: tl.constexpr,
    IDX: tl.constexpr, LANES_FIRST: tl.constexpr,
):
    # The same dK for more channels than registers hold next to grad_out: the program keeps every tap of TR rows of
    # taps (tap block tb) and every sub-pixel of SIB sub-pixel rows in registers ([TP, SIB, BW, SP], tap a = row
    # a // K of the block, column a % K) and loops over the channels once, so each grad_out and x value is loaded
    # once per program. x rows outside the image are read clamped and their taps zeroed at the store.
    P: tl.constexpr = (K - 1) // 2
    n, tb, sb, h, w0 = decode_program(n_tb, n_sb, H, first, count, skip_at, skip, BW)
    sxn, sxc, sxh, sxw = strides_as(sxn, sxc, sxh, sxw, IDX)
    sgn, sgc, sgh, sgw = strides_as(sgn, sgc, sgh, sgw, IDX)
    sdn, sdc, sdh, sdw = strides_as(sdn, sdc, sdh, sdw, IDX)
    a = tl.arange(0, TP)[:, None, None, None]
    dy = tb * TR + a // K
    dx = a % K
    row = h + dy - P
    tap = (a < TR * K) & (dy < K)  # the block's real taps (not padding, not past the last tap row)
    i = sb * SIB + tl.arange(0, SIB)[None, :, None, None]
    w = w0 + tl.arange(0, BW)[None, None, :, None]
    j = tl.arange(0, SP)[None, None, None, :]
    row, row_ok = clamp_row(row, H)
    x_pix = x_ptr + n * sxn + row * sxh + (w + dx - P) * sxw
    g_rows = g_ptr + n * sgn + (S * h + tl.minimum(i, S - 1)) * sgh
    acc = tl.zeros([TP, SIB, BW, SP], dtype=ACC)
    for ch in range(C):
        gv = _load_hr(g_rows + ch * sgc, sgw, w0, W, 1, SIB, BW, S, SP, E, LANES, MASKED, ACC, LANES_FIRST)
        if MASKED:
            xv = tl.load(x_pix + ch * sxc, mask=(w + dx - P >= 0) & (w + dx - P < W), other=0.0)
        else:
            xv = tl.load(x_pix + ch * sxc)
        acc += widen(xv, ACC) * gv
    d_tap = dk_ptr + n * sdn + h * sdh + w * sdw + ((dx * K + dy) * (S * S) + i * S + j) * sdc
    # tap and j < S in the where, not only in the store mask: constants per register for the padding taps and
    # sub-pixel columns, so their loads and FMAs fold away (a masked store's value is kept alive whatever its mask)
    out = tl.where(tap & (j < S) & row_ok, acc, 0.0).to(dk_ptr.dtype.element_ty)
    tl.store(d_tap, out, mask=tap & (w < W) & (i < S) & (j < S))


@triton.jit
def _store_taps(d_pix, dk, dx: tl.constexpr, dy: tl.constexpr, sdc, ok, K: tl.constexpr, S: tl.constexpr,
                MASKED: tl.constexpr, FULL_SUB: tl.constexpr):
    """Store tap (dy, dx) of grad-kernels: channel (dx*K + dy)*S*S + sub at the block's pixels."""
    out = dk.to(d_pix.dtype.element_ty)[None, :, :, :]
    d_tap = d_pix + ((dx * K + dy) * S * S) * sdc
    if MASKED or not FULL_SUB:
        tl.store(d_tap, out, mask=ok)
    else:
        tl.store(d_tap, out)
