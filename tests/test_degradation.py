"""udvd_triton.degradation against independent references: scipy (Gaussian pdf, wrap convolution), PIL's bicubic,
hand-computed MATLAB imresize values, and the PCA basis recomputed from scratch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image
from scipy.stats import multivariate_normal

from udvd_triton import degradation as D


def kair_kernel(size: int, theta: float, l1: float, l2: float) -> np.ndarray:
    """SRMD/KAIR anisotropic Gaussian, written from the published definition with scipy's pdf."""
    v = np.array([math.cos(theta), math.sin(theta)])
    V = np.array([[v[0], v[1]], [v[1], -v[0]]])
    sigma = V @ np.diag([l1, l2]) @ np.linalg.inv(V)
    c = size // 2
    ys, xs = np.mgrid[0:size, 0:size]
    pts = np.stack([xs - c, ys - c], axis=-1).reshape(-1, 2)  # (x, y) offsets from the centre
    k = multivariate_normal(mean=[0, 0], cov=sigma).pdf(pts).reshape(size, size)
    return k / k.sum()


def wrap_blur(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    return np.stack([scipy.ndimage.convolve(img[..., c], k, mode="wrap") for c in range(img.shape[-1])], -1)


# ---------------------------------------------------------------------------------------------- kernels


@pytest.mark.parametrize("theta,l1,l2", [(0.0, 6.0, 6.0), (0.3, 4.0, 1.0), (2.0, 0.5, 9.0), (1.2, 0.04, 16.0)])
def test_anisotropic_gaussian_matches_kair_definition(theta, l1, l2):
    k = D.anisotropic_gaussian(15, theta, l1, l2)
    assert k.shape == (15, 15) and k.dtype == np.float64
    assert k.sum() == pytest.approx(1.0, abs=1e-14)
    np.testing.assert_allclose(k, kair_kernel(15, theta, l1, l2), rtol=1e-10, atol=1e-15)


def test_isotropic_gaussian_is_sigma_squared_variance():
    sigma = 1.7
    k = D.isotropic_gaussian(21, sigma)
    np.testing.assert_allclose(k, kair_kernel(21, 0.0, sigma**2, sigma**2), rtol=1e-10, atol=1e-15)
    # Second moment along x of a wide window equals sigma^2 (up to the sampling of a Gaussian on integers).
    r = np.arange(21) - 10
    assert (k.sum(0) * r**2).sum() == pytest.approx(sigma**2, rel=1e-6)


def test_batched_kernels_equal_numpy_ones():
    sx = torch.tensor([0.5, 1.0, 2.5])
    sy = torch.tensor([1.5, 1.0, 0.7])
    th = torch.tensor([0.1, 0.0, 2.9])
    ks = D.gaussian_kernels(sx, sy, th)
    assert ks.shape == (3, 15, 15) and ks.dtype == torch.float64
    for i in range(3):
        ref = D.anisotropic_gaussian(15, float(th[i]), float(sx[i]) ** 2, float(sy[i]) ** 2)
        np.testing.assert_allclose(ks[i].numpy(), ref, rtol=1e-12, atol=1e-15)


def test_random_kernels_distribution_and_determinism():
    g = torch.Generator().manual_seed(1)
    ks = D.random_kernels(500, (0.5, 1.5), generator=g)
    assert ks.shape == (500, 15, 15) and ks.dtype == torch.float32
    np.testing.assert_allclose(ks.sum((1, 2)).numpy(), 1.0, atol=1e-5)
    # Isotropic: x-variance equals y-variance and lies between those of the end-of-range kernels (a Gaussian
    # sampled on integers has a smaller variance than sigma^2 when sigma is small).
    r = torch.arange(15, dtype=torch.float64) - 7
    var_x = (ks.double().sum(1) * r**2).sum(1)
    var_y = (ks.double().sum(2) * r**2).sum(1)
    np.testing.assert_allclose(var_x.numpy(), var_y.numpy(), atol=1e-5)
    lo, hi = ((D.isotropic_gaussian(15, s).sum(0) * r.numpy() ** 2).sum() for s in (0.5, 1.5))
    assert lo - 1e-5 <= var_x.min() and var_x.max() <= hi + 1e-5
    assert var_x.min() < lo + 0.05 and var_x.max() > hi - 0.1  # 500 uniform draws reach both ends
    again = D.random_kernels(500, (0.5, 1.5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(ks, again)
    aniso = D.random_kernels(200, (0.2, 2.0), anisotropic=True, generator=g, dtype=torch.float64)
    var_x = (aniso.sum(1) * r**2).sum(1)
    var_y = (aniso.sum(2) * r**2).sum(1)
    assert (var_x - var_y).abs().max() > 0.1  # anisotropic kernels are not all round


@pytest.mark.parametrize("bad", [dict(size=14), dict(size=0), dict(sigma=0.0)])
def test_kernel_argument_errors(bad):
    with pytest.raises(ValueError):
        D.isotropic_gaussian(**bad)


# ---------------------------------------------------------------------------------------------- imresize


def test_imresize_hand_computed_1d_matlab_values():
    # Derived by hand from MATLAB's imresize: cubic a=-0.5, u = x/s + (1 - 1/s)/2, mirrored indices [1..n, n..1].
    col = np.array([1.0, 2.0, 3.0, 4.0])
    img = np.repeat(col[:, None], 4, axis=1)
    up = D.imresize(img, 2)[:, 0]
    # out[0] = (0.2265625 + 0.8671875) x0 + (-0.0234375 - 0.0703125) x1, x0 and x1 reused by the mirror.
    assert up[0] == pytest.approx(1.09375 * 1 - 0.09375 * 2, abs=1e-15)
    np.testing.assert_allclose(up[::-1], 5 - up, atol=1e-14)  # symmetric ramp stays symmetric
    down = D.imresize(img, 0.5)[:, 0]
    # Antialiased: weights 0.5 * cubic(0.5 * d) at d = +-0.5, +-1.5, +-2.5, +-3.5, folded by the mirror.
    assert down[0] == pytest.approx(0.546875 * 1 + 0.3984375 * 2 + 0.1015625 * 3 - 0.046875 * 4, abs=1e-15)
    assert down[1] == pytest.approx(5 - down[0], abs=1e-14)


@pytest.mark.parametrize("scale,shape,expected", [(0.5, (7, 9), (4, 5)), (1 / 3, (48, 30), (16, 10)),
                                                  (0.25, (13, 16), (4, 4)), (3, (5, 4), (15, 12)), (2, (1, 3), (2, 6))])
def test_imresize_sizes_and_constants(scale, shape, expected):
    img = np.full(shape + (3,), 0.37)
    out = D.imresize(img, scale)
    assert out.shape == expected + (3,)
    np.testing.assert_allclose(out, 0.37, atol=1e-14)
    assert D.imresize(np.full(shape, 0.5, dtype=np.float32), scale).dtype == np.float32


@pytest.mark.parametrize("s", [2, 3, 4])
def test_imresize_interior_matches_pil_bicubic(s):
    rng = np.random.default_rng(s)
    a = rng.random((36, 48)).astype(np.float32)
    pil = Image.fromarray(a, mode="F")
    down = np.asarray(pil.resize((48 // s, 36 // s), Image.BICUBIC))
    ours = D.imresize(a.astype(np.float64), 1 / s)
    m = 3  # PIL renormalises at borders instead of mirroring; the 4s-wide kernel reaches 2 output pixels in
    np.testing.assert_allclose(ours[m:-m, m:-m], down[m:-m, m:-m], atol=2e-6)
    up = np.asarray(pil.resize((48 * s, 36 * s), Image.BICUBIC))
    ours = D.imresize(a.astype(np.float64), s)
    m = 2 * s
    np.testing.assert_allclose(ours[m:-m, m:-m], up[m:-m, m:-m], atol=2e-6)


@pytest.mark.parametrize("scale", [0.5, 1 / 3, 0.25, 2, 3])
def test_imresize_torch_batch_equals_numpy(scale):
    rng = np.random.default_rng(0)
    imgs = rng.random((2, 24, 18, 3))
    out = D.imresize(torch.from_numpy(imgs).permute(0, 3, 1, 2), scale)
    for i in range(2):
        np.testing.assert_allclose(out[i].permute(1, 2, 0).numpy(), D.imresize(imgs[i], scale), atol=1e-12)
    # float32 tensors compute in float32
    out32 = D.imresize(torch.from_numpy(imgs).permute(0, 3, 1, 2).float(), scale)
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(out32.numpy(), out.numpy(), atol=1e-5)


def dense_resize_matrix(in_len: int, out_len: int, scale: float) -> np.ndarray:
    """The (out_len, in_len) weight matrix imresize used before its weights became banded (main 6868c21)."""
    width = 4.0 / scale if scale < 1 else 4.0
    u = np.arange(1, out_len + 1, dtype=np.float64) / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    dist = u[:, None] - idx
    w = scale * D._cubic(scale * dist) if scale < 1 else D._cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    mat = np.zeros((out_len, in_len))
    np.add.at(mat, (np.repeat(np.arange(out_len), taps), idx.ravel()), w.ravel())
    return mat


@pytest.mark.parametrize(("in_len", "scale"), [(1, 2), (2, 0.25), (5, 3), (37, 0.5), (37, 1 / 3), (64, 0.25),
                                               (30, 4), (3000, 2048 / 3000), (11, 1.7)])
def test_banded_resize_weights_equal_the_dense_matrix(in_len: int, scale: float):
    out_len = math.ceil(in_len * scale)
    idx, w = D._resize_band(in_len, out_len, scale)
    assert idx.shape == w.shape and idx.shape[0] == out_len and idx.shape[1] <= math.ceil(4 / min(scale, 1)) + 2
    banded = np.zeros((out_len, in_len))
    np.add.at(banded, (np.repeat(np.arange(out_len), idx.shape[1]), idx.ravel()), w.ravel())
    np.testing.assert_allclose(banded, dense_resize_matrix(in_len, out_len, scale), rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [0.5, 1 / 3, 0.25, 2, 3, 0.7])
def test_imresize_equals_the_dense_matrix_product(scale):
    img = np.random.default_rng(3).random((2, 3, 29, 41))
    oh, ow = math.ceil(29 * scale), math.ceil(41 * scale)
    expected = dense_resize_matrix(29, oh, scale) @ img @ dense_resize_matrix(41, ow, scale).T
    out = D.imresize(torch.from_numpy(img), scale)
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-12)


def test_resize_weights_are_cached_per_device_and_dtype():
    D._resize_weights.cache_clear()
    x = torch.rand(1, 1, 20, 30)
    D.imresize(x, 0.5)
    D.imresize(x, 0.5)
    D.imresize(x.double(), 0.5)
    info = D._resize_weights.cache_info()
    assert (info.misses, info.hits) == (4, 2)  # one entry per (axis length, dtype); repeats copy nothing
    assert info.maxsize is not None and D._resize_band.cache_info().maxsize is not None  # bounded


@pytest.mark.parametrize(
    "img,msg",
    [(np.zeros((8, 8, 3), np.uint8), "dtype uint8"), (np.zeros((3, 8, 8)), "CHW"),
     (torch.zeros(1, 8, 8, 3), "NHWC"), (torch.zeros(8, 8, 3), "shape"), ([[0.0]], "numpy array")],
)
def test_imresize_input_errors(img, msg):
    with pytest.raises(ValueError, match=msg):
        D.imresize(img, 0.5)


# ---------------------------------------------------------------------------------------------- degrade


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_degrade_noise_free_matches_scipy_wrap_convolution(scale):
    rng = np.random.default_rng(scale)
    hr = rng.random((24, 36, 3))
    # Not point-symmetric, so convolution vs correlation (kernel flip) is tested too.
    k = rng.random((15, 15)) * D.isotropic_gaussian(15, 2.0)
    k[:, :7] *= 3
    k /= k.sum()
    lr = D.degrade(hr, k, scale, 0.0)
    ref = D.imresize(wrap_blur(hr, k), 1 / scale)
    assert lr.shape == (24 // scale, 36 // scale, 3) and lr.dtype == np.float64
    np.testing.assert_allclose(lr, ref, atol=1e-13)
    gray = D.degrade(hr[..., 1], k, scale, 0.0)  # HW grayscale in, HW out
    np.testing.assert_allclose(gray, ref[..., 1], atol=1e-13)


def test_degrade_torch_batch_per_sample_kernels_and_noise():
    rng = np.random.default_rng(0)
    hr = rng.random((3, 24, 24, 3))
    ks = D.random_kernels(3, (0.2, 3.0), anisotropic=True, generator=torch.Generator().manual_seed(0),
                          dtype=torch.float64)
    x = torch.from_numpy(hr).permute(0, 3, 1, 2)
    clean = D.degrade(x, ks, 3, 0.0)
    for i in range(3):
        np.testing.assert_allclose(clean[i].permute(1, 2, 0).numpy(), D.degrade(hr[i], ks[i].numpy(), 3, 0.0),
                                   atol=1e-12)
    # One shared kernel broadcasts over the batch.
    shared = D.degrade(x, ks[0], 3, 0.0)
    np.testing.assert_allclose(shared[2].permute(1, 2, 0).numpy(), D.degrade(hr[2], ks[0].numpy(), 3, 0.0),
                               atol=1e-12)
    # Per-sample noise: the residual's std is noise_level / 255 per sample, and the generator makes it repeatable.
    big = torch.from_numpy(rng.random((3, 3, 192, 192)))
    levels = torch.tensor([0.0, 10.0, 50.0])
    noisy = D.degrade(big, ks[0], 2, levels, rng=torch.Generator().manual_seed(5))
    std = (noisy - D.degrade(big, ks[0], 2, 0.0)).std(dim=(1, 2, 3))
    np.testing.assert_allclose(std.numpy(), (levels / 255).numpy(), rtol=0.03)
    again = D.degrade(big, ks[0], 2, levels, rng=torch.Generator().manual_seed(5))
    assert torch.equal(noisy, again)


def test_degrade_numpy_noise_level_and_rng():
    rng = np.random.default_rng(0)
    hr = rng.random((96, 96, 3)).astype(np.float32)
    k = D.isotropic_gaussian(15, 1.3)
    a = D.degrade(hr, k, 2, 15.0, rng=np.random.default_rng(7))
    b = D.degrade(hr, k, 2, 15.0, rng=np.random.default_rng(7))
    assert a.dtype == np.float32 and np.array_equal(a, b)
    resid = a.astype(np.float64) - D.degrade(hr, k, 2, 0.0)
    assert resid.std() == pytest.approx(15 / 255, rel=0.03)
    # No clipping: a white image plus noise leaves [0, 1].
    white = D.degrade(np.ones((24, 24, 3)), k, 2, 15.0, rng=np.random.default_rng(1))
    assert white.max() > 1.0


def variant_blur_reference(img: np.ndarray, kernels: np.ndarray) -> np.ndarray:
    """Per-pixel true convolution with wrap-around borders, written as a plain loop: out[y, x] = sum_ij
    K_yx[i, j] img[(y - i + p) mod H, (x - j + p) mod W]; kernels (H, W, k, k) for an (H, W, C) image."""
    hh, ww, size = img.shape[0], img.shape[1], kernels.shape[-1]
    p = size // 2
    out = np.zeros_like(img)
    for y in range(hh):
        for x in range(ww):
            rows = (y - np.arange(size) + p) % hh
            cols = (x - np.arange(size) + p) % ww
            out[y, x] = np.einsum("ij,ijc->c", kernels[y, x], img[rows][:, cols])
    return out


def test_spatially_variant_blur_against_a_per_pixel_loop():
    rng = np.random.default_rng(4)
    hr = rng.random((12, 16, 3))
    kernels = rng.random((12, 16, 5, 5))
    kernels /= kernels.sum(axis=(2, 3), keepdims=True)
    x = torch.from_numpy(hr).permute(2, 0, 1)[None]
    blurred = D._variant_blur(x, torch.from_numpy(kernels)[None])
    np.testing.assert_allclose(blurred[0].permute(1, 2, 0).numpy(), variant_blur_reference(hr, kernels), atol=1e-12)
    lr = D.degrade(hr, kernels, 2, 0.0)
    np.testing.assert_allclose(lr, D.imresize(variant_blur_reference(hr, kernels), 0.5), atol=1e-12)
    per_lr_pixel = kernels[::2, ::2]  # one kernel per LR pixel blurs its 2 x 2 HR block
    np.testing.assert_allclose(D.degrade(hr, per_lr_pixel, 2, 0.0),
                               D.imresize(variant_blur_reference(hr, per_lr_pixel.repeat(2, 0).repeat(2, 1)), 0.5),
                               atol=1e-12)


def test_uniform_per_pixel_kernels_and_noise_maps_equal_the_scalar_forms():
    rng = np.random.default_rng(5)
    hr = torch.from_numpy(rng.random((2, 3, 36, 48)))
    k = torch.from_numpy(D.anisotropic_gaussian(15, 0.4, 2.0, 5.0))
    for size in ((36, 48), (12, 16)):
        per_pixel = k.expand(2, *size, 15, 15)
        torch.testing.assert_close(D.degrade(hr, per_pixel, 3, 0.0), D.degrade(hr, k, 3, 0.0), atol=1e-12, rtol=0)
    levels = torch.tensor([7.0, 30.0])
    maps = levels.view(2, 1, 1).expand(2, 12, 16)
    a = D.degrade(hr, k, 3, maps, rng=torch.Generator().manual_seed(1))
    b = D.degrade(hr, k, 3, levels, rng=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_a_noise_map_sets_the_noise_per_pixel():
    hr = np.full((96, 384, 3), 0.5)
    level = np.broadcast_to(np.linspace(0, 60, 192), (48, 192))
    lr = D.degrade(hr, D.isotropic_gaussian(15, 1.0), 2, level, rng=np.random.default_rng(0))
    std = (lr - 0.5)[:, :, :].reshape(48, 8, 24, 3).std(axis=(0, 2, 3)) * 255  # 8 column bands
    np.testing.assert_allclose(std, level[0].reshape(8, 24).mean(1), rtol=0.12, atol=0.5)
    with pytest.raises(ValueError, match="LR size"):
        D.degrade(hr, D.isotropic_gaussian(15, 1.0), 2, np.zeros((96, 384)))


@pytest.mark.parametrize(
    "kwargs,msg",
    [
        (dict(scale=5), "scale"),
        (dict(hr=np.zeros((25, 24, 3))), "divisible"),
        (dict(hr=np.zeros((24, 24, 3), np.uint8)), "dtype uint8"),
        (dict(hr=np.zeros((3, 24, 24))), "CHW"),
        (dict(kernel=np.ones((4, 4)) / 16), "odd"),
        (dict(kernel=np.ones((15, 15))), "sum to 1"),
        (dict(hr=torch.zeros(2, 3, 24, 24), kernel=torch.ones(3, 15, 15) / 225), "N=2"),
        (dict(hr=torch.zeros(2, 3, 24, 24), noise_level=torch.ones(3)), "noise_level"),
        (dict(hr=torch.zeros(2, 3, 24, 24), noise_level=torch.ones(24, 24)), r"\(h, w\) = \(12, 12\)"),
        (dict(hr=torch.zeros(2, 3, 24, 24), kernel=torch.ones(8, 8, 15, 15) / 225), "per-pixel"),
        (dict(kernel=np.ones((2, 15, 15)) / 225), "per-pixel"),
        (dict(rng=torch.Generator()), "np.random.Generator"),
        (dict(hr=torch.zeros(1, 3, 24, 24), rng=np.random.default_rng(0)), "torch.Generator"),
    ],
)
def test_degrade_errors(kwargs, msg):
    args = dict(hr=np.zeros((24, 24, 3)), kernel=D.isotropic_gaussian(), scale=2, noise_level=0.0) | kwargs
    with pytest.raises(ValueError, match=msg):
        D.degrade(**args)


# ---------------------------------------------------------------------------------------------- kernel PCA


def test_pca_basis_file_equals_recomputation():
    stored = D.pca_basis()
    assert stored.shape == (15, 225) and stored.dtype == np.float64
    np.testing.assert_allclose(stored, D.compute_pca_basis(), atol=1e-10)
    np.testing.assert_allclose(stored @ stored.T, np.eye(15), atol=1e-12)
    assert D.pca_basis() is stored  # cached


@pytest.mark.parametrize("aniso", [False, True])
def test_pca_reconstructs_in_distribution_kernels(aniso):
    # Fresh kernels of SRMD's x2 training range; reconstruction k ~ P^T (P k).
    ks = D.random_kernels(300, (0.2, 2.0), anisotropic=aniso, generator=torch.Generator().manual_seed(9),
                          dtype=torch.float64)
    codes = D.kernel_code(ks)
    rec = codes @ torch.tensor(D.pca_basis())
    flat = ks.flatten(1)
    rel_l2 = ((rec - flat).norm(dim=1) / flat.norm(dim=1)).numpy()
    # Measured (15 components for widths 0.2..4): isotropic median 1.9e-2, max 4.2e-2; anisotropic median 4.8e-2,
    # max 1.9e-1 (the worst are needle-like kernels with one width near 0.2).
    assert np.median(rel_l2) < (0.03 if not aniso else 0.07)
    assert rel_l2.max() < (0.06 if not aniso else 0.25)


def test_kernel_code_numpy_torch_and_errors():
    k = D.anisotropic_gaussian(15, 0.4, 2.0, 5.0)
    code = D.kernel_code(k)
    assert code.shape == (15,) and code.dtype == np.float64
    np.testing.assert_allclose(code, D.pca_basis() @ k.ravel(), atol=1e-15)
    batch = D.kernel_code(torch.from_numpy(np.stack([k, k])).float())
    assert batch.shape == (2, 15) and batch.dtype == torch.float32
    np.testing.assert_allclose(batch.numpy(), np.stack([code, code]), atol=1e-6)
    with pytest.raises(ValueError, match="15"):
        D.kernel_code(D.isotropic_gaussian(21, 1.0))
    with pytest.raises(ValueError, match="sum to 1"):
        D.kernel_code(2 * k)


# ---------------------------------------------------------------------------------------------- maps


def test_degradation_maps_uniform():
    ks = torch.from_numpy(np.stack([D.isotropic_gaussian(15, 1.0), D.anisotropic_gaussian(15, 1.0, 1.0, 3.0)]))
    code_map, noise_map = D.degradation_maps(ks, torch.tensor([5.0, 25.0]), (6, 7))
    assert code_map.shape == (2, 15, 6, 7) and noise_map.shape == (2, 1, 6, 7)
    assert code_map.dtype == torch.float32 and noise_map.dtype == torch.float32
    for i in range(2):
        np.testing.assert_allclose(code_map[i, :, 3, 4].numpy(), D.kernel_code(ks[i].numpy()), atol=1e-7)
    np.testing.assert_allclose(noise_map[:, 0, 5, 6].numpy(), [5 / 255, 25 / 255], rtol=1e-6)
    # One numpy kernel and a float noise level give one map; N broadcasts from either side.
    c1, n1 = D.degradation_maps(D.isotropic_gaussian(), 10.0, 4, dtype=torch.float64)
    assert c1.shape == (1, 15, 4, 4) and n1.shape == (1, 1, 4, 4) and float(n1[0, 0, 0, 0]) == 10 / 255
    c3, n3 = D.degradation_maps(D.isotropic_gaussian(), torch.tensor([0.0, 5.0, 10.0]), 4)
    assert c3.shape == (3, 15, 4, 4) and n3.shape == (3, 1, 4, 4)


def test_degradation_maps_spatially_variant():
    g = torch.Generator().manual_seed(2)
    per_pixel = D.random_kernels(2 * 3 * 4, (0.3, 2.0), anisotropic=True, generator=g, dtype=torch.float64)
    per_pixel = per_pixel.reshape(2, 3, 4, 15, 15)
    noise = torch.rand(3, 4, generator=g, dtype=torch.float64) * 50
    code_map, noise_map = D.degradation_maps(per_pixel, noise, (3, 4), dtype=torch.float64)
    assert code_map.shape == (2, 15, 3, 4) and noise_map.shape == (2, 1, 3, 4)
    np.testing.assert_allclose(code_map[1, :, 2, 3].numpy(), D.kernel_code(per_pixel[1, 2, 3].numpy()), atol=1e-15)
    np.testing.assert_allclose(noise_map[1, 0].numpy(), (noise / 255).numpy(), atol=1e-15)
    # A ready code map passes through.
    again, _ = D.degradation_maps(code_map, noise.expand(2, 3, 4), (3, 4), dtype=torch.float64)
    assert torch.equal(again, code_map)


@pytest.mark.parametrize(
    "kernel,noise,size,msg",
    [
        (torch.zeros(2, 15, 5, 5), 0.0, (4, 4), "size"),
        (D.random_kernels(2, dtype=torch.float64), torch.zeros(3), 4, "batch sizes"),
        (D.isotropic_gaussian(), torch.zeros(5, 5), 4, "noise map"),
        (torch.zeros(1, 15, 15, 15, 15, 15), 0.0, 4, "kernel must be"),
        (D.isotropic_gaussian(21), 0.0, 4, "PCA basis"),
    ],
)
def test_degradation_maps_errors(kernel, noise, size, msg):
    with pytest.raises(ValueError, match=msg):
        D.degradation_maps(kernel, noise, size)


@pytest.mark.gpu
def test_degrade_on_cuda_matches_cpu():
    g = torch.Generator(device="cuda").manual_seed(0)
    ks = D.random_kernels(4, (0.2, 4.0), anisotropic=True, generator=g, dtype=torch.float64)
    x = torch.rand(4, 3, 48, 48, dtype=torch.float64, device="cuda", generator=g)
    out = D.degrade(x, ks, 4, 0.0)
    np.testing.assert_allclose(out.cpu().numpy(), D.degrade(x.cpu(), ks.cpu(), 4, 0.0).numpy(), atol=1e-12)
    code_map, _ = D.degradation_maps(ks, torch.full((4,), 5.0, device="cuda"), 12)
    assert code_map.device.type == "cuda"


def test_kernel_code_with_another_basis():
    """A model trained with another basis (its ``kernel_basis``) encodes kernels with that basis."""
    rng = np.random.default_rng(7)
    basis = rng.standard_normal((10, 225))
    k = D.isotropic_gaussian(15, 1.3)
    np.testing.assert_allclose(D.kernel_code(k, basis), basis @ k.ravel(), rtol=1e-12)
    kt = torch.from_numpy(np.stack([k, D.anisotropic_gaussian(15, 0.3, 2.0, 5.0)]))
    got = D.kernel_code(kt, torch.from_numpy(basis))
    torch.testing.assert_close(got, kt.flatten(1) @ torch.from_numpy(basis).T)
    small = rng.standard_normal((4, 49))
    assert D.kernel_code(D.isotropic_gaussian(7, 1.0), small).shape == (4,)
    with pytest.raises(ValueError, match="to match the PCA basis"):
        D.kernel_code(k, small)
    with pytest.raises(ValueError, match="basis must be"):
        D.kernel_code(k, rng.standard_normal((4, 50)))
