"""Model zoo: save/load round trips, the registry, the Hugging Face cache path, torch.hub, and every load error."""

import json
import shutil
from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import torch
from safetensors.torch import save_file

import udvd_triton
from udvd_triton import UDVD, list_models
from udvd_triton.degradation import pca_basis
from udvd_triton.checkpoint import CheckpointError
from udvd_triton.registry import default_model, load_registry, model_info

from conftest import COMMIT, ROOT, TINY, assert_same_weights, make_hf_cache, registry_entry, tiny_model, write_registry

@pytest.fixture
def checkpoint(tmp_path: Path) -> tuple[UDVD, Path]:
    model = tiny_model()
    model.save_pretrained(tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


@pytest.fixture
def offline_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


# --- round trips ---


def test_save_pretrained_writes_hf_layout_with_config_and_basis(checkpoint) -> None:
    model, path = checkpoint
    assert {"model.safetensors", "config.json"} <= {p.name for p in path.iterdir()}
    assert json.loads((path / "config.json").read_text()) == model.config.to_dict()
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["udvd_config"]) == model.config.to_dict()
        basis = f.get_tensor("kernel_basis")
    torch.testing.assert_close(basis, torch.as_tensor(pca_basis(), dtype=torch.float32))


def test_from_pretrained_directory_and_file(checkpoint) -> None:
    model, path = checkpoint
    for source in (path, str(path), path / "model.safetensors"):
        loaded = UDVD.from_pretrained(source)
        assert not loaded.training and loaded.config == model.config
        assert_same_weights(model, loaded)


def test_lone_safetensors_file_carries_its_config(checkpoint, tmp_path: Path) -> None:
    model, path = checkpoint
    shutil.copy(path / "model.safetensors", tmp_path / "alone.safetensors")
    assert_same_weights(model, UDVD.from_pretrained(tmp_path / "alone.safetensors"))


def test_dtype_and_outputs_after_reload(checkpoint) -> None:
    model, path = checkpoint
    half = UDVD.from_pretrained(path, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in half.parameters())
    x = (torch.rand(1, 3, 5, 4), torch.randn(1, 15, 5, 4), torch.rand(1, 1, 5, 4))
    with torch.no_grad():
        torch.testing.assert_close(half(*(t.double() for t in x))[-1].float(), model(*x)[-1], rtol=1e-5, atol=1e-6)


def test_custom_kernel_basis_travels_in_the_checkpoint(tmp_path: Path) -> None:
    model = tiny_model()
    q, _ = torch.linalg.qr(torch.randn(225, 15, dtype=torch.float64))
    model.kernel_basis.copy_(q.T)
    model.save_pretrained(tmp_path)
    torch.testing.assert_close(UDVD.from_pretrained(tmp_path).kernel_basis, q.T.float())


# --- registry ---


def test_registry_name_by_argument_and_environment(checkpoint, monkeypatch) -> None:
    model, path = checkpoint
    # "file" is relative to the manifest's directory
    registry = write_registry(path / "reg.json", [registry_entry("tiny-x2", path / "model.safetensors")])
    assert_same_weights(model, UDVD.from_pretrained("tiny-x2", registry=registry))
    monkeypatch.setenv("UDVD_REGISTRY", str(registry))
    assert list_models() == udvd_triton.list_models() == ["tiny-x2"]
    assert model_info("tiny-x2").training == "test: 0 steps"
    assert_same_weights(model, UDVD.from_pretrained("tiny-x2", scale=2))


def test_bundled_registry_is_valid_and_every_entry_is_reachable(monkeypatch) -> None:
    monkeypatch.delenv("UDVD_REGISTRY", raising=False)
    for entry in load_registry().values():
        assert entry.path.is_file() or entry.hf_repo, entry.name
        assert entry.config.scale == entry.scale


def test_unknown_name_lists_models_and_suggests_closest(checkpoint, tmp_path: Path) -> None:
    _, path = checkpoint
    registry = write_registry(
        path / "reg.json",
        [registry_entry("udvd-x2", path / "model.safetensors"), registry_entry("other", path / "model.safetensors")],
    )
    with pytest.raises(ValueError, match=r"unknown model 'udvd-x3' \(did you mean 'udvd-x2'\?\).*udvd-x2, other"):
        UDVD.from_pretrained("udvd-x3", registry=registry)
    empty = write_registry(tmp_path / "empty.json", [])
    with pytest.raises(ValueError, match="registry is empty"):
        UDVD.from_pretrained("udvd-x2", registry=empty)


