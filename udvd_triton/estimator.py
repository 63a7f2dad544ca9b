"""The degradation estimator network: from an LR image, the blur width and the noise level it went through.

A small fully convolutional network (about 0.1 M parameters) that looks at an LR image in [0, 1] (and at the
gradient ratios of re-blurred copies of it, which read the blur off edges whatever their contrast) and predicts, at
every fourth LR pixel, the Gaussian blur width (HR pixels; one head per upscaling factor, each within that scale's
training range ``SIGMA_RANGES``) and the AWGN level (0..255), each with a logit saying how much the location should
count and the error expected of an estimate pooled there: flat regions say little about blur, edges much.
:mod:`udvd_triton.blind` pools the predictions of an image or of a region (:func:`pool`). Trained on the package's
own SRMD degradation synthesis (``scripts/train_estimator.py``), never on a standard test set.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from udvd_triton import settings
from udvd_triton.degradation import SCALES, SIGMA_RANGES
from udvd_triton.settings import setting

NOISE_MAX = 80.0  # highest noise level the estimator can say (0..255 scale); training draws up to 75
# The estimates are quantiles of what the image allows, not medians: telling the model too much blur makes it ring
# (a sharp photo told sigma 2.0 lost 16 dB), too little costs a fraction of a dB; too little noise costs more than
# too much (told 5 of 15: -3 to -6 dB; told 30: -1.5 to -2 dB).
BLUR_QUANTILE = 0.35
NOISE_QUANTILE = 0.6
STRIDE = 4  # LR pixels between two predictions


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
    """The estimator's architecture (stored with its weights)."""

    channels: int = setting(32, "width of the first convs (doubled after each stride)", int, low=4, high=256)
    blocks: int = setting(2, "3x3 convs at the coarsest resolution", int, low=1, high=8)

    def __post_init__(self) -> None:
        settings.check(self, lambda name: f"estimator {name}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EstimatorConfig:
        if not isinstance(data, Mapping) or set(data) - {f.name for f in dataclasses.fields(cls)}:
            raise ValueError(f"not an estimator config: {data!r}")
        return cls(**data)


REBLUR = (0.7, 1.4, 2.8)  # LR pixels: widths of the re-blurs whose gradient ratios the network sees
EDGE_FLOOR = 0.02  # gradients below this (about 5 levels of 255) count as no edge: their ratios tend to 1


def _gaussian(sigma: float) -> torch.Tensor:
    r = torch.arange(-math.ceil(3 * sigma), math.ceil(3 * sigma) + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    return g / g.sum()


def _gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(gray (N, 1, h, w), its gradient magnitude, the edge floor (N, 1, 1, 1)): gradients below ``EDGE_FLOOR``
    plus three times the image's noise (Immerkaer's estimate) are no edge."""
    gray = image.mean(1, keepdim=True)
    laplace = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], device=image.device)
    noise = F.conv2d(gray, laplace.to(gray).view(1, 1, 3, 3)).abs().mean((1, 2, 3), keepdim=True)
    return gray, _grad(gray), EDGE_FLOOR + 3 * noise * (math.sqrt(math.pi / 2) / 6)


def _grad(x: torch.Tensor) -> torch.Tensor:
    gx = F.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1, 0, 0), mode="replicate")
    gy = F.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1), mode="replicate")
    return (gx.square() + gy.square() + 1e-12).sqrt()


def edge_fraction(image: torch.Tensor) -> torch.Tensor:
    """(N,): the share of an image's pixels on an edge (gradient above the noise-aware floor of
    :func:`reblur_ratios`); a flat or featureless image has next to none, and says nothing about its blur."""
    _, grad, floor = _gradients(image)
    return (grad > floor).double().mean((1, 2, 3))


def reblur_ratios(image: torch.Tensor) -> torch.Tensor:
    """(N, len(REBLUR), h, w): log of the gradient magnitude of the gray image re-blurred by each width in
    ``REBLUR`` over that of the image. At an edge of blur width b this is about log(sqrt(b^2 + r^2) / b) whatever the
    edge's contrast (Zhuo & Sim, "Defocus map estimation from a single image", 2011): the blur, read off without the
    content, which a small network otherwise struggles to separate from it. Gradients below a floor (``EDGE_FLOOR``
    plus three times the image's noise, Immerkaer's estimate) count as no edge: there the ratios tend to 1."""
    gray, grad, floor = _gradients(image)

    def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
        g = _gaussian(sigma).to(x)
        pad = len(g) // 2
        x = F.conv2d(F.pad(x, (pad, pad, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
        return F.conv2d(F.pad(x, (0, 0, pad, pad), mode="replicate"), g.view(1, 1, -1, 1))

    base = grad + floor
    return torch.cat([((_grad(blur(gray, sigma)) + floor) / base).log() for sigma in REBLUR], 1)


class DegradationEstimator(nn.Module):
    """LR image (N, 3, h, w) in [0, 1] -> :class:`Prediction` at (ceil(h/4), ceil(w/4)) locations.

    Receptive field: about 31 x 31 LR pixels per prediction (the edges a blur estimate needs)."""

    def __init__(self, config: EstimatorConfig | None = None, **fields: Any) -> None:
        super().__init__()
        self.config = config if config is not None else EstimatorConfig(**fields)
        c = self.config.channels
        act = nn.LeakyReLU(0.1, inplace=True)
        layers: list[nn.Module] = [nn.Conv2d(3 + len(REBLUR), c, 3, padding=1), act, nn.Conv2d(c, c, 3, padding=1), act,
                                   nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), act,
                                   nn.Conv2d(2 * c, 2 * c, 3, padding=1), act,
                                   nn.Conv2d(2 * c, 2 * c, 3, stride=2, padding=1), act]
        for _ in range(self.config.blocks):
            layers += [nn.Conv2d(2 * c, 2 * c, 3, padding=1), act]
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(2 * c, OUTPUTS, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Raw outputs (N, 2 * len(SCALES) + 2, h', w'); :func:`decode` turns them into predictions."""
        return self.head(self.body(torch.cat([image - 0.5, reblur_ratios(image)], 1)))


