"""Integrity check of a workdir: what must hold after any crash, and what must hold once a run finished.

    from sealong.loop.engine.integrity import verify
    problems = verify("runs/demo")                 # at any moment: a crash-consistent state
    problems = verify("runs/demo", finished=True)  # and the run is complete, with nothing left over

Read-only (the database is opened with mode=ro). Returns a list of problems, each one line; [] is healthy.
A database file that is not SQLite, not ours, or empty is one problem; a missing one raises SealongError.
The reliability tests run it after every injected fault; `sealong-loop verify` (commands/verify.py) runs it.

At any moment: SQLite's own integrity and foreign-key checks pass; stages of a round are done in order;
a question has either no samples or exactly N with indices 0..N-1; a done stage has all its rows (samples
scored, pairs, train steps 1..S, N eval rows per model) and a stage that is not done has committed none
of its all-or-nothing rows (scores, pairs, adapter, decision); every adapter the store references exists,
holds safetensors weights only, and matches its sha256; the lineage holds: one champion at most, the
champion is the last promoted candidate, each adapter's parent is the policy that sampled its data.
Once finished: the run's status is `finished`, every round is done, and no temporary or unreferenced
artifact is left.
"""

from __future__ import annotations

import json
from pathlib import Path

from sealong.loop.engine.intake import rounds_question_ids
from sealong.loop.errors import IntegrityError
from sealong.store.artifacts import adapter_problems
from sealong.store.db import DB_NAME, connect, has_schema, one, rows
from sealong.store.state import RoundStatus, RunStatus, StageStatus


def verify(workdir: str | Path, finished: bool = False) -> list[str]:
    wd = Path(workdir).resolve()
    try:
        db = connect(wd, readonly=True)
    except IntegrityError as e:  # not a SQLite file, another application's database, or empty
        return [str(e)]
    if not has_schema(db):  # a controller is creating it this moment
        db.conn.close()
        return [f"{wd / DB_NAME}: no tables yet (a controller is creating the database)"]
    db.conn.execute("BEGIN")  # one snapshot for every query, while a controller may be writing
    try:
        problems = _sqlite(db)
        run = one(db, "SELECT * FROM runs ORDER BY id LIMIT 1")
        if run is None:
            return problems + ([f"{wd}: no run recorded"] if finished else [])
        cfg = json.loads(run["config_json"])
        n = cfg["sample"]["n"]
        n_eval = one(db, "SELECT COUNT(*) AS n FROM questions WHERE split = 'eval'")["n"]
        rounds = rows(db, "SELECT * FROM rounds WHERE run_id = ? ORDER BY idx", (run["id"],))
        problems += _rounds(db, rounds)
        for rnd in rounds:
            problems += _round(db, wd, rnd, n, n_eval, cfg)
        problems += _lineage(db, rounds)
        problems += _adapters(db, wd)
        if finished:
            problems += _finished(db, wd, run, rounds)
        return problems
    finally:
        db.conn.close()


def _sqlite(db) -> list[str]:
    out = []
    check = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
    if check != ["ok"]:
        out.append(f"sqlite integrity_check: {check[:3]}")
    fk = db.execute("PRAGMA foreign_key_check").fetchall()
    if fk:
        out.append(f"sqlite foreign_key_check: {len(fk)} dangling reference(s), e.g. {tuple(fk[0])}")
    return out


def _rounds(db, rounds: list[dict]) -> list[str]:
    out = []
    if [r["idx"] for r in rounds] != list(range(len(rounds))):
        out.append(f"round indices are not 0..{len(rounds) - 1}: {[r['idx'] for r in rounds]}")
    open_rounds = [r["idx"] for r in rounds if r["status"] != RoundStatus.DONE]
    if len(open_rounds) > 1 or (open_rounds and open_rounds[0] != rounds[-1]["idx"]):
        out.append(f"rounds not done other than the last: {open_rounds}")
    return out


def _stage_map(db, round_id: int) -> dict[str, dict]:
    return {
        s["name"]: s for s in rows(db, "SELECT * FROM stages WHERE round_id = ? ORDER BY seq", (round_id,))
    }


