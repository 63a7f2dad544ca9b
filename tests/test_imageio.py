"""Image files in and out at their true bit depth and channels, marked as ours, written atomically."""

import errno
import logging
import os
from pathlib import Path

import numpy as np
import png
import pytest
import tifffile
from PIL import Image, ImageOps

from udvd_triton import files, imageio

RNG = np.random.default_rng(0)


def photo_like(h: int, w: int, channels: int, dtype) -> np.ndarray:
    """Smooth gradients plus noise, so that every PNG filter type gets chosen somewhere."""
    y, x = np.mgrid[0:h, 0:w]
    base = (0.5 + 0.4 * np.sin(x / 7.0 + y / 11.0))[..., None] * np.linspace(0.6, 1.0, channels)
    img = np.clip(base + RNG.normal(0, 0.02, (h, w, channels)) * (x[..., None] > w // 2), 0, 1)
    img = img[..., 0] if channels == 1 else img
    if np.dtype(dtype).kind == "f":
        return img.astype(dtype)
    return np.round(img * np.iinfo(dtype).max).astype(dtype)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize(("suffix", "dtype"), [(".png", np.uint8), (".png", np.uint16), (".tif", np.uint8),
                                               (".tif", np.uint16), (".tif", np.float32), (".tiff", np.float64)])
def test_write_read_round_trip(tmp_path: Path, suffix: str, dtype, channels: int) -> None:
    arr = photo_like(150, 37, channels, dtype)  # 150 rows: several PNG row blocks
    path = tmp_path / f"x{suffix}"
    imageio.write_image(path, arr)
    back, info = imageio.read_image(path)
    assert back.dtype == arr.dtype and back.shape == arr.shape and info.channels == channels
    np.testing.assert_array_equal(back, arr)
    assert imageio.is_ours(path)
    if suffix == ".png":  # other decoders agree: a standard PNG
        direct = png.Reader(filename=str(path)).asDirect()
        decoded = np.vstack([np.asarray(row) for row in direct[2]]).reshape(arr.shape)
        np.testing.assert_array_equal(decoded, arr)
        if dtype == np.uint8:
            np.testing.assert_array_equal(np.asarray(Image.open(path)), arr)
    else:
        np.testing.assert_array_equal(tifffile.imread(path), arr)


def test_files_of_other_writers(tmp_path: Path) -> None:
    """16-bit gray PNG from PIL (mode I;16), float TIFF (mode F), 16-bit RGB(A) PNG / TIFF from pypng / tifffile:
    all come back with their own sample type (PIL alone would give white, black or 8-bit images)."""
    g16 = photo_like(20, 30, 1, np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    f32 = photo_like(20, 30, 1, np.float32)
    Image.fromarray(f32, mode="F").save(tmp_path / "f.tif")
    rgb16 = photo_like(20, 30, 3, np.uint16)
    png.Writer(30, 20, greyscale=False, bitdepth=16).write(open(tmp_path / "rgb16.png", "wb"), rgb16.reshape(20, -1))
    rgba16 = photo_like(20, 30, 4, np.uint16)
    tifffile.imwrite(tmp_path / "rgba16.tif", rgba16, photometric="rgb", extrasamples=["unassalpha"])
    planar = photo_like(20, 30, 3, np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(planar, -1, 0), photometric="rgb", planarconfig="separate")
    lzw = photo_like(20, 30, 1, np.uint16)  # LZW needs imagecodecs in tifffile; PIL reads 16-bit gray LZW exactly
    Image.fromarray(lzw).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    for name, expected in [("g16.png", g16), ("f.tif", f32), ("rgb16.png", rgb16), ("rgba16.tif", rgba16),
                           ("planar.tif", planar), ("lzw.tif", lzw)]:
        arr, info = imageio.read_image(tmp_path / name)
        assert arr.dtype == expected.dtype and info.dtype == expected.dtype, name
        np.testing.assert_array_equal(arr, expected, err_msg=name)
        assert not imageio.is_ours(tmp_path / name)


def test_pil_modes_become_arrays(tmp_path: Path) -> None:
    rgb = photo_like(12, 10, 3, np.uint8)
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    Image.fromarray(rgb[..., 0] > 128).save(tmp_path / "b.png")
    Image.fromarray(rgb).save(tmp_path / "j.jpg")
    assert imageio.read_image(tmp_path / "p.png")[0].shape == (12, 10, 3)
    assert imageio.read_image(tmp_path / "c.jpg")[0].shape == (12, 10, 3)
    bilevel, info = imageio.read_image(tmp_path / "b.png")
    assert bilevel.shape == (12, 10) and info.channels == 1 and set(np.unique(bilevel)) <= {0, 255}
    assert imageio.probe(tmp_path / "j.jpg").dtype == np.uint8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pil(tmp_path: Path, orientation: int) -> None:
    rgb = photo_like(6, 9, 3, np.uint8)
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(tmp_path / "o.png", exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    np.testing.assert_array_equal(imageio.read_image(tmp_path / "o.png")[0], expected)


def test_animated_gif_says_only_the_first_frame_is_used(tmp_path: Path, caplog) -> None:
    frames = [Image.new("RGB", (8, 6), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with caplog.at_level(logging.WARNING):
        arr, info = imageio.read_image(tmp_path / "a.gif")
    assert info.frames == 2 and "only the first is used" in caplog.text
    assert tuple(arr[0, 0]) == (255, 0, 0)


def test_unreadable_and_oversized_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "junk.png").write_bytes(b"no image")
    with pytest.raises(ValueError, match="cannot read image .*junk.png"):
        imageio.read_image(tmp_path / "junk.png")
    Image.new("L", (40, 30)).save(tmp_path / "big.png")
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((30, 40), np.uint16))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(ValueError, match=r"big.png is too large: .* raise PIL.Image.MAX_IMAGE_PIXELS"):
        imageio.read_image(tmp_path / "big.png")
    with pytest.raises(ValueError, match=r"40x30 = 1,200 pixels, more than the 1,000 PIL accepts .*MAX_IMAGE_PIXELS"):
        imageio.read_image(tmp_path / "big.tif")
    with pytest.raises(FileNotFoundError):
        imageio.probe(tmp_path / "missing.png")


def test_formats_that_cannot_hold_the_data(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="PNG holds 8 or 16 bits; use .tif"):
        imageio.write_image(tmp_path / "f.png", np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\.png, \.tif, \.tiff"):
        imageio.write_image(tmp_path / "x.jpg", np.zeros((2, 2), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "x.png"
    imageio.write_image(target, np.zeros((4, 4), np.uint8))
    before = target.read_bytes()

    def full(fd: int) -> None:  # a full disk reports ENOSPC when the written data is flushed
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(files.WriteError, match="No space left on device"):
        imageio.write_image(target, np.full((4, 4), 255, np.uint8))
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_is_ours(tmp_path: Path) -> None:
    ours = tmp_path / "ours.png"
    imageio.write_image(ours, np.zeros((3, 3, 3), np.uint8))
    Image.new("RGB", (3, 3)).save(tmp_path / "theirs.png")
    (tmp_path / "link.png").symlink_to(ours)
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    assert imageio.is_ours(ours)
    assert not any(imageio.is_ours(tmp_path / n) for n in ("theirs.png", "link.png", "dangling.png", "none.png"))


def test_to_rgb8() -> None:
    g16 = np.array([[0, 257, 65535, 32896]], np.uint16)
    np.testing.assert_array_equal(imageio.to_rgb8(g16)[0, :, 0], [0, 1, 255, 128])
    assert imageio.to_rgb8(g16).shape == (1, 4, 3)
    rgba = np.zeros((2, 2, 4), np.uint8)
    out = imageio.to_rgb8(rgba)
    assert out.shape == (2, 2, 3) and out.flags.writeable
    np.testing.assert_array_equal(imageio.to_rgb8(np.array([[0.5, 1.0]], np.float32))[0, :, 1], [128, 255])
    with pytest.raises(ValueError, match=r"found range \[0, 255\]"):
        imageio.to_rgb8(np.array([[0.0, 255.0]]))
