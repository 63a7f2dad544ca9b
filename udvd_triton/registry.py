"""The model registry: a JSON manifest of published checkpoints, by default ``registry.json`` in the installed
``udvd_triton.weights`` package; the ``UDVD_REGISTRY`` environment variable or a ``registry=`` argument points
elsewhere. Format::

    {"format_version": 1,
     "models": [{"name": "udvd-x2", "file": "udvd-x2.safetensors", "sha256": "<64 hex>", "scale": 2,
                 "config": {...ModelConfig fields; n_feats / n_blocks as before 0.2 also read...}, "training": "one-line summary", "license": "MIT",
                 "hf_repo": "owner/repo[@revision]" (optional), "description": "..." (optional),
                 "default": true (optional: the model used for its scale when none is named)}],
     "estimators": [{"name": "degradation-estimator", "file": ..., "sha256": ..., "config": {...EstimatorConfig...},
                     "training": ..., "license": ...}]}     (optional: what "auto" blur / noise use, udvd_triton.blind)

``file`` is a relative path inside the manifest's directory (no ``..``, not absolute). A file that is not there is
fetched from ``hf_repo`` (through the Hugging Face cache) when the entry names one; either way its sha256 is checked
before the file is read (:mod:`udvd_triton.hub`).
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any

from udvd_triton.estimator import EstimatorConfig
from udvd_triton.model import ModelConfig

REGISTRY_ENV = "UDVD_REGISTRY"
REGISTRY_NAME = "registry.json"
REGISTRY_FORMAT_VERSION = 1
_HF_REPO = re.compile(r"^[\w.-]+/[\w.-]+$")
# A branch, tag or commit: path-like names such as "refs/pr/1" are allowed, ".." and empty parts are not.
_HF_REVISION = re.compile(r"^[\w.-]+(/[\w.-]+)*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ModelEntry:
    """One registry entry; ``path`` is ``file`` resolved against the manifest's directory."""

    name: str
    file: str
    sha256: str
    scale: int
    config: ModelConfig
    training: str
    license: str
    path: Path
    hf_repo: str | None = None
    description: str = ""
    default: bool = False


BUNDLED_REGISTRY = Path(str(files("udvd_triton.weights").joinpath(REGISTRY_NAME)))
BLIND_ESTIMATOR = "degradation-estimator"  # the bundled registry's estimator that "auto" blur and noise use


def registry_path(registry: str | os.PathLike[str] | None = None) -> Path:
    """The manifest used: ``registry`` if given, else ``$UDVD_REGISTRY``, else the bundled ``registry.json``."""
    if registry is not None:
        return Path(registry)
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV])
    return BUNDLED_REGISTRY


_REQUIRED = {"name": str, "file": str, "sha256": str, "scale": int, "config": dict, "training": str, "license": str}
_OPTIONAL = {"hf_repo": str, "description": str, "default": bool}
_ESTIMATOR_FIELDS = {"name": str, "file": str, "sha256": str, "config": dict, "training": str, "license": str}


