"""The fused Triton dynamic filter against the float64 PyTorch reference.

On a CPU-only machine the kernels run under TRITON_INTERPRET=1 (set by conftest) with small shapes; with CUDA the
same tests run natively on the GPU, plus the larger ``gpu`` cases at the end.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch

from udvd_triton import dynamic_filter
from udvd_triton.kernels import launch
from udvd_triton.kernels import op as op_module
from udvd_triton.kernels.op import dynamic_filter_triton
from udvd_triton.kernels.policy import DEFAULT_POLICY, LaunchPolicy
from udvd_triton.ops import dynamic_filter_reference, kernel_channels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# max |error| / max |reference| against float64, per input dtype
TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float64: 1e-12}


def make_inputs(n, c, h, w, s, k, depthwise, dtype=torch.float32, device=DEVICE):
    x = torch.randn(n, c, h, w, device=device).to(dtype)
    kern = torch.randn(n, kernel_channels(c, s, k, depthwise), h, w, device=device).to(dtype)
    return x, kern


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """max |got - ref| / max |ref| (ref in float64)."""
    got = got.detach().to("cpu", torch.float64)
    return float((got - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


def poisoned(shape, dtype=torch.float32):
    """A NaN-filled ``out`` buffer: a strided view into a larger buffer, last two dims transposed in memory."""
    buf = torch.full((*shape[:2], shape[3], shape[2] + 1), float("nan"), device=DEVICE, dtype=dtype)
    return buf[..., :-1].transpose(2, 3)


def reference(x, kern, s, k, depthwise, grad_out):
    """Forward output and both gradients of the PyTorch reference on float64 CPU copies."""
    xr = x.detach().to("cpu", torch.float64).requires_grad_()
    kr = kern.detach().to("cpu", torch.float64).requires_grad_()
    y = dynamic_filter_reference(xr, kr, s, k, depthwise)
    dx, dk = torch.autograd.grad(y, (xr, kr), grad_out.detach().to("cpu", torch.float64))
    return y.detach(), dx, dk


def check_launchers(x, kern, s, k, depthwise, dtype, policy):
    """The three launchers under ``policy`` on (x, kern) against the float64 reference (what the op runs, with
    other program sizes)."""
    y = launch.dynamic_filter_forward(x, kern, s, k, depthwise, policy=policy)
    grad_out = torch.randn(y.shape, device=y.device).to(dtype)
    dx = launch.dynamic_filter_grad_x(grad_out, kern, s, k, depthwise, policy=policy)
    dk = launch.dynamic_filter_grad_kernels(grad_out, x, s, k, depthwise, dtype=kern.dtype, policy=policy)
    assert y.dtype == dx.dtype == dk.dtype == dtype
    errs = [rel_err(a, b) for a, b in zip((y, dx, dk), reference(x, kern, s, k, depthwise, grad_out))]
    assert max(errs) <= TOL[dtype], f"relative errors (y, dx, dk) = {errs}"


def check_against_reference(x, kern, s, k, depthwise, dtype):
    """Run the op with autograd on (x, kern) and compare output and gradients with the float64 reference."""
    x, kern = x.requires_grad_(), kern.requires_grad_()
    y = dynamic_filter(x, kern, scale=s, kernel_size=k, depthwise=depthwise, backend="triton")
    assert y.dtype == dtype and y.shape == (x.shape[0], x.shape[1], s * x.shape[2], s * x.shape[3])
    grad_out = torch.randn(y.shape, device=y.device).to(dtype)
    dx, dk = torch.autograd.grad(y, (x, kern), grad_out)
    assert dx.dtype == dtype and dk.dtype == dtype
    errs = [rel_err(a, b) for a, b in zip((y, dx, dk), reference(x, kern, s, k, depthwise, grad_out))]
    assert max(errs) <= TOL[dtype], f"relative errors (y, dx, dk) = {errs}"
    return errs


# A covering set: every k in 1..9 and every s in 1..4 in both modes, with N=1, C=1, odd sizes, H=1, W=1, H != W.
DEPTHWISE_CASES = [  # (n, c, h, w, s, k)
    (1, 1, 1, 1, 1, 1),
    (2, 3, 5, 7, 2, 3),
    (1, 3, 8, 6, 2, 5),
    (1, 2, 3, 4, 3, 5),
    (1, 1, 3, 2, 4, 7),
    (1, 3, 9, 10, 1, 9),
    (1, 3, 1, 6, 4, 3),
    (1, 2, 5, 1, 2, 9),
    (1, 5, 4, 4, 3, 1),
    (1, 3, 5, 272, 2, 5),  # rows on 16 bytes, wide enough for interior (unmasked) column blocks at GPU block sizes
]
FULL_CASES = [
    (1, 3, 4, 5, 2, 1),
    (2, 2, 5, 3, 1, 3),
    (1, 2, 3, 4, 3, 3),
    (1, 3, 4, 3, 2, 5),
    (1, 1, 3, 4, 4, 7),
    (1, 2, 1, 3, 1, 9),
]


@pytest.mark.parametrize(("n", "c", "h", "w", "s", "k"), DEPTHWISE_CASES)
def test_depthwise_fp32(n, c, h, w, s, k):
    check_against_reference(*make_inputs(n, c, h, w, s, k, True), s, k, True, torch.float32)


@pytest.mark.parametrize(("n", "c", "h", "w", "s", "k"), FULL_CASES)
def test_full_fp32(n, c, h, w, s, k):
    check_against_reference(*make_inputs(n, c, h, w, s, k, False), s, k, False, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("depthwise", "c", "s", "k"), [(True, 3, 2, 5), (False, 2, 2, 3)])
def test_half_precision(dtype, depthwise, c, s, k):
    check_against_reference(*make_inputs(2, c, 5, 6, s, k, depthwise, dtype), s, k, depthwise, dtype)


@pytest.mark.parametrize("kernels_dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("depthwise", "c", "s", "k"), [(True, 3, 2, 5), (True, 3, 3, 3), (False, 2, 2, 3)])
def test_mixed_dtypes_fp32_image_half_kernels(kernels_dtype, depthwise, c, s, k):
    """fp32 x with bf16 / fp16 kernels, as autocast produces: no cast of the kernels, fp32 accumulation; y and dx in
    x's dtype (fp32 accuracy: the products of the exact half-precision values are exact in fp32), dkernels in the
    kernels' dtype."""
    x, kern = make_inputs(2, c, 5, 6, s, k, depthwise)
    kern = kern.to(kernels_dtype)
    x.requires_grad_()
    kern.requires_grad_()
    y = dynamic_filter(x, kern, scale=s, kernel_size=k, depthwise=depthwise, backend="triton")
    grad_out = torch.randn(y.shape, device=y.device)
    dx, dk = torch.autograd.grad(y, (x, kern), grad_out)
    assert (y.dtype, dx.dtype, dk.dtype) == (torch.float32, torch.float32, kernels_dtype)
    ref_y, ref_dx, ref_dk = reference(x, kern, s, k, depthwise, grad_out)
    assert max(rel_err(y, ref_y), rel_err(dx, ref_dx)) <= TOL[torch.float32]
    assert rel_err(dk, ref_dk) <= TOL[kernels_dtype]
    # the torch reference takes the same mixed inputs and gives the same dtypes
    ry = dynamic_filter(x, kern, scale=s, kernel_size=k, depthwise=depthwise, backend="torch")
    rdx, rdk = torch.autograd.grad(ry, (x, kern), grad_out)
    assert (ry.dtype, rdx.dtype, rdk.dtype) == (torch.float32, torch.float32, kernels_dtype)
    assert rel_err(ry, ref_y) <= TOL[torch.float32]


