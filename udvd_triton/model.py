"""The UDVD network (Xu et al., CVPR 2020) and its ablation variants.

Input: the SRMD-style stack of the LR image (3 ch), the kernel-PCA code (15 ch) and the noise level (1 ch), each
degradation parameter stretched to a map at LR size. Body: EDSR-style conv head, ``blocks`` residual blocks
(res_scale 0.1) and a global skip. Refinement by dynamic filters:

* ``upsample``: per LR pixel, a k x k kernel for each of the s*s sub-pixels is predicted from the body features and
  a small guide branch on the LR image, applied to the LR image (``dynamic_filter`` with ``scale=s``), plus a
  residual predicted by a sub-pixel conv (conv -> ReLU -> PixelShuffle(s) -> conv).
* ``refine[i]``: a "common" dynamic conv at HR: per HR pixel one k x k kernel applied to the previous output,
  plus a predicted residual. The LR body features are aligned to HR by a sub-pixel layer (``FeatureAligner``).

Every stage's output is returned; training puts an L1 loss on each (``multistage_l1_loss``).

Variants (paper ablation): "baseline" (sub-pixel upsampling, no dynamic filter), "D" (baseline + one common
dynamic conv), "U" (dynamic upsampling only), "UD", "UDD" (default: dynamic upsampling + two common dynamic convs).

Module names follow the reference implementation where they mean the same (``head``, ``body.{i}.conv.{0,2}``,
``image_conv``, ``feat_conv``, ``feat_residual``, ``feat_kernel``), so ``convert_reference_state_dict`` is a
prefix rename.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from udvd_triton import settings
from udvd_triton.degradation import CODE_LENGTH, SCALES, cubic_taps, pca_basis
from udvd_triton.ops import dynamic_filter
from udvd_triton.settings import setting

VARIANTS = ("baseline", "D", "U", "UD", "UDD")
FILTER_SIZES = (1, 3, 5, 7, 9, 11, 13, 15)  # dynamic-filter sides k: odd (the paper: 5; sm_90 builds checked to 9)
MAX_CHANNELS = 1024  # bounds that refuse configs nobody means (a typo's 10**7 blocks) before any memory is allocated
MAX_BLOCKS = 256
LEGACY_KEYS = {"n_feats": "channels", "n_blocks": "blocks"}  # config keys of udvd-triton <= 0.1 checkpoints
GUIDE_CHANNELS = 32  # output width of the image guide branch (3 -> 16 -> 16 -> 32 in the paper's reference)
RESIDUAL_CHANNELS = 16  # width of the residual branches before their last conv


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


def _image_guide(channels: int) -> nn.Sequential:
    """Small conv branch that lets the kernel predictor see the image it filters."""
    return nn.Sequential(
        _conv(channels, 16), nn.ReLU(inplace=True), _conv(16, 16), nn.ReLU(inplace=True), _conv(16, GUIDE_CHANNELS)
    )


def _apply_dynamic(x: torch.Tensor, kernels: torch.Tensor, scale: int, kernel_size: int) -> torch.Tensor:
    # Under autocast the predicted kernels arrive in bf16/fp16 while the image is fp32: the op reads each in its own
    # dtype and accumulates in fp32 (a cast would write and re-read the largest tensor of the op); result in x's dtype.
    return dynamic_filter(x, kernels, scale=scale, kernel_size=kernel_size, depthwise=True)


def _start_as_filter(kernel_conv: nn.Conv2d, residual_conv: nn.Conv2d, taps: torch.Tensor) -> None:
    """Initialise a dynamic stage to apply the fixed filter ``taps`` (k*k*s*s,) plus a near-zero residual.

    A fresh network then starts at bicubic upsampling (and identity refinement) instead of at noise: training only
    learns the correction, which on a small CPU budget is the difference between losing and beating bicubic.
    The weights are scaled down rather than zeroed so that the output still depends on the features and maps.
    """
    with torch.no_grad():
        kernel_conv.weight.mul_(1e-2)
        kernel_conv.bias.copy_(taps)
        residual_conv.weight.mul_(1e-2)
        residual_conv.bias.zero_()


def filter_taps(scale: int, kernel_size: int) -> torch.Tensor:
    """Bicubic upsampling by ``scale`` as dynamic-filter taps: (k*k*s*s,) in the op's channel order.

    Channel ``(dx*k + dy)*s*s + a*s + b`` weights LR pixel (i + dy - p, j + dx - p) for HR pixel (s*i + a, s*j + b);
    scale 1 gives the identity (centre tap 1).
    """
    rows = cubic_taps(scale, kernel_size)  # (s, k): weights of the k LR rows for HR row sub-pixel a
    taps = torch.einsum("ay,bx->xyab", rows, rows)  # separable: w[dx, dy, a, b] = rows[a, dy] * rows[b, dx]
    return taps.reshape(-1)


class ResBlock(nn.Module):
    """EDSR residual block without batch norm: x + res_scale * conv(relu(conv(x)))."""

    def __init__(self, channels: int, res_scale: float) -> None:
        super().__init__()
        self.conv = nn.Sequential(_conv(channels, channels), nn.ReLU(inplace=True), _conv(channels, channels))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) * self.res_scale


class FeatureAligner(nn.Sequential):
    """Sub-pixel alignment of LR features (C ch, h x w) to the HR grid (C ch, s*h x s*w).

    When s*s divides C (x2 and x4 at C=128) it is parameter-free ``PixelShuffle(s)`` followed by a 1x1 conv
    C/s^2 -> C: each HR pixel sees the C/s^2 features of its own sub-pixel position. At x2 this is exactly the
    reference implementation. When it does not (x3: 9 does not divide 128), a 1x1 conv first widens the features to
    s^2 * ceil(C/s^2) channels, which keeps the same shuffle-then-project structure with no feature dropped.
    """

    def __init__(self, channels: int, scale: int) -> None:
        per_pixel = -(-channels // (scale * scale))
        layers: list[nn.Module] = []
        if per_pixel * scale * scale != channels:
            layers.append(nn.Conv2d(channels, per_pixel * scale * scale, 1))
        layers += [nn.PixelShuffle(scale), nn.Conv2d(per_pixel, channels, 1)]
        super().__init__(*layers)


class UpsampleDynamicConv(nn.Module):
    """Upsampling stage: LR image + LR features -> HR image (N, C_img, s*h, s*w).

    With ``dynamic=False`` (baseline and "D" variants) only the sub-pixel residual branch produces the output.
    """

    def __init__(self, channels: int, scale: int, kernel_size: int, image_channels: int, dynamic: bool) -> None:
        super().__init__()
        self.scale, self.kernel_size = scale, kernel_size
        cat = GUIDE_CHANNELS + channels
        self.image_conv = _image_guide(image_channels)
        self.feat_residual = nn.Sequential(
            _conv(cat, RESIDUAL_CHANNELS * scale * scale),
            nn.ReLU(inplace=True),
            nn.PixelShuffle(scale),
            _conv(RESIDUAL_CHANNELS, image_channels),
        )
        self.feat_kernel = _conv(cat, kernel_size * kernel_size * scale * scale) if dynamic else None
        if self.feat_kernel is not None:
            _start_as_filter(self.feat_kernel, self.feat_residual[-1], filter_taps(scale, kernel_size))

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        cat = torch.cat([self.image_conv(image), features], 1)
        out = self.feat_residual(cat)
        if self.feat_kernel is not None:
            out = _apply_dynamic(image, self.feat_kernel(cat), self.scale, self.kernel_size) + out
        return out


class CommonDynamicConv(nn.Module):
    """Refinement stage at HR: previous output (N, C_img, H, W) + LR features -> refined output, same shape."""

    def __init__(self, channels: int, scale: int, kernel_size: int, image_channels: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        cat = GUIDE_CHANNELS + channels
        self.image_conv = _image_guide(image_channels)
        self.feat_conv = FeatureAligner(channels, scale)
        self.feat_residual = nn.Sequential(
            _conv(cat, RESIDUAL_CHANNELS), nn.ReLU(inplace=True), _conv(RESIDUAL_CHANNELS, image_channels)
        )
        self.feat_kernel = _conv(cat, kernel_size * kernel_size)
        _start_as_filter(self.feat_kernel, self.feat_residual[-1], filter_taps(1, kernel_size))

    def forward(self, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        cat = torch.cat([self.image_conv(image), self.feat_conv(features)], 1)
        return _apply_dynamic(image, self.feat_kernel(cat), 1, self.kernel_size) + self.feat_residual(cat)


def default_kernel_basis(code_len: int = 15) -> torch.Tensor:
    """The leading ``code_len`` rows of ``degradation.pca_basis()``: float32 (code_len, 225)."""
    basis = torch.tensor(pca_basis(), dtype=torch.float32)  # copy: the cached basis is read-only
    if not 1 <= code_len <= basis.shape[0]:
        raise ValueError(f"code_len must be in 1..{basis.shape[0]} (rows of the kernel-PCA basis), got {code_len}")
    return basis[:code_len]


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The architecture of a UDVD network: every constructor argument, with its meaning, unit and allowed values.

    Stored as ``config.json`` beside checkpoints and in their safetensors metadata. ``from_dict`` reads files of
    earlier versions, whose width and depth were called ``n_feats`` / ``n_blocks``.
    """

    scale: int = setting(2, "upscaling factor: one of the scales UDVD supports", int, choices=SCALES)
    channels: int = setting(128, "width of the body", int, unit="feature channels", low=1, high=MAX_CHANNELS)
    blocks: int = setting(15, "residual blocks of the body", int, low=0, high=MAX_BLOCKS)
    res_scale: float = setting(0.1, "residual scaling in the blocks", float, low=0, high=10)
    kernel_size: int = setting(5, "side k of the per-pixel dynamic filters, odd", int, unit="pixels",
                               choices=FILTER_SIZES)
    variant: str = setting("UDD", "ablation variant (U: dynamic upsampling, D: a common dynamic conv)", str,
                           choices=VARIANTS)
    image_channels: int = setting(3, "channels of the image", int, choices=(1, 2, 3, 4))
    code_len: int = setting(15, "length of the kernel-PCA code of the blur", int, low=1, high=CODE_LENGTH)

    def __post_init__(self) -> None:
        settings.check(self, lambda name: f"UDVD {name} ({settings.spec_of(self, name).help})")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """A config from JSON: unknown keys are refused (ValueError naming them), the keys of earlier versions
        (``LEGACY_KEYS``) are read under their current names, missing keys take their defaults."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a model config must be a JSON object, got {type(data).__name__}")
        renamed = {LEGACY_KEYS.get(k, k): v for k, v in data.items()}
        if len(renamed) != len(data):
            raise ValueError(f"a model config names a setting twice (under its old and new name): {sorted(data)}")
        unknown = sorted(set(renamed) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"the model does not take: {unknown} (its config: {[f.name for f in dataclasses.fields(cls)]})")
        return cls(**renamed)


def _reach(module: nn.Module) -> int:
    """Pixels, at the module's input resolution, that one output pixel of a conv stack reaches on each side: every
    k x k conv adds (k - 1) / 2 pixels of its own resolution; after a ``PixelShuffle(s)`` those are 1/s input pixels
    (rounded up at the end)."""
    reach, after_shuffle, shuffle = 0, 0, 1
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            r = (layer.kernel_size[0] - 1) // 2 * layer.dilation[0]
            if shuffle == 1:
                reach += r
            else:
                after_shuffle += r
        elif isinstance(layer, nn.PixelShuffle):
            shuffle = layer.upscale_factor
    return reach + -(-after_shuffle // shuffle)


class UDVDNet(nn.Module):
    """The UDVD network: Unified Dynamic Convolutional Network for SR with Variational Degradations.

    ``UDVDNet(config)`` or ``UDVDNet(scale=3, channels=64, ...)``: the fields of :class:`ModelConfig` (scale 2, 3 or
    4; 128 channels, 15 blocks, res_scale 0.1, 5x5 dynamic filters, variant "UDD" are the paper's model). The network
    alone; :class:`udvd_triton.UDVD` adds the model zoo (``from_pretrained``, ``save_pretrained``) and ``upscale``.

    Buffer ``kernel_basis`` (code_len, 225): the kernel-PCA basis the model is trained with (by default
    ``degradation.pca_basis()``); saved in checkpoints, so ``upscale`` encodes a blur kernel k as
    ``kernel_basis @ k.ravel()`` with the basis the checkpoint was trained with. It follows the model's device but
    keeps its float32 values under ``.half()`` / ``.to(dtype)``.

    ``forward(image, kernel_code, noise_map)`` takes image (N, 3, h, w) in [0, 1], kernel_code (N, 15, h, w) and
    noise_map (N, 1, h, w) = noise sigma / 255, and returns a tuple of stage outputs, each (N, 3, s*h, s*w);
    the last one is the final prediction.
    """

    def __init__(self, config: ModelConfig | None = None, **fields: Any) -> None:
        super().__init__()
        if config is not None and fields:
            raise ValueError(f"give a ModelConfig or its fields, not both (got config and {sorted(fields)})")
        renamed = sorted(set(fields) & set(LEGACY_KEYS))
        if renamed:
            raise TypeError(f"UDVD arguments renamed: {', '.join(f'{k} -> {LEGACY_KEYS[k]}' for k in renamed)}")
        self.config = config if config is not None else ModelConfig(**fields)
        c = self.config
        self.scale, self.image_channels, self.code_len = c.scale, c.image_channels, c.code_len
        self.register_buffer("kernel_basis", default_kernel_basis(c.code_len))
        self.head = _conv(c.image_channels + c.code_len + 1, c.channels)
        self.body = nn.Sequential(*(ResBlock(c.channels, c.res_scale) for _ in range(c.blocks)))
        self.upsample = UpsampleDynamicConv(c.channels, c.scale, c.kernel_size, c.image_channels,
                                            dynamic=c.variant[0] == "U")
        self.refine = nn.ModuleList(
            CommonDynamicConv(c.channels, c.scale, c.kernel_size, c.image_channels) for _ in range(c.variant.count("D"))
        )

    @property
    def receptive_radius(self) -> int:
        """Radius, in LR pixels, of the input region that one output pixel depends on, read off the layers.

        Features: the head and the blocks' convs. The upsampling stage's predictors see the features and the image
        guide, plus their own convs; its filter taps reach (k-1)/2 LR pixels of the image. Each refinement stage
        reaches, at HR, the guide plus its residual or kernel predictor, or its taps, into the previous output (its
        LR-feature input is covered by the LR part); the stages' HR reach is converted to LR pixels by ceil(/ s).
        """
        pad = (self.config.kernel_size - 1) // 2
        features = _reach(self.head) + sum(_reach(block) for block in self.body)
        up = self.upsample
        predictors = max(_reach(up.feat_residual), _reach(up.feat_kernel) if up.feat_kernel is not None else 0)
        radius = max(max(features, _reach(up.image_conv)) + predictors, pad)
        hr = sum(max(_reach(r.image_conv) + max(_reach(r.feat_residual), _reach(r.feat_kernel)), pad)
                 for r in self.refine)
        return radius + -(-hr // self.scale)

    def _apply(self, fn, recurse=True):  # noqa: ANN001, ANN202 (nn.Module's signature)
        # The basis defines how blur kernels are encoded: rounded to float16 / bfloat16 it encodes them differently
        # from training (and fine-tuning refuses it), so a dtype change leaves it as it was, on the new device.
        basis = self.kernel_basis
        super()._apply(fn, recurse)
        self._buffers["kernel_basis"] = basis.to(self.kernel_basis.device)
        return self

    def check_inputs(self, image: torch.Tensor, kernel_code: torch.Tensor, noise_map: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the problem if the three inputs do not fit the model."""
        expected = {"image": self.image_channels, "kernel_code": self.code_len, "noise_map": 1}
        tensors = {"image": image, "kernel_code": kernel_code, "noise_map": noise_map}
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"{name} must be a 4-D tensor (N, C, h, w), got {shape}")
            if not t.is_floating_point():
                raise ValueError(f"{name} must be floating point (images in [0, 1]), got dtype {t.dtype}")
            if t.shape[1] != expected[name]:
                raise ValueError(f"{name} must have {expected[name]} channels, got shape {tuple(t.shape)}")
        n, _, h, w = image.shape
        for name in ("kernel_code", "noise_map"):
            t = tensors[name]
            if (t.shape[0], t.shape[2], t.shape[3]) != (n, h, w):
                raise ValueError(
                    f"{name} must match the image's batch and size (N={n}, h={h}, w={w}), got shape {tuple(t.shape)}"
                )

    def forward(
        self, image: torch.Tensor, kernel_code: torch.Tensor, noise_map: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        self.check_inputs(image, kernel_code, noise_map)
        head = self.head(torch.cat([image, kernel_code, noise_map], 1))
        features = self.body(head) + head
        out = self.upsample(image, features)
        outputs = [out]
        for stage in self.refine:
            out = stage(out, features)
            outputs.append(out)
        return tuple(outputs)


def multistage_l1_loss(
    outputs: Sequence[torch.Tensor], target: torch.Tensor, weights: Sequence[float] | None = None
) -> torch.Tensor:
    """Weighted sum of the mean L1 errors of every stage output against the HR target (all (N, C, H, W)).

    ``weights`` defaults to 1 for every stage, as in the paper.
    """
    weights = [1.0] * len(outputs) if weights is None else list(weights)
    if len(weights) != len(outputs):
        raise ValueError(f"got {len(weights)} loss weights for {len(outputs)} stage outputs")
    return sum(w * F.l1_loss(o.float(), target.float()) for w, o in zip(weights, outputs))  # type: ignore[return-value]


_REFERENCE_PREFIXES = {"UpDyConv.": "upsample.", "ComDyConv1.": "refine.0.", "ComDyConv2.": "refine.1."}


def convert_reference_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a state dict of the widely circulated reference UDVD (x2) onto ``UDVD(scale=2)``.

    Reference keys: ``head.*``, ``body.{i}.conv.{0,2}.*``, ``UpDyConv.{image_conv,feat_residual,feat_kernel}.*``,
    ``ComDyConv{1,2}.{image_conv,feat_conv,feat_residual,feat_kernel}.*``; a ``module.`` prefix (DataParallel) is
    dropped. The reference's ComDyConv ``feat_conv`` is PixelShuffle(2) then a 1x1 conv, i.e. our
    ``FeatureAligner`` at x2 with the same parameter positions, so only the stage prefixes change.
    The reference has no ``kernel_basis`` buffer; the default basis is added (the reference implementation's own
    PCA matrix can replace it). Load the result with ``UDVD(scale=2).load_state_dict(out)``.
    """
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        new = next((new + key[len(old) :] for old, new in _REFERENCE_PREFIXES.items() if key.startswith(old)), None)
        if new is None and key.startswith(("head.", "body.")):
            new = key
        if new is None:
            unknown.append(key)
        else:
            converted[new] = value
    if unknown:
        raise ValueError(f"not keys of the reference UDVD implementation: {', '.join(sorted(unknown))}")
    converted["kernel_basis"] = default_kernel_basis()
    return converted
