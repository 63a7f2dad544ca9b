"""Inference: image kinds in/out, degradation maps, seamless tiling, receptive field, Immerkaer noise estimation."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from udvd_triton import UDVD
from udvd_triton.degradation import imresize, isotropic_gaussian, kernel_code
from udvd_triton.inference import auto_tile_size, estimate_noise_level, receptive_radius


def spread_model(seed: int = 0, **config) -> UDVD:
    """A tiny model with weights spread wider than the default init, so every branch and pixel matters, and an
    output centred on 0.5, so that little of it is clipped."""
    torch.manual_seed(seed)
    model = UDVD(**{"scale": 2, "n_feats": 8, "n_blocks": 1, **config}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
        (model.refine[-1] if len(model.refine) else model.upsample).feat_residual[-1].bias.fill_(0.5)
    return model


def reference_sr(model: UDVD, rgb: np.ndarray, sigma: float, noise: float) -> np.ndarray:
    """Model output (unclipped) for an HWC float RGB image, with the code from degradation.kernel_code, in float64."""
    h, w, _ = rgb.shape
    code = torch.as_tensor(kernel_code(isotropic_gaussian(15, sigma)), dtype=torch.float64)
    m = model.double()
    with torch.no_grad():
        out = m(
            torch.from_numpy(rgb).double().permute(2, 0, 1)[None],
            code.view(1, -1, 1, 1).expand(1, -1, h, w),
            torch.full((1, 1, h, w), noise / 255, dtype=torch.float64),
        )[-1]
    model.float()
    return out[0].permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def model() -> UDVD:
    return spread_model()


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.random.default_rng(0).random((11, 13, 3))


# --- receptive field and tiling ---


@pytest.mark.parametrize(
    "config",
    [
        dict(scale=2, n_blocks=0, variant="UDD"),
        dict(scale=2, n_blocks=2, variant="UDD"),
        dict(scale=3, n_blocks=1, variant="UD"),
        dict(scale=4, n_blocks=0, variant="D", kernel_size=7),
        dict(scale=2, n_blocks=0, variant="U", kernel_size=11),
        dict(scale=2, n_blocks=0, variant="baseline"),
    ],
)
def test_receptive_radius_bounds_the_gradient_support(config) -> None:
    """d(one output pixel)/d(input) is zero farther than receptive_radius LR pixels from the pixel's LR cell."""
    model = spread_model(**config).double()
    h = w = 2 * receptive_radius(model.config) + 9
    image = torch.rand(1, 3, h, w, dtype=torch.float64, requires_grad=True)
    code, noise = torch.randn(1, 15, h, w, dtype=torch.float64), torch.rand(1, 1, h, w, dtype=torch.float64)
    s, c = model.scale, h // 2
    model(image, code, noise)[-1][0, :, s * c + s - 1, s * c].sum().backward()
    rows, cols = torch.nonzero(image.grad[0].abs().sum(0), as_tuple=True)
    reach = max((rows - c).abs().max().item(), (cols - c).abs().max().item())
    assert 0 < reach <= receptive_radius(model.config)
    assert reach >= receptive_radius(model.config) - 3  # and not grossly loose


@pytest.mark.parametrize(("scale", "tile", "size"), [(2, 5, (23, 17)), (2, 8, (19, 30)), (3, 7, (15, 22))])
def test_tiled_equals_untiled(scale: int, tile: int, size: tuple[int, int]) -> None:
    model = spread_model(scale=scale)
    img = torch.rand(2, 3, *size)
    whole = model.upscale(img, blur_sigma=1.3, noise_level=10)
    tiled = model.upscale(img, blur_sigma=1.3, noise_level=10, tile=tile)
    assert tiled.shape == (2, 3, scale * size[0], scale * size[1])
    assert whole.std() > 0.05  # not a flat, vacuous output
    assert (tiled - whole).abs().max() <= 1e-4


