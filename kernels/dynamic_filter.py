"""Fused Triton kernels of the dynamic filter (forward, grad wrt x, grad wrt kernels) and their torch.library op.

Layouts and formulas are those of :mod:`udvd_triton.ops` (API.md "Dynamic filter op"); ``t = dx*k + dy`` is the tap,
``sub = i*s + j`` the sub-pixel, ``p = (k-1)//2``.

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
  (:func:`_columns`, tuples of tensors) and gives each tap its V columns (:func:`_stack`); the splits and joins
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
  ``V x s`` values of one HR row are consecutive HR columns; :func:`_to_runs` relabels them (no data moves) so
  the store is 16-byte vectors too.
* Grad-x (gather form, no atomics): the program owns ``dx[c, y, x0:x0+BW]`` and sums, over taps and sub-pixels,
  ``grad_out[c, s*h+i, s*w+j] * K[t*s*s+i*s+j, h, w]`` at the LR pixel ``(h, w) = (y-dy+p, x-dx+p)`` that reads it.
  grad_out comes as a window per row of taps and sub-pixel row (16-byte runs of HR columns); the kernels tensor,
  read at columns shifted by ``p - dx``, as the one or two aligned vectors around a tap's columns, shifted in
  registers the same way (:func:`_load_shifted`). Accumulator ``[BLOCK_C, 1, LANES, V, SP]``, summed over the
  sub-pixel columns at the end. Rows of taps are unrolled up to k = 5, a loop beyond.
* Grad-kernels: ``dK[t*s*s+sub, h, w] = sum_c x[c, h+dy-p, w+dx-p] * grad_out[c, s*h+i, s*w+j]``. grad_out does
  not depend on the tap: with all channels in one block it is loaded once per program and kept in registers, and
  each tap is a product with a shifted x tile summed over the in-thread channel axis, stored right away (vector
  stores along w: 16 bytes, 8 for 16-bit kernels). More channels than a block (:func:`_dk_depthwise_loop_kernel`):
  one LR column per thread keeps every tap and sub-pixel of its pixel in registers and loops over the channels once.
* s = 3 pads the sub-pixel axes to 4: the padding sub-pixels read a real one and are never stored (grad-x, which
  sums over sub-pixels, zeroes them with constant masks that fold away). When rows do not start on 16 bytes (widths
  that are not multiples of 16 elements) no vector access exists and a thread takes one column.
* Register budgets (:func:`_depthwise_tile`, the launchers) keep every build spill-free; tests/test_kernels_sm90.py
  compiles the specialisation families for sm_90 in CI and benchmarks/kernel_report.py reports the rest.

Tensor-core kernels (16-bit x and kernels of one dtype, C >= 16)
---------------------------------------------------------------
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

Full mode (depthwise=False) keeps the simpler flattened-plane kernels with run-time tap and channel loops: the
model does not use it, and its per-pixel C x C matrices make it compute-heavy rather than bandwidth-bound.

Common
------
* Inputs are read through their strides, never copied: a ``.contiguous()`` of a channels-last kernels tensor (the
  largest tensor) would add a read and a write of it. Sample bases are int64; offsets inside a sample are int32
  unless a tensor's per-sample extent reaches 2**31 (then ``IDX`` = int64, and every offset product is formed in
  IDX before multiplying by a stride).
* x and kernels may have different float dtypes (fp32 x with bf16 kernels under autocast): each is loaded in its
  own dtype and converted in registers; fp16/bf16/fp32 accumulate in fp32, float64 (gradcheck) in float64.
  Results: y and dx in x's dtype, dkernels in kernels' dtype.
* fp contraction (FMA) is requested explicitly (``enable_fp_fusion=True``; Triton's default changes in 3.10).
* Tile sizes come from :func:`_depthwise_tile`; under the interpreter the same kernels run with bigger channel
  blocks (every program costs Python overhead there), so the code tested on the CPU is the code a GPU runs.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from udvd_triton.ops import check_inputs, kernel_channels

# Triton reads TRITON_INTERPRET when kernels are defined; CPU tensors can only run under the interpreter.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_LANES = 32  # threads of the one warp a depthwise program runs on (tests lower it to get many column blocks)


# ---- depthwise kernels ---------------------------------------------------------------------------------------------


@triton.jit
def _program(n_cb, n_sb, H, first, count, skip_at, skip, BW: tl.constexpr):
    """Decode the flat grid: channel block fastest (programs reading the same kernels values run side by side),
    then sub-pixel-row block, column block, LR row, sample. A launch covers ``count`` column blocks of BW columns
    per row from block ``first`` on; those from ``skip_at`` on are ``skip`` blocks further (the edge launch's
    right-hand blocks). Returns (sample as int64, channel block, sub-pixel-row block, row, first column of the
    block, a multiple of BW that the compiler sees: LLVM then merges the overlapping loads of neighbouring taps)."""
    pid = tl.program_id(0)
    cb = pid % n_cb
    rest = pid // n_cb
    sb = rest % n_sb
    rest = rest // n_sb
    e = rest % count
    rest = rest // count
    w0 = (first + e + tl.where(e >= skip_at, skip, 0)) * BW
    return tl.cast(rest // H, tl.int64), cb, sb, rest % H, w0


@triton.jit
def _channels(cb, C, BLOCK_C: tl.constexpr, C_STATIC: tl.constexpr):
    """Channel indices of block ``cb`` for addresses (clamped into range) and whether each is real.

    C_STATIC > 0: one block holds all C_STATIC < BLOCK_C channels, known when compiling, so both results are
    constants and the padding channels' loads fold away. C_STATIC == 0: BLOCK_C divides C. C_STATIC < 0: ragged.
    """
    if C_STATIC > 0:
        c = tl.arange(0, BLOCK_C)
        return tl.minimum(c, C_STATIC - 1), c < C_STATIC
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    if C_STATIC == 0:
        return c, tl.full([BLOCK_C], 1, tl.int1)
    return tl.minimum(c, C - 1), c < C


@triton.jit
def _clamp_row(row, H):
    """(row clamped into the image, whether it lies inside): rows outside are read clamped and their terms zeroed."""
    return tl.minimum(tl.maximum(row, 0), H - 1), (row >= 0) & (row < H)


@triton.jit
def _widen(v, ACC: tl.constexpr):
    """v in the accumulator dtype. bf16 widens by a 16-bit shift, written out as integer ops so that LLVM turns the
    upper half of a loaded pair into one mask (its own bf16 extension costs a byte permute plus a shift)."""
    if v.dtype == tl.bfloat16:
        v = (v.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    return v.to(ACC)


@triton.jit
def _strides(s0, s1, s2, s3, IDX: tl.constexpr):
    """A tensor's strides in the offset type, so that index * stride never wraps in int32 when IDX is int64."""
    return tl.cast(s0, IDX), tl.cast(s1, IDX), tl.cast(s2, IDX), tl.cast(s3, IDX)


