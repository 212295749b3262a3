"""The controller end to end through the real CLI, on the tiny random Llama: a whole round, then a second
one resumed on the same workdir; bounded retries. Kills, stops and a second controller are tested in
tests/reliability (test_failures.py, test_faults.py)."""

from __future__ import annotations

import json
from pathlib import Path

from sealong.store.artifacts import sha256_dir
from sealong.store.db import connect, one, rows

from ...conftest import cli, write_config
from ..commands.test_status import copy_workdir, tiny_ops_run


def _db(wd: Path):
    return connect(wd, readonly=True)


def _assert_round_complete(wd: Path, n: int = 4, questions: int = 3) -> dict:
    db = _db(wd)
    rnd = one(db, "SELECT * FROM rounds WHERE idx = 0")
    assert rnd["status"] == "done"
    stages = rows(db, "SELECT name, status FROM stages WHERE round_id = ? ORDER BY seq", (rnd["id"],))
    assert [(s["name"], s["status"]) for s in stages] == [
        (name, "done") for name in ("sample", "score", "pairs", "train", "eval", "promote")
    ]
    per_q = rows(
        db,
        "SELECT question_id, COUNT(*) AS k, COUNT(mbr_score) AS scored FROM samples WHERE round_id = ? "
        "GROUP BY question_id",
        (rnd["id"],),
    )
    assert len(per_q) == questions and all(r["k"] == n and r["scored"] == n for r in per_q)
    adapters = rows(db, "SELECT * FROM adapters WHERE round_id = ?", (rnd["id"],))
    assert len(adapters) == 1
    a = adapters[0]
    assert (wd / a["path"] / "adapter_model.safetensors").is_file()
    assert (wd / a["path"] / "adapter_config.json").is_file()
    assert sha256_dir(wd / a["path"]) == a["sha256"]
    assert not list((wd / "adapters").glob(".tmp-*"))
    keys = {
        r["model_key"]
        for r in rows(db, "SELECT DISTINCT model_key FROM evals WHERE round_id = ?", (rnd["id"],))
    }
    assert keys == {"base", a["id"]}
    n_eval = one(db, "SELECT COUNT(*) AS n FROM questions WHERE split = 'eval'")["n"]
    assert one(db, "SELECT COUNT(*) AS n FROM evals WHERE model_key = ?", (a["id"],))["n"] == n_eval
    assert rnd["promoted"] in (0, 1) and json.loads(rnd["decision_json"])["candidate"] == a["id"]
    return {"round": rnd, "adapter": a}


def test_whole_round_through_cli(tmp_path_factory, tmp_path: Path):
    """`start` runs a whole round; `start --max-rounds 2` resumes the same run for a second round, which
    samples from the champion. The run is the session's ops run (tiny_ops_run), which is built that way."""
    wd = tiny_ops_run(tmp_path_factory)
    assert "finished: 1 round(s) done" in (wd.parent / "first-start.txt").read_text()
    out = _assert_round_complete(wd)
    pairs = one(_db(wd), "SELECT COUNT(*) AS n FROM pairs WHERE round_id = ?", (out["round"]["id"],))["n"]
    assert 1 <= pairs <= 3
    # The adapter loads with PEFT on the base model.
    from peft import PeftModel
    from sealong.loop.backends.models import load_causal_lm

    model = PeftModel.from_pretrained(load_causal_lm(wd / "models" / "base"), wd / out["adapter"]["path"])
    assert any("lora_A" in n for n, _ in model.named_parameters())
    status = json.loads(cli("status", "--workdir", str(wd), "--json", check=True).stdout)
    assert status["run"]["status"] == "finished" and len(status["rounds"]) == 2
    lin = json.loads(cli("lineage", "--workdir", str(wd), "--json", check=True).stdout)
    assert [a["id"] for a in lin["adapters"]] == [out["adapter"]["id"], "adapter-r001"]
    assert lin["base"]["mean_subem"] is not None
    # Round 1 sampled from the champion: round 0's candidate, promoted (this run's margin is -1).
    r1 = one(_db(wd), "SELECT * FROM rounds WHERE idx = 1")
    assert r1["status"] == "done" and out["round"]["promoted"] == 1
    assert r1["policy_adapter_id"] == out["adapter"]["id"]
    assert one(_db(wd), "SELECT id FROM adapters WHERE status = 'champion'")["id"] == "adapter-r001"
    ok = cli("verify", "--workdir", str(wd), "--finished")
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stdout + ok.stderr
    damaged = copy_workdir(wd, tmp_path / "damaged")
    weights = next((damaged / out["adapter"]["path"]).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # flip the tail: the sha256 no longer matches
    bad = cli("verify", "--workdir", str(damaged))
    assert bad.returncode == 1 and out["adapter"]["id"] in bad.stdout and "Traceback" not in bad.stderr


def test_starting_a_finished_run_again_says_so_once_and_changes_nothing(tmp_path_factory, tmp_path: Path):
    wd = copy_workdir(tiny_ops_run(tmp_path_factory), tmp_path / "again")
    before = one(_db(wd), "SELECT status, message, finished_at FROM runs")
    n_events = one(_db(wd), "SELECT COUNT(*) AS n FROM events")["n"]
    proc = cli("start", "--workdir", str(wd), "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing to do: this run had already finished (2 round(s) done (max_rounds = 2))" in proc.stdout
    assert f"sealong-loop start --workdir {wd} --max-rounds N" in proc.stdout
    banner = proc.stdout.split("nothing to do")[0]  # the first lines (rich wraps a long workdir path)
    assert "its stored config" in " ".join(banner.split())
    assert one(_db(wd), "SELECT status, message, finished_at FROM runs") == before  # its finish time kept
    assert one(_db(wd), "SELECT COUNT(*) AS n FROM events")["n"] == n_events  # no second "finished" event


def test_failed_stage_is_retried_within_bound_then_resumable(tmp_path: Path):
    wd = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", run={"max_stage_retries": 1})
    proc = cli("start", "--config", str(cfg), "--workdir", str(wd), env={"SEALONG_FAULT": "pairs:5"})
    assert proc.returncode == 3 and "Traceback" not in proc.stderr + proc.stdout
    assert "pairs of round 0 failed (2 attempt(s)): RuntimeError: injected fault" in proc.stdout
    db = _db(wd)
    assert one(db, "SELECT status FROM runs")["status"] == "failed"
    st = one(db, "SELECT status, attempts, error FROM stages WHERE name = 'pairs'")
    assert st["status"] == "failed" and st["attempts"] == 2 and "injected fault" in st["error"]
    sampled = rows(db, "SELECT id, text FROM samples ORDER BY id")
    # One injected failure is absorbed by a retry; sample and score are not redone.
    proc = cli("start", "--workdir", str(wd), env={"SEALONG_FAULT": "pairs:1"}, check=True)
    assert "retrying" in proc.stdout
    _assert_round_complete(wd)
    assert rows(_db(wd), "SELECT id, text FROM samples ORDER BY id") == sampled
    assert one(_db(wd), "SELECT attempts FROM stages WHERE name = 'sample'")["attempts"] == 1
