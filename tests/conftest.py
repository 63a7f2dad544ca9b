"""Test set-up and shared helpers. Without a CUDA device the Triton kernels run under the interpreter.

TRITON_INTERPRET must be set before any ``@triton.jit`` function is defined, i.e. before
``udvd_triton.kernels`` is imported, so it is set here, at collection time. The helpers (a tiny model, registry
entries, a Hugging Face cache layout) are imported by the test modules: ``from conftest import tiny_model``.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from udvd_triton import UDVD  # noqa: E402 (after TRITON_INTERPRET; it loads no Triton kernel)

torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


ROOT = Path(__file__).resolve().parents[1]
TINY = dict(scale=2, channels=8, blocks=1)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def tiny_model(seed: int = 0, **config) -> UDVD:
    """An 8-channel, 1-block x2 model (overrides in ``config``) with weights from ``seed``."""
    torch.manual_seed(seed)
    return UDVD(**{**TINY, **config})


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k].to(sa[k])), k


def write_registry(path: Path, entries: list[dict]) -> Path:
    path.write_text(json.dumps({"format_version": 1, "models": entries}))
    return path


def registry_entry(name: str, weights: Path, **overrides) -> dict:
    entry = {
        "name": name,
        "file": weights.name,
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "scale": 2,
        "config": {**TINY},
        "training": "test: 0 steps",
        "license": "MIT",
    }
    return {**entry, **overrides}


def make_hf_cache(cache: Path, repo_id: str, checkpoint_dir: Path, commit: str = COMMIT) -> None:
    """The layout huggingface_hub keeps: models--owner--name/{refs/main, snapshots/<commit>/<files>}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(checkpoint_dir, repo / "snapshots" / commit)


# `udvd train` options of a tiny, fast run on the CPU
TRAIN_TINY = ["--channels", "8", "--blocks", "1", "--batch", "4", "--patch", "12", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="session")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared folder: crops of 48px from three smooth random photos, one 96px validation image."""
    import numpy as np
    from PIL import Image

    from udvd_triton.training.data import prepare_data

    root = tmp_path_factory.mktemp("train")
    (root / "photos").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        small = (rng.random((14, 14, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((120, 120), Image.BICUBIC).save(root / "photos" / f"p{i}.png")
    prepare_data(root / "photos", root / "prepared", crop=48, val_count=1, val_crop=96, progress=False)
    return root / "prepared"
