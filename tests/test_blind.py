"""Blind upscaling: the degradation estimated from the image alone, and used when the caller gives none."""

import io
import json
import numpy as np
import pytest
import torch
from PIL import Image

from udvd_triton import UDVD, blind
from udvd_triton.blind import estimate_degradation
from udvd_triton.cli import main
from udvd_triton.degradation import degrade, imresize, isotropic_gaussian
from udvd_triton.images import as_input
from udvd_triton.metrics import psnr

def photo(side: int = 240) -> np.ndarray:
    """A centre crop of scikit-image's astronaut photo (public domain; not a training photo of the estimator),
    float64 HWC in [0, 1], sides divisible by 12."""
    import skimage.data

    img = skimage.data.astronaut().astype(np.float64) / 255
    h, w = img.shape[:2]
    y, x = (h - side) // 2, (w - side) // 2
    return img[y : y + side, x : x + side]


def lr_of(hr: np.ndarray, scale: int, sigma: float, noise: float, seed: int = 0) -> np.ndarray:
    lr = degrade(hr, isotropic_gaussian(15, sigma), scale, noise, rng=np.random.default_rng(seed))
    return np.clip(np.round(lr * 255), 0, 255).astype(np.uint8)


def test_estimates_follow_the_true_blur_and_noise() -> None:
    hr = photo()
    sharp, blurred = estimate_degradation(lr_of(hr, 2, 0.2, 0), 2), estimate_degradation(lr_of(hr, 2, 2.0, 0), 2)
    assert sharp.blur_sigma < blurred.blur_sigma and sharp.blur_sigma < 1.0 < blurred.blur_sigma
    assert sharp.noise_level < 3
    noisy = estimate_degradation(lr_of(hr, 2, 1.0, 25), 2)
    assert abs(noisy.noise_level - 25) < 6, noisy
    assert "blur sigma" in noisy.summary() and noisy.note is None


@pytest.mark.parametrize("scale", [3, 4])
def test_every_scale_has_its_own_range(scale) -> None:
    lo, hi = blind.SIGMA_RANGES[scale]
    est = estimate_degradation(lr_of(photo(), scale, 0.9 * hi, 0), scale)
    assert lo <= est.blur_sigma <= hi and est.scale == scale


def test_flat_and_tiny_images_fall_back_to_no_deblurring_and_say_so() -> None:
    flat = np.full((64, 80, 3), 120, np.uint8)
    tiny = (np.random.default_rng(0).random((9, 7, 3)) * 255).astype(np.uint8)
    for image in (flat, tiny):
        est = estimate_degradation(image, 2)
        assert est.blur_sigma == blind.SIGMA_RANGES[2][0] and "no deblurring" in est.note
    assert estimate_degradation(flat, 2).noise_level < 2


def test_inputs_a_user_has() -> None:
    lr = lr_of(photo(), 2, 1.0, 5)
    ref = estimate_degradation(lr, 2)
    gray = estimate_degradation(lr.mean(2).round().astype(np.uint8), 2)
    rgba = estimate_degradation(np.dstack([lr, np.full(lr.shape[:2], 200, np.uint8)]), 2)
    sixteen = estimate_degradation(lr.astype(np.uint16) * 257, 2)
    assert rgba.blur_sigma == pytest.approx(ref.blur_sigma) and sixteen.blur_sigma == pytest.approx(ref.blur_sigma, abs=1e-4)
    assert abs(gray.blur_sigma - ref.blur_sigma) < 0.5
    batch = estimate_degradation(torch.from_numpy(np.stack([lr, lr])).permute(0, 3, 1, 2).float() / 255, 2)
    assert len(batch) == 2 and batch[0].blur_sigma == pytest.approx(ref.blur_sigma, abs=1e-4)
    buf = io.BytesIO()
    Image.fromarray(lr_of(photo(), 2, 0.6, 0)).save(buf, "JPEG", quality=85)
    jpeg = np.asarray(Image.open(buf))
    assert estimate_degradation(jpeg, 2).noise_level < 6  # compression is not noise


def test_large_images_are_estimated_from_a_bounded_sample() -> None:
    big = (np.random.default_rng(0).random((1500, 2000, 3)) * 255).astype(np.uint8)
    corners = blind._windows(as_input(big), blind.WINDOW, blind.MAX_WINDOWS)
    assert 1 < len(corners) <= blind.MAX_WINDOWS
    assert all(0 <= y <= 1500 - blind.WINDOW and 0 <= x <= 2000 - blind.WINDOW for y, x in corners)


def test_maps_follow_a_blur_ramp() -> None:
    hr = photo(360)
    s = 2
    hh, ww = hr.shape[0] // s, hr.shape[1] // s
    sigma = np.tile(np.linspace(0.2, 2.0, ww), (hh, 1))
    from udvd_triton.degradation import gaussian_kernels

    kernels = gaussian_kernels(torch.from_numpy(sigma.ravel())).view(hh, ww, 15, 15).numpy()
    lr = np.clip(np.round(degrade(hr, kernels, s, 0.0) * 255), 0, 255).astype(np.uint8)
    est = estimate_degradation(lr, s, maps=True)
    assert est.blur_map.shape == (hh, ww) and est.noise_map.shape == (hh, ww)
    left, right = est.blur_map[:, : ww // 4].mean(), est.blur_map[:, -ww // 4 :].mean()
    assert right > left + 0.4, (left, right)


def test_upscale_uses_the_estimate_and_given_values_win() -> None:
    model = UDVD.from_pretrained("udvd-x2-small")
    lr = lr_of(photo(120), 2, 1.0, 10)
    est = estimate_degradation(lr, 2)
    np.testing.assert_array_equal(model.upscale(lr), model.upscale(lr, est.blur_sigma, est.noise_level))
    assert not np.array_equal(model.upscale(lr, blur_sigma=0.2), model.upscale(lr))


def test_cli_without_degradation_flags_beats_bicubic_on_a_sharp_photo(tmp_path, capsys) -> None:
    """The README's first command on an ordinary sharp photo: told nothing, the default x2 model must beat bicubic
    (with the old fixed default, blur 1.0, it lost 4.7 dB to bicubic on such photos)."""
    hr = np.round(photo(192) * 255).astype(np.uint8)
    lr = np.clip(np.round(imresize(hr / 255.0, 0.5) * 255), 0, 255).astype(np.uint8)  # sharp: bicubic down only
    Image.fromarray(lr).save(tmp_path / "sharp.png")
    assert main(["upscale", str(tmp_path / "sharp.png"), "-o", str(tmp_path / "out.png"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "estimated blur sigma" in err
    out = Image.open(tmp_path / "out.png")
    used = json.loads(out.info["udvd-degradation"])
    assert set(used) >= {"blur_sigma", "noise_level"}
    bicubic = np.clip(np.round(imresize(lr / 255.0, 2) * 255), 0, 255).astype(np.uint8)
    assert psnr(np.asarray(out), hr, border=2) > psnr(bicubic, hr, border=2)
    assert main(["upscale", str(tmp_path / "sharp.png"), "-o", str(tmp_path / "q.png"), "--device", "cpu",
                 "--model", "udvd-x2-small", "-q"]) == 0
    assert capsys.readouterr().err == ""