# 16-bit x and kernels with C >= 16 run on the tensor-core kernels: every s and k, ragged channel blocks (C = 17, 20,
# 80 > 64: two blocks, grad-kernels loops over them), interior (unmasked) column blocks (W >= 20), H = W = 1
MMA_CASES = [  # (n, c, h, w, s, k)
    (1, 16, 5, 13, 2, 5),
    (2, 20, 4, 9, 3, 3),
    (1, 16, 3, 7, 4, 5),
    (1, 17, 6, 11, 1, 3),
    (1, 80, 3, 33, 2, 9),
    (1, 16, 1, 1, 2, 7),
    (1, 24, 2, 26, 4, 9),
    (1, 16, 3, 21, 3, 1),
]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("n", "c", "h", "w", "s", "k"), MMA_CASES)
def test_tensor_core_kernels(dtype, n, c, h, w, s, k):
    x, kern = make_inputs(n, c, h, w, s, k, True, dtype)
    assert DEFAULT_POLICY.use_mma(c, x, kern)
    check_against_reference(x, kern, s, k, True, dtype)


def test_tensor_core_row_blocks_strides_and_every_output():
    """Programs of 2 rows (the last one ragged), channels-last and sliced inputs, NaN-filled strided outputs."""
    policy = LaunchPolicy(mma_rows=2)
    n, c, h, w, s, k = 1, 20, 5, 22, 2, 5
    x = torch.randn(n, c, 2 * h, w, device=DEVICE).to(torch.float16)[:, :, ::2]
    kern = torch.randn(n, kernel_channels(c, s, k, True), h, w, device=DEVICE).to(torch.float16)
    kern = kern.to(memory_format=torch.channels_last)
    grad_out = torch.randn(n, c, s * h, s * w, device=DEVICE).to(torch.float16)
    ref_y, ref_dx, ref_dk = reference(x, kern, s, k, True, grad_out)
    half = torch.float16
    y = launch.dynamic_filter_forward(x, kern, s, k, True, out=poisoned(ref_y.shape, half), policy=policy)
    dx = launch.dynamic_filter_grad_x(grad_out, kern, s, k, True, out=poisoned(ref_dx.shape, half), policy=policy)
    dk = launch.dynamic_filter_grad_kernels(grad_out, x, s, k, True, out=poisoned(ref_dk.shape, half), policy=policy)
    for got, ref in [(y, ref_y), (dx, ref_dx), (dk, ref_dk)]:
        assert torch.isfinite(got).all()
        assert rel_err(got, ref) <= TOL[torch.float16]


