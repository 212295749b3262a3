"""Paired statistics for an ablation: arms (e.g. [pairs] selection) scored on the same eval questions.

Pure and deterministic (a seed in, the same numbers out). Scores are per-question SubEM (0/1, or any
number), given as a list or as task -> list; with tasks the statistic is the mean over tasks of each
task's mean (as the promotion gate's, recipe/gate.py), and resampling is stratified by task. Everything
is in points (percent).

- ``arm_summary``: an arm's SubEM with a percentile-bootstrap CI (questions resampled).
- ``paired_difference``: arm A minus arm B on the same questions; a paired-bootstrap CI (questions
  resampled together for both arms) and a two-sided sign-flip permutation p-value: under "no difference"
  each question's difference A - B is as likely to have either sign, so the observed statistic is
  compared with those of the 2^k sign assignments of the k non-zero differences (exactly when 2^k is at
  most ``exact_limit`` assignments, else from ``samples`` random ones, p = (hits + 1) / (samples + 1)).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

Scores = Sequence[float] | Mapping[str, Sequence[float]]


@dataclass(frozen=True)
class ArmSummary:
    subem: float  # points
    ci_low: float
    ci_high: float
    confidence: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    diff: float  # points, A - B
    ci_low: float
    ci_high: float
    p_value: float  # two-sided sign-flip permutation
    exact: bool  # p from every sign assignment (else from `samples` random ones)
    wins: int  # questions A got right and B wrong (or, for non-0/1 scores, A above B)
    losses: int
    confidence: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def _tasks(scores: Scores) -> dict[str, list[float]]:
    if isinstance(scores, str) or not isinstance(scores, (Mapping, Sequence)):
        raise TypeError(f"scores must be a list of numbers or task -> list, not {type(scores).__name__}")
    out = (
        {k: [float(x) for x in v] for k, v in scores.items()}
        if isinstance(scores, Mapping)
        else {"-": [float(x) for x in scores]}
    )
    if not out or any(not v for v in out.values()):
        raise ValueError("every task needs at least one scored question")
    return out


def _stat(tasks: dict[str, list[float]]) -> float:
    return 100.0 * sum(sum(v) / len(v) for v in tasks.values()) / len(tasks)


def _percentiles(values: list[float], confidence: float) -> tuple[float, float]:
    """The two-sided percentile interval (the gate's convention: nearest rank below)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1) (got {confidence})")
    v = sorted(values)
    alpha = (1 - confidence) / 2
    return v[int(alpha * (len(v) - 1))], v[int((1 - alpha) * (len(v) - 1))]


def bootstrap_means(tasks: dict[str, list[float]], samples: int, rng: random.Random) -> list[float]:
    """Mean over tasks (in points) of `samples` stratified bootstrap resamples: each task's values are
    resampled within the task. Also the promotion gate's (recipe/gate.py), on per-question differences."""
    names = sorted(tasks)
    out = []
    for _ in range(samples):
        total = 0.0
        for t in names:
            v = tasks[t]
            total += sum(v[rng.randrange(len(v))] for _ in range(len(v))) / len(v)
        out.append(100.0 * total / len(names))
    return out


def arm_summary(scores: Scores, samples: int = 10_000, seed: int = 0, confidence: float = 0.95) -> ArmSummary:
    """One arm's SubEM (points) with its bootstrap CI."""
    tasks = _tasks(scores)
    low, high = _percentiles(bootstrap_means(tasks, samples, random.Random(seed)), confidence)
    return ArmSummary(_stat(tasks), low, high, confidence, sum(len(v) for v in tasks.values()))


def paired_difference(
    a: Scores,
    b: Scores,
    samples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
    exact_limit: int = 2**16,
) -> PairedDifference:
    """Arm A minus arm B (points) on the same questions, in the same order: CI and permutation p."""
    ta, tb = _tasks(a), _tasks(b)
    if sorted(ta) != sorted(tb) or any(len(ta[t]) != len(tb[t]) for t in ta):
        raise ValueError("the two arms must be scored on the same questions (same tasks, same counts)")
    d = {t: [x - y for x, y in zip(ta[t], tb[t])] for t in ta}
    observed = _stat(d)
    rng = random.Random(seed)
    low, high = _percentiles(bootstrap_means(d, samples, rng), confidence)
    # Sign flips: question i's difference enters the statistic with weight 100 / (n_tasks * len(task)).
    weights = {t: 100.0 / (len(d) * len(v)) for t, v in d.items()}
    terms = [weights[t] * x for t in sorted(d) for x in d[t] if x != 0]
    eps = 1e-9 * max(1.0, abs(observed))
    if 2 ** len(terms) <= exact_limit:
        stats = (
            sum(s * x for s, x in zip(signs, terms))
            for signs in itertools.product((1, -1), repeat=len(terms))
        )
        hits = sum(abs(s) >= abs(observed) - eps for s in stats)
        p, exact = hits / 2 ** len(terms), True
    else:
        hits = sum(
            abs(sum(x if rng.random() < 0.5 else -x for x in terms)) >= abs(observed) - eps
            for _ in range(samples)
        )
        p, exact = (hits + 1) / (samples + 1), False
    wins = sum(x > 0 for v in d.values() for x in v)
    losses = sum(x < 0 for v in d.values() for x in v)
    n = sum(len(v) for v in d.values())
    return PairedDifference(observed, low, high, p, exact, wins, losses, confidence, n)
