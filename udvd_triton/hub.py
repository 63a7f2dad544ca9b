"""``UDVD``: the network with the model zoo — ``from_pretrained``, ``save_pretrained``, ``push_to_hub`` — and
``upscale``.

``UDVD`` is :class:`~udvd_triton.model.UDVDNet` plus Hugging Face's ``PyTorchModelHubMixin``; the network module
knows nothing of files, hubs or images. Sources ``from_pretrained`` takes: a registry name
(:mod:`udvd_triton.registry`), a folder written by ``save_pretrained``, a ``.safetensors`` file, or
``hf:owner/repo[@revision]`` through the Hugging Face cache. Loading validates everything (file readable, checksum,
config, tensor names / shapes / dtypes, scale) before a model is built and filled, so a failed load never leaves a
half-loaded model behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from huggingface_hub import PyTorchModelHubMixin

from udvd_triton.checkpoint import (
    CONFIG_NAME,
    INDEX_SUFFIX,
    WEIGHTS_NAME,
    CheckpointError,
    find_tensors,
    read_checkpoint,
    read_config_file,
    save_checkpoint,
)
from udvd_triton.devices import parse_device
from udvd_triton.files import sha256_file
from udvd_triton.inference import ImageLike, upscale
from udvd_triton.model import ModelConfig, UDVDNet
from udvd_triton.registry import model_info, split_hf_spec

HF_PREFIX = "hf:"
M = TypeVar("M", bound=UDVDNet)


@dataclass(frozen=True)
class HubOptions:
    """The Hugging Face Hub arguments of ``from_pretrained`` (as ``hf_hub_download`` takes them)."""

    revision: str | None = None
    cache_dir: str | os.PathLike[str] | None = None
    force_download: bool = False
    local_files_only: bool = False
    token: str | bool | None = None


def _hf_download(spec: str, filename: str, required: bool, hub: HubOptions) -> Path | None:
    """A file of ``owner/repo[@revision]`` through the Hugging Face cache (honours HF_HUB_OFFLINE, HF_HUB_CACHE)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import (
        EntryNotFoundError,
        HFValidationError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, revision = split_hf_spec(spec)
    if revision is not None and hub.revision is not None and revision != hub.revision:
        raise ValueError(f"two revisions for {spec}: {revision!r} in the name and revision={hub.revision!r}")
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision or hub.revision, cache_dir=hub.cache_dir,
                                    force_download=hub.force_download, local_files_only=hub.local_files_only,
                                    token=hub.token))
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


def _resolve(source: str | os.PathLike[str], registry: str | os.PathLike[str] | None, hub: HubOptions) -> _Source:
    text = os.fspath(source)
    if isinstance(source, str) and text.startswith(HF_PREFIX):
        spec = text[len(HF_PREFIX) :]
        weights = _hf_download(spec, WEIGHTS_NAME, True, hub)
        config_file = _hf_download(spec, CONFIG_NAME, False, hub)
        assert weights is not None
        return _Source(text, weights, {CONFIG_NAME: read_config_file(config_file) if config_file else None})
    path = Path(text).expanduser()
    if path.is_dir():
        weights = find_tensors(path, WEIGHTS_NAME.removesuffix(".safetensors"))
        if weights is None:
            raise FileNotFoundError(f"no {WEIGHTS_NAME} (or sharded {WEIGHTS_NAME}{INDEX_SUFFIX}) in checkpoint "
                                    f"directory {path}")
        return _Source(str(path), weights, {str(path / CONFIG_NAME): read_config_file(path / CONFIG_NAME)})
    if path.is_file():
        beside = path.with_name(CONFIG_NAME)
        return _Source(str(path), path, {str(beside): read_config_file(beside)})
    if isinstance(source, os.PathLike) or path.suffix == ".safetensors" or os.sep in text or text.startswith("."):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    entry = model_info(text, registry)
    weights = entry.path
    if not weights.is_file():
        if entry.hf_repo is None:
            raise FileNotFoundError(f"registry model {entry.name!r}: weights file missing: {weights}")
        weights = _hf_download(entry.hf_repo, entry.file, True, hub)  # type: ignore[assignment]
    return _Source(f"registry model {entry.name!r}", weights, {"the registry": entry.config.to_dict()}, entry.sha256)


def weights_sha256(source: str | os.PathLike[str], registry: str | os.PathLike[str] | None = None) -> str:
    """The sha256 of the weights file ``source`` names (a registry entry's recorded checksum, else the file's)."""
    src = _resolve(source, registry, HubOptions())
    return src.sha256 or sha256_file(src.weights)


def _merge_configs(where: str, configs: dict[str, dict[str, Any] | None]) -> ModelConfig:
    """The one config that every available source agrees on (keys of earlier versions read under their new
    names); CheckpointError if there is none, one is invalid, or two differ."""
    full: dict[str, ModelConfig] = {}
    for source, config in configs.items():
        if config is None:
            continue
        try:
            full[source] = ModelConfig.from_dict(config)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: invalid config from {source}: {e}") from None
    if not full:
        raise CheckpointError(f"{where}: no model config found (no {CONFIG_NAME} and none in the file's metadata)")
    (first_source, first), *rest = full.items()
    for source, config in rest:
        if config != first:
            a, b = first.to_dict(), config.to_dict()
            raise CheckpointError(f"{where}: the config from {source} differs from the one from {first_source} in "
                                  f"{sorted(k for k in a if a[k] != b[k])}")
    return first


