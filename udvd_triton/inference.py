"""Inference: ``upscale`` streams any image size through the model in bounded memory, with per-pixel degradations.

Images go in and come out as the same kind: PIL (modes L, LA, RGB, RGBA, I;16, F), numpy (H, W) / (H, W, C) uint8,
uint16 or float, torch (C, H, W) / (N, C, H, W) float, with C in 1 (gray), 2 (gray + alpha), 3 (RGB), 4 (RGBA).
Float images must be finite and in [0, 1]. Gray is replicated to RGB for the model and averaged back; alpha is
upscaled on its own with the bicubic ``degradation.imresize``.

Degradation (what the LR image went through, SRMD model): the blur as a width ``blur_sigma`` (std of an isotropic
Gaussian in HR pixels; 0 = none), a 15x15 ``kernel`` or kernel-PCA ``code``; the noise as a level on the 0..255 scale.
Not given, both are estimated from the image (:mod:`udvd_triton.blind`): "auto", one value per image (the default),
or "auto-map", a local estimate. Widths, levels, kernels and codes may vary per pixel: maps of any size, resized
bilinearly to the LR size (``F.interpolate``, ``align_corners=False``).

Streaming: the LR image is cut into tiles; each is run with a margin of the model's ``receptive_radius`` LR pixels of real
context around it (its window), windows of one size are batched, and only each tile's own part of the output is
converted to the output's dtype and written into the output, allocated once at its final size and dtype. The margin
covers everything an output pixel depends on, so the result equals the untiled one up to float rounding. Peak
memory: the input, the output, the maps the caller passes, and one batch of windows (``auto_tile_size``).
Every image is replicate-padded by the receptive radius (and cropped back), so border pixels are computed like
interior ones instead of from the network's zero padding (which left up to 14 levels of error in the corners of a
flat image), and an image smaller than the receptive field is computed as the middle of a larger one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from udvd_triton.blind import AUTO, DegradationEstimate, estimate_all
from udvd_triton.degradation import gaussian_kernels, imresize, kernel_code
from udvd_triton.images import Grid, ImageLike, InputImage, OutputImage, as_input, from_numpy
from udvd_triton.model import UDVDNet

log = logging.getLogger(__name__)

MapLike = float | np.ndarray | torch.Tensor
MAX_BLUR_SIGMA = 20.0  # widest blur a 15 x 15 kernel can mean (HR pixels); wider is a box of the kernel's size
MIN_TILE_RADII = 3  # smallest tile, in receptive radii: below it the margins are most of the work
CPU_TILE_BUDGET = 1 << 30  # bytes of activations per batch on a CPU: larger windows are no faster there
PROGRESS_LOG_SECONDS = 30.0  # period of the progress log lines when stderr is not a terminal
_ALPHA_REACH = 3  # LR pixels the bicubic upscaling of alpha reaches (taps at distance <= 2, plus rounding)
_CODE_CHUNK = 4096  # kernels encoded at a time (a chunk of 15x15 float64 kernels is 7 MB)


def _bytes_per_lr_pixel(model: UDVDNet, dtype: torch.dtype) -> int:
    """Rough peak activation bytes per LR pixel of a forward pass: a few LR feature maps, and per HR pixel the
    aligned features, guide, kernels and residual maps (measured on CPU: 3.6-4.5 kB for udvd-x2-small in float32,
    this gives 5.3 kB)."""
    c = model.config
    s2, k2 = c.scale**2, c.kernel_size**2
    elems = 4 * c.channels + s2 * (3 * c.channels + 2 * k2 + 128) + k2 * s2
    return elems * torch.finfo(dtype).bits // 8


def _margin(model: UDVDNet) -> int:
    """LR pixels of context around a tile: the receptive radius, and at least what the bicubic alpha needs."""
    return max(model.receptive_radius, _ALPHA_REACH)


def auto_tile_size(model: UDVDNet, free_bytes: int, dtype: torch.dtype, images: int = 1) -> int:
    """Largest LR tile side whose window (tile + 2 margins) for ``images`` images should fit a forward pass in half
    of ``free_bytes``; at least 16."""
    per_pixel = images * _bytes_per_lr_pixel(model, dtype)
    return max(math.isqrt(free_bytes // 2 // per_pixel) - 2 * _margin(model), 16)


def available_memory(device: torch.device) -> int:
    """Bytes free for a forward pass: free GPU memory on CUDA; on a CPU the kernel's MemAvailable (Linux), else free
    physical pages, else a guess of 4 GiB."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return 4 << 30


