"""prepare-data (shards, manifest, errors), the crop sampler, and the degradation synthesis."""

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from udvd_triton.degradation import degrade, kernel_code
from udvd_triton.cli import run_command
from udvd_triton.imageio import load_rgb
from udvd_triton.training.data import BatchSampler, CropDataset, prepare_data
from udvd_triton.training.synth import SynthConfig, degrade_batch, random_dihedral, sample_degradations, synthesize


def _photo(rng, h, w):
    """A smooth random RGB image, uint8 (h, w, 3)."""
    small = rng.random((h // 8 + 2, w // 8 + 2, 3))
    big = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC))
    return big


@pytest.fixture()
def photos(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "photos"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(_photo(rng, 70, 100)).save(src / "a.png")
    Image.fromarray(_photo(rng, 64, 64)).save(src / "sub" / "b.jpg", quality=95)
    Image.fromarray(_photo(rng, 50, 90)).save(src / "c.png")
    Image.fromarray(_photo(rng, 20, 40)).save(src / "tiny.png")  # smaller than the patch
    (src / "broken.png").write_bytes(b"not an image")
    (src / "notes.txt").write_text("ignored: not an image suffix")
    return src


def test_prepare_data_shards_match_the_source_pixels(photos, tmp_path):
    out = tmp_path / "prepared"
    with pytest.warns(UserWarning, match="broken.png"):
        manifest = prepare_data(photos, out, crop=32, val_count=1, val_crop=48, shard_crops=3, seed=1, progress=False)
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert {s["file"] for s in manifest["skipped"]} == {"broken.png", "tiny.png"}
    (val_entry,) = manifest["val"]
    val_src = next(s for s in manifest["sources"] if s["split"] == "val")
    assert val_entry["source"] == val_src["file"]
    # Non-overlapping 32px grid: floor(h/32) * floor(w/32) crops per training image.
    sizes = {"a.png": (70, 100), "sub/b.jpg": (64, 64), "c.png": (50, 90)}
    expected = {f: (h // 32) * (w // 32) for f, (h, w) in sizes.items() if f != val_src["file"]}
    assert {s["file"]: s["crops"] for s in manifest["sources"] if s["split"] == "train"} == expected
    assert manifest["crops"] == sum(expected.values()) == sum(s["crops"] for s in manifest["shards"])
    for shard in manifest["shards"]:
        assert hashlib.sha256((out / shard["file"]).read_bytes()).hexdigest() == shard["sha256"]
    # The first crop is the top-left 32x32 of the first training image, read independently with PIL.
    first = next(s["file"] for s in manifest["sources"] if s["split"] == "train")
    ds = CropDataset(out, verify=True)
    np.testing.assert_array_equal(ds.shards[0][0], np.asarray(Image.open(photos / first).convert("RGB"))[:32, :32])
    # The validation image: a centre crop, sides multiples of 12, at most 48.
    val = load_rgb(out / val_entry["file"])
    src = np.asarray(Image.open(photos / val_src["file"]).convert("RGB"))
    h, w = min(48, src.shape[0]) // 12 * 12, min(48, src.shape[1]) // 12 * 12
    y, x = (src.shape[0] - h) // 2, (src.shape[1] - w) // 2
    np.testing.assert_array_equal(val, src[y : y + h, x : x + w])
    assert not list(tmp_path.glob(".prepared.tmp-*"))  # the temporary folder is gone


def test_max_side_downscales_before_cropping(photos, tmp_path):
    with pytest.warns(UserWarning):
        manifest = prepare_data(photos, tmp_path / "p", crop=16, max_side=50, val_count=0, progress=False)
    a = next(s for s in manifest["sources"] if s["file"] == "a.png")
    assert a["size"] == [100, 70] and max(a["used_size"]) == 50
    assert a["crops"] == (a["used_size"][1] // 16) * (a["used_size"][0] // 16)



def test_bad_data_folders_give_clear_errors(photos, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        run_command(["prepare-data", str(tmp_path / "missing"), str(tmp_path / "o1")])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        run_command(["prepare-data", str(tmp_path / "empty"), str(tmp_path / "o2")])
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no training crops.*smaller than the crop 512"):
        run_command(["prepare-data", str(photos), str(tmp_path / "o3"), "--crop", "512", "--val", "0", "--quiet"])
    (tmp_path / "o4").mkdir()
    (tmp_path / "o4" / "keep").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        run_command(["prepare-data", str(photos), str(tmp_path / "o4")])
    with pytest.raises(FileNotFoundError, match="prepare-data"):
        CropDataset(tmp_path / "empty")
    assert not (tmp_path / "o3").exists()


def _tree(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_data_never_deletes_what_it_did_not_write(photos, tmp_path):
    (tmp_path / "unrelated.txt").write_text("keep me")
    before = _tree(tmp_path)
    for out in (photos, tmp_path, photos / "sub", photos / "new"):  # is, contains, or lies inside the photos
        with pytest.raises(ValueError, match="must lie outside the image folder"):
            run_command(["prepare-data", str(photos), str(out), "--crop", "16", "--overwrite", "--quiet"])
    assert _tree(tmp_path) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # nothing left behind

    out = tmp_path / "prepared"
    with pytest.warns(UserWarning):
        first = prepare_data(photos, out, crop=16, val_count=1, val_crop=24, progress=False)
    (out / "mine.txt").write_text("a file prepare-data did not write")
    kept = _tree(out)
    with pytest.raises(FileExistsError, match="it holds mine.txt, which prepare-data did not write"):
        run_command(["prepare-data", str(photos), str(out), "--crop", "16", "--overwrite", "--quiet"])
    assert _tree(out) == kept
    (out / "mine.txt").unlink()
    with pytest.warns(UserWarning):  # a previous output and nothing else: replaced, old files gone
        second = prepare_data(photos, out, crop=24, val_count=0, overwrite=True, progress=False)
    assert {f["file"] for f in second["shards"]} >= {f["file"] for f in first["shards"]}
    assert set(_tree(out)) == {"manifest.json", *(f["file"] for f in second["shards"])}
    assert CropDataset(out).crop == 24
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "prepared", "unrelated.txt"]

    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(FileExistsError, match="no valid manifest.json"):
        prepare_data(photos, other, crop=16, overwrite=True, progress=False)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")  # a dangling link exists too
    with pytest.raises(FileExistsError, match="is a link"):
        prepare_data(photos, link, crop=16, overwrite=True, progress=False)
    assert (other / "manifest.json").exists() and link.is_symlink()


def test_prepare_data_patch_flag_was_renamed(photos, tmp_path, capsys):
    from udvd_triton.cli import main

    assert main(["prepare-data", str(photos), str(tmp_path / "o"), "--patch", "16"]) == 2
    assert "--patch was renamed --crop" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sampler_epochs_and_ranks(photos, tmp_path):
    with pytest.warns(UserWarning):
        prepare_data(photos, tmp_path / "p", crop=16, val_count=0, shard_crops=5, progress=False)
    ds = CropDataset(tmp_path / "p")
    n = len(ds)
    ranks = [BatchSampler(ds, batch=3, size=12, seed=5, rank=r, world=2) for r in range(2)]
    per_epoch = n // 6
    seen = torch.cat([s.indices(t) for t in range(per_epoch) for s in ranks])
    assert len(set(seen.tolist())) == len(seen)  # no crop twice within an epoch, across ranks
    # Positions run on across the epoch boundary: the last batch of epoch 0 and the first of epoch 1 are split
    # between the two epochs' orders.
    order = torch.cat([torch.from_numpy(np.random.default_rng([5, e]).permutation(n)) for e in range(3)])
    for t in range(per_epoch - 1, 2 * per_epoch + 2):
        assert torch.equal(ranks[1].indices(t), order[(2 * t + 1) * 3 : (2 * t + 2) * 3]), t
    batch = ranks[0].batch_at(4)
    assert batch.shape == (3, 12, 12, 3) and batch.dtype == torch.uint8
    assert torch.equal(batch, BatchSampler(ds, 3, 12, seed=5, rank=0, world=2).batch_at(4))
    # Each sample is a 12x12 window of its crop, as stored in the shards.
    for crop, index in zip(batch.numpy(), ranks[0].indices(4).tolist()):
        stored = ds.shards[index // 5][index % 5]
        windows = [stored[y : y + 12, x : x + 12] for y in range(5) for x in range(5)]
        assert any(np.array_equal(crop, w) for w in windows)
    with pytest.raises(ValueError, match="does not fit"):
        BatchSampler(ds, 3, 20)


def test_degrade_batch_equals_per_sample_numpy_degrade():
    g = torch.Generator().manual_seed(3)
    hr = torch.rand(3, 3, 24, 24, generator=g, dtype=torch.float64)
    kernels, _ = sample_degradations(3, SynthConfig(3, anisotropic=0.5), g)
    lr = degrade_batch(hr.float(), kernels, torch.zeros(3), 3, g, quantize=False)
    for i in range(3):
        ref = degrade(hr[i].permute(1, 2, 0).numpy(), kernels[i].double().numpy(), 3, 0.0)
        np.testing.assert_allclose(lr[i].permute(1, 2, 0).numpy(), ref, atol=2e-5)


def test_synthesize_noise_quantisation_and_maps():
    g = torch.Generator().manual_seed(0)
    crops = torch.full((2, 96, 96, 3), 128, dtype=torch.uint8)
    cfg = SynthConfig(2, noise_range=(30.0, 30.0), quantize=False, augment=False)
    b = synthesize(crops, cfg, g)
    assert b.lr.shape == (2, 3, 48, 48) and b.hr.shape == (2, 3, 96, 96)
    # A flat image stays flat under blur + bicubic: what remains is the AWGN, sigma 30/255.
    assert b.lr.sub(128 / 255).std().item() == pytest.approx(30 / 255, rel=0.05)
    assert torch.all(b.noise_map == 30 / 255) and b.code_map.shape == (2, 15, 48, 48)
    q = synthesize(crops, SynthConfig(2, augment=False), torch.Generator().manual_seed(1))
    assert torch.equal(q.lr * 255, (q.lr * 255).round()) and q.lr.min() >= 0 and q.lr.max() <= 1
    assert q.noise_map.max() <= 75 / 255
    # The code map is the kernel's PCA code, constant over the image.
    g2 = torch.Generator().manual_seed(1)
    kernels, noise = sample_degradations(2, SynthConfig(2), g2)
    assert torch.allclose(q.code_map[:, :, 5, 7], kernel_code(kernels).float(), atol=1e-6)
    assert torch.allclose(q.noise_map[:, 0, 0, 0], noise / 255)


def test_random_dihedral_picks_one_of_eight_transforms():
    x = torch.arange(2 * 16, dtype=torch.float32).reshape(2, 1, 4, 4).repeat(32, 1, 1, 1)
    y = random_dihedral(x, torch.Generator().manual_seed(0))
    found = set()
    for xi, yi in zip(x[:, 0].numpy(), y[:, 0].numpy()):
        options = [np.rot90(np.fliplr(xi) if f else xi, r) for f in (0, 1) for r in range(4)]
        matches = [k for k, o in enumerate(options) if np.array_equal(o, yi)]
        assert matches
        found.update(matches)
    assert len(found) == 8


def test_clean_fraction_draws_noise_free_samples():
    g = torch.Generator().manual_seed(0)
    _, noise = sample_degradations(4000, SynthConfig(2, noise_range=(10.0, 75.0), clean_fraction=0.3), g)
    clean = (noise == 0).float().mean().item()
    assert clean == pytest.approx(0.3, abs=0.03)
    assert noise[noise > 0].min() >= 10.0  # the others keep the noise range
    with pytest.raises(ValueError, match="clean_fraction"):
        SynthConfig(2, clean_fraction=1.5)


def test_load_rgb_scales_16_bit_and_float_photos(tmp_path):
    """I;16 photos came out white (clipped at 255): prepare-data would have trained on white crops."""
    g16 = (np.linspace(0, 1, 40).reshape(5, 8) * 65535).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    rgb = load_rgb(tmp_path / "g16.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 8, 3) and rgb.flags.writeable
    np.testing.assert_array_equal(rgb[..., 0], np.round(g16 / 257).astype(np.uint8))
    f = np.linspace(0, 1, 40, dtype=np.float32).reshape(5, 8)
    Image.fromarray(f, mode="F").save(tmp_path / "f.tif")
    np.testing.assert_array_equal(load_rgb(tmp_path / "f.tif")[..., 2], np.round(f * 255).astype(np.uint8))
