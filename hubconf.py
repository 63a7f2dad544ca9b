"""torch.hub entry point: ``torch.hub.load(repo_dir, "udvd", name="udvd-x2", source="local")``."""

from __future__ import annotations

from typing import Any

dependencies = ["torch", "numpy", "safetensors", "huggingface_hub"]


def udvd(name: str = "udvd-x2", pretrained: bool = True, device: Any = None, dtype: Any = None, **config: Any):
    """A UDVD model.

    pretrained=True: ``UDVD.from_pretrained(name, device, dtype)`` (registry name, checkpoint folder or
    .safetensors file, or hf:owner/repo); a ``scale`` keyword makes a checkpoint of another scale an error.
    pretrained=False: a freshly initialised ``UDVD(**config)`` (e.g. scale=3, n_feats=64), ``name`` unused.
    """
    from udvd_triton import UDVD

    if not pretrained:
        return UDVD(**config).to(device=device, dtype=dtype)
    scale = config.pop("scale", None)
    if config:
        raise ValueError(f"a pretrained model takes its config from the checkpoint; unexpected {sorted(config)}")
    return UDVD.from_pretrained(name, device=device, dtype=dtype, scale=scale)
