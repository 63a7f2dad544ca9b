"""The PyTorch reference of the dynamic filter against an independent unfold + matmul oracle in float64."""

import pytest
import torch
import torch.nn.functional as F

from udvd_triton import dynamic_filter
from udvd_triton.ops import dynamic_filter_reference, kernel_channels


def unfold_oracle(x: torch.Tensor, kernels: torch.Tensor, s: int, k: int, depthwise: bool) -> torch.Tensor:
    """The reference UDVD implementation's PixelConv: unfold k*k patches, one matmul per pixel, pixel shuffle."""
    n, c, h, w = x.shape
    p = (k - 1) // 2
    patches = F.pad(x, [p] * 4).unfold(2, k, 1).unfold(3, k, 1)  # (N, C, H, W, ky, kx)
    patches = patches.permute(0, 2, 3, 1, 5, 4).reshape(n, h, w, c if depthwise else 1, -1)
    rows = k * k if depthwise else c * k * k
    mats = kernels.permute(0, 2, 3, 1).reshape(n, h, w, rows, -1)
    out = torch.matmul(patches, mats).permute(0, 3, 4, 1, 2).reshape(n, -1, h, w)
    return F.pixel_shuffle(out, s)


def direct_oracle(x: torch.Tensor, kernels: torch.Tensor, s: int, k: int) -> torch.Tensor:
    """API.md's depthwise formula, element by element (tiny sizes only)."""
    n, c, h, w = x.shape
    p = (k - 1) // 2
    y = torch.zeros(n, c, s * h, s * w, dtype=torch.float64)
    for hh in range(h):
        for ww in range(w):
            for dy in range(k):
                for dx in range(k):
                    yy, xx = hh + dy - p, ww + dx - p
                    if not (0 <= yy < h and 0 <= xx < w):
                        continue
                    for i in range(s):
                        for j in range(s):
                            wgt = kernels[:, (dx * k + dy) * s * s + i * s + j, hh, ww]
                            y[:, :, s * hh + i, s * ww + j] += x[:, :, yy, xx] * wgt[:, None]
    return y


@pytest.mark.parametrize("depthwise", [True, False])
@pytest.mark.parametrize("s", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [1, 3, 5, 7])
def test_reference_matches_unfold(depthwise: bool, s: int, k: int) -> None:
    n, c, h, w = 2, 3, 5, 7
    x = torch.randn(n, c, h, w, dtype=torch.float64)
    kern = torch.randn(n, kernel_channels(c, s, k, depthwise), h, w, dtype=torch.float64)
    y = dynamic_filter(x, kern, scale=s, kernel_size=k, depthwise=depthwise, backend="torch")
    assert y.shape == (n, c, s * h, s * w)
    torch.testing.assert_close(y, unfold_oracle(x, kern, s, k, depthwise), rtol=1e-12, atol=1e-12)


def test_reference_matches_formula() -> None:
    x = torch.randn(1, 2, 4, 3, dtype=torch.float64)
    kern = torch.randn(1, 5 * 5 * 4, 4, 3, dtype=torch.float64)
    torch.testing.assert_close(dynamic_filter_reference(x, kern, 2, 5), direct_oracle(x, kern, 2, 5))


@pytest.mark.parametrize("depthwise", [True, False])
def test_reference_gradcheck(depthwise: bool) -> None:
    c, s, k = 2, 2, 3
    x = torch.randn(1, c, 4, 3, dtype=torch.float64, requires_grad=True)
    kern = torch.randn(1, kernel_channels(c, s, k, depthwise), 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: dynamic_filter_reference(a, b, s, k, depthwise), (x, kern), fast_mode=True
    )


@pytest.mark.parametrize(
    ("x_shape", "k_shape", "kwargs", "match"),
    [
        ((1, 3, 4, 4), (1, 100, 4, 4), {"kernel_size": 4}, "odd"),
        ((1, 3, 4, 4), (1, 100, 4, 4), {"scale": 5}, "scale"),
        ((1, 3, 4, 4), (1, 99, 4, 4), {}, "kernels must have shape"),
        ((1, 3, 4, 4), (1, 100, 4, 5), {}, "kernels must have shape"),
        ((3, 4, 4), (1, 100, 4, 4), {}, "4-D"),
        ((1, 3, 4, 4), (1, 100, 4, 4), {"backend": "cuda"}, "backend"),
    ],
)
def test_bad_inputs_raise(x_shape, k_shape, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        dynamic_filter(torch.randn(x_shape), torch.randn(k_shape), **kwargs)


def test_integer_inputs_raise() -> None:
    with pytest.raises(ValueError, match="floating-point"):
        dynamic_filter(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.randn(1, 100, 4, 4))
    with pytest.raises(ValueError, match="floating-point"):
        dynamic_filter(torch.randn(1, 3, 4, 4), torch.zeros(1, 100, 4, 4, dtype=torch.int32))


@pytest.mark.parametrize("depthwise", [True, False])
@pytest.mark.parametrize(("x_dtype", "k_dtype"), [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float32)])
def test_reference_mixed_dtypes(depthwise: bool, x_dtype: torch.dtype, k_dtype: torch.dtype) -> None:
    """x and kernels of different float dtypes: the result has x's dtype and equals the float64 op on the same
    values (rounded once, to x's dtype); gradients come back in each input's dtype."""
    c, s, k = 2, 2, 3
    x = torch.randn(1, c, 4, 5).to(x_dtype).requires_grad_()
    kern = torch.randn(1, kernel_channels(c, s, k, depthwise), 4, 5).to(k_dtype).requires_grad_()
    y = dynamic_filter(x, kern, scale=s, kernel_size=k, depthwise=depthwise, backend="torch")
    assert y.dtype == x_dtype
    want = unfold_oracle(x.double(), kern.double(), s, k, depthwise).to(x_dtype)
    torch.testing.assert_close(y, want, rtol=1e-2 if x_dtype == torch.bfloat16 else 1e-5, atol=1e-5)
    dx, dk = torch.autograd.grad(y.sum(), (x, kern))
    assert (dx.dtype, dk.dtype) == (x_dtype, k_dtype)


def test_model_passes_half_precision_kernels_uncast(monkeypatch) -> None:
    """The model hands the op the bf16 kernels of autocast as they are (casting them to fp32 first cost a write and
    a read of the op's largest tensor)."""
    from udvd_triton import model

    seen = []
    monkeypatch.setattr(model, "dynamic_filter", lambda x, k, **kw: seen.append((x.dtype, k.dtype)) or x)
    model._apply_dynamic(torch.randn(1, 3, 4, 4), torch.randn(1, 100, 4, 4, dtype=torch.bfloat16), 2, 5)
    assert seen == [(torch.float32, torch.bfloat16)]
