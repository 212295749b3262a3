"""Lineage questions through the CLI: `lineage` (tree and --json), `show ADAPTER`, and read-only `query`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sealong.store.db import connect, one, rows

from ...conftest import cli
from .test_status import copy_workdir, tiny_ops_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tiny_ops_run(tmp_path_factory)


def _clean_failure(proc, code: int = 2) -> None:
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_lineage_json_is_the_adapter_tree_with_metrics_per_task(run_dir: Path):
    data = json.loads(cli("lineage", "--workdir", str(run_dir), "--json", check=True).stdout)
    by_id = {a["id"]: a for a in data["adapters"]}
    assert set(by_id) == {"adapter-r000", "adapter-r001"}
    assert by_id["adapter-r000"]["parent_id"] is None and by_id["adapter-r001"]["parent_id"] == "adapter-r000"
    assert by_id["adapter-r001"]["status"] == "champion" and by_id["adapter-r000"]["status"] == "retired"
    assert [by_id[k]["round"] for k in ("adapter-r000", "adapter-r001")] == [0, 1]
    assert all(a["promoted"] is True and a["gain_vs_champion"] is not None for a in data["adapters"])
    tasks = {r["task"] for r in rows(connect(run_dir, readonly=True), "SELECT DISTINCT task FROM evals")}
    assert set(data["base"]["per_task"]) == tasks and data["base"]["mean_subem"] is not None
    assert all(set(a["per_task"]) == tasks and a["mean_subem"] is not None for a in data["adapters"])


def test_lineage_tree(run_dir: Path):
    out = cli("lineage", "--workdir", str(run_dir), env={"COLUMNS": "200"}, check=True).stdout
    lines = out.splitlines()
    assert lines[0].startswith("base model  SubEM")
    r0 = next(i for i, line in enumerate(lines) if "adapter-r000" in line)
    r1 = next(i for i, line in enumerate(lines) if "adapter-r001" in line)
    assert lines[r0].startswith("└── adapter-r000  round 0  retired") and "synthetic-1hop" in lines[r0]
    assert lines[r1].startswith("    └── adapter-r001  round 1  champion") and r1 > r0


def _pairs_sha(db, round_idx: int) -> tuple[int, str]:
    got = rows(
        db,
        "SELECT p.question_id, c.text AS chosen, r.text AS rejected FROM pairs p "
        "JOIN samples c ON c.id = p.chosen_sample_id JOIN samples r ON r.id = p.rejected_sample_id "
        "JOIN rounds ON rounds.id = p.round_id WHERE rounds.idx = ? ORDER BY p.id",
        (round_idx,),
    )
    h = hashlib.sha256()
    for p in got:
        h.update(
            (json.dumps([p["question_id"], p["chosen"], p["rejected"]], ensure_ascii=False) + "\n").encode()
        )
    return len(got), h.hexdigest()


def test_show_json(run_dir: Path):
    d = json.loads(cli("show", "adapter-r001", "--workdir", str(run_dir), "--json", check=True).stdout)
    db = connect(run_dir, readonly=True)
    assert d["parent_chain"] == ["adapter-r001", "adapter-r000", "base"]
    assert d["round"] == 1 and d["status"] == "champion"
    n_pairs, digest = _pairs_sha(db, 1)
    assert d["data"]["pairs"] == n_pairs >= 1 and d["data"]["sha256"] == digest
    qids = [
        r["question_id"]
        for r in rows(
            db,
            "SELECT question_id FROM pairs p JOIN rounds r ON r.id = p.round_id "
            "WHERE r.idx = 1 ORDER BY p.id",
        )
    ]
    assert d["data"]["question_ids"] == qids
    assert d["config"]["train"]["lora_r"] == 4 and d["config"]["policy_model"] == "tiny-random-llama"
    assert d["training"]["steps"] >= 1 and d["training"]["init"] == "champion"
    adapter = one(db, "SELECT * FROM adapters WHERE id = 'adapter-r001'")
    assert d["weights"] == {
        "path": str(run_dir / adapter["path"]),
        "sha256": adapter["sha256"],
        "verified": True,
        "problem": None,
    }
    assert set(d["metrics"]["per_task"]) == {"synthetic-1hop", "synthetic-2hop"}
    assert d["decision"]["promoted"] is True and d["decision"]["champion"] == "adapter-r000"
    champion = json.loads(cli("show", "champion", "--workdir", str(run_dir), "--json", check=True).stdout)
    assert champion["id"] == "adapter-r001"


def test_show_text(run_dir: Path):
    out = cli("show", "adapter-r000", "--workdir", str(run_dir), env={"COLUMNS": "250"}, check=True).stdout
    for needle in (
        "adapter-r000  (retired, round 0)",
        "parent chain   adapter-r000 → base",
        "verified: yes",
        "[train] batch_size=1",
        "lora_r=4",
        "training data  round 0:",
        "data sha256 ",
        "questions: syn-train-",
        "metrics        SubEM",
        "decision       promoted vs base",
    ):
        assert needle in out, needle


def test_show_reports_changed_weights(run_dir: Path, tmp_path: Path):
    wd = copy_workdir(run_dir, tmp_path / "copy")
    weights = wd / "adapters" / "adapter-r000" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    d = json.loads(cli("show", "adapter-r000", "--workdir", str(wd), "--json", check=True).stdout)
    assert d["weights"]["verified"] is False and "sha256" in d["weights"]["problem"]
    assert (
        "verified: NO (files in adapters/adapter-r000 do not match the recorded sha256"
        in cli("show", "adapter-r000", "--workdir", str(wd), env={"COLUMNS": "250"}).stdout
    )


def test_show_unknown_adapter(run_dir: Path):
    proc = cli("show", "adapter-r999", "--workdir", str(run_dir))
    _clean_failure(proc)
    assert "adapter-r000, adapter-r001" in proc.stderr


def test_query_table_and_json(run_dir: Path):
    sql = "SELECT model_key, task, n FROM eval_summary ORDER BY model_key, task"
    got = json.loads(cli("query", sql, "--workdir", str(run_dir), "--json", check=True).stdout)
    expected = rows(connect(run_dir, readonly=True), sql)
    assert got == expected and len(got) == 6
    out = cli("query", sql, "--workdir", str(run_dir), env={"COLUMNS": "120"}, check=True).stdout
    assert "model_key" in out and "adapter-r001" in out and "6 row(s)" in out
    assert (
        cli("query", "SELECT NULL AS empty_value", "--workdir", str(run_dir), check=True).stdout.count("NULL")
        >= 1
    )


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO events (ts, level, message) VALUES (0, 'info', 'sneaky')",
        "UPDATE runs SET status = 'finished'",
        "DELETE FROM pairs",
        "DROP TABLE events",
        "CREATE TABLE notes (x)",
        "ATTACH DATABASE 'other.db' AS other",
        "VACUUM INTO 'copy.db'",
    ],
)
def test_query_refuses_writes(run_dir: Path, tmp_path: Path, sql: str, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where ATTACH / VACUUM INTO would create their files
    db_file = run_dir / "sealong.db"
    before = (db_file.stat().st_mtime_ns, db_file.stat().st_size)
    counts = {
        t: one(connect(run_dir, readonly=True), f"SELECT COUNT(*) AS n FROM {t}")["n"]
        for t in ("events", "pairs")
    }
    proc = cli("query", sql, "--workdir", str(run_dir))
    _clean_failure(proc)
    assert "refused" in proc.stderr
    assert (db_file.stat().st_mtime_ns, db_file.stat().st_size) == before
    db = connect(run_dir, readonly=True)
    assert {t: one(db, f"SELECT COUNT(*) AS n FROM {t}")["n"] for t in counts} == counts
    assert one(db, "SELECT status FROM runs")["status"] == "finished"
    assert list(tmp_path.iterdir()) == []


def test_query_errors_are_one_line(run_dir: Path, tmp_path: Path):
    _clean_failure(cli("query", "SELEC 1", "--workdir", str(run_dir)))
    _clean_failure(cli("query", "SELECT 1; SELECT 2", "--workdir", str(run_dir)))
    _clean_failure(cli("query", "SELECT 1", "--workdir", str(tmp_path / "nothing")))
