"""The live view: pure render functions over states read from a real tiny run (and edited copies of them),
the process probes, and `status --watch` in a pseudo-terminal and off one.

`tiny_ops_run` builds one finished 2-round run per test session (about a minute and a half on 2 cores);
test_lineage, test_report and test_export reuse it.
"""

from __future__ import annotations

import copy
import io
import json
import os
import pty
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from sealong.loop.commands import status_state as monitor
from sealong.loop.commands.status_render import fmt_secs, memory, render, sparkline, task_labels
from sealong.loop.commands.status_state import MonitorState, load_state, phase
from sealong.store.db import connect, one, rows

from ...conftest import CLI, built_once, cli, write_config


def tiny_ops_run(tmp_path_factory) -> Path:
    """A finished 2-round tiny run in which both candidates were promoted: base → adapter-r000 → adapter-r001.

    Built once per session (shared by pytest-xdist workers) under pytest's base temp dir, as a user would: `start` (one round, the config's
    max_rounds), then `start --max-rounds 2` on the same workdir, which resumes the run for a second round.
    The first start's output is kept beside it (first-start.txt). Tests must only read it (copy it to
    change it).
    """
    with built_once(tmp_path_factory, "ops-tiny-run") as root:
        wd = root / "run"
        if (root / "DONE").exists():
            return wd
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        cfg = write_config(root / "c.toml", promote={"rule": "margin", "margin": -1.0})
        first = cli("start", "--config", str(cfg), "--workdir", str(wd), check=True)
        (root / "first-start.txt").write_text(first.stdout)
        cli("start", "--workdir", str(wd), "--max-rounds", "2", check=True)
        (root / "DONE").write_text("ok")
        return wd


def copy_workdir(src: Path, dst: Path) -> Path:
    """A private copy of a run (database through SQLite's backup API, adapters and models as files)."""
    dst.mkdir(parents=True)
    for name in ("adapters", "models"):
        shutil.copytree(src / name, dst / name)
    with sqlite3.connect(src / "sealong.db") as a, sqlite3.connect(dst / "sealong.db") as b:
        a.backup(b)
    return dst


def text(renderable, width: int = 150) -> str:
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_ops_run(tmp_path_factory)


@pytest.fixture(scope="module")
def finished(run_dir: Path) -> MonitorState:
    return load_state(connect(run_dir, readonly=True), None, workdir=run_dir, probe_processes=False)


def _stage(s: MonitorState, round_idx: int, name: str) -> dict:
    rnd = next(r for r in s.rounds if r["idx"] == round_idx)
    return next(st for st in s.stages[rnd["id"]] if st["name"] == name)


def running_copy(
    s: MonitorState, name: str, done: float, total: float, unit: str, note: str = ""
) -> MonitorState:
    """The finished state turned back into one where round 1's `name` stage is running for 10 s."""
    s = copy.deepcopy(s)
    s.run["status"], s.run["message"] = "running", None
    rnd = s.rounds[-1]
    rnd.update(status="running", decision_json=None, promoted=None)
    names = [st["name"] for st in s.stages[rnd["id"]]]
    for st in s.stages[rnd["id"]][names.index(name) :]:
        st.update(status="pending", started_at=None, finished_at=None)
    st = _stage(s, 1, name)
    st.update(
        status="running",
        pid=4242,
        started_at=s.now - 10,
        progress_done=done,
        progress_total=total,
        progress_unit=unit,
        progress_note=note,
        progress_since=None,  # no phase recorded: the rate is over the stage's time
        progress_since_done=0,
        attempts=1,
    )
    s.current, s.controller_pid, s.stage_alive, s.rss_mb = st, 4241, True, 512.0
    return s


