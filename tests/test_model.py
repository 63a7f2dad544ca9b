"""UDVD model: architecture facts, variants, input errors, and equivalence with the reference implementation."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from udvd_triton import UDVD, convert_reference_state_dict
from udvd_triton.model import VARIANTS, multistage_l1_loss

from conftest import tiny_model


def inputs(n: int = 1, h: int = 6, w: int = 5, dtype: torch.dtype = torch.float32):
    return (
        torch.rand(n, 3, h, w, dtype=dtype),
        torch.randn(n, 15, h, w, dtype=dtype),
        torch.rand(n, 1, h, w, dtype=dtype) * 0.3,
    )


# --- A reference UDVD (x2) written from the description in API.md, to check conversion and equivalence. ---
class RefPixelConv(nn.Module):
    """Unfold k*k patches, multiply by each pixel's (k*k, s*s) kernel matrix, pixel-shuffle."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        n, c, h, w = image.shape
        k = int(round((kernel.shape[1] // self.scale**2) ** 0.5))
        p = (k - 1) // 2
        patches = F.pad(image, [p] * 4).unfold(2, k, 1).unfold(3, k, 1).permute(0, 2, 3, 1, 5, 4)
        mats = kernel.permute(0, 2, 3, 1).reshape(n, h, w, k * k, self.scale**2)
        out = torch.matmul(patches.reshape(n, h, w, c, k * k), mats).permute(0, 3, 4, 1, 2).reshape(n, -1, h, w)
        return F.pixel_shuffle(out, self.scale)


def ref_guide() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 1, 1)
    )


class RefUpDyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_conv = ref_guide()
        self.feat_residual = nn.Sequential(
            nn.Conv2d(160, 64, 3, 1, 1), nn.ReLU(), nn.PixelShuffle(2), nn.Conv2d(16, 3, 3, 1, 1)
        )
        self.feat_kernel = nn.Conv2d(160, 100, 3, 1, 1)
        self.pixel_conv = RefPixelConv(2)

    def forward(self, image, feats):
        cat = torch.cat([self.image_conv(image), feats], 1)
        return self.pixel_conv(image, self.feat_kernel(cat)) + self.feat_residual(cat)


class RefComDyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_conv = ref_guide()
        self.feat_conv = nn.Sequential(nn.PixelShuffle(2), nn.Conv2d(32, 128, 1))
        self.feat_residual = nn.Sequential(nn.Conv2d(160, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 3, 3, 1, 1))
        self.feat_kernel = nn.Conv2d(160, 25, 3, 1, 1)
        self.pixel_conv = RefPixelConv(1)

    def forward(self, image, feats):
        cat = torch.cat([self.image_conv(image), self.feat_conv(feats)], 1)
        return self.pixel_conv(image, self.feat_kernel(cat)) + self.feat_residual(cat)


class RefBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(128, 128, 3, 1, 1), nn.ReLU(), nn.Conv2d(128, 128, 3, 1, 1))

    def forward(self, x):
        return x + 0.1 * self.conv(x)