@pytest.mark.parametrize(("s", "k", "w"), [(2, 3, 32), (3, 3, 11)])
def test_many_programs_with_partial_tiles(s, k, w):
    """Small blocks, as on a GPU but smaller: several channel blocks with a ragged last one (grad-kernels: blocks of
    tap rows), interior column blocks (the unmasked launch) and edge blocks on both sides, and for the full mode
    small flattened-plane tiles. W = 32: rows on 16 bytes, several columns per thread; W = 11: one column per
    thread."""
    # blocks of 2 * (16 bytes / itemsize) columns, 2 channels, 1 sub-pixel row where a kernel splits them; grad-kernels
    # (3 channels > 2: its channel-loop kernel) over blocks of 2 tap rows, the last one ragged
    policy = LaunchPolicy(lanes=2, channel_block=2, sub_rows=1, dk_tap_rows=2, dk_sub_rows=1, full_tile=(2, 32, 1))
    for depthwise in (True, False):
        kk = k if depthwise else 1
        check_launchers(*make_inputs(1, 3, 4, w, s, kk, depthwise), s, kk, depthwise, torch.float32, policy)


def padded(shape, fill=float("nan")):
    """A tensor of ``shape`` whose rows are the start of wider rows (16-byte aligned, >= 16 elements longer) of a
    ``fill``-ed buffer: a read past the end of a row lands on padding, not on the next row."""
    width = (shape[-1] + 31) // 16 * 16
    return torch.full((*shape[:-1], width), fill, device=DEVICE)[..., : shape[-1]]


