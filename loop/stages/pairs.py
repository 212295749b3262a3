"""Pairs stage: chosen by the [pairs] selection arm, rejected = uniform random from the lower half by score.

Arms (loop/config.py SELECTION_UTILITY): `mbr-embedding` (the paper's), `mbr-token`, `mbr-rouge-l` and
`random` choose the best sample by their utility's score (the score stage wrote it to samples.mbr_score:
[score] utility is the arm's); `greedy-as-chosen` chooses the round's greedy answer (table greedy). In
every arm the rejected answer is SEALONG's: uniform random among the lower half of the samples by score.
Each pair records its arm (pairs.selection).

Degenerate questions (every sample empty, or every sample the same text) give no preference signal and
are skipped and counted; so are questions whose lower half holds only copies of the chosen text, and,
for `greedy-as-chosen`, questions without a (non-empty) greedy answer.
"""

from __future__ import annotations

import json
import random
import zlib
from itertools import groupby
from typing import Any

from sealong.loop.recipe import diagnostics
from sealong.loop.stages.base import StageContext
from sealong.store.db import Transaction, rows


def choose_pair(samples: list[dict[str, Any]], rng: random.Random) -> tuple[dict, dict] | str:
    """(chosen, rejected) or the reason the question is degenerate."""
    texts = {s["text"].strip() for s in samples}
    if texts == {""}:
        return "all samples empty"
    if len(texts) == 1:
        return "all samples identical"
    ranked = sorted(samples, key=lambda s: (-s["mbr_score"], s["sample_idx"]))
    chosen = ranked[0]
    lower = [
        s for s in ranked[len(ranked) - len(ranked) // 2 :] if s["text"].strip() != chosen["text"].strip()
    ]
    if not lower:
        return "lower half only repeats the chosen answer"
    return chosen, rng.choice(lower)


def choose_greedy_pair(
    samples: list[dict[str, Any]], greedy: dict[str, Any] | None, rng: random.Random
) -> tuple[dict, dict] | str:
    """(the greedy answer's row, rejected sample) or the reason there is no pair: `greedy-as-chosen`."""
    if greedy is None:
        return "no greedy answer"
    if not greedy["text"].strip():
        return "greedy answer empty"
    ranked = sorted(samples, key=lambda s: (-s["mbr_score"], s["sample_idx"]))
    lower = [
        s for s in ranked[len(ranked) - len(ranked) // 2 :] if s["text"].strip() != greedy["text"].strip()
    ]
    if not lower:
        return "lower half only repeats the chosen answer"
    return greedy, rng.choice(lower)


def run(ctx: StageContext) -> None:
    samples = rows(
        ctx.db,
        "SELECT id, question_id, sample_idx, text, mbr_score FROM samples WHERE round_id = ? "
        "ORDER BY question_id, sample_idx",
        (ctx.round_id,),
    )
    selection = ctx.cfg.pairs.selection
    greedy = {
        r["question_id"]: r
        for r in rows(ctx.db, "SELECT id, question_id, text FROM greedy WHERE round_id = ?", (ctx.round_id,))
    }
    made, skipped = [], {}  # made: (question, chosen sample | None, rejected sample, chosen greedy | None)
    for qid, group in groupby(samples, key=lambda s: s["question_id"]):
        rng = random.Random(ctx.cfg.run.seed * 1_000_003 + ctx.round_idx * 7919 + zlib.crc32(qid.encode()))
        if selection == "greedy-as-chosen":
            result = choose_greedy_pair(list(group), greedy.get(qid), rng)
        else:
            result = choose_pair(list(group), rng)
        if isinstance(result, str):
            skipped[result] = skipped.get(result, 0) + 1
            continue
        chosen, rejected = result
        if selection == "greedy-as-chosen":
            made.append((qid, None, rejected["id"], chosen["id"]))
        else:
            made.append((qid, chosen["id"], rejected["id"], None))
    diag = diagnostics.compute(_question_samples(ctx, samples, {m[0]: m[1:3] for m in made}))
    with Transaction(ctx.db):
        ctx.db.execute("DELETE FROM diagnostics WHERE round_id = ?", (ctx.round_id,))
        ctx.db.conn.executemany(
            "INSERT INTO diagnostics (round_id, utility, metric, value, n) VALUES (?, ?, ?, ?, ?)",
            [(ctx.round_id, d["utility"], d["metric"], d["value"], d["n"]) for d in diag],
        )
        ctx.db.execute("DELETE FROM pairs WHERE round_id = ?", (ctx.round_id,))
        ctx.db.conn.executemany(
            "INSERT INTO pairs (round_id, question_id, chosen_sample_id, rejected_sample_id, chosen_greedy_id, "
            "selection) VALUES (?, ?, ?, ?, ?, ?)",
            [(ctx.round_id, *m, selection) for m in made],
        )
        if skipped:
            ctx.event(f"skipped {sum(skipped.values())} degenerate question(s): {skipped}", "warn")
        ctx.mark_done(
            {
                "pairs": len(made),
                "selection": selection,
                "skipped": skipped,
                "diagnostics": {f"{d['metric']}/{d['utility']}": round(d["value"], 2) for d in diag},
            }
        )


def _question_samples(
    ctx: StageContext, samples: list[dict], pairs: dict[str, tuple[int | None, int]]
) -> list[diagnostics.QuestionSamples]:
    """Gather gold answers, samples, every utility's scores and greedy answers per question."""
    answers = {
        r["id"]: json.loads(r["answers_json"])
        for r in rows(ctx.db, "SELECT id, answers_json FROM questions WHERE split = 'train'")
    }
    greedy = {
        r["question_id"]: r["text"]
        for r in rows(ctx.db, "SELECT question_id, text FROM greedy WHERE round_id = ?", (ctx.round_id,))
    }
    scores: dict[int, dict[str, float]] = {}
    for r in rows(
        ctx.db,
        "SELECT ss.sample_id, ss.utility, ss.score FROM sample_scores ss JOIN samples s ON s.id = ss.sample_id "
        "WHERE s.round_id = ?",
        (ctx.round_id,),
    ):
        scores.setdefault(r["sample_id"], {})[r["utility"]] = r["score"]
    out = []
    for qid, group in groupby(samples, key=lambda s: s["question_id"]):
        group = list(group)
        index = {s["id"]: i for i, s in enumerate(group)}
        utilities = set().union(*(scores.get(s["id"], {}).keys() for s in group))
        out.append(
            diagnostics.QuestionSamples(
                answers=answers.get(qid, []),
                samples=[s["text"] for s in group],
                scores={u: [scores.get(s["id"], {}).get(u, float("-inf")) for s in group] for u in utilities},
                greedy=greedy.get(qid),
                pair=(
                    (None if pairs[qid][0] is None else index[pairs[qid][0]], index[pairs[qid][1]])
                    if qid in pairs
                    else None
                ),
            )
        )
    return out
