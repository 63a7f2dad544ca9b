"""The caller's image, as ``upscale`` and the estimators see it: PIL, numpy or torch in, the same kind out.

Images go in and come out as the same kind: PIL (modes L, LA, RGB, RGBA, I;16, F), numpy (H, W) / (H, W, C) uint8,
uint16 or float, torch (C, H, W) / (N, C, H, W) float, with C in 1 (gray), 2 (gray + alpha), 3 (RGB), 4 (RGBA).
Float images must be finite and in [0, 1]. The input is kept as it is and windows of it are converted on demand
(:class:`InputImage`); the output is allocated once at its final size and dtype and filled tile by tile
(:class:`OutputImage`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from udvd_triton.imageio import PIL_MODES

ImageLike = Image.Image | np.ndarray | torch.Tensor
INT_MAX = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}


@dataclass
class InputImage:
    """The caller's image, kept as it is; windows of it are converted on demand.

    ``data``: numpy (H, W, C) (a view of an (H, W) input) or torch (N, C, H, W). Window coordinates outside the image
    repeat its edge pixels (replicate padding)."""

    data: np.ndarray | torch.Tensor
    kind: str  # "pil" | "numpy" | "torch"
    batched: bool  # numpy HWC (else HW) / torch NCHW (else CHW)
    full_scale: float  # 255, 65535 or 1.0

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(n, channels, h, w)."""
        if isinstance(self.data, np.ndarray):
            h, w, c = self.data.shape
            return 1, c, h, w
        return tuple(self.data.shape)  # type: ignore[return-value]

    @property
    def gray(self) -> bool:
        return self.shape[1] <= 2

    @property
    def has_alpha(self) -> bool:
        return self.shape[1] in (2, 4)

    def window(self, y0: int, y1: int, x0: int, x1: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Pixels [y0, y1) x [x0, x1) as (n, C, y1 - y0, x1 - x0) in [0, 1], of ``dtype`` on ``device``; may share
        memory with the caller's image, so never modify it in place."""
        _, _, h, w = self.shape
        rows, cols = clamped_indices(y0, y1, h), clamped_indices(x0, x1, w)
        if isinstance(self.data, np.ndarray):
            # A window-sized copy in the image's own dtype crosses to the device (uint8: a quarter of float32's bytes)
            # and is converted there; uint16, which torch handles on the CPU only, crosses as int32.
            win = np.ascontiguousarray(self.data[rows][:, cols], np.int32 if self.data.dtype == np.uint16 else None)
            t = from_numpy(win).to(device).permute(2, 0, 1)[None]
            t = t.to(dtype, memory_format=torch.contiguous_format)
        else:
            t = self.data[:, :, torch_index(rows, self.data.device)][..., torch_index(cols, self.data.device)]
            t = t.to(device=device, dtype=dtype)
        return t.div_(self.full_scale) if self.full_scale != 1 else t


def clamped_indices(a: int, b: int, n: int) -> slice | np.ndarray:
    """Indices a..b-1 into a length-n axis, clamped to it (replicate padding); a slice when none is clamped."""
    return slice(a, b) if 0 <= a and b <= n else np.clip(np.arange(a, b), 0, n - 1)


def from_numpy(a: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy``, copying read-only arrays (PIL's, broadcast views), which torch warns about."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def torch_index(index: slice | np.ndarray, device: torch.device) -> slice | torch.Tensor:
    return index if isinstance(index, slice) else torch.as_tensor(index, device=device)


def _check_float_range(low: float, high: float) -> None:
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"float images must be finite and in [0, 1], but this one contains NaN or infinity "
                         f"(range found [{low:g}, {high:g}])")
    if low < 0 or high > 1:
        hint = " (0..255 values? divide by 255)" if high > 1 else ""
        raise ValueError(f"float images must be in [0, 1], found range [{low:g}, {high:g}]{hint}")


def as_input(img: ImageLike) -> InputImage:
    """Check ``img`` (kind, layout, dtype, float range) and wrap it without copying (PIL: one numpy copy)."""
    if isinstance(img, Image.Image):
        if img.mode not in PIL_MODES:
            raise ValueError(f"unsupported PIL image mode {img.mode!r}: convert it to one of {sorted(PIL_MODES)}")
        arr = np.asarray(img)
        arr = arr.astype(np.uint16) if img.mode.startswith("I;16") else arr
        image = as_input(arr)
        image.kind = "pil"
        return image
    if isinstance(img, np.ndarray):
        if not img.dtype.isnative:  # e.g. big-endian samples from a file: same values, the machine's byte order
            img = img.astype(img.dtype.newbyteorder("="))
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 2, 3, 4)):
            raise ValueError(f"numpy images must be (H, W) or (H, W, C) with C in 1..4, got shape {img.shape}")
        if img.dtype in INT_MAX:
            full_scale = float(INT_MAX[img.dtype])
        elif np.issubdtype(img.dtype, np.floating):
            full_scale = 1.0
            if img.size:
                _check_float_range(float(img.min()), float(img.max()))
        else:
            raise ValueError(f"numpy images must be uint8, uint16 or float in [0, 1], got dtype {img.dtype}")
        image = InputImage(img if img.ndim == 3 else img[..., None], "numpy", img.ndim == 3, full_scale)
    elif isinstance(img, torch.Tensor):
        if img.dim() not in (3, 4) or img.shape[-3] not in (1, 2, 3, 4):
            raise ValueError(f"torch images must be (C, H, W) or (N, C, H, W) with C in 1..4, got {tuple(img.shape)}")
        if img.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"torch images must be floating point (float16, bfloat16, float32 or float64) in [0, 1], "
                             f"got {img.dtype}")
        if img.numel():
            low, high = torch.aminmax(img.detach())
            _check_float_range(float(low), float(high))
        image = InputImage(img.detach() if img.dim() == 4 else img.detach()[None], "torch", img.dim() == 4, 1.0)
    else:
        raise ValueError(f"img must be a PIL image, numpy array or torch tensor, got {type(img).__name__}")
    n, _, h, w = image.shape
    if not (n and h and w):
        raise ValueError(f"empty image of shape {tuple(img.shape)}")
    return image