def element_addresses(*tensors):
    """Byte addresses of every element of the tensors (their storage may hold more)."""
    out = []
    for t in tensors:
        offsets = torch.zeros((), dtype=torch.int64)
        for size, stride in zip(t.shape, t.stride()):
            offsets = offsets.unsqueeze(-1) + torch.arange(size) * stride
        out.append(t.data_ptr() + offsets.flatten().numpy().astype(np.uint64) * t.element_size())
    return np.concatenate(out)


@pytest.mark.skipif(DEVICE != "cpu", reason="reads the addresses of the Triton interpreter's loads and stores")
@pytest.mark.parametrize(("s", "k", "w"), [(2, 3, 33), (1, 7, 17), (3, 5, 20)])
def test_accesses_stay_on_tensor_elements(monkeypatch, s, k, w):
    """Every address the depthwise kernels load or store (mask on) is an element of the op's tensors: interior column
    blocks load without masks, so what they read beyond their taps' columns (forward / grad-x windows, grad-x's
    aligned kernels vectors) must stay inside the image. Small blocks give several interior and edge blocks per row;
    W leaves a last block whose taps fit but whose aligned reads would not with a reach of p (fails at s=2 k=3 and
    s=3 k=5 when the forward's reach is set back to p)."""
    from triton.runtime import interpreter

    policy = LaunchPolicy(lanes=2)
    x, kern = padded((1, 3, 1, w), 1.0), padded((1, k * k * s * s, 1, w), 1.0)  # one row: only columns matter
    grad_out = padded((1, 3, s, w * s), 1.0)
    outs = [padded(shape) for shape in (grad_out.shape, x.shape, kern.shape)]
    valid = element_addresses(x, kern, grad_out, *outs)
    stray = []

    def check(ptrs, mask):
        addresses = ptrs.data[np.broadcast_to(mask.data, ptrs.data.shape)]
        stray.extend(np.setdiff1d(addresses, valid)[:4].tolist())

    load, store = interpreter.InterpreterBuilder.create_masked_load, interpreter.InterpreterBuilder.create_masked_store
    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_load",
                        lambda self, ptrs, mask, *a: check(ptrs, mask) or load(self, ptrs, mask, *a))
    monkeypatch.setattr(interpreter.InterpreterBuilder, "create_masked_store",
                        lambda self, ptrs, value, mask, *a: check(ptrs, mask) or store(self, ptrs, value, mask, *a))
    launch.dynamic_filter_forward(x, kern, s, k, True, out=outs[0], policy=policy)
    launch.dynamic_filter_grad_x(grad_out, kern, s, k, True, out=outs[1], policy=policy)
    launch.dynamic_filter_grad_kernels(grad_out, x, s, k, True, out=outs[2], policy=policy)
    assert not stray, f"{len(stray)} accesses off the tensors' elements, e.g. {stray[:4]}"
    assert all(torch.isfinite(o).all() for o in outs)


@pytest.mark.parametrize("lanes_first", [True, False])
def test_grad_out_run_tile_order(lanes_first):
    """grad-x and grad-kernels load grad_out as 16-byte runs with the lanes axis first or last, whichever puts the
    lanes on it under the installed Triton (3.6 and 3.9 differ); both orders give the reference, masked edge blocks
    included."""
    policy = LaunchPolicy(run_lanes_first=lanes_first)
    check_launchers(*make_inputs(1, 3, 3, 272, 2, 5, True), 2, 5, True, torch.float32, policy)