def _round(db, wd: Path, rnd: dict, n: int, n_eval: int, cfg: dict) -> list[str]:
    rid, tag = rnd["id"], f"round {rnd['idx']}"
    stages = _stage_map(db, rid)
    names = list(stages)
    out = []
    if names != ["sample", "score", "pairs", "train", "eval", "promote"]:
        return [f"{tag}: stages are {names}"]
    done = {k: s["status"] == StageStatus.DONE for k, s in stages.items()}
    for earlier, later in zip(names, names[1:]):
        if done[later] and not done[earlier]:
            out.append(f"{tag}: {later} is done but {earlier} is not")
    if rnd["status"] == RoundStatus.DONE and not all(done.values()):
        out.append(f"{tag}: marked done with stages {[k for k, v in done.items() if not v]} not done")

    # samples: per question all N or none; all round questions once sample is done
    per_q = rows(
        db,
        "SELECT question_id, COUNT(*) AS k, MIN(sample_idx) AS lo, MAX(sample_idx) AS hi, "
        "COUNT(mbr_score) AS scored FROM samples WHERE round_id = ? GROUP BY question_id",
        (rid,),
    )
    for q in per_q:
        if (q["k"], q["lo"], q["hi"]) != (n, 0, n - 1):
            out.append(
                f"{tag}: question {q['question_id']} has {q['k']} samples (indices {q['lo']}..{q['hi']}), expected {n}"
            )
    expected_q = (
        rounds_question_ids(db, rnd["id"]) if _has_table(db, "round_questions") else []
    ) or _round_question_ids(db, rnd["idx"], cfg)
    stray = {q["question_id"] for q in per_q} - set(expected_q)
    if stray:
        out.append(f"{tag}: samples for questions outside the round: {sorted(stray)[:3]}")
    if done["sample"] and len(per_q) != len(expected_q):
        out.append(f"{tag}: sample is done but {len(expected_q) - len(per_q)} question(s) have no samples")
    scored = sum(q["scored"] for q in per_q)
    total = sum(q["k"] for q in per_q)
    if done["score"] and scored != total:
        out.append(f"{tag}: score is done but {total - scored} sample(s) have no MBR score")
    if not done["score"] and scored:
        out.append(f"{tag}: score is not done but {scored} sample(s) have an MBR score (half a transaction?)")

    # pairs: only with pairs done; each from one question's own samples
    pairs = rows(
        db,
        "SELECT p.*, COALESCE(c.question_id, g.question_id) AS cq, COALESCE(c.round_id, g.round_id) AS cr, "
        "r.question_id AS rq, r.round_id AS rr FROM pairs p LEFT JOIN samples c ON c.id = p.chosen_sample_id "
        "LEFT JOIN greedy g ON g.id = p.chosen_greedy_id JOIN samples r ON r.id = p.rejected_sample_id "
        "WHERE p.round_id = ?",
        (rid,),
    )
    if pairs and not done["pairs"]:
        out.append(f"{tag}: {len(pairs)} pair(s) recorded but pairs is not done")
    for p in pairs:
        if (
            not (p["cq"] == p["rq"] == p["question_id"] and p["cr"] == p["rr"] == rid)
            or p["chosen_sample_id"] == p["rejected_sample_id"]
        ):
            out.append(f"{tag}: pair {p['id']} mixes questions, rounds or a sample with itself")
    if done["pairs"]:
        summary = json.loads(stages["pairs"]["output_json"] or "{}")
        if summary.get("pairs") != len(pairs):
            out.append(
                f"{tag}: pairs recorded {summary.get('pairs')} pairs in its summary, {len(pairs)} in the table"
            )

    # train: adapter row iff done; train steps 1..S exactly once
    adapters = rows(db, "SELECT * FROM adapters WHERE round_id = ?", (rid,))
    if done["train"]:
        if len(adapters) != 1 or rnd["candidate_adapter_id"] != adapters[0]["id"]:
            out.append(
                f"{tag}: train is done but the round has {len(adapters)} adapter(s), candidate {rnd['candidate_adapter_id']}"
            )
        steps = [
            r["step"]
            for r in rows(db, "SELECT step FROM train_steps WHERE round_id = ? ORDER BY step", (rid,))
        ]
        s_done = json.loads(stages["train"]["output_json"] or "{}").get("steps")
        if steps != list(range(1, len(steps) + 1)) or len(steps) != s_done:
            out.append(f"{tag}: train steps recorded {steps[:12]}, expected 1..{s_done} once each")
    elif adapters or rnd["candidate_adapter_id"]:
        out.append(
            f"{tag}: train is not done but adapter {rnd['candidate_adapter_id'] or adapters[0]['id']} is recorded"
        )

    # eval: never more than one row per model and question; all of them once done
    cand = rnd["candidate_adapter_id"]
    for key in ["base", cand] if cand else ["base"]:
        k = one(db, "SELECT COUNT(*) AS n FROM evals WHERE model_key = ?", (key,))["n"]
        if k > n_eval or (done["eval"] and k != n_eval):
            out.append(f"{tag}: {k} eval row(s) for {key}, expected {n_eval}")

    # promote: a decision iff done, and the candidate's status agrees with it
    if done["promote"] != (rnd["promoted"] is not None):
        out.append(f"{tag}: promote done={done['promote']} but promoted={rnd['promoted']}")
    if cand and adapters:
        status = adapters[0]["status"]
        want = {None: {"candidate"}, 1: {"champion", "retired"}, 0: {"rejected"}}[rnd["promoted"]]
        if status not in want:
            out.append(
                f"{tag}: {cand} has status {status}, expected one of {sorted(want)} (promoted={rnd['promoted']})"
            )
    return out