@triton.jit
def _to_runs(t, BLOCK_C: tl.constexpr, SIB: tl.constexpr, BW: tl.constexpr, S: tl.constexpr, E: tl.constexpr,
             LANES: tl.constexpr):
    """[BLOCK_C, SIB, BW, S] (LR column, sub-pixel column) -> [BLOCK_C, SIB, G, LANES, E], element (g, l, e) being
    HR column ``l*V*S + g*E + e`` of the block (V = BW/LANES LR columns per thread). Thread l's registers already
    hold exactly those G runs of E consecutive HR columns, so this is a relabelling that moves no data, after which
    the store is G E-wide vectors per thread."""
    V: tl.constexpr = BW // LANES
    G: tl.constexpr = V * S // E
    t = tl.reshape(t, [BLOCK_C, SIB, LANES, G, E // S, S])
    t = tl.permute(t, [0, 1, 3, 2, 4, 5])
    return tl.reshape(t, [BLOCK_C, SIB, G, LANES, E])


@triton.jit
def _from_runs(t, BLOCK_C: tl.constexpr, SIB: tl.constexpr, BW: tl.constexpr, S: tl.constexpr, E: tl.constexpr,
               LANES: tl.constexpr):
    """The inverse of :func:`_to_runs`: a tile loaded as 16-byte runs of HR columns, in the accumulator's layout."""
    V: tl.constexpr = BW // LANES
    G: tl.constexpr = V * S // E
    t = tl.reshape(t, [BLOCK_C, SIB, G, LANES, E // S, S])
    t = tl.permute(t, [0, 1, 3, 2, 4, 5])
    return tl.reshape(t, [BLOCK_C, SIB, BW, S])


# Triton's coalescing gives a load's lanes to its axes of equal contiguity in an order that changed between versions:
# triton 3.6 (the H200 machine's) first axis first, 3.9 last axis first. A run tile [C, SIB, G, LANES, E] must have
# every lane on LANES for the relabelling to the accumulator's layout to stay in registers; 3.6 needs that axis first.
_RUN_LANES_FIRST = tl.constexpr(tuple(int(v) for v in triton.__version__.split(".")[:2]) <= (3, 6))


@triton.jit
def _load_runs(ptr, mask, MASKED: tl.constexpr):
    """Load a [C, SIB, G, LANES, E] run tile (:func:`_to_runs`), zero where ``mask`` is false (MASKED), with the lanes
    on the LANES axis under every Triton version (see ``_RUN_LANES_FIRST``). Without it, triton 3.6's grad-x put
    one shared-memory round trip and barrier into every tap. Every grad_out run tile is loaded through it."""
    if _RUN_LANES_FIRST:
        if MASKED:
            mask = tl.permute(tl.broadcast_to(mask, ptr.shape), [3, 0, 1, 2, 4])
        ptr = tl.permute(ptr, [3, 0, 1, 2, 4])
    if MASKED:
        v = tl.load(ptr, mask=mask, other=0.0)
    else:
        v = tl.load(ptr)
    if _RUN_LANES_FIRST:
        v = tl.permute(v, [1, 2, 3, 0, 4])
    return v


@triton.jit
def _store_runs(ptr, value, mask):
    """Store a [C, SIB, G, LANES, E] run tile where ``mask``, its lanes on LANES as in :func:`_load_runs` (without
    the permutation, triton 3.6 moved every forward output through shared memory)."""
    if _RUN_LANES_FIRST:
        mask = tl.permute(tl.broadcast_to(mask, ptr.shape), [3, 0, 1, 2, 4])
        ptr = tl.permute(ptr, [3, 0, 1, 2, 4])
        value = tl.permute(value, [3, 0, 1, 2, 4])
    tl.store(ptr, value, mask=mask)


@triton.jit
def _run_columns(w0, BW: tl.constexpr, S: tl.constexpr, E: tl.constexpr, LANES: tl.constexpr):
    """HR column of each element of a [G, LANES, E] run tile of the block starting at LR column w0 (see
    :func:`_to_runs`)."""
    V: tl.constexpr = BW // LANES
    G: tl.constexpr = V * S // E
    g = tl.arange(0, G)[:, None, None]
    lane = tl.arange(0, LANES)[None, :, None]
    e = tl.arange(0, E)[None, None, :]
    return S * w0 + lane * (V * S) + g * E + e


@triton.jit
def _columns(t):
    """t [A, B, C, U, J] (U a power of two, in each thread's registers) -> the tuple of its U columns, each
    [A, B, C, J]: in-register splits (even / odd halves, recursively), no data moves."""
    U: tl.constexpr = t.shape[3]
    if U == 1:
        r = (tl.reshape(t, [t.shape[0], t.shape[1], t.shape[2], t.shape[4]]),)
    else:
        t = tl.reshape(t, [t.shape[0], t.shape[1], t.shape[2], U // 2, 2, t.shape[4]])
        even, odd = tl.split(tl.permute(t, [0, 1, 2, 3, 5, 4]))
        e, o = _columns(even), _columns(odd)
        r = ()
        for m in tl.static_range(U // 2):
            r = r + (e[m], o[m])
    return r


@triton.jit
def _stack(cols, D: tl.constexpr, V: tl.constexpr):
    """[A, B, C, V, J] tile of the columns D .. D + V - 1 of a :func:`_columns` tuple (V a power of two): in-register
    joins."""
    if V == 1:
        c = cols[D]
        r = tl.reshape(c, [c.shape[0], c.shape[1], c.shape[2], 1, c.shape[3]])
    else:
        lo = _stack(cols, D, V // 2)
        hi = _stack(cols, D + V // 2, V // 2)
        t = tl.permute(tl.join(lo, hi), [0, 1, 2, 5, 3, 4])
        r = tl.reshape(t, [lo.shape[0], lo.shape[1], lo.shape[2], V, lo.shape[4]])
    return r


@triton.jit
def _load_shifted(ptr, stride, x0, W, D: tl.constexpr, V: tl.constexpr, MASKED: tl.constexpr):
    """[1, 1, LANES, V, J] tile of the elements x0 + D + v (v < V) of J rows whose element x0 is at ``ptr``, a
    [1, J, 1, LANES, 1] run-tile pointer (x0 likewise shaped, a multiple of V): the one or two aligned V-vectors
    around them, loaded, then shifted in registers."""
    A: tl.constexpr = (D // V) * V
    NV: tl.constexpr = 1 if D == A else 2
    col = A + tl.arange(0, NV)[None, None, :, None, None] * V + tl.arange(0, V)[None, None, None, None, :]
    t = _load_runs(ptr + col * stride, (x0 + col >= 0) & (x0 + col < W), MASKED)  # [1, J, NV, LANES, V]
    t = tl.reshape(tl.permute(t, [0, 3, 2, 4, 1]), [1, 1, t.shape[3], NV * V, t.shape[1]])
    if D != A:
        t = _stack(_columns(t), D - A, V)
    return t


@triton.jit
def _fwd_depthwise_kernel(
    x_ptr, k_ptr, y_ptr,
    C, H, W,
    sxn, sxc, sxh, sxw,
    skn, skc, skh, skw,
    syn, syc, syh, syw,
    n_cb, n_sb, first, count, skip_at, skip,
    K: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, SIB: tl.constexpr, BLOCK_C: tl.constexpr,
    BW: tl.constexpr, LANES: tl.constexpr, E: tl.constexpr, C_STATIC: tl.constexpr, MASKED: tl.constexpr,
    ACC: tl.constexpr, IDX: tl.constexpr, OFF: tl.constexpr, UW: tl.constexpr, XE: tl.constexpr,
):
    P: tl.constexpr = (K - 1) // 2
    V: tl.constexpr = BW // LANES
    Q: tl.constexpr = SIB * SP  # the program's sub-pixels (i, j), i-major
    n, cb, sb, h, w0 = _program(n_cb, n_sb, H, first, count, skip_at, skip, BW)
    sxn, sxc, sxh, sxw = _strides(sxn, sxc, sxh, sxw, IDX)
    skn, skc, skh, skw = _strides(skn, skc, skh, skw, IDX)
    syn, syc, syh, syw = _strides(syn, syc, syh, syw, IDX)
    ch, c_ok = _channels(cb, C, BLOCK_C, C_STATIC)
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
            xw = _widen(_load_runs(x_col + (dy - P) * sxh + u * sxw, x_ok, MASKED), ACC)  # [C, 1, G, LANES, XE]
            x_cols = _columns(tl.reshape(tl.permute(xw, [0, 1, 3, 2, 4]), [BLOCK_C, 1, LANES, UW, 1]))
            for dx in tl.static_range(K):
                wt = _widen(_load_runs(k_pix + ((dx * K + dy) * S * S) * skc, k_ok, MASKED), ACC)
                wt = tl.reshape(tl.permute(wt, [0, 3, 2, 4, 1]), [1, 1, LANES, V, Q])
                acc += _stack(x_cols, OFF + dx - P, V) * wt

    # -> [BLOCK_C, SIB, BW, SP]: LR column lane * V + v, the layout of _to_runs
    out = tl.reshape(acc, [BLOCK_C, LANES, V, SIB, SP])
    out = tl.reshape(tl.permute(out, [0, 3, 1, 2, 4]), [BLOCK_C, SIB, BW, SP]).to(y_ptr.dtype.element_ty)
    i = sb * SIB + tl.arange(0, SIB)[None, :, None, None]
    y_base = y_ptr + n * syn + ch[:, None, None, None] * syc + (S * h + i) * syh
    if SP == S:  # 16-byte runs of consecutive HR columns
        r = _run_columns(w0, BW, S, E, LANES)[None, None, :, :, :]
        ok = c_ok[:, None, None, None, None] & (r < S * W)
        _store_runs(y_base[:, :, :, :, None] + r * syw, _to_runs(out, BLOCK_C, SIB, BW, S, E, LANES), ok)
    else:
        w = w0 + tl.arange(0, BW)[None, None, :, None]
        j = tl.arange(0, SP)[None, None, None, :]
        tl.store(y_base + (S * w + j) * syw, out, mask=c_ok[:, None, None, None] & (w < W) & (i < S) & (j < S))


@triton.jit
def _dx_depthwise_kernel(
    g_ptr, k_ptr, dx_ptr,
    C, H, W,
    sgn, sgc, sgh, sgw,
    skn, skc, skh, skw,
    sdn, sdc, sdh, sdw,
    n_cb, n_sb, first, count, skip_at, skip,
    K: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, SIB: tl.constexpr, BLOCK_C: tl.constexpr,
    BW: tl.constexpr, LANES: tl.constexpr, E: tl.constexpr, C_STATIC: tl.constexpr, MASKED: tl.constexpr,
    ACC: tl.constexpr, IDX: tl.constexpr, OFF: tl.constexpr, UW: tl.constexpr, DY: tl.constexpr,
):
    # dx[c, y, x] = sum_{t, i, j} g[c, S*h+i, S*w+j] * K[t*S*S + i*S+j, h, w] with (h, w) = (y-dy+P, x-dx+P)
    P: tl.constexpr = (K - 1) // 2
    V: tl.constexpr = BW // LANES
    n, cb, _, y, w0 = _program(n_cb, n_sb, H, first, count, skip_at, skip, BW)
    sgn, sgc, sgh, sgw = _strides(sgn, sgc, sgh, sgw, IDX)
    skn, skc, skh, skw = _strides(skn, skc, skh, skw, IDX)
    sdn, sdc, sdh, sdw = _strides(sdn, sdc, sdh, sdw, IDX)
    ch, c_ok = _channels(cb, C, BLOCK_C, C_STATIC)
    c = ch[:, None, None, None, None]
    lane = tl.arange(0, LANES)[None, None, None, :, None]  # lane axis of the run tiles (see _load_runs)
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
                    gw = _widen(_load_runs(g_row + i * sgh + g_col + e * sgw, g_ok, MASKED), ACC)
                    if SP == S:  # -> [BLOCK_C, 1, LANES, UW, S]
                        gw = tl.reshape(tl.permute(gw, [0, 1, 3, 2, 4]), [BLOCK_C, 1, LANES, UW, S])
                    else:
                        gw = tl.where(j < S, gw, 0.0)
                        gw = tl.reshape(tl.permute(gw, [0, 4, 3, 2, 1]), [BLOCK_C, 1, LANES, UW, SP])
                    g_cols = _columns(gw)
                    k_tap = k_row + i * S * skc
                    for dx in tl.static_range(K):
                        wt = _widen(_load_shifted(k_tap + k_col, skw, x0, W, P - dx, V, MASKED), ACC)
                        acc += _stack(g_cols, OFF + P - dx, V) * wt
                        k_tap += k_step
            g_row -= S * sgh
            k_row += S * S * skc - skh

    dxv = tl.reshape(tl.sum(acc, axis=4), [BLOCK_C, BW])
    xo = w0 + tl.arange(0, BW)[None, :]
    d_off = n * sdn + ch[:, None] * sdc + y * sdh + xo * sdw
    tl.store(dx_ptr + d_off, dxv.to(dx_ptr.dtype.element_ty), mask=c_ok[:, None] & (xo < W))


@triton.jit
def _load_hr(rows, col_stride, w0, W, BLOCK_C: tl.constexpr, SIB: tl.constexpr, BW: tl.constexpr, S: tl.constexpr,
             SP: tl.constexpr, E: tl.constexpr, LANES: tl.constexpr, MASKED: tl.constexpr, ACC: tl.constexpr):
    """grad_out at the block's HR pixels, [BLOCK_C, SIB, BW, SP], in the accumulator's layout and dtype, zero beyond
    column W (MASKED). ``rows``: [BLOCK_C, SIB, 1, 1] pointers to column 0 of the HR rows. With SP == S as 16-byte
    runs of HR columns (:func:`_to_runs`); s = 3 pads the sub-pixels to 4, the padding ones reading a real one."""
    if SP == S:
        q = _run_columns(w0, BW, S, E, LANES)[None, None, :, :, :]
        v = _load_runs(rows[:, :, :, :, None] + q * col_stride, q < S * W, MASKED)
        return _widen(_from_runs(v, BLOCK_C, SIB, BW, S, E, LANES), ACC)
    w = w0 + tl.arange(0, BW)[None, None, :, None]
    j = tl.minimum(tl.arange(0, SP), S - 1)[None, None, None, :]
    if MASKED:
        return _widen(tl.load(rows + (S * w + j) * col_stride, mask=w < W, other=0.0), ACC)
    return _widen(tl.load(rows + (S * w + j) * col_stride), ACC)


@triton.jit
def _dk_depthwise_kernel(
    x_ptr, g_ptr, dk_ptr,
    C, H, W,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    sdn, sdc, sdh, sdw,
    n_cb, n_sb, first, count, skip_at, skip,
    K: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, SIB: tl.constexpr, BLOCK_C: tl.constexpr,
    BW: tl.constexpr, LANES: tl.constexpr, E: tl.constexpr, C_STATIC: tl.constexpr, MASKED: tl.constexpr,
    ACC: tl.constexpr, IDX: tl.constexpr,
):
    # dK[t*S*S + i*S+j, h, w] = sum_c x[c, h+dy-P, w+dx-P] * g[c, S*h+i, S*w+j] with every channel in one block:
    # grad_out is loaded once and each tap is a product with a shifted x tile summed over the channel axis. grad_out
    # and x are zero where masked (edge blocks, padding sub-pixels and channels), since both enter the channel sum
    P: tl.constexpr = (K - 1) // 2
    n, _, sb, h, w0 = _program(n_cb, n_sb, H, first, count, skip_at, skip, BW)
    sxn, sxc, sxh, sxw = _strides(sxn, sxc, sxh, sxw, IDX)
    sgn, sgc, sgh, sgw = _strides(sgn, sgc, sgh, sgw, IDX)
    sdn, sdc, sdh, sdw = _strides(sdn, sdc, sdh, sdw, IDX)
    i = sb * SIB + tl.arange(0, SIB)[None, :, None, None]
    w = w0 + tl.max_contiguous(tl.arange(0, BW), BW // LANES)[None, None, :, None]  # see _dx_depthwise_kernel
    j = tl.arange(0, SP)[None, None, None, :]
    g_ok = (w < W) & (i < S) & (j < S)
    d_pix = dk_ptr + n * sdn + h * sdh + w * sdw + (i * S + j) * sdc
    c, c_ok = _channels(0, C, BLOCK_C, C_STATIC)
    c = c[:, None, None, None]
    g_rows = g_ptr + n * sgn + c * sgc + (S * h + tl.minimum(i, S - 1)) * sgh
    g_all = _load_hr(g_rows, sgw, w0, W, BLOCK_C, SIB, BW, S, SP, E, LANES, MASKED, ACC)
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
                _store_taps(d_pix, tl.sum(_widen(xv, ACC) * g_all, axis=0), dx, dy, sdc, g_ok, K, S, MASKED, SP == S)
        else:  # taps reading rows outside the image: zero
            for dx in tl.static_range(K):
                _store_taps(d_pix, tl.zeros([SIB, BW, SP], dtype=ACC), dx, dy, sdc, g_ok, K, S, MASKED, SP == S)


@triton.jit
def _dk_depthwise_loop_kernel(
    x_ptr, g_ptr, dk_ptr,
    C, H, W,
    sxn, sxc, sxh, sxw,
    sgn, sgc, sgh, sgw,
    sdn, sdc, sdh, sdw,
    n_tb, n_sb, first, count, skip_at, skip,
    K: tl.constexpr, S: tl.constexpr, SP: tl.constexpr, SIB: tl.constexpr, TR: tl.constexpr, TP: tl.constexpr,
    BW: tl.constexpr, LANES: tl.constexpr, E: tl.constexpr, MASKED: tl.constexpr, ACC: tl.constexpr,
    IDX: tl.constexpr,
):
    # The same dK for more channels than registers hold next to grad_out: the program keeps every tap of TR rows of
    # taps (tap block tb) and every sub-pixel of SIB sub-pixel rows in registers ([TP, SIB, BW, SP], tap a = row
    # a // K of the block, column a % K) and loops over the channels once, so each grad_out and x value is loaded
    # once per program. x rows outside the image are read clamped and their taps zeroed at the store.
    P: tl.constexpr = (K - 1) // 2
    n, tb, sb, h, w0 = _program(n_tb, n_sb, H, first, count, skip_at, skip, BW)
    sxn, sxc, sxh, sxw = _strides(sxn, sxc, sxh, sxw, IDX)
    sgn, sgc, sgh, sgw = _strides(sgn, sgc, sgh, sgw, IDX)
    sdn, sdc, sdh, sdw = _strides(sdn, sdc, sdh, sdw, IDX)
    a = tl.arange(0, TP)[:, None, None, None]
    dy = tb * TR + a // K
    dx = a % K
    row = h + dy - P
    tap = (a < TR * K) & (dy < K)  # the block's real taps (not padding, not past the last tap row)
    i = sb * SIB + tl.arange(0, SIB)[None, :, None, None]
    w = w0 + tl.arange(0, BW)[None, None, :, None]
    j = tl.arange(0, SP)[None, None, None, :]
    row, row_ok = _clamp_row(row, H)
    x_pix = x_ptr + n * sxn + row * sxh + (w + dx - P) * sxw
    g_rows = g_ptr + n * sgn + (S * h + tl.minimum(i, S - 1)) * sgh
    acc = tl.zeros([TP, SIB, BW, SP], dtype=ACC)
    for ch in range(C):
        gv = _load_hr(g_rows + ch * sgc, sgw, w0, W, 1, SIB, BW, S, SP, E, LANES, MASKED, ACC)
        if MASKED:
            xv = tl.load(x_pix + ch * sxc, mask=(w + dx - P >= 0) & (w + dx - P < W), other=0.0)
        else:
            xv = tl.load(x_pix + ch * sxc)
        acc += _widen(xv, ACC) * gv
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


# ---- depthwise kernels on tensor cores (16-bit x and kernels, C >= 16) ---------------------------------------------


# The interpreter multiplies bf16 tiles as raw integers: there the tensor-core kernels widen them to fp32 first (exact
# values, the same products); compiled, tl.dot takes them as they are.
_INTERPRET_CONST = tl.constexpr(_INTERPRET)


@triton.jit
def _dot(a, b, acc):
    """acc + a @ b with fp32 accumulation."""
    if _INTERPRET_CONST and a.dtype == tl.bfloat16:
        a, b = _widen(a, tl.float32), _widen(b, tl.float32)
    return tl.dot(a, b, acc)


@triton.jit
def _mma_program(n_cb, n_rb, H, first, count, skip_at, skip, ROWS: tl.constexpr, P: tl.constexpr):
    """Decode the flat grid of a tensor-core program: (sample as int64, channel block, first row, end row, first
    column), for ROWS consecutive LR rows and P consecutive LR columns (see :func:`_program`)."""
    n, cb, _, rb, w0 = _program(n_cb, 1, n_rb, first, count, skip_at, skip, P)
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
def _fwd_mma_kernel(
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
    sxn, sxc, sxh, sxw = _strides(sxn, sxc, sxh, sxw, IDX)
    skn, skc, skh, skw = _strides(skn, skc, skh, skw, IDX)
    syn, syc, syh, syw = _strides(syn, syc, syh, syw, IDX)
    c, c_ok = _channels(cb, C, BLOCK_C, -1)  # padding channels read a real one and are not stored
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
            row, row_ok = _clamp_row(h + dy - PAD, H)
            x_row = x_pix + row * sxh  # one scalar offset per load: one multiply-add per element forms its address
            if MASKED:
                a = tl.load(x_row, mask=(col >= 0) & (col < W), other=0.0)
            else:
                a = tl.load(x_row)
            b = tl.load(k_pix + (h * skh + (dy * S * S) * skc), mask=b_ok, other=0.0)
            acc = _dot(a, tl.where(row_ok, b, 0.0), acc)
        tl.store(y_pix + (S * h) * syh, acc.to(y_ptr.dtype.element_ty), mask=y_ok)


@triton.jit
def _dx_mma_kernel(
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
    sgn, sgc, sgh, sgw = _strides(sgn, sgc, sgh, sgw, IDX)
    skn, skc, skh, skw = _strides(skn, skc, skh, skw, IDX)
    sdn, sdc, sdh, sdw = _strides(sdn, sdc, sdh, sdw, IDX)
    c, c_ok = _channels(cb, C, BLOCK_C, -1)
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
            hc, row_ok = _clamp_row(y - dy + PAD, H)
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
def _dk_mma_kernel(
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
    sxn, sxc, sxh, sxw = _strides(sxn, sxc, sxh, sxw, IDX)
    sgn, sgc, sgh, sgw = _strides(sgn, sgc, sgh, sgw, IDX)
    sdn, sdc, sdh, sdw = _strides(sdn, sdc, sdh, sdw, IDX)
    c = tl.arange(0, BLOCK_C)[:, None]
    col = w0 - OFF + tl.arange(0, UX)[None, :]
    dx, sub, d_ok, i, hr, q, real = _mma_band(w0, W, P, S, SP, UX, OFF, K)
    x_pix = x_ptr + n * sxn + c * sxc + col * sxw
    g_pix = g_ptr + n * sgn + c * sgc + i[None, :] * sgh + hr[None, :] * sgw
    d_pix = dk_ptr + n * sdn + (w0 + q)[None, :] * sdw + (dx * K * S * S + sub) * sdc
    g_ok = real[None, :]
    for h in tl.range(h0, h1):
        for dy in tl.static_range(K):
            row, row_ok = _clamp_row(h + dy - PAD, H)
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


# ---- full-mode kernels ---------------------------------------------------------------------------------------------


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
def _fwd_full_kernel(
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
def _dx_full_kernel(
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
def _dk_full_kernel(
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


# ---- launchers -----------------------------------------------------------------------------------------------------


def _acc_dtype(*dtypes: torch.dtype) -> tl.dtype:
    return tl.float64 if torch.float64 in dtypes else tl.float32


# In-sample offsets (and flattened plane indices) stay int32 unless some tensor's per-sample extent could pass 2**31;
# the margin covers a tile running past the end of the plane.
_INT32_LIMIT = 2**31 - 2**16


def _index_dtype(*tensors: torch.Tensor) -> tl.dtype:
    span = max(sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:])) for t in tensors)
    return tl.int64 if span >= _INT32_LIMIT else tl.int32


# Accumulators per thread of a depthwise program on a GPU (fp32 registers; the rest of the 255 hold the loads in
# flight, addresses and the x / grad_out tiles). Under the interpreter a program costs Python overhead per
# operation, so its channel blocks are as large as the problem.
_ACC_PER_THREAD = 64
_INTERPRETER_MAX_CHANNELS = 64
# Register cap per thread for the depthwise kernels on a GPU (ptxas .maxnreg; None: ptxas chooses). A tuning hook for
# the benchmarks (bench_dynamic_filter.py / kernel_report.py --maxnreg): fewer registers, more resident warps.
_MAX_REGISTERS: int | None = None


def _depthwise_tile(
    channels: int, scale: int, vec: int, sub_rows: bool, on_gpu: bool, acc: int = _ACC_PER_THREAD
) -> tuple[int, int]:
    """(BLOCK_C, SIB) of a depthwise program: channels and sub-pixel rows it holds, for ``vec`` LR columns per
    thread. Prefers all channels (up to 4, 16 at s=1) in one block — the kernels tensor is then loaded once per
    pixel — and splits the sub-pixel rows over programs (``sub_rows``: the kernel allows it) before the channels."""
    sp = triton.next_power_of_2(scale)
    block_c = triton.next_power_of_2(channels)
    if not on_gpu:
        return min(block_c, _INTERPRETER_MAX_CHANNELS), sp
    block_c = min(block_c, 4)
    sib = sp
    while sub_rows and sib > 1 and block_c * sib * sp * vec > acc:
        sib //= 2
    while block_c > 1 and block_c * sib * sp * vec > acc:
        block_c //= 2
    return block_c, sib


def _column_launches(width: int, block: int, left: int, reach: int) -> list[tuple[int, int, int, int, bool]]:
    """(first, count, skip_at, skip, masked) of the launches that cover a row with blocks of ``block`` columns (see
    :func:`_program`): the interior blocks, whose columns ``w0 - left`` to ``w0 + reach - 1`` (every column their
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


# Registers of the grad-kernels channel-loop kernel per thread: accumulators (taps x real sub-pixels) and taps (each
# keeps a 64-bit x pointer and its loaded value across the loop)
_DK_LOOP_ACC = 100
_DK_LOOP_TAPS = 32


def _dk_loop_tile(scale: int, kernel_size: int, on_gpu: bool) -> tuple[int, int]:
    """(TR, SIB) of a :func:`_dk_depthwise_loop_kernel` program (one LR column per thread): rows of taps and
    sub-pixel rows it holds, all of them under the interpreter. On a GPU the most sub-pixel rows that hold one row of
    taps (each x load then feeds SIB * s multiply-adds), then as many tap rows as fit; fewer tap rows re-read
    grad_out (from L2: the tap blocks of a pixel are neighbouring programs)."""
    sp = triton.next_power_of_2(scale)
    if not on_gpu:
        return kernel_size, sp
    sib = sp
    while sib > 1 and kernel_size * min(sib, scale) * scale > _DK_LOOP_ACC:
        sib //= 2
    per_row = kernel_size * min(sib, scale) * scale
    return max(1, min(kernel_size, _DK_LOOP_ACC // per_row, _DK_LOOP_TAPS // kernel_size)), sib


def _launch_depthwise(kernel, a, b, out, c, h, w, scale, kernel_size, *, vec, sub_rows, channel_sum=False,
                      run_bytes=None, acc=_ACC_PER_THREAD, edge_acc=None):  # fmt: skip
    """Launch a depthwise kernel on (a, b) -> out over every (sample, row, column block, channel block, sub-pixel-row
    block): interior and edge column blocks are two launches (:func:`_column_launches`). ``vec``: LR columns per
    thread; ``sub_rows``: the kernel can split sub-pixel rows over programs; ``channel_sum``: it is grad-kernels,
    which sums over channels (all of them in one block when they fit, else :func:`_dk_depthwise_loop_kernel`, one
    column per thread, over blocks of tap rows instead of channel blocks); ``run_bytes``: itemsize of the HR tensor
    it moves in 16-byte runs (E); ``acc``: accumulator budget per thread; ``edge_acc``: that of edge blocks (default
    a half, a quarter at s = 4)."""
    on_gpu = out.device.type != "cpu"
    sp = triton.next_power_of_2(scale)
    if not _rows_aligned(a, b, out):  # no vector loads possible: one column per thread
        vec = 1
    loop = channel_sum and c > _depthwise_tile(c, scale, vec, sub_rows, on_gpu, acc)[0]
    if loop:
        kernel, vec = _dk_depthwise_loop_kernel, 1
        tap_rows, loop_sib = _dk_loop_tile(scale, kernel_size, on_gpu)
    pad = (kernel_size - 1) // 2
    if edge_acc is None:  # edge blocks' masks and zero-filled loads need registers too
        edge_acc = acc // 2 if sp < 4 else acc // 4
    bw = _LANES * vec
    # E: HR elements of a 16-byte run of the HR tensor (1 at s = 3, whose padded sub-pixels load no runs)
    e = None if run_bytes is None else (min(16 // run_bytes, vec * scale) if sp == scale else 1)
    # columns a block reads left of its first / right of it: grad-kernels' shifted x tiles reach pad; a thread's
    # window reaches OFF left and UW - OFF right of its first column; grad-x's kernels, the aligned vectors around
    # a tap's shifted columns, kv
    left, right, extra = pad, bw + pad, {}
    if kernel is _fwd_depthwise_kernel:  # x windows in runs of 16 bytes of x (at most the thread's columns)
        xe = min(16 // a.element_size(), vec)
        off, uw = _window(1, vec, pad, xe)
        left, right = off, bw - vec + uw - off
        extra = dict(OFF=off, UW=uw, XE=xe)
    if kernel is _dx_depthwise_kernel:
        off, uw = _window(scale, vec, pad, e)
        kv = -(-pad // vec) * vec
        left = max(off, kv)
        right = bw - vec + max(uw - off, kv + vec)
        extra = dict(OFF=off, UW=uw, DY=kernel_size if kernel_size <= _DX_UNROLL else 1)
    for first, count, skip_at, skip, masked in _column_launches(w, bw, left, right):
        constants = dict(
            K=kernel_size, S=scale, SP=sp, BW=bw, LANES=_LANES, MASKED=masked,
            ACC=_acc_dtype(a.dtype, b.dtype), IDX=_index_dtype(a, b, out), **extra,
        )  # fmt: skip
        if loop:
            sib, n_cb = loop_sib, triton.cdiv(kernel_size, tap_rows)
            constants.update(SIB=sib, TR=tap_rows, TP=triton.next_power_of_2(tap_rows * kernel_size))
        elif kernel is _dx_depthwise_kernel:
            block_c, sib = _dx_channels(c, scale, kernel_size, vec, extra["UW"], on_gpu, masked), sp
        else:
            block_c, sib = _depthwise_tile(c, scale, vec, sub_rows, on_gpu, acc if channel_sum or not masked else edge_acc)
        if not loop:
            n_cb = 1 if channel_sum else triton.cdiv(c, block_c)
            constants.update(SIB=sib, BLOCK_C=block_c, C_STATIC=c if c < block_c else (0 if c % block_c == 0 else -1))
        if e is not None:
            constants["E"] = e
        grid = (out.shape[0] * h * count * (sp // sib) * n_cb,)
        kernel[grid](
            a, b, out, c, h, w, *a.stride(), *b.stride(), *out.stride(), n_cb, sp // sib, first, count, skip_at, skip,
            **constants, num_warps=1, num_stages=1, enable_fp_fusion=True,
            **({"maxnreg": _MAX_REGISTERS} if _MAX_REGISTERS and on_gpu else {}),
        )  # fmt: skip


# Grad-x unrolls its rows of taps up to this kernel size; larger kernels loop over them (unrolled, k = 9 at s = 4 took
# Triton ~90 s to compile per launch, mostly its coalescing pass, against ~4 s per loop launch)
_DX_UNROLL = 5
# Registers per thread of grad-x for accumulators and one grad_out window, (V + UW) * SP per channel; the rest hold
# the kernels windows of a row of taps and addresses (128: no spill over s 1..4, k 1..9 on triton 3.6 / 3.9)
_DX_BUDGET = 128


def _window(scale: int, vec: int, pad: int, run: int) -> tuple[int, int]:
    """(OFF, UW) of a thread's window of LR columns (forward: of x, scale 1; grad-x: of grad_out): it starts OFF >= pad
    LR columns left of the thread's ``vec`` columns, on a run of ``run`` elements, and spans UW (a power of two) >=
    vec + OFF + pad columns."""
    off = pad
    while (scale * off) % run:
        off += 1
    return off, triton.next_power_of_2(vec + off + pad)


def _dx_channels(channels: int, scale: int, kernel_size: int, vec: int, uw: int, on_gpu: bool, masked: bool) -> int:
    """BLOCK_C of a grad-x program: up to 4 channels (the kernels windows are loaded once for them) within
    _DX_BUDGET, half a padded block in ``masked`` (edge) launches; all of them (up to 64) under the interpreter."""
    block_c, sp = triton.next_power_of_2(channels), triton.next_power_of_2(scale)
    if not on_gpu:
        return min(block_c, _INTERPRETER_MAX_CHANNELS)
    block_c = min(block_c, 4)
    # halved at s = 3, which loads its windows element by element (each value holds a register until used), and for
    # the tap-row loop of k > _DX_UNROLL (ptxas gave the k = 7 loop 128 registers and spilled with 2 channels)
    budget = _DX_BUDGET if sp == scale and kernel_size <= _DX_UNROLL else _DX_BUDGET // 2
    while block_c > 1 and min(block_c, channels) * sp * (vec + uw) > budget:
        block_c //= 2
    if masked and channels < block_c:  # triton 3.6's ptxas spilled the fp32 RGB edge launch (3 of 4 channels)
        block_c //= 2
    return block_c


# Tensor-core kernels: for 16-bit x and kernels (one dtype) and at least this many channels; fewer channels would
# leave most rows of the product empty, and the CUDA-core kernels keep RGB below its bandwidth floor.
_MMA_MIN_CHANNELS = 16


def _mma_rows(height: int, on_gpu: bool) -> int:
    """LR rows of a tensor-core program: 8 on a GPU (its address set-up is done once for them), all under the
    interpreter (which pays per program)."""
    return min(8, height) if on_gpu else height


def _use_mma(channels: int, *tensors: torch.Tensor) -> bool:
    """Whether the op on these tensors (depthwise) runs on the tensor-core kernels."""
    dtypes = {t.dtype for t in tensors}
    return channels >= _MMA_MIN_CHANNELS and len(dtypes) == 1 and dtypes <= {torch.float16, torch.bfloat16}


def _mma_tile(kernel, scale: int) -> tuple[int, int]:
    """(LR columns, warps) of a tensor-core program. Forward and grad-kernels products have s'^2 * columns columns
    (s' = s rounded up to a power of two): 8 columns at s <= 2; at s >= 3 the forward takes 4 on 4 warps (64 fp32
    accumulators per thread), grad-kernels 2 on 2 (its x and grad_out tiles of every row of taps stay live: 4 columns
    spilled even on 4 warps). Grad-x's product has one column per LR column: 8."""
    if scale <= 2 or kernel is _dx_mma_kernel:
        return 8, 2
    return (4, 4) if kernel is _fwd_mma_kernel else (2, 2)


def _launch_mma(kernel, a, b, out, c, h, w, scale, kernel_size, *, channel_grid):
    """Launch a tensor-core kernel over (sample, block of rows, block of columns (:func:`_mma_tile`), channel block
    when ``channel_grid``; otherwise the kernel loops over the channel blocks). The window of LR columns a block
    reads starts OFF (a multiple of 4: aligned vector loads) columns to its left and spans UX >= 16 (a product's
    depth)."""
    pixels, warps = _mma_tile(kernel, scale)
    pad = (kernel_size - 1) // 2
    off = triton.cdiv(pad, 4) * 4
    ux = max(16, triton.next_power_of_2(off + pixels + pad))
    block_c = min(64, triton.next_power_of_2(c))
    rows = _mma_rows(h, out.device.type != "cpu")
    n_rb, n_cb = triton.cdiv(h, rows), triton.cdiv(c, block_c)
    for first, count, skip_at, skip, masked in _column_launches(w, pixels, off, ux - off):
        grid = (out.shape[0] * n_rb * count * (n_cb if channel_grid else 1),)
        kernel[grid](
            a, b, out, c, h, w, *a.stride(), *b.stride(), *out.stride(), n_cb, n_rb, first, count, skip_at, skip,
            K=kernel_size, S=scale, SP=triton.next_power_of_2(scale), P=pixels, UX=ux, OFF=off, ROWS=rows,
            BLOCK_C=block_c, MASKED=masked, IDX=_index_dtype(a, b, out), num_warps=warps, num_stages=1,
            enable_fp_fusion=True,
        )  # fmt: skip


def _full_tile(channels: int, plane: int, on_gpu: bool) -> tuple[int, int, int]:
    """(BLOCK_C, BLOCK_P, num_warps) of a full-mode [channels, flattened-plane] tile: about 1024 accumulators on a
    GPU, as large as the problem allows (up to 16k elements) under the interpreter."""
    block_c = min(triton.next_power_of_2(channels), 16)
    budget = 1024 if on_gpu else 16384
    block_p = max(16, min(triton.next_power_of_2(plane), budget // block_c))
    return block_c, block_p, 4 if block_c * block_p >= 1024 else 2


def _vec(t: torch.Tensor) -> int:
    """LR columns per thread that make 16 bytes of ``t``."""
    return 16 // t.element_size()


def _check_device(t: torch.Tensor) -> None:
    if t.device.type == "cpu" and not _INTERPRET:
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
) -> torch.Tensor:
    """Fused forward (no autograd): x (N, C, H, W), kernels (N, k*k*s*s | C*k*k*C*s*s, H, W) -> (N, C, s*H, s*W).

    x and kernels may differ in float dtype; the result has x's dtype. ``out``, if given, must have that shape,
    dtype and device (any strides); every element of it is written and it is returned.
    """
    check_inputs(x, kernels, scale, kernel_size, depthwise)
    _check_device(x)
    n, c, h, w = x.shape
    out = _output(out, (n, c, scale * h, scale * w), x.dtype, x.device)
    if out.numel() == 0:
        return out
    if depthwise and _use_mma(c, x, kernels):
        _launch_mma(_fwd_mma_kernel, x, kernels, out, c, h, w, scale, kernel_size, channel_grid=True)
        return out
    if depthwise:
        _launch_depthwise(_fwd_depthwise_kernel, x, kernels, out, c, h, w, scale, kernel_size,
                          vec=_vec(kernels), sub_rows=True, run_bytes=out.element_size())  # fmt: skip
        return out
    plane = scale * h * scale * w
    block_c, block_p, warps = _full_tile(c, plane, out.device.type != "cpu")
    _fwd_full_kernel[(n * triton.cdiv(c, block_c) * triton.cdiv(plane, block_p),)](
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
) -> torch.Tensor:
    """Gradient wrt x (no autograd): grad_out (N, C, s*H, s*W), kernels (N, ., H, W) -> (N, C, H, W).

    The result has grad_out's dtype (x's, as the forward's output has it); ``out`` as in
    :func:`dynamic_filter_forward`.
    """
    _check_device(kernels)
    n, c, oh, ow = grad_out.shape
    h, w = oh // scale, ow // scale
    out = _output(out, (n, c, h, w), grad_out.dtype, grad_out.device)
    if out.numel() == 0:
        return out
    if depthwise and _use_mma(c, grad_out, kernels):
        _launch_mma(_dx_mma_kernel, grad_out, kernels, out, c, h, w, scale, kernel_size, channel_grid=True)
        return out
    if depthwise:
        # V LR columns per thread: 16 bytes of kernels up to s = 2; 2 at s >= 3, whose windows hold s*UW values per
        # sub-pixel row and channel; channels per program: _dx_channels
        vec = min(4, _vec(kernels), max(1, 8 // triton.next_power_of_2(scale)))
        _launch_depthwise(_dx_depthwise_kernel, grad_out, kernels, out, c, h, w, scale, kernel_size,
                          vec=vec, sub_rows=False, run_bytes=grad_out.element_size())  # fmt: skip
        return out
    block_c, block_p, warps = _full_tile(c, h * w, out.device.type != "cpu")
    _dx_full_kernel[(n * triton.cdiv(c, block_c) * triton.cdiv(h * w, block_p),)](
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
) -> torch.Tensor:
    """Gradient wrt kernels (no autograd): grad_out (N, C, s*H, s*W), x (N, C, H, W) -> (N, kernel channels, H, W).

    The result has ``dtype`` (the kernels' dtype; default x's); ``out`` as in :func:`dynamic_filter_forward`.
    """
    _check_device(x)
    n, c, h, w = x.shape
    dtype = x.dtype if dtype is None else dtype
    out = _output(out, (n, kernel_channels(c, scale, kernel_size, depthwise), h, w), dtype, x.device)
    if out.numel() == 0:
        return out
    if depthwise and _use_mma(c, grad_out, x):
        _launch_mma(_dk_mma_kernel, x, grad_out, out, c, h, w, scale, kernel_size, channel_grid=False)
        return out
    if depthwise:
        _launch_depthwise(_dk_depthwise_kernel, x, grad_out, out, c, h, w, scale, kernel_size,
                          vec=min(4, _vec(out)), sub_rows=True, channel_sum=True,
                          run_bytes=grad_out.element_size())  # fmt: skip
        return out
    block_c, block_p, warps = _full_tile(c, h * w, out.device.type != "cpu")
    _dk_full_kernel[(n * triton.cdiv(c, block_c) * triton.cdiv(h * w, block_p),)](
        x, grad_out, out, c, h, w, *x.stride(), *grad_out.stride(), *out.stride(),
        K=kernel_size, S=scale, ACC=_acc_dtype(x.dtype, grad_out.dtype), IDX=_index_dtype(x, grad_out, out),
        BLOCK_C=block_c, BLOCK_W=block_p, num_warps=warps, enable_fp_fusion=True,
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
    return grad_out.new_empty((n, c, oh // scale, ow // scale))


@torch.library.custom_op("udvd_triton::dynamic_filter_grad_kernels", mutates_args=())
def _grad_kernels_op(
    grad_out: torch.Tensor, x: torch.Tensor, scale: int, kernel_size: int, depthwise: bool, dtype: torch.dtype
) -> torch.Tensor:
    return dynamic_filter_grad_kernels(grad_out, x, scale, kernel_size, depthwise, dtype=dtype)


@_grad_kernels_op.register_fake
def _(grad_out, x, scale, kernel_size, depthwise, dtype):
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
    """Differentiable fused dynamic filter (see :func:`udvd_triton.ops.dynamic_filter` for layouts).

    x (N, C, H, W) and kernels (N, k*k*s*s | C*k*k*C*s*s, H, W), float dtypes that may differ, on one device (CUDA,
    or CPU under TRITON_INTERPRET=1) -> (N, C, s*H, s*W) of x's dtype; the gradients have their input's dtype.
    Works inside ``torch.compile(fullgraph=True)``.
    """
    check_inputs(x, kernels, scale, kernel_size, depthwise)
    _check_device(x)
    return _dynamic_filter_op(x, kernels, scale, kernel_size, depthwise)