def test_auto_tile_size_grows_with_memory(model: UDVD) -> None:
    small, large = auto_tile_size(model, 2**28, torch.float32), auto_tile_size(model, 2**34, torch.float32)
    assert 16 <= small < large
    assert auto_tile_size(model, 2**28, torch.float16) > small


# --- image kinds ---


def test_float_numpy_matches_reference(model: UDVD, rgb: np.ndarray) -> None:
    out = model.upscale(rgb, blur_sigma=1.6, noise_level=20)
    assert 0.1 < out.mean() < 0.9 and out.std() > 0.02  # a non-trivial, mostly unclipped output
    assert out.dtype == np.float64 and out.shape == (22, 26, 3)
    np.testing.assert_allclose(out, reference_sr(model, rgb, 1.6, 20).clip(0, 1), atol=1e-5)
    assert 0 <= out.min() and out.max() <= 1


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_numpy_rounds_to_same_dtype(model: UDVD, rgb: np.ndarray, dtype) -> None:
    top = np.iinfo(dtype).max
    img = np.round(rgb * top).astype(dtype)
    out = model.upscale(img, blur_sigma=1.0)
    assert out.dtype == dtype and out.shape == (22, 26, 3)
    expected = np.round(reference_sr(model, img / top, 1.0, 0).clip(0, 1) * top)
    assert np.abs(out.astype(np.int64) - expected).max() <= 1


def test_pil_and_torch_kinds(model: UDVD, rgb: np.ndarray) -> None:
    img8 = np.round(rgb * 255).astype(np.uint8)
    pil = model.upscale(Image.fromarray(img8))
    assert isinstance(pil, Image.Image) and pil.mode == "RGB" and pil.size == (26, 22)
    np.testing.assert_array_equal(np.asarray(pil), model.upscale(img8))
    chw = torch.from_numpy(rgb).permute(2, 0, 1).float()
    out = model.upscale(chw)
    assert out.shape == (3, 22, 26) and out.dtype == torch.float32
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), reference_sr(model, rgb, 1.0, 0).clip(0, 1), atol=1e-5)
    batch = model.upscale(torch.stack([chw, chw.flip(-1)]).double())
    assert batch.shape == (2, 3, 22, 26) and batch.dtype == torch.float64
    torch.testing.assert_close(batch[0].float(), out, atol=1e-5, rtol=0)


