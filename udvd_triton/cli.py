"""The ``udvd`` command line: ``udvd upscale``, ``udvd models`` (and the training group's commands).

Command groups add their sub-commands with a ``register(subparsers)`` function (listed in ``COMMAND_GROUPS``);
each sub-command sets ``handler``, a function of the parsed arguments returning the exit code. Error policy:
a handler raises one of ``USER_ERRORS`` (ValueError, including ``checkpoint.CheckpointError``, FileNotFoundError,
FileExistsError, ``files.WriteError``, ...) for a user mistake or an output that cannot be written; ``main`` prints it as one line ``udvd: error: ...`` and returns 2,
like argparse does for a bad option. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from udvd_triton import files, imageio
from udvd_triton.blind import AUTO, estimate_degradation
from udvd_triton.degradation import SCALES
from udvd_triton.devices import parse_device
from udvd_triton.files import WriteError
from udvd_triton.inference import CPU_TILE_BUDGET, MIN_TILE_RADII
from udvd_triton.training import cli as training_cli

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    WriteError,
    MemoryError,  # upscale ran out of memory even with its smallest tile
    torch.cuda.OutOfMemoryError,  # e.g. loading a model onto a full GPU
)
IMAGE_SUFFIXES = imageio.READ_SUFFIXES
SIGMA_MAP_WHITE = 4.0  # blur width (HR pixels) of a white pixel in a --sigma-map image; black = no blur
DEGRADATION_KEY = "udvd-degradation"  # output metadata (PNG tEXt / TIFF ImageDescription): the blur and noise used
log = logging.getLogger("udvd_triton.cli")


def _degradation_arg(text: str) -> float | str:
    """--sigma / --noise: a number, or 'auto' / 'auto-map' (estimated from each image)."""
    if text in AUTO:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, 'auto' or 'auto-map', got {text!r}") from None


def _collect_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files as given and the images (by suffix, sorted) directly inside given folders; hidden files in folders (an
    interrupted writer's temporary files among them) are never inputs."""
    paths: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
            if not found:
                raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            paths += found
        elif path.is_file():
            paths.append(path)
        elif files.exists(path):
            raise ValueError(f"input {path} is not a regular file (a FIFO, device or broken link?)")
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return paths


def _output_is_file(output: Path, inputs: Sequence[str], count: int) -> bool:
    """The rule for OUT: a file when it ends in an image suffix and is not an existing folder, which needs exactly one
    input image given as a file; anything else is a folder."""
    if output.is_dir() or output.suffix.lower() not in IMAGE_SUFFIXES:
        return False
    if count != 1 or Path(inputs[0]).is_dir():
        raise ValueError(f"-o {output} names an image file, but {count} input images are given: give a folder")
    return True


def _plan_outputs(
    infos: list[imageio.ImageInfo], output: Path, as_file: bool, scale: int, overwrite: bool
) -> list[Path]:
    """Output paths, checked before any work: OUT itself (``as_file``) or ``OUT/<stem>_x<scale>.png`` (``.tif`` for
    TIFF inputs) per input. Refuses formats that cannot hold an input's samples, collisions, inputs as outputs,
    existing files without ``overwrite``, and, even with it, links and files that we did not write."""
    if as_file:
        outputs = [output]
    else:
        if files.exists(output) and not output.is_dir():
            raise NotADirectoryError(f"output {output} exists and is not a folder")
        outputs = [output / f"{i.path.stem}_x{scale}{'.tif' if i.reader == 'tiff' else '.png'}" for i in infos]
    resolved_inputs = {i.path.resolve() for i in infos}
    seen: dict[Path, Path] = {}
    for info, dst in zip(infos, outputs):
        imageio.check_writable(dst, info.dtype, info.channels)
        if dst.resolve() in resolved_inputs:
            raise ValueError(f"refusing to overwrite input {dst}: choose another output")
        if dst in seen:
            raise ValueError(f"inputs {seen[dst]} and {info.path} would both be written to {dst}")
        seen[dst] = info.path
    existing = [p for p in outputs if files.exists(p)]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise FileExistsError(f"output exists: {existing[0]}{more} (use --overwrite to replace)")
    for path in existing:
        if path.is_symlink():
            raise ValueError(f"refusing to replace {path}: it is a symbolic link (remove it or choose another output)")
        if not _replaceable(path):
            raise ValueError(f"refusing to replace {path}, even with --overwrite: it was not written by udvd-triton "
                             f"(no '{imageio.MARKER}' mark); move it away or choose another output")
    files.check_writable_folder(output.parent if as_file else output)
    return outputs


def _replaceable(path: Path) -> bool:
    """What ``--overwrite`` may replace: a regular file (no link) holding an image we wrote."""
    return not path.is_symlink() and imageio.is_ours(path)


