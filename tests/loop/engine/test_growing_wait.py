"""The daemon waiting for new data, through the real CLI and in seconds (no model runs): a run whose
round 0 has trained on every record waits and says so, stops at once on request, and when a record is
appended starts round 1 on that record alone (a half-written line is never read); with max_rounds set,
the same run finishes instead, saying why. Two real rounds on an appended record: test_growing_run.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from sealong.loop.config import config_from_dict
from sealong.loop.engine.intake import record_round
from sealong.loop.engine.workdir import ensure_run, questions_for
from sealong.loop.errors import EXIT_FAILED, EXIT_STOPPED
from sealong.loop.stages.registry import STAGE_NAMES
from sealong.store import state
from sealong.store.db import Transaction, connect, one, rows

from ...conftest import CLI, cli, wait_for


def _line(i: int) -> bytes:
    return json.dumps({"id": f"q{i}", "question": f"Q{i}?", "context": f"Context {i}."}).encode() + b"\n"


def _wait_for(pred, timeout: float = 60, what: str = "condition"):
    return wait_for(pred, timeout, what, every=0.1)


def _message(wd: Path) -> str:
    return one(connect(wd, readonly=True), "SELECT message FROM runs")["message"] or ""


def _run_with_round_0_done(tmp_path: Path, max_rounds: int) -> tuple[Path, Path]:
    """A run on two records whose round 0 trained on both (its history written as the controller does)."""
    data = tmp_path / "mine.jsonl"
    data.write_bytes(_line(0) + _line(1))
    cfg = config_from_dict(
        {
            "run": {"max_rounds": max_rounds, "poll_seconds": 0.3, "max_stage_retries": 0},
            "policy": {"model": "tiny-random-llama"},
            "data": {"train_source": "jsonl", "train_path": str(data), "questions_per_round": 2},
        },
        check_paths=False,
    )
    wd = tmp_path / "wd"
    db = connect(wd)
    run_id = ensure_run(db, cfg, wd, None, questions_for(cfg))
    with Transaction(db):
        rid = state.start_round(db, run_id, 0, None, STAGE_NAMES)
        record_round(db, rid, [("q0", True), ("q1", True)])
        state.mark_round_done(db, rid)
    db.conn.close()
    return wd, data


def _start(wd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "start", "--workdir", str(wd), "--plain", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_a_run_until_stopped_waits_for_new_data_then_trains_on_it(tmp_path: Path):
    wd, data = _run_with_round_0_done(tmp_path, max_rounds=0)
    proc = _start(wd)
    try:
        _wait_for(lambda: _message(wd).startswith("waiting for new data since"), what="the wait")
        status = json.loads(cli("status", "--workdir", str(wd), "--json", check=True).stdout)
        assert status["phase"] == "waiting" and "(2 question(s) trained, 0 new)" in status["run"]["message"]
        t0 = time.monotonic()
        cli("stop", "--workdir", str(wd), check=True)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == EXIT_STOPPED, out
        assert time.monotonic() - t0 < 15  # the wait wakes for a stop request (a CLI start is ~5 s)
        assert one(connect(wd, readonly=True), "SELECT status FROM runs")["status"] == "stopped"

        # resumed: q2 is appended and q3 half-written; round 1 is q2 alone (its sample stage is made to
        # fail at once, so no model runs: the run fails, resumable, with round 1 recorded)
        proc = _start(wd, env={"SEALONG_FAULT": "sample#1:start:fail"})
        _wait_for(lambda: _message(wd).startswith("waiting for new data since"), what="the wait again")
        with open(data, "ab") as f:
            f.write(_line(2) + b'{"id": "q3", "question": "Q3?", "cont')
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_FAILED, out
    db = connect(wd, readonly=True)
    assert [r["id"] for r in rows(db, "SELECT id FROM questions WHERE split = 'train'")] == ["q0", "q1", "q2"]
    got = rows(
        db,
        "SELECT r.idx, rq.question_id, rq.is_new FROM round_questions rq JOIN rounds r ON r.id = rq.round_id "
        "ORDER BY r.idx, rq.position",
    )
    assert [(g["idx"], g["question_id"], g["is_new"]) for g in got] == [
        (0, "q0", 1),
        (0, "q1", 1),
        (1, "q2", 1),
    ]
    events = [e["message"] for e in rows(db, "SELECT message FROM events ORDER BY id")]
    assert any("1 new question(s) from" in e and "(lines 3–3)" in e for e in events), events
    assert any(e.startswith("waiting for new data since") for e in events)


def test_with_max_rounds_set_a_run_with_nothing_new_finishes_and_says_why(tmp_path: Path):
    wd, _ = _run_with_round_0_done(tmp_path, max_rounds=3)
    proc = cli("start", "--workdir", str(wd), "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = one(connect(wd, readonly=True), "SELECT status, message FROM runs")
    assert run == {
        "status": "finished",
        "message": "finished: no new questions to train on (2 trained, [data] new_questions = only-new)",
    }
    again = cli("start", "--workdir", str(wd), "--plain")
    assert "nothing to do" in again.stdout and "append records to the training data" in again.stdout


def test_a_signal_wakes_a_waiting_run_at_once(tmp_path: Path):
    wd, _ = _run_with_round_0_done(tmp_path, max_rounds=0)
    proc = _start(wd)
    try:
        _wait_for(lambda: _message(wd).startswith("waiting for new data since"), what="the wait")
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_STOPPED and time.monotonic() - t0 < 5, out
    assert one(connect(wd, readonly=True), "SELECT status FROM runs")["status"] == "stopped"
