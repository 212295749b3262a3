"""One answer to "is this pid still running?" for every caller: the controller's recovery, the status
view, the stage's watchdog and the temp-file sweep. A dead pid, a zombie, a live pid, and a live pid that
is not the recorded process (another start time: the pid was reused)."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sealong.loop.commands import status_state
from sealong.loop.engine import controller, stage_main
from sealong.store import artifacts, liveness
from sealong.store.liveness import process_alive, process_start_time

ROOT = Path(__file__).resolve().parents[2]


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _views(pid: int) -> dict[str, bool]:
    """What each caller concludes about `pid`, through the name it calls."""
    return {
        "liveness": process_alive(pid),
        "controller": controller.process_alive(pid),
        "status": status_state.process_alive(pid),
        "stage watchdog": stage_main.process_alive(pid, stage_main.process_start_time(pid)),
        "temp sweep": artifacts._writer_alive(f".tmp-adapter-r000-{pid}"),
        "status rss": status_state.process_rss_mb(pid) is not None,
    }


def test_a_live_pid_is_alive_for_every_caller():
    p = _sleeper()
    try:
        assert set(_views(p.pid).values()) == {True}, _views(p.pid)
    finally:
        p.kill()
        p.wait()


def test_a_dead_pid_is_dead_for_every_caller():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert set(_views(p.pid).values()) == {False}, _views(p.pid)


def test_a_zombie_is_dead_for_every_caller():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "the child never exited"
        time.sleep(0.02)
    try:
        assert set(_views(p.pid).values()) == {False}, _views(p.pid)
    finally:
        p.wait()


def test_a_reused_pid_is_not_the_recorded_process():
    p = _sleeper()
    try:
        started = process_start_time(p.pid)
        assert started is not None and started > 0
        assert process_alive(p.pid, started)
        assert not process_alive(p.pid, started + 1)  # another process now holds the recorded pid
        assert process_start_time(p.pid) == started  # stable while the process lives
    finally:
        p.kill()
        p.wait()
    assert process_start_time(p.pid) is None and not process_alive(p.pid, started)


@pytest.mark.parametrize("pid", [None, 0, -1])
def test_no_pid_is_not_alive(pid):
    assert not process_alive(pid) and process_start_time(pid) is None


def test_a_command_name_with_spaces_and_parentheses_is_parsed(tmp_path: Path):
    exe = tmp_path / "odd ) name ("
    exe.symlink_to(sys.executable)
    p = subprocess.Popen([str(exe), "-c", "import time; time.sleep(60)"])
    try:
        assert process_alive(p.pid, process_start_time(p.pid))
    finally:
        p.kill()
        p.wait()


def test_the_sweep_keeps_a_live_writers_temp_and_removes_a_dead_ones(tmp_path: Path):
    live, dead = _sleeper(), subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        (tmp_path / f".tmp-a-{live.pid}").mkdir()
        (tmp_path / f".tmp-b-{dead.pid}").mkdir()
        removed = artifacts.remove_stale_temps(tmp_path, keep_live_writers=True)
        assert [p.name for p in removed] == [f".tmp-b-{dead.pid}"]
    finally:
        live.kill()
        live.wait()


def _pid_probes(path: Path) -> list[str]:
    """Liveness probes outside store/liveness.py: os.kill(pid, 0), or a read of /proc/<pid>/stat."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith("/stat"):
            out.append(f"{where}: reads /proc/<pid>/stat")
        if isinstance(node, ast.Call) and len(node.args) == 2:
            f, signal = node.func, node.args[1]
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name == "kill" and isinstance(signal, ast.Constant) and signal.value == 0:
                out.append(f"{where}: os.kill(pid, 0)")
    return out


def test_no_module_probes_a_pid_on_its_own():
    mine = ROOT / "store" / "liveness.py"
    found = [
        p
        for d in ("loop", "store", "kernels")
        for f in sorted((ROOT / d).rglob("*.py"))
        if f != mine
        for p in _pid_probes(f)
    ]
    assert found == []
    assert not hasattr(controller, "_pid_alive") and not hasattr(status_state, "_pid_alive")
    assert controller.process_alive is status_state.process_alive is liveness.process_alive


def test_the_probe_scan_catches_a_planted_probe(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import os\nfrom pathlib import Path\n"
        "def alive(pid):\n    os.kill(pid, 0)\n    return Path(f'/proc/{pid}/stat').read_text()\n"
    )
    assert [p.split(": ", 1)[1] for p in _pid_probes(planted)] == [
        "os.kill(pid, 0)",
        "reads /proc/<pid>/stat",
    ]