def _load_map(path: str, name: str, white: float):  # -> np.ndarray (h, w) float64
    """A --sigma-map / --noise-map: a .npy (h, w) of values in the map's unit, or a grayscale image whose full scale
    (255, or 65535 for 16 bits) is ``white`` (float images: values as they are)."""
    file = Path(path)
    if not file.is_file():
        if files.exists(file):
            raise ValueError(f"{name} {file} is not a regular file")
        raise FileNotFoundError(f"{name} not found: {file}")
    if file.suffix.lower() == ".npy":
        try:
            values = np.load(file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:  # empty (EOFError), text or pickle (ValueError), truncated
            raise ValueError(f"cannot read {name} {file}: not a .npy array file ({type(e).__name__})") from None
        if values.ndim != 2 or values.dtype.kind not in "uif":
            raise ValueError(f"{name} {file} must hold a 2-D array of numbers, got {values.dtype} {values.shape}")
        return values.astype(np.float64)
    values, info = imageio.read_image(file)
    if info.channels != 1:
        raise ValueError(f"{name} {file} must be a grayscale image, got {info.channels} channels")
    if values.dtype.kind == "u":
        return values * (white / np.iinfo(values.dtype).max)
    return values.astype(np.float64)


def _device(text: str | None, half: bool) -> tuple[torch.device, torch.dtype]:
    device = parse_device(text, "--device")
    if half and device.type != "cuda":
        raise ValueError("--half needs a CUDA device (float16 on the CPU is slow and inaccurate)")
    return device, torch.float16 if half else torch.float32


def _degradation_args(args: argparse.Namespace) -> tuple[object, object]:
    """(blur_sigma, noise_level) for ``upscale`` from --sigma / --sigma-map and --noise / --noise-map; not given:
    "auto"."""
    if args.sigma is not None and args.sigma_map:
        raise ValueError("give --sigma or --sigma-map, not both")
    if args.noise is not None and args.noise_map:
        raise ValueError("give --noise or --noise-map, not both")
    sigma = _load_map(args.sigma_map, "--sigma-map", SIGMA_MAP_WHITE) if args.sigma_map else args.sigma
    noise = _load_map(args.noise_map, "--noise-map", 255.0) if args.noise_map else args.noise
    return ("auto" if sigma is None else sigma), ("auto" if noise is None else noise)


def _resolve_blind(image: np.ndarray, scale: int, blur_sigma: object, noise_level: object
                   ) -> tuple[object, object, dict[str, str], str | None]:
    """Estimate what --sigma / --noise leave to "auto" / "auto-map" (one estimate for both) and return the values
    to pass to ``upscale``, the output's metadata text (what was used, so that the result can be reproduced with
    explicit flags) and the estimate's one-line summary (None when nothing was estimated)."""
    used: dict[str, object] = {}
    line = None
    if isinstance(blur_sigma, str) or isinstance(noise_level, str):
        maps = any(isinstance(v, str) and v == "auto-map" for v in (blur_sigma, noise_level))
        est = estimate_degradation(image, scale, maps=maps)
        line = est.summary()
        if isinstance(blur_sigma, str):
            blur_sigma = est.blur_map if blur_sigma == "auto-map" else est.blur_sigma
        if isinstance(noise_level, str):
            noise_level = est.noise_map if noise_level == "auto-map" else est.noise_level
        if est.note:
            used["note"] = est.note
    for key, value in (("blur_sigma", blur_sigma), ("noise_level", noise_level)):
        used[key] = round(float(value), 3) if np.ndim(value) == 0 else f"map, mean {float(np.mean(value)):.3f}"
    return blur_sigma, noise_level, {DEGRADATION_KEY: json.dumps(used)}, line


def cmd_upscale(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from udvd_triton.hub import UDVD
    from udvd_triton.registry import default_model

    inputs = _collect_inputs(args.inputs)
    infos = [imageio.probe(path) for path in inputs]  # every input is an image we can read before any work starts
    output = Path(args.output)
    as_file = _output_is_file(output, args.inputs, len(inputs))
    blur_sigma, noise_level = _degradation_args(args)
    device, dtype = _device(args.device, args.half)
    name = args.model or default_model(args.scale or 2)
    model = UDVD.from_pretrained(name, device=device, dtype=dtype, scale=args.scale)
    outputs = _plan_outputs(infos, output, as_file, model.scale, args.overwrite)
    interactive = sys.stderr.isatty() and not args.quiet
    bar = tqdm(total=len(inputs), desc="images", unit="img", disable=not interactive or len(inputs) == 1)
    for i, (src, dst) in enumerate(zip(inputs, outputs), 1):
        start = time.monotonic()
        image, info = imageio.read_image(src)
        sigma, noise, text, estimated = _resolve_blind(image, model.scale, blur_sigma, noise_level)
        sr = model.upscale(image, blur_sigma=sigma, noise_level=noise, tile=args.tile,
                           progress=False if args.quiet else None)  # None: a bar when the image takes several batches
        del image
        dst.parent.mkdir(parents=True, exist_ok=True)  # only once an argument mistake can no longer show up
        # Decided again at the rename, by the same rules: nothing that appeared meanwhile is replaced unless it is
        # an image we wrote and --overwrite was given.
        # The colour profile and the print size are kept (same inches: the resolution grows with the scale).
        dpi = (info.dpi[0] * model.scale, info.dpi[1] * model.scale) if info.dpi else None
        imageio.write_image(dst, sr, _replaceable if args.overwrite else False, icc=info.icc, dpi=dpi, text=text)
        if estimated and not args.quiet:  # once the image is written: a failed one gets its error line alone
            log.info("%s: estimated %s", src, estimated)
        bar.update(1)
        if not interactive:
            log.info("[%d/%d] %s -> %s (%.1f s)", i, len(inputs), src, dst, time.monotonic() - start)
    bar.close()
    if not args.quiet:
        print(f"wrote {outputs[0] if as_file else f'{len(outputs)} image(s) to {output}'}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from udvd_triton.registry import BLIND_ESTIMATOR, BUNDLED_REGISTRY, estimator_info, load_registry, registry_path

    entries = load_registry()
    if not entries:
        print(f"no models in the registry ({registry_path()})")
        return 0
    rows = [("NAME", "SCALE", "DEFAULT", "ARCH", "LICENSE", "SOURCE", "TRAINING")]
    for e in entries.values():
        c = e.config
        arch = f"{c.variant} {c.channels}ch x{c.blocks}"
        source = e.file if e.path.is_file() else f"hf:{e.hf_repo}" if e.hf_repo else f"{e.file} (missing)"
        rows.append((e.name, f"x{e.scale}", "yes" if e.default else "", arch, e.license, source, e.training))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    est = estimator_info(BLIND_ESTIMATOR, BUNDLED_REGISTRY)
    print(f"\nblur and noise \"auto\" (the default) are estimated by {est.name} ({est.file}, {est.license}): "
          f"{est.training}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from udvd_triton.export import export_onnx
    from udvd_triton.hub import UDVD, weights_sha256
    from udvd_triton.registry import default_model

    name = args.model or default_model(args.scale or 2)
    model = UDVD.from_pretrained(name, scale=args.scale)
    path = export_onnx(model, args.output, form=args.form, half=args.half, opset=args.opset, name=str(name),
                       sha256=weights_sha256(name), overwrite=args.overwrite)
    if not args.quiet:
        print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, x{model.scale}, form {args.form}, opset "
              f"{args.opset}{', float16' if args.half else ''})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``upscale``, ``models`` and ``export``."""
    p = subparsers.add_parser(
        "upscale",
        help="super-resolve images",
        description="Super-resolve image files, or every image in given folders, with a UDVD model. Each output "
        "keeps its input's channels (gray, RGB, alpha) and bit depth (8, 16 bit, float) and is marked as written by "
        "udvd-triton. OUT is a file when exactly one input file is given and OUT ends in an image suffix (.png, "
        ".tif, .tiff) and is not an existing folder; otherwise OUT is a folder (created if missing) that receives "
        "<stem>_x<scale>.png (.tif for TIFF inputs). The degradation the inputs went through (blur, noise) may be "
        "given as numbers or as per-pixel maps.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders of images "
                   f"({', '.join(IMAGE_SUFFIXES)}; animated images: the first frame)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output file (one input) or folder")
    p.add_argument("--model", default=None, help="registry name, checkpoint folder or .safetensors file, "
                   "or hf:owner/repo[@revision] (default: the registry's default model for --scale; see 'udvd models')")
    p.add_argument("--scale", type=int, choices=SCALES, default=None,
                   help="upscaling factor: picks the default model, and a --model of another scale is an error "
                   "(default: the model's scale, 2 without --model)")
    p.add_argument("--sigma", type=_degradation_arg, default=None, metavar="S",
                   help="width (std, HR pixels) of the Gaussian blur the inputs went through, 0 = none; 'auto' (one "
                   "estimate per image, printed and stored in the output's metadata) or 'auto-map' (a local "
                   "estimate per region) (default: auto)")
    p.add_argument("--sigma-map", metavar="FILE", help="per-pixel blur widths instead of --sigma: a .npy (h, w) of "
                   f"widths in HR pixels, or a grayscale image, black = no blur, white = {SIGMA_MAP_WHITE:g} HR pixels "
                   f"(8-bit: width = value / {255 / SIGMA_MAP_WHITE:g}); resized bilinearly to each input "
                   "(default: none)")
    p.add_argument("--noise", type=_degradation_arg, default=None, metavar="N",
                   help="std of the inputs' Gaussian noise on the 0..255 scale; 'auto' (one estimate per image, joint "
                   "with the blur's) or 'auto-map' (a local estimate per region) (default: auto)")
    p.add_argument("--noise-map", metavar="FILE", help="per-pixel noise levels instead of --noise: a .npy (h, w) "
                   "on the 0..255 scale, or a grayscale image whose value is the level (8-bit: the value; 16-bit: "
                   "value / 257); resized bilinearly to each input (default: none)")
    p.add_argument("--tile", type=int, default=None, metavar="T",
                   help="LR tile side in pixels for bounded memory; raised to at least "
                   f"{MIN_TILE_RADII} receptive radii (default: automatic, from free GPU memory or available RAM, "
                   f"at most {CPU_TILE_BUDGET >> 20} MiB of activations per batch on a CPU)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--half", action="store_true", help="float16 inference, CUDA only (default: float32)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs, if udvd-triton wrote them "
                   "(default: refuse to replace anything)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, notes or summary (default: shown)")
    p.set_defaults(handler=cmd_upscale)
    p = subparsers.add_parser(
        "models", help="list the model registry",
        description="List the registry's models ($UDVD_REGISTRY or the bundled one); DEFAULT marks the model used "
        "for its scale when --model is not given. Then the degradation estimator behind --sigma / --noise auto."
    )
    p.set_defaults(handler=cmd_models)
    p = subparsers.add_parser(
        "export", help="export a model to ONNX",
        description="Export a model to ONNX with dynamic N, H, W: the dynamic filters as standard ONNX ops, metadata "
        "for runtimes (scale, source and its sha256, kernel-PCA basis, input ranges, receptive radius for tiling). "
        "Form 'maps' takes (image, kernel_code, noise_map) as the model's forward does; 'sigma' takes (image, "
        "blur_sigma, noise_level) and builds the maps inside.",
    )
    p.add_argument("--model", default=None, help="registry name, checkpoint folder or .safetensors file, or "
                   "hf:owner/repo[@revision] (default: the registry's default model for --scale)")
    p.add_argument("--scale", type=int, choices=SCALES, default=None, help="picks the default model (default 2)")
    p.add_argument("--format", choices=("onnx",), default="onnx", help="output format (default: onnx)")
    p.add_argument("--form", choices=("maps", "sigma"), default="maps", help="graph inputs (default: maps)")
    p.add_argument("--half", action="store_true", help="float16 weights, inputs and output, for GPU runtimes "
                   "(default: float32)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset, 18..23 (default 18)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export of ours (default: refuse)")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary line (default: shown)")
    p.set_defaults(handler=cmd_export)


COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction], None]] = [register, training_cli.register]


def build_parser() -> argparse.ArgumentParser:
    from udvd_triton import __version__

    parser = argparse.ArgumentParser(prog="udvd", description="UDVD super-resolution: inference, model zoo, training.")
    parser.add_argument("--version", action="version", version=f"udvd-triton {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register_group in COMMAND_GROUPS:
        register_group(subparsers)
    return parser


def run_command(argv: Sequence[str]) -> int:
    """Parse ``argv`` and run the sub-command, letting its exceptions through (for scripts and tests)."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


class _TqdmHandler(logging.Handler):
    """Log lines on stderr through ``tqdm.write``, so that they do not break a progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def _configure_logging(quiet: bool) -> None:
    """The package's notes (warnings) and, unless ``quiet``, progress lines (info) on stderr as ``udvd: ...``."""
    logger = logging.getLogger("udvd_triton")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("udvd: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if quiet else logging.INFO)


def _message(e: BaseException) -> str:
    """One line for a user error; an OSError raised by the system reads "what: file", without "[Errno N]"."""
    if isinstance(e, OSError) and e.strerror and not isinstance(e, WriteError):
        text = f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    else:
        text = str(e)
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``udvd`` command line; returns the exit code (0 ok, 2 user error, 130 interrupted, 143 terminated).

    Python warnings (the package's notes, a library's) become ``udvd: note:`` log lines, silenced by ``-q``;
    SIGTERM unwinds like Ctrl-C, so temporary files are removed and run-folder locks released."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or an argparse usage error (already printed)
        return e.code if isinstance(e.code, int) else 2
    quiet = getattr(args, "quiet", False)
    _configure_logging(quiet=quiet)
    previous = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    if previous is not None:
        files.exit_on_sigterm()
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            warnings.showwarning = lambda message, *rest, **kw: log.warning("note: %s", message)
            return args.handler(args)
    except USER_ERRORS as e:
        print(f"{parser.prog}: error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # SIGTERM (exit_on_sigterm): files were cleaned up while unwinding
        if e.code != 128 + signal.SIGTERM:
            raise
        print(f"{parser.prog}: terminated", file=sys.stderr)
        return int(e.code)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