def _has_table(db, name: str) -> bool:
    return one(db, "SELECT 1 AS x FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)) is not None


def _round_question_ids(db, round_idx: int, cfg: dict) -> list[str]:
    pool = [r["id"] for r in rows(db, "SELECT id FROM questions WHERE split = 'train' ORDER BY pool_index")]
    k = cfg["data"]["questions_per_round"]
    start = (round_idx * k) % len(pool) if pool else 0
    return [pool[(start + i) % len(pool)] for i in range(min(k, len(pool)))]


def _lineage(db, rounds: list[dict]) -> list[str]:
    out = []
    champions = [a["id"] for a in rows(db, "SELECT id FROM adapters WHERE status = 'champion'")]
    if len(champions) > 1:
        out.append(f"more than one champion: {champions}")
    champ = None  # the policy each round should have sampled from
    for rnd in rounds:
        if rnd["policy_adapter_id"] != champ:
            out.append(
                f"round {rnd['idx']}: policy {rnd['policy_adapter_id']}, but the champion then was {champ}"
            )
        a = (
            one(db, "SELECT * FROM adapters WHERE id = ?", (rnd["candidate_adapter_id"],))
            if rnd["candidate_adapter_id"]
            else None
        )
        if a and a["parent_id"] != rnd["policy_adapter_id"]:
            out.append(
                f"{a['id']}: parent {a['parent_id']}, but round {rnd['idx']} sampled from {rnd['policy_adapter_id']}"
            )
        if rnd["promoted"] == 1:
            champ = rnd["candidate_adapter_id"]
    if champions != ([champ] if champ else []) and not out:
        out.append(f"champion is {champions}, but the last promoted candidate is {champ}")
    for a in rows(db, "SELECT id, parent_id FROM adapters WHERE parent_id IS NOT NULL"):
        if one(db, "SELECT 1 AS x FROM adapters WHERE id = ?", (a["parent_id"],)) is None:
            out.append(f"{a['id']}: parent {a['parent_id']} is not recorded")
    return out


def _adapters(db, wd: Path) -> list[str]:
    return [
        f"{a['id']}: {problem}"
        for a in rows(db, "SELECT * FROM adapters ORDER BY created_at")
        for problem in adapter_problems(wd, a)
    ]


def _finished(db, wd: Path, run: dict, rounds: list[dict]) -> list[str]:
    out = []
    if run["status"] != RunStatus.FINISHED:
        why = f": {run['message']}" if run["message"] else ""
        out.append(f"the run is {run['status']}, not finished{why}")
    if not rounds:
        out.append("no round was run")
    undone = [f"round {r['idx']} {r['status']}" for r in rounds if r["status"] != RoundStatus.DONE]
    if undone:
        out.append("rounds not done: " + ", ".join(undone))
    stages = rows(
        db,
        "SELECT r.idx, s.name, s.status FROM stages s JOIN rounds r ON r.id = s.round_id "
        "WHERE s.status != ? ORDER BY r.idx, s.seq",
        (StageStatus.DONE,),
    )
    if stages:
        out.append(
            "stages not done: " + ", ".join(f"round {s['idx']} {s['name']} {s['status']}" for s in stages)
        )
    recorded = {a["path"] for a in rows(db, "SELECT path FROM adapters")}
    adapters_dir = wd / "adapters"
    if adapters_dir.is_dir():
        for p in sorted(adapters_dir.iterdir()):
            rel = str(p.relative_to(wd))
            if rel not in recorded:
                out.append(f"{rel}: on disk but not recorded (a leftover of a killed write)")
    checkpoints = wd / "checkpoints"
    for p in sorted(checkpoints.iterdir()) if checkpoints.is_dir() else []:
        out.append(f"{p.relative_to(wd)}: training checkpoints left after their round's adapter was recorded")
    for d in ("adapters", "models", "checkpoints", "."):
        for p in sorted((wd / d).glob(".tmp-*")) if (wd / d).is_dir() else []:
            out.append(f"{p.relative_to(wd)}: temporary file left over")
    if not (wd / "config.toml").is_file():
        out.append("config.toml is missing")
    return out