def test_registry_checksum_mismatch(checkpoint) -> None:
    _, path = checkpoint
    entry = registry_entry("tiny", path / "model.safetensors", sha256="0" * 64)
    registry = write_registry(path / "reg.json", [entry])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        UDVD.from_pretrained("tiny", registry=registry)


def test_registry_missing_file_and_config_mismatch(checkpoint) -> None:
    _, path = checkpoint
    registry = write_registry(path / "reg.json", [registry_entry("gone", path / "model.safetensors", file="gone.st")])
    with pytest.raises(FileNotFoundError, match="gone.st"):
        UDVD.from_pretrained("gone", registry=registry)
    wrong = registry_entry("wrong", path / "model.safetensors", config={**TINY, "channels": 16})
    registry = write_registry(path / "reg.json", [wrong])
    with pytest.raises(CheckpointError, match=r"differs .* in \['channels'\]"):
        UDVD.from_pretrained("wrong", registry=registry)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"sha256": "abc"}, "sha256"),
        ({"scale": 3}, "scale 3 differs"),
        ({"extra_field": 1}, "unknown fields"),
        ({"license": None}, "'license' must be a str"),
        ({"file": "../../etc/passwd"}, "must be a relative path inside the registry's folder"),
        ({"file": "/etc/passwd"}, "must be a relative path inside the registry's folder"),
        ({"file": "sub/../../x.safetensors"}, "no '..'"),
        ({"hf_repo": "owner/repo@../../.."}, r"entry 0 \(m\): invalid Hugging Face revision '../../..'"),
        ({"hf_repo": "../repo"}, "invalid Hugging Face repo"),
        ({"default": "yes"}, "'default' must be a bool"),
    ],
)
def test_invalid_registry_entries(checkpoint, change, match) -> None:
    _, path = checkpoint
    registry = write_registry(path / "reg.json", [registry_entry("m", path / "model.safetensors", **change)])
    with pytest.raises(ValueError, match=match):
        list_models(registry)


# --- Hugging Face cache (offline) ---