class RefUDVD(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Conv2d(19, 128, 3, 1, 1)
        self.body = nn.Sequential(*(RefBlock() for _ in range(15)))
        self.UpDyConv = RefUpDyConv()
        self.ComDyConv1 = RefComDyConv()
        self.ComDyConv2 = RefComDyConv()

    def forward(self, image, kernel, noise):
        head = self.head(torch.cat([image, kernel, noise], 1))
        feats = self.body(head) + head
        o1 = self.UpDyConv(image, feats)
        o2 = self.ComDyConv1(o1, feats)
        return o1, o2, self.ComDyConv2(o2, feats)


def test_parameter_count_matches_reference() -> None:
    ours = sum(p.numel() for p in UDVD(scale=2).parameters())
    ref = sum(p.numel() for p in RefUDVD().parameters())
    assert ours == ref == 4_835_999


def test_reference_weights_reproduce_reference_outputs() -> None:
    torch.manual_seed(1)
    ref = RefUDVD().eval()
    # Random weights with a larger spread than the default init, so that every branch matters in the output.
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.05)
    ours = UDVD(scale=2).eval()
    ours.load_state_dict(convert_reference_state_dict(ref.state_dict()), strict=True)
    args = inputs(n=2, h=9, w=7)
    with torch.no_grad():
        expected, got = ref(*args), ours(*args)
    assert len(got) == 3
    for e, g in zip(expected, got):
        assert g.shape == (2, 3, 18, 14)
        assert e.abs().max() > 1e-2  # the comparison is not vacuous
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_convert_handles_dataparallel_prefix_and_rejects_foreign_keys() -> None:
    sd = {"module." + k: v for k, v in RefUDVD().state_dict().items()}
    UDVD(scale=2).load_state_dict(convert_reference_state_dict(sd), strict=True)
    with pytest.raises(ValueError, match="tail.weight"):
        convert_reference_state_dict({**sd, "tail.weight": torch.zeros(1)})


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_and_scales_shapes(scale: int, variant: str) -> None:
    model = UDVD(scale=scale, channels=16, blocks=1, variant=variant)
    outs = model(*inputs(n=2, h=5, w=4))
    assert len(outs) == 1 + variant.count("D")
    for o in outs:
        assert o.shape == (2, 3, 5 * scale, 4 * scale)
        assert torch.isfinite(o).all()


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_paper_config_at_every_scale_builds(scale: int) -> None:
    model = UDVD(scale=scale)
    n = sum(p.numel() for p in model.parameters())
    # Only the upsampling stage's s*s-wide convs and the aligners differ from x2.
    s2, cat = scale * scale, 160
    upsampling = cat * 9 * (25 + 16) * s2 + (25 + 16) * s2 + 16 * 3 * 9 + 3
    per_pixel = -(-128 // s2)
    aligner = (128 * per_pixel * s2 + per_pixel * s2 if scale == 3 else 0) + per_pixel * 128 + 128
    x2_upsampling, x2_aligner = cat * 9 * 41 * 4 + 41 * 4 + 16 * 3 * 9 + 3, 32 * 128 + 128
    assert n == 4_835_999 + upsampling - x2_upsampling + 2 * (aligner - x2_aligner)
    aligner = model.refine[0].feat_conv
    # x2/x4: parameter-free shuffle then 1x1 conv; x3 needs a widening 1x1 conv first (9 does not divide 128).
    assert isinstance(aligner[0], nn.Conv2d) == (scale == 3)


def test_dynamic_upsampling_is_the_api_op() -> None:
    """With the residual branch zeroed, the U stage output is exactly dynamic_filter of the LR image."""
    from udvd_triton import dynamic_filter

    model = tiny_model(scale=3, variant="U")
    with torch.no_grad():
        model.upsample.feat_residual[-1].weight.zero_()
        model.upsample.feat_residual[-1].bias.zero_()
    image, code, noise = inputs(h=4, w=6)
    head = model.head(torch.cat([image, code, noise], 1))
    feats = model.body(head) + head
    kernels = model.upsample.feat_kernel(torch.cat([model.upsample.image_conv(image), feats], 1))
    expected = dynamic_filter(image, kernels, scale=3, kernel_size=5)
    torch.testing.assert_close(model(image, code, noise)[0], expected)


def test_gradients_reach_every_parameter() -> None:
    model = tiny_model(blocks=2)
    image, code, noise = inputs(h=6, w=6)
    target = torch.rand(1, 3, 12, 12)
    loss = multistage_l1_loss(model(image, code, noise), target, weights=[0.5, 0.5, 1.0])
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_multistage_loss_value() -> None:
    t = torch.zeros(1, 3, 2, 2)
    outs = (torch.full_like(t, 1.0), torch.full_like(t, 0.5), torch.full_like(t, -0.25))
    assert multistage_l1_loss(outs, t).item() == pytest.approx(1.75)
    assert multistage_l1_loss(outs, t, [0.0, 0.0, 2.0]).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 loss weights for 3"):
        multistage_l1_loss(outs, t, [1.0, 1.0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"scale": 5}, "scales"), ({"variant": "UDDD"}, "variant"), ({"kernel_size": 4}, "odd")],
)
def test_bad_config_raises(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        UDVD(**kwargs)


def test_bad_inputs_raise() -> None:
    model = tiny_model()
    image, code, noise = inputs(h=4, w=4)
    with pytest.raises(ValueError, match="image must have 3 channels"):
        model(torch.rand(1, 4, 4, 4), code, noise)
    with pytest.raises(ValueError, match="kernel_code must have 15 channels"):
        model(image, code[:, :10], noise)
    with pytest.raises(ValueError, match="noise_map must match"):
        model(image, code, noise[..., :3])
    with pytest.raises(ValueError, match="floating point"):
        model((image * 255).to(torch.uint8), code, noise)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_kernel_basis_keeps_its_values_under_a_dtype_change(dtype: torch.dtype) -> None:
    """A bfloat16 model encoded blur kernels with a basis rounded to 8 bits; a float16 one saved a basis that
    fine-tuning then refused."""
    from udvd_triton.model import default_kernel_basis

    model = tiny_model().to(dtype)
    assert next(model.parameters()).dtype == dtype
    assert model.kernel_basis.dtype == torch.float32 and torch.equal(model.kernel_basis, default_kernel_basis(15))
    assert model.to("meta").kernel_basis.device.type == "meta"  # it still follows the device


def test_torch_compile_matches_eager_on_cpu() -> None:
    """The CPU (reference-op) path compiles as one graph and computes what eager does."""
    model = tiny_model(kernel_size=3).eval()
    args = inputs(h=8, w=7)
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        for e, g in zip(model(*args), compiled(*args)):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_compile_matches_eager_on_cuda(dtype: torch.dtype) -> None:
    """The CUDA path (Triton op inside the graph) compiles and computes what eager does, forward and backward."""
    model = UDVD(scale=2, channels=16, blocks=2).cuda()
    args = [t.cuda() for t in inputs(h=37, w=29)]
    compiled = torch.compile(model)
    with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
        eager, got = model(*args)[-1], compiled(*args)[-1]
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, eager, rtol=tol, atol=tol)
    grads = [torch.autograd.grad(out.float().square().mean(), model.head.weight)[0] for out in (eager, got)]
    torch.testing.assert_close(grads[1], grads[0], rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_fresh_model_starts_as_bicubic(scale: int) -> None:
    """A new network's dynamic stages start as MATLAB bicubic upsampling and identity refinement."""
    from udvd_triton.degradation import imresize
    from udvd_triton.model import filter_taps

    assert torch.equal(filter_taps(1, 5), F.one_hot(torch.tensor(12), 25).float())  # centre tap (dx=dy=2)
    torch.manual_seed(0)
    model = UDVD(scale=scale, channels=16, blocks=1).double().eval()
    x = torch.rand(1, 3, 12, 14, dtype=torch.float64)
    with torch.no_grad():
        outs = model(x, torch.zeros(1, 15, 12, 14, dtype=torch.float64), torch.zeros(1, 1, 12, 14, dtype=torch.float64))
    ref = torch.from_numpy(imresize(x[0].permute(1, 2, 0).numpy(), scale)).permute(2, 0, 1)[None]
    inner = (..., slice(2 * scale, -2 * scale), slice(2 * scale, -2 * scale))  # the op zero-pads, imresize mirrors
    for out in outs:  # only the 1e-2-scaled random weights move it off bicubic
        assert (out - ref)[inner].abs().max() < 0.05
    for stage in [model.upsample, *model.refine]:
        stage.feat_kernel.weight.data.zero_()
        stage.feat_residual[-1].weight.data.zero_()
    with torch.no_grad():
        outs = model(x, torch.zeros(1, 15, 12, 14, dtype=torch.float64), torch.zeros(1, 1, 12, 14, dtype=torch.float64))
    for out in outs:
        torch.testing.assert_close(out[inner], ref[inner], atol=1e-6, rtol=0)
