"""Model zoo: the registry of named checkpoints, checkpoint I/O, and ``UDVD.from_pretrained`` / ``save_pretrained``.

Checkpoint layout (Hugging Face ``PyTorchModelHubMixin``): a directory with ``model.safetensors`` (every tensor of
the state dict, including the ``kernel_basis`` buffer) and ``config.json`` (the ``UDVD(...)`` keyword arguments).
The config is also stored in the safetensors header (metadata key ``udvd_config``) so that a lone ``.safetensors``
file is self-describing. Weights larger than ``MAX_SHARD_BYTES`` (16 MiB, e.g. the paper model in float32) are
written as shards ``model-00001-of-00002.safetensors``, ... with the index ``model.safetensors.index.json``
(Hugging Face's sharded layout); ``from_pretrained`` reads either, in any float dtype (e.g. float16 files).

Registry: a JSON manifest, by default ``registry.json`` in the installed ``udvd_triton.weights`` package; the
``UDVD_REGISTRY`` environment variable or a ``registry=`` argument points elsewhere. Format::

    {"format_version": 1,
     "models": [{"name": "udvd-x2", "file": "udvd-x2.safetensors", "sha256": "<64 hex>", "scale": 2,
                 "config": {...UDVD kwargs...}, "training": "one-line summary", "license": "MIT",
                 "hf_repo": "owner/repo[@revision]" (optional), "description": "..." (optional),
                 "default": true (optional: the model used for its scale when none is named)}]}

``file`` is a relative path inside the manifest's directory (no ``..``, not absolute). A file that is not there is fetched from ``hf_repo`` (through the
Hugging Face cache) when the entry names one. Either way its sha256 is checked before the file is read.

Loading validates everything (file readable, checksum, config, tensor names/shapes/dtypes, scale) before a fresh
model is built and filled, so a failed load never leaves a half-loaded model behind.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import json
import os
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors

from udvd_triton.files import write_bytes, write_json, write_text
from udvd_triton.inference import DEFAULT_BLUR_SIGMA, upscale

if TYPE_CHECKING:
    from PIL import Image

WEIGHTS_NAME = "model.safetensors"
INDEX_SUFFIX = ".index.json"
MAX_SHARD_BYTES = 16 * 2**20  # the largest file some transfer channels take; bigger tensor sets are sharded
CONFIG_NAME = "config.json"
CONFIG_METADATA_KEY = "udvd_config"
REGISTRY_ENV = "UDVD_REGISTRY"
REGISTRY_NAME = "registry.json"
REGISTRY_FORMAT_VERSION = 1
HF_PREFIX = "hf:"
_HF_REPO = re.compile(r"^[\w.-]+/[\w.-]+$")
# A branch, tag or commit: path-like names such as "refs/pr/1" are allowed, ".." and empty parts are not.
_HF_REVISION = re.compile(r"^[\w.-]+(/[\w.-]+)*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

M = TypeVar("M", bound="ZooMixin")


class CheckpointError(ValueError):
    """A checkpoint or registry entry is unusable: corrupted/truncated file, checksum or config mismatch, wrong
    tensors. A ``ValueError``, so command-line front ends report it as a user error."""


@dataclass(frozen=True)
class ModelEntry:
    """One registry entry; ``path`` is ``file`` resolved against the manifest's directory."""

    name: str
    file: str
    sha256: str
    scale: int
    config: dict[str, Any]
    training: str
    license: str
    path: Path
    hf_repo: str | None = None
    description: str = ""
    default: bool = False


# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------


def registry_path(registry: str | os.PathLike[str] | None = None) -> Path:
    """The manifest used: ``registry`` if given, else ``$UDVD_REGISTRY``, else the bundled ``registry.json``."""
    if registry is not None:
        return Path(registry)
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV])
    return Path(str(files("udvd_triton.weights").joinpath(REGISTRY_NAME)))


_REQUIRED = {"name": str, "file": str, "sha256": str, "scale": int, "config": dict, "training": str, "license": str}
_OPTIONAL = {"hf_repo": str, "description": str, "default": bool}


