"""SRMD degradation model: Gaussian blur kernels, MATLAB bicubic resize, degradation, kernel PCA and maps.

Degradation (SRMD / KAIR conventions)::

    lr = imresize(circular_convolve(hr, kernel), 1/scale) + N(0, (noise_level/255)^2)

Images are float in [0, 1]: numpy HWC (or HW) arrays, or torch (N, C, H, W) tensors on any device. The numpy
entry points convert to float64 torch tensors and run the same code as the torch ones, so both give the same
numbers; only the random noise differs (numpy draws from ``np.random.Generator``, torch from ``torch.Generator``).

Blur kernels are 2-D Gaussians with covariance ``V diag(l1, l2) V^-1``, V the rotation by ``theta``: ``l1`` and
``l2`` are variances in HR pixels^2 along the rotated axes, so an isotropic kernel of width (standard deviation)
``sigma`` has ``l1 = l2 = sigma**2``. Kernels are sampled at integer offsets about the centre pixel and normalised
to sum to 1; their first axis is y (rows) and the second x (columns), with ``theta`` measured from the x axis.

Kernel codes follow SRMD: ``code = P @ kernel.ravel()`` with the (15, 225) PCA basis ``P`` of :func:`pca_basis`
and no mean subtraction; ``P.T @ code`` reconstructs the kernel.
"""

from __future__ import annotations

import functools
import importlib.resources
import math

import numpy as np
import torch
import torch.nn.functional as F

BLUR_SIZE = 15  # side of the SRMD blur kernels (HR pixels)
CODE_LENGTH = 15
SCALES = (2, 3, 4)  # the super-resolution factors of the SRMD degradation model, and of every UDVD
# Isotropic Gaussian blur widths (std, HR pixels) of SRMD's training range per scale: what the models are trained on.
SIGMA_RANGES = {2: (0.2, 2.0), 3: (0.2, 3.0), 4: (0.2, 4.0)}
PCA_FILE = "kernel_pca.npy"
# Sampling of the PCA training set: SRMD's widest x4 range, half isotropic and half anisotropic kernels.
PCA_SIGMA_RANGE = (0.2, 4.0)
PCA_N_KERNELS = 20000
_SUM_TOL = 1e-3  # kernels must sum to 1 within this (float32 kernels of 225 taps are off by ~1e-7)
_MAX_CHANNELS = 4  # more "channels" than this almost certainly means a CHW / HWC mix-up

__all__ = [
    "anisotropic_gaussian",
    "compute_pca_basis",
    "degradation_maps",
    "degrade",
    "gaussian_kernels",
    "imresize",
    "isotropic_gaussian",
    "kernel_code",
    "pca_basis",
    "random_kernels",
]


# --------------------------------------------------------------------------------------------------- kernels


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"kernel size must be a positive odd integer (the kernel has a centre pixel), got {size!r}")


def gaussian_kernels(
    sigma_x: torch.Tensor | float,
    sigma_y: torch.Tensor | float | None = None,
    theta: torch.Tensor | float = 0.0,
    size: int = BLUR_SIZE,
    dtype: torch.dtype | None = None,
    *,
    check: bool = True,
) -> torch.Tensor:
    """Batched Gaussian blur kernels (the one implementation behind every kernel in this module).

    Args:
        sigma_x: (N,) tensor or float, standard deviation in HR pixels along the axis at angle ``theta``
            (so ``l1 = sigma_x**2``).
        sigma_y: (N,) tensor or float, standard deviation along the perpendicular axis; ``None`` = ``sigma_x``.
        theta: (N,) tensor or float, rotation in radians from the x (column) axis.
        size: odd kernel size.
        dtype: output dtype; the kernels are always computed in float64 first. Default float64.
        check: raise ValueError unless every width is positive. Reading the widths back costs a host-device sync;
            callers whose widths are positive by construction (``random_kernels``) skip it.

    Returns:
        (N, size, size) tensor on the device of the tensor arguments (CPU for plain floats), each kernel summing
        to 1.
    """
    _check_size(size)
    device = next((t.device for t in (sigma_x, sigma_y, theta) if isinstance(t, torch.Tensor)), None)

    def as_f64(v: torch.Tensor | float) -> torch.Tensor:
        # A Python number becomes a filled tensor on the device, not a host tensor copied over (which syncs).
        if isinstance(v, (int, float, np.integer, np.floating)):
            return torch.full((1,), float(v), dtype=torch.float64, device=device)
        return torch.as_tensor(v, dtype=torch.float64, device=device).reshape(-1)

    sx = as_f64(sigma_x)
    sy = sx if sigma_y is None else as_f64(sigma_y)
    sx, sy, th = torch.broadcast_tensors(sx, sy, as_f64(theta))
    if check and (bool((sx <= 0).any()) or bool((sy <= 0).any())):
        raise ValueError("kernel widths sigma_x, sigma_y must be positive")
    r = torch.arange(size, dtype=torch.float64, device=device) - size // 2
    y, x = r[:, None], r[None, :]
    c, s = torch.cos(th)[:, None, None], torch.sin(th)[:, None, None]
    # Quadratic form with Sigma^-1 = v v^T / l1 + u u^T / l2, v = (cos, sin), u = (-sin, cos) in (x, y).
    along, across = c * x + s * y, -s * x + c * y
    q = (along / sx[:, None, None]) ** 2 + (across / sy[:, None, None]) ** 2
    k = torch.exp(-0.5 * q)
    k = k / k.sum(dim=(-2, -1), keepdim=True)
    return k if dtype is None else k.to(dtype)


