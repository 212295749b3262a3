"""Atomic artifact writes and content hashes.

A stage writes its outputs to a temporary sibling, fsyncs, and renames into place; only then does it mark
itself done in the database. A kill at any moment leaves either no artifact or a whole one, and an
artifact on disk that the database does not reference is garbage the next attempt removes. A failed write
(a full disk, say) removes its temporary files before the error propagates.

The writes pass the fault-injection points of sealong.store.faults (write-partial, before-rename,
after-rename), so the reliability tests can kill a writer at each step.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sealong.store import faults


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_dir(path: str | Path) -> str:
    """Hash of every file's relative name and content, in sorted order (adapter weights + config)."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def _fsync_tree(path: Path) -> None:
    for f in [path, *path.rglob("*")]:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary directory; on success it is fsynced and renamed to `final` (replacing nothing)."""
    final = Path(final)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        faults.point("write-partial", final.name, before=lambda: faults.truncate_largest(tmp))
        _usual_modes(tmp)
        _fsync_tree(tmp)
        faults.point("before-rename", final.name)
        if final.exists():
            raise FileExistsError(f"{final} already exists")
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        faults.point("after-rename", final.name)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    """The process's umask, read without changing it (os.umask sets it; another thread could create a file
    with the wrong mode in between)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _usual_modes(root: Path) -> None:
    """Files created private (safetensors writes its files 0600) get the mode any other file gets here
    (0666 less the umask), so exported and stored weights are as readable as the rest of the folder."""
    mask = _umask()
    for f in root.rglob("*"):
        if f.is_file() and not f.is_symlink() and f.stat().st_mode & 0o077 == 0:
            f.chmod(0o666 & ~mask)


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a whole file or nothing: temp sibling, fsync, rename, fsync the directory."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        faults.point("before-rename", path.name)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def remove_stale_temps(directory: str | Path, keep_live_writers: bool = False) -> list[Path]:
    """Delete `.tmp-*` leftovers of killed writers. Returns what was removed.

    With keep_live_writers (a directory several processes write into), a temp whose name ends in the
    pid of another running process (`.tmp-<name>-<pid>`, as atomic_dir names them) is left alone."""
    removed = []
    d = Path(directory)
    if not d.is_dir():
        return removed
    for p in d.glob(".tmp-*"):
        if keep_live_writers and _writer_alive(p.name):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _writer_alive(temp_name: str) -> bool:
    pid = temp_name.rsplit("-", 1)[-1]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


def is_disk_full(exc: BaseException) -> bool:
    """True if the error, or one it was raised from, means the filesystem (or a quota) is full."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(e, sqlite3.Error) and "disk is full" in str(e):
            return True
        # Writers in other languages (safetensors' Rust) report it only in their message.
        if "No space left on device" in str(e) or "StorageFull" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False
