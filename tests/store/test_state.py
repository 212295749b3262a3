"""store/state.py is the only writer of the run, round and stage tables, and its transitions hold."""

from __future__ import annotations

from pathlib import Path

import pytest
from sealong.loop.stages.registry import STAGE_NAMES
from sealong.store import state
from sealong.store.db import Transaction, connect, one, rows
from sealong.store.state import RoundStatus, RunStatus, StageStatus

from .sql_scan import read_tables, written_tables

PACKAGE = Path(state.__file__).resolve().parents[1]  # the source tree: loop/, store/, kernels/
STATE_TABLES = {"runs", "rounds", "stages"}


def _sources() -> list[Path]:
    files = [p for d in ("loop", "store", "kernels") for p in sorted((PACKAGE / d).rglob("*.py"))]
    assert len(files) > 20, f"found only {len(files)} sources under {PACKAGE}: wrong root?"
    return files


# -- the scanner itself --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "source, written",
    [
        ('db.execute("UPDATE runs SET stop_requested = 1")', {"runs"}),
        ("db.execute('''\n  update\n    stages\n  set status = ?''', (s,))", {"stages"}),
        ('db.execute(f"INSERT INTO rounds (run_id) VALUES ({run_id})")', {"rounds"}),
        ('db.execute(f"DELETE FROM {x} WHERE 1"); db.execute("DELETE FROM stages")', {"stages"}),
        ('db.execute("UPDATE samples SET x = 1 " "WHERE id IN (SELECT id FROM stages)")', {"samples"}),
        ('sql = "INSERT OR REPLACE " + "INTO runs (id) VALUES (1)"', {"runs"}),
        ('db.execute("REPLACE INTO rounds (id) VALUES (1)")', {"rounds"}),
        ('db["stages"].update(1, {"status": "done"})', {"stages"}),
        ('db.table("runs").insert({"name": "x"})', {"runs"}),
        ('def f():\n    """Update stages, then runs: prose, not SQL."""', set()),
        ('raise ValueError("could not update the config; delete from disk")', set()),
        ("db.execute(\"SELECT * FROM stages WHERE status = 'done'\")", set()),
    ],
)
def test_the_scanner_finds_writes_in_every_spelling_of_a_sql_string(source: str, written: set[str]):
    assert written_tables(source) == written


def test_the_scanner_finds_reads_but_not_deletes():
    src = 'db.execute("DELETE FROM pairs WHERE round_id IN (SELECT id FROM rounds JOIN runs ON 1)")'
    assert read_tables(src) == {"rounds", "runs"}
    assert written_tables(src) == {"pairs"}


# -- the rule ------------------------------------------------------------------------------------------
def test_only_store_state_writes_the_run_round_and_stage_tables():
    offenders = {
        str(p.relative_to(PACKAGE)): sorted(found)
        for p in _sources()
        if p.resolve() != Path(state.__file__).resolve()
        and (found := written_tables(p.read_text()) & STATE_TABLES)
    }
    assert offenders == {}, f"write runs/rounds/stages through sealong.store.state, not: {offenders}"
    assert written_tables(Path(state.__file__).read_text()) == STATE_TABLES


# -- transitions ---------------------------------------------------------------------------------------
@pytest.fixture
def db(tmp_path: Path):
    db = connect(tmp_path)
    with Transaction(db):
        run_id = state.create_run(db, "t", "{}", None, max_rounds=3)
        state.start_round(db, run_id, 0, None, STAGE_NAMES)
    yield db
    db.close()


def _stage(db, name: str = "sample") -> dict:
    return one(db, "SELECT * FROM stages WHERE name = ?", (name,))


def test_a_round_starts_with_its_stages_pending_in_registry_order(db):
    assert one(db, "SELECT status, idx FROM rounds") == {"status": RoundStatus.RUNNING, "idx": 0}
    stages = rows(db, "SELECT name, seq, status, attempts FROM stages ORDER BY seq")
    assert [s["name"] for s in stages] == list(STAGE_NAMES)
    assert {s["status"] for s in stages} == {StageStatus.PENDING}
    assert one(db, "SELECT status FROM runs")["status"] == RunStatus.RUNNING


def test_a_done_stage_is_never_turned_back(db):
    sid = _stage(db)["id"]
    state.claim_stage(db, sid, 1)
    state.set_stage_pid(db, sid, 4242)
    state.mark_stage_done(db, sid, '{"n": 1}')
    state.mark_stage_failed(db, sid, "died after its commit")
    state.release_stage(db, sid)
    state.reset_interrupted(db, sid)
    state.claim_stage(db, sid, 2)
    st = _stage(db)
    assert (st["status"], st["attempts"], st["error"], st["output_json"]) == ("done", 1, None, '{"n": 1}')