def anisotropic_gaussian(size: int = BLUR_SIZE, theta: float = 0.0, l1: float = 6.0, l2: float = 6.0) -> np.ndarray:
    """(size, size) float64 Gaussian kernel with covariance ``V diag(l1, l2) V^-1`` (SRMD/KAIR), summing to 1.

    ``l1``, ``l2``: variances (eigenvalues of the covariance) in HR pixels^2; ``theta``: rotation in radians.
    """
    if l1 <= 0 or l2 <= 0:
        raise ValueError(f"eigenvalues l1, l2 must be positive, got l1={l1}, l2={l2}")
    return gaussian_kernels(math.sqrt(l1), math.sqrt(l2), theta, size)[0].numpy()


def isotropic_gaussian(size: int = BLUR_SIZE, sigma: float = 1.0) -> np.ndarray:
    """(size, size) float64 isotropic Gaussian kernel of width (standard deviation) ``sigma`` HR pixels."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    return gaussian_kernels(sigma, size=size)[0].numpy()


def random_kernels(
    n: int,
    sigma_range: tuple[float, float] = (0.2, 2.0),
    anisotropic: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Sample ``n`` kernels of SRMD's training distribution: (n, 15, 15) tensor of ``dtype`` on ``device``.

    Isotropic: width uniform in ``sigma_range``. Anisotropic: theta uniform in [0, pi) and two independent widths
    uniform in ``sigma_range`` (so ``l1, l2`` are squares of uniform widths). ``generator`` must live on
    ``device`` (as torch requires); widths are in HR pixels, so SRMD uses (0.2, 2), (0.2, 3), (0.2, 4) for x2, x3, x4.
    """
    lo, hi = sigma_range
    if not 0 < lo <= hi:
        raise ValueError(f"sigma_range must satisfy 0 < low <= high, got {sigma_range}")
    device = generator.device if device is None and generator is not None else device

    def uniform(a: float, b: float) -> torch.Tensor:
        return a + (b - a) * torch.rand(n, generator=generator, device=device, dtype=torch.float64)

    # The widths are positive by construction (lo > 0): no check, so sampling never waits for the device.
    if not anisotropic:
        return gaussian_kernels(uniform(lo, hi), dtype=dtype, check=False)
    theta = uniform(0.0, math.pi)
    return gaussian_kernels(uniform(lo, hi), uniform(lo, hi), theta, dtype=dtype, check=False)


def _check_kernels(k: torch.Tensor, name: str = "kernel", *, check_sums: bool = True) -> None:
    """Square odd kernels (..., k, k) of a float dtype, each summing to 1 (``check_sums``: the one check that reads
    values, and so waits for the device; the shape and dtype checks are free)."""
    if not k.is_floating_point():
        raise ValueError(f"{name} must be a floating-point array, got dtype {k.dtype}")
    if k.dim() < 2 or k.shape[-1] != k.shape[-2]:
        raise ValueError(f"{name} must be square (..., k, k), got shape {tuple(k.shape)}")
    if k.shape[-1] % 2 == 0:
        raise ValueError(f"{name} size must be odd (the kernel has a centre pixel), got {k.shape[-1]}")
    if not check_sums or not k.numel():
        return
    err = (k.sum(dim=(-2, -1), dtype=torch.float64) - 1).abs().max()
    if err > _SUM_TOL:
        raise ValueError(f"{name} must sum to 1 (within {_SUM_TOL}), but a sum is off by {float(err):.3g}")