class OutputImage:
    """The result at its final size and dtype, filled tile by tile (``write``), then returned as the input's kind."""

    def __init__(self, image: InputImage, scale: int) -> None:
        n, c, h, w = image.shape
        self.image, self.scale = image, scale
        if isinstance(image.data, np.ndarray):
            self.data: np.ndarray | torch.Tensor = np.empty((scale * h, scale * w, c), image.data.dtype)
        else:
            self.data = torch.empty((n, c, scale * h, scale * w), dtype=image.data.dtype, device=image.data.device)

    def write(self, y: int, x: int, rgb: torch.Tensor, alpha: torch.Tensor | None) -> None:
        """Put an HR tile (n, 3, th, tw) (+ alpha (n, 1, th, tw)) at HR position (y, x): clip to [0, 1], round for
        integer outputs."""
        out = rgb.float().mean(1, keepdim=True) if self.image.gray else rgb.float()
        if alpha is not None:
            out = torch.cat([out, alpha.to(out)], 1)
        out = out.clamp_(0, 1)
        th, tw = out.shape[-2:]
        if isinstance(self.data, torch.Tensor):
            self.data[..., y : y + th, x : x + tw] = out.to(self.data)
            return
        if self.data.dtype in INT_MAX:  # rounded and narrowed on the device: uint8 crosses back as one byte a value
            out = out.mul_(INT_MAX[self.data.dtype]).round_()
            out = out.to(torch.uint8 if self.data.dtype == np.uint8 else torch.int32)
        self.data[y : y + th, x : x + tw] = out[0].permute(1, 2, 0).contiguous().cpu().numpy()

    def result(self) -> ImageLike:
        data, image = self.data, self.image
        if isinstance(data, torch.Tensor):
            return data if image.batched else data[0]
        if image.kind == "pil":
            return Image.fromarray(data[..., 0] if data.shape[2] == 1 else data)  # the mode follows the dtype
        return data if image.batched else data[..., 0]


def lerp_index(a: int, b: int, size: int, grid: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear sampling of LR pixels a..b-1 (clamped to the image) from a grid of ``grid`` cells spanning ``size``
    pixels, as ``F.interpolate(mode="bilinear", align_corners=False)``: (lower index, upper index, weight)."""
    dst = torch.arange(a, b, dtype=torch.float64).clamp_(0, size - 1)
    src = ((dst + 0.5) * (grid / size) - 0.5).clamp_(min=0)
    lo = src.floor().long()
    return lo, (lo + 1).clamp_(max=grid - 1), src - lo


class Grid:
    """A per-pixel quantity over the LR image (or over every image of a batch): ``values`` (B, C, gh, gw), B = 1 or
    N, sampled window by window: sliced when the grid has the LR size, resized bilinearly otherwise (a 1 x 1 grid is
    a constant). ``transform`` maps the sampled float64 window to what the model takes."""

    def __init__(
        self, values: torch.Tensor, size: tuple[int, int], transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        self.values, self.size, self.transform = values, size, transform

    def window(
        self, y0: int, y1: int, x0: int, x1: int, device: torch.device | None = None, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """(B, C', y1 - y0, x1 - x0) for LR pixels [y0, y1) x [x0, x1) (outside: the edge's values), of ``dtype`` on
        ``device`` (default float64 on the CPU). Sampled in float64; a constant is expanded on the device."""
        v, (h, w) = self.values, self.size
        gh, gw = v.shape[-2:]
        if (gh, gw) == (1, 1):
            out = self.transform(v.double()) if self.transform else v
            return out.to(device=device, dtype=dtype).expand(-1, -1, y1 - y0, x1 - x0)
        out = self._axis(v, 2, y0, y1, h) if gh != h else v[:, :, torch_index(clamped_indices(y0, y1, h), v.device)]
        out = self._axis(out, 3, x0, x1, w) if gw != w else out[..., torch_index(clamped_indices(x0, x1, w), v.device)]
        out = out.double()
        return (self.transform(out) if self.transform else out).to(device=device, dtype=dtype)

    @staticmethod
    def _axis(v: torch.Tensor, dim: int, a: int, b: int, size: int) -> torch.Tensor:
        lo, hi, weight = lerp_index(a, b, size, v.shape[dim])
        shape = [1] * v.dim()
        shape[dim] = -1
        low = v.index_select(dim, lo).double()
        return low + (v.index_select(dim, hi).double() - low) * weight.view(shape)
