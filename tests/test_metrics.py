"""udvd_triton.metrics against independent references: the PSNR formula on known inputs, skimage's SSIM and
rgb2ycbcr (the published BT.601 matrix)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.color import rgb2ycbcr
from skimage.metrics import structural_similarity

from udvd_triton.metrics import batch_psnr, psnr, rgb_to_y, ssim


def test_y_channel_matches_published_matrix():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    # skimage's rgb2ycbcr: Y = 16 + [65.481, 128.553, 24.966] . RGB with RGB in [0, 1]; MATLAB rounds to uint8.
    ref = np.floor(rgb2ycbcr(img)[..., 0] + 0.5)
    y = rgb_to_y(torch.from_numpy(img)).numpy()
    np.testing.assert_array_equal(y, ref)
    corners = rgb_to_y(torch.tensor([[0, 0, 0], [255, 255, 255], [255, 0, 0]], dtype=torch.float64)).tolist()
    assert corners == [16.0, 235.0, 81.0]  # studio range 16..235; pure red: 16 + 65.481 = 81.481 -> 81


def test_psnr_formula_on_known_inputs():
    a = np.full((16, 16), 100, np.uint8)
    b = a.copy()
    b[0, :] = 110  # 16 errors of 10 in 256 pixels: MSE = 6.25
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 6.25), abs=1e-12)
    assert psnr(a, b, border=1) == math.inf  # the changed row is cropped
    assert psnr(a, a) == math.inf
    # RGB, all channels: an offset of 3 on one channel of every pixel gives MSE = 9 / 3.
    rgb = np.full((8, 8, 3), 50, np.uint8)
    off = rgb.copy()
    off[..., 1] += 3
    assert psnr(rgb, off, y_channel=False) == pytest.approx(10 * math.log10(255**2 / 3.0), abs=1e-12)
    # On Y: green +3 shifts Y by 128.553 * 3 / 255 = 1.512 -> rounded levels differ by 1 or 2.
    y_a, y_b = (np.floor(16 + (65.481 * 50 + 128.553 * g + 24.966 * 50) / 255 + 0.5) for g in (50, 53))
    assert psnr(rgb, off) == pytest.approx(10 * math.log10(255**2 / (y_a - y_b) ** 2), abs=1e-12)


def test_float_images_convert_like_im2uint8():
    rng = np.random.default_rng(1)
    a = rng.random((20, 20, 3))
    b = np.clip(a + rng.normal(0, 0.05, a.shape), -0.1, 1.1)
    as_uint8 = [np.floor(np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8) for x in (a, b)]
    assert psnr(a, b) == psnr(*as_uint8)
    assert ssim(a, b, y_channel=False) == ssim(*as_uint8, y_channel=False)
    half = np.full((4, 4), 0.5 / 255)  # exactly half a level rounds up (MATLAB), not to even
    assert psnr(half, np.full((4, 4), 1 / 255)) == math.inf


@pytest.mark.parametrize(
    "shape,y_channel,border", [((48, 40, 3), True, 0), ((48, 40, 3), False, 4), ((33, 47), True, 2)]
)
def test_ssim_matches_skimage(shape, y_channel, border):
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    noisy = a.astype(np.int16) + rng.integers(-40, 41, shape)
    b = np.clip(noisy, 0, 255).astype(np.uint8)
    ours = ssim(a, b, border=border, y_channel=y_channel)

    def prep(x):
        x = x.astype(np.float64)
        if x.ndim == 3 and y_channel:
            x = np.floor(rgb2ycbcr(x.astype(np.uint8))[..., 0] + 0.5)
        return x[border : x.shape[0] - border, border : x.shape[1] - border]

    ref = structural_similarity(prep(a), prep(b), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=255, channel_axis=2 if prep(a).ndim == 3 else None)
    assert ours == pytest.approx(ref, abs=1e-12)
    assert 0 < ours < 1
    assert ssim(a, a, border=border, y_channel=y_channel) == pytest.approx(1.0, abs=1e-12)


def test_batch_psnr_equals_per_image_psnr():
    rng = np.random.default_rng(3)
    hr = torch.from_numpy(rng.random((3, 3, 20, 24)))
    sr = (hr + torch.from_numpy(rng.normal(0, 0.03, hr.shape))).float()
    out = batch_psnr(sr, hr, border=2)
    assert out.shape == (3,) and out.dtype == torch.float64
    for i in range(3):
        ref = psnr(sr[i].permute(1, 2, 0).numpy(), hr[i].permute(1, 2, 0).numpy(), border=2)
        assert float(out[i]) == pytest.approx(ref, abs=1e-10)
    assert float(batch_psnr(hr[:1], hr[:1])[0]) == math.inf
    gray = batch_psnr(sr[:, :1], hr[:, :1], y_channel=True)
    assert float(gray[0]) == pytest.approx(psnr(sr[0, 0].numpy(), hr[0, 0].numpy()), abs=1e-10)


@pytest.mark.parametrize(
    "a,b,kwargs,msg",
    [
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8), {}, "shape"),
        (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3)), {}, "dtype"),
        (np.zeros((8, 8, 3), np.uint16), np.zeros((8, 8, 3), np.uint16), {}, "uint16"),
        (np.zeros((3, 8, 8), np.uint8), np.zeros((3, 8, 8), np.uint8), {}, "HWC"),
        (np.full((8, 8), 200.0), np.full((8, 8), 200.0), {}, "0..255"),
        (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), {"border": 4}, "border"),
    ],
)
def test_metric_input_errors(a, b, kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        psnr(a, b, **kwargs)
    with pytest.raises(ValueError, match=msg):
        ssim(a, b, **kwargs)


def test_ssim_too_small_and_batch_errors():
    with pytest.raises(ValueError, match="11x11"):
        ssim(np.zeros((10, 30), np.uint8), np.zeros((10, 30), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        batch_psnr(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))
    with pytest.raises(ValueError, match="float"):
        batch_psnr(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