# --------------------------------------------------------------------------------------------------- imresize


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


def cubic_taps(scale: int, kernel_size: int) -> torch.Tensor:
    """Bicubic (a = -0.5) upsampling weights by an integer ``scale``: (s, k) float32, rows sum to 1.

    Row a weights the k LR pixels at offsets -p..p around LR pixel i for HR pixel s*i + a (pixel centres aligned
    as in ``imresize``); taps outside the k window (only when k < 5) are dropped and the row renormalised.
    """
    p = kernel_size // 2
    centre = (np.arange(scale) + 0.5) / scale - 0.5  # HR sub-pixel centres in LR pixel units around pixel i
    w = _cubic(centre[:, None] - (np.arange(kernel_size) - p)[None, :])
    return torch.from_numpy(w / w.sum(1, keepdims=True)).float()


_BAND_CACHE_SIZE = 256  # (in, out, scale) bands: a few kB each
_WEIGHT_CACHE_SIZE = 64  # device copies: at most (out_len * taps * 16) bytes each, e.g. 1.7 MB for 12000 px


@functools.lru_cache(maxsize=_BAND_CACHE_SIZE)
def _resize_band(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB imresize along one axis as banded weights: ``out[i] = sum_t w[i, t] * in[idx[i, t]]``.

    Returns ``(idx, w)``, both (out_len, taps) read-only, int64 and float64, taps <= ceil(4 / min(scale, 1)) + 2
    (6 when upscaling, 18 for a 1/4 shrink). Downscaling antialiases by stretching the kernel by 1/scale;
    out-of-range taps are mirrored with MATLAB's symmetric rule (indices 1..n, n..1, repeated), so an index can
    repeat within a row (its weights then add up, as in MATLAB's weight matrix). Memory is linear in the output
    length, where the dense (out_len, in_len) matrix it replaces took 71 MB for one 3000 -> 2048 shrink.
    """
    width = 4.0
    if scale < 1:
        width /= scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]
    dist = u[:, None] - idx
    w = scale * _cubic(scale * dist) if scale < 1 else _cubic(dist)
    w = w / w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    used = (w != 0).any(axis=0)  # the outermost taps are often zero for every output
    idx, w = np.ascontiguousarray(idx[:, used]), np.ascontiguousarray(w[:, used])
    idx.setflags(write=False)
    w.setflags(write=False)
    return idx, w


@functools.lru_cache(maxsize=_WEIGHT_CACHE_SIZE)
def _resize_weights(
    in_len: int, out_len: int, scale: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``_resize_band`` as tensors on ``device`` (weights in ``dtype``), cached so that repeated resizes of one
    size (every training step) copy nothing from the host."""
    idx, w = _resize_band(in_len, out_len, scale)
    return torch.tensor(idx, device=device), torch.tensor(w, dtype=dtype, device=device)


def _resize_along(x: torch.Tensor, dim: int, out_len: int, scale: float) -> torch.Tensor:
    """Resize ``x`` along ``dim`` (2 or 3 of N, C, H, W): one gather and multiply-add per tap, so the extra memory
    is one output-sized tensor whatever the image size."""
    idx, w = _resize_weights(x.shape[dim], out_len, scale, x.device, x.dtype)
    shape = [1] * x.dim()
    shape[dim] = out_len
    out = x.index_select(dim, idx[:, 0]).mul_(w[:, 0].view(shape))
    for t in range(1, idx.shape[1]):
        out.addcmul_(x.index_select(dim, idx[:, t]), w[:, t].view(shape))
    return out


def _check_image(img: np.ndarray | torch.Tensor, name: str) -> None:
    if isinstance(img, np.ndarray):
        if not np.issubdtype(img.dtype, np.floating):
            raise ValueError(f"{name} must be a float image in [0, 1], got dtype {img.dtype} (convert: img / 255.0)")
        if img.ndim not in (2, 3):
            raise ValueError(f"{name} must be a numpy HW or HWC array, got shape {img.shape}")
        if img.ndim == 3 and img.shape[2] > _MAX_CHANNELS:
            raise ValueError(f"{name} must be HWC with at most {_MAX_CHANNELS} channels, got shape {img.shape} (CHW?)")
    elif isinstance(img, torch.Tensor):
        if not img.is_floating_point():
            raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {img.dtype}")
        if img.dim() != 4:
            raise ValueError(f"{name} must be a torch (N, C, H, W) tensor, got shape {tuple(img.shape)}")
        if img.shape[1] > _MAX_CHANNELS:
            raise ValueError(
                f"{name} must be (N, C, H, W) with at most {_MAX_CHANNELS} channels, "
                f"got shape {tuple(img.shape)} (NHWC?)"
            )
    else:
        raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(img).__name__}")


def _numpy_to_nchw(img: np.ndarray) -> torch.Tensor:
    hwc = img[:, :, None] if img.ndim == 2 else img
    return torch.from_numpy(np.ascontiguousarray(hwc, dtype=np.float64)).permute(2, 0, 1).unsqueeze(0)


def _nchw_to_numpy(x: torch.Tensor, ndim: int) -> np.ndarray:
    """(1, C, H, W) tensor -> numpy HWC (ndim 3) or HW (ndim 2)."""
    out = x[0].permute(1, 2, 0).numpy()
    return out[:, :, 0] if ndim == 2 else out


def imresize(img: np.ndarray | torch.Tensor, scale: float) -> np.ndarray | torch.Tensor:
    """MATLAB-compatible ``imresize(img, scale, 'bicubic')`` (antialiased when downscaling).

    Args:
        img: numpy HW or HWC float array (computed in float64, returned in the input dtype), or a torch
            (N, C, H, W) float tensor on any device (computed in its dtype).
        scale: positive factor, e.g. 1/2, 1/3, 1/4, 2, 3. Output size is ``ceil(in * scale)`` per axis.

    Returns:
        The resized image, same kind and layout as ``img``. No clipping.
    """
    _check_image(img, "img")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    if isinstance(img, np.ndarray):
        return _nchw_to_numpy(imresize(_numpy_to_nchw(img), scale), img.ndim).astype(img.dtype, copy=False)
    h, w = img.shape[-2:]
    # Rows first: gathering whole rows is cheaper than gathering columns, and a shrink leaves fewer columns to do.
    return _resize_along(_resize_along(img, 2, math.ceil(h * scale), scale), 3, math.ceil(w * scale), scale)


# --------------------------------------------------------------------------------------------------- degrade


def _circular_blur(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Convolve (N, C, H, W) with (N, k, k) kernels, wrap-around borders (scipy.ndimage.convolve mode='wrap')."""
    n, c, h, w = x.shape
    p = kernel.shape[-1] // 2
    if p > h or p > w:
        raise ValueError(f"image of size {h}x{w} is smaller than the kernel radius {p}")
    xp = F.pad(x.reshape(1, n * c, h, w), (p, p, p, p), mode="circular")
    # conv2d correlates; flipping makes it a true convolution (matters for kernels that are not point-symmetric).
    weight = kernel.flip(-2, -1).repeat_interleave(c, dim=0).unsqueeze(1)
    return F.conv2d(xp, weight, groups=n * c).reshape(n, c, h, w)


def _variant_blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Spatially variant ``_circular_blur``: (N, C, H, W) with per-pixel kernels (N, h, w, k, k), where (h, w) is
    (H, W) (a kernel per pixel) or (H/s, W/s) (one per s x s block). Each output pixel is the true convolution of its
    own kernel with the wrap-padded input, so equal kernels give ``_circular_blur``'s result. One multiply-add per
    tap: memory a few image-sized tensors, never the (k*k)-fold unfolded image."""
    n, c, hh, ww = x.shape
    size = kernels.shape[-1]
    p = size // 2
    if p > hh or p > ww:
        raise ValueError(f"image of size {hh}x{ww} is smaller than the kernel radius {p}")
    block = hh // kernels.shape[1]
    xp = F.pad(x, (p, p, p, p), mode="circular")
    out = torch.zeros_like(x)
    for i in range(size):
        for j in range(size):
            weight = kernels[..., i, j]
            if block > 1:
                weight = weight.repeat_interleave(block, 1).repeat_interleave(block, 2)
            out.addcmul_(xp[:, :, 2 * p - i : 2 * p - i + hh, 2 * p - j : 2 * p - j + ww], weight[:, None])
    return out


def degrade(
    hr: np.ndarray | torch.Tensor,
    kernel: np.ndarray | torch.Tensor,
    scale: int,
    noise_level: float | np.ndarray | torch.Tensor,
    rng: np.random.Generator | torch.Generator | None = None,
) -> np.ndarray | torch.Tensor:
    """SRMD degradation: circular blur by ``kernel`` -> ``imresize(.., 1/scale)`` -> AWGN of std noise_level/255.

    Blur and noise may vary over the image (the paper's spatially variant degradations): per-pixel kernels, at HR
    size (a kernel per HR pixel) or LR size (one per LR pixel, blurring its scale x scale HR block), and a map of
    noise levels at LR size. The result is neither clipped to [0, 1] nor quantised (SRMD trains on the unclipped
    float LR image).

    Args:
        hr: numpy HWC (or HW) float image in [0, 1], or torch (N, C, H, W) float tensor on any device.
            H and W must be divisible by ``scale``.
        kernel: odd (k, k) blur kernel summing to 1, or per-pixel kernels (h, w, k, k) with (h, w) = (H, W) or
            (H/scale, W/scale); for torch also per-sample (N, k, k) and (N, h, w, k, k). numpy or torch.
        scale: 2, 3 or 4.
        noise_level: noise std on the 0..255 scale, or a map of them (H/scale, W/scale); for torch also per-sample
            (N,) and (N, H/scale, W/scale).
        rng: ``np.random.Generator`` for numpy input, ``torch.Generator`` (on the image's device) for torch;
            ``None`` uses a fresh default generator / torch's global one.

    Returns:
        numpy (H/scale, W/scale[, C]) in ``hr``'s dtype, or torch (N, C, H/scale, W/scale) in ``hr``'s dtype
        (blur and resize run in float64 for numpy, in the tensor's dtype for torch).
    """
    _check_image(hr, "hr")
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    h, w = hr.shape[:2] if isinstance(hr, np.ndarray) else hr.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"HR size {h}x{w} must be divisible by scale {scale}; crop it first")

    if isinstance(hr, np.ndarray):
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise ValueError(f"numpy images take rng=np.random.Generator, got {type(rng).__name__}")
        k = torch.as_tensor(np.asarray(kernel), dtype=torch.float64)
        if k.dim() not in (2, 4):
            raise ValueError(f"numpy images take one (k, k) kernel or per-pixel (h, w, k, k), got {tuple(k.shape)}")
        sigma = np.asarray(noise_level, dtype=np.float64)
        if sigma.ndim not in (0, 2):
            raise ValueError(f"numpy images take a scalar noise_level or a map (h, w), got shape {sigma.shape}")
        lr = _nchw_to_numpy(degrade(_numpy_to_nchw(hr), k if k.dim() == 2 else k[None], scale, 0.0), hr.ndim)
        if sigma.ndim == 2 and sigma.shape != lr.shape[:2]:
            raise ValueError(f"noise map must have the LR size {lr.shape[:2]}, got {sigma.shape}")
        rng = np.random.default_rng() if rng is None else rng
        noise_std = sigma / 255.0 if sigma.ndim == 0 or lr.ndim == 2 else sigma[..., None] / 255.0
        lr = lr + rng.standard_normal(lr.shape) * noise_std
        return lr.astype(hr.dtype, copy=False)

    if rng is not None and not isinstance(rng, torch.Generator):
        raise ValueError(f"torch images take rng=torch.Generator, got {type(rng).__name__}")
    n = hr.shape[0]
    k = torch.as_tensor(kernel).to(device=hr.device)
    _check_kernels(k)
    if k.dim() in (2, 4):
        k = k.expand(n, *k.shape)
    if k.dim() == 3 and k.shape[0] == n:
        blurred = _circular_blur(hr, k.to(hr.dtype))
    elif k.dim() == 5 and k.shape[0] == n and k.shape[1:3] in ((h, w), (h // scale, w // scale)):
        blurred = _variant_blur(hr, k.to(hr.dtype))
    else:
        raise ValueError(
            f"kernel must be (k, k), (N, k, k), or per-pixel (h, w, k, k) / (N, h, w, k, k) with N={n} and (h, w) = "
            f"{(h, w)} or {(h // scale, w // scale)}; got shape {tuple(k.shape)}"
        )
    lr = imresize(blurred, 1 / scale)
    if not isinstance(noise_level, (torch.Tensor, np.ndarray)) and noise_level == 0:
        return lr
    sigma = torch.as_tensor(noise_level, dtype=hr.dtype, device=hr.device)
    lr_size = tuple(lr.shape[-2:])
    if sigma.dim() <= 1 and sigma.numel() in (1, n):
        sigma = sigma.reshape(-1, 1, 1, 1)
    elif sigma.dim() in (2, 3) and tuple(sigma.shape[-2:]) == lr_size and (sigma.dim() == 2 or sigma.shape[0] in (1, n)):
        sigma = sigma.reshape(-1, 1, *lr_size)
    else:
        raise ValueError(
            f"noise_level must be a float, an (N,) tensor, or a map (h, w) / (N, h, w) with N={n} and (h, w) = "
            f"{lr_size}; got shape {tuple(sigma.shape)}"
        )
    noise = torch.randn(lr.shape, generator=rng, device=lr.device, dtype=lr.dtype)
    return lr + noise * (sigma / 255.0)


# --------------------------------------------------------------------------------------------------- kernel PCA


def compute_pca_basis(n_kernels: int = PCA_N_KERNELS, seed: int = 0) -> np.ndarray:
    """Deterministic (15, 225) float64 kernel-PCA basis (rows orthonormal), as stored in weights/kernel_pca.npy.

    Samples ``n_kernels`` 15x15 kernels with ``torch.Generator().manual_seed(seed)`` on the CPU: the first half
    isotropic, the rest anisotropic, widths uniform in ``PCA_SIGMA_RANGE`` = (0.2, 4.0) (SRMD's range covering
    x2..x4). The rows are the top right-singular vectors of the (n, 225) kernel matrix *without* mean subtraction
    (SRMD: code = P @ k.ravel()). Sign: each row has a positive dot product with ``arange(1, 226)``.
    """
    g = torch.Generator().manual_seed(seed)
    n_iso = n_kernels // 2
    iso = random_kernels(n_iso, PCA_SIGMA_RANGE, generator=g, dtype=torch.float64)
    aniso = random_kernels(n_kernels - n_iso, PCA_SIGMA_RANGE, anisotropic=True, generator=g, dtype=torch.float64)
    data = torch.cat([iso, aniso]).reshape(n_kernels, -1)
    # torch's SVD, not numpy's: numpy's multithreaded BLAS is 10x slower on a busy machine.
    basis = torch.linalg.svd(data, full_matrices=False).Vh[:CODE_LENGTH].numpy()
    signs = np.sign(basis @ np.arange(1, basis.shape[1] + 1))
    return np.ascontiguousarray(basis * signs[:, None])


@functools.lru_cache(maxsize=1)
def pca_basis() -> np.ndarray:
    """The (15, 225) float64 kernel-PCA basis shipped in ``udvd_triton.weights`` (read-only, loaded once)."""
    resource = importlib.resources.files("udvd_triton.weights").joinpath(PCA_FILE)
    if not resource.is_file():
        raise FileNotFoundError(
            f"kernel-PCA basis {PCA_FILE} missing from udvd_triton.weights (write it with scripts/make_pca_basis.py)"
        )
    with resource.open("rb") as f:
        basis = np.load(f)
    if basis.shape != (CODE_LENGTH, BLUR_SIZE * BLUR_SIZE):
        raise ValueError(f"{PCA_FILE} has shape {basis.shape}, expected {(CODE_LENGTH, BLUR_SIZE * BLUR_SIZE)}")
    basis.setflags(write=False)
    return basis


@functools.lru_cache(maxsize=16)
def _pca_basis_tensor(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`pca_basis` as a tensor, copied to each (device, dtype) once rather than on every call."""
    return torch.tensor(pca_basis(), dtype=dtype, device=device)


def kernel_code(
    kernel: np.ndarray | torch.Tensor, basis: np.ndarray | torch.Tensor | None = None, *, check: bool = True
) -> np.ndarray | torch.Tensor:
    """SRMD kernel code ``P @ kernel.ravel()`` with P = ``basis``, by default :func:`pca_basis`.

    Args:
        kernel: numpy (k, k), or torch (k, k) / (N, k, k) on any device; each kernel sums to 1.
        basis: (code_len, k*k) projection, e.g. the ``kernel_basis`` a model was trained with; k = 15 by default.
        check: verify that each kernel sums to 1 (reads values back: a host-device sync). Training's synthesis
            skips it for the kernels it builds normalised.

    Returns:
        numpy (code_len,) float64, or torch (code_len,) / (N, code_len) in the kernel's dtype and on its device.
    """
    if isinstance(kernel, np.ndarray):
        return kernel_code(torch.from_numpy(np.asarray(kernel, dtype=np.float64)), basis, check=check).numpy()
    if not isinstance(kernel, torch.Tensor):
        raise ValueError(f"kernel must be a numpy array or torch tensor, got {type(kernel).__name__}")
    if basis is None:
        p = _pca_basis_tensor(kernel.device, kernel.dtype if kernel.is_floating_point() else torch.float64)
    else:
        p = basis if isinstance(basis, torch.Tensor) else torch.tensor(basis)
    size = math.isqrt(p.shape[-1])
    if p.dim() != 2 or size * size != p.shape[-1]:
        raise ValueError(f"basis must be (code_len, k*k), got shape {tuple(p.shape)}")
    if kernel.dim() not in (2, 3) or kernel.shape[-2:] != (size, size):
        raise ValueError(
            f"kernel must be ({size}, {size}) or (N, {size}, {size}) to match the PCA basis, "
            f"got shape {tuple(kernel.shape)}"
        )
    _check_kernels(kernel, check_sums=check)
    return kernel.flatten(-2) @ p.to(device=kernel.device, dtype=kernel.dtype).T


# --------------------------------------------------------------------------------------------------- maps


def degradation_maps(
    kernel: np.ndarray | torch.Tensor,
    noise_level: float | np.ndarray | torch.Tensor,
    size: int | tuple[int, int],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's degradation inputs, SRMD "dimensionality stretching" of kernel code and noise level.

    Args:
        kernel: spatially uniform (k, k) or (N, k, k) kernels; spatially variant per-pixel kernels (N, h, w, k, k);
            or a ready (N, 15, h, w) code map. numpy or torch. k = 15.
        noise_level: noise std on the 0..255 scale: float, per-sample (N,), or a map (h, w) / (N, h, w).
        size: LR size h (square) or (h, w): the size of the maps.
        device: target device; default the kernel's device (CPU for numpy).
        dtype: output dtype.

    Returns:
        ``(kernel_code_map (N, 15, h, w), noise_map (N, 1, h, w) = sigma / 255)``. N broadcasts from 1 between
        ``kernel`` and ``noise_level``.
    """
    h, w = (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    k = torch.as_tensor(kernel)
    device = torch.device(device) if device is not None else k.device
    k = k.to(device=device, dtype=torch.float64)
    if k.dim() in (2, 3):
        codes = kernel_code(k).reshape(-1, CODE_LENGTH, 1, 1).expand(-1, -1, h, w)
    elif k.dim() == 4 and k.shape[1] == CODE_LENGTH:
        codes = k
    elif k.dim() == 5:
        n = k.shape[0]
        codes = kernel_code(k.reshape(-1, *k.shape[-2:])).reshape(n, *k.shape[1:3], CODE_LENGTH).permute(0, 3, 1, 2)
    else:
        raise ValueError(
            "kernel must be (k, k), (N, k, k), per-pixel (N, h, w, k, k) or a code map "
            f"(N, {CODE_LENGTH}, h, w); got shape {tuple(k.shape)}"
        )
    if codes.shape[-2:] != (h, w):
        raise ValueError(f"kernel map is {tuple(codes.shape[-2:])} but size is {(h, w)}")

    sigma = torch.as_tensor(noise_level, dtype=torch.float64).to(device)
    if sigma.dim() == 0:
        sigma = sigma.reshape(1, 1, 1, 1).expand(1, 1, h, w)
    elif sigma.dim() == 1:
        sigma = sigma.reshape(-1, 1, 1, 1).expand(-1, 1, h, w)
    elif sigma.dim() in (2, 3):
        if sigma.shape[-2:] != (h, w):
            raise ValueError(f"noise map is {tuple(sigma.shape[-2:])} but size is {(h, w)}")
        sigma = sigma.reshape(-1, 1, h, w)
    else:
        raise ValueError(f"noise_level must be a float, (N,), (h, w) or (N, h, w); got shape {tuple(sigma.shape)}")

    nk, ns = codes.shape[0], sigma.shape[0]
    if nk != ns and 1 not in (nk, ns):
        raise ValueError(f"batch sizes differ: {nk} kernels but {ns} noise levels")
    n = max(nk, ns)
    codes = codes.expand(n, -1, -1, -1).to(dtype).contiguous()
    noise_map = (sigma / 255.0).expand(n, -1, -1, -1).to(dtype).contiguous()
    return codes, noise_map