def test_gray_is_replicated_and_averaged_back(model: UDVD, rgb: np.ndarray) -> None:
    gray = rgb[..., 0]
    out = model.upscale(gray)
    assert out.shape == (22, 26)
    expected = reference_sr(model, np.repeat(gray[..., None], 3, axis=2), 1.0, 0).mean(2).clip(0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    pil = model.upscale(Image.fromarray(np.round(gray * 255).astype(np.uint8)))
    assert pil.mode == "L" and pil.size == (26, 22)


def test_alpha_is_resized_separately(model: UDVD, rgb: np.ndarray) -> None:
    alpha = np.random.default_rng(1).random((11, 13, 1))
    out = model.upscale(np.concatenate([rgb, alpha], 2))
    assert out.shape == (22, 26, 4)
    np.testing.assert_allclose(out[..., :3], reference_sr(model, rgb, 1.0, 0).clip(0, 1), atol=1e-5)
    expected_alpha = imresize(torch.from_numpy(alpha).permute(2, 0, 1)[None].float(), 2)[0, 0].clamp(0, 1)
    np.testing.assert_allclose(out[..., 3], expected_alpha.numpy(), atol=1e-6)
    rgba = Image.fromarray(np.round(np.concatenate([rgb, alpha], 2) * 255).astype(np.uint8), "RGBA")
    assert model.upscale(rgba).mode == "RGBA"


def test_kernel_argument_and_checkpoint_basis(tmp_path, model: UDVD, rgb: np.ndarray) -> None:
    k = isotropic_gaussian(15, 2.0)
    by_sigma = model.upscale(rgb, blur_sigma=2.0)
    np.testing.assert_allclose(model.upscale(rgb, kernel=k * 3), by_sigma, atol=1e-6)  # normalised
    np.testing.assert_allclose(model.upscale(rgb, kernel=torch.from_numpy(k)), by_sigma, atol=1e-6)
    # A checkpoint trained with another basis encodes kernels with that basis.
    other = spread_model()
    q, _ = torch.linalg.qr(torch.randn(225, 15, dtype=torch.float64))
    other.kernel_basis.copy_(q.T)
    other.save_pretrained(tmp_path)
    loaded = UDVD.from_pretrained(tmp_path)
    code = q.T @ torch.from_numpy(k).flatten()
    with torch.no_grad():
        expected = loaded.double()(
            torch.from_numpy(rgb).permute(2, 0, 1)[None],
            code.view(1, 15, 1, 1).expand(1, 15, 11, 13),
            torch.zeros(1, 1, 11, 13, dtype=torch.float64),
        )[-1][0].permute(1, 2, 0).clamp(0, 1).numpy()
    np.testing.assert_allclose(loaded.upscale(rgb, blur_sigma=2.0), expected, atol=1e-9)
    assert np.abs(expected - by_sigma).max() > 1e-3


# --- noise estimation ---


@pytest.mark.parametrize("sigma", [2.0, 5.0, 15.0, 30.0])
def test_immerkaer_recovers_known_noise(sigma: float) -> None:
    rng = np.random.default_rng(int(sigma))
    y, x = np.mgrid[0:240, 0:320]
    clean = 0.5 + 0.15 * np.sin(x / 25.0) * np.cos(y / 35.0) + 0.1 * (x / 320)  # smooth content
    noisy = clean[..., None] + rng.normal(0, sigma / 255, (240, 320, 3))
    assert estimate_noise_level(noisy) == pytest.approx(sigma, rel=0.04)
    assert estimate_noise_level(torch.from_numpy(noisy).permute(2, 0, 1)) == pytest.approx(sigma, rel=0.04)


def test_immerkaer_on_a_noiseless_plane_is_zero() -> None:
    y, x = np.mgrid[0:20, 0:30]
    assert estimate_noise_level((0.2 + 0.01 * x + 0.02 * y) / 2) == pytest.approx(0, abs=1e-9)


def test_auto_noise_uses_the_estimate(model: UDVD, rgb: np.ndarray) -> None:
    level = estimate_noise_level(rgb)
    np.testing.assert_array_equal(model.upscale(rgb, noise_level="auto"), model.upscale(rgb, noise_level=level))


# --- errors ---


@pytest.mark.parametrize(
    ("img", "kwargs", "match"),
    [
        (np.zeros((4, 4, 3), np.int32), {}, "uint8, uint16 or float"),
        (np.zeros((4, 4, 5)), {}, "C in 1..4"),
        (torch.zeros(3, 4, 4, dtype=torch.uint8), {}, "floating point"),
        (torch.zeros(4, 4), {}, r"\(C, H, W\)"),
        (Image.new("CMYK", (4, 4)), {}, "mode 'CMYK'"),
        ([[0.0]], {}, "PIL image, numpy array or torch tensor"),
        (np.zeros((4, 4, 3)), {"noise_level": "loud"}, "noise_level"),
        (np.zeros((4, 4, 3)), {"noise_level": 300}, "0..255"),
        (np.zeros((4, 4, 3)), {"blur_sigma": 0}, "blur_sigma"),
        (np.zeros((4, 4, 3)), {"kernel": np.ones((7, 7))}, r"\(15, 15\)"),
        (np.zeros((4, 4, 3)), {"kernel": np.zeros((15, 15))}, "positive sum"),
        (np.zeros((4, 4, 3)), {"tile": 0}, "tile"),
    ],
)
def test_bad_arguments(model: UDVD, img, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        model.upscale(img, **kwargs)


def test_receptive_radius_formula_for_the_paper_model() -> None:
    # head 1 + 15 blocks * 2 = 31 LR; upsampling +2; two refinement stages reach 5 HR each: ceil(10 / 2) = 5.
    assert receptive_radius(UDVD(scale=2).config) == 31 + 2 + math.ceil(10 / 2)
