"""Image files <-> numpy arrays of their true sample type: the one conversion path of the CLI, ``prepare-data``
and anything else that reads or writes image files.

Reading gives (H, W) or (H, W, C) arrays, C = 2 (gray + alpha), 3 (RGB) or 4 (RGBA), of the file's own sample type:
uint8, uint16 (16-bit PNG / TIFF) or float (float TIFF, values as stored). EXIF / TIFF orientation is applied.
PIL decodes 16-bit colour PNGs to 8 bits and cannot open float colour TIFFs, so 16-bit PNGs are read with ``pypng``
and TIFFs with ``tifffile``; every other format (JPEG, WebP, BMP, GIF, 8-bit PNG) with PIL. Palette, bilevel and
CMYK images become RGB(A) / gray uint8. A file with several frames (animated GIF / PNG, multi-page TIFF) gives
its first frame, with a logged warning.

Writing: PNG (uint8 or uint16, 1-4 channels, streamed row block by row block with adaptive filters) or TIFF
(uint8, uint16 or float, zlib), always through ``files.atomic_output`` (temporary name + rename), and always marked
as ours (PNG ``tEXt`` / TIFF Software tag = ``MARKER``), so that ``--overwrite`` can refuse to replace a file
someone else wrote (:func:`is_ours`).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from udvd_triton import files

log = logging.getLogger(__name__)

MARKER = "udvd-triton"  # value of the PNG tEXt "Software" key / TIFF Software tag in every image we write
READ_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
WRITE_SUFFIXES = (".png", ".tif", ".tiff")
_TIFF_SUFFIXES = (".tif", ".tiff")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (gray, gray+alpha, RGB, RGBA)
_PNG_CHANNELS = {t: c for c, t in _PNG_COLOR_TYPES.items()}
_BOMB_HINT = "a possible decompression bomb; raise PIL.Image.MAX_IMAGE_PIXELS to allow it"
_PNG_ROWS_PER_BLOCK = 64  # rows filtered and compressed at a time: memory independent of the image size
# PIL mode -> (numpy dtype, channels) for modes kept as they are; other modes are converted (see _pil_array).
PIL_MODES = {
    "L": (np.uint8, 1), "LA": (np.uint8, 2), "RGB": (np.uint8, 3), "RGBA": (np.uint8, 4),
    "I;16": (np.uint16, 1), "I;16L": (np.uint16, 1), "I;16B": (np.uint16, 1), "F": (np.float32, 1),
}
# EXIF orientation -> the numpy transform that shows the image upright (as PIL.ImageOps.exif_transpose).
_ORIENTATIONS = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


@dataclass(frozen=True)
class ImageInfo:
    """What a file holds, from its header: ``size`` (width, height), ``dtype`` of the decoded samples, ``channels``
    (1..4) and ``frames``; ``reader`` is "pil", "png16" or "tiff"; ``icc``: its embedded colour profile (ICC bytes)
    and ``dpi``: its resolution (dots per inch, x and y), when it has them."""

    path: Path
    size: tuple[int, int]
    dtype: np.dtype
    channels: int
    frames: int
    reader: str
    icc: bytes | None = None
    dpi: tuple[float, float] | None = None


def _pil_layout(img: Image.Image) -> tuple[np.dtype, int]:
    """(dtype, channels) of the array ``_pil_array`` makes of ``img``."""
    if img.mode in PIL_MODES:
        dtype, channels = PIL_MODES[img.mode]
        return np.dtype(dtype), channels
    if img.mode.startswith(("I", "F")):
        raise ValueError(f"unsupported sample type (PIL mode {img.mode})")
    bands = img.getbands()
    alpha = "A" in bands or "a" in bands or "transparency" in img.info
    gray = bands[0] in ("1", "L")
    return np.dtype(np.uint8), (1 if gray else 3) + alpha


def _check_pixels(path: Path, size: tuple[int, int]) -> None:
    """PIL's decompression-bomb limit (2 x ``Image.MAX_IMAGE_PIXELS``), for every reader."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and size[0] * size[1] > 2 * limit:
        raise ValueError(
            f"image {path} is {size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, more than the "
            f"{2 * limit:,} PIL accepts ({_BOMB_HINT})"
        )


