"""Offline training data: a folder of HR photos -> memory-mappable shards of HR crops + a manifest.

Layout of a prepared folder (``prepare_data``)::

    OUT/manifest.json          sources, settings, shards (crop counts, sha256), validation images, skipped files
    OUT/shard-00000.npy        uint8 (n, P, P, 3) HR crops, RGB, read with np.load(mmap_mode="r")
    OUT/val/000_<name>.png     held-out whole images (centre crops), lossless

Training never decodes an image: ``CropDataset`` memory-maps the shards, ``BatchSampler`` copies all crops once
into one uint8 tensor on the training device (the 41-photo set is ~240 MB) and cuts each step's random sub-crops
there with one gather: no loader thread, no per-step host copy. Every batch is a pure function of
(seed, rank, step), so a resumed run sees exactly the batches the uninterrupted run would have seen, with no
sampler state to save.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from udvd_triton import files
from udvd_triton.degradation import imresize
from udvd_triton.imageio import image_files, load_rgb

MANIFEST = "manifest.json"
FORMAT = "udvd-hr-crops"
FORMAT_VERSION = 2  # 2: the crop side is stored as "crop" (version 1 called it "patch", still read)
VAL_DIR = "val"
VAL_MULTIPLE = 12  # validation crops are cut to a multiple of 12, so they divide by every scale (2, 3, 4)
_JPEG_SUFFIXES = (".jpg", ".jpeg")


def _shrink(img: np.ndarray, factor: float) -> np.ndarray:
    """Bicubic downscale (``imresize``) of a uint8 (H, W, 3) image by ``factor`` < 1, back to uint8."""
    out = imresize(img.astype(np.float64) / 255.0, factor)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def _centre_crop(img: np.ndarray, size: int) -> np.ndarray:
    """Centre crop to at most ``size`` (0: the whole image), each side cut to a multiple of ``VAL_MULTIPLE``."""
    h, w = img.shape[:2]
    th, tw = (h, w) if size == 0 else (min(size, h), min(size, w))
    th, tw = th - th % VAL_MULTIPLE, tw - tw % VAL_MULTIPLE
    y, x = (h - th) // 2, (w - tw) // 2
    return img[y : y + th, x : x + tw]


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header without decoding; (0, 0) when PIL cannot read it."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # decoded (and reported) later, like every other file
        return (0, 0)


def _grid_crops(img: np.ndarray, patch: int, stride: int) -> Iterator[np.ndarray]:
    h, w = img.shape[:2]
    for y in range(0, h - patch + 1, stride):
        for x in range(0, w - patch + 1, stride):
            yield img[y : y + patch, x : x + patch]


def _listed_files(manifest: dict[str, Any]) -> list[str]:
    """Every file a ``prepare_data`` manifest says it wrote, relative to its folder (the manifest itself included)."""
    return [MANIFEST] + [s["file"] for s in manifest["shards"]] + [v["file"] for v in manifest["val"]]


def _previous_output(src: Path, out: Path, overwrite: bool) -> dict[str, Any] | None:
    """Check that ``out`` may receive a new output; return the manifest of the previous output it holds, if any.

    Refuses (before anything is read or written) an ``out`` that is, contains or lies inside ``src``; a link or a
    file; a non-empty folder without ``overwrite``; and, with ``overwrite``, a folder holding anything that its
    manifest does not list as written by ``prepare_data``: we only ever delete what we wrote.
    """
    src_r, out_r = src.resolve(), out.resolve()
    if out_r == src_r or out_r.is_relative_to(src_r) or src_r.is_relative_to(out_r):
        raise ValueError(f"output folder {out} must lie outside the image folder {src} (and not contain it)")
    if not files.exists(out):
        return None
    if out.is_symlink() or not out.is_dir():
        raise FileExistsError(f"output {out} exists and is not a folder (or is a link): choose another output")
    entries = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    if not entries:
        return None
    if not overwrite:
        raise FileExistsError(
            f"output folder {out} exists and is not empty (use --overwrite to replace a previous prepare-data output)"
        )
    try:
        manifest = json.loads((out / MANIFEST).read_text())
        ours = set(_listed_files(manifest)) | {VAL_DIR} if manifest.get("format") == FORMAT else set()
    except (OSError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        ours = set()
    if not ours:
        raise FileExistsError(
            f"refusing to replace {out}: it has no valid {MANIFEST}, so it is not a previous prepare-data output"
        )
    foreign = [e for e in entries if e not in ours]
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise FileExistsError(f"refusing to replace {out}: it holds {foreign[0]}{more}, which prepare-data did not write")
    return manifest


def _remove_listed(folder: Path, manifest: dict[str, Any]) -> None:
    """Delete the files ``manifest`` lists in ``folder`` and the then-empty val folder (nothing else)."""
    for rel in _listed_files(manifest):
        (folder / rel).unlink(missing_ok=True)
    if (folder / VAL_DIR).is_dir():
        (folder / VAL_DIR).rmdir()


def prepare_data(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    crop: int = 192,
    stride: int | None = None,
    max_side: int | None = None,
    jpeg_scale: float = 1.0,
    val_count: int | None = None,
    val_crop: int = 480,
    shard_crops: int = 1024,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Cut the photos under ``src`` into HR crops and write them to ``out`` (layout in the module docstring).

    Args:
        src: folder of HR images (searched recursively, any PIL-readable format).
        out: output folder, outside ``src`` (and not containing it); must not exist or be empty unless
            ``overwrite``.
        crop: side P of the stored square HR crops (pixels). Training cuts random sub-crops of scale * (LR patch)
            <= P from them (``udvd train --patch`` is that LR patch).
        stride: grid step between crops (default ``crop``: non-overlapping).
        max_side: downscale (bicubic ``imresize``) images whose longer side exceeds this, before cropping.
        jpeg_scale: extra downscale factor in (0, 1] for JPEG sources, which shrinks their compression artefacts.
        val_count: whole images held out for validation (default: a tenth, at least 1 when there are >= 2 images).
        val_crop: side of the validation centre crops (0: whole images), cut to a multiple of 12.
        shard_crops: crops per shard file.
        seed: picks the validation images.
        overwrite: replace an existing ``out`` that holds a previous ``prepare_data`` output and nothing else
            (checked against its manifest); only the files that manifest lists are deleted.
        progress: show a tqdm bar.

    Returns the manifest (also written to ``out/manifest.json``). Unreadable files and images smaller than the
    crop are skipped with a warning and listed under ``skipped``. The result appears atomically: everything is
    written to a temporary sibling folder that is renamed to ``out`` at the end.

    Raises FileNotFoundError / NotADirectoryError / ValueError (no images, bad settings, nothing usable),
    FileExistsError (``out`` not empty, or not a previous output), before any image is read.
    """
    if crop < 8:
        raise ValueError(f"crop must be >= 8 pixels, got {crop}")
    stride = crop if stride is None else stride
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_side is not None and max_side < crop:
        raise ValueError(f"max_side ({max_side}) must be >= crop ({crop})")
    if not 0 < jpeg_scale <= 1:
        raise ValueError(f"jpeg_scale must be in (0, 1], got {jpeg_scale}")
    if val_crop < 0 or shard_crops < 1:
        raise ValueError(f"need val_crop >= 0 and shard_crops >= 1, got {val_crop} and {shard_crops}")
    src_root, out_dir = Path(src), Path(out)
    paths = image_files(src_root)
    previous = _previous_output(src_root, out_dir, overwrite)

    # Validation images are drawn among the files whose header says they are at least crop x crop.
    big = [i for i, path in enumerate(paths) if min(_header_size(path)) >= crop]
    n_val = (min(max(1, len(big) // 10), len(big) - 1) if len(big) >= 2 else 0) if val_count is None else val_count
    if not 0 <= n_val < max(len(big), 1):
        raise ValueError(f"val_count must be in 0..{max(len(big) - 1, 0)} for {len(big)} images of at least {crop}px, got {n_val}")
    val_set = {big[i] for i in np.random.default_rng(seed).permutation(len(big))[:n_val]}

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))  # new and ours: safe to remove
    (tmp / VAL_DIR).mkdir()
    sources: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    shards: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    buffer: list[np.ndarray] = []

    def flush() -> None:
        name = f"shard-{len(shards):05d}.npy"
        np.save(tmp / name, np.stack(buffer))
        shards.append({"file": name, "crops": len(buffer), "sha256": files.sha256_file(tmp / name)})
        buffer.clear()

    try:
        for i, path in enumerate(tqdm(paths, desc="prepare-data", unit="img", disable=not progress)):
            rel = path.relative_to(src_root).as_posix()
            try:
                img = load_rgb(path)
            except Exception as exc:  # PIL raises many types for broken files; skip them all, but say so
                warnings.warn(f"skipping unreadable image {rel}: {exc}", stacklevel=2)
                skipped.append({"file": rel, "reason": f"unreadable: {exc}"})
                continue
            h0, w0 = img.shape[:2]
            factor = jpeg_scale if path.suffix.lower() in _JPEG_SUFFIXES else 1.0
            if max_side is not None:
                factor = min(factor, max_side / max(h0, w0))
            if factor < 1:
                img = _shrink(img, factor)
            entry = {"file": rel, "size": [w0, h0], "used_size": [img.shape[1], img.shape[0]]}
            if i in val_set:
                centre = _centre_crop(img, val_crop)
                if min(centre.shape[:2]) < VAL_MULTIPLE:
                    skipped.append({"file": rel, "reason": "too small for a validation image"})
                    continue
                name = f"{VAL_DIR}/{len(val):03d}_{path.stem}.png"
                Image.fromarray(centre).save(tmp / name)
                val.append({"file": name, "source": rel, "size": [centre.shape[1], centre.shape[0]]})
                sources.append({**entry, "split": "val", "crops": 0})
                continue
            if min(img.shape[:2]) < crop:
                warnings.warn(f"skipping {rel}: {img.shape[1]}x{img.shape[0]} is smaller than the crop {crop}", stacklevel=2)
                skipped.append({"file": rel, "reason": f"smaller than the crop ({img.shape[1]}x{img.shape[0]} < {crop})"})
                continue
            count = 0
            for piece in _grid_crops(img, crop, stride):
                buffer.append(piece)
                count += 1
                if len(buffer) == shard_crops:
                    flush()
            sources.append({**entry, "split": "train", "crops": count})
        if buffer:
            flush()
        if not shards:
            raise ValueError(
                f"no training crops from {src_root}: {len(skipped)} of {len(paths)} files skipped "
                f"(unreadable or smaller than the crop {crop}); see the warnings"
            )
        manifest = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "source": str(src_root.resolve()),
            "crop": crop,
            "stride": stride,
            "max_side": max_side,
            "jpeg_scale": jpeg_scale,
            "seed": seed,
            "crops": sum(s["crops"] for s in shards),
            "shards": shards,
            "val": val,
            "sources": sources,
            "skipped": skipped,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        if previous is None:
            os.replace(tmp, out_dir)  # out_dir is absent or an empty folder
        else:  # swap, then delete only what the old manifest lists
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            _remove_listed(old, previous)
            old.rmdir()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if skipped:
        warnings.warn(f"prepare-data skipped {len(skipped)} of {len(paths)} files (listed in the manifest)", stacklevel=2)
    return manifest


class CropDataset:
    """The HR crops of a folder written by ``prepare_data``, memory-mapped (nothing is read until gathered).

    ``verify=True`` checks every shard's sha256 against the manifest (reads all the data once).
    """

    def __init__(self, root: str | os.PathLike[str], verify: bool = False) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no {MANIFEST} in {self.root}: prepare the data with `udvd prepare-data`")
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(self.manifest, dict):
            self.manifest = {}
        version = self.manifest.get("version")
        if self.manifest.get("format") != FORMAT or version not in (1, FORMAT_VERSION):
            raise ValueError(f"{path} is not a manifest of format {FORMAT} version {FORMAT_VERSION}")
        crop_key = "crop" if version == FORMAT_VERSION else "patch"
        shards = self.manifest.get("shards")
        if not isinstance(self.manifest.get(crop_key), int) or not isinstance(shards, list) or not all(
            isinstance(sh, dict) and isinstance(sh.get("file"), str) and isinstance(sh.get("sha256"), str)
            and isinstance(sh.get("crops"), int) for sh in shards
        ):
            raise ValueError(f"{path} is incomplete: it needs '{crop_key}' and 'shards' (each with file, sha256 and "
                             "crops); prepare the data again with `udvd prepare-data`")
        self.crop: int = self.manifest[crop_key]
        self.shards: list[np.ndarray] = []
        for shard in shards:
            file = self.root / shard["file"]
            if not file.is_file() or Path(shard["file"]).name != shard["file"]:
                raise FileNotFoundError(f"shard {file} listed in the manifest is missing")
            try:
                arr = np.load(file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError, EOFError) as exc:  # numpy's texts ("mmap length ...") name no file
                raise ValueError(f"shard {file} cannot be read: truncated or not a .npy array ({type(exc).__name__}); "
                                 "prepare the data again") from None
            if arr.dtype != np.uint8 or arr.shape != (shard["crops"], self.crop, self.crop, 3):
                raise ValueError(f"shard {file} holds {arr.dtype} {arr.shape}, expected uint8 ({shard['crops']}, "
                                 f"{self.crop}, {self.crop}, 3)")
            self.shards.append(arr)
        if verify:
            self.verify()
        counts = np.array([len(s) for s in self.shards], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        if self._starts[-1] == 0:
            raise ValueError(f"{self.root} holds no training crops")

    def __len__(self) -> int:
        return int(self._starts[-1])

    def verify(self) -> None:
        """Check every shard's sha256 against the manifest (reads all the data once); ValueError naming the first
        that differs."""
        for shard in self.manifest["shards"]:
            file = self.root / shard["file"]
            if files.sha256_file(file) != shard["sha256"]:
                raise ValueError(f"shard {file} does not match its sha256 in the manifest (corrupted or changed; "
                                 "prepare the data again)")

    def gather(self, indices: np.ndarray, size: int, offsets: np.ndarray) -> np.ndarray:
        """Crops ``indices`` (B,), each cut to ``size`` x ``size`` at ``offsets`` (B, 2) (y, x): uint8 (B, size, size, 3)."""
        shard = np.searchsorted(self._starts, indices, side="right") - 1
        local = indices - self._starts[shard]
        out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
        for j, (s, i, (y, x)) in enumerate(zip(shard, local, offsets)):
            out[j] = self.shards[s][i, y : y + size, x : x + size]
        return out

    def tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Every crop in one uint8 tensor (N, P, P, 3) on ``device``, filled shard by shard."""
        out = torch.empty((len(self), self.crop, self.crop, 3), dtype=torch.uint8, device=device)
        for start, shard in zip(self._starts, self.shards):
            out[start : start + len(shard)].copy_(torch.from_numpy(np.array(shard)))  # one shard in RAM at a time
        return out

    def val_images(self) -> list[tuple[str, np.ndarray]]:
        """The held-out validation images as (name, uint8 (H, W, 3))."""
        return [(Path(v["file"]).stem, load_rgb(self.root / v["file"])) for v in self.manifest["val"]]


class BatchSampler:
    """Random HR training crops for one rank: ``batch_at(step)`` -> uint8 tensor (batch, size, size, 3) on ``device``.

    Crops are visited epoch by epoch in a seeded permutation shared by all ranks; the global batch of a step is
    split across ranks (rank r takes its ``batch`` consecutive positions), so ranks never see the same crop in a
    step. The sub-crop offsets come from a generator on ``device`` seeded with (seed, step, rank) (:meth:`seed_offsets`,
    then :meth:`gather`: a CUDA graph can replay the gather). The crops are
    held on ``device`` (``CropDataset.tensor``); a step's batch is a slice of the epoch permutation and one gather,
    so drawing it never waits for the device.
    """

    def __init__(
        self,
        dataset: CropDataset,
        batch: int,
        size: int,
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
    ) -> None:
        if not 0 < size <= dataset.crop:
            raise ValueError(
                f"HR training patch {size} does not fit the stored {dataset.crop}px crops "
                f"(use a smaller --patch or prepare the data with a larger one)"
            )
        self.dataset, self.batch, self.size, self.seed, self.rank, self.world = dataset, batch, size, seed, rank, world
        self.device = torch.device(device)
        self.crops = dataset.tensor(self.device)
        self.generator = torch.Generator(device=self.device)
        self._span = torch.arange(size, device=self.device)
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        """The crop order of ``epoch`` on the device (drawn on the host, so every device gets the same order)."""
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            perm = torch.from_numpy(np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset)))
            if self.device.type == "cuda":  # an asynchronous copy needs pinned memory; a blocking one would sync
                perm = perm.pin_memory()
            self._perms[epoch] = perm.to(self.device, non_blocking=True)
        return self._perms[epoch]

    def indices(self, step: int) -> torch.Tensor:
        """Crop indices (batch,) int64 on the device: positions ``(step * world + rank) * batch + i`` of the epoch
        permutations laid end to end."""
        n = len(self.dataset)
        start = (step * self.world + self.rank) * self.batch
        first, last = start // n, (start + self.batch - 1) // n
        order = self._perm(first) if first == last else torch.cat([self._perm(e) for e in range(first, last + 1)])
        return order[start - first * n : start - first * n + self.batch]

    def seed_offsets(self, step: int) -> None:
        """Seed the sub-crop offsets of ``step`` (host side: a CUDA graph replays :meth:`gather` with it)."""
        self.generator.manual_seed(int(np.random.default_rng([self.seed, step, self.rank, 1]).integers(2**62)))

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """The uint8 HR crops (batch, size, size, 3) of the crops ``indices`` (:meth:`indices`) at random offsets
        drawn from the seeded generator: device work only."""
        offsets = torch.randint(
            0, self.dataset.crop - self.size + 1, (self.batch, 2), generator=self.generator, device=self.device
        )
        ys = (offsets[:, 0, None] + self._span)[:, :, None]  # (B, size, 1)
        xs = (offsets[:, 1, None] + self._span)[:, None, :]  # (B, 1, size)
        return self.crops[indices[:, None, None], ys, xs]

    def batch_at(self, step: int) -> torch.Tensor:
        """The uint8 HR crops (batch, size, size, 3) of ``step`` on the device."""
        self.seed_offsets(step)
        return self.gather(self.indices(step))
