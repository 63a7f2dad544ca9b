"""ONNX export: the whole network, with dynamic N, H, W, its dynamic filters as standard ONNX ops.

Two forms of the graph (``form``):

* ``"maps"`` takes what the model's forward takes: ``image`` (N, 3, h, w) in [0, 1], ``kernel_code`` (N, 15, h, w)
  (kernel-PCA codes of the blur, :func:`udvd_triton.degradation.kernel_code` with the basis stored in the file's
  metadata) and ``noise_map`` (N, 1, h, w) = noise level / 255. Per-pixel degradations go in here.
* ``"sigma"`` builds those maps inside: ``image``, ``blur_sigma`` (N,) (width of the Gaussian blur in HR pixels,
  0 = none) and ``noise_level`` (N,) (0..255), as ``upscale`` takes numbers.

Both give ``output`` (N, 3, s*h, s*w): the final stage, not clipped (clip to [0, 1] and round for an image). The
dynamic filter is exported through its PyTorch reference (pad, slices, products, sums, depth-to-space), never
through the Triton kernel. The file's metadata (``metadata_props``) says what a runtime needs: scale, model name and
sha256 of the weights it came from, the kernel-PCA basis, the input ranges, the receptive radius for seamless
tiling, and ``udvd-triton`` as its writer (so that only our own exports are ever replaced).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from udvd_triton import __version__, files
from udvd_triton.degradation import BLUR_SIZE
from udvd_triton.model import UDVDNet

FORMS = ("maps", "sigma")
OPSETS = (18, 23)  # the range the torch.export-based exporter writes and current ONNX Runtime reads
MARKER_KEY = "udvd-triton"  # metadata key present in every export we write (its value: our version)


class _Maps(nn.Module):
    """The network's final stage from (image, kernel_code, noise_map)."""

    def __init__(self, net: UDVDNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, kernel_code: torch.Tensor, noise_map: torch.Tensor) -> torch.Tensor:
        return self.net(image, kernel_code, noise_map)[-1]