def _png_header(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) from a PNG's IHDR chunk."""
    with open(path, "rb") as f:
        head = f.read(26)
    return (head[24], head[25]) if len(head) == 26 and head.startswith(_PNG_SIGNATURE) else (0, 0)


def probe(path: str | os.PathLike[str]) -> ImageInfo:
    """Read the header of an image file (no pixel data). Raises ValueError naming the file when it is not an image
    we can read or is larger than PIL's decompression-bomb limit; FileNotFoundError when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input not found: {path}")
    info = _probe_tiff(path) if path.suffix.lower() in _TIFF_SUFFIXES else None
    if info is None:
        try:
            with warnings.catch_warnings(), Image.open(path) as img:
                # a bomb warning is ours to give: _check_pixels refuses what PIL only warns about
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                frames = getattr(img, "n_frames", 1)
                depth, color_type = _png_header(path) if img.format == "PNG" else (0, 0)
                metadata = dict(icc=img.info.get("icc_profile") or None, dpi=_dpi(img.info.get("dpi")))
                if depth == 16 and (color_type != 0 or "transparency" in img.info):
                    # PIL would cut colour to 8 bits; pypng's asDirect gives the colour type's channels, plus
                    # alpha for a tRNS chunk. (16-bit gray without tRNS: PIL's mode I / I;16 is exact and faster.)
                    channels = _PNG_CHANNELS[color_type] + ("transparency" in img.info)
                    info = ImageInfo(path, img.size, np.dtype(np.uint16), channels, frames, "png16", **metadata)
                elif depth == 16:
                    info = ImageInfo(path, img.size, np.dtype(np.uint16), 1, frames, "pil", **metadata)
                else:
                    info = ImageInfo(path, img.size, *_pil_layout(img), frames, "pil", **metadata)
        except Image.DecompressionBombError as e:
            raise ValueError(f"image {path} is too large: {e} ({_BOMB_HINT})") from None
        except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from None
    _check_pixels(path, info.size)
    return info


def _probe_tiff(path: Path) -> ImageInfo | None:
    """TIFF header through tifffile; None when tifffile cannot describe it (then PIL tries)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            shape = dict(zip(page.axes, page.shape))
            channels = shape.get("S", 1)
            supported = page.photometric in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB)
            if not supported or channels > 4 or page.dtype.kind not in "uf" or set(page.axes) - set("YXS"):
                return None
            if page.dtype.kind == "u" and page.dtype.itemsize > 2:
                return None
            icc = page.tags.valueof(34675)  # InterColorProfile
            return ImageInfo(path, (shape["X"], shape["Y"]), page.dtype, channels, len(tif.pages), "tiff",
                             icc=bytes(icc) if icc else None, dpi=_tiff_dpi(page))
    except Exception:  # not a TIFF tifffile understands: PIL gets its turn (and reports the error)
        return None


