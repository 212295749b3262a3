"""Your own data that keeps arriving, through the real CLI on the tiny random Llama: a run with
max_rounds = 0 trains on its records, waits (status says so), trains the next round on a record appended
meanwhile (and never on it twice, nor on a half-written line), reports a file truncated under it without
losing a recorded row, stops on request; `show champion` lists the questions that trained it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sealong.loop.errors import EXIT_STOPPED
from sealong.store.db import connect, one, rows

from ...conftest import CLI, cli, wait_for, write_config


def _rec(i: int) -> dict:
    return {"id": f"q{i}", "question": f"Where does Ann {i} live?", "context": f"Ann {i} lives in Oslo {i}."}


def _line(i: int) -> bytes:
    return json.dumps(_rec(i)).encode() + b"\n"


def _wait_for(pred, timeout: float = 300, what: str = "condition"):
    return wait_for(pred, timeout, what, every=0.2)


def _waiting_after(wd: Path, n_rounds: int) -> bool:
    db = connect(wd, readonly=True)
    done = one(db, "SELECT COUNT(*) AS n FROM rounds WHERE status = 'done'")["n"]
    message = one(db, "SELECT message FROM runs")["message"] or ""
    return done == n_rounds and message.startswith("waiting for new data")


@pytest.mark.slow  # two real rounds: ~80 s of CPU, 3-7 min on the shared 2 cores (fast: test_growing_wait.py)
def test_a_record_appended_between_rounds_is_trained_on_next_and_never_twice(tmp_path: Path):
    data = tmp_path / "mine.jsonl"
    data.write_bytes(_line(0) + _line(1))
    cfg = write_config(
        tmp_path / "c.toml",
        run={"max_rounds": 0, "patience": 5, "poll_seconds": 0.5},
        data={"train_source": "jsonl", "train_path": str(data), "questions_per_round": 2},
        promote={"rule": "margin", "margin": -1.0},
    )
    wd = tmp_path / "wd"
    proc = subprocess.Popen(
        [*CLI, "start", "--config", str(cfg), "--workdir", str(wd), "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(lambda: _waiting_after(wd, 1), what="round 0, then waiting")
        status = json.loads(cli("status", "--workdir", str(wd), "--json", check=True).stdout)
        assert status["phase"] == "waiting", status["phase"]
        assert "(2 question(s) trained, 0 new)" in status["run"]["message"]
        assert "WAITING" in cli("status", "--workdir", str(wd), check=True).stdout.upper()
        with open(data, "ab") as f:  # q2 appended; q3 is being written (no line end yet)
            f.write(_line(2) + b'{"id": "q3", "question": "Where does Ann 3 live?", "context": "Ann 3')
        _wait_for(lambda: _waiting_after(wd, 2), what="round 1, then waiting again")
        data.write_bytes(_line(0))  # truncated under the running daemon
        _wait_for(
            lambda: any(
                "changed under the run" in e["message"]
                for e in rows(connect(wd, readonly=True), "SELECT message FROM events WHERE level = 'warn'")
            ),
            what="the truncation reported",
        )
        cli("stop", "--workdir", str(wd), check=True)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_STOPPED, out
    db = connect(wd, readonly=True)
    assert one(db, "SELECT status FROM runs")["status"] == "stopped"
    per_round = {
        r["idx"]: r["ids"].split(",")
        for r in rows(
            db,
            "SELECT r.idx, group_concat(rq.question_id) AS ids FROM round_questions rq "
            "JOIN rounds r ON r.id = rq.round_id GROUP BY r.idx ORDER BY r.idx",
        )
    }
    assert per_round == {0: ["q0", "q1"], 1: ["q2"]}
    sampled = rows(db, "SELECT r.idx, s.question_id FROM samples s JOIN rounds r ON r.id = s.round_id")
    assert {(s["idx"], s["question_id"]) for s in sampled} == {(0, "q0"), (0, "q1"), (1, "q2")}
    got = rows(db, "SELECT id, context FROM questions WHERE split = 'train' ORDER BY pool_index")
    assert [(q["id"], q["context"]) for q in got] == [(f"q{i}", _rec(i)["context"]) for i in range(3)]
    show = json.loads(cli("show", "champion", "--workdir", str(wd), "--json", check=True).stdout)
    assert show["id"] == "adapter-r001"
    (q,) = show["questions"]
    assert (q["id"], q["question"], q["new"], q["from"]) == (
        "q2",
        "Where does Ann 2 live?",
        True,
        f"{data}:3",
    )
    assert show["ancestors"] == [{"id": "adapter-r000", "round": 0, "question_ids": ["q0", "q1"]}]
    text = cli("show", "champion", "--workdir", str(wd), check=True).stdout
    assert "Where does Ann 2 live?" in text and "adapter-r000 (round 0): 2 questions: q0, q1" in text
    ok = cli("verify", "--workdir", str(wd))
    assert ok.returncode == 0, ok.stdout + ok.stderr
