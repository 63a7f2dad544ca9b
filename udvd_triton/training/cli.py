"""The training command group of the ``udvd`` CLI: ``prepare-data``, ``train``, ``finetune``, ``eval``.

``register(subparsers)`` adds the four sub-commands; each sets ``handler`` (parsed args -> exit code). User mistakes
raise ValueError / FileNotFoundError / FileExistsError, which ``udvd``'s ``main`` prints as one line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from udvd_triton import settings
from udvd_triton.training.config import RESUME_CHANGEABLE, TrainConfig


class _Renamed(argparse.Action):
    """``prepare-data --patch``: renamed ``--crop`` (it is the HR crop side, unlike ``train --patch``)."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        parser.error("--patch was renamed --crop (the side of the stored HR crops, in pixels); "
                     "`udvd train --patch` is the LR training patch")


def _prepare_data(args: argparse.Namespace) -> int:
    from udvd_triton.training.data import prepare_data

    manifest = prepare_data(
        args.src,
        args.out,
        crop=args.crop,
        stride=args.stride,
        max_side=args.max_side,
        jpeg_scale=args.jpeg_scale,
        val_count=args.val,
        val_crop=args.val_crop,
        shard_crops=args.shard_crops,
        seed=args.seed,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    n_train = sum(s["split"] == "train" for s in manifest["sources"])
    print(
        f"{args.out}: {manifest['crops']} crops of {args.crop}px from {n_train} images in {len(manifest['shards'])} "
        f"shards, {len(manifest['val'])} validation images, {len(manifest['skipped'])} files skipped"
    )
    return 0


FINETUNE_DEFAULTS = {"lr": 1e-4}  # a trained model needs smaller steps than a random one
_NOT_SETTINGS = ("command", "handler", "resume", "quiet", "json")


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the user typed: the train options have no argparse defaults (``argparse.SUPPRESS``), so only
    given flags are in ``args`` and a default can never pass for a choice on resume."""
    given = {k: v for k, v in vars(args).items() if k not in _NOT_SETTINGS}
    if "loss_weights" in given:
        given["loss_weights"] = tuple(given["loss_weights"])
    return given


def _train(args: argparse.Namespace) -> int:
    from udvd_triton.training.trainer import resume, train  # the training stack loads only for training commands

    given = _given(args)
    if args.resume:
        resume(args.out, given, progress=not args.quiet)
        return 0
    missing = [f"--{name}" for name in ("data",) if name not in given]
    if args.command == "finetune" and "finetune_from" not in given:
        missing.append("--from")
    if missing:
        raise ValueError(f"a new run needs {' and '.join(missing)} (only --resume takes them from the run folder)")
    defaults = FINETUNE_DEFAULTS if args.command == "finetune" else {}
    train(TrainConfig(**{**defaults, **given}), progress=not args.quiet)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from udvd_triton.evaluate import (
        DEFAULT_NOISES,
        default_images,
        default_sigmas,
        evaluate,
        folder_images,
        markdown_table,
        model_upscaler,
    )
    from udvd_triton.files import check_writable_folder, exists, write_json
    from udvd_triton.hub import UDVD

    if args.json:  # known before any compute: an unwritable folder, or a file that is not ours to replace
        target = Path(args.json)
        check_writable_folder(target.parent)
        if exists(target):
            if not args.overwrite:
                raise FileExistsError(f"--json {target} exists (use --overwrite to replace it)")
            try:
                ours = {"model", "results", "metric"} <= json.loads(target.read_text()).keys()
            except (OSError, UnicodeDecodeError, ValueError, AttributeError, RecursionError):
                ours = False
            if not ours:
                raise FileExistsError(f"--json {target} exists and is not a `udvd eval` result: not replacing it")
    model = UDVD.from_pretrained(args.model, device=args.device)
    images = folder_images(args.images) if args.images else default_images()
    sigmas = args.sigma or default_sigmas(model.scale)
    noises = args.noise if args.noise is not None else DEFAULT_NOISES
    rows = evaluate(model_upscaler(model, args.blind), model.scale, images, sigmas, noises, seed=args.seed, progress=not args.quiet)
    print(markdown_table(rows, model.scale))
    if args.json:
        result: dict[str, Any] = {
            "model": args.model,
            "scale": model.scale,
            "config": model.config.to_dict(),
            "images": [name for name, _ in images],
            "seed": args.seed,
            "blind": args.blind,
            "border": model.scale,
            "metric": "PSNR (dB) / SSIM on Y (BT.601), border = scale",
            "results": rows,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)
    return 0


def _add_train_options(p: argparse.ArgumentParser, finetune: bool) -> None:
    """Every ``TrainConfig`` setting as an option (generated from the fields' documentation), ``--resume`` and
    ``--quiet``. Fine-tuning shows its own defaults; ``--from`` belongs to ``finetune`` alone."""
    names = [f.name for f, _ in settings.fields(TrainConfig) if finetune or f.name != "finetune_from"]
    texts = {"finetune_from": "none (required for a new run)"} if finetune else {}
    settings.add_arguments(p, TrainConfig, names, FINETUNE_DEFAULTS if finetune else None, texts, required=("out",))
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint with "
                   "its own settings; " + ", ".join(settings.flag(TrainConfig, n) for n in RESUME_CHANGEABLE)
                   + " may change (steps re-plans the schedule), any other differing flag is refused (default: a new "
                   "run)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: shown)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``prepare-data``, ``train``, ``finetune`` and ``eval`` to the ``udvd`` sub-command parsers."""
    p = subparsers.add_parser(
        "prepare-data",
        help="cut a folder of HR photos into training shards",
        description="Cut the photos under SRC (recursively) into square HR crops stored as memory-mapped uint8 "
        "shards in OUT, with a manifest and whole held-out validation images. OUT must lie outside SRC; an existing "
        "OUT is replaced only with --overwrite and only if it holds a previous prepare-data output and nothing else.",
    )
    p.add_argument("src", help="folder of HR images (recursive, any PIL-readable format)")
    p.add_argument("out", help="output folder (created; outside SRC)")
    p.add_argument("--crop", type=int, default=192, help="side of the stored HR crops in pixels (default 192); "
                   "`udvd train --patch P` later cuts scale*P sub-crops from them")
    p.add_argument("--patch", action=_Renamed, help=argparse.SUPPRESS)
    p.add_argument("--stride", type=int, help="crop grid step in pixels (default: --crop, no overlap)")
    p.add_argument("--max-side", type=int, help="first downscale images whose longer side exceeds this many pixels "
                   "(default: no limit)")
    p.add_argument("--jpeg-scale", type=float, default=1.0,
                   help="extra downscale factor in (0, 1] for JPEG sources, against compression artefacts (default 1)")
    p.add_argument("--val", type=int, help="number of whole images held out for validation (default: a tenth)")
    p.add_argument("--val-crop", type=int, default=480,
                   help="side in pixels of the validation centre crops, 0 = whole image (default 480)")
    p.add_argument("--shard-crops", type=int, default=1024, help="crops per shard file (default 1024)")
    p.add_argument("--seed", type=int, default=0, help="seed that picks the validation images (default 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace OUT if it holds a previous prepare-data output (and nothing else)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_prepare_data)

    p = subparsers.add_parser(
        "train", help="train a UDVD on prepared data",
        description="Train a UDVD from scratch on data written by `udvd prepare-data`, with degradations synthesised "
        "per sample on the training device. Defaults are the paper model's recipe (README, Training defaults).",
    )
    _add_train_options(p, finetune=False)
    p.set_defaults(handler=_train)

    p = subparsers.add_parser(
        "finetune", help="fine-tune a model (any scale) on prepared data",
        description="Fine-tune a trained model on prepared data, also to another scale: every tensor whose name and "
        "shape fit is copied from the source, the rest is initialised afresh (listed in RUN/finetune.json).",
    )
    _add_train_options(p, finetune=True)
    p.set_defaults(handler=_train)

    p = subparsers.add_parser(
        "eval", help="PSNR/SSIM over a blur x noise grid, next to bicubic",
        description="Score a model over a grid of Gaussian blur widths x noise levels on HR images, next to bicubic "
        "upscaling of the same degraded input: mean PSNR (dB) / SSIM on Y, border = scale.",
    )
    p.add_argument("--model", required=True, help="registry name, checkpoint folder or .safetensors file (required)")
    p.add_argument("--images", metavar="DIR",
                   help="folder of HR images (default: scikit-image's astronaut, chelsea, coffee, rocket)")
    p.add_argument("--sigma", type=float, nargs="+",
                   help="blur widths in HR pixels (default: low, middle and high end of the scale's training range)")
    p.add_argument("--noise", type=float, nargs="+", help="noise levels, 0..255 scale (default 0 15 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the added noise (default 0)")
    p.add_argument("--blind", action="store_true", help="the model is told nothing: blur and noise are estimated "
                   "from each degraded input, as 'udvd upscale' does by default (default: told the true values)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")
    p.add_argument("--json", metavar="FILE", help="also write the results to this JSON file (default: none)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json result (default: refuse)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: shown)")
    p.set_defaults(handler=_eval)