def test_finished_run_shows_rounds_champion_and_events(finished: MonitorState):
    assert phase(finished) == "finished"
    out = text(render(finished))
    assert "FINISHED: 2 round(s) done" in out
    assert "champion: adapter-r001" in out and "champion adapter-r001" in out
    for needle in (
        "rounds",
        "adapter-r000",
        "adapter-r001",
        "promoted",
        "1hop",
        "2hop",
        "Δ champ",
        "wall s",
        "recent events",
        "round 1 done",
    ):
        assert needle in out, needle
    # Wall seconds per stage: six numbers per round, in stage order.
    row = next(line for line in out.splitlines() if line.lstrip().startswith("0 ") and "adapter-r000" in line)
    assert len(row.split()[-1].split("·")) == 6


def test_not_started_states(tmp_path: Path):
    out = text(render(MonitorState(workdir="/runs/x")))
    assert "NOT STARTED" in out and "waiting for `sealong-loop start --workdir /runs/x`" in out
    (
        tmp_path / "sealong.db"
    ).touch()  # the controller has created the file; its first migration is not in yet
    s = load_state(connect(tmp_path, readonly=True), None, workdir=tmp_path)
    assert phase(s) == "not started" and "NOT STARTED" in text(render(s))
    db = connect(tmp_path)  # migrated, but the run and its questions are not written yet
    s = load_state(db, None, workdir=tmp_path)
    assert phase(s) == "not started" and "NOT STARTED" in text(render(s))


def test_sampling_shows_progress_rates_eta_and_memory(finished: MonitorState):
    s = running_copy(finished, "sample", 2, 4, "questions", "20.0 tok/s")
    s.sampled_tokens = 240
    assert phase(s) == "running"
    out = text(render(s))
    assert "now: round 1 · sample (attempt 1)" in out
    assert "2/4 questions  50%" in out and "ETA 0m10s" in out
    assert "0.20 q/s" in out and "240 tokens  24.0 tok/s  (stage: 20.0 tok/s)" in out
    assert "stage pid 4242 RSS 512 MB" in out
    assert "RUNNING" in out and "controller pid 4241" in out
    row = next(line for line in out.splitlines() if line.lstrip().startswith("1 ") and "adapter-r001" in line)
    assert "running (sample)" in row and "▶10" in row


def test_eta_is_over_the_phase_in_progress(finished: MonitorState):
    """A later phase (greedy after sampling) or a resumed attempt: the rate counts only what this phase did
    since it began, not the stage's whole time over a count that an earlier phase or attempt filled."""
    s = running_copy(finished, "sample", 2, 8, "greedy", "diagnostics")
    s.current.update(progress_since=s.now - 4, progress_since_done=0)  # 2 done in the phase's 4 s
    assert "2/8 greedy  25%" in text(render(s)) and "ETA 0m12s" in text(render(s))
    s.current.update(progress_done=6, progress_total=8, progress_since=s.now - 4, progress_since_done=4)
    assert "ETA 0m04s" in text(render(s))  # resumed with 4 done: 2 more in 4 s, 2 to go
    s.current.update(progress_since_done=6)
    assert "ETA -" in text(render(s))  # nothing done in this phase yet: no rate to go by


def test_training_shows_step_loss_and_learning_rate(finished: MonitorState):
    s = running_copy(finished, "train", 2, 3, "steps")
    s.last_train_step = {"step": 2, "loss": 1.23456, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 900.0}
    s.recent_losses = [2.0, 1.5, 1.0]
    out = text(render(s))
    assert "training: step 2/3  loss 1.2346  lr 1.00e-03  grad norm 0.5  900 tok/s" in out
    assert "loss █▅▁" in out
    assert "not evaluated yet" not in out  # adapter-r001 still has its metrics in this edited copy


def test_scoring(finished: MonitorState):
    s = running_copy(finished, "score", 1, 3, "utilities", "random")
    assert "scoring: utility random (1 of 3 done)" in text(render(s))
    s = running_copy(finished, "score", 0, 0, "")
    assert "score: starting (loading models and data)" in text(render(s))


