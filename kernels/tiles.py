"""Triton helpers shared by the depthwise kernels: grid decoding, channel blocks, dtype widening, and the register
relabellings that let loads and stores move 16-byte vectors (run tiles, in-register column splits and joins).

See :mod:`udvd_triton.kernels.depthwise` for how the kernels use them.
"""

import triton
import triton.language as tl


@triton.jit
def decode_program(n_cb, n_sb, H, first, count, skip_at, skip, BW: tl.constexpr):
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
def channel_block(cb, C, BLOCK_C: tl.constexpr, C_STATIC: tl.constexpr):
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
def clamp_row(row, H):
    """(row clamped into the image, whether it lies inside): rows outside are read clamped and their terms zeroed."""
    return tl.minimum(tl.maximum(row, 0), H - 1), (row >= 0) & (row < H)


@triton.jit
def widen(v, ACC: tl.constexpr):
    """v in the accumulator dtype. bf16 widens by a 16-bit shift, written out as integer ops so that LLVM turns the
    upper half of a loaded pair into one mask (its own bf16 extension costs a byte permute plus a shift)."""
    if v.dtype == tl.bfloat16:
        v = (v.to(tl.int16, bitcast=True).to(tl.int32) << 16).to(tl.float32, bitcast=True)
    return v.to(ACC)


@triton.jit
def strides_as(s0, s1, s2, s3, IDX: tl.constexpr):
    """A tensor's strides in the offset type, so that index * stride never wraps in int32 when IDX is int64."""
    return tl.cast(s0, IDX), tl.cast(s1, IDX), tl.cast(s2, IDX), tl.cast(s3, IDX)


@triton.jit
def to_runs(t, BLOCK_C: tl.constexpr, SIB: tl.constexpr, BW: tl.constexpr, S: tl.constexpr, E: tl.constexpr,
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
def from_runs(t, BLOCK_C: tl.constexpr, SIB: tl.constexpr, BW: tl.constexpr, S: tl.constexpr, E: tl.constexpr,
               LANES: tl.constexpr):
    """The inverse of :func:`to_runs`: a tile loaded as 16-byte runs of HR columns, in the accumulator's layout."""
    V: tl.constexpr = BW // LANES
    G: tl.constexpr = V * S // E
    t = tl.reshape(t, [BLOCK_C, SIB, G, LANES, E // S, S])
    t = tl.permute(t, [0, 1, 3, 2, 4, 5])
    return tl.reshape(t, [BLOCK_C, SIB, BW, S])


@triton.jit
def load_runs(ptr, mask, MASKED: tl.constexpr, LANES_FIRST: tl.constexpr):
    """Load a [C, SIB, G, LANES, E] run tile (:func:`to_runs`), zero where ``mask`` is false (MASKED), with the lanes
    on the LANES axis under every Triton version (LANES_FIRST: see ``policy.RUN_LANES_FIRST``). Without it, triton
    3.6's grad-x put one shared-memory round trip and barrier into every tap. Every grad_out run tile is loaded
    through it."""
    if LANES_FIRST:
        if MASKED:
            mask = tl.permute(tl.broadcast_to(mask, ptr.shape), [3, 0, 1, 2, 4])
        ptr = tl.permute(ptr, [3, 0, 1, 2, 4])
    if MASKED:
        v = tl.load(ptr, mask=mask, other=0.0)
    else:
        v = tl.load(ptr)
    if LANES_FIRST:
        v = tl.permute(v, [1, 2, 3, 0, 4])
    return v


@triton.jit
def store_runs(ptr, value, mask, LANES_FIRST: tl.constexpr):
    """Store a [C, SIB, G, LANES, E] run tile where ``mask``, its lanes on LANES as in :func:`load_runs` (without
    the permutation, triton 3.6 moved every forward output through shared memory)."""
    if LANES_FIRST:
        mask = tl.permute(tl.broadcast_to(mask, ptr.shape), [3, 0, 1, 2, 4])
        ptr = tl.permute(ptr, [3, 0, 1, 2, 4])
        value = tl.permute(value, [3, 0, 1, 2, 4])
    tl.store(ptr, value, mask=mask)


@triton.jit
def run_columns(w0, BW: tl.constexpr, S: tl.constexpr, E: tl.constexpr, LANES: tl.constexpr):
    """HR column of each element of a [G, LANES, E] run tile of the block starting at LR column w0 (see
    :func:`to_runs`)."""
    V: tl.constexpr = BW // LANES
    G: tl.constexpr = V * S // E
    g = tl.arange(0, G)[:, None, None]
    lane = tl.arange(0, LANES)[None, :, None]
    e = tl.arange(0, E)[None, None, :]
    return S * w0 + lane * (V * S) + g * E + e


@triton.jit
def split_columns(t):
    """t [A, B, C, U, J] (U a power of two, in each thread's registers) -> the tuple of its U columns, each
    [A, B, C, J]: in-register splits (even / odd halves, recursively), no data moves."""
    U: tl.constexpr = t.shape[3]
    if U == 1:
        r = (tl.reshape(t, [t.shape[0], t.shape[1], t.shape[2], t.shape[4]]),)
    else:
        t = tl.reshape(t, [t.shape[0], t.shape[1], t.shape[2], U // 2, 2, t.shape[4]])
        even, odd = tl.split(tl.permute(t, [0, 1, 2, 3, 5, 4]))
        e, o = split_columns(even), split_columns(odd)
        r = ()
        for m in tl.static_range(U // 2):
            r = r + (e[m], o[m])
    return r


@triton.jit
def stack_columns(cols, D: tl.constexpr, V: tl.constexpr):
    """[A, B, C, V, J] tile of the columns D .. D + V - 1 of a :func:`split_columns` tuple (V a power of two): in-register
    joins."""
    if V == 1:
        c = cols[D]
        r = tl.reshape(c, [c.shape[0], c.shape[1], c.shape[2], 1, c.shape[3]])
    else:
        lo = stack_columns(cols, D, V // 2)
        hi = stack_columns(cols, D + V // 2, V // 2)
        t = tl.permute(tl.join(lo, hi), [0, 1, 2, 5, 3, 4])
        r = tl.reshape(t, [lo.shape[0], lo.shape[1], lo.shape[2], V, lo.shape[4]])
    return r


@triton.jit
def load_shifted(ptr, stride, x0, W, D: tl.constexpr, V: tl.constexpr, MASKED: tl.constexpr,
                 LANES_FIRST: tl.constexpr):
    """[1, 1, LANES, V, J] tile of the elements x0 + D + v (v < V) of J rows whose element x0 is at ``ptr``, a
    [1, J, 1, LANES, 1] run-tile pointer (x0 likewise shaped, a multiple of V): the one or two aligned V-vectors
    around them, loaded, then shifted in registers."""
    A: tl.constexpr = (D // V) * V
    NV: tl.constexpr = 1 if D == A else 2
    col = A + tl.arange(0, NV)[None, None, :, None, None] * V + tl.arange(0, V)[None, None, None, None, :]
    t = load_runs(ptr + col * stride, (x0 + col >= 0) & (x0 + col < W), MASKED, LANES_FIRST)  # [1, J, NV, LANES, V]
    t = tl.reshape(tl.permute(t, [0, 3, 2, 4, 1]), [1, 1, t.shape[3], NV * V, t.shape[1]])
    if D != A:
        t = stack_columns(split_columns(t), D - A, V)
    return t
