"""Does the self-supervision carry signal? Per-round diagnostics on training questions with gold answers.

Training never reads gold answers; these numbers only judge the samples after the fact (the paper's
Fig. 1 and Table 7): SubEM of greedy decoding, of one random sample, of the sample each utility selects
(MBR), oracle@N (any sample right), the mean over samples, and SubEM of the chosen vs rejected answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sealong.loop.recipe.metrics import subem


@dataclass
class QuestionSamples:
    answers: list[str]
    samples: list[str]  # in sample_idx order; samples[0] serves as "one random sample" (draws are iid)
    scores: dict[str, list[float]] = field(default_factory=dict)  # utility -> one score per sample
    greedy: str | None = None
    # (chosen idx, rejected idx) when the question made a pair; chosen idx None: the greedy answer
    pair: tuple[int | None, int] | None = None


def _pct(values: list[float]) -> float:
    return 100.0 * sum(values) / len(values)


def compute(questions: list[QuestionSamples]) -> list[dict]:
    """Rows {utility, metric, value (SubEM %), n}. Questions without gold answers are left out."""
    qs = [q for q in questions if q.answers and q.samples]
    if not qs:
        return []
    right = [[subem(s, q.answers) for s in q.samples] for q in qs]
    out = [
        {"utility": "-", "metric": "random_sample", "value": _pct([r[0] for r in right]), "n": len(qs)},
        {
            "utility": "-",
            "metric": "mean_sample",
            "value": _pct([sum(r) / len(r) for r in right]),
            "n": len(qs),
        },
        {"utility": "-", "metric": "oracle", "value": _pct([max(r) for r in right]), "n": len(qs)},
    ]
    greedy = [subem(q.greedy, q.answers) for q in qs if q.greedy is not None]
    if greedy:
        out.append({"utility": "-", "metric": "greedy", "value": _pct(greedy), "n": len(greedy)})
    for utility in sorted({u for q in qs for u in q.scores}):
        picked = []
        for q, r in zip(qs, right):
            sc = q.scores.get(utility)
            if sc is not None:
                best = max(range(len(sc)), key=lambda i: (sc[i], -i))  # ties: the earliest sample
                picked.append(r[best])
        if picked:
            out.append({"utility": utility, "metric": "mbr", "value": _pct(picked), "n": len(picked)})
    paired = [
        (r[q.pair[0]] if q.pair[0] is not None else subem(q.greedy or "", q.answers), r[q.pair[1]])
        for q, r in zip(qs, right)
        if q.pair is not None
    ]
    if paired:
        out.append(
            {"utility": "-", "metric": "chosen", "value": _pct([c for c, _ in paired]), "n": len(paired)}
        )
        out.append(
            {"utility": "-", "metric": "rejected", "value": _pct([r for _, r in paired]), "n": len(paired)}
        )
    return out