@pytest.mark.parametrize("depthwise", [True, False])
def test_every_output_element_is_written(depthwise):
    """NaN-filled, non-contiguous ``out`` buffers: any element the kernels skip stays NaN."""
    n, c, h, w, s, k = 2, 3, 5, 3, 2, 3
    x, kern = make_inputs(n, c, h, w, s, k, depthwise)
    grad_out = torch.randn(n, c, s * h, s * w, device=DEVICE)
    ref_y, ref_dx, ref_dk = reference(x, kern, s, k, depthwise, grad_out)
    y = launch.dynamic_filter_forward(x, kern, s, k, depthwise, out=poisoned(ref_y.shape))
    dx = launch.dynamic_filter_grad_x(grad_out, kern, s, k, depthwise, out=poisoned(ref_dx.shape))
    dk = launch.dynamic_filter_grad_kernels(grad_out, x, s, k, depthwise, out=poisoned(ref_dk.shape))
    outputs = [(y, ref_y), (dx, ref_dx), (dk, ref_dk)]
    if depthwise:  # grad-kernels' channel-loop kernel too, over blocks of 2 tap rows (the last one ragged)
        policy = LaunchPolicy(channel_block=1, dk_tap_rows=2, dk_sub_rows=1)
        dk_loop = launch.dynamic_filter_grad_kernels(grad_out, x, s, k, True, out=poisoned(ref_dk.shape), policy=policy)
        outputs.append((dk_loop, ref_dk))
    for got, ref in outputs:
        assert torch.isfinite(got).all()
        assert rel_err(got, ref) <= TOL[torch.float32]


@pytest.mark.parametrize("depthwise", [True, False])
def test_non_contiguous_inputs(depthwise):
    """channels_last and sliced inputs are read through their strides; y.sum() gives a stride-0 grad_out."""
    n, c, h, w, s, k = 2, 3, 5, 6, 2, 3
    x = torch.randn(n, c + 2, 2 * h, w, device=DEVICE)[:, 1 : c + 1, ::2]
    kern = torch.randn(n, kernel_channels(c, s, k, depthwise), h, w, device=DEVICE)
    kern = kern.to(memory_format=torch.channels_last)
    assert not x.is_contiguous() and not kern.is_contiguous()
    x.requires_grad_()
    kern.requires_grad_()
    y = dynamic_filter(x, kern, scale=s, kernel_size=k, depthwise=depthwise, backend="triton")
    dx, dk = torch.autograd.grad(y.sum(), (x, kern))
    ref = reference(x, kern, s, k, depthwise, torch.ones(y.shape))
    errs = [rel_err(a, b) for a, b in zip((y, dx, dk), ref)]
    assert max(errs) <= TOL[torch.float32], errs


@pytest.mark.parametrize("depthwise", [True, False])
def test_gradcheck_float64(depthwise):
    x, kern = make_inputs(1, 2, 3, 4, 2, 3, depthwise, torch.float64)
    x.requires_grad_()
    kern.requires_grad_()
    fn = lambda a, b: dynamic_filter(a, b, scale=2, kernel_size=3, depthwise=depthwise, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, kern), fast_mode=True)


def test_only_requested_gradients_are_computed():
    x, kern = make_inputs(1, 2, 4, 4, 2, 3, True)
    y = dynamic_filter(x, kern.requires_grad_(), scale=2, kernel_size=3, backend="triton")
    (dk,) = torch.autograd.grad(y, (kern,), torch.ones_like(y))
    assert x.grad is None
    assert rel_err(dk, reference(x, kern, 2, 3, True, torch.ones(y.shape))[2]) <= TOL[torch.float32]


def test_opcheck():
    """Schema, fake (meta) implementation, autograd registration and AOT dispatch of the custom op."""
    x, kern = make_inputs(1, 2, 3, 3, 2, 3, True)
    torch.library.opcheck(
        torch.ops.udvd_triton.dynamic_filter.default,
        (x.requires_grad_(), kern.requires_grad_(), 2, 3, True),
        test_utils=("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic"),
    )


