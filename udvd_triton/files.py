"""Safe file output, shared by every part of the package that writes a file.

Each file is written under a temporary name in its destination folder and renamed into place (``os.replace``, atomic
within one file system), so a crash, a kill or a full disk leaves the previous file as it was and never a truncated
one. Paths that may already exist are checked with :func:`exists`, which counts a symbolic link as existing even when
it dangles, so a link at an output path is never written through.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any


class WriteError(OSError):
    """An output could not be written (disk full, permissions, ...); the file it would have replaced is intact."""


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether anything is at ``path``: a file, a folder or a symbolic link (dangling or not)."""
    return os.path.lexists(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write; on success rename it onto ``path``.

    The temporary name keeps ``path``'s suffix (writers that pick the format from it still work) and starts with a
    dot. The data is flushed to disk before the rename. On any exception the temporary file is removed and ``path``
    is left untouched; an ``OSError`` is re-raised as :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not isinstance(e, WriteError):
            raise WriteError(e.errno, f"cannot write {path}: {e.strerror or e}") from None
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (:func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON (with a final newline) to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_writable_folder(folder: str | os.PathLike[str]) -> None:
    """Raise (``NotADirectoryError`` / ``PermissionError`` / :class:`WriteError`, naming ``folder``) unless files can
    be created in ``folder`` or, if it does not exist yet, in its nearest existing parent. Creates nothing that stays:
    lets a command refuse before it computes anything."""
    folder = Path(folder)
    probe = folder
    while not exists(probe):
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise NotADirectoryError(f"output folder {folder}: {probe} exists and is not a folder")
    try:  # create and remove a file rather than ask os.access, which says yes to root even on read-only mounts
        fd, name = tempfile.mkstemp(prefix=".udvd-probe-", dir=probe)  # O_EXCL: never touches an existing file
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise WriteError(e.errno, f"output folder {folder}: cannot create files in {probe} ({e.strerror})") from None