def _dpi(value: object) -> tuple[float, float] | None:
    """A resolution (x, y) in dots per inch if it is one (positive, finite), else None."""
    try:
        x, y = (float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return (x, y) if 0 < x < 1e6 and 0 < y < 1e6 else None


def _tiff_dpi(page: object) -> tuple[float, float] | None:
    """A TIFF page's XResolution / YResolution in dots per inch (ResolutionUnit 2: inch, 3: cm)."""
    tags = page.tags  # type: ignore[attr-defined]
    x, y, unit = tags.valueof(282), tags.valueof(283), tags.valueof(296)
    if not x or not y or int(unit or 2) not in (2, 3):
        return None
    per_inch = 2.54 if int(unit or 2) == 3 else 1.0
    return _dpi(((x[0] / x[1] if isinstance(x, tuple) else x) * per_inch,
                 (y[0] / y[1] if isinstance(y, tuple) else y) * per_inch))


def _orient(arr: np.ndarray, orientation: int | None) -> np.ndarray:
    transform = _ORIENTATIONS.get(orientation or 1)
    return np.ascontiguousarray(transform(arr)) if transform else arr


def _pil_array(img: Image.Image) -> np.ndarray:
    """PIL image -> array; modes without a numpy form of their own become L / LA / RGB / RGBA uint8. Mode I from a
    16-bit gray PNG (Pillow < 11) becomes uint16."""
    if img.mode == "I" and img.format == "PNG":
        return np.asarray(img).astype(np.uint16)
    if img.mode not in PIL_MODES:
        dtype, channels = _pil_layout(img)
        img = img.convert({1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels])
    arr = np.asarray(img)
    return arr.astype(np.uint16, copy=False) if img.mode.startswith("I;16") else arr  # I;16B: big-endian


def _read_png16(path: Path) -> np.ndarray:
    import png

    width, height, rows, meta = png.Reader(filename=str(path)).asDirect()
    channels = meta["planes"]
    arr = np.empty((height, width * channels), np.uint16)
    for y, row in enumerate(rows):
        arr[y] = row
    return arr.reshape(height, width) if channels == 1 else arr.reshape(height, width, channels)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        arr = page.asarray()
        if page.axes.startswith("S"):  # planar configuration: samples first
            arr = np.moveaxis(arr, 0, -1)
        orientation = page.tags.valueof(274)
    return _orient(arr, int(orientation) if orientation else None)


def _read_pil(path: Path, reader: str) -> np.ndarray:
    with warnings.catch_warnings(), Image.open(path) as img:  # probe() refused what PIL would warn about
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        orientation = img.getexif().get(0x0112)
        arr = _read_png16(path) if reader == "png16" else _pil_array(img)
    return _orient(arr, orientation)


def read_image(path: str | os.PathLike[str]) -> tuple[np.ndarray, ImageInfo]:
    """Decode ``path`` to an (H, W) / (H, W, C) array of its own sample type (see the module docstring) and its
    :class:`ImageInfo`. Raises ValueError naming the file when it cannot be read."""
    info = probe(path)
    path = info.path
    if info.frames > 1:
        log.warning("%s has %d frames: only the first is used", path, info.frames)
    try:
        if info.reader != "tiff":
            return _read_pil(path, info.reader), info
        try:
            return _read_tiff(path), info
        except Exception as e:  # e.g. LZW or JPEG compression without the imagecodecs package: PIL reads those
            try:
                arr = _read_pil(path, "pil")
            except Exception:
                arr = None
            if arr is None or arr.dtype != info.dtype or (1 if arr.ndim == 2 else arr.shape[2]) != info.channels:
                raise ValueError(f"{type(e).__name__}: {e}") from None
            return arr, info
    except Exception as e:  # PIL, pypng and tifffile each have their own error classes
        message = str(e) if isinstance(e, (OSError, ValueError)) else f"{type(e).__name__}: {e}"
        raise ValueError(f"cannot read image {path}: {message}") from None


def to_rgb8(arr: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB from any array ``read_image`` returns: alpha dropped, gray replicated, 16-bit rounded to
    8 bits (x / 257), float in [0, 1] scaled by 255 and rounded. Raises ValueError for float outside [0, 1]."""
    color = arr if arr.ndim == 2 else arr[..., : 1 if arr.shape[2] <= 2 else 3]
    if arr.dtype == np.uint16:
        color = ((color.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif arr.dtype.kind == "f":
        low, high = float(color.min()), float(color.max())
        if not 0 <= low <= high <= 1:
            raise ValueError(f"float image values must be finite and in [0, 1], found range [{low:g}, {high:g}]")
        color = np.round(color * 255.0).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise ValueError(f"unsupported image dtype {arr.dtype}")
    out = np.empty((*color.shape[:2], 3), np.uint8)  # a new, writable array (PIL's arrays are read-only)
    out[...] = color.reshape(*color.shape[:2], -1)
    return out


# ----------------------------------------------------------------------------------------------- writing


def _png_chunk(f, kind: bytes, data: bytes) -> None:  # noqa: ANN001 (a binary file)
    f.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))


def _png_filter(rows: np.ndarray, previous: np.ndarray, bpp: int) -> bytes:
    """Filter a block of rows (n, row_bytes) uint8 with, per row, the PNG filter (None, Sub, Up, Average, Paeth) of
    the smallest sum of absolute signed bytes (the PNG spec's heuristic). ``previous``: the row above the block.
    Encoding needs only the raw bytes, so every filter is vectorised over the block."""
    up = np.concatenate([previous[None], rows[:-1]]).astype(np.int16)
    raw = rows.astype(np.int16)
    left = np.zeros_like(raw)
    left[:, bpp:] = raw[:, :-bpp]
    upleft = np.zeros_like(raw)
    upleft[:, bpp:] = up[:, :-bpp]
    p = left + up - upleft
    pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
    candidates = np.stack([raw, raw - left, raw - up, raw - (left + up) // 2, raw - paeth]).astype(np.uint8)
    cost = np.abs(candidates.view(np.int8).astype(np.int32)).sum(axis=2)  # (5, n)
    best = cost.argmin(axis=0)
    out = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
    out[:, 0] = best
    out[:, 1:] = candidates[best, np.arange(rows.shape[0])]
    return out.tobytes()


def _write_png(f, arr: np.ndarray, icc: bytes | None, dpi: tuple[float, float] | None,  # noqa: ANN001
               text: dict[str, str]) -> None:
    h, w = arr.shape[:2]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    depth = 8 * arr.dtype.itemsize
    f.write(_PNG_SIGNATURE)
    _png_chunk(f, b"IHDR", struct.pack(">IIBBBBB", w, h, depth, _PNG_COLOR_TYPES[channels], 0, 0, 0))
    if icc:  # before the image data (PNG spec): name, compression method 0, the zlib-compressed profile
        _png_chunk(f, b"iCCP", b"ICC profile\0\0" + zlib.compress(icc))
    if dpi:  # pixels per metre, unit 1
        _png_chunk(f, b"pHYs", struct.pack(">IIB", round(dpi[0] / 0.0254), round(dpi[1] / 0.0254), 1))
    _png_chunk(f, b"tEXt", b"Software\0" + MARKER.encode())
    for key, value in text.items():
        _png_chunk(f, b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1", "replace"))
    z = zlib.compressobj(6)
    row_bytes = w * channels * arr.dtype.itemsize
    previous = np.zeros(row_bytes, np.uint8)
    for y in range(0, h, _PNG_ROWS_PER_BLOCK):
        block = np.ascontiguousarray(arr[y : y + _PNG_ROWS_PER_BLOCK], dtype=arr.dtype.newbyteorder(">"))
        rows = block.view(np.uint8).reshape(-1, row_bytes)
        data = z.compress(_png_filter(rows, previous, channels * arr.dtype.itemsize))
        if data:
            _png_chunk(f, b"IDAT", data)
        previous = rows[-1]
    _png_chunk(f, b"IDAT", z.flush())
    _png_chunk(f, b"IEND", b"")


def _write_tiff(path: Path, arr: np.ndarray, icc: bytes | None, dpi: tuple[float, float] | None,
                text: dict[str, str]) -> None:
    import tifffile

    channels = 1 if arr.ndim == 2 else arr.shape[2]
    extras = ["unassalpha"] if channels in (2, 4) else None
    photometric = "rgb" if channels >= 3 else "minisblack"
    planar = "contig" if channels > 1 else None
    resolution = dict(resolution=dpi, resolutionunit="INCH") if dpi else {}
    tifffile.imwrite(path, arr, photometric=photometric, planarconfig=planar, extrasamples=extras,
                     compression="zlib", software=MARKER, iccprofile=icc, description=json.dumps(text) if text else None,
                     metadata=None, **resolution)


def check_writable(path: str | os.PathLike[str], arr_dtype: np.dtype, channels: int) -> None:
    """Raise ValueError unless an image of ``arr_dtype`` with ``channels`` can be written to ``path``'s format."""
    suffix = Path(path).suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise ValueError(f"cannot write {path}: output images are {', '.join(WRITE_SUFFIXES)}")
    if not 1 <= channels <= 4:
        raise ValueError(f"cannot write {path}: images have 1 to 4 channels, got {channels}")
    dtype = np.dtype(arr_dtype)
    if suffix == ".png" and dtype not in (np.uint8, np.uint16):
        raise ValueError(f"cannot write a {dtype} image to PNG {path}: PNG holds 8 or 16 bits; use .tif for float")
    if dtype not in (np.uint8, np.uint16) and dtype.kind != "f":
        raise ValueError(f"cannot write {path}: unsupported sample type {dtype}")


def write_image(path: str | os.PathLike[str], arr: np.ndarray, replace: bool | Callable[[Path], bool] = True, *,
                icc: bytes | None = None, dpi: tuple[float, float] | None = None,
                text: dict[str, str] | None = None) -> None:
    """Write (H, W) / (H, W, C) ``arr`` to ``path`` (.png: uint8 / uint16; .tif / .tiff: uint8, uint16, float)
    atomically and marked as ours, with the colour profile ``icc`` (ICC bytes), resolution ``dpi`` and ``text``
    (key -> value, Latin-1) if given (PNG iCCP / pHYs / tEXt; TIFF tags, the text as JSON in ImageDescription);
    ``replace`` decides at the rename what may be replaced
    (:func:`files.atomic_output`). Raises ValueError for a format that cannot hold ``arr``, ``files.WriteError``
    when the file cannot be written, ``files.AppearedError`` when a file at ``path`` may not be replaced (the file
    it would replace is then intact)."""
    check_writable(path, arr.dtype, 1 if arr.ndim == 2 else arr.shape[2])
    with files.atomic_output(path, replace) as tmp:
        if tmp.suffix.lower() == ".png":
            with open(tmp, "wb") as f:
                _write_png(f, arr, icc, dpi, text or {})
        else:
            _write_tiff(tmp, arr, icc, dpi, text or {})


def is_ours(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a regular file (not a link) holding an image we wrote (:data:`MARKER`)."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                software = tif.pages[0].software
        else:
            with Image.open(path) as img:
                software = img.info.get("Software", "")
    except Exception:  # unreadable: certainly not an image we wrote
        return False
    return isinstance(software, str) and software.startswith(MARKER)


def image_files(src: str | os.PathLike[str]) -> list[Path]:
    """All files under ``src`` (recursive, sorted) whose suffix PIL can read.

    Raises FileNotFoundError / NotADirectoryError for a missing or non-folder ``src``, ValueError when it holds no
    image file.
    """
    root = Path(src)
    if not root.exists():
        raise FileNotFoundError(f"image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"not a folder: {root}")
    suffixes = {s.lower() for s in Image.registered_extensions()}
    found = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not found:
        raise ValueError(f"no image files in {root} (searched recursively for PIL-readable suffixes)")
    return found


def load_rgb(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file to a new uint8 (H, W, 3) RGB array through ``imageio`` (EXIF orientation applied,
    alpha dropped, gray replicated, 16-bit and float images scaled to 8 bits rather than clipped)."""
    return to_rgb8(read_image(path)[0])
