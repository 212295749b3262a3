"""Fault injection for the reliability tests: named points where a process can be killed or made to fail.

Off (one environment lookup per point) unless SEALONG_FAULT is set. Entries are comma-separated:

    <stage>:<k>                                   the first k attempts of <stage> fail (RuntimeError)
    <stage>[#<round>]:<point>[@<target>]:<action>  at <point>, do <action>

Points reached inside a stage process (<stage> = the stage's name):
    start          the stage is about to run (after its process opened the store)
    progress       the first progress report after some of the stage's rows were committed
    write-partial  inside an atomic write: the files are in the temp dir; the largest is cut to half its size
    before-rename  inside an atomic write: the temp dir is complete and fsynced, not yet renamed
    after-rename   the artifact is in place but not yet recorded in the store (before the stage's commit)
    mark-done      inside the stage's last transaction, before its COMMIT
    after-commit   the stage is recorded done; its process has not exited yet
    loss           train only, each micro-batch's loss; @<n> picks the n-th (actions nan, inf)
    claimed        sample/eval across nodes (engine/nodes.py): an engine, on any node, has claimed questions
Points reached in the controller (<stage> = the stage launched or finished; `round` for the round):
    launched       the stage process was started and recorded as running
    child-exited   the stage process exited; the controller has not read its outcome yet
    before-done    (stage `round`) every stage of the round is done; the round is not yet marked done

@<target> is a glob on the artifact's name for the atomic-write points (`adapter-*`, `base`, `step-*`).
Actions: kill (SIGKILL the process at the point), kill-controller (from a stage process: SIGKILL the
controller, then wait to die with it), fail (RuntimeError), enospc (OSError ENOSPC, as from a full disk),
hang (ignore SIGTERM and sleep: a process stuck where signals do not reach it), nan / inf (point `loss`:
that micro-batch's loss becomes NaN / +inf).

SEALONG_FAULT_DIR=<dir>: each entry fires at most once, claimed by creating <dir>/<entry> (which records
where it fired); without it an entry fires every time its point is reached.

    SEALONG_FAULT="train:after-rename@adapter-*:kill,eval:progress:kill-controller" SEALONG_FAULT_DIR=/tmp/f

How code reaches a point: `point(name, target)` where a process can be killed or made to fail;
`tamper(name, target, value)` where a value can be made wrong instead (returns `value`, or `value * nan`
/ `value * inf` when a nan / inf entry fires there). The code under test calls these itself, at a fixed
place, so no test or stage process replaces a module's attribute to inject a fault. The `loss` point is
sealong.loop.training.orpo.train_orpo's call `tamper("loss", n, loss)` on each micro-batch's loss, n
counting this process's micro-batches from 1, before the loss is checked for NaN/inf. A process that
never called set_context (a worker node's ranks, a test's) matches no entry: it has no stage.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
ENV, ONCE_DIR_ENV = "SEALONG_FAULT", "SEALONG_FAULT_DIR"
ACTIONS = ("kill", "kill-controller", "fail", "enospc", "hang", "nan", "inf")
_ENTRY = re.compile(
    r"^(?P<stage>[a-z]+)(?:#(?P<round>\d+))?:(?P<point>[a-z-]+)(?:@(?P<target>[^:]+))?:(?P<action>[a-z-]+)$"
)
_context: dict = {"stage": None, "round": None, "controller_pid": None}


@dataclass(frozen=True)
class Entry:
    raw: str
    stage: str
    point: str
    action: str
    round: int | None = None
    target: str | None = None
    max_attempt: int | None = None  # `<stage>:<k>` entries: fire while attempt <= k, not once


def parse(spec: str) -> list[Entry]:
    """The entries of a SEALONG_FAULT value; a malformed entry raises ValueError naming it."""
    out = []
    for raw in (s.strip() for s in spec.split(",")):
        if not raw:
            continue
        stage, _, count = raw.partition(":")
        if count.isdigit():
            out.append(Entry(raw, stage, "start", "fail", max_attempt=int(count)))
            continue
        m = _ENTRY.match(raw)
        if not m or m["action"] not in ACTIONS:
            raise ValueError(f"{ENV}: cannot parse {raw!r} (see sealong.store.faults)")
        out.append(
            Entry(
                raw, m["stage"], m["point"], m["action"], int(m["round"]) if m["round"] else None, m["target"]
            )
        )
    return out


def set_context(stage: str, round_idx: int, controller_pid: int | None = None) -> None:
    """Called once by a stage process: the stage and round its points belong to."""
    _context.update(stage=stage, round=round_idx, controller_pid=controller_pid)


def point(
    name: str,
    target: str | None = None,
    *,
    stage: str | None = None,
    round_idx: int | None = None,
    attempt: int | None = None,
    before: Callable[[], None] | None = None,
) -> str | None:
    """Reach a named point. Returns the action of an entry that fired here (for nan / inf), else None."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    stage = stage or _context["stage"]
    rnd = _context["round"] if round_idx is None else round_idx
    for e in parse(spec):
        if e.point != name or e.stage != stage or (e.round is not None and e.round != rnd):
            continue
        if e.max_attempt is not None and (attempt is None or attempt > e.max_attempt):
            continue
        if e.target is not None and (target is None or not fnmatch.fnmatchcase(str(target), e.target)):
            continue
        if e.max_attempt is None and not _claim(e, stage, rnd, name, target):
            continue
        if before is not None:
            before()
        _act(e, name, attempt)
        return e.action
    return None


def tamper(name: str, target: object, value: T) -> T:
    """Reach a named point that can corrupt `value`: an entry with action nan / inf that fires here
    returns `value * nan` / `value * inf`; otherwise `value` itself (other actions act as at `point`)."""
    action = point(name, str(target))
    return value * float(action) if action in ("nan", "inf") else value


def _claim(e: Entry, stage: str | None, rnd: int | None, name: str, target: str | None) -> bool:
    once = os.environ.get(ONCE_DIR_ENV)
    if not once:
        return True
    path = Path(once) / marker_name(e.raw)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(
            {
                "entry": e.raw,
                "stage": stage,
                "round": rnd,
                "point": name,
                "target": target,
                "pid": os.getpid(),
                "ts": time.time(),
            },
            f,
        )
    return True


def marker_name(entry: str) -> str:
    """The file under SEALONG_FAULT_DIR that records that `entry` fired."""
    return re.sub(r"[^A-Za-z0-9_.#@-]", "_", entry)


def _act(e: Entry, name: str, attempt: int | None) -> None:
    if e.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # never reached: SIGKILL is not deferred past this call's return
    elif e.action == "kill-controller":
        os.kill(_context["controller_pid"] or os.getppid(), signal.SIGKILL)
        time.sleep(60)  # the kernel kills this stage process with its controller (PR_SET_PDEATHSIG)
        os._exit(1)
    elif e.action == "fail":
        where = f"attempt {attempt}" if e.max_attempt is not None else name
        raise RuntimeError(f"injected fault ({ENV}={e.raw}, {where})")
    elif e.action == "enospc":
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (injected by {ENV}={e.raw})")
    elif e.action == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(1)


def truncate_largest(directory: Path) -> None:
    """Cut the largest file under `directory` to half its size: a write interrupted half way."""
    files = [p for p in Path(directory).rglob("*") if p.is_file()]
    if files:
        big = max(files, key=lambda p: p.stat().st_size)
        os.truncate(big, big.stat().st_size // 2)
