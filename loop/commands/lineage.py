"""Lineage answers for the CLI: the adapter tree, one adapter's full record, and read-only SQL.

    sealong-loop lineage --workdir runs/demo [--json]
    sealong-loop show adapter-r001 --workdir runs/demo [--json]
    sealong-loop query "SELECT model_key, task, subem FROM eval_summary" --workdir runs/demo [--json]

Everything reads over `connect(workdir, readonly=True)`: SQLite itself refuses any write on it.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import click
import sqlite_utils
from rich.console import Group
from rich.table import Table
from rich.text import Text
from rich.tree import Tree
from sealong.loop.commands import common
from sealong.loop.errors import QueryError, SealongError
from sealong.store.artifacts import adapter_problems
from sealong.store.db import has_schema, one, rows
from sealong.store.queries import adapter_metrics, parent_chain, trained_questions

PAIR_TEXTS_SQL = """
SELECT p.id AS pair_id, p.question_id, COALESCE(cs.text, cg.text) AS chosen, rs.text AS rejected
FROM pairs p LEFT JOIN samples cs ON cs.id = p.chosen_sample_id LEFT JOIN greedy cg ON cg.id = p.chosen_greedy_id
JOIN samples rs ON rs.id = p.rejected_sample_id
WHERE p.round_id = ? ORDER BY p.id
"""


def _metrics(db: sqlite_utils.Database) -> dict[str, dict[str, Any]]:
    out = {}
    for m in adapter_metrics(db):
        out[m["model_key"]] = {
            "mean_subem": m["mean_subem"],
            "per_task": json.loads(m["per_task_json"] or "{}"),
            "n_questions": m["n_questions"],
            "mean_tokens": m["mean_tokens"],
        }
    return out


def lineage(db: sqlite_utils.Database) -> dict[str, Any]:
    """The base model and every adapter: parent, round, status, metrics, and the promotion decision."""
    if not has_schema(db):  # a controller is creating the database: as a run with nothing done yet
        return {"base": {"mean_subem": None, "per_task": {}}, "adapters": []}
    metrics = _metrics(db)
    adapters = rows(
        db,
        "SELECT a.id, a.parent_id, a.status, a.sha256, a.path, r.idx AS round, r.decision_json "
        "FROM adapters a JOIN rounds r ON r.id = a.round_id ORDER BY a.created_at",
    )
    for a in adapters:
        m = metrics.get(a["id"], {})
        a["mean_subem"] = m.get("mean_subem")
        a["per_task"] = m.get("per_task", {})
        decision = json.loads(a.pop("decision_json") or "{}")
        a["promoted"] = decision.get("promoted")
        a["gain_vs_champion"] = decision.get("gain")
    base = metrics.get("base", {})
    return {
        "base": {"mean_subem": base.get("mean_subem"), "per_task": base.get("per_task", {})},
        "adapters": adapters,
    }


def _scores(mean: float | None, per_task: dict[str, float]) -> str:
    if mean is None:
        return "not evaluated"
    tasks = " · ".join(f"{k} {v:.1f}" for k, v in sorted(per_task.items()))
    return f"SubEM {mean:.1f}" + (f" ({tasks})" if tasks else "")


def render_lineage(data: dict[str, Any]) -> Tree:
    base = data["base"]
    root = Tree(Text.assemble(("base model", "bold"), f"  {_scores(base['mean_subem'], base['per_task'])}"))
    nodes: dict[str | None, Tree] = {None: root}
    style = {"champion": "bold green", "rejected": "dim", "retired": "", "candidate": "yellow"}
    for a in data["adapters"]:
        gain = (
            f"  Δ {a['gain_vs_champion']:+.1f} vs its champion" if a["gain_vs_champion"] is not None else ""
        )
        label = Text.assemble(
            (a["id"], "bold"),
            f"  round {a['round']}  ",
            (a["status"], style.get(a["status"], "")),
            f"  {_scores(a['mean_subem'], a['per_task'])}{gain}  sha256 {a['sha256'][:12]}",
        )
        nodes[a["id"]] = nodes.get(a["parent_id"], root).add(label)
    return root


def resolve_adapter(db: sqlite_utils.Database, name: str) -> dict[str, Any]:
    """An adapter row by id, or `champion` for the current champion."""
    if not has_schema(db):
        raise SealongError("no adapter yet: a controller is creating this run's database")
    if name == "champion":
        row = one(db, "SELECT * FROM adapters WHERE status = 'champion'")
        if row is None:
            raise SealongError("no adapter has been promoted yet: the champion is the base model")
        return row
    row = one(db, "SELECT * FROM adapters WHERE id = ?", (name,))
    if row is None:
        known = [r["id"] for r in rows(db, "SELECT id FROM adapters ORDER BY created_at")]
        raise SealongError(f"no adapter {name!r} in this run (known: {', '.join(known) or 'none yet'})")
    return row


def pairs_digest(pairs: list[dict[str, Any]]) -> str:
    """sha256 over the pairs, in pair order: one JSON line [question id, chosen text, rejected text] each."""
    h = hashlib.sha256()
    for p in pairs:
        h.update(
            (json.dumps([p["question_id"], p["chosen"], p["rejected"]], ensure_ascii=False) + "\n").encode()
        )
    return h.hexdigest()


def weights_problem(workdir: Path, adapter: dict[str, Any]) -> str | None:
    """None when the adapter could be used (its files match the recorded sha256); else what is wrong."""
    return "; ".join(adapter_problems(workdir, adapter)) or None


def adapter_details(db: sqlite_utils.Database, workdir: Path, name: str) -> dict[str, Any]:
    """What `show` prints: parent chain, config, training data, metrics, decision, weights."""
    a = resolve_adapter(db, name)
    rnd = one(db, "SELECT idx, decision_json FROM rounds WHERE id = ?", (a["round_id"],))
    run = one(db, "SELECT config_json FROM runs WHERE id = ?", (a["run_id"],))
    config = json.loads(run["config_json"])
    pairs = rows(db, PAIR_TEXTS_SQL, (a["round_id"],))
    pairs_stage = one(
        db, "SELECT output_json FROM stages WHERE round_id = ? AND name = 'pairs'", (a["round_id"],)
    )
    pairs_out = json.loads((pairs_stage or {}).get("output_json") or "{}")
    skipped = pairs_out.get("skipped", {})
    chain = parent_chain(db, a["id"])
    problem = weights_problem(workdir, a)
    paired = {p["question_id"] for p in pairs}
    return {
        "id": a["id"],
        "status": a["status"],
        "round": rnd["idx"],
        "created_at": a["created_at"],
        "parent_chain": [c["id"] for c in chain] + ["base"],
        "weights": {
            "path": str(workdir / a["path"]),
            "sha256": a["sha256"],
            "verified": problem is None,
            "problem": problem,
        },
        "config": {"policy_model": config["policy"]["model"], "train": config["train"]},
        "training": json.loads(a["train_json"] or "{}"),
        "data": {
            "round": rnd["idx"],
            "pairs": len(pairs),
            "selection": pairs_out.get("selection") or _selection_of(config),
            "skipped": skipped,
            "question_ids": [p["question_id"] for p in pairs],
            "sha256": pairs_digest(pairs),
        },
        "questions": [{**q, "paired": q["id"] in paired} for q in trained_questions(db, a["round_id"])],
        "ancestors": [
            {
                "id": c["id"],
                "round": one(db, "SELECT idx FROM rounds WHERE id = ?", (c["round_id"],))["idx"],
                "question_ids": [q["id"] for q in trained_questions(db, c["round_id"])],
            }
            for c in chain[1:]
        ],
        "metrics": _metrics(db).get(a["id"]),
        "decision": json.loads(rnd["decision_json"] or "null"),
    }


def _selection_of(config: dict[str, Any]) -> str:
    """The [pairs] selection arm of a stored config; a run from before [pairs] made MBR pairs by its utility."""
    from sealong.loop.config import UTILITY_SELECTION

    if "selection" in config.get("pairs", {}):
        return config["pairs"]["selection"]
    utility = config.get("score", {}).get("utility", "embedding")
    return UTILITY_SELECTION.get(utility, f"mbr-{utility}")


def render_details(d: dict[str, Any]) -> Group:
    t = Table(
        show_header=False,
        box=None,
        title=f"{d['id']}  ({d['status']}, round {d['round']})",
        title_justify="left",
        title_style="bold",
    )
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")

    def row(field: str, value: str) -> None:
        t.add_row(field, Text(value))  # Text, not markup: values hold brackets like [train]

    row("parent chain", " → ".join(d["parent_chain"]))
    w = d["weights"]
    row(
        "weights",
        f"{w['path']}\nsha256 {w['sha256']}  verified: "
        + ("yes" if w["verified"] else f"NO ({w['problem']})"),
    )
    tr = d["training"]
    if tr:
        row(
            "training",
            f"init {tr.get('init', '?')}, {tr.get('steps', '?')} steps, loss "
            f"{tr.get('first_loss', float('nan')):.4f} → {tr.get('last_loss', float('nan')):.4f}, "
            f"{tr.get('seconds', 0):.1f} s, loss backend {tr.get('loss_backend', '?')}",
        )
    cfg = d["config"]
    row(
        "config",
        f"policy {cfg['policy_model']}\n[train] " + ", ".join(f"{k}={v}" for k, v in cfg["train"].items()),
    )
    data = d["data"]
    skipped = sum(data["skipped"].values())
    row(
        "training data",
        f"round {data['round']}: {data['pairs']} pairs ({data.get('selection', '?')}) from "
        f"{len(set(data['question_ids']))} questions ({skipped} skipped), data sha256 {data['sha256']}\n"
        f"questions: {', '.join(data['question_ids'])}",
    )
    if d["questions"]:
        row(
            "questions",
            "\n".join(
                f"{q['id']}  {q['question']}"
                + (f"  ({q['from']})" if q["from"] else "")
                + ("" if q["paired"] else "  [no pair: skipped]")
                + ("  [trained before]" if q["new"] is False else "")
                for q in d["questions"]
            ),
        )
    if d["ancestors"]:
        row(
            "ancestors' questions",
            "\n".join(
                f"{anc['id']} (round {anc['round']}): {len(anc['question_ids'])} questions: "
                + ", ".join(anc["question_ids"][:12])
                + (", …" if len(anc["question_ids"]) > 12 else "")
                for anc in d["ancestors"]
            ),
        )
    m = d["metrics"]
    row(
        "metrics",
        _scores(m["mean_subem"], m["per_task"]) + f", {m['n_questions']} questions, "
        f"{m['mean_tokens']:.0f} tokens on average"
        if m
        else "not evaluated",
    )
    dec = d["decision"]
    if dec:
        verdict = "promoted" if dec["promoted"] else "not promoted"
        row(
            "decision",
            f"{verdict} vs {dec['champion']}: gain {dec['gain']:+.2f} ({dec['rule']}: {dec['reason']})",
        )
    return Group(t)


def run_query(db: sqlite_utils.Database, sql: str) -> tuple[list[str], list[tuple]]:
    """Columns and rows of one statement. Writes fail in SQLite itself: the connection is read-only.

    ATTACH (and VACUUM INTO, which attaches its target) would open another file read-write, so the
    connection's limit on attached databases is set to zero first.
    """
    db.conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    try:
        cur = db.conn.execute(sql)
        result = cur.fetchall()
    except sqlite3.Error as e:
        if "readonly" in str(e):
            raise QueryError(f"refused: {e} (`query` opens the database read-only)") from None
        if getattr(e, "sqlite_errorname", "") == "SQLITE_IOERR_LOCK":
            # e.g. PRAGMA journal_mode=DELETE: a change that needs a write lock a read-only file cannot take
            raise QueryError(
                f"refused: the statement tries to change the database, which `query` opens read-only "
                f"(SQLite: {e})"
            ) from None
        if "too many attached" in str(e):
            raise QueryError(
                "refused: `query` does not attach other databases (ATTACH, VACUUM INTO)"
            ) from None
        raise QueryError(f"query failed: {e}") from None
    finally:
        if db.conn.in_transaction:
            db.conn.rollback()
    columns = [c[0] for c in cur.description] if cur.description else []
    return columns, [tuple(r) for r in result]


def _cell(v: Any) -> Any:
    return v.hex() if isinstance(v, bytes) else v


def query_json(columns: list[str], result: list[tuple]) -> list[dict[str, Any]]:
    return [{c: _cell(v) for c, v in zip(columns, r)} for r in result]


def render_query(columns: list[str], result: list[tuple]) -> Table:
    t = Table(caption=f"{len(result)} row(s)", caption_justify="left")
    for i, c in enumerate(columns):
        numeric = bool(result) and all(isinstance(r[i], (int, float)) or r[i] is None for r in result)
        t.add_column(c, overflow="fold", justify="right" if numeric else "left")
    for r in result:
        t.add_row(*[Text("NULL", style="dim") if v is None else Text(str(_cell(v))) for v in r])
    return t


@click.command("lineage")
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print adapters, parents and metrics as JSON.")
def lineage_command(workdir: str, as_json: bool) -> None:
    """The adapter tree: each adapter's parent (the champion that sampled its data), round, status, SubEM per task.

    Example: sealong-loop lineage --workdir runs/demo --json
    """
    _, db = common.readonly_db(workdir)
    data = lineage(db)
    if as_json:
        common.echo_json(data)
    else:
        common.console().print(render_lineage(data))


@click.command("show")
@click.argument("adapter")
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def show_command(adapter: str, workdir: str, as_json: bool) -> None:
    """One adapter's record: parent chain, training config, the pairs that trained it (round, question ids,
    count, sha256 of their texts), the questions that trained it and its ancestors, its metrics and
    promotion decision, and its weights (sha256 checked now).

    ADAPTER is an adapter id (see `lineage`) or `champion`.

    Example: sealong-loop show adapter-r001 --workdir runs/demo
    """
    wd, db = common.readonly_db(workdir)
    details = adapter_details(db, wd, adapter)
    if as_json:
        common.echo_json(details)
    else:
        common.console().print(render_details(details))


@click.command("query")
@click.argument("sql")
@click.option("--workdir", default="runs/tiny-cpu", show_default=True, help="Run directory.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as a JSON list of objects.")
def query_command(sql: str, workdir: str, as_json: bool) -> None:
    """Run one SQL statement on the run's database, read-only: SQLite itself refuses any write.

    Tables and views are listed in the README ("The database"); `eval_summary` holds SubEM per model and task.

    Example: sealong-loop query "SELECT model_key, task, subem FROM eval_summary" --workdir runs/demo
    """
    _, db = common.readonly_db(workdir)
    columns, result = run_query(db, sql)
    if as_json:
        common.echo_json(query_json(columns, result))
    else:
        common.console().print(render_query(columns, result))
