"""Online degradation synthesis on the batch's device: HR crops -> (lr, code_map, noise_map, hr) for UDVD.

Per sample: a random dihedral transform of the HR crop (flips / 90-degree rotations), a Gaussian blur kernel
(``degradation.random_kernels``; isotropic width in the SRMD range of the scale, optionally a fraction of
anisotropic kernels), then ``degradation.degrade`` (circular blur -> bicubic downscale -> AWGN with sigma uniform in
``noise_range`` on the 0..255 scale), optionally the LR quantised to 8 bits (clipped to [0, 1] and rounded to
multiples of 1/255, as a real LR image stored as uint8 would be). Every random draw uses the caller's
``torch.Generator``, so a batch is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from udvd_triton.degradation import degradation_maps, degrade, random_kernels

SIGMA_RANGES = {2: (0.2, 2.0), 3: (0.2, 3.0), 4: (0.2, 4.0)}  # isotropic Gaussian widths (HR pixels) of SRMD
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


def random_dihedral(hr: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each square image of ``hr`` (N, C, P, P) under one of the 8 flips / 90-degree rotations, drawn per sample."""
    if hr.shape[-1] != hr.shape[-2]:
        raise ValueError(f"random_dihedral needs square crops, got shape {tuple(hr.shape)}")
    choice = torch.randint(0, 8, (hr.shape[0],), generator=generator, device=generator.device).to(hr.device)
    out = hr.clone()
    for t in range(1, 8):
        idx = (choice == t).nonzero().flatten()
        if idx.numel():
            x = hr[idx]
            x = x.flip(-1) if t & 4 else x
            out[idx] = torch.rot90(x, t & 3, dims=(-2, -1))
    return out


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
    ``noise_levels`` (N,) (0..255 scale): ``degradation.degrade``, then optional 8-bit quantisation."""
    lr = degrade(hr, kernels.to(hr), scale, noise_levels.to(hr), rng=generator)
    return lr.clamp(0, 1).mul(255).round().div(255) if quantize else lr


def synthesize(hr_crops: torch.Tensor, config: SynthConfig, generator: torch.Generator) -> Batch:
    """One training batch from HR crops uint8 (N, P, P, 3) (as gathered from the shards) on the generator's device.

    ``P`` must be divisible by the scale. All randomness comes from ``generator``.
    """
    if hr_crops.dtype != torch.uint8 or hr_crops.dim() != 4 or hr_crops.shape[-1] != 3:
        raise ValueError(f"hr_crops must be uint8 (N, P, P, 3), got {hr_crops.dtype} {tuple(hr_crops.shape)}")
    if hr_crops.shape[1] % config.scale or hr_crops.shape[2] % config.scale:
        raise ValueError(f"crop size {tuple(hr_crops.shape[1:3])} is not divisible by the scale {config.scale}")
    hr = hr_crops.to(generator.device).permute(0, 3, 1, 2).float().div_(255)
    if config.augment:
        hr = random_dihedral(hr, generator)
    kernels, noise = sample_degradations(hr.shape[0], config, generator)
    lr = degrade_batch(hr, kernels, noise, config.scale, generator, config.quantize)
    code_map, noise_map = degradation_maps(kernels, noise, lr.shape[-2:])
    return Batch(lr.contiguous(), code_map.to(lr), noise_map.to(lr), hr.contiguous())