def _check_state(where: str, model: UDVDNet, state: dict[str, torch.Tensor]) -> None:
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
        raise CheckpointError(f"{where} does not match its config {model.config.to_dict()}: " + "; ".join(problems))


def load_pretrained(
    cls: type[M],
    source: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    scale: int | None = None,
    registry: str | os.PathLike[str] | None = None,
    hub: HubOptions = HubOptions(),
) -> M:
    """A ``cls`` (``UDVD`` or the bare ``UDVDNet``) filled from ``source``; see ``UDVD.from_pretrained``."""
    target = parse_device(device) if device is not None else None  # refused before anything is read
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype (e.g. torch.float16), got {dtype!r}")
    src = _resolve(source, registry, hub)
    state, metadata_config = read_checkpoint(src.weights, src.sha256)
    config = _merge_configs(src.where, {**src.configs, f"the metadata of {src.weights}": metadata_config})
    if scale is not None and config.scale != scale:
        raise CheckpointError(f"{src.where} is a x{config.scale} model, but x{scale} was asked for")
    with torch.device("meta"):  # shapes only: no memory, no init cost
        reference = cls(config)
    _check_state(src.where, reference, state)
    model = cls(config)
    model.load_state_dict(state, strict=True)
    return model.to(device=target, dtype=dtype).eval()


class UDVD(
    UDVDNet,
    PyTorchModelHubMixin,
    library_name="udvd-triton",
    license="mit",
    paper_url="https://arxiv.org/abs/2004.06965",
    pipeline_tag="image-to-image",
    tags=["super-resolution", "udvd"],
):
    """The UDVD model: the network (:class:`~udvd_triton.model.UDVDNet`, same constructor and forward) with
    ``from_pretrained``, ``save_pretrained``, ``push_to_hub`` and ``upscale``."""

    # The mixin keeps the constructor arguments it saw as its own copy of the config; here it reads and writes the
    # network's one config instead (None before __init__ has run).
    @property
    def _hub_mixin_config(self) -> ModelConfig | None:
        return self.__dict__.get("config")

    @_hub_mixin_config.setter
    def _hub_mixin_config(self, value: Any) -> None:
        pass

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls: type[M],
        name_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        *,
        scale: int | None = None,
        registry: str | os.PathLike[str] | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> M:
        """Load a checkpoint into a new model, in eval mode, on ``device`` (CPU by default) in ``dtype`` (the
        parameters' default float32 if None).

        ``name_or_path``: a registry name (``list_models()``), a directory written by ``save_pretrained``, a
        ``.safetensors`` file (config from its metadata or a ``config.json`` beside it), or ``hf:owner/repo`` /
        ``hf:owner/repo@revision`` from the Hugging Face Hub (cached; works offline from the cache with
        ``HF_HUB_OFFLINE=1``). ``scale``: if given, a checkpoint of another scale is an error. ``registry``: another
        manifest than the bundled one (see ``registry.registry_path``). ``revision``, ``cache_dir``,
        ``force_download``, ``local_files_only``, ``token``: as ``huggingface_hub.hf_hub_download`` takes them, for
        Hub sources.

        Raises ValueError for an unknown name (listing the available ones), FileNotFoundError for a missing file,
        ``CheckpointError`` (a ValueError) for a corrupted or truncated file, a checksum mismatch, missing / extra /
        mis-shaped tensors, a config that does not fit the tensors, or the wrong scale. Nothing is built before the
        checkpoint is validated.
        """
        return cls._from_pretrained(  # type: ignore[attr-defined]
            model_id=name_or_path,
            revision=revision, cache_dir=cache_dir, force_download=force_download,
            local_files_only=local_files_only, token=token, device=device, dtype=dtype, scale=scale,
            registry=registry,
        )  # fmt: skip

    @classmethod
    def _from_pretrained(  # type: ignore[override]
        cls: type[M],
        *,
        model_id: str | os.PathLike[str],
        revision: str | None,
        cache_dir: str | os.PathLike[str] | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        scale: int | None = None,
        registry: str | os.PathLike[str] | None = None,
        **unused: Any,
    ) -> M:
        # The mixin's extension point; its own from_pretrained would first probe the Hub for config.json, which a
        # registry name or an offline machine must not do, so ours calls this directly.
        hub = HubOptions(revision, cache_dir, force_download, local_files_only, token)
        return load_pretrained(cls, model_id, device=device, dtype=dtype, scale=scale, registry=registry, hub=hub)

    def _save_pretrained(self, save_directory: Path) -> None:
        # Called by PyTorchModelHubMixin.save_pretrained, which then leaves our config.json in place.
        save_checkpoint(self, save_directory)

    def upscale(self, img: ImageLike, *args: Any, **kwargs: Any) -> ImageLike:
        """Super-resolve ``img``: same kind, mode and bit depth out. ``model.upscale(img, ...)`` is
        ``udvd_triton.inference.upscale(model, img, ...)``: see there for the arguments (blur and noise as numbers,
        maps, "auto" or "auto-map"; ``tile``, ``kernel=``, ``code=``, ``progress=``)."""
        return upscale(self, img, *args, **kwargs)
