"""Lineage questions, one SQL query each."""

from __future__ import annotations

import json
from typing import Any

import sqlite_utils
from sealong.store.db import one, rows

PARENT_CHAIN_SQL = """
WITH RECURSIVE chain(id, parent_id, round_id, status, sha256, path, depth) AS (
    SELECT id, parent_id, round_id, status, sha256, path, 0 FROM adapters WHERE id = :adapter
    UNION ALL
    SELECT a.id, a.parent_id, a.round_id, a.status, a.sha256, a.path, chain.depth + 1
    FROM adapters a JOIN chain ON a.id = chain.parent_id
)
SELECT id, parent_id, round_id, status, sha256, path, depth FROM chain ORDER BY depth
"""

# Per model ('base' or adapter id): mean over tasks of per-task SubEM, plus mean output tokens.
ADAPTER_METRICS_SQL = """
WITH per_task AS (
    SELECT model_key, task, COUNT(*) AS n, 100.0 * AVG(subem) AS subem, AVG(n_tokens) AS mean_tokens
    FROM evals GROUP BY model_key, task
)
SELECT p.model_key, a.status, a.round_id, a.parent_id,
       AVG(p.subem) AS mean_subem, SUM(p.n) AS n_questions, AVG(p.mean_tokens) AS mean_tokens,
       json_group_object(p.task, round(p.subem, 2)) AS per_task_json
FROM per_task p LEFT JOIN adapters a ON a.id = p.model_key
GROUP BY p.model_key ORDER BY COALESCE(a.created_at, 0)
"""

TRAINING_DATA_SQL = """
SELECT a.id AS adapter_id, r.idx AS round_idx, p.id AS pair_id, p.question_id,
       q.question, p.selection, cs.id AS chosen_sample_id, p.chosen_greedy_id, cs.mbr_score AS chosen_score,
       rs.id AS rejected_sample_id, rs.mbr_score AS rejected_score
FROM adapters a
JOIN rounds r ON r.id = a.round_id
JOIN pairs p ON p.round_id = a.round_id
JOIN questions q ON q.id = p.question_id
LEFT JOIN samples cs ON cs.id = p.chosen_sample_id
JOIN samples rs ON rs.id = p.rejected_sample_id
WHERE a.id = :adapter ORDER BY p.id
"""


# A round's training questions as recorded when it started; a round from before round_questions (0008):
# the questions its pairs were made of
ROUND_QUESTIONS_SQL = """
SELECT q.id, q.question, q.meta_json, rq.is_new FROM round_questions rq JOIN questions q ON q.id = rq.question_id
WHERE rq.round_id = :round ORDER BY rq.position
"""
PAIRED_QUESTIONS_SQL = """
SELECT q.id, q.question, q.meta_json, NULL AS is_new FROM questions q
WHERE q.id IN (SELECT question_id FROM pairs WHERE round_id = :round) ORDER BY q.pool_index
"""


def parent_chain(db: sqlite_utils.Database, adapter_id: str) -> list[dict[str, Any]]:
    """The adapter, its parent, its parent's parent, … (depth 0 first)."""
    return rows(db, PARENT_CHAIN_SQL, {"adapter": adapter_id})


def adapter_metrics(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Eval metrics of the base model and of every evaluated adapter."""
    return rows(db, ADAPTER_METRICS_SQL)


def training_data(db: sqlite_utils.Database, adapter_id: str) -> list[dict[str, Any]]:
    """The questions and pairs that trained an adapter."""
    return rows(db, TRAINING_DATA_SQL, {"adapter": adapter_id})


def trained_questions(db: sqlite_utils.Database, round_id: int) -> list[dict[str, Any]]:
    """A round's training questions: id, the question (its first 80 characters, one line), whether no
    earlier round had it (None: not recorded), and where it came from (your own data: file:line)."""
    has_table = one(db, "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'round_questions'")
    got = rows(db, ROUND_QUESTIONS_SQL, {"round": round_id}) if has_table else []
    out = []
    for q in got or rows(db, PAIRED_QUESTIONS_SQL, {"round": round_id}):
        meta = json.loads(q["meta_json"] or "{}")
        text = " ".join(q["question"].split())
        out.append(
            {
                "id": q["id"],
                "question": text if len(text) <= 80 else text[:79] + "…",
                "new": None if q["is_new"] is None else bool(q["is_new"]),
                "from": f"{meta['file']}:{meta['line']}" if "file" in meta and "line" in meta else None,
            }
        )
    return out


def diagnostics_by_round(db: sqlite_utils.Database, run_id: int | None = None) -> dict[int, dict[str, float]]:
    """Round index -> {"greedy": %, "oracle": %, "mbr/embedding": %, ...}: the per-round SubEM diagnostics
    (keys are the metric, or metric/utility for a utility's MBR pick). Empty for a store from before them."""
    if not one(db, "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'diagnostics'"):
        return {}
    out: dict[int, dict[str, float]] = {}
    for d in rows(
        db,
        "SELECT r.idx, d.utility, d.metric, d.value FROM diagnostics d JOIN rounds r ON r.id = d.round_id "
        "WHERE ? IS NULL OR r.run_id = ? ORDER BY r.idx",
        (run_id, run_id),
    ):
        key = d["metric"] if d["utility"] == "-" else f"{d['metric']}/{d['utility']}"
        out.setdefault(d["idx"], {})[key] = d["value"]
    return out