def test_eval_and_between_stages(finished: MonitorState):
    s = running_copy(finished, "eval", 3, 8, "questions", "adapter-r001  0.50 q/s")
    out = text(render(s))
    assert "evaluating: 3/8 questions  0.30 q/s  adapter-r001" in out
    s.current, s.stage_alive, s.next_stage = None, None, _stage(s, 1, "eval")
    assert phase(s) == "between stages"
    assert "between stages; next: eval of round 1" in text(render(s))


def test_crashed_when_stage_process_and_controller_are_gone(finished: MonitorState):
    s = running_copy(finished, "train", 1, 3, "steps")
    s.stage_alive, s.controller_pid, s.rss_mb = False, None, None
    assert phase(s) == "crashed"
    out = text(render(s))
    assert "CRASHED: train of round 1 was running (pid 4242) but that process is gone" in out
    assert "sealong-loop start --workdir" in out


def test_crashed_detected_from_a_real_database(run_dir: Path, tmp_path: Path):
    wd = copy_workdir(run_dir, tmp_path / "copy")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    db = connect(wd)
    db.execute("UPDATE runs SET status = 'running', message = NULL")
    db.execute(
        "UPDATE stages SET status = 'running', pid = ? WHERE name = 'eval' AND round_id = "
        "(SELECT id FROM rounds WHERE idx = 1)",
        (dead.pid,),
    )
    s = load_state(connect(wd, readonly=True), None, workdir=wd)
    assert s.current["name"] == "eval" and s.stage_alive is False and s.rss_mb is None
    assert phase(s) == "crashed"
    # The same stage, held by a live process (this one): running, with its memory read from /proc.
    db.execute("UPDATE stages SET pid = ? WHERE name = 'eval' AND status = 'running'", (os.getpid(),))
    s = load_state(connect(wd, readonly=True), os.getpid(), workdir=wd)
    assert phase(s) == "running" and s.rss_mb > 10 and s.controller_rss_mb > 10
    assert f"stage pid {os.getpid()} RSS" in text(render(s))


def test_failed_and_stopped(finished: MonitorState):
    s = copy.deepcopy(finished)
    s.run.update(status="failed", message="pairs of round 1 failed (2 attempt(s)): injected fault")
    s.errors = [
        {"round": 1, "stage": "pairs", "status": "failed", "attempts": 2, "error": "injected fault", "at": 0}
    ]
    out = text(render(s))
    assert (
        "FAILED: pairs of round 1 failed" in out
        and "last error (pairs of round 1, attempt 2): injected fault" in out
    )
    assert "errors" in out and "round 1 pairs (attempt 2)" in out
    s.run.update(status="stopped", message="stopped on request")
    s.errors = []
    assert "STOPPED: stopped on request" in text(render(s))


def test_not_promoted_round_and_height_limit(finished: MonitorState):
    s = copy.deepcopy(finished)
    last = s.rounds[-1]
    decision = json.loads(last["decision_json"])
    last["decision_json"] = json.dumps({**decision, "promoted": False, "gain": -2.5})
    out = text(render(s))
    assert "kept" in out and "-2.5" in out
    for k in range(2, 40):
        s.rounds.append({**last, "id": 1000 + k, "idx": k})
    out = text(render(s, height=40))
    assert "rounds (last" in out and "earlier)" in out and " 39 " in out


def test_helpers():
    assert task_labels(["synthetic-1hop", "synthetic-2hop"]) == ["1hop", "2hop"]
    assert task_labels(["hotpotqa", "musique"]) == ["hotpotqa", "musique"]
    assert sparkline([3.0, 2.0, 1.0]) == "█▅▁" and sparkline([]) == ""
    assert fmt_secs(75) == "1m15s" and fmt_secs(3725) == "1h02m" and fmt_secs(None) == "-"


