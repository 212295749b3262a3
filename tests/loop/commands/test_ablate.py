"""`sealong-loop ablate` end to end on the tiny model: arms as ordinary runs from the same base, seeds and
questions; the report; a restart that must keep the plan."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sealong.store.db import connect, rows

from ...conftest import TINY_CONFIG, cli

ARMS = ["mbr-embedding", "random"]


@pytest.fixture(scope="module")
def ablation_dir(tmp_path_factory) -> Path:
    wd = tmp_path_factory.mktemp("ablate") / "abl"
    cli(
        "ablate", "--config", str(TINY_CONFIG), "--arms", ",".join(ARMS), "--rounds", "1",
        "--workdir", str(wd), "--plain", check=True, timeout=900,
    )  # fmt: skip
    return wd


def _db(wd: Path, arm: str):
    return connect(wd / arm, readonly=True)


def test_each_arm_is_a_run_with_its_selection_on_the_same_questions_and_samples(ablation_dir: Path):
    seen = {}
    for arm in ARMS:
        db = _db(ablation_dir, arm)
        assert [r["status"] for r in rows(db, "SELECT status FROM rounds ORDER BY idx")] == ["done"]
        assert {p["selection"] for p in rows(db, "SELECT selection FROM pairs")} == {arm}
        seen[arm] = (
            [q["id"] for q in rows(db, "SELECT id FROM questions ORDER BY split, id")],
            [s["text"] for s in rows(db, "SELECT text FROM samples ORDER BY question_id, sample_idx")],
            rows(db, "SELECT question_id, subem FROM evals WHERE model_key = 'base' ORDER BY question_id"),
        )
    a, b = seen.values()
    assert a[0] == b[0] and a[1] == b[1] and a[2] == b[2]  # same questions, same round-0 samples, same base
    assert a[1]  # there were samples to compare


def test_the_report_compares_the_arms(ablation_dir: Path):
    out = ablation_dir / "report"
    res = json.loads((out / "ablation.json").read_text())
    assert res["arms"] == ARMS and res["plan"]["rounds"] == 1
    n_eval = len(rows(_db(ablation_dir, "random"), "SELECT id FROM questions WHERE split = 'eval'"))
    assert {(r["arm"], r["round"]) for r in res["rows"]} == {(a, r) for a in ARMS for r in (-1, 0)}
    assert all(r["n"] == n_eval for r in res["rows"])
    (diff,) = res["diffs"]
    assert (diff["arm"], diff["vs"], diff["round"], diff["n"]) == ("random", "mbr-embedding", 0, n_eval)
    assert res["pooled"][0]["rounds"] == [0]
    md = (out / "ablation.md").read_text()
    assert (
        "| random − mbr-embedding | 0 |" in md
        and "mean of rounds 0 |" in md
        and "![SubEM per round and arm](ablation.png)" in md
    )
    assert (out / "ablation.png").stat().st_size > 10_000


def test_a_restart_follows_the_plan(ablation_dir: Path, tmp_path: Path):
    again = cli("ablate", "--workdir", str(ablation_dir), "--plain")
    assert again.returncode == 0, again.stderr
    for arm in ARMS:  # nothing redone
        assert len(rows(_db(ablation_dir, arm), "SELECT id FROM rounds")) == 1
    wrong = cli("ablate", "--workdir", str(ablation_dir), "--arms", "mbr-embedding,greedy-as-chosen")
    assert wrong.returncode != 0 and "arms are mbr-embedding,random" in wrong.stderr
    assert "Traceback" not in wrong.stderr
    other = tmp_path / "other.toml"
    other.write_text(TINY_CONFIG.read_text().replace("seed = 0", "seed = 1"))
    changed = cli("ablate", "--workdir", str(ablation_dir), "--config", str(other))
    assert changed.returncode != 0 and "differs from the base config" in changed.stderr
    lineage = cli("lineage", "--workdir", str(ablation_dir / "random"), "--json", check=True)
    assert "adapter-r000" in lineage.stdout


def test_report_only_needs_an_ablation(tmp_path: Path):
    proc = cli("ablate", "--workdir", str(tmp_path / "none"), "--report-only")
    assert proc.returncode != 0 and "holds no ablation" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_more_rounds_interleave_the_arms(ablation_dir: Path):
    proc = cli("ablate", "--workdir", str(ablation_dir), "--rounds", "2", "--plain", check=True, timeout=900)
    assert "round 0 started" not in proc.stdout  # a resumed arm prints only its new events
    assert proc.stdout.count("round 1 started") == 2
    starts = []
    for arm in ARMS:
        rs = rows(_db(ablation_dir, arm), "SELECT idx, started_at FROM rounds ORDER BY idx")
        assert [r["idx"] for r in rs] == [0, 1]
        starts += [(r["started_at"], arm, r["idx"]) for r in rs]
    assert [(a, i) for _, a, i in sorted(starts)] == [(ARMS[0], 0), (ARMS[1], 0), (ARMS[0], 1), (ARMS[1], 1)]
