"""Safe output files: atomic replacement, links counted as existing, early checks of output folders."""

import errno
import json
import os
from pathlib import Path

import pytest

from udvd_triton import files


def test_atomic_output_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "result.png"
    target.write_bytes(b"good old data")
    with pytest.raises(RuntimeError):
        with files.atomic_output(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".")
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"good old data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.png"]  # no temporary left behind
    files.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}


def test_disk_full_leaves_the_old_file_and_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "out.json"
    files.write_text(target, "old")

    def full(self: Path, data: bytes) -> int:
        self.open("wb").write(data[:1])  # a partial write, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_bytes", full)
    with pytest.raises(files.WriteError, match=f"cannot write {target}: No space left on device"):
        files.write_text(target, "new and longer")
    monkeypatch.undo()
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_links_count_as_existing(tmp_path: Path) -> None:
    link = tmp_path / "dangling.png"
    link.symlink_to(tmp_path / "nowhere")
    assert files.exists(link) and not link.exists()
    assert not files.exists(tmp_path / "absent")


def test_check_writable_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files.check_writable_folder(tmp_path / "new" / "deeper")  # nearest existing parent is writable
    assert not (tmp_path / "new").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a folder"):
        files.check_writable_folder(tmp_path / "file" / "sub")

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)  # root ignores chmod, so simulate a read-only folder
    with pytest.raises(files.WriteError, match=r"cannot create files in .* \(Permission denied\)"):
        files.check_writable_folder(tmp_path)
