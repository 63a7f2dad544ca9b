"""Online degradation synthesis on the batch's device: HR crops -> (lr, code_map, noise_map, hr) for UDVD.

Per sample: a random dihedral transform of the HR crop (flips / 90-degree rotations), a Gaussian blur kernel
(``degradation.random_kernels``; isotropic width in the SRMD range of the scale, optionally a fraction of
anisotropic kernels), then ``degradation.degrade`` (circular blur -> bicubic downscale -> AWGN with sigma uniform in
``noise_range`` on the 0..255 scale), optionally the LR quantised to 8 bits (clipped to [0, 1] and rounded to
multiples of 1/255, as a real LR image stored as uint8 would be). Every random draw uses the caller's
``torch.Generator``, so a batch is reproducible from its seed.

Nothing here waits for the device (no ``.item()``, ``nonzero`` or host copies), so on a GPU the synthesis of a step
queues behind the previous step instead of stalling it: the per-sample transforms are gathers, and the kernels,
which are built valid, skip the value checks that ``degradation``'s public functions do on user input.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import torch

from udvd_triton.degradation import CODE_LENGTH, SIGMA_RANGES, _circular_blur, imresize, kernel_code, random_kernels

NOISE_RANGE = (0.0, 75.0)


@dataclass(frozen=True)
class SynthConfig:
    """Degradation distribution. ``sigma_range`` None: ``SIGMA_RANGES[scale]``; ``anisotropic``: fraction of
    samples with an anisotropic kernel (widths drawn from the same range, random angle); ``clean_fraction``: fraction
    of samples without noise (with noise uniform in [0, 75] almost none are clean, and a small model then keeps
    smoothing noise-free inputs)."""

    scale: int
    sigma_range: tuple[float, float] | None = None
    anisotropic: float = 0.0
    clean_fraction: float = 0.0
    noise_range: tuple[float, float] = NOISE_RANGE
    quantize: bool = True
    augment: bool = True

    def __post_init__(self) -> None:
        if self.scale not in SIGMA_RANGES:
            raise ValueError(f"scale must be one of {tuple(SIGMA_RANGES)}, got {self.scale!r}")
        lo, hi = self.sigmas
        if not 0 < lo <= hi:
            raise ValueError(f"sigma_range must satisfy 0 < low <= high, got {self.sigmas}")
        if not 0 <= self.noise_range[0] <= self.noise_range[1] <= 255:
            raise ValueError(f"noise_range must satisfy 0 <= low <= high <= 255, got {self.noise_range}")
        for name in ("anisotropic", "clean_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a fraction in [0, 1], got {getattr(self, name)}")

    @property
    def sigmas(self) -> tuple[float, float]:
        return SIGMA_RANGES[self.scale] if self.sigma_range is None else tuple(self.sigma_range)  # type: ignore[return-value]


class Batch(NamedTuple):
    """Model inputs and target: lr (N,3,h,w), code_map (N,15,h,w), noise_map (N,1,h,w) = sigma/255,
    hr (N,3,s*h,s*w); float32, images in [0, 1] (lr unclipped unless quantised)."""

    lr: torch.Tensor
    code_map: torch.Tensor
    noise_map: torch.Tensor
    hr: torch.Tensor


@functools.lru_cache(maxsize=8)
def _dihedral_index(size: int, device: torch.device) -> torch.Tensor:
    """(8, size*size) int64: row t holds, for each output pixel of transform t, the flat index of its source pixel.

    Transform t: a horizontal flip when ``t & 4``, then ``t & 3`` counter-clockwise quarter turns (``torch.rot90``).
    """
    grid = torch.arange(size * size).reshape(size, size)
    rows = [torch.rot90(grid.flip(-1) if t & 4 else grid, t & 3, dims=(-2, -1)).reshape(-1) for t in range(8)]
    return torch.stack(rows).to(device)


def random_dihedral(hr: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each square image of ``hr`` (N, C, P, P) (any dtype) under one of the 8 flips / 90-degree rotations, drawn
    per sample; one gather, no host sync."""
    if hr.shape[-1] != hr.shape[-2]:
        raise ValueError(f"random_dihedral needs square crops, got shape {tuple(hr.shape)}")
    n, c, p, _ = hr.shape
    choice = torch.randint(0, 8, (n,), generator=generator, device=generator.device).to(hr.device)
    index = _dihedral_index(p, hr.device)[choice]  # (N, P*P)
    return hr.reshape(n, c, p * p).gather(2, index[:, None, :].expand(n, c, p * p)).reshape(n, c, p, p)