@pytest.mark.skipif(DEVICE != "cpu", reason="sparse-file trick maps host memory")
@pytest.mark.parametrize("huge_dim", ["sample", "channel"])
def test_int64_offsets_without_allocating(huge_dim):
    """Sample or channel strides of 2**30+3 elements put data past 2**31 elements (8 GiB of float32) from the
    base pointer. A sparse memory-mapped file holds them: only the touched pages get memory. grad-kernels runs both
    its kernels (all channels in one block, and the channel loop)."""
    big = 2**30 + 3
    n, c, h, w, s, k = (3, 2, 4, 5, 2, 3) if huge_dim == "sample" else (1, 3, 4, 5, 2, 3)
    stride = (big, h * w, w, 1) if huge_dim == "sample" else (0, big, w, 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sparse.bin")
        with open(path, "wb") as f:
            f.truncate(3 * big * 4)
        storage = torch.from_file(path, shared=True, size=3 * big, dtype=torch.float32)
        x = storage.as_strided((n, c, h, w), stride)
        x.copy_(torch.randn(n, c, h, w))
        kern = torch.randn(n, kernel_channels(c, s, k, True), h, w)
        grad_out = torch.randn(n, c, s * h, s * w)
        ref_y, ref_dx, ref_dk = reference(x, kern, s, k, True, grad_out)
        y = launch.dynamic_filter_forward(x, kern, s, k, True)
        dk = launch.dynamic_filter_grad_kernels(grad_out, x, s, k, True)
        # dx is written through the same huge strides, into storage beside x's
        dx = launch.dynamic_filter_grad_x(grad_out, kern, s, k, True, out=storage.as_strided(x.shape, stride, 1000))
        errs = [rel_err(a, b) for a, b in zip((y, dx, dk), (ref_y, ref_dx, ref_dk))]
        loop = LaunchPolicy(interpreter_channels=1)  # fewer than c: the channel-loop kernel
        errs.append(rel_err(launch.dynamic_filter_grad_kernels(grad_out, x, s, k, True, policy=loop), ref_dk))
        del x, dx, storage
    assert max(errs) <= TOL[torch.float32], errs


@pytest.mark.skipif(DEVICE != "cpu", reason="sparse-file trick maps host memory")
@pytest.mark.parametrize(("s", "k", "c", "dtype"), [(2, 1, 2, torch.float32), (3, 3, 2, torch.float32),
                                                    (2, 3, 16, torch.float16)])  # fmt: skip
def test_int64_kernels_channel_stride_without_allocating(s, k, c, dtype):
    """A kernels channel stride of 2**30+3 elements with s >= 2: sub-pixel and tap channel offsets pass 2**31
    elements, for the forward, grad-x (which reads kernels) and grad-kernels (which writes through the same
    strides; both its kernels; fp16 with 16 channels: the tensor-core kernels). Regression: grad-x computed
    ``(i*S + j) * skc`` in int32 and read out of bounds."""
    big = 2**30 + 3
    n, h, w = 1, 3, 4
    kc = kernel_channels(c, s, k, True)
    stride = (0, big, w, 1)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sparse.bin")
        with open(path, "wb") as f:
            f.truncate(kc * big * dtype.itemsize)
        storage = torch.from_file(path, shared=True, size=kc * big, dtype=dtype)
        kern = storage.as_strided((n, kc, h, w), stride)
        kern.copy_(torch.randn(n, kc, h, w))
        x = torch.randn(n, c, h, w).to(dtype)
        grad_out = torch.randn(n, c, s * h, s * w).to(dtype)
        ref_y, ref_dx, ref_dk = reference(x, kern, s, k, True, grad_out)
        y = launch.dynamic_filter_forward(x, kern, s, k, True)
        dx = launch.dynamic_filter_grad_x(grad_out, kern, s, k, True)
        # dkernels goes into the same storage, beside kernels, through the same huge strides
        dk_out = storage.as_strided(kern.shape, stride, h * w)
        dk = launch.dynamic_filter_grad_kernels(grad_out, x, s, k, True, out=dk_out)
        errs = [rel_err(a, b) for a, b in zip((y, dx, dk), (ref_y, ref_dx, ref_dk))]
        dk_out.fill_(float("nan"))
        loop = LaunchPolicy(interpreter_channels=1)  # fewer than c: the channel-loop kernel
        dk = launch.dynamic_filter_grad_kernels(grad_out, x, s, k, True, out=dk_out, policy=loop)
        errs.append(rel_err(dk, ref_dk))
        del kern, dk, dk_out, storage
    assert max(errs) <= TOL[dtype], errs


def test_bad_out_and_cpu_without_interpreter_raise():
    x, kern = make_inputs(1, 3, 4, 4, 2, 5, True)
    with pytest.raises(ValueError, match="out must be"):
        launch.dynamic_filter_forward(x, kern, 2, 5, True, out=torch.empty(1, 3, 8, 9, device=DEVICE))
    with pytest.raises(ValueError, match="kernels must have shape"):
        dynamic_filter_triton(x, kern[:, 1:], 2, 5, True)
    # CPU tensors with the interpreter off (Triton reads TRITON_INTERPRET once, at import: a fresh process)
    code = ("import torch\nfrom udvd_triton.kernels.op import dynamic_filter_triton\n"
            "try:\n    dynamic_filter_triton(torch.ones(1, 3, 4, 4), torch.ones(1, 100, 4, 4), 2, 5, True)\n"
            "except ValueError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "TRITON_INTERPRET" in res.stdout, res.stderr


def test_torch_compile_reference_path_cpu():
    """torch.compile of a function calling dynamic_filter on CPU (the reference path) matches eager."""
    x, kern = make_inputs(1, 3, 4, 5, 2, 3, True, device="cpu")
    fn = lambda a, b: dynamic_filter(a, b, scale=2, kernel_size=3).relu()  # noqa: E731
    torch.testing.assert_close(torch.compile(fn)(x, kern), fn(x, kern))


@pytest.mark.parametrize("depthwise", [True, False])
def test_torch_compile_fullgraph_triton_op(depthwise):
    """The custom op traces without graph breaks (fullgraph) and its compiled forward and backward match eager."""
    x, kern = make_inputs(1, 2, 4, 5, 2, 3, depthwise)

    def fn(a, b):
        return dynamic_filter(a * 2, b, scale=2, kernel_size=3, depthwise=depthwise, backend="triton")

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager" if DEVICE == "cpu" else "inductor")
    grads = []
    for f in (fn, compiled):
        a, b = x.clone().requires_grad_(), kern.clone().requires_grad_()
        y = f(a, b)
        y.square().sum().backward()
        grads.append((y.detach(), a.grad, b.grad))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want)


# ---- GPU only -----------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "c", "h", "w", "s", "k", "depthwise"), [
    (2, 3, 67, 129, 2, 5, True),
    (1, 64, 33, 47, 2, 5, True),
    (1, 3, 45, 31, 4, 9, True),
    (2, 3, 37, 41, 3, 3, False),
    (1, 8, 17, 19, 2, 5, False),
])  # fmt: skip
def test_gpu_larger_shapes(dtype, n, c, h, w, s, k, depthwise):
    check_against_reference(*make_inputs(n, c, h, w, s, k, depthwise, dtype), s, k, depthwise, dtype)


@pytest.mark.gpu
def test_gpu_auto_backend_uses_triton(monkeypatch):
    calls = []
    monkeypatch.setattr(op_module, "dynamic_filter_triton", lambda *a: calls.append(a) or dynamic_filter_reference(*a))
    x, kern = make_inputs(1, 3, 8, 8, 2, 5, True)
    dynamic_filter(x, kern)
    assert len(calls) == 1


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_more_than_2_31_elements():
    """A real fp16 tensor of 2**31 + 2**20 elements: sample bases and in-sample offsets past int32."""
    h, w = 2**15, 2**16 + 32  # 2**31 + 2**20 elements in one channel plane
    x = torch.randn(1, 1, h, w, device="cuda", dtype=torch.float16)
    kern = torch.randn(1, 1, h, w, device="cuda", dtype=torch.float16)
    y = launch.dynamic_filter_forward(x, kern, 1, 1, True)
    tail = (slice(None), slice(None), slice(h - 3, None), slice(w - 5, None))
    torch.testing.assert_close(y[tail], x[tail] * kern[tail])
    assert torch.equal(y[..., :2, :5], x[..., :2, :5] * kern[..., :2, :5])
