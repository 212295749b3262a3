"""Whether a process recorded by pid is still running: the one answer the controller, the status view,
the stage watchdog and the temp-file sweep all use.

    from sealong.store.liveness import process_alive, process_start_time
    started = process_start_time(pid)      # clock ticks after boot, from /proc/<pid>/stat
    process_alive(pid)                     # running (a zombie is not)
    process_alive(pid, started)            # and still the same process, not a later one given its pid

A pid is reused once its process is reaped, so a caller that keeps a pid across time and can record its
start time passes it: a different start time means another process holds the pid now.
"""

from __future__ import annotations

import os
from pathlib import Path

_DEAD_STATES = ("Z", "X")  # zombie (exited, not yet reaped) and dead


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name, or None where /proc does not show the pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces and ')'.
    return stat.rsplit(")", 1)[1].split()


def process_start_time(pid: int | None) -> int | None:
    """When the process started, in clock ticks after boot (field 22 of /proc/<pid>/stat); None if gone."""
    fields = _stat_fields(pid) if pid else None
    return int(fields[19]) if fields and len(fields) > 19 else None


def process_alive(pid: int | None, start_time: int | None = None) -> bool:
    """True while `pid` runs; False for no pid, a process that exited (a zombie included), or, given the
    `start_time` recorded earlier (process_start_time), a different process that now holds the pid."""
    if not pid or pid < 0:
        return False
    fields = _stat_fields(pid)
    if fields is None:
        # /proc may hide other users' processes (mounted hidepid): ask the kernel, which can say whether
        # the pid exists though not when it started, so a start time to check cannot be confirmed.
        return start_time is None and _signalable(pid)
    if not fields or fields[0] in _DEAD_STATES:
        return False
    return start_time is None or (len(fields) > 19 and int(fields[19]) == start_time)


def _signalable(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
