"""The training command group of the ``udvd`` CLI: ``prepare-data``, ``train``, ``finetune``, ``eval``.

``register(subparsers)`` adds the four sub-commands; each sets ``handler`` (parsed args -> exit code). User mistakes
raise ValueError / FileNotFoundError / FileExistsError, which ``udvd``'s ``main`` prints as one line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from udvd_triton.training.trainer import TrainConfig, train


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


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        data=args.data,
        out=args.out,
        scale=args.scale,
        steps=args.steps,
        batch=args.batch,
        patch=args.patch,
        channels=args.channels,
        blocks=args.blocks,
        variant=args.variant,
        lr=args.lr,
        lr_milestones=tuple(args.lr_milestones),
        lr_gamma=args.lr_gamma,
        grad_clip=args.grad_clip,
        ema=args.ema,
        loss_weights=tuple(args.loss_weights) if args.loss_weights else None,
        anisotropic=args.anisotropic,
        clean_fraction=args.clean_fraction,
        noise_max=args.noise_max,
        quantize=not args.no_quantize,
        augment=not args.no_augment,
        seed=args.seed,
        device=args.device,
        amp=not args.no_amp,
        val_every=args.val_every,
        val_sigma=args.val_sigma,
        val_noise=args.val_noise,
        ckpt_every=args.ckpt_every,
        log_every=args.log_every,
        max_minutes=args.max_minutes,
        finetune_from=getattr(args, "source", None),
    )


def _train(args: argparse.Namespace) -> int:
    train(_train_config(args), resume=args.resume, progress=not args.quiet)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from udvd_triton.model import UDVD
    from udvd_triton.training.evaluate import DEFAULT_NOISES, default_images, default_sigmas, evaluate, folder_images, markdown_table

    model = UDVD.from_pretrained(args.model, device=args.device)
    images = folder_images(args.images) if args.images else default_images()
    sigmas = args.sigma or default_sigmas(model.scale)
    noises = args.noise if args.noise is not None else DEFAULT_NOISES
    rows = evaluate(model, images, sigmas, noises, seed=args.seed, progress=not args.quiet)
    print(markdown_table(rows, model.scale))
    if args.json:
        result: dict[str, Any] = {
            "model": args.model,
            "scale": model.scale,
            "config": model.config,
            "images": [name for name, _ in images],
            "seed": args.seed,
            "border": model.scale,
            "metric": "PSNR (dB) / SSIM on Y (BT.601), border = scale",
            "results": rows,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


def _add_train_options(p: argparse.ArgumentParser, finetune: bool) -> None:
    p.add_argument("--data", required=True, help="folder written by `udvd prepare-data`")
    p.add_argument("--out", required=True, help="run folder (checkpoint.pt, log.csv, final/)")
    p.add_argument(
        "--scale", type=int, choices=(2, 3, 4), default=None if finetune else 2,
        help="upscaling factor" + (" (default: the source model's)" if finetune else " (default 2)"),
    )
    p.add_argument("--steps", type=int, default=100_000, help="total optimiser steps (default 100000)")
    p.add_argument("--batch", type=int, default=16, help="crops per step and process (default 16)")
    p.add_argument("--patch", type=int, default=48, help="LR patch side; HR crops are scale*patch (default 48)")
    model_default = "the source model's" if finetune else None
    p.add_argument("--channels", type=int, help=f"body width (default {model_default or 128})")
    p.add_argument("--blocks", type=int, help=f"residual blocks (default {model_default or 15})")
    p.add_argument("--variant", choices=("baseline", "D", "U", "UD", "UDD"), help=f"ablation variant (default {model_default or 'UDD'})")
    p.add_argument("--lr", type=float, default=1e-4 if finetune else 2e-4, help="Adam learning rate (default %(default)g)")
    p.add_argument("--lr-milestones", type=float, nargs="+", default=[0.5, 0.75], metavar="F",
                   help="fractions of --steps where the LR is multiplied by --lr-gamma (default 0.5 0.75)")
    p.add_argument("--lr-gamma", type=float, default=0.5, help="LR decay factor (default 0.5)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm, 0 = off (default 1)")
    p.add_argument("--ema", type=float, default=0.0, help="EMA decay of the weights, 0 = off (default 0; e.g. 0.999)")
    p.add_argument("--loss-weights", type=float, nargs="+", metavar="W", help="multi-stage L1 weights (default all 1)")
    p.add_argument("--anisotropic", type=float, default=0.0, help="fraction of anisotropic blur kernels (default 0)")
    p.add_argument("--clean-fraction", type=float, default=0.0, help="fraction of noise-free samples (default 0)")
    p.add_argument("--noise-max", type=float, default=75.0, help="max AWGN sigma, 0..255 scale (default 75)")
    p.add_argument("--no-quantize", action="store_true", help="keep the LR in float instead of rounding it to 8 bits")
    p.add_argument("--no-augment", action="store_true", help="no random flips / 90-degree rotations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA")
    p.add_argument("--val-every", type=int, default=1000, help="validate every N steps, 0 = never (default 1000)")
    p.add_argument("--val-sigma", type=float, help="validation blur width (default: middle of the scale's range)")
    p.add_argument("--val-noise", type=float, default=15.0, help="validation noise level (default 15)")
    p.add_argument("--ckpt-every", type=int, default=1000, help="checkpoint every N steps (default 1000)")
    p.add_argument("--log-every", type=int, default=50, help="CSV log row every N steps (default 50)")
    p.add_argument("--max-minutes", type=float, help="stop cleanly (checkpoint + final/) after this wall time")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


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

    p = subparsers.add_parser("train", help="train a UDVD on prepared data")
    _add_train_options(p, finetune=False)
    p.set_defaults(handler=_train)

    p = subparsers.add_parser("finetune", help="fine-tune a model (any scale) on prepared data")
    p.add_argument("--from", dest="source", required=True, help="registry name, checkpoint folder or file")
    _add_train_options(p, finetune=True)
    p.set_defaults(handler=_train)

    p = subparsers.add_parser("eval", help="PSNR/SSIM over a blur x noise grid, next to bicubic")
    p.add_argument("--model", required=True, help="registry name, checkpoint folder or file")
    p.add_argument("--images", help="folder of HR images (default: scikit-image's sample photos)")
    p.add_argument("--sigma", type=float, nargs="+", help="blur widths (default: low/middle/high of the training range)")
    p.add_argument("--noise", type=float, nargs="+", help="noise levels, 0..255 (default 0 15 50)")
    p.add_argument("--seed", type=int, default=0, help="seed of the added noise")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")
    p.add_argument("--json", help="also write the results to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_eval)