@dataclasses.dataclass
class Prediction:
    """Predictions at every location of a map, each (N, 1, h', w'): ``blur`` / ``noise`` locations (blur width in
    HR pixels for the requested scale, noise on the 0..255 scale), their ``*_scale`` (the mean absolute error the
    network expects of an estimate pooled with these locations, same units) and their ``*_logit`` (how much each
    location should count when its region is pooled: :func:`pool`)."""

    blur: torch.Tensor
    blur_scale: torch.Tensor
    blur_logit: torch.Tensor
    noise: torch.Tensor
    noise_scale: torch.Tensor
    noise_logit: torch.Tensor


OUTPUTS = 2 * len(SCALES) + 4  # per scale: blur location and scale; noise location and scale; the two logits


def decode(raw: torch.Tensor, scale: int) -> Prediction:
    """Predictions of the ``scale`` head from the network's raw outputs (locations squashed into the training
    ranges, scales positive)."""
    i = SCALES.index(scale)
    lo, hi = SIGMA_RANGES[scale]
    blur = lo + (hi - lo) * torch.sigmoid(raw[:, 2 * i : 2 * i + 1])
    blur_scale = F.softplus(raw[:, 2 * i + 1 : 2 * i + 2]) * (hi - lo) + 1e-3
    noise = NOISE_MAX * torch.sigmoid(raw[:, -4:-3])
    noise_scale = F.softplus(raw[:, -3:-2]) * NOISE_MAX + 1e-2
    return Prediction(blur, blur_scale, raw[:, -2:-1], noise, noise_scale, raw[:, -1:])


def pool(pred: Prediction, what: str, dims: tuple[int, ...] = (1, 2, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    """The estimate of ``what`` ("blur" or "noise") pooled over ``dims`` (default: each image's locations), each
    location weighted by the softmax of its logit, and the error expected of it."""
    weight = torch.softmax(getattr(pred, f"{what}_logit").flatten(dims[0]), -1).view_as(getattr(pred, what))
    return (weight * getattr(pred, what)).sum(dims), (weight * getattr(pred, f"{what}_scale")).sum(dims)


def loss(pred: Prediction, blur: torch.Tensor, noise: torch.Tensor, scale: int) -> torch.Tensor:
    """The training loss for the true ``blur`` and ``noise`` of a x``scale`` batch of patches, each (N,) or a map
    (N, 1, h', w') at the prediction locations (a patch whose blur varies). Pooled: the pinball loss of each patch's
    pooled estimate against the patch's mean truth at the quantiles ``BLUR_QUANTILE`` / ``NOISE_QUANTILE`` (relative
    to the blur range and to the noise range), which also teaches the logits where to look, plus the Laplace
    negative log-likelihood of the truth under the pooled estimate with its expected error (the estimate held fixed),
    which fits the expected errors. Local: the same pinball loss at every location against the truth there, so that
    a region's pooled predictions ("auto-map") estimate that region, not only the whole patch's average."""
    lo, hi = SIGMA_RANGES[scale]
    total = torch.zeros((), device=blur.device)
    for what, truth, spread, tau in (("blur", blur, hi - lo, BLUR_QUANTILE), ("noise", noise, NOISE_MAX, NOISE_QUANTILE)):
        located = getattr(pred, what)
        truth = truth.view(-1, 1, 1, 1).expand_as(located) if truth.dim() == 1 else truth
        value, expected = pool(pred, what)
        diff = truth.mean((1, 2, 3)) - value
        total = total + (_pinball(diff, tau) / spread).mean()
        total = total + 0.1 * (diff.abs().detach() / expected + (expected / spread).log()).mean()
        total = total + 0.5 * (_pinball(truth - located, tau) / spread).mean()
    return total


def _pinball(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """The quantile (pinball) loss of ``diff`` = truth - estimate at quantile ``tau``."""
    return torch.maximum(tau * diff, (tau - 1) * diff)
