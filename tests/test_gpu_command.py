"""The GPU session's one command (scripts/gpu_train.sh), dry-run on the CPU with tiny settings: it must run end to
end (prepare, fine-tune, score against bicubic, float16 export with its registry entry) before a GPU minute is
spent on it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_command_dry_run_on_the_cpu(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photos, sets = tmp_path / "photos", tmp_path / "sets"
    photos.mkdir()
    (sets / "tiny").mkdir(parents=True)
    for i in range(6):
        small = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
        Image.fromarray(small).resize((200, 200), Image.BICUBIC).save(photos / f"p{i}.png")
    Image.fromarray((rng.random((48, 60, 3)) * 255).astype(np.uint8)).save(sets / "tiny" / "hr.png")
    out = tmp_path / "out"
    env = {**os.environ, "TASK": "x2", "STEPS": "2", "MINUTES": "5", "DEVICE": "cpu", "FROM": "udvd-x2-small",
           "PHOTOS": str(photos), "WORK": str(tmp_path / "work"), "OUT": str(out), "SETS": str(sets / "tiny"),
           "EXTRA": "--batch 2 --patch 16 --val-every 0 --log-every 1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("TRITON_INTERPRET", None)
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_train.sh")], env=env, capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    grid = json.loads((out / "udvd-x2.srmd-grid.json").read_text())["grids"]["tiny"]["x2"]
    assert set(grid) >= {"bicubic"} and len(grid["bicubic"]) == 9
    registry = json.loads((out / "weights" / "registry.json").read_text())
    assert [m["name"] for m in registry["models"]] == ["udvd-x2"]
    assert (out / "weights" / "udvd-x2.safetensors").stat().st_size < 16 * 2**20
    assert (out / "udvd-x2.train-log.csv").is_file() and (out / "udvd-x2.settings.json").is_file()
