"""The ``udvd`` command line: ``udvd upscale``, ``udvd models`` (and the training group's commands).

Command groups add their sub-commands with a ``register(subparsers)`` function (listed in ``COMMAND_GROUPS``);
each sub-command sets ``handler``, a function of the parsed arguments returning the exit code. Error policy:
a handler raises one of ``USER_ERRORS`` (ValueError, including ``zoo.CheckpointError``, FileNotFoundError,
FileExistsError, ``files.WriteError``, ...) for a user mistake or an output that cannot be written; ``main`` prints it as one line ``udvd: error: ...`` and returns 2,
like argparse does for a bad option. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from udvd_triton.files import WriteError
from udvd_triton.inference import DEFAULT_BLUR_SIGMA
from udvd_triton.training import cli as training_cli

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    WriteError,
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _noise_arg(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in 0..255 or 'auto', got {text!r}") from None


def _collect_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files as given and the images (by suffix, sorted) directly inside given folders."""
    paths: list[Path] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return paths


def _plan_outputs(inputs: list[Path], out_dir: Path, scale: int, overwrite: bool) -> list[Path]:
    """``OUT/<stem>_x<scale>.png`` per input; refuses collisions, inputs as outputs, and (unless ``overwrite``)
    existing files, before anything is written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output {out_dir} exists and is not a folder")
    outputs = [out_dir / f"{p.stem}_x{scale}.png" for p in inputs]
    resolved_inputs = {p.resolve() for p in inputs}
    seen: dict[Path, Path] = {}
    for src, dst in zip(inputs, outputs):
        if dst.resolve() in resolved_inputs:
            raise ValueError(f"refusing to overwrite input {dst}: choose another output folder")
        if dst in seen:
            raise ValueError(f"inputs {seen[dst]} and {src} would both be written to {dst}")
        seen[dst] = src
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not overwrite:
        more = f" and {len(existing) - 1} more" if len(existing) > 1 else ""
        raise FileExistsError(f"output exists: {existing[0]}{more} (use --overwrite to replace)")
    return outputs


def _open_image(path: Path, decode: bool = True):  # -> PIL.Image.Image
    """The image, upright (EXIF) in a mode ``upscale`` takes; ``decode=False`` only identifies the file."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if not decode:
                return img
            img = ImageOps.exif_transpose(img)
            img.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        has_alpha = "A" in img.getbands() or "transparency" in img.info
        img = img.convert("RGBA" if has_alpha else "RGB")
    return img


def _device(text: str | None, half: bool):  # -> tuple[torch.device, torch.dtype]
    import torch

    try:
        device = torch.device(text or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError:
        raise ValueError(f"invalid --device {text!r} (e.g. cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda given but CUDA is not available")
    if half and device.type != "cuda":
        raise ValueError("--half needs a CUDA device (float16 on the CPU is slow and inaccurate)")
    return device, torch.float16 if half else torch.float32


def cmd_upscale(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from udvd_triton.model import UDVD
    from udvd_triton.zoo import default_model

    inputs = _collect_inputs(args.inputs)
    for path in inputs:  # every input is an image before any work starts
        _open_image(path, decode=False)
    device, dtype = _device(args.device, args.half)
    name = args.model or default_model(args.scale or 2)
    model = UDVD.from_pretrained(name, device=device, dtype=dtype, scale=args.scale)
    out_dir = Path(args.output)
    outputs = _plan_outputs(inputs, out_dir, model.scale, args.overwrite)
    for src, dst in zip(tqdm(inputs, desc="upscaling", unit="img", disable=args.quiet or None), outputs):
        sr = model.upscale(_open_image(src), blur_sigma=args.sigma, noise_level=args.noise, tile=args.tile)
        out_dir.mkdir(parents=True, exist_ok=True)  # only once an argument mistake can no longer show up
        sr.save(dst)
    if not args.quiet:
        print(f"wrote {len(outputs)} image(s) to {out_dir}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from udvd_triton.zoo import load_registry, registry_path

    entries = load_registry()
    if not entries:
        print(f"no models in the registry ({registry_path()})")
        return 0
    rows = [("NAME", "SCALE", "DEFAULT", "ARCH", "LICENSE", "SOURCE", "TRAINING")]
    for e in entries.values():
        c = e.config
        arch = f"{c.get('variant', 'UDD')} {c.get('n_feats', 128)}ch x{c.get('n_blocks', 15)}"
        source = e.file if e.path.is_file() else f"hf:{e.hf_repo}" if e.hf_repo else f"{e.file} (missing)"
        rows.append((e.name, f"x{e.scale}", "yes" if e.default else "", arch, e.license, source, e.training))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``upscale`` and ``models``."""
    p = subparsers.add_parser(
        "upscale",
        help="super-resolve images",
        description="Super-resolve image files (or every image in given folders) into OUT as <stem>_x<scale>.png.",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="image files or folders of images")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created if missing)")
    p.add_argument("--model", default=None, help="registry name, checkpoint folder or .safetensors file, "
                   "or hf:owner/repo[@revision] (default: the registry's default model for --scale; see 'udvd models')")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), default=None,
                   help="upscaling factor: picks the default model, and a --model of another scale is an error "
                   "(default: the model's scale, 2 without --model)")
    p.add_argument("--sigma", type=float, default=DEFAULT_BLUR_SIGMA,
                   help=f"width (std, HR pixels) of the Gaussian blur the input went through ({DEFAULT_BLUR_SIGMA})")
    p.add_argument("--noise", type=_noise_arg, default=0.0, help="noise std on the 0..255 scale, or 'auto' (0)")
    p.add_argument("--tile", type=int, default=None, help="LR tile size for large images (default: none on CPU, "
                   "from free memory on CUDA)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default cuda if available)")
    p.add_argument("--half", action="store_true", help="float16 inference (CUDA)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(handler=cmd_upscale)
    p = subparsers.add_parser(
        "models", help="list the model registry",
        description="List the registry's models ($UDVD_REGISTRY or the bundled one); DEFAULT marks the model used "
        "for its scale when --model is not given."
    )
    p.set_defaults(handler=cmd_models)


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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``udvd`` command line; returns the exit code (0 ok, 2 user error, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or an argparse usage error (already printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        return args.handler(args)
    except USER_ERRORS as e:
        message = " ".join(str(e).split())
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
