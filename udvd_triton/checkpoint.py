"""Checkpoint files: safetensors tensor sets (sharded above 16 MiB, Hugging Face's layout) and model checkpoints.

A model checkpoint is a folder with ``model.safetensors`` (every tensor of the state dict, including the
``kernel_basis`` buffer) and ``config.json`` (the :class:`~udvd_triton.model.ModelConfig`). The config is also stored
in the safetensors header (metadata key ``udvd_config``), so that a lone ``.safetensors`` file is self-describing.
Tensor sets larger than ``MAX_SHARD_BYTES`` (16 MiB, e.g. the paper model in float32) are written as shards
``model-00001-of-00002.safetensors``, ... with the index ``model.safetensors.index.json``; readers take either, in
any float dtype. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors

from udvd_triton.files import sha256_file, write_bytes, write_json, write_text
from udvd_triton.model import UDVDNet

WEIGHTS_NAME = "model.safetensors"
INDEX_SUFFIX = ".index.json"
MAX_SHARD_BYTES = 16 * 2**20  # the largest file some transfer channels take; bigger tensor sets are sharded
CONFIG_NAME = "config.json"
CONFIG_METADATA_KEY = "udvd_config"


class CheckpointError(ValueError):
    """A checkpoint or registry entry is unusable: corrupted/truncated file, checksum or config mismatch, wrong
    tensors. A ``ValueError``, so command-line front ends report it as a user error."""


def _shard_plan(tensors: dict[str, torch.Tensor], metadata: dict[str, str], max_bytes: int) -> list[list[str]]:
    """Tensor names per shard, in order, each shard's file (header included) at most ``max_bytes``.

    The safetensors header is JSON of every tensor's dtype, shape and offsets plus the metadata; it is over-estimated
    with 20-digit offsets so that the real file never exceeds the bound.
    """
    fixed = 16 + len(json.dumps({"__metadata__": metadata}))  # length prefix, padding, metadata
    shards: list[list[str]] = [[]]
    size = fixed
    for name, t in tensors.items():
        entry = len(json.dumps({name: {"dtype": "F64", "shape": list(t.shape), "data_offsets": [10**19, 10**19]}}))
        need = t.numel() * t.element_size() + entry
        if fixed + need > max_bytes:
            raise ValueError(f"tensor {name} ({need} bytes) alone exceeds the shard size limit of {max_bytes} bytes")
        if size + need > max_bytes and shards[-1]:
            shards.append([])
            size = fixed
        shards[-1].append(name)
        size += need
    return shards


def shard_names(prefix: str) -> tuple[str, str, re.Pattern[str]]:
    """(single-file name, index name, pattern of shard names) of a tensor set written with ``prefix``:
    ``prefix.safetensors``, ``prefix.safetensors.index.json``, ``prefix-00001-of-00003.safetensors`` (Hugging
    Face's sharded layout)."""
    return f"{prefix}.safetensors", f"{prefix}.safetensors{INDEX_SUFFIX}", re.compile(
        rf"^{re.escape(prefix)}-\d{{5}}-of-\d{{5}}\.safetensors$"
    )


def save_tensors(
    tensors: dict[str, torch.Tensor],
    directory: str | os.PathLike[str],
    prefix: str,
    metadata: dict[str, str] | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write ``tensors`` into ``directory`` as safetensors files of at most ``max_shard_bytes`` each.

    One file ``prefix.safetensors`` when everything fits, else shards ``prefix-0000i-of-0000n.safetensors`` and
    the index ``prefix.safetensors.index.json`` (``{"metadata": {"total_size": bytes}, "weight_map": {tensor:
    shard}}``, Hugging Face's layout); ``metadata`` goes into every file's header. Every file is written atomically
    (``files.atomic_output``), the index last; files of the other layout left from an earlier save of the same
    ``prefix`` are removed afterwards. Returns the file to read back (the single file or the index).
    Tensors are stored contiguous, on the CPU, in their dtype.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", **(metadata or {})}
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    single, index_name, pattern = shard_names(prefix)
    plan = _shard_plan(tensors, metadata, max_shard_bytes)
    names = [single] if len(plan) == 1 else [f"{prefix}-{i + 1:05d}-of-{len(plan):05d}.safetensors" for i in range(len(plan))]
    for file, keys in zip(names, plan):
        write_bytes(directory / file, save_safetensors({k: tensors[k] for k in keys}, metadata=metadata))
    result = directory / single
    if len(plan) > 1:
        weight_map = {k: file for file, keys in zip(names, plan) for k in keys}
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        result = directory / index_name
        write_json(result, {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2)
    stale = [p for p in directory.iterdir() if p.name not in names and p != result
             and (p.name in (single, index_name) or pattern.match(p.name))]
    for p in stale:
        p.unlink()
    return result


def find_tensors(directory: str | os.PathLike[str], prefix: str) -> Path | None:
    """The file to read a tensor set written by :func:`save_tensors` from: ``prefix.safetensors`` if present, else
    its index ``prefix.safetensors.index.json``; None when there is neither."""
    single, index_name, _ = shard_names(prefix)
    for name in (single, index_name):
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    return None


def save_checkpoint(
    model: UDVDNet | torch.nn.Module,
    directory: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write the model's weights (config in every file's metadata) and ``config.json`` into ``directory``;
    returns the weights path (``model.safetensors``, or ``model.safetensors.index.json`` when the weights exceed
    ``max_shard_bytes`` and are sharded). ``dtype`` (e.g. ``torch.float16``) converts the floating-point parameters
    (buffers, such as the kernel-PCA basis, are kept as they are).
    ``model``: a ``UDVDNet`` or another module whose ``config`` has ``to_dict()`` (the degradation estimator).
    Every file is written atomically."""
    config = model.config.to_dict()  # type: ignore[union-attr]
    # Only parameters are converted: buffers keep their dtype, since the kernel-PCA basis defines how blur kernels
    # are encoded, and a float16-rounded one no longer matches the basis that training synthesises codes with.
    params = {name for name, _ in model.named_parameters()}
    state = {k: v.to(dtype) if dtype is not None and v.is_floating_point() and k in params else v
             for k, v in model.state_dict().items()}
    stem = WEIGHTS_NAME.removesuffix(".safetensors")
    metadata = {CONFIG_METADATA_KEY: json.dumps(config, sort_keys=True)}
    weights = save_tensors(state, directory, stem, metadata, max_shard_bytes)
    write_text(Path(directory) / CONFIG_NAME, json.dumps(config, sort_keys=True, indent=2) + "\n")
    return weights


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: not a complete safetensors file ({e})") from None
    return state, metadata


def _read_index(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every shard an index lists, checked against its weight map; the metadata all shards share."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"cannot read checkpoint index {path}: not valid JSON ({e})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"checkpoint index {path} has no weight_map of tensor names to shard files")
    state: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] | None = None
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or shard in (".", ".."):  # shards live beside the index, nowhere else
            raise CheckpointError(f"checkpoint index {path} names a shard outside its folder: {shard!r}")
        file = path.parent / shard
        if not file.is_file():
            raise CheckpointError(f"checkpoint index {path}: shard {shard} is missing")
        tensors, meta = _read_safetensors(file)
        expected = {k for k, v in weight_map.items() if v == shard}
        if set(tensors) != expected:
            raise CheckpointError(f"checkpoint shard {file} does not hold the tensors its index {path.name} lists")
        if metadata is not None and meta != metadata:
            raise CheckpointError(f"checkpoint shard {file}: its metadata differs from the other shards'")
        metadata = meta
        state.update(tensors)
    return state, metadata or {}


def read_tensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a tensor set written by :func:`save_tensors` on the CPU: (tensors, metadata). ``path`` is a
    ``.safetensors`` file or a ``*.safetensors.index.json`` index (every shard it names is read and checked).

    Raises FileNotFoundError if it is missing, ``CheckpointError`` if a file is truncated, corrupted, of another
    format, or a shard does not match the index.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    return _read_index(path) if path.name.endswith(INDEX_SUFFIX) else _read_safetensors(path)


def read_checkpoint(
    path: str | os.PathLike[str], expected_sha256: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Read a model checkpoint on the CPU: (state dict, config from its metadata or None). ``path`` is a
    ``.safetensors`` file or a sharded checkpoint's ``*.safetensors.index.json``.

    Raises FileNotFoundError if it is missing, ``CheckpointError`` if the sha256 of ``path`` differs from
    ``expected_sha256`` or it is not a complete checkpoint (truncated, corrupted, another format, shards that do
    not match their index).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise CheckpointError(
                f"checksum mismatch for {path}: expected sha256 {expected_sha256}, got {actual} "
                "(the file is corrupted or was replaced; delete it and fetch it again)"
            )
    state, metadata = read_tensors(path)
    config = None
    if CONFIG_METADATA_KEY in metadata:
        try:
            config = json.loads(metadata[CONFIG_METADATA_KEY])
        except (json.JSONDecodeError, RecursionError):
            raise CheckpointError(f"checkpoint {path}: the config in its metadata is not valid JSON") from None
    return state, config


def read_config_file(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path`` (a checkpoint's ``config.json``), None when there is no such file."""
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object of model config fields")
    return config
