"""Atomic artifact writes, content hashes, and the one check of an adapter before it is used.

A stage writes its outputs to a temporary sibling, fsyncs, and renames into place; only then does it mark
itself done in the database. A kill at any moment leaves either no artifact or a whole one, and an
artifact on disk that the database does not reference is garbage the next attempt removes. A failed write
(a full disk, say) removes its temporary files before the error propagates.

The writes pass the fault-injection points of sealong.store.faults (write-partial, before-rename,
after-rename), so the reliability tests can kill a writer at each step.

An adapter is read only after `verify_adapter` (its sha256 against the store's, safetensors weights, no
pickled ones) returned its directory; the stages, `export`, `show` and `verify` all ask it.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NewType

from sealong.store import faults
from sealong.store.liveness import process_alive

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
# Weight files that torch.load unpickles, which can run any code: never loaded, whether adapter, policy or
# embedder. PEFT falls back to adapter_model.bin when no safetensors file is there, so an adapter holding
# one is refused; models and embedders are loaded with use_safetensors=True.
PICKLED_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")

# An adapter directory that verify_adapter checked against the store: the only kind of path PEFT is given
# (tests/store/test_adapter_verifier.py checks every PeftModel.from_pretrained call for it).
VerifiedAdapter = NewType("VerifiedAdapter", Path)


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


def adapter_file_problems(path: Path, shown: str | Path) -> list[str]:
    """What in the adapter directory `path` keeps it from being loaded (its weights not safetensors, a
    pickled weight file beside them, no adapter_config.json), each naming it as `shown`; [] when nothing."""
    names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
    pickled = [n for n in names if n.endswith(PICKLED_WEIGHT_SUFFIXES)]
    out = []
    if pickled or ADAPTER_WEIGHTS not in names:
        out.append(
            f"{shown} must hold {ADAPTER_WEIGHTS} and no pickled weights "
            f"(found {pickled or 'no ' + ADAPTER_WEIGHTS}); sealong-loop loads safetensors only"
        )
    if ADAPTER_CONFIG not in names:
        out.append(f"{shown} lacks {ADAPTER_CONFIG}")
    return out


def adapter_problems(workdir: Path, record: Mapping[str, Any]) -> list[str]:
    """Everything that keeps a stored adapter from being used, [] when nothing does. `record` is its row in
    the store: `path` (relative to the workdir, as the messages name it) and the `sha256` of its files."""
    rel = record["path"]
    path = Path(workdir) / rel
    if not path.is_dir():
        return [f"directory {rel} is missing"]
    out = []
    if sha256_dir(path) != record["sha256"]:
        out.append(f"files in {rel} do not match the recorded sha256 (corrupted?)")
    return out + adapter_file_problems(path, rel)


def verify_adapter(workdir: Path, record: Mapping[str, Any]) -> VerifiedAdapter:
    """The stored adapter's directory, once its files match the recorded sha256, hold safetensors weights
    and its config, and no pickled weights; else IntegrityError naming every problem. Call it right before
    the adapter is loaded: its files are read after this check only by PEFT or vLLM."""
    problems = adapter_problems(workdir, record)
    if problems:
        from sealong.loop.errors import IntegrityError

        raise IntegrityError(f"adapter {record['id']}: " + "; ".join(problems))
    return VerifiedAdapter(Path(workdir) / record["path"])


def require_adapter_files(path: Path) -> None:
    """IntegrityError unless the adapter directory `path` holds only loadable files (adapter_file_problems):
    the last check before PEFT reads it, which holds for an adapter not taken from a store as well."""
    problems = adapter_file_problems(Path(path), f"adapter {path}")
    if problems:
        from sealong.loop.errors import IntegrityError

        raise IntegrityError("; ".join(problems))


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
    return pid.isdigit() and int(pid) != os.getpid() and process_alive(int(pid))


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