def test_hf_repo_from_offline_cache(checkpoint, offline_hf_cache: Path) -> None:
    model, path = checkpoint
    make_hf_cache(offline_hf_cache, "someone/udvd-tiny", path)
    for source in ("hf:someone/udvd-tiny", f"hf:someone/udvd-tiny@{COMMIT}", "hf:someone/udvd-tiny@main"):
        loaded = UDVD.from_pretrained(source)
        assert not loaded.training
        assert_same_weights(model, loaded)
    with pytest.raises(FileNotFoundError, match="someone/absent"):
        UDVD.from_pretrained("hf:someone/absent")
    with pytest.raises(ValueError, match="invalid Hugging Face repo"):
        UDVD.from_pretrained("hf:no-slash")
    for bad in ("@../../..", "@main/../x", "@", "@/abs", "@a b"):
        with pytest.raises(ValueError, match="invalid Hugging Face revision"):
            UDVD.from_pretrained(f"hf:someone/udvd-tiny{bad}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_from_pretrained_on_a_missing_device_fails_before_loading(checkpoint, monkeypatch) -> None:
    _, path = checkpoint
    monkeypatch.setattr("udvd_triton.hub.read_checkpoint", lambda *a: pytest.fail("read before the device check"))
    with pytest.raises(ValueError, match=r"device 'cuda' requested but CUDA is not available .*use device='cpu'"):
        UDVD.from_pretrained(path, device="cuda")
    with pytest.raises(ValueError, match="invalid device 'gpu'"):
        UDVD.from_pretrained(path, device="gpu")
    with pytest.raises(ValueError, match="dtype must be a floating-point"):
        UDVD.from_pretrained(path, dtype=torch.int8)


def test_registry_entry_fetched_from_hf_cache_is_verified(checkpoint, offline_hf_cache: Path, tmp_path) -> None:
    model, path = checkpoint
    make_hf_cache(offline_hf_cache, "someone/udvd-tiny", path)
    entry = registry_entry("tiny", path / "model.safetensors", file="model.safetensors", hf_repo="someone/udvd-tiny")
    registry = write_registry(tmp_path / "reg.json", [entry])  # no model.safetensors beside this manifest
    assert_same_weights(model, UDVD.from_pretrained("tiny", registry=registry))
    registry = write_registry(tmp_path / "reg.json", [{**entry, "sha256": "1" * 64}])
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        UDVD.from_pretrained("tiny", registry=registry)


def test_torch_hub_entry_point(checkpoint) -> None:
    model, path = checkpoint
    loaded = torch.hub.load(str(ROOT), "udvd", name=str(path), source="local", trust_repo=True)
    assert_same_weights(model, loaded)
    fresh = torch.hub.load(str(ROOT), "udvd", pretrained=False, scale=3, channels=8, blocks=1, source="local")
    assert fresh.scale == 3
    with pytest.raises(CheckpointError, match="x2 model, but x4"):
        torch.hub.load(str(ROOT), "udvd", name=str(path), scale=4, source="local")


def test_default_model_per_scale(checkpoint, monkeypatch) -> None:
    _, path = checkpoint
    weights = path / "model.safetensors"
    x3 = {**TINY, "scale": 3}
    registry = write_registry(path / "reg.json", [
        registry_entry("a", weights), registry_entry("b", weights, default=True), registry_entry("c", weights, scale=3, config=x3),
    ])
    assert default_model(2, registry) == "b"  # the marked one
    assert default_model(3, registry) == "c"  # the only x3 model
    with pytest.raises(ValueError, match=r"no default x4 model \(x4 models: none\); name one with --model"):
        default_model(4, registry)
    with pytest.raises(ValueError, match="a second default model for x2"):
        write_registry(path / "reg.json", [registry_entry(n, weights, default=True) for n in "ab"])
        load_registry(path / "reg.json")
    # the bundled registry has a default for x2 (what `udvd upscale` and torch.hub use without a name)
    monkeypatch.delenv("UDVD_REGISTRY", raising=False)
    assert load_registry()[default_model(2)].default
    assert torch.hub.load(str(ROOT), "udvd", source="local").scale == 2


# --- errors on bad files ---


def test_missing_paths(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        UDVD.from_pretrained(tmp_path / "nothing.safetensors")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        UDVD.from_pretrained(tmp_path)


def test_truncated_and_corrupted_files(checkpoint, tmp_path: Path) -> None:
    _, path = checkpoint
    data = (path / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00\x13garbage" * 100)
    for name in ("cut.safetensors", "junk.safetensors"):
        with pytest.raises(CheckpointError, match=f"cannot read checkpoint .*{name}"):
            UDVD.from_pretrained(tmp_path / name)


def _save_state(path: Path, state: dict, config: dict) -> Path:
    save_file(state, str(path), metadata={"format": "pt", "udvd_config": json.dumps(config)})
    return path


def test_missing_extra_and_misshapen_tensors_are_named(tmp_path: Path) -> None:
    state = {k: v.clone() for k, v in tiny_model().state_dict().items()}
    state.pop("head.bias")
    state["tail.weight"] = torch.zeros(2)
    state["body.0.conv.0.weight"] = torch.zeros(8, 8, 5, 5)
    state["upsample.feat_kernel.bias"] = state["upsample.feat_kernel.bias"].long()
    path = _save_state(tmp_path / "bad.safetensors", state, TINY)
    with pytest.raises(CheckpointError) as info:
        UDVD.from_pretrained(path)
    message = str(info.value)
    for expected in (
        "missing tensors: head.bias",
        "unexpected tensors: tail.weight",
        "body.0.conv.0.weight (8, 8, 5, 5) (model expects (8, 8, 3, 3))",
        "not floating point: upsample.feat_kernel.bias",
    ):
        assert expected in message


def test_non_finite_tensors_are_named(tmp_path: Path) -> None:
    state = dict(tiny_model().state_dict())
    state["head.weight"] = state["head.weight"].clone()
    state["head.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN or infinite values in: head.weight"):
        UDVD.from_pretrained(_save_state(tmp_path / "nan.safetensors", state, TINY))


def test_config_that_does_not_fit_the_tensors(checkpoint, tmp_path: Path) -> None:
    _, path = checkpoint
    state = dict(tiny_model().state_dict())
    with pytest.raises(CheckpointError, match=r"wrong shapes: head.weight \(8, 19, 3, 3\) \(model expects \(16"):
        UDVD.from_pretrained(_save_state(tmp_path / "a.safetensors", state, {**TINY, "channels": 16}))
    ud_state = dict(tiny_model(variant="UD").state_dict())
    with pytest.raises(CheckpointError, match=r"missing tensors: refine.1"):
        UDVD.from_pretrained(_save_state(tmp_path / "b.safetensors", ud_state, TINY))
    with pytest.raises(CheckpointError, match="invalid config"):
        UDVD.from_pretrained(_save_state(tmp_path / "c.safetensors", state, {**TINY, "scale": 5}))
    with pytest.raises(CheckpointError, match=r"does not take: \['width'\]"):
        UDVD.from_pretrained(_save_state(tmp_path / "d.safetensors", state, {**TINY, "width": 3}))
    # config.json beside the file disagrees with the file's metadata
    (path / "config.json").write_text(json.dumps({**TINY, "blocks": 2}))
    with pytest.raises(CheckpointError, match=r"differs .* in \['blocks'\]"):
        UDVD.from_pretrained(path)


def test_no_config_anywhere(tmp_path: Path) -> None:
    save_file(dict(tiny_model().state_dict()), str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointError, match="no model config found"):
        UDVD.from_pretrained(tmp_path / "bare.safetensors")


def test_scale_asked_for_must_match(checkpoint) -> None:
    _, path = checkpoint
    with pytest.raises(CheckpointError, match="x2 model, but x3 was asked for"):
        UDVD.from_pretrained(path, scale=3)
    assert UDVD.from_pretrained(path, scale=2).scale == 2


def test_reference_conversion_carries_the_default_basis() -> None:
    from udvd_triton import convert_reference_state_dict

    sd = {k: v for k, v in UDVD(scale=2).state_dict().items() if k != "kernel_basis"}
    prefixes = {"upsample.": "UpDyConv.", "refine.0.": "ComDyConv1.", "refine.1.": "ComDyConv2."}
    ref = {}
    for key, value in sd.items():
        old = next((p for p in prefixes if key.startswith(p)), "")
        ref[prefixes.get(old, "") + key[len(old):]] = value
    converted = convert_reference_state_dict(ref)
    torch.testing.assert_close(converted["kernel_basis"], torch.as_tensor(pca_basis(), dtype=torch.float32))


def test_bundled_models_load_offline_and_restore_a_degraded_photo(monkeypatch) -> None:
    """Every bundled checkpoint passes its sha256 check and loads; on a held-out photo degraded with blur 1.2 and
    noise 15 it beats bicubic, as its model card reports (no network: HF_HUB_OFFLINE)."""
    import numpy as np
    import skimage.data

    from udvd_triton.degradation import degrade, imresize, isotropic_gaussian
    from udvd_triton.metrics import psnr

    monkeypatch.delenv("UDVD_REGISTRY", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hr = skimage.data.chelsea()[:300, :444].astype(np.float64) / 255  # sides divisible by 2, 3 and 4
    for name, entry in load_registry().items():
        if not entry.path.is_file():
            continue
        model = UDVD.from_pretrained(name)
        s = entry.scale
        lr = degrade(hr, isotropic_gaussian(15, 1.2), s, 15, rng=np.random.default_rng(0))
        lr = np.clip(lr, 0, 1).astype(np.float32)
        sr = model.upscale(lr, blur_sigma=1.2, noise_level=15)
        bicubic = np.clip(imresize(lr.astype(np.float64), s), 0, 1)
        assert psnr(sr, hr, border=s) > psnr(bicubic, hr, border=s) + 1.0, name


def test_bundled_models_keep_the_training_basis() -> None:
    """Fine-tuning refuses a model whose kernel-PCA basis is not the synthesis's: every bundled model can be
    fine-tuned (the first float16 udvd-x2 had its basis rounded to float16)."""
    basis = torch.as_tensor(pca_basis(), dtype=torch.float32)
    for name, entry in load_registry().items():
        if entry.path.is_file():
            assert torch.equal(UDVD.from_pretrained(name).kernel_basis, basis[: entry.config.code_len]), name


# --- sharded and float16 checkpoints ---


def test_paper_size_weights_are_sharded_under_16_mib(tmp_path: Path) -> None:
    """The paper model (18.4 MiB of float32) is written as <= 16 MiB shards with a Hugging Face index, and loads."""
    from udvd_triton.checkpoint import MAX_SHARD_BYTES

    model = UDVD(scale=2)
    model.save_pretrained(tmp_path / "big")
    files = sorted(p.name for p in (tmp_path / "big").glob("*.safetensors"))
    assert files == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    assert all((tmp_path / "big" / f).stat().st_size <= MAX_SHARD_BYTES for f in files)
    index = json.loads((tmp_path / "big" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(model.state_dict()) and set(index["weight_map"].values()) == set(files)
    assert index["metadata"]["total_size"] == sum(v.numel() * 4 for v in model.state_dict().values())
    assert_same_weights(model, UDVD.from_pretrained(tmp_path / "big"))


def assert_float16_parameters(model: UDVD, loaded: UDVD) -> None:
    """``loaded`` came from a float16 save of ``model``: parameters rounded to float16, buffers untouched."""
    params = dict(model.named_parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v.half().float() if k in params else v), k


def test_float16_and_many_shards_round_trip(tmp_path: Path) -> None:
    from udvd_triton.checkpoint import save_checkpoint

    model = tiny_model()
    save_checkpoint(model, tmp_path / "half", dtype=torch.float16)
    loaded = UDVD.from_pretrained(tmp_path / "half")
    assert_float16_parameters(model, loaded)
    # The kernel-PCA basis stays float32: rounded, it no longer matched the training synthesis, and fine-tuning the
    # first float16 registry model (udvd-x2) to x3 was refused.
    assert torch.equal(loaded.kernel_basis, torch.as_tensor(pca_basis(), dtype=torch.float32))
    weights = save_checkpoint(model, tmp_path / "many", max_shard_bytes=160_000)
    assert weights.name == "model.safetensors.index.json" and len(list((tmp_path / "many").glob("model-*"))) > 2
    assert all(p.stat().st_size <= 160_000 for p in (tmp_path / "many").glob("*.safetensors"))
    assert_same_weights(model, UDVD.from_pretrained(tmp_path / "many"))
    # Saving the same folder unsharded replaces the shards and their index, leaving one file.
    save_checkpoint(model, tmp_path / "many")
    assert sorted(p.name for p in (tmp_path / "many").iterdir()) == ["config.json", "model.safetensors"]
    with pytest.raises(ValueError, match="alone exceeds the shard size limit"):
        save_checkpoint(model, tmp_path / "tiny-shards", max_shard_bytes=100_000)


def test_broken_shards_and_indexes_are_checkpoint_errors(tmp_path: Path) -> None:
    from udvd_triton.checkpoint import save_checkpoint

    folder = tmp_path / "m"
    index = save_checkpoint(tiny_model(), folder, max_shard_bytes=160_000)
    shard = folder / "model-00002-of-00004.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*model-00002-of-00004"):
        UDVD.from_pretrained(folder)
    shard.unlink()
    with pytest.raises(CheckpointError, match="shard model-00002-of-00004.safetensors is missing"):
        UDVD.from_pretrained(folder)
    content = json.loads(index.read_text())
    first = next(iter(content["weight_map"]))
    for bad, match in (({**content, "weight_map": {first: "../x.safetensors"}}, "outside its folder"),
                       ({"weight_map": {}}, "no weight_map"), ("{not json", "not valid JSON")):
        index.write_text(bad if isinstance(bad, str) else json.dumps(bad))
        with pytest.raises(CheckpointError, match=match):
            UDVD.from_pretrained(folder)


def test_add_to_registry_takes_a_sharded_checkpoint_as_one_float16_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    model = UDVD(scale=2)  # 18.4 MiB in float32: saved sharded, registered as one 9.2 MiB float16 file
    model.save_pretrained(tmp_path / "big")
    write_registry(tmp_path / "registry.json", [])
    cmd = [sys.executable, str(ROOT / "scripts" / "add_to_registry.py"), str(tmp_path / "big"), "big-x2",
           "--training", "test", "--license", "MIT", "--weights-dir", str(tmp_path)]
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode == 1 and "use --dtype float16" in refused.stderr
    subprocess.run([*cmd, "--dtype", "float16", "--default"], check=True, capture_output=True)
    assert (tmp_path / "big-x2.safetensors").stat().st_size <= 16 * 2**20
    loaded = UDVD.from_pretrained("big-x2", registry=tmp_path / "registry.json")
    assert_float16_parameters(model, loaded)
    assert default_model(2, tmp_path / "registry.json") == "big-x2"
