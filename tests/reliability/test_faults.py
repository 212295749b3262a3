"""kill -9 at chosen points inside every stage (and the controller between them), restart, verify.

One run of one round on the tiny random Llama takes ten faults: each kills the stage process or the
controller at a named point (including inside the atomic writes and between an adapter's rename and its
commit) or after a delay; the harness restarts the controller until the run finishes and checks
`sealong.loop.engine.integrity.verify` after every fault. scripts/fault_campaign.py runs the same at scale.
A replicated round (sample.replicas = 2) takes kills of a replica, its coordinator and the controller,
and ends with the rows of round 0 of the uninterrupted one-process run in conftest.py.
"""

from __future__ import annotations

from pathlib import Path

from sealong.store.db import connect, one, rows

from .conftest import reliability_config
from .harness import Fault, run_with_faults, summary_json

# Every stage, every kind of point; child and controller victims.
FAULTS = [
    Fault("sample", 0, "progress", "child"),  # some questions' samples committed
    Fault("sample", 0, "write-partial@base", "controller"),  # the base model half written in its temp dir
    Fault("score", 0, "timer", "controller", delay=1.5),
    Fault("pairs", 0, "mark-done", "child"),  # inside the last transaction, before COMMIT
    Fault("train", 0, "after-rename@adapter-*", "child"),  # adapter in place, not recorded
    Fault("train", 0, "after-commit", "child"),  # recorded done, process not exited
    Fault("eval", 0, "progress", "controller"),  # some eval rows committed
    Fault("promote", 0, "launched", "controller"),
    Fault("promote", 0, "mark-done", "controller"),
    Fault("round", 0, "before-done", "controller"),
]


def test_kills_inside_every_stage_lose_nothing(tmp_path: Path):
    cfg = reliability_config(tmp_path / "c.toml", train={"epochs": 1})
    report = run_with_faults(
        tmp_path / "run", cfg, [Fault(f.stage, f.round, f.where, f.victim, f.delay) for f in FAULTS]
    )
    assert report.violations == [], summary_json(report)
    assert report.finished
    assert [f.label for f in report.faults if not f.fired] == [], summary_json(report)
    assert report.inet_sockets == [], "the controller or a stage process held a TCP/UDP socket"
    # Every kill was followed by a restart or a retry: more than one controller lifetime, same data.
    assert len(report.lifetimes) >= 6
    db = connect(report.workdir, readonly=True)
    train = one(db, "SELECT attempts FROM stages WHERE name = 'train'")
    assert train["attempts"] == 2  # killed after its rename; then killed after its commit, which stands
    assert (
        one(
            db,
            "SELECT COUNT(*) AS n FROM events WHERE message LIKE 'train was recorded done, then its process exited%'",
        )["n"]
        == 1
    )


# -- data-parallel sample and eval (sealong.loop.engine.replicas) ------------------------------------------------------

ROUND0 = "JOIN rounds r ON r.id = t.round_id WHERE r.idx = 0"
SAMPLES = f"SELECT question_id, sample_idx, text, n_tokens, seed FROM samples t {ROUND0} ORDER BY 1, 2"
GREEDY = f"SELECT question_id, text FROM greedy t {ROUND0} ORDER BY 1"
EVALS = f"SELECT model_key, question_id, output, subem, truncated FROM evals t {ROUND0} ORDER BY 1, 2"


def _round0_tables(wd: Path) -> dict[str, list[tuple]]:
    db = connect(wd, readonly=True)
    return {q: [tuple(r.values()) for r in rows(db, q)] for q in (SAMPLES, GREEDY, EVALS)}


def test_two_replicas_give_the_rows_one_process_gives_through_kills(tmp_path: Path, paused_at_round1_train):
    """A replicated round, with a replica, its coordinator and the controller killed on the way, ends with
    the samples, greedy answers and eval rows of one process that was never interrupted (round 0 of the
    paused run: the same config but for the replicas and the retry bound)."""
    faults = [
        Fault("sample", 0, "progress", "child"),  # a replica SIGKILLs itself after committing a question
        # the coordinator is killed: its replicas die with it
        Fault("sample", 0, "timer", "child", delay=3.0),
        Fault("eval", 0, "progress", "controller"),  # a replica SIGKILLs the controller
    ]
    cfg = reliability_config(
        tmp_path / "c.toml",
        sample={"replicas": 2},
        run={"max_stage_retries": 3},  # two kills in one stage are retried, not a failed run
    )
    report = run_with_faults(tmp_path / "run", cfg, faults)
    assert report.violations == [], summary_json(report)
    assert report.finished, summary_json(report)
    assert [f.label for f in report.faults if not f.fired] == [], summary_json(report)
    reference = _round0_tables(paused_at_round1_train.workdir)
    assert all(reference.values())
    assert _round0_tables(report.workdir) == reference
    db = connect(report.workdir, readonly=True)
    started = rows(
        db, "SELECT stage, COUNT(*) AS k FROM events WHERE message LIKE '% started (attempt %' GROUP BY stage"
    )
    assert {r["stage"]: r["k"] for r in started}["sample"] >= 3  # two kills, then the attempt that finished
    assert len(report.lifetimes) == 2  # the controller was killed once, during eval
    failed = rows(db, "SELECT message FROM events WHERE message LIKE 'sample failed: replica % of 2 exited%'")
    assert failed, "the coordinator did not report the killed replica"
    assert '"replicas": 2' in one(db, "SELECT output_json FROM stages WHERE name = 'sample'")["output_json"]
    # two processes did the work, each its share
    for verb in ("sampled", "answered"):
        done = [
            r["message"].split()
            for r in rows(db, "SELECT message FROM events WHERE message LIKE ?", (f"replica %: {verb} %",))
        ]
        assert {m[1] for m in done} == {"0/2:", "1/2:"} and len({m[-1] for m in done}) >= 2, done
