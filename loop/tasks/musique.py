"""MuSiQue JSONL → training pool, the paper's construction.

As SEALONG's process_data.py builds it: each answerable item keeps its supporting paragraphs and its own
distractor paragraphs (deduplicated by title: a distractor whose title is already in the context is left
out; a supporting paragraph never is), then paragraphs drawn from *other* items, also deduplicated by
title, are added until the context reaches a random target length in [min_tokens, max_tokens]; the
passages are shuffled. Gold answers (answer + aliases) are kept for diagnostics only; training never
reads them.
"""

from __future__ import annotations

import random
from pathlib import Path

from sealong.loop.errors import DataError
from sealong.loop.tasks.records import (
    QuestionRecord,
    approx_tokens,
    check_text,
    check_unique_ids,
    read_jsonl,
    require,
)


def _paragraphs(obj: dict, path: str, lineno: int) -> list[dict]:
    paras = require(obj, "paragraphs", list, path, lineno, nonempty=True)
    for i, para in enumerate(paras):
        if not isinstance(para, dict):
            raise DataError(path, lineno, f"paragraphs[{i}]", "expected an object")
        for key in ("title", "paragraph_text"):
            if not isinstance(para.get(key), str):
                raise DataError(path, lineno, f"paragraphs[{i}].{key}", "missing or not a string")
            check_text(para[key], path, lineno, f"paragraphs[{i}].{key}")
    return paras


def build_musique_pool(
    path: str | Path, n: int, min_tokens: int, max_tokens: int, seed: int = 0
) -> list[QuestionRecord]:
    path = Path(path)
    p = str(path)
    items, lines = [], []
    for lineno, obj in read_jsonl(path):
        item_id = require(obj, "id", str, p, lineno, nonempty=True)
        question = require(obj, "question", str, p, lineno, nonempty=True)
        answer = require(obj, "answer", str, p, lineno)
        aliases = obj.get("answer_aliases", []) or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise DataError(p, lineno, "answer_aliases", "expected a list of strings")
        check_text(aliases, p, lineno, "answer_aliases")
        paras = _paragraphs(obj, p, lineno)
        answerable = bool(obj.get("answerable", True))
        if answerable and not any(para.get("is_supporting") for para in paras):
            raise DataError(
                p,
                lineno,
                "paragraphs",
                "an answerable item needs a paragraph with is_supporting = true "
                "(its context would hold no evidence)",
            )
        items.append((item_id, question, [answer, *aliases], paras, answerable))
        lines.append(lineno)
    check_unique_ids([QuestionRecord(id=i[0], context="", question="") for i in items], p, lines)
    rng = random.Random(seed)
    answerable = [it for it in items if it[4]]
    rng.shuffle(answerable)
    filler = [(it[0], para) for it in items for para in it[3] if not para.get("is_supporting")]
    pool = []
    for item_id, question, answers, paras, _ in answerable[:n]:
        target = rng.randint(min_tokens, max_tokens)
        docs, titles = [], set()
        for para in paras:  # supporting paragraphs: every distinct one, whatever its title
            doc = f"{para['title']}\n{para['paragraph_text']}"
            if para.get("is_supporting") and doc not in docs:
                docs.append(doc)
                titles.add(para["title"].strip())
        for para in paras:  # the item's own distractors
            if not para.get("is_supporting") and para["title"].strip() not in titles:
                docs.append(f"{para['title']}\n{para['paragraph_text']}")
                titles.add(para["title"].strip())
        tokens = sum(approx_tokens(d) for d in docs)
        order = list(range(len(filler)))
        rng.shuffle(order)
        for k in order:
            other_id, para = filler[k]
            if tokens >= target:
                break
            if other_id == item_id or para["title"].strip() in titles:
                continue
            doc = f"{para['title']}\n{para['paragraph_text']}"
            docs.append(doc)
            titles.add(para["title"].strip())
            tokens += approx_tokens(doc)
        rng.shuffle(docs)
        context = "\n\n".join(f"Passage {i + 1}:\n{d}" for i, d in enumerate(docs))
        pool.append(
            QuestionRecord(
                id=f"musique-{item_id}",
                context=context,
                question=question,
                answers=[a for a in answers if a],
                source="musique",
                task="musique",
                n_tokens=approx_tokens(context),
            )
        )
    if not pool:
        raise DataError(
            p,
            None,
            None,
            f"no answerable items among {len(items)} record(s): the training pool would be empty",
        )
    return pool
