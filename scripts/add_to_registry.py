#!/usr/bin/env python
"""Add a trained model to the bundled registry: copy its weights into weights/ and write its manifest entry.

    python scripts/add_to_registry.py runs/x2/final udvd-x2 --training "..." --license MIT [--description ...] \
        [--default] [--dtype float16]
    python scripts/add_to_registry.py runs/estimator degradation-estimator --estimator --training "..." --license MIT

The checkpoint (a ``save_pretrained`` folder, sharded or not, or a file) is loaded with ``UDVD.from_pretrained``
first, so only a valid, complete checkpoint gets in. Its weights are written as one file
``weights/<name>.safetensors`` (config in the metadata) in float32 or, with ``--dtype float16``, half the size: a
registry entry is one file of at most 16 MiB (the paper model is 18.4 MiB in float32, 9.2 MiB in float16). The
entry (file, sha256, scale, config, training summary, license) replaces any entry of that name in
``weights/registry.json``. ``--default`` makes it the model of its scale used when none is named (the previous
default of that scale loses the mark). ``--estimator``: the folder holds a degradation estimator
(``scripts/train_estimator.py``), entered in the manifest's ``estimators`` list. Both files are written atomically
(temporary name + rename).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from udvd_triton import UDVD
from udvd_triton.checkpoint import MAX_SHARD_BYTES, WEIGHTS_NAME, read_checkpoint, save_checkpoint
from udvd_triton.estimator import DegradationEstimator, EstimatorConfig
from udvd_triton.files import atomic_output, sha256_file, write_text

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="a save_pretrained folder (e.g. RUN_DIR/final) or .safetensors file")
    parser.add_argument("name", help="registry name, e.g. udvd-x2")
    parser.add_argument("--training", required=True, help="one-line training summary")
    parser.add_argument("--license", required=True)
    parser.add_argument("--description", default="")
    parser.add_argument("--default", action="store_true", help="the default model of its scale")
    parser.add_argument("--estimator", action="store_true", help="a degradation estimator, not a model")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored dtype (default float32)")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS,
                        help="folder of registry.json and the weight files (default: the repository's weights/)")
    args = parser.parse_args()

    if args.estimator:
        state, config = read_checkpoint(args.checkpoint / WEIGHTS_NAME)
        model = DegradationEstimator(EstimatorConfig.from_dict(config or {}))
        model.load_state_dict(state)
    else:
        model = UDVD.from_pretrained(args.checkpoint)
    target = args.weights_dir / f"{args.name}.safetensors"
    with tempfile.TemporaryDirectory() as folder:
        written = save_checkpoint(model, folder, dtype=getattr(torch, args.dtype))
        if written.name != WEIGHTS_NAME:
            sys.exit(f"add_to_registry: the {args.dtype} weights exceed one {MAX_SHARD_BYTES >> 20} MiB file; "
                     "use --dtype float16")
        with atomic_output(target) as tmp:
            shutil.copyfile(written, tmp)
    entry = {
        "name": args.name,
        "file": target.name,
        "sha256": sha256_file(target),
        **({} if args.estimator else {"scale": model.config.scale}),
        "config": model.config.to_dict(),
        "training": args.training,
        "license": args.license,
    }
    if args.description:
        entry["description"] = args.description
    manifest_path = args.weights_dir / "registry.json"
    manifest = json.loads(manifest_path.read_text())
    if args.estimator:
        others = [m for m in manifest.get("estimators", []) if m["name"] != args.name]
        manifest["estimators"] = others + [entry]
        write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
        print(f"{args.name}: {target} ({target.stat().st_size / 1e6:.2f} MB, sha256 {entry['sha256']})")
        return
    models = [m for m in manifest["models"] if m["name"] != args.name]
    if args.default:
        entry["default"] = True
        for m in models:
            if m["scale"] == entry["scale"]:
                m.pop("default", None)
    manifest["models"] = models + [entry]
    write_text(manifest_path, json.dumps(manifest, indent=2) + "\n")
    print(f"{args.name}: {target} ({target.stat().st_size / 1e6:.2f} MB, sha256 {entry['sha256']})")


if __name__ == "__main__":
    main()
