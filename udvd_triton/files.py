"""Safe file output, shared by every part of the package that writes a file.

Each file is written under a temporary name in its destination folder and renamed into place (``os.replace``, atomic
within one file system), so a crash, a kill or a full disk leaves the previous file as it was and never a truncated
one. Paths that may already exist are checked with :func:`exists`, which counts a symbolic link as existing even when
it dangles, so a link at an output path is never written through.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import signal
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any


class WriteError(OSError):
    """An output could not be written (disk full, permissions, ...); the file it would have replaced is intact.
    Its text is the message alone (no ``[Errno N]`` prefix)."""

    def __str__(self) -> str:
        return str(self.strerror)


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether anything is at ``path``: a file, a folder or a symbolic link (dangling or not)."""
    return os.path.lexists(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AppearedError(FileExistsError):
    """A file appeared at an output path while we worked (another program, a second udvd run): it is kept, and
    our result is not written there."""


def _link_into_place(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path`` without replacing anything: a hard link fails if ``path`` exists, atomically. On a
    file system without hard links, a last check and a rename (a window of microseconds instead of the run's)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise AppearedError(errno.EEXIST, f"{path} appeared while udvd was working: it was kept, and this result "
                            "was not written (choose another output)") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        if exists(path):
            raise AppearedError(errno.EEXIST, f"{path} appeared while udvd was working: it was kept, and this "
                                "result was not written (choose another output)") from None
        os.rename(tmp, path)
        return
    os.unlink(tmp)


@contextmanager
def atomic_output(path: str | os.PathLike[str], replace: bool | Callable[[Path], bool] = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the caller to write; on success move it onto ``path``.

    ``replace``: True (our own files, e.g. a checkpoint's): an atomic rename replaces whatever is there. False:
    nothing at ``path`` is ever replaced, even what appeared while the caller computed (``AppearedError``).
    A predicate: what is at ``path`` right before the rename is replaced only if the predicate accepts it (e.g. "an
    image we wrote"), else ``AppearedError``.

    The temporary name keeps ``path``'s suffix (writers that pick the format from it still work) and starts with a
    dot. The data is flushed to disk before the rename. On any exception (SIGTERM and Ctrl-C included, see
    :func:`exit_on_sigterm`) the temporary file is removed and ``path`` is left untouched; an ``OSError`` is
    re-raised as :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
    try:
        yield tmp
        _fsync(tmp)
        if replace is True:
            os.replace(tmp, path)
        elif replace is not False and exists(path):
            if not replace(path):
                raise AppearedError(errno.EEXIST, f"{path} appeared or changed while udvd was working and is not "
                                    "ours to replace: it was kept, and this result was not written")
            os.replace(tmp, path)
        else:
            _link_into_place(tmp, path)
    except BaseException as e:
        with suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not isinstance(e, (WriteError, AppearedError)):
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


def exit_on_sigterm() -> None:
    """Turn SIGTERM into ``SystemExit(143)`` in the main thread, so that a terminated command unwinds like an
    interrupted one: every :func:`atomic_output` removes its temporary file, locks are released."""

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)
