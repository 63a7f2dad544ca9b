"""ONNX export: ONNX Runtime on the CPU reproduces PyTorch, for both graph forms, at every scale and odd sizes."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from udvd_triton.cli import main
from udvd_triton.export import export_onnx, is_ours
from udvd_triton.inference import _sigma_codes

from conftest import tiny_model

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SIZES = [(1, 1), (7, 13), (301, 170)]  # one pixel, odd, several hundred pixels and not square


def run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny x2 / x4 models exported in the maps form, a tiny x3 one in the sigma form (one export each: a few
    seconds apiece)."""
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for scale, form in ((2, "maps"), (3, "sigma"), (4, "maps")):
        model = tiny_model(scale=scale).eval()
        out[scale] = (model, export_onnx(model, folder / f"x{scale}.onnx", form=form, name=f"tiny-x{scale}"), form)
    return out


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_onnx_runtime_reproduces_pytorch(exports, scale) -> None:
    model, path, form = exports[scale]
    g = torch.Generator().manual_seed(scale)
    for h, w in SIZES:
        image = torch.rand(2, 3, h, w, generator=g)
        if form == "maps":
            code = torch.randn(2, model.code_len, h, w, generator=g)
            noise = torch.rand(2, 1, h, w, generator=g) * 0.2
            feeds = {"image": image, "kernel_code": code, "noise_map": noise}
        else:
            sigma, level = torch.tensor([0.0, 1.7]), torch.tensor([3.0, 40.0])
            code = _sigma_codes(model.kernel_basis.double())(sigma.double().view(-1, 1, 1, 1)).float().expand(-1, -1, h, w)
            noise = (level / 255).view(-1, 1, 1, 1).expand(-1, 1, h, w)
            feeds = {"image": image, "blur_sigma": sigma, "noise_level": level}
        with torch.no_grad():
            want = model(image, code, noise)[-1].numpy()
        got = run(path, {k: v.numpy() for k, v in feeds.items()})
        assert got.shape == (2, 3, scale * h, scale * w)
        assert np.abs(got - want).max() <= 1e-4, (h, w)


def test_metadata_says_what_a_runtime_needs(exports) -> None:
    import onnx

    model, path, _ = exports[2]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["scale"] == "2" and props["model"] == "tiny-x2" and props["form"] == "maps"
    assert int(props["receptive_radius"]) == model.receptive_radius
    np.testing.assert_allclose(np.array(json.loads(props["kernel_basis"])), model.kernel_basis.double().numpy())
    assert json.loads(props["config"]) == model.config.to_dict() and is_ours(path)


def test_cli_exports_a_bundled_model_and_refuses_mistakes(tmp_path, capsys) -> None:
    out = tmp_path / "small.onnx"
    assert main(["export", "--model", "udvd-x2-small", "-o", str(out), "-q"]) == 0
    image = np.random.default_rng(0).random((1, 3, 9, 11), dtype=np.float32)
    import onnx

    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert len(props["source_sha256"]) == 64 and run(out, {
        "image": image, "kernel_code": np.zeros((1, 15, 9, 11), np.float32), "noise_map": np.zeros((1, 1, 9, 11), np.float32),
    }).shape == (1, 3, 18, 22)
    foreign = tmp_path / "theirs.onnx"
    foreign.write_bytes(b"not ours")
    for argv, message in (
        (["--model", "no-such-model", "-o", str(tmp_path / "a.onnx")], "unknown model"),
        (["--model", "udvd-x2-small", "-o", str(out)], "exists"),
        (["--model", "udvd-x2-small", "-o", str(foreign), "--overwrite"], "not an ONNX file udvd-triton exported"),
        (["--model", "udvd-x2-small", "-o", str(tmp_path / "b.onnx"), "--opset", "99"], "opset must be"),
        (["--model", "udvd-x2-small", "-o", str(tmp_path / "missing" / "deeper" / "c.txt")], "must end in .onnx"),
    ):
        assert main(["export", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("udvd: error: ") and message in err and err.count("\n") == 1, err
    assert foreign.read_bytes() == b"not ours"
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir(mode=0o500)
        assert main(["export", "--model", "udvd-x2-small", "-o", str(locked / "d.onnx")]) == 2
