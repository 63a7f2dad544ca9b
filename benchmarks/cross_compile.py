"""Cross-compile the dynamic-filter kernels for a CUDA GPU on a machine without one, and read what ptxas made.

A development tool (not installed with the package). The real launchers (:mod:`udvd_triton.kernels.launch`) are
called on ``meta`` tensors, which have shapes
and strides but no storage, while a stand-in Triton driver reports a chosen target (default: Hopper, sm_90) and
``JITFunction.run`` compiles without launching. So the specialisations compiled are exactly those the launchers
produce for those shapes, strides and dtypes. The cubins are then read with the ``cuobjdump`` that ships in
Triton's NVIDIA backend: registers, stack frame, shared memory, and the SASS.

Use it in a process where ``TRITON_INTERPRET`` is unset: Triton reads that variable when kernels are defined, and
interpreted kernels cannot be compiled. ``python benchmarks/cross_compile.py CASES.json`` runs :func:`build_cases` in
such a process and prints the result as JSON (what ``tests/test_kernels_sm90.py`` does).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

HOPPER = (90, 32)  # compute capability 9.0 (H100 / H200), warp size


def nvidia_backend_available() -> bool:
    """Whether the installed Triton has the NVIDIA backend (its compiler and the bundled ptxas / cuobjdump)."""
    try:
        from triton.backends import backends

        return "nvidia" in backends and tool("cuobjdump") is not None
    except Exception:  # noqa: BLE001 - any import or lookup failure means: not available
        return False


def tool(name: str) -> str | None:
    import triton.backends.nvidia as nv

    path = Path(nv.__file__).parent / "bin" / name
    return str(path) if path.exists() else shutil.which(name)


class _StandInDriver:
    """The part of Triton's driver interface that compiling needs: a current target, device and stream."""

    def __init__(self, arch: int, warp_size: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, warp_size)

    def get_current_target(self):
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("meta")


@contextlib.contextmanager
def compile_only(arch: int = HOPPER[0], warp_size: int = HOPPER[1]) -> Iterator[list[tuple[Any, tuple[int, ...]]]]:
    """Within the context, launching a ``@triton.jit`` kernel compiles it for ``sm_<arch>`` and appends
    ``(CompiledKernel, grid)`` to the yielded list instead of running it."""
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("cross-compiling needs TRITON_INTERPRET unset when the kernels are imported")
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    compiled: list = []
    run = JITFunction.run

    def compile_instead(self, *args, grid, warmup, **kwargs):
        kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        compiled.append((kernel, tuple(grid)))
        return kernel

    driver.set_active(_StandInDriver(arch, warp_size))
    JITFunction.run = compile_instead
    try:
        yield compiled
    finally:
        JITFunction.run = run
        driver.set_active(None)  # back to the lazily created default driver (none on a machine without a GPU)


# ---- reading a cubin -----------------------------------------------------------------------------------------------


def _cuobjdump(kernel, *flags: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(kernel.asm["cubin"])
        return subprocess.run(
            [tool("cuobjdump"), *flags, str(path)], capture_output=True, text=True, check=True
        ).stdout


def resource_usage(kernel) -> dict[str, int]:
    """Registers per thread, stack frame and local memory bytes per thread, static shared memory bytes (ptxas)."""
    line = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", _cuobjdump(kernel, "-res-usage"))
    regs, stack, shared, local = map(int, line.groups())
    return {"registers": regs, "stack_bytes": stack, "static_shared_bytes": shared, "local_bytes": local}


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def sass_instructions(kernel) -> list[tuple[int, str, str]]:
    """The kernel's SASS as (address, opcode with modifiers, operands), trailing padding dropped."""
    out = [(int(a, 16), op, operands.strip()) for a, _, op, operands in _SASS_LINE.findall(_cuobjdump(kernel, "-sass"))]
    while out and out[-1][1] == "NOP":
        out.pop()
    if out and out[-1][1] == "BRA" and int(out[-1][2].split()[0], 16) == out[-1][0]:
        out.pop()  # the self-branch after the last EXIT: never reached
    return out


def loops(instructions: list[tuple[int, str, str]]) -> list[tuple[int, int]]:
    """(first, last) address of each loop: a backward branch closes a loop whose body starts at its target (the last
    operand: a branch may take a predicate or a uniform register first, e.g. ``BRA P1, 0x...``)."""
    found = []
    for addr, op, operands in instructions:
        if op.startswith("BRA") and (target := int(operands.split()[-1], 16)) <= addr:
            found.append((target, addr))
    return sorted(found)


def global_access_widths(instructions: list[tuple[int, str, str]]) -> dict[str, int]:
    """Count of global loads and stores by width in bits, e.g. {"LDG.128": 4, "LDG.32": 10, "STG.64": 2}."""
    counts: Counter[str] = Counter()
    for _, op, _ in instructions:
        kind = op.split(".")[0]
        if kind in ("LDG", "STG"):
            widths = [m for m in op.split(".")[1:] if m in ("U8", "S8", "U16", "S16", "64", "128")]
            bits = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}[widths[0]] if widths else 32
            counts[f"{kind}.{bits}"] += 1
    return dict(sorted(counts.items()))


def mma_flops(opcode: str) -> int:
    """Floating-point operations of one warp's tensor-core instruction (``HMMA.16816...``: m16 n8 k16, 2 per
    multiply-add); 0 for anything else."""
    m = re.match(r"HMMA\.(16)(8)(8|16)\.", opcode)
    return 2 * int(m[1]) * int(m[2]) * int(m[3]) if m else 0


