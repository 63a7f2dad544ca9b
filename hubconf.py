"""torch.hub entry point: ``torch.hub.load(repo_dir, "udvd", source="local")`` (the registry's default x2 model), or
``name="udvd-x2-small"``, ``scale=3``, ... ."""

from __future__ import annotations

from typing import Any

dependencies = ["torch", "numpy", "safetensors", "huggingface_hub"]


def udvd(name: str | None = None, pretrained: bool = True, device: Any = None, dtype: Any = None, **config: Any):
    """A UDVD model.

    pretrained=True: ``UDVD.from_pretrained(name, device, dtype)`` (registry name, checkpoint folder or
    .safetensors file, or hf:owner/repo); ``name=None`` takes the registry's default model for ``scale`` (2 if not
    given); a ``scale`` keyword makes a checkpoint of another scale an error.
    pretrained=False: a freshly initialised ``UDVD(**config)`` (e.g. scale=3, channels=64), ``name`` unused.
    """
    from udvd_triton import UDVD
    from udvd_triton.registry import default_model

    if not pretrained:
        return UDVD(**config).to(device=device, dtype=dtype)
    scale = config.pop("scale", None)
    if config:
        raise ValueError(f"a pretrained model takes its config from the checkpoint; unexpected {sorted(config)}")
    return UDVD.from_pretrained(name or default_model(scale or 2), device=device, dtype=dtype, scale=scale)