def test_gpu_memory_from_nvidia_smi(tmp_path: Path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(
        '#!/bin/sh\ncase "$1" in\n'
        "  --query-gpu=*) echo '0, GPU-a, 2048, 81920'; echo '1, GPU-b, 10, 81920';;\n"
        "  --query-compute-apps=*) echo 'GPU-a, 4242, 1536'; echo 'GPU-a, 99, 500';;\n"
        "esac\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setitem(monitor._GPU_CACHE, "at", 0.0)
    gpus = monitor.gpu_memory([4242])
    assert gpus == [
        {"index": 0, "used_mb": 2048.0, "total_mb": 81920.0, "stage_mb": 1536.0},
        {"index": 1, "used_mb": 10.0, "total_mb": 81920.0, "stage_mb": 0.0},
    ]
    s = MonitorState(run={"status": "running", "name": "x", "max_rounds": 1, "message": None}, gpu=gpus)
    assert "GPU0 2.0/80.0 GB (stage 1.5)" in text(memory(s))


def test_status_json_and_plain(run_dir: Path):
    state = json.loads(cli("status", "--workdir", str(run_dir), "--json", check=True).stdout)
    assert state["phase"] == "finished" and len(state["rounds"]) == 2 and state["champion"] == "adapter-r001"
    proc = cli("status", "--workdir", str(run_dir), "--watch", "--json")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def _watch_in_pty(workdir: Path, seconds: float) -> tuple[int, str]:
    """Run `status --watch` on a 140x50 pseudo-terminal, then type Ctrl-C into it."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update(COLUMNS="140", LINES="50", TERM="xterm-256color")
        os.execv(
            sys.executable,
            [*CLI, "status", "--watch", "--interval", "0.2", "--workdir", str(workdir)],
        )
    out, deadline, sent = b"", time.monotonic() + seconds, False
    while True:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        if not sent and time.monotonic() > deadline:
            os.write(fd, b"\x03")  # the terminal turns it into SIGINT for the foreground process
            sent = True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_watch_in_a_terminal_refreshes_and_leaves_cleanly_on_ctrl_c(run_dir: Path):
    code, out = _watch_in_pty(run_dir, 3.0)
    assert code == 0, out[-2000:]
    assert "Traceback" not in out and "interrupted" not in out
    assert out.count("FINISHED") >= 3  # refreshed several times, then printed once more on exit
    assert "adapter-r001" in out and "recent events" in out


def test_watch_waits_for_a_run_that_has_not_started(tmp_path: Path):
    code, out = _watch_in_pty(tmp_path / "not-yet", 1.5)
    assert code == 0 and "NOT STARTED" in out and "Traceback" not in out


def test_watch_off_a_terminal_prints_plain_event_lines(run_dir: Path):
    proc = subprocess.Popen(
        [*CLI, "status", "--watch", "--interval", "0.2", "--workdir", str(run_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(2.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "run created" in out and "finished: 2 round(s) done" in out and "╭" not in out
    n_events = one(connect(run_dir, readonly=True), "SELECT COUNT(*) AS n FROM events")["n"]
    assert len([line for line in out.splitlines() if line.startswith("[")]) == n_events


def test_signal_table_shows_each_rounds_diagnostics_and_gate(finished: MonitorState, run_dir: Path):
    db = connect(run_dir, readonly=True)
    stored = rows(
        db,
        "SELECT r.idx, d.utility, d.metric, d.value FROM diagnostics d JOIN rounds r ON r.id = d.round_id",
    )
    assert {d["idx"] for d in stored} == {0, 1}
    for d in stored:
        key = d["metric"] if d["utility"] == "-" else f"{d['metric']}/{d['utility']}"
        assert finished.diagnostics[d["idx"]][key] == d["value"]
    out = text(render(finished), width=200)
    assert "signal and gate" in out and "oracle@N" in out and "MBR embedding" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("1 ") and "margin" in line)
    oracle = finished.diagnostics[1]["oracle"]
    assert f"{oracle:.1f}" in row.split()
    decision = json.loads(finished.rounds[1]["decision_json"])
    assert f"{decision['gain']:+.1f}" in row
    state = json.loads(cli("status", "--workdir", str(run_dir), "--json", check=True).stdout)
    assert state["diagnostics"]["1"]["oracle"] == oracle