class _Sigma(nn.Module):
    """The network's final stage from (image, blur_sigma (N,), noise_level (N,)): the maps are built inside, as
    ``upscale`` builds them for numbers (a 15 x 15 Gaussian of each width, a unit impulse for 0, encoded with the
    model's basis)."""

    def __init__(self, net: UDVDNet) -> None:
        super().__init__()
        self.net = net
        r = torch.arange(BLUR_SIZE, dtype=torch.float32) - BLUR_SIZE // 2
        self.register_buffer("r2", (r[:, None] ** 2 + r[None, :] ** 2).reshape(-1))
        impulse = torch.zeros(BLUR_SIZE * BLUR_SIZE)
        impulse[BLUR_SIZE * BLUR_SIZE // 2] = 1
        self.register_buffer("impulse", impulse)

    def forward(self, image: torch.Tensor, blur_sigma: torch.Tensor, noise_level: torch.Tensor) -> torch.Tensor:
        n, _, h, w = image.shape
        sigma = blur_sigma.reshape(-1, 1).float()
        kernels = torch.exp(-0.5 * self.r2 / sigma.clamp(min=1e-3) ** 2)
        kernels = torch.where(sigma > 0, kernels / kernels.sum(1, keepdim=True), self.impulse)
        code = (kernels @ self.net.kernel_basis.T).to(image.dtype)
        code_map = code[:, :, None, None].expand(n, code.shape[1], h, w)
        noise_map = (noise_level.reshape(-1, 1, 1, 1).to(image.dtype) / 255).expand(n, 1, h, w)
        return self.net(image, code_map, noise_map)[-1]


def is_ours(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file (not a link) holding an ONNX model we exported."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a readable ONNX file: certainly not ours
        return False
    return any(p.key == MARKER_KEY for p in model.metadata_props)


def metadata(model: UDVDNet, form: str, name: str | None, sha256: str | None) -> dict[str, str]:
    """What a runtime needs beside the graph, as ONNX ``metadata_props`` (JSON values)."""
    inputs = {"image": "float (N, 3, h, w) in [0, 1] (RGB; gray replicated)"}
    if form == "maps":
        inputs |= {"kernel_code": f"float (N, {model.code_len}, h, w): kernel_basis @ blur_kernel.ravel() per pixel",
                   "noise_map": "float (N, 1, h, w): noise level (0..255 scale) / 255"}
    else:
        inputs |= {"blur_sigma": "float (N,): Gaussian blur width in HR pixels, 0 = none",
                   "noise_level": "float (N,): noise level, 0..255 scale"}
    return {
        MARKER_KEY: __version__,
        "form": form,
        "scale": str(model.scale),
        "model": name or "",
        "source_sha256": sha256 or "",
        "config": json.dumps(model.config.to_dict()),
        "kernel_basis": json.dumps(model.kernel_basis.detach().cpu().double().tolist()),
        "blur_kernel_size": str(BLUR_SIZE),
        "inputs": json.dumps(inputs),
        "output": f"float (N, 3, {model.scale}h, {model.scale}w): unclipped; clip to [0, 1]",
        "receptive_radius": str(model.receptive_radius),
        "tiling": "run tiles with receptive_radius LR pixels of real context on every side (replicate-pad the image "
                  "by it) and keep each tile's own part of the output: the result equals the untiled one",
    }


def export_onnx(
    model: UDVDNet,
    path: str | os.PathLike[str],
    *,
    form: str = "maps",
    half: bool = False,
    opset: int = OPSETS[0],
    name: str | None = None,
    sha256: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` as an ONNX file at ``path`` (see the module docstring) and return ``path``.

    ``form``: "maps" or "sigma"; ``half``: float16 weights, inputs and output (for GPU runtimes; ONNX Runtime's CPU
    provider lacks float16 convolutions); ``opset``: in ``OPSETS``; ``name`` / ``sha256``: the source recorded in
    the metadata. The file is written under a temporary name and moved into place; an existing file is replaced
    only with ``overwrite`` and only if we exported it, never what appeared meanwhile. ValueError for a bad
    argument or an unwritable / foreign output, before anything is exported.
    """
    try:
        import onnx
    except ModuleNotFoundError:
        raise ValueError("ONNX export needs the onnx and onnxscript packages: pip install 'udvd-triton[onnx]'") from None
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not OPSETS[0] <= opset <= OPSETS[1]:
        raise ValueError(f"opset must be an integer in {OPSETS[0]}..{OPSETS[1]} (what the exporter writes and ONNX "
                         f"Runtime reads), got {opset!r}")
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"the output must end in .onnx, got {path}")
    if files.exists(path):
        if not overwrite:
            raise FileExistsError(f"output exists: {path} (use --overwrite to replace it)")
        if not is_ours(path):
            raise ValueError(f"refusing to replace {path}, even with --overwrite: it is not an ONNX file udvd-triton "
                             "exported (or it is a link); move it away or choose another output")
    files.check_writable_folder(path.parent)

    dtype = torch.float16 if half else torch.float32
    net = UDVDNet(model.config)
    net.load_state_dict(model.state_dict())
    net = net.to("cpu", dtype).eval()
    h, w, n = 24, 20, 2
    image = torch.rand(n, 3, h, w, dtype=dtype)
    if form == "maps":
        wrapper: nn.Module = _Maps(net)
        args: tuple[Any, ...] = (image, torch.rand(n, net.code_len, h, w, dtype=dtype), torch.rand(n, 1, h, w, dtype=dtype))
        names = ["image", "kernel_code", "noise_map"]
    else:
        wrapper = _Sigma(net)
        args = (image, torch.rand(n, dtype=dtype), torch.rand(n, dtype=dtype))
        names = ["image", "blur_sigma", "noise_level"]
    batch = torch.export.Dim("n", min=1, max=4096)
    rows, cols = torch.export.Dim("h", min=1, max=65536), torch.export.Dim("w", min=1, max=65536)
    shapes = {names[0]: {0: batch, 2: rows, 3: cols}}
    shapes |= {k: ({0: batch, 2: rows, 3: cols} if form == "maps" else {0: batch}) for k in names[1:]}
    quiet = logging.getLogger("torch.onnx")  # its notes (e.g. "torchvision is not installed") concern no op of ours
    level = quiet.level
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        quiet.setLevel(logging.ERROR)
        try:
            program = torch.onnx.export(wrapper, args, input_names=names, output_names=["output"], opset_version=opset,
                                        dynamic_shapes=shapes, dynamo=True, verbose=False, report=False)
        finally:
            quiet.setLevel(level)
    proto = program.model_proto
    onnx.helper.set_model_props(proto, metadata(net, form, name, sha256))
    onnx.checker.check_model(proto)
    with files.atomic_output(path, (lambda p: overwrite and is_ours(p))) as tmp:
        tmp.write_bytes(proto.SerializeToString())
    return path
