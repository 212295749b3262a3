"""kill -9 at chosen points inside every stage (and the controller between them), restart, verify.

One run of one round on the tiny random Llama takes ten faults: each kills the stage process or the
controller at a named point (including inside the atomic writes and between an adapter's rename and its
commit) or after a delay; the harness restarts the controller until the run finishes and checks
`sealong.loop.integrity.verify` after every fault. scripts/fault_campaign.py runs the same at scale.
"""

from __future__ import annotations

from pathlib import Path

from sealong.store.db import connect, one

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