def load_registry(registry: str | os.PathLike[str] | None = None) -> dict[str, ModelEntry]:
    """Read and validate the manifest (see the module docstring); returns entries by name, in file order."""
    path = registry_path(registry)
    if not path.is_file():
        raise FileNotFoundError(f"model registry not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"model registry {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format_version") != REGISTRY_FORMAT_VERSION:
        raise ValueError(f"model registry {path}: expected an object with format_version {REGISTRY_FORMAT_VERSION}")
    if not isinstance(data.get("models"), list):
        raise ValueError(f"model registry {path}: 'models' must be a list")
    entries: dict[str, ModelEntry] = {}
    for i, raw in enumerate(data["models"]):
        where = f"model registry {path}, entry {i}"
        if not isinstance(raw, dict):
            raise ValueError(f"{where}: must be an object")
        unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
        if unknown:
            raise ValueError(f"{where}: unknown fields {unknown}")
        for key, typ in {**_REQUIRED, **_OPTIONAL}.items():
            if (key in _REQUIRED or key in raw) and not isinstance(raw.get(key), typ):
                raise ValueError(f"{where}: field {key!r} must be a {typ.__name__}, got {raw.get(key)!r}")
        name = raw["name"]
        if name in entries:
            raise ValueError(f"{where}: duplicate model name {name!r}")
        if not _SHA256.match(raw["sha256"]):
            raise ValueError(f"{where} ({name}): sha256 must be 64 lowercase hex digits")
        file = PurePosixPath(raw["file"])
        if file.is_absolute() or ".." in file.parts or "\\" in raw["file"] or not file.parts:
            raise ValueError(f"{where} ({name}): file {raw['file']!r} must be a relative path inside the registry's "
                             "folder (no '..', not absolute)")
        if "hf_repo" in raw:
            try:
                _split_hf_spec(raw["hf_repo"])
            except ValueError as e:
                raise ValueError(f"{where} ({name}): {e}") from None
        if raw["config"].get("scale", raw["scale"]) != raw["scale"]:
            config_scale = raw["config"]["scale"]
            raise ValueError(f"{where} ({name}): scale {raw['scale']} differs from config scale {config_scale}")
        if raw.get("default") and any(e.default and e.scale == raw["scale"] for e in entries.values()):
            raise ValueError(f"{where} ({name}): a second default model for x{raw['scale']}")
        entries[name] = ModelEntry(**raw, path=(path.parent / raw["file"]).resolve())
    return entries


def default_model(scale: int = 2, registry: str | os.PathLike[str] | None = None) -> str:
    """Name of the model used for ``scale`` when none is named: the registry's entry marked ``default`` for that
    scale, else its only model of that scale. ValueError naming the scale's models when there is no such one."""
    entries = [e for e in load_registry(registry).values() if e.scale == scale]
    marked = [e.name for e in entries if e.default]
    if marked:
        return marked[0]
    if len(entries) == 1:
        return entries[0].name
    names = ", ".join(e.name for e in entries) or "none"
    raise ValueError(f"the model registry ({registry_path(registry)}) has no default x{scale} model "
                     f"(x{scale} models: {names}); name one with --model")


def list_models(registry: str | os.PathLike[str] | None = None) -> list[str]:
    """Names of the registry's models, in manifest order (``model_info(name)`` gives an entry's details).

    The bundled registry lists only trained checkpoints; it is empty until some are published.
    """
    return list(load_registry(registry))


def model_info(name: str, registry: str | os.PathLike[str] | None = None) -> ModelEntry:
    """The registry entry called ``name``; ``ValueError`` naming the available models and the closest match."""
    entries = load_registry(registry)
    if name in entries:
        return entries[name]
    close = difflib.get_close_matches(name, list(entries), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    available = ", ".join(entries) if entries else "none (the registry is empty)"
    raise ValueError(f"unknown model {name!r}{hint} Available models: {available}. "
                     "A local directory, .safetensors file or hf:owner/repo also works.")


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint files
# --------------------------------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    model: torch.nn.Module,
    directory: str | os.PathLike[str],
    dtype: torch.dtype | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> Path:
    """Write the model's weights (config in every file's metadata) and ``config.json`` into ``directory``;
    returns the weights path (``model.safetensors``, or ``model.safetensors.index.json`` when the weights exceed
    ``max_shard_bytes`` and are sharded). ``dtype`` (e.g. ``torch.float16``) converts the floating-point parameters
    (buffers, such as the kernel-PCA basis, are kept as they are).
    ``model`` must have a ``config`` dict of its constructor arguments (``UDVD`` does). Every file is written
    atomically."""
    config = dict(model.config)  # type: ignore[arg-type]
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
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
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
        except json.JSONDecodeError:
            raise CheckpointError(f"checkpoint {path}: the config in its metadata is not valid JSON") from None
    return state, config


def _read_config_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object of UDVD arguments")
    return config


def _merge_configs(cls: type, where: str, configs: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """The one complete config (defaults filled in) that every available source agrees on; CheckpointError if
    there is none, one has keys ``cls`` does not take, or two differ."""
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    full: dict[str, dict[str, Any]] = {}
    for source, config in configs.items():
        if config is None:
            continue
        unknown = sorted(set(config) - set(params))
        if unknown:
            raise CheckpointError(
                f"{where}: the config from {source} has keys that {cls.__name__} does not take: {unknown}"
            )
        full[source] = {**defaults, **config}
    if not full:
        raise CheckpointError(f"{where}: no model config found (no {CONFIG_NAME} and none in the file's metadata)")
    (first_source, first), *rest = full.items()
    for source, config in rest:
        if config != first:
            diff = sorted(k for k in first if first[k] != config.get(k))
            raise CheckpointError(
                f"{where}: the config from {source} differs from the one from {first_source} in {diff}"
            )
    return first


def _split_hf_spec(spec: str) -> tuple[str, str | None]:
    """``owner/repo[@revision]`` -> (repo id, revision or None); ValueError for anything else (a revision such as
    ``../..`` would otherwise reach the cache's file paths)."""
    repo_id, at, revision = spec.partition("@")
    if not _HF_REPO.match(repo_id) or ".." in repo_id:
        raise ValueError(f"invalid Hugging Face repo {spec!r}: expected hf:owner/repo or hf:owner/repo@revision")
    if at and (not _HF_REVISION.match(revision) or ".." in revision):
        raise ValueError(f"invalid Hugging Face revision {revision!r} in {spec!r}: expected a branch, tag or commit "
                         "(letters, digits, '.', '_', '-', '/'; no '..')")
    return repo_id, revision or None


def _hf_download(spec: str, filename: str, required: bool) -> Path | None:
    """A file of ``owner/repo[@revision]`` through the Hugging Face cache (honours HF_HUB_OFFLINE, HF_HUB_CACHE)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, revision = _split_hf_spec(spec)
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision))
    except (EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError, HFValidationError) as e:
        if not required:
            return None
        raise FileNotFoundError(
            f"{filename} of Hugging Face repo {spec} is neither in the local cache nor downloadable "
            f"({type(e).__name__})"
        ) from None


@dataclass
class _Source:
    """Where a checkpoint's weights are and what its config/checksum should be, before anything is read."""

    where: str
    weights: Path
    configs: dict[str, dict[str, Any] | None]
    sha256: str | None = None


def _resolve(source: str | os.PathLike[str], registry: str | os.PathLike[str] | None) -> _Source:
    text = os.fspath(source)
    if isinstance(source, str) and text.startswith(HF_PREFIX):
        spec = text[len(HF_PREFIX) :]
        weights = _hf_download(spec, WEIGHTS_NAME, required=True)
        config_file = _hf_download(spec, CONFIG_NAME, required=False)
        assert weights is not None
        return _Source(text, weights, {CONFIG_NAME: _read_config_json(config_file) if config_file else None})
    path = Path(text).expanduser()
    if path.is_dir():
        weights = find_tensors(path, WEIGHTS_NAME.removesuffix(".safetensors"))
        if weights is None:
            raise FileNotFoundError(f"no {WEIGHTS_NAME} (or sharded {WEIGHTS_NAME}{INDEX_SUFFIX}) in checkpoint directory {path}")
        return _Source(str(path), weights, {str(path / CONFIG_NAME): _read_config_json(path / CONFIG_NAME)})
    if path.is_file():
        beside = path.with_name(CONFIG_NAME)
        return _Source(str(path), path, {str(beside): _read_config_json(beside)})
    if isinstance(source, os.PathLike) or path.suffix == ".safetensors" or os.sep in text or text.startswith("."):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    entry = model_info(text, registry)
    weights = entry.path
    if not weights.is_file():
        if entry.hf_repo is None:
            raise FileNotFoundError(f"registry model {entry.name!r}: weights file missing: {weights}")
        weights = _hf_download(entry.hf_repo, entry.file, required=True)  # type: ignore[assignment]
    return _Source(f"registry model {entry.name!r}", weights, {"the registry": entry.config}, entry.sha256)


def _check_state(where: str, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """CheckpointError naming every missing, unexpected, mis-shaped, non-float or non-finite tensor."""
    expected = model.state_dict()
    problems = []
    missing = sorted(expected.keys() - state.keys())
    extra = sorted(state.keys() - expected.keys())
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    if extra:
        problems.append(f"unexpected tensors: {', '.join(extra)}")
    shapes = [
        f"{k} {tuple(state[k].shape)} (model expects {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"wrong shapes: {'; '.join(shapes)}")
    not_float = [k for k, v in state.items() if not v.is_floating_point()]
    if not_float:
        problems.append(f"not floating point: {', '.join(sorted(not_float))}")
    not_finite = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if not_finite:
        problems.append(f"NaN or infinite values in: {', '.join(sorted(not_finite))}")
    if problems:
        config = dict(model.config)  # type: ignore[arg-type]
        raise CheckpointError(f"{where} does not match its config {config}: " + "; ".join(problems))


def _check_target(device: str | torch.device | None, dtype: torch.dtype | None) -> None:
    """ValueError, before anything is read, for a device this torch cannot use or a dtype that is not floating."""
    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"invalid device {device!r} (e.g. 'cpu', 'cuda', 'cuda:1')") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(f"device {str(device)!r} requested but CUDA is not available (torch {torch.__version__}, "
                             f"{build}); use device='cpu'")
        if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype (e.g. torch.float16), got {dtype!r}")


def load_pretrained(
    cls: type[M],
    source: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    scale: int | None = None,
    registry: str | os.PathLike[str] | None = None,
) -> M:
    """Implementation of ``UDVD.from_pretrained``; see there."""
    _check_target(device, dtype)
    src = _resolve(source, registry)
    state, metadata_config = read_checkpoint(src.weights, src.sha256)
    config = _merge_configs(cls, src.where, {**src.configs, f"the metadata of {src.weights}": metadata_config})
    if scale is not None and config["scale"] != scale:
        raise CheckpointError(f"{src.where} is a x{config['scale']} model, but x{scale} was asked for")
    try:
        with torch.device("meta"):  # shapes only: no memory, no init cost
            reference = cls(**config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{src.where}: invalid config {config}: {e}") from None
    _check_state(src.where, reference, state)
    model = cls(**config)
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval()


# --------------------------------------------------------------------------------------------------------------------
# The mixin UDVD inherits
# --------------------------------------------------------------------------------------------------------------------


class ZooMixin(
    PyTorchModelHubMixin,
    library_name="udvd-triton",
    license="mit",
    paper_url="https://arxiv.org/abs/2004.06965",
    pipeline_tag="image-to-image",
    tags=["super-resolution", "udvd"],
):
    """Adds ``from_pretrained``, ``save_pretrained`` (from ``PyTorchModelHubMixin``, also ``push_to_hub``) and
    ``upscale`` to ``UDVD``."""

    config: dict[str, Any]

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls: type[M],
        name_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        scale: int | None = None,
        registry: str | os.PathLike[str] | None = None,
    ) -> M:
        """Load a checkpoint into a new model, in eval mode, on ``device`` (CPU by default) in ``dtype`` (the
        parameters' default float32 if None).

        ``name_or_path``: a registry name (``list_models()``), a directory written by ``save_pretrained``, a
        ``.safetensors`` file (config from its metadata or a ``config.json`` beside it), or ``hf:owner/repo`` /
        ``hf:owner/repo@revision`` from the Hugging Face Hub (cached; works offline from the cache with
        ``HF_HUB_OFFLINE=1``). ``scale``: if given, a checkpoint of another scale is an error. ``registry``: another
        manifest than the bundled one (see ``registry_path``).

        Raises ValueError for an unknown name (listing the available ones), FileNotFoundError for a missing file,
        ``CheckpointError`` (a ValueError) for a corrupted or truncated file, a checksum mismatch, missing / extra /
        mis-shaped tensors, a config that does not fit the tensors, or the wrong scale. Nothing is built before the
        checkpoint is validated.
        """
        return load_pretrained(cls, name_or_path, device=device, dtype=dtype, scale=scale, registry=registry)

    def _save_pretrained(self, save_directory: Path) -> None:
        # Called by PyTorchModelHubMixin.save_pretrained, which then leaves our config.json in place.
        save_checkpoint(self, save_directory)  # type: ignore[arg-type]

    def upscale(
        self,
        img: Image.Image | np.ndarray | torch.Tensor,
        blur_sigma: float | np.ndarray | torch.Tensor = DEFAULT_BLUR_SIGMA,
        noise_level: float | np.ndarray | torch.Tensor | str = 0.0,
        tile: int | None = None,
        *,
        kernel: np.ndarray | torch.Tensor | None = None,
        code: np.ndarray | torch.Tensor | None = None,
        progress: bool | None = None,
    ) -> Image.Image | np.ndarray | torch.Tensor:
        """Super-resolve ``img``: same kind, mode and bit depth out. ``blur_sigma`` (HR pixels) and ``noise_level``
        (0..255, "auto", "auto-map") take numbers or maps (h, w); ``kernel=`` one 15x15 kernel or per-pixel kernels
        (h, w, 15, 15); memory stays bounded by tiling (``tile``). See ``udvd_triton.inference.upscale``."""
        model: Any = self
        return upscale(model, img, blur_sigma=blur_sigma, noise_level=noise_level, tile=tile, kernel=kernel,
                       code=code, progress=progress)