def test_a_failed_stage_keeps_its_error_and_a_restart_retries_it_afresh(db):
    sid = _stage(db)["id"]
    rid = one(db, "SELECT id FROM rounds")["id"]
    run_id = one(db, "SELECT id FROM runs")["id"]
    state.claim_stage(db, sid, 1)
    state.mark_stage_failed(db, sid, "boom")
    state.mark_round_failed(db, rid)
    state.finish_run(db, run_id, RunStatus.FAILED, "boom")
    assert (_stage(db)["status"], _stage(db)["error"]) == (StageStatus.FAILED, "boom")
    state.request_stop(db)
    with Transaction(db):
        state.reopen_failed(db, run_id)
    assert (_stage(db)["status"], _stage(db)["attempts"]) == (StageStatus.PENDING, 0)
    assert one(db, "SELECT status FROM rounds")["status"] == RoundStatus.RUNNING
    run = one(db, "SELECT status, stop_requested, finished_at, message FROM runs")
    assert run == {"status": "running", "stop_requested": 0, "finished_at": None, "message": None}


def test_an_interruption_on_request_does_not_count_as_an_attempt_but_a_crash_does(db):
    sid = _stage(db)["id"]
    state.claim_stage(db, sid, 1)
    state.set_stage_pid(db, sid, 4242)
    state.release_stage(db, sid)
    assert (_stage(db)["status"], _stage(db)["attempts"], _stage(db)["pid"]) == ("pending", 0, None)
    state.claim_stage(db, sid, 1)
    state.reset_interrupted(db, sid)  # a controller killed with the stage running
    assert (_stage(db)["status"], _stage(db)["attempts"]) == ("pending", 1)


def test_a_pid_is_recorded_only_while_the_stage_runs(db):
    sid = _stage(db)["id"]
    state.set_stage_pid(db, sid, 4242)
    assert _stage(db)["pid"] is None
    state.claim_stage(db, sid, 1)
    state.set_stage_pid(db, sid, 4242)
    assert _stage(db)["pid"] == 4242


def test_claiming_a_stage_clears_what_its_last_attempt_left(db):
    sid = _stage(db)["id"]
    state.claim_stage(db, sid, 1)
    state.start_progress_phase(db, sid, 2)
    state.record_progress(db, sid, 5, 10, "questions", "half")
    st = _stage(db)
    assert (st["progress_done"], st["progress_total"], st["progress_unit"], st["progress_since_done"]) == (
        5,
        10,
        "questions",
        2,
    )
    state.mark_stage_failed(db, sid, "boom")
    state.claim_stage(db, sid, 2)
    st = _stage(db)
    assert (st["status"], st["attempts"], st["error"], st["progress_done"], st["progress_note"]) == (
        "running",
        2,
        None,
        0,
        "",
    )


def test_mark_stage_done_rolls_back_with_the_stage_writes(db):
    sid = _stage(db)["id"]
    with pytest.raises(RuntimeError), Transaction(db):
        state.mark_stage_done(db, sid, "{}")
        raise RuntimeError("killed before the commit")
    assert _stage(db)["status"] == StageStatus.PENDING


def test_a_round_records_its_candidate_decision_and_end(db):
    rid = one(db, "SELECT id FROM rounds")["id"]
    state.set_candidate(db, rid, None)  # no adapters in this store: only the column is under test
    state.record_decision(db, rid, True, '{"rule": "x"}')
    state.mark_round_done(db, rid)
    r = one(db, "SELECT status, promoted, decision_json, finished_at FROM rounds")
    assert (r["status"], r["promoted"], r["decision_json"]) == ("done", 1, '{"rule": "x"}')
    assert r["finished_at"] is not None


def test_finishing_a_run_again_keeps_its_first_finish_time(db):
    run_id = one(db, "SELECT id FROM runs")["id"]
    state.finish_run(db, run_id, RunStatus.FINISHED, "done: 3 rounds", finished_at=123.0)
    assert one(db, "SELECT status, finished_at, message FROM runs") == {
        "status": "finished",
        "finished_at": 123.0,
        "message": "done: 3 rounds",
    }
    state.set_max_rounds(db, run_id, 5)
    assert one(db, "SELECT max_rounds FROM runs")["max_rounds"] == 5