def sample_degradations(
    n: int, config: SynthConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random blur kernels (n, 15, 15) float32 and noise levels (n,) float32 (0..255 scale) on the generator's device."""
    device = generator.device
    kernels = random_kernels(n, config.sigmas, anisotropic=False, generator=generator, device=device)
    if config.anisotropic > 0:
        aniso = random_kernels(n, config.sigmas, anisotropic=True, generator=generator, device=device)
        pick = torch.rand(n, generator=generator, device=device) < config.anisotropic
        kernels = torch.where(pick[:, None, None], aniso.to(kernels.dtype), kernels)
    lo, hi = config.noise_range
    noise = lo + (hi - lo) * torch.rand(n, generator=generator, device=device)
    if config.clean_fraction > 0:
        noise = torch.where(torch.rand(n, generator=generator, device=device) < config.clean_fraction, 0.0, noise)
    return kernels.float(), noise.float()


def degrade_batch(
    hr: torch.Tensor,
    kernels: torch.Tensor,
    noise_levels: torch.Tensor,
    scale: int,
    generator: torch.Generator | None = None,
    quantize: bool = True,
) -> torch.Tensor:
    """LR images (N, 3, H/s, W/s) from ``hr`` (N, 3, H, W) in [0, 1] with per-sample ``kernels`` (N, 15, 15) and
    ``noise_levels`` (N,) (0..255 scale), then optional 8-bit quantisation.

    The same steps and numbers as ``degradation.degrade`` (circular blur, ``imresize`` by 1/scale, AWGN from
    ``generator``) without its argument checks, whose kernel-sum check would wait for the device every step: the
    kernels of ``sample_degradations`` sum to 1 by construction.
    """
    lr = imresize(_circular_blur(hr, kernels.to(hr)), 1 / scale)
    noise = torch.randn(lr.shape, generator=generator, device=lr.device, dtype=lr.dtype)
    lr = lr + noise * (noise_levels.to(lr).reshape(-1, 1, 1, 1) / 255.0)
    return lr.clamp(0, 1).mul(255).round().div(255) if quantize else lr


def synthesize(hr_crops: torch.Tensor, config: SynthConfig, generator: torch.Generator) -> Batch:
    """One training batch from HR crops uint8 (N, P, P, 3) (as gathered from the shards) on the generator's device.

    ``P`` must be divisible by the scale. All randomness comes from ``generator``.
    """
    if hr_crops.dtype != torch.uint8 or hr_crops.dim() != 4 or hr_crops.shape[-1] != 3:
        raise ValueError(f"hr_crops must be uint8 (N, P, P, 3), got {hr_crops.dtype} {tuple(hr_crops.shape)}")
    if hr_crops.shape[1] % config.scale or hr_crops.shape[2] % config.scale:
        raise ValueError(f"crop size {tuple(hr_crops.shape[1:3])} is not divisible by the scale {config.scale}")
    hr = hr_crops.to(generator.device).permute(0, 3, 1, 2)
    if config.augment:
        hr = random_dihedral(hr, generator)  # on the uint8 pixels: a quarter of the bytes to move
    hr = hr.float().div_(255).contiguous()
    kernels, noise = sample_degradations(hr.shape[0], config, generator)
    lr = degrade_batch(hr, kernels, noise, config.scale, generator, config.quantize)
    n, _, h, w = lr.shape
    # degradation_maps' spatially uniform case, without its kernel check (see degrade_batch)
    code_map = kernel_code(kernels, check=False).to(lr).reshape(n, CODE_LENGTH, 1, 1).expand(n, CODE_LENGTH, h, w)
    noise_map = (noise.to(lr) / 255.0).reshape(n, 1, 1, 1).expand(n, 1, h, w)
    return Batch(lr.contiguous(), code_map.contiguous(), noise_map.contiguous(), hr)
