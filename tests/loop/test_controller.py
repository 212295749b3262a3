"""The controller end to end through the real CLI, on the tiny random Llama: a whole round, resume after
kill -9 during training, bounded retries, refusal of a second controller, stop requests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from sealong.store.artifacts import sha256_dir
from sealong.store.db import connect, one, rows

from ..conftest import CLI, cli, write_config


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
    keys = {r["model_key"] for r in rows(db, "SELECT DISTINCT model_key FROM evals")}
    assert keys == {"base", a["id"]}
    n_eval = one(db, "SELECT COUNT(*) AS n FROM questions WHERE split = 'eval'")["n"]
    assert one(db, "SELECT COUNT(*) AS n FROM evals WHERE model_key = ?", (a["id"],))["n"] == n_eval
    assert rnd["promoted"] in (0, 1) and json.loads(rnd["decision_json"])["candidate"] == a["id"]
    return {"round": rnd, "adapter": a}


def test_whole_round_through_cli(tmp_path: Path):
    wd = tmp_path / "run"
    proc = cli("start", "--config", str(write_config(tmp_path / "c.toml")), "--workdir", str(wd), check=True)
    assert "finished: 1 round(s) done" in proc.stdout
    out = _assert_round_complete(wd)
    pairs = one(_db(wd), "SELECT COUNT(*) AS n FROM pairs")["n"]
    assert 1 <= pairs <= 3
    # The adapter loads with PEFT on the base model.
    from peft import PeftModel
    from sealong.loop.models import load_causal_lm

    model = PeftModel.from_pretrained(load_causal_lm(wd / "models" / "base"), wd / out["adapter"]["path"])
    assert any("lora_A" in n for n, _ in model.named_parameters())
    status = json.loads(cli("status", "--workdir", str(wd), "--json", check=True).stdout)
    assert status["run"]["status"] == "finished" and len(status["rounds"]) == 1
    lin = json.loads(cli("lineage", "--workdir", str(wd), "--json", check=True).stdout)
    assert [a["id"] for a in lin["adapters"]] == [out["adapter"]["id"]] and lin["base"][
        "mean_subem"
    ] is not None
    # Starting again with more rounds resumes the same run: round 1 samples from the champion.
    cli("start", "--workdir", str(wd), "--max-rounds", "2", check=True)
    r1 = one(_db(wd), "SELECT * FROM rounds WHERE idx = 1")
    assert r1["status"] == "done"
    champ = one(_db(wd), "SELECT id FROM adapters WHERE status = 'champion'")
    expected_policy = out["adapter"]["id"] if out["round"]["promoted"] else None
    assert r1["policy_adapter_id"] == expected_policy
    assert champ is None or champ["id"] in (out["adapter"]["id"], "adapter-r001")
    ok = cli("verify", "--workdir", str(wd), "--finished")
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stdout + ok.stderr
    weights = next((wd / out["adapter"]["path"]).glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # flip the tail: the sha256 no longer matches
    bad = cli("verify", "--workdir", str(wd))
    assert bad.returncode == 1 and out["adapter"]["id"] in bad.stdout and "Traceback" not in bad.stderr


def _start_background(cfg: Path, wd: Path, env: dict | None = None) -> subprocess.Popen:
    cmd = [*CLI, "start", "--config", str(cfg), "--workdir", str(wd), "--plain"]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}
    )


def _wait_for(pred, timeout: float = 300, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _train_running(wd: Path):
    if not (wd / "sealong.db").exists():
        return None
    try:
        return one(
            _db(wd),
            "SELECT s.pid FROM stages s WHERE s.name = 'train' AND s.status = 'running' "
            "AND EXISTS (SELECT 1 FROM train_steps)",
        )
    except Exception:  # noqa: BLE001 - the database may be mid-creation
        return None


def test_kill_during_training_then_resume(tmp_path: Path):
    wd = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", train={"epochs": 30})
    first = _start_background(cfg, wd)
    try:
        row = _wait_for(lambda: _train_running(wd), what="training to start")
        # A second controller on the same workdir is refused while the first runs.
        second = cli("start", "--workdir", str(wd))
        assert (
            second.returncode == 2 and "already running" in second.stderr and "Traceback" not in second.stderr
        )
        samples_before = rows(_db(wd), "SELECT * FROM samples ORDER BY id")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        # The stage child dies with its controller (PR_SET_PDEATHSIG): nothing keeps training.
        _wait_for(
            lambda: (
                not Path(f"/proc/{row['pid']}").exists()
                or Path(f"/proc/{row['pid']}/stat").read_text().split()[2] == "Z"
            ),
            30,
            "the train child to die",
        )
    finally:
        if first.poll() is None:
            first.kill()
    proc = cli("start", "--config", str(cfg), "--workdir", str(wd), check=True)
    assert "interrupted" in proc.stdout
    out = _assert_round_complete(wd)
    assert rows(_db(wd), "SELECT * FROM samples ORDER BY id") == samples_before  # not resampled, not rescored
    stages = {s["name"]: s["attempts"] for s in rows(_db(wd), "SELECT name, attempts FROM stages")}
    assert stages["sample"] == 1 and stages["score"] == 1 and stages["pairs"] == 1  # never redone
    assert stages["train"] == 2
    assert [p.name for p in (wd / "adapters").iterdir()] == [out["adapter"]["id"]]


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


def test_stop_request_and_resume(tmp_path: Path):
    wd = tmp_path / "run"
    cfg = write_config(tmp_path / "c.toml", train={"epochs": 10})
    first = _start_background(cfg, wd)
    try:
        _wait_for(lambda: _train_running(wd), what="training to start")
        proc = cli("stop", "--workdir", str(wd), check=True)
        assert "stops when the stage in flight (train) finishes" in proc.stdout
        out, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0 and "stopped on request" in out
    db = _db(wd)
    assert one(db, "SELECT status FROM runs")["status"] == "stopped"
    assert one(db, "SELECT status FROM stages WHERE name = 'train'")["status"] == "done"
    assert one(db, "SELECT status FROM stages WHERE name = 'eval'")["status"] == "pending"
    assert cli("stop", "--workdir", str(wd)).returncode == 2  # nothing running now
    cli("start", "--workdir", str(wd), check=True)
    _assert_round_complete(wd)
