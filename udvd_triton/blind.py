"""Blind super-resolution: the blur width and the noise level of an LR image, estimated from the image alone.

``estimate_degradation(img, scale)`` is what ``upscale`` uses when it is not told the degradation (``blur_sigma`` /
``noise_level`` "auto", one value per image, or "auto-map", a map for blur or noise that varies across the frame).

* **Blur and noise, jointly**: the degradation estimator (:mod:`udvd_triton.estimator`, a registry entry loaded
  offline and checked against its sha256) predicts at every fourth LR pixel a Laplace distribution of the blur width
  (HR pixels, within the scale's training range) and of the noise level. An image's estimate pools the predictions
  weighted by their precision (1 / scale^2): edges speak, flat regions barely. A large image is estimated from a
  bounded sample of windows (``WINDOW`` pixels a side, at most ``MAX_WINDOWS``: half the most textured, half spread
  evenly), never the whole image.
* **When the image says too little** (flat or featureless: fewer than ``MIN_EDGES`` of its pixels on an edge above
  its noise; tiny; or a pooled expected error beyond ``UNSURE_BLUR``), the blur falls back to the low end of the
  range, which never makes the model ring (it does not deblur), and the estimate says so in ``note``.
* **Maps** ("auto-map"): the predictions pooled over a Gaussian neighbourhood of every location (their weights
  flattened: each location's own estimate counts), and drawn towards the image's estimate where the neighbourhood
  says little (normalized convolution).
* **Immerkaer** (1996): the classical noise estimator, kept as ``estimate_noise_level`` / ``estimate_noise_map``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from udvd_triton.checkpoint import read_checkpoint
from udvd_triton.degradation import SCALES, SIGMA_RANGES
from udvd_triton.estimator import STRIDE, DegradationEstimator, Prediction, decode, edge_fraction, pool
from udvd_triton.images import Grid, ImageLike, InputImage, as_input
from udvd_triton.registry import BLIND_ESTIMATOR, BUNDLED_REGISTRY, estimator_info

AUTO = ("auto", "auto-map")  # what blur_sigma / noise_level take to be estimated: one value per image, or maps
WINDOW = 96  # LR pixels a side of the windows an image is estimated from ...
MAX_WINDOWS = 8  # ... at most this many: the estimator sees at most 74k pixels of an image, whatever its size
# "auto-map": LR pixels (Gaussian std) of the neighbourhood a local estimate pools (blur follows a depth-of-field
# edge; noise needs more pixels to average texture out), ...
MAP_RADIUS = {"blur": 8, "noise": 16}
# ... its locations weighted by softmax(MAP_TEMPERATURE * logit): the logits, trained to pick the few best locations
# of a whole patch, would let one far location outvote the neighbourhood; flattened, every location's own
# (locally trained) estimate counts. Chosen on 12 held-out photos of the training data, never on a test set: blur-map
# error 0.44 -> 0.40 HR px over a depth-of-field blend and a ramp, noise-map error 4.6 -> 3.5 over a 0-50 ramp,
# 0.8 -> 1.0 where the noise is a flat 5 (the radii of 24 / 24 px and weights as logged gave 0.54, 6.4, 0.6) ...
MAP_TEMPERATURE = 0.25
MAP_PRIOR = 0.05  # ... and drawn towards the image's estimate where its weights are below this share of the average
TILE, MARGIN = 256, 16  # "auto-map" runs the estimator over the whole image in tiles with this much context
UNSURE_BLUR = 0.25  # pooled expected blur error, as a fraction of the scale's range, above which the blur falls back
UNSURE_NOISE = 4.0  # pooled expected noise error (levels of 255) above which the noise is Immerkaer's estimate
MIN_SIDE = 24  # LR pixels: a smaller image says nothing about blur
MIN_EDGES = 0.01  # share of edge pixels (estimator.edge_fraction) below which an image says nothing about blur
NOISE_BLOCK = 16  # Immerkaer "auto-map": sums per block of 16 x 16 LR pixels ...
NOISE_WINDOW = 5  # ... averaged over 5 x 5 blocks (80 px), then resized bilinearly to the LR size


@dataclass(frozen=True)
class DegradationEstimate:
    """What an LR image went through, as far as it shows: the blur width ``blur_sigma`` (HR pixels, std of the SRMD
    Gaussian for a x``scale`` model) and the noise level ``noise_level`` (0..255 scale), with the errors the
    estimator expects of them (``blur_error``, ``noise_error``, same units); ``blur_map`` / ``noise_map`` (h, w) when
    maps were asked for; ``note`` when a safe value replaced an estimate the image could not support."""

    scale: int
    blur_sigma: float
    noise_level: float
    blur_error: float
    noise_error: float
    blur_map: np.ndarray | None = None
    noise_map: np.ndarray | None = None
    note: str | None = None

    def summary(self) -> str:
        """One line: the values a user can pass back as --sigma / --noise to reproduce the result."""
        text = f"blur sigma {self.blur_sigma:.2f} HR px (+-{self.blur_error:.2f}), noise {self.noise_level:.1f} (+-{self.noise_error:.1f})"
        return f"{text}; {self.note}" if self.note else text


@functools.lru_cache(maxsize=4)
def load_estimator(device: str = "cpu") -> DegradationEstimator:
    """The degradation estimator that ships with the package (the bundled registry's, whatever ``UDVD_REGISTRY``
    says about models) on ``device``, in eval mode, its file checked against its sha256."""
    entry = estimator_info(BLIND_ESTIMATOR, BUNDLED_REGISTRY)
    state, _ = read_checkpoint(entry.path, entry.sha256)
    model = DegradationEstimator(entry.config)
    model.load_state_dict(state)
    return model.to(device).eval()


def _windows(image: InputImage, size: int, count: int) -> list[tuple[int, int]]:
    """Top-left corners of at most ``count`` windows of ``size`` pixels inside the image: half the most textured
    (mean |Laplacian| of a 4x-subsampled gray copy), half spread evenly; all of it when the image fits in one."""
    _, _, h, w = image.shape
    if h <= size and w <= size:
        return [(0, 0)]
    ys = np.unique(np.linspace(0, max(h - size, 0), max(1, math.ceil(h / size) * 2)).round().astype(int))
    xs = np.unique(np.linspace(0, max(w - size, 0), max(1, math.ceil(w / size) * 2)).round().astype(int))
    corners = [(int(y), int(x)) for y in ys for x in xs]
    if len(corners) <= count:
        return corners
    step = 4
    small = image.window(0, h, 0, w, torch.device("cpu"), torch.float32)[0, :3, ::step, ::step].mean(0)
    lap = (4 * small[1:-1, 1:-1] - small[:-2, 1:-1] - small[2:, 1:-1] - small[1:-1, :-2] - small[1:-1, 2:]).abs()
    score = [float(lap[y // step : (y + size) // step, x // step : (x + size) // step].mean()) for y, x in corners]
    textured = sorted(range(len(corners)), key=lambda i: -score[i])[: count - count // 2]
    spread = [i for i in np.linspace(0, len(corners) - 1, count).round().astype(int) if i not in textured]
    return [corners[i] for i in [*textured, *spread][:count]]


def _color(window: torch.Tensor, gray: bool) -> torch.Tensor:
    """The model's view of a window (n, C, h, w): RGB, gray replicated, alpha dropped."""
    return window[:, :1].expand(-1, 3, -1, -1) if gray else window[:, :3]


