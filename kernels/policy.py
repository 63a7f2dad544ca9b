"""How the launchers size the dynamic filter's programs: an explicit :class:`LaunchPolicy` and the tile rules.

The defaults are tuned for Hopper (H100 / H200) register files, so that no build spills (tests/test_kernels_sm90.py
compiles the specialisation families for sm_90). Under the Triton interpreter every program costs Python overhead
per operation, so there the same kernels run with channel blocks as large as the problem; the code tested on the
CPU is still the code a GPU runs. Tests and benchmarks construct a policy (small blocks to get many programs, a
register cap) and pass it to the launchers instead of changing module state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton

# Triton's coalescing gives a load's lanes to its axes of equal contiguity in an order that changed between versions:
# triton 3.6 (the H200 machine's) first axis first, 3.9 last axis first. A run tile [C, SIB, G, LANES, E] must have
# every lane on LANES for the relabelling to the accumulator's layout to stay in registers; 3.6 needs that axis first.
RUN_LANES_FIRST = tuple(int(v) for v in triton.__version__.split(".")[:2]) <= (3, 6)


@dataclass(frozen=True)
class LaunchPolicy:
    """Launch settings of the dynamic-filter kernels.

    Budgets (GPU): ``lanes`` threads of a CUDA-core depthwise program's one warp; ``acc_per_thread`` fp32
    accumulators per thread of a depthwise program (the rest of the 255 registers hold the loads in flight,
    addresses and the x / grad_out tiles); ``dx_budget`` registers per grad-x thread for accumulators and one
    grad_out window, (V + UW) * SP per channel (128: no spill over s 1..4, k 1..9 on triton 3.6 / 3.9);
    ``dx_unroll`` the largest k whose rows of taps grad-x unrolls (unrolled, k = 9 at s = 4 took Triton ~90 s to
    compile per launch, against ~4 s for the loop); ``dk_loop_acc`` / ``dk_loop_taps`` registers of the
    grad-kernels channel-loop kernel for accumulators (taps x real sub-pixels) and taps (each keeps a 64-bit x
    pointer and its loaded value across the loop); ``mma_min_channels``: 16-bit inputs with at least this many
    channels run on tensor cores (fewer would leave most rows of the product empty); ``max_registers``: register
    cap per thread of the depthwise kernels (ptxas .maxnreg; None: ptxas chooses), a tuning hook for the
    benchmarks: fewer registers, more resident warps; ``interpreter_channels``: largest channel block under the
    interpreter; ``run_lanes_first``: load and store run tiles with the lanes axis first (see ``RUN_LANES_FIRST``).

    Fixed tiles instead of the computed ones (None: computed), on a GPU and under the interpreter alike:
    ``channel_block`` channels per CUDA-core depthwise program; ``sub_rows`` sub-pixel rows per program where a
    kernel splits them over programs; ``dk_tap_rows`` / ``dk_sub_rows`` rows of taps and sub-pixel rows of a
    grad-kernels channel-loop program; ``mma_rows`` LR rows of a tensor-core program (computed: 8 on a GPU, all
    under the interpreter); ``full_tile`` (BLOCK_C, BLOCK_P, num_warps) of the full-mode kernels.
    """

    lanes: int = 32
    acc_per_thread: int = 64
    dx_budget: int = 128
    dx_unroll: int = 5
    dk_loop_acc: int = 100
    dk_loop_taps: int = 32
    mma_min_channels: int = 16
    max_registers: int | None = None
    interpreter_channels: int = 64
    run_lanes_first: bool = RUN_LANES_FIRST
    channel_block: int | None = None
    sub_rows: int | None = None
    dk_tap_rows: int | None = None
    dk_sub_rows: int | None = None
    mma_rows: int | None = None
    full_tile: tuple[int, int, int] | None = None

    def depthwise_tile(
        self, channels: int, scale: int, vec: int, sub_rows: bool, on_gpu: bool, acc: int | None = None
    ) -> tuple[int, int]:
        """(BLOCK_C, SIB) of a depthwise program: channels and sub-pixel rows it holds, for ``vec`` LR columns per
        thread. Prefers all channels (up to 4, 16 at s=1) in one block — the kernels tensor is then loaded once per
        pixel — and splits the sub-pixel rows over programs (``sub_rows``: the kernel allows it) before the
        channels; ``acc``: the accumulator budget (default ``acc_per_thread``)."""
        sp = triton.next_power_of_2(scale)
        block_c = triton.next_power_of_2(channels)
        if self.channel_block is not None:
            return self.channel_block, (self.sub_rows or sp) if sub_rows else sp
        if not on_gpu:
            return min(block_c, self.interpreter_channels), sp
        acc = self.acc_per_thread if acc is None else acc
        block_c = min(block_c, 4)
        sib = sp
        while sub_rows and sib > 1 and block_c * sib * sp * vec > acc:
            sib //= 2
        while block_c > 1 and block_c * sib * sp * vec > acc:
            block_c //= 2
        return block_c, sib

    def dk_loop_tile(self, scale: int, kernel_size: int, on_gpu: bool) -> tuple[int, int]:
        """(TR, SIB) of a grad-kernels channel-loop program (one LR column per thread): rows of taps and sub-pixel
        rows it holds, all of them under the interpreter. On a GPU the most sub-pixel rows that hold one row of taps
        (each x load then feeds SIB * s multiply-adds), then as many tap rows as fit; fewer tap rows re-read
        grad_out (from L2: the tap blocks of a pixel are neighbouring programs)."""
        sp = triton.next_power_of_2(scale)
        if self.dk_tap_rows is not None:
            return self.dk_tap_rows, self.dk_sub_rows or sp
        if not on_gpu:
            return kernel_size, sp
        sib = sp
        while sib > 1 and kernel_size * min(sib, scale) * scale > self.dk_loop_acc:
            sib //= 2
        per_row = kernel_size * min(sib, scale) * scale
        return max(1, min(kernel_size, self.dk_loop_acc // per_row, self.dk_loop_taps // kernel_size)), sib

    def dx_channels(self, channels: int, scale: int, kernel_size: int, vec: int, uw: int, on_gpu: bool,
                    masked: bool) -> int:
        """BLOCK_C of a grad-x program: up to 4 channels (the kernels windows are loaded once for them) within
        ``dx_budget``, half a padded block in ``masked`` (edge) launches; all of them (up to
        ``interpreter_channels``) under the interpreter."""
        block_c, sp = triton.next_power_of_2(channels), triton.next_power_of_2(scale)
        if self.channel_block is not None:
            return self.channel_block
        if not on_gpu:
            return min(block_c, self.interpreter_channels)
        block_c = min(block_c, 4)
        # halved at s = 3, which loads its windows element by element (each value holds a register until used), and
        # for the tap-row loop of k > dx_unroll (ptxas gave the k = 7 loop 128 registers and spilled with 2 channels)
        budget = self.dx_budget if sp == scale and kernel_size <= self.dx_unroll else self.dx_budget // 2
        while block_c > 1 and min(block_c, channels) * sp * (vec + uw) > budget:
            block_c //= 2
        if masked and channels < block_c:  # triton 3.6's ptxas spilled the fp32 RGB edge launch (3 of 4 channels)
            block_c //= 2
        return block_c

    def use_mma(self, channels: int, *tensors: torch.Tensor) -> bool:
        """Whether the op on these tensors (depthwise) runs on the tensor-core kernels."""
        dtypes = {t.dtype for t in tensors}
        return channels >= self.mma_min_channels and len(dtypes) == 1 and dtypes <= {torch.float16, torch.bfloat16}

    def mma_row_count(self, height: int, on_gpu: bool) -> int:
        """LR rows of a tensor-core program: 8 on a GPU (its address set-up is done once for them), all under the
        interpreter (which pays per program)."""
        if self.mma_rows is not None:
            return min(self.mma_rows, height)
        return min(8, height) if on_gpu else height

    def full_mode_tile(self, channels: int, plane: int, on_gpu: bool) -> tuple[int, int, int]:
        """(BLOCK_C, BLOCK_P, num_warps) of a full-mode [channels, flattened-plane] tile: about 1024 accumulators on
        a GPU, as large as the problem allows (up to 16k elements) under the interpreter."""
        if self.full_tile is not None:
            return self.full_tile
        block_c = min(triton.next_power_of_2(channels), 16)
        budget = 1024 if on_gpu else 16384
        block_p = max(16, min(triton.next_power_of_2(plane), budget // block_c))
        return block_c, block_p, 4 if block_c * block_p >= 1024 else 2


DEFAULT_POLICY = LaunchPolicy()


def mma_tile(op: str, scale: int) -> tuple[int, int]:
    """(LR columns, warps) of a tensor-core program of ``op`` ("forward", "grad_x", "grad_kernels"). Forward and
    grad-kernels products have s'^2 * columns columns (s' = s rounded up to a power of two): 8 columns at s <= 2; at
    s >= 3 the forward takes 4 on 4 warps (64 fp32 accumulators per thread), grad-kernels 2 on 2 (its x and grad_out
    tiles of every row of taps stay live: 4 columns spilled even on 4 warps). Grad-x's product has one column per LR
    column: 8."""
    if scale <= 2 or op == "grad_x":
        return 8, 2
    return (4, 4) if op == "forward" else (2, 2)


def window(scale: int, vec: int, pad: int, run: int) -> tuple[int, int]:
    """(OFF, UW) of a thread's window of LR columns (forward: of x, scale 1; grad-x: of grad_out): it starts OFF >= pad
    LR columns left of the thread's ``vec`` columns, on a run of ``run`` elements, and spans UW (a power of two) >=
    vec + OFF + pad columns."""
    off = pad
    while (scale * off) % run:
        off += 1
    return off, triton.next_power_of_2(vec + off + pad)


def vec_columns(t: torch.Tensor) -> int:
    """LR columns per thread that make 16 bytes of ``t``."""
    return 16 // t.element_size()