# ---- launching on meta tensors ---------------------------------------------------------------------------------------

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp64": torch.float64}
OPS = ("forward", "grad_x", "grad_kernels")


def meta_inputs(case: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, kernels, grad_out) meta tensors of a case: ``shape`` (N, C, H, W) LR, ``scale``, ``kernel_size``,
    ``depthwise``, ``x_dtype`` / ``kernels_dtype`` (keys of DTYPES; grad_out has x's dtype), ``channels_last``
    (all three tensors), ``huge_stride`` (the kernels tensor's channel stride is 2**30 + 3 elements, so in-sample
    offsets pass int32)."""
    from udvd_triton.ops import kernel_channels

    n, c, h, w = case["shape"]
    s, k = case["scale"], case["kernel_size"]
    fmt = torch.channels_last if case.get("channels_last") else torch.contiguous_format
    x = torch.empty(n, c, h, w, dtype=DTYPES[case["x_dtype"]], device="meta", memory_format=fmt)
    kc = kernel_channels(c, s, k, case["depthwise"])
    kernels = torch.empty(n, kc, h, w, dtype=DTYPES[case["kernels_dtype"]], device="meta", memory_format=fmt)
    if case.get("huge_stride"):
        big = 2**30 + 3
        kernels = torch.empty_strided((n, kc, h, w), (kc * big, big, w, 1), dtype=kernels.dtype, device="meta")
    grad_out = torch.empty(n, c, s * h, s * w, dtype=x.dtype, device="meta", memory_format=fmt)
    return x, kernels, grad_out


def launch(case: dict[str, Any], op: str, policy: Any = None) -> None:
    """Call the real launcher of ``op`` (one of OPS) on the case's meta tensors, with ``policy`` (a
    ``LaunchPolicy``; default the launchers')."""
    from udvd_triton.kernels import launch as lk

    x, kernels, grad_out = meta_inputs(case)
    args = (case["scale"], case["kernel_size"], case["depthwise"])
    options = {} if policy is None else {"policy": policy}
    if op == "forward":
        lk.dynamic_filter_forward(x, kernels, *args, **options)
    elif op == "grad_x":
        lk.dynamic_filter_grad_x(grad_out, kernels, *args, **options)
    elif op == "grad_kernels":
        lk.dynamic_filter_grad_kernels(grad_out, x, *args, **options)
    else:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")


def kernel_facts(kernel) -> dict[str, Any]:
    """Resources and SASS statistics of one compiled kernel (see :func:`resource_usage`, :func:`loops`)."""
    ins = sass_instructions(kernel)
    ops = Counter(op.split(".")[0] for _, op, _ in ins)
    meta = kernel.metadata
    return {
        "name": kernel.name,
        "num_warps": meta.num_warps,
        "constants": {k: v for k, v in _constexprs(kernel).items()},
        **resource_usage(kernel),
        "shared_bytes": meta.shared,
        "spill_instructions": ops["LDL"] + ops["STL"],
        "sass_instructions": len(ins),
        "loops": [
            {
                "instructions": sum(1 for a, _, _ in ins if first <= a <= last),
                "barriers": sum(1 for a, op, _ in ins if first <= a <= last and op.startswith("BAR")),
                "mma_flops": sum(mma_flops(op) for a, op, _ in ins if first <= a <= last),
                "first": first,
                "last": last,
            }
            for first, last in loops(ins)
        ],
        "barriers": ops["BAR"],
        "global_accesses": global_access_widths(ins),
        "shared_accesses": {op: n for op, n in sorted(ops.items()) if op in ("LDS", "STS", "LDSM", "STSM")},
        "ffma": ops["FFMA"],
        "mma_flops": sum(mma_flops(op) for _, op, _ in ins),
    }


def _constexprs(kernel) -> dict[str, Any]:
    src = kernel.src if hasattr(kernel, "src") else None
    consts = getattr(src, "constants", None) or {}
    names = getattr(getattr(src, "fn", None), "arg_names", None) or []
    out = {}
    for key, value in consts.items():
        idx = key[0] if isinstance(key, tuple) else key
        name = names[idx] if isinstance(idx, int) and idx < len(names) else str(key)
        out[name] = value if isinstance(value, (int, float, bool, str)) else str(value)
    return out


def build_cases(cases: list[dict[str, Any]], ops: tuple[str, ...] = OPS, policy: Any = None) -> list[dict[str, Any]]:
    """Compile every op of every case for Hopper (with ``policy``, see :func:`launch`); one row per (case, op) with
    the kernel's facts."""
    rows = []
    with compile_only() as compiled:
        for case in cases:
            for op in ops:
                before, start = len(compiled), time.perf_counter()
                launch(case, op, policy)
                seconds = (time.perf_counter() - start) / max(1, len(compiled) - before)
                for kernel, grid in compiled[before:]:
                    facts = kernel_facts(kernel)
                    rows.append({"case": case, "op": op, "grid": grid, "compile_seconds": seconds, **facts})
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python benchmarks/cross_compile.py CASES.json``: print build_cases(cases) as JSON."""
    (path,) = argv if argv is not None else sys.argv[1:]
    print(json.dumps(build_cases(json.loads(Path(path).read_text()))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
