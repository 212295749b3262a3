"""The promotion gate: is the candidate really better than the champion, or better by noise?

Both models answer the same eval questions, so the comparison is paired. The statistic is the gain in
mean-over-tasks SubEM (points). Rules:
- ``margin``: promote if the observed gain > margin (no statistics).
- ``bootstrap``: paired bootstrap, resampling questions within each task; promote if the lower bound of
  the two-sided `confidence` interval of the gain is above the margin. p = share of resampled gains <= margin.
- ``mcnemar``: exact one-sided McNemar test on the discordant questions (candidate right / champion
  wrong vs the reverse); promote if the gain > margin and p < 1 − confidence.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

from sealong.loop.recipe.stats import bootstrap_means


@dataclass
class GateDecision:
    rule: str
    promoted: bool
    gain: float  # points of mean-over-tasks SubEM
    ci_low: float | None
    ci_high: float | None
    p_value: float | None
    confidence: float
    margin: float
    n_questions: int
    length_ratio: float | None = None
    length_flag: bool = False
    reason: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def mean_over_tasks(scores: dict[str, list[float]]) -> float:
    """Mean over tasks of each task's mean, in points."""
    return 100.0 * sum(sum(v) / len(v) for v in scores.values()) / len(scores)


def paired_bootstrap(
    cand: dict[str, list[float]], champ: dict[str, list[float]], samples: int, seed: int
) -> list[float]:
    """Gains (points) over `samples` stratified bootstrap resamples of the questions."""
    diffs = {t: [c - h for c, h in zip(cand[t], champ[t])] for t in cand}
    return bootstrap_means(diffs, samples, random.Random(seed))


def mcnemar_p(b: int, c: int) -> float:
    """One-sided exact McNemar: P(X >= b) for X ~ Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n


def decide(
    cand: dict[str, list[float]],
    champ: dict[str, list[float]],
    rule: str = "bootstrap",
    margin: float = 0.0,
    confidence: float = 0.9,
    samples: int = 2000,
    seed: int = 0,
    cand_tokens: float | None = None,
    champ_tokens: float | None = None,
    max_length_increase: float = 0.25,
) -> GateDecision:
    """cand/champ: task -> per-question SubEM (0/1), the same questions in the same order for both."""
    if sorted(cand) != sorted(champ) or any(len(cand[t]) != len(champ[t]) for t in cand):
        raise ValueError("candidate and champion must be scored on the same questions")
    gain = mean_over_tasks(cand) - mean_over_tasks(champ)
    n = sum(len(v) for v in cand.values())
    ci_low = ci_high = p = None
    if rule == "margin":
        promoted, reason = gain > margin, f"gain {gain:+.2f} vs margin {margin}"
    elif rule == "bootstrap":
        gains = sorted(paired_bootstrap(cand, champ, samples, seed))
        alpha = (1 - confidence) / 2
        ci_low, ci_high = gains[int(alpha * (len(gains) - 1))], gains[int((1 - alpha) * (len(gains) - 1))]
        p = sum(g <= margin for g in gains) / len(gains)
        promoted = ci_low > margin
        reason = f"{confidence:.0%} CI [{ci_low:+.2f}, {ci_high:+.2f}] {'above' if promoted else 'not above'} margin {margin}"
    elif rule == "mcnemar":
        pairs = [(c, h) for t in cand for c, h in zip(cand[t], champ[t])]
        b = sum(1 for c, h in pairs if c > h)
        c_ = sum(1 for c, h in pairs if c < h)
        p = mcnemar_p(b, c_)
        promoted = gain > margin and p < 1 - confidence
        reason = f"{b} questions won, {c_} lost; exact McNemar p = {p:.3f} (need < {1 - confidence:.3f}) and gain > {margin}"
    else:
        raise ValueError(f"unknown promotion rule {rule!r}")
    ratio = cand_tokens / champ_tokens if cand_tokens and champ_tokens else None
    flag = bool(promoted and ratio is not None and ratio > 1 + max_length_increase)
    if flag:
        reason += f"; output length grew {ratio:.2f}x (SubEM rewards longer answers)"
    return GateDecision(rule, promoted, gain, ci_low, ci_high, p, confidence, margin, n, ratio, flag, reason)