def _read_manifest(registry: str | os.PathLike[str] | None) -> tuple[Path, dict[str, Any]]:
    path = registry_path(registry)
    if not path.is_file():
        raise FileNotFoundError(f"model registry not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"model registry {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("format_version") != REGISTRY_FORMAT_VERSION:
        raise ValueError(f"model registry {path}: expected an object with format_version {REGISTRY_FORMAT_VERSION}")
    for key in ("models", "estimators"):
        if not isinstance(data.get(key, []), list) or (key == "models" and key not in data):
            raise ValueError(f"model registry {path}: '{key}' must be a list")
    return path, data


def _checked(raw: object, where: str, required: dict[str, type], optional: dict[str, type]) -> dict[str, Any]:
    """An entry's fields, checked: known names of the right types (a JSON true is no int), a sha256 of 64 hex
    digits, a file inside the registry's folder, a valid Hugging Face repo."""
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: must be an object")
    unknown = sorted(set(raw) - set(required) - set(optional))
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown}")
    for key, typ in {**required, **optional}.items():
        value = raw.get(key)
        wrong = not isinstance(value, typ) or (typ is int and isinstance(value, bool))  # JSON true is no scale
        if (key in required or key in raw) and wrong:
            raise ValueError(f"{where}: field {key!r} must be a {typ.__name__}, got {raw.get(key)!r}")
    name = raw["name"]
    if not _SHA256.match(raw["sha256"]):
        raise ValueError(f"{where} ({name}): sha256 must be 64 lowercase hex digits")
    file = PurePosixPath(raw["file"])
    if file.is_absolute() or ".." in file.parts or "\\" in raw["file"] or not file.parts:
        raise ValueError(f"{where} ({name}): file {raw['file']!r} must be a relative path inside the registry's "
                         "folder (no '..', not absolute)")
    if "hf_repo" in raw:
        try:
            split_hf_spec(raw["hf_repo"])
        except ValueError as e:
            raise ValueError(f"{where} ({name}): {e}") from None
    return raw


def load_registry(registry: str | os.PathLike[str] | None = None) -> dict[str, ModelEntry]:
    """Read and validate the manifest's models (see the module docstring); returns entries by name, in file order."""
    path, data = _read_manifest(registry)
    entries: dict[str, ModelEntry] = {}
    for i, raw in enumerate(data["models"]):
        where = f"model registry {path}, entry {i}"
        raw = _checked(raw, where, _REQUIRED, _OPTIONAL)
        name = raw["name"]
        if name in entries:
            raise ValueError(f"{where}: duplicate model name {name!r}")
        if raw["config"].get("scale", raw["scale"]) != raw["scale"]:
            config_scale = raw["config"]["scale"]
            raise ValueError(f"{where} ({name}): scale {raw['scale']} differs from config scale {config_scale}")
        try:
            config = ModelConfig.from_dict({"scale": raw["scale"], **raw["config"]})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where} ({name}): invalid config: {e}") from None
        if raw.get("default") and any(e.default and e.scale == raw["scale"] for e in entries.values()):
            raise ValueError(f"{where} ({name}): a second default model for x{raw['scale']}")
        entries[name] = ModelEntry(**{**raw, "config": config}, path=(path.parent / raw["file"]).resolve())
    return entries


@dataclass(frozen=True)
class EstimatorEntry:
    """A degradation estimator of the registry (``"estimators"``); ``path`` is ``file`` resolved against the
    manifest's directory."""

    name: str
    file: str
    sha256: str
    config: EstimatorConfig
    training: str
    license: str
    path: Path
    description: str = ""


def estimator_info(name: str, registry: str | os.PathLike[str] | None = None) -> EstimatorEntry:
    """The registry's degradation estimator called ``name``; ValueError when there is none."""
    path, data = _read_manifest(registry)
    for i, raw in enumerate(data.get("estimators", [])):
        raw = _checked(raw, f"model registry {path}, estimator {i}", _ESTIMATOR_FIELDS, {"description": str})
        if raw["name"] == name:
            try:
                config = EstimatorConfig.from_dict(raw["config"])
            except (TypeError, ValueError) as e:
                raise ValueError(f"model registry {path}: estimator {name!r}: invalid config: {e}") from None
            return EstimatorEntry(**{**raw, "config": config}, path=(path.parent / raw["file"]).resolve())
    raise ValueError(f"model registry {path} has no degradation estimator {name!r}: give the blur and noise "
                     "(--sigma / --noise), or use a registry that lists one")


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
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    available = ", ".join(entries) if entries else "none (the registry is empty)"
    raise ValueError(f"unknown model {name!r}{hint}. Available models: {available}. "
                     "A local directory, .safetensors file or hf:owner/repo also works.")


def split_hf_spec(spec: str) -> tuple[str, str | None]:
    """``owner/repo[@revision]`` -> (repo id, revision or None); ValueError for anything else (a revision such as
    ``../..`` would otherwise reach the cache's file paths)."""
    repo_id, at, revision = spec.partition("@")
    if not _HF_REPO.match(repo_id) or ".." in repo_id:
        raise ValueError(f"invalid Hugging Face repo {spec!r}: expected hf:owner/repo or hf:owner/repo@revision")
    if at and (not _HF_REVISION.match(revision) or ".." in revision):
        raise ValueError(f"invalid Hugging Face revision {revision!r} in {spec!r}: expected a branch, tag or commit "
                         "(letters, digits, '.', '_', '-', '/'; no '..')")
    return repo_id, revision or None