def _predict(model: DegradationEstimator, image: InputImage, y: int, x: int, rows: int, cols: int, scale: int,
             edges: list[tuple[torch.Tensor, int]] | None = None) -> Prediction:
    """The estimator's prediction on the window at (y, x) of ``rows`` x ``cols`` pixels (clipped to the image);
    appends the window's (edge pixel counts (n,), pixel count) to ``edges`` if given."""
    _, _, h, w = image.shape
    device = next(model.parameters()).device
    win = _color(image.window(y, min(y + rows, h), x, min(x + cols, w), device, torch.float32), image.gray)
    with torch.inference_mode():
        if edges is not None:
            pixels = win.shape[-2] * win.shape[-1]
            edges.append((edge_fraction(win).cpu() * pixels, pixels))
        return decode(model(win), scale)


def estimate_all(image: InputImage, scale: int, maps: bool) -> list[DegradationEstimate]:
    """One estimate per image of ``image`` (see :func:`estimate_degradation`)."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    n, _, h, w = image.shape
    lo, hi = SIGMA_RANGES[scale]
    if min(h, w) < MIN_SIDE:  # too small for the estimator's convolutions to see an edge
        noise = immerkaer_levels(image) if min(h, w) >= 3 else torch.zeros(n, dtype=torch.float64)
        note = f"image too small to tell the blur: assumed {lo:g} HR px (no deblurring); noise from Immerkaer's estimator"
        return [DegradationEstimate(scale, lo, float(v), hi - lo, float("nan"),
                                    np.full((h, w), lo) if maps else None, np.full((h, w), float(v)) if maps else None,
                                    note) for v in noise]
    model = load_estimator()
    edges: list[tuple[torch.Tensor, int]] = []
    preds = [_predict(model, image, y, x, WINDOW, WINDOW, scale, edges) for y, x in _windows(image, WINDOW, MAX_WINDOWS)]
    edge_share = sum(count for count, _ in edges) / sum(pixels for _, pixels in edges)
    # every location of every window, pooled as in training (estimator.pool): the image's estimate
    joined = Prediction(*(torch.cat([getattr(p, f.name).flatten(1) for p in preds], 1)[:, None, :, None]
                          for f in dataclasses.fields(Prediction)))
    blur, blur_err = (t.double() for t in pool(joined, "blur"))
    noise, noise_err = (t.double() for t in pool(joined, "noise"))
    immerkaer = immerkaer_levels(image)
    blur_maps = noise_maps = None
    if maps:
        blur_maps, noise_maps = _maps(model, image, scale, blur, noise)
    out = []
    for i in range(n):
        notes = []
        b, be, v, ve = float(blur[i]), float(blur_err[i]), float(noise[i]), float(noise_err[i])
        if be > UNSURE_BLUR * (hi - lo) or float(edge_share[i]) < MIN_EDGES:
            b, be = lo, hi - lo
            notes.append(f"too little texture to tell the blur: assumed {lo:g} HR px (no deblurring)")
        if ve > UNSURE_NOISE:
            v = float(immerkaer[i])
            notes.append("noise from Immerkaer's estimator (the image says little to the learned one)")
        out.append(DegradationEstimate(scale, b, v, be, ve,
                                       None if blur_maps is None else blur_maps[i],
                                       None if noise_maps is None else noise_maps[i],
                                       "; ".join(notes) or None))
    return out


def _prediction_map(model: DegradationEstimator, image: InputImage, scale: int) -> dict[str, torch.Tensor]:
    """The estimator's predictions over the whole image, (n, 1, ceil(h/4), ceil(w/4)) each, from tiles of ``TILE``
    pixels run with ``MARGIN`` pixels of context (predictions near a window's edge see its zero padding)."""
    n, _, h, w = image.shape
    full = {f.name: torch.empty(n, 1, -(-h // STRIDE), -(-w // STRIDE)) for f in dataclasses.fields(Prediction)}
    for y0 in range(0, h, TILE):
        for x0 in range(0, w, TILE):
            wy, wx = max(y0 - MARGIN, 0), max(x0 - MARGIN, 0)
            pred = _predict(model, image, wy, wx, TILE + y0 - wy + MARGIN, TILE + x0 - wx + MARGIN, scale)
            ry, rx = (y0 - wy) // STRIDE, (x0 - wx) // STRIDE
            ty, tx = y0 // STRIDE, x0 // STRIDE
            th, tw = min(TILE // STRIDE, full["blur"].shape[2] - ty), min(TILE // STRIDE, full["blur"].shape[3] - tx)
            for key, target in full.items():
                target[:, :, ty : ty + th, tx : tx + tw] = getattr(pred, key)[:, :, ry : ry + th, rx : rx + tw]
    return full


def _maps(model: DegradationEstimator, image: InputImage, scale: int, blur: torch.Tensor,
          noise: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Blur and noise maps (n, h, w): at every location, the predictions around it pooled (each weighted by the
    softmax of ``MAP_TEMPERATURE`` times its logit), the neighbourhood a Gaussian of ``MAP_RADIUS`` LR pixels; where the
    neighbourhood says little (its weights are small beside the image's), drawn towards the image's values
    (``blur``, ``noise``: (n,))."""
    n, _, h, w = image.shape
    pred = _prediction_map(model, image, scale)

    def smooth(t: torch.Tensor, key: str) -> torch.Tensor:  # separable Gaussian, zero outside the image
        sigma = MAP_RADIUS[key] / STRIDE
        radius = math.ceil(3 * sigma)
        g = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
        t = F.conv2d(F.pad(t, (radius, radius, 0, 0)), g.view(1, 1, 1, -1))
        return F.conv2d(F.pad(t, (0, 0, radius, radius)), g.view(1, 1, -1, 1))

    maps = []
    for key, prior in (("blur", blur), ("noise", noise)):
        logit = pred[f"{key}_logit"].double() * MAP_TEMPERATURE
        weight = (logit - logit.amax((1, 2, 3), keepdim=True)).exp()
        local = smooth(weight, key)
        floor = MAP_PRIOR * local.mean((1, 2, 3), keepdim=True)
        grid = (smooth(weight * pred[key].double(), key) + floor * prior.view(n, 1, 1, 1)) / (local + floor)
        maps.append(Grid(grid, (h, w)).window(0, h, 0, w)[:, 0].numpy())
    return maps[0], maps[1]


def estimate_degradation(img: ImageLike, scale: int, maps: bool = False) -> DegradationEstimate | list[DegradationEstimate]:
    """The blur width (HR pixels) and noise level (0..255) ``img`` went through, for a x``scale`` model, from the
    image alone (see the module docstring). ``maps=True`` adds local maps (h, w). One estimate, or a list for a
    batched torch input (N, C, H, W)."""
    image = as_input(img)
    estimates = estimate_all(image, scale, maps)
    return estimates if image.kind == "torch" and image.batched else estimates[0]


def _immerkaer_sums(image: InputImage, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Immerkaer's |I * N| summed over the colour channels and the valid 3x3 positions of each block x block cell:
    (sums (n, gh, gw), counts (gh, gw)) in float64, on the 0..255 scale. Streams bands of rows, so memory is a few
    rows of the image whatever its size."""
    n, channels, h, w = image.shape
    if h < 3 or w < 3:
        raise ValueError(f"noise estimation needs an image of at least 3x3 pixels, got {h}x{w}")
    colors = 1 if image.gray else 3
    gh, gw = -(-h // block), -(-w // block)
    mask = torch.tensor([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=torch.float64).view(1, 1, 3, 3)
    sums = torch.zeros(n, gh, gw, dtype=torch.float64)
    band = max(1, 256 // block)  # block rows per band
    cpu = torch.device("cpu")
    for b0 in range(0, gh, band):
        b1 = min(b0 + band, gh)
        r0, r1 = b0 * block, min(b1 * block, h)  # response rows (3x3 centres) of this band
        top, bottom = max(r0 - 1, 0), min(r1 + 1, h)
        x = image.window(top, bottom, 0, w, cpu, torch.float64)[:, :colors] * 255
        response = F.conv2d(x.reshape(n * colors, 1, *x.shape[-2:]), mask).abs_().view(n, colors, -1, w - 2).sum(1)
        cells = torch.zeros(n, (b1 - b0) * block, gw * block, dtype=torch.float64)
        first = top + 1 - r0  # the response's first row, relative to r0
        cells[:, first : first + response.shape[1], 1 : w - 1] = response
        sums[:, b0:b1] = cells.view(n, b1 - b0, block, gw, block).sum((2, 4))
    rows = torch.tensor([len(range(max(i * block, 1), min((i + 1) * block, h - 1))) for i in range(gh)])
    cols = torch.tensor([len(range(max(j * block, 1), min((j + 1) * block, w - 1))) for j in range(gw)])
    return sums, (rows[:, None] * cols[None, :] * colors).double()


_IMMERKAER_SCALE = math.sqrt(math.pi / 2) / 6  # sigma = sqrt(pi/2) / 6 * mean |I * N|


def immerkaer_levels(image: InputImage) -> torch.Tensor:
    """One Immerkaer estimate per image: (n,) float64 on the 0..255 scale."""
    sums, counts = _immerkaer_sums(image, NOISE_BLOCK)
    return _IMMERKAER_SCALE * sums.sum((1, 2)) / counts.sum()


def immerkaer_grid(image: InputImage) -> torch.Tensor:
    """Local Immerkaer estimates: (n, 1, gh, gw), one per ``NOISE_BLOCK`` cell, each from the
    ``NOISE_WINDOW`` x ``NOISE_WINDOW`` cells around it (fewer at the borders)."""
    sums, counts = _immerkaer_sums(image, NOISE_BLOCK)
    pad = NOISE_WINDOW // 2
    box = torch.ones(1, 1, NOISE_WINDOW, NOISE_WINDOW, dtype=torch.float64)
    local_sums = F.conv2d(sums[:, None], box, padding=pad)
    local_counts = F.conv2d(counts[None, None], box, padding=pad)
    return _IMMERKAER_SCALE * local_sums / local_counts.clamp(min=1)


def estimate_noise_level(img: ImageLike) -> float:
    """Standard deviation of additive white Gaussian noise in ``img``, on the 0..255 scale.

    Immerkaer's estimator (J. Immerkaer, "Fast Noise Variance Estimation", Computer Vision and Image Understanding
    64(2):300-302, 1996): convolve with the difference of two Laplacians
    N = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]], which cancels locally smooth (up to quadratic) structure, and
    sigma = sqrt(pi/2) / (6 (W-2)(H-2)) * sum |I * N| over the valid region. Computed per colour channel (alpha
    excluded) and averaged, over every image of a batch; textured images read somewhat high.
    """
    return float(immerkaer_levels(as_input(img)).mean())


def estimate_noise_map(img: ImageLike) -> np.ndarray:
    """Local noise levels (0..255 scale), float64 (H, W), or (N, H, W) for a batched torch input: Immerkaer's
    estimator over ``NOISE_WINDOW`` x ``NOISE_WINDOW`` blocks of ``NOISE_BLOCK`` pixels around each block, resized
    bilinearly to the image size (what ``upscale(..., noise_level="auto-map")`` uses)."""
    image = as_input(img)
    _, _, h, w = image.shape
    levels = Grid(immerkaer_grid(image), (h, w)).window(0, h, 0, w)[:, 0].numpy()
    return levels if image.kind == "torch" and image.batched else levels[0]