# --------------------------------------------------------------------------------------------- degradation maps


def _number(value: Any) -> float | None:
    """``value`` as a float if it is a real number (Python, numpy scalar, 0-d array or tensor), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 0 and not value.dtype == torch.bool:
        return float(value.item())
    return None


def _map_values(value: Any, name: str, n: int, unit: str, low: float, high: float) -> torch.Tensor:
    """A number, per-image numbers (N,), a map (h, w) or per-image maps (N, h, w) as a (B, 1, gh, gw) tensor, checked
    to be finite and in [low, high]."""
    number = _number(value)
    if number is not None:
        t = torch.tensor(number, dtype=torch.float64).view(1, 1, 1, 1)
    elif isinstance(value, (np.ndarray, torch.Tensor)):
        if isinstance(value, np.ndarray) and value.dtype.kind not in "uif":
            raise ValueError(f"{name} must be real numbers, got dtype {value.dtype}")
        t = value.detach().cpu() if isinstance(value, torch.Tensor) else from_numpy(value)
        if t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must be real numbers, got dtype {t.dtype}")
        if t.dim() == 1 and t.shape[0] in (1, n):
            t = t.view(-1, 1, 1, 1)
        elif t.dim() == 2:
            t = t[None, None]
        elif t.dim() == 3 and t.shape[0] in (1, n):
            t = t[:, None]
        else:
            raise ValueError(f"{name} must be a number, (N,) with N={n}, a map (h, w) or (N, h, w), got shape "
                             f"{tuple(t.shape)}")
        if 0 in t.shape:
            raise ValueError(f"{name} map is empty: shape {tuple(value.shape)}")
    else:
        raise ValueError(f"{name} must be a number ({unit}) or a 2-D map of them, got {type(value).__name__}")
    lo, hi = float(t.min()), float(t.max())
    if not (low <= lo and hi <= high):  # also refuses NaN, which fails every comparison
        raise ValueError(f"{name} must be finite and in [{low:g}, {high:g}] ({unit}), found range [{lo:g}, {hi:g}]")
    return t


def _sigma_codes(basis: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Blur widths (B, 1, y, x) -> the model's kernel codes (B, L, y, x): the code of the isotropic Gaussian of each
    distinct width (``degradation.gaussian_kernels``; width 0 = no blur, a unit impulse), exact per pixel."""
    size = math.isqrt(basis.shape[1])
    impulse = torch.zeros(size, size, dtype=torch.float64)
    impulse[size // 2, size // 2] = 1

    def transform(sigma: torch.Tensor) -> torch.Tensor:
        values, inverse = torch.unique(sigma, return_inverse=True)
        codes = torch.empty(len(values), basis.shape[0], dtype=torch.float64)
        for i in range(0, len(values), _CODE_CHUNK):
            v = values[i : i + _CODE_CHUNK]
            k = torch.where((v > 0)[:, None, None], gaussian_kernels(v.clamp(min=1e-3), size=size), impulse)
            codes[i : i + _CODE_CHUNK] = kernel_code(k, basis)
        return codes[inverse].permute(0, 4, 1, 2, 3)[:, :, 0]

    return transform


def _kernel_codes(kernel: np.ndarray | torch.Tensor, basis: torch.Tensor, n: int) -> torch.Tensor:
    """Kernels (k, k), (N, k, k), per-pixel (h, w, k, k) or (N, h, w, k, k), each normalised to sum 1 -> the model's
    codes as a grid (B, L, 1, 1) or (B, L, h, w)."""
    k = kernel.detach().cpu() if isinstance(kernel, torch.Tensor) else from_numpy(np.asarray(kernel))
    size = math.isqrt(basis.shape[1])
    if k.is_complex() or k.dtype == torch.bool:
        raise ValueError(f"kernel must be real numbers, got dtype {k.dtype}")
    shapes = f"({size}, {size}), (N, {size}, {size}), per-pixel (h, w, {size}, {size}) or (N, h, w, {size}, {size})"
    if k.dim() not in (2, 3, 4, 5) or k.shape[-2:] != (size, size) or (k.dim() in (3, 5) and k.shape[0] not in (1, n)):
        raise ValueError(f"kernel must be {shapes} like the model's kernel basis (N={n}), got {tuple(k.shape)}")
    grid = k.reshape(1 if k.dim() in (2, 4) else k.shape[0], *(k.shape[-4:-2] if k.dim() >= 4 else (1, 1)), -1)
    codes = torch.empty(*grid.shape[:3], basis.shape[0], dtype=torch.float64)
    flat, out = grid.reshape(-1, size * size), codes.view(-1, basis.shape[0])
    for i in range(0, flat.shape[0], _CODE_CHUNK):
        chunk = flat[i : i + _CODE_CHUNK].double()
        sums = chunk.sum(1, keepdim=True)
        if not (torch.isfinite(chunk).all() and (sums > 0).all()):
            raise ValueError("kernel must be finite with a positive sum (each per-pixel kernel too)")
        out[i : i + _CODE_CHUNK] = kernel_code((chunk / sums).view(-1, size, size), basis)
    return codes.permute(0, 3, 1, 2)


def _code_grid(code: np.ndarray | torch.Tensor, length: int, n: int) -> torch.Tensor:
    """Kernel codes (L,), (N, L), a map (h, w, L) or (N, h, w, L) -> grid (B, L, gh, gw)."""
    c = code.detach().cpu() if isinstance(code, torch.Tensor) else from_numpy(np.asarray(code))
    shapes = f"({length},), (N, {length}), (h, w, {length}) or (N, h, w, {length})"
    if c.dim() not in (1, 2, 3, 4) or c.shape[-1] != length or (c.dim() in (2, 4) and c.shape[0] not in (1, n)):
        raise ValueError(f"code must be {shapes} for the model's code length (N={n}), got {tuple(c.shape)}")
    if not c.is_floating_point() or not torch.isfinite(c).all():
        raise ValueError("code must be finite floating-point numbers")
    if c.dim() in (1, 2):
        return c.reshape(-1, length, 1, 1)
    return (c[None] if c.dim() == 3 else c).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------- progress


class _Progress:
    """Progress over ``total`` units: a tqdm bar on a terminal, else a log line every ``PROGRESS_LOG_SECONDS``."""

    def __init__(self, total: int, desc: str, unit: str, enabled: bool) -> None:
        self.total, self.desc, self.unit, self.done = total, desc, unit, 0
        self.start = self.last = time.monotonic()
        self.bar = None
        self.enabled = enabled
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if self.enabled and (now - self.last >= PROGRESS_LOG_SECONDS or self.done == self.total):
            self.last = now
            elapsed = now - self.start
            left = elapsed * (self.total - self.done) / self.done
            log.info("%s: %d/%d %ss (%d%%), %.0f s elapsed, about %.0f s left", self.desc, self.done, self.total,
                     self.unit, 100 * self.done // self.total, elapsed, left)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------------------- tiling


@dataclass
class _Plan:
    """How the LR image is cut: tiles of at most ``tile`` LR pixels a side, each run in a window with ``margin``
    pixels of context, ``batch`` windows per forward pass. The canvas is the image replicate-padded by ``margin``."""

    tile: int
    batch: int
    margin: int
    min_tile: int

    def window_size(self, h: int, w: int) -> tuple[int, int]:
        """(rows, cols) of every window for an h x w image: its largest tile plus the margins."""
        ys, xs = _splits(h, self.tile), _splits(w, self.tile)
        th, tw = max(b - a for a, b in zip(ys, ys[1:])), max(b - a for a, b in zip(xs, xs[1:]))
        return th + 2 * self.margin, tw + 2 * self.margin

    def windows(self, h: int, w: int) -> Iterator[tuple[int, int, int, int, int, int]]:
        """(window y, window x, tile y0, tile y1, tile x0, tile x1), windows in canvas coordinates: tiles split the
        image evenly; every window has the same size (so windows batch), holds at least ``margin`` pixels around its
        tile and is shifted inwards where the last tile is the smaller one."""
        m = self.margin
        wh, ww = self.window_size(h, w)
        ys, xs = _splits(h, self.tile), _splits(w, self.tile)
        for y0, y1 in zip(ys, ys[1:]):
            for x0, x1 in zip(xs, xs[1:]):
                yield min(y0, h + 2 * m - wh), min(x0, w + 2 * m - ww), y0, y1, x0, x1

    def smaller(self) -> _Plan | None:
        """The plan to retry with after running out of memory: half the batch, else half the tile; None at the
        smallest tile."""
        if self.batch > 1:
            return _Plan(self.tile, self.batch // 2, self.margin, self.min_tile)
        if self.tile > self.min_tile:
            return _Plan(max(self.tile // 2, self.min_tile), 1, self.margin, self.min_tile)
        return None


def _splits(length: int, tile: int) -> list[int]:
    count = -(-length // tile)
    return [round(i * length / count) for i in range(count + 1)]


def _plan(model: UDVDNet, image: InputImage, tile: int | None, device: torch.device, dtype: torch.dtype) -> _Plan:
    n, _, h, w = image.shape
    margin = _margin(model)
    min_tile = MIN_TILE_RADII * margin
    ch, cw = h + 2 * margin, w + 2 * margin
    per_window_pixel = n * _bytes_per_lr_pixel(model, dtype)
    budget = available_memory(device) // 2
    if device.type == "cpu":
        budget = min(budget, CPU_TILE_BUDGET)
    if tile is None:
        fits_whole = ch * cw * per_window_pixel <= budget
        tile = max(max(h, w) if fits_whole else auto_tile_size(model, 2 * budget, dtype, n), min_tile)
    elif tile < min_tile and tile < max(h, w):
        log.warning("tile %d raised to %d LR pixels (%d x the receptive radius of %d): with smaller tiles the "
                    "overlap between windows would be most of the work", tile, min_tile, MIN_TILE_RADII, margin)
        tile = min_tile
    plan = _Plan(tile, 1, margin, min_tile)
    wh, ww = plan.window_size(h, w)
    tiles = -(-h // tile) * -(-w // tile)
    plan.batch = max(1, min(tiles, budget // (wh * ww * per_window_pixel)))
    return plan


def _is_out_of_memory(e: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(e, oom) or (isinstance(e, RuntimeError) and "can't allocate memory" in str(e))


@contextlib.contextmanager
def _cpu_channels_last(model: UDVDNet, device: torch.device) -> Iterator[None]:
    """On a CPU, run the convolutions with channels-last weights (oneDNN is ~1.4x faster with them on
    256-512 px windows), restoring the model's own weight tensors afterwards."""
    swapped = []
    if device.type == "cpu":
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d) and module.weight.is_contiguous():
                swapped.append((module, module.weight.data))
                module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for module, weight in swapped:
            module.weight.data = weight


# --------------------------------------------------------------------------------------------- upscale


def _run(model: UDVDNet, image: InputImage, code: Grid, noise: Grid, plan: _Plan, out: OutputImage, progress: bool) -> None:
    """Fill ``out`` window batch by window batch (see the module docstring)."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    n, _, h, w = image.shape
    s, m = model.scale, plan.margin
    windows = list(plan.windows(h, w))
    wh, ww = plan.window_size(h, w)
    bar = _Progress(len(windows), "upscaling", "tile", progress)
    try:
        for i in range(0, len(windows), plan.batch):
            group = windows[i : i + plan.batch]
            pixels, codes, levels = [], [], []
            for wy, wx, *_ in group:
                y0, x0 = wy - m, wx - m  # window origin in image coordinates (negative at the padded borders)
                pixels.append(image.window(y0, y0 + wh, x0, x0 + ww, device, torch.float32))
                codes.append(code.window(y0, y0 + wh, x0, x0 + ww, device, dtype).expand(n, -1, -1, -1))
                levels.append(noise.window(y0, y0 + wh, x0, x0 + ww, device, dtype).expand(n, -1, -1, -1) / 255)
            batch = torch.cat(pixels)
            color = batch[:, :1].expand(-1, 3, -1, -1) if image.gray else batch[:, :3]
            sr = model(color.to(dtype), torch.cat(codes), torch.cat(levels))[-1]
            if not torch.isfinite(sr).all():  # broken weights or config: an error, never a black or noisy image
                raise ValueError("the model produced NaN or infinite values: its weights or config are broken "
                                 "(no image was written)")
            for j, (wy, wx, y0, y1, x0, x1) in enumerate(group):
                top, left = s * (y0 + m - wy), s * (x0 + m - wx)
                rows, cols = slice(top, top + s * (y1 - y0)), slice(left, left + s * (x1 - x0))
                alpha = None
                if image.has_alpha:  # MATLAB's imresize of the image's own alpha: the window's part inside the image
                    oy, ox = wy - m, wx - m  # window origin in image coordinates
                    ay, ax = max(oy, 0), max(ox, 0)
                    rows_in, cols_in = slice(ay - oy, min(oy + wh, h) - oy), slice(ax - ox, min(ox + ww, w) - ox)
                    inside = batch[j * n : (j + 1) * n, -1:, rows_in, cols_in]
                    alpha = imresize(inside, s)[..., s * (y0 - ay) : s * (y1 - ay), s * (x0 - ax) : s * (x1 - ax)]
                out.write(s * y0, s * x0, sr[j * n : (j + 1) * n, :, rows, cols], alpha)
            bar.update(len(group))
    finally:
        bar.close()


def _estimated(estimates: list[DegradationEstimate], what: str, as_map: bool) -> torch.Tensor:
    """Estimated blur widths or noise levels as a grid: (n, 1, 1, 1) values, or (n, 1, h, w) maps."""
    if as_map:
        return torch.from_numpy(np.stack([getattr(e, f"{what}_map") for e in estimates]))[:, None]
    key = "blur_sigma" if what == "blur" else "noise_level"
    return torch.tensor([getattr(e, key) for e in estimates], dtype=torch.float64).view(-1, 1, 1, 1)


def upscale(
    model: UDVDNet,
    img: ImageLike,
    blur_sigma: MapLike | str = "auto",
    noise_level: MapLike | str = "auto",
    tile: int | None = None,
    *,
    kernel: np.ndarray | torch.Tensor | None = None,
    code: np.ndarray | torch.Tensor | None = None,
    progress: bool | None = None,
) -> ImageLike:
    """Super-resolve ``img`` by ``model.scale``: same kind, mode, dtype and layout out (see the module docstring).

    Args:
        model: a UDVD (its device and dtype are used; fp16/bf16 on GPU work).
        img: PIL / numpy / torch image; floats must be finite and in [0, 1].
        blur_sigma: width (std, HR pixels, as in ``degradation.isotropic_gaussian``; 0 = no blur) of the isotropic
            Gaussian blur the image went through: a number, per-image numbers (N,), or a map (h, w) / (N, h, w) of
            any size (resized bilinearly to the LR size); "auto" (the default: one estimate per image,
            ``blind.estimate_degradation``) or "auto-map" (a local estimate, for blur that varies across the frame).
        noise_level: std of its additive Gaussian noise on the 0..255 scale, as a number, (N,) or a map like
            ``blur_sigma``; or "auto" (the default) / "auto-map", estimated jointly with the blur. Given numbers or
            maps always win over estimates; the estimates used are logged (INFO).
        tile: LR tile side; None: chosen from the free memory (CUDA) or available RAM (CPU, at most
            ``CPU_TILE_BUDGET`` bytes of activations); the whole image when it fits. Raised, with a logged note, to
            ``MIN_TILE_RADII`` receptive radii. On running out of memory the batch of windows, then the tile, is
            halved and the run restarted, with a logged warning.
        kernel: instead of ``blur_sigma``: a blur kernel (15, 15), per-image (N, 15, 15), or per-pixel kernels
            (h, w, 15, 15) / (N, h, w, 15, 15) (a grid of any size, resized bilinearly); each normalised to sum 1.
        code: instead of ``blur_sigma``: kernel-PCA codes in the model's ``kernel_basis``, (L,), (N, L), or maps
            (h, w, L) / (N, h, w, L).
        progress: a progress bar over tiles (log lines at INFO level when stderr is not a terminal); None: only
            when the image takes more than one batch of windows.
    Returns the output clipped to [0, 1]; integer outputs are rounded.
    """
    if tile is not None:
        if isinstance(tile, bool) or not isinstance(tile, numbers.Integral) or tile < 1:
            raise ValueError(f"tile must be a positive integer (LR pixels) or None, got {tile!r}")
        tile = int(tile)
    if kernel is not None and code is not None:
        raise ValueError("give the blur as kernel= or as code=, not both")
    image = as_input(img)
    n, _, h, w = image.shape
    basis = model.kernel_basis.detach().double().cpu()
    if code is not None:
        codes = Grid(_code_grid(code, basis.shape[0], n), (h, w))
    elif kernel is not None:
        codes = Grid(_kernel_codes(kernel, basis, n), (h, w))
    blind = [value for value, wanted in ((blur_sigma, kernel is None and code is None), (noise_level, True))
             if wanted and isinstance(value, str)]
    for value in blind:
        if value not in AUTO:
            raise ValueError(f"blur_sigma and noise_level take numbers, maps, 'auto' or 'auto-map', got {value!r}")
    if blind:
        estimates = estimate_all(image, model.scale, maps="auto-map" in blind)
        for e in estimates:
            log.info("estimated degradation: %s", e.summary())
    if code is None and kernel is None:
        if isinstance(blur_sigma, str):
            sigma = _estimated(estimates, "blur", blur_sigma == "auto-map")
        else:
            sigma = _map_values(blur_sigma, "blur_sigma", n, "Gaussian std in HR pixels", 0.0, MAX_BLUR_SIGMA)
        to_codes = _sigma_codes(basis)
        codes = Grid(to_codes(sigma), (h, w)) if sigma.shape[-2:] == (1, 1) else Grid(sigma, (h, w), to_codes)
    if isinstance(noise_level, str):
        levels = _estimated(estimates, "noise", noise_level == "auto-map")
    else:
        levels = _map_values(noise_level, "noise_level", n, "0..255 scale", 0.0, 255.0)
    noise = Grid(levels, (h, w))
    param = next(model.parameters())
    plan = _plan(model, image, tile, param.device, param.dtype)
    out = OutputImage(image, model.scale)
    while True:
        show = progress if progress is not None else len(list(plan.windows(h, w))) > plan.batch
        try:
            with _cpu_channels_last(model, param.device), torch.inference_mode():
                _run(model, image, codes, noise, plan, out, show)
            return out.result()
        except Exception as e:
            if not _is_out_of_memory(e):
                raise
            smaller = plan.smaller()
            if smaller is None:
                raise MemoryError(f"out of memory on {param.device} even with {plan.tile}-pixel tiles one at a time "
                                  "(use a smaller model, float16, or another device)") from None
            log.warning("out of memory with %d-pixel tiles, %d per batch: retrying with %d-pixel tiles, %d per batch",
                        plan.tile, plan.batch, smaller.tile, smaller.batch)
            plan = smaller
            if param.device.type == "cuda":
                torch.cuda.empty_cache()
