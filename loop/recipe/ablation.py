"""An ablation of [pairs] selection: arms that differ only in how the chosen answer is picked.

`sealong-loop ablate` (sealong.loop.commands.ablate) runs one ordinary run per arm, in its own workdir
under the ablation's directory, all from the same base config: the same base model, seed, training
questions per round and held-out eval questions. What differs is `[pairs] selection` (and the `[score]
utility` it ranks by; `greedy-as-chosen` keeps the base config's). Each arm's run name is
`<base name>-<arm>`, and its patience is at least the ablation's rounds, so that no arm stops early.

This module is the pure part: the plan file, each arm's config, and the statistics over the arms' eval
rows (`analyse`): per arm and round the candidate's SubEM with a bootstrap CI, per round the paired
difference between each arm and the first, the same pooled over rounds (each question's mean over the
rounds), and the eval-set size a given difference needs (`questions_needed`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sealong.loop.config import SELECTION_UTILITY, Config, dump_config_toml
from sealong.loop.errors import SealongError
from sealong.loop.recipe import stats

PLAN = "ablation.json"


@dataclass(frozen=True)
class Plan:
    arms: list[str]
    rounds: int
    base_config: str  # the path given at the first start
    base_config_sha256: str  # of the TOML rendering of the base config

    def to_dict(self) -> dict[str, Any]:
        return {
            "arms": self.arms,
            "rounds": self.rounds,
            "base_config": self.base_config,
            "base_config_sha256": self.base_config_sha256,
        }


def parse_arms(text: str) -> list[str]:
    arms = [a.strip() for a in text.split(",") if a.strip()]
    known = list(SELECTION_UTILITY)
    bad = [a for a in arms if a not in known]
    if bad:
        raise SealongError(f"--arms: unknown selection {', '.join(bad)}; choose from {', '.join(known)}")
    if len(arms) < 2:
        raise SealongError(
            "--arms: name at least two selections, comma-separated (e.g. mbr-embedding,random)"
        )
    if len(set(arms)) != len(arms):
        raise SealongError(f"--arms: each arm once (got {text})")
    return arms


def config_sha(cfg: Config) -> str:
    return hashlib.sha256(dump_config_toml(cfg).encode()).hexdigest()


def arm_config(base: Config, arm: str, rounds: int) -> Config:
    """The base config with this arm's selection; the name and patience an ablation needs."""
    cfg = copy.deepcopy(base)
    cfg.run.name = f"{base.run.name}-{arm}"
    cfg.run.max_rounds = rounds
    cfg.run.patience = max(base.run.patience, rounds)
    cfg.pairs.selection = arm  # type: ignore[assignment]
    utility = SELECTION_UTILITY[arm]
    if utility:
        cfg.score.utility = utility  # type: ignore[assignment]
    return cfg


def load_plan(workdir: Path) -> Plan | None:
    path = workdir / PLAN
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        return Plan(list(raw["arms"]), int(raw["rounds"]), raw["base_config"], raw["base_config_sha256"])
    except (ValueError, KeyError, TypeError) as e:
        raise SealongError(f"{path}: not an ablation plan ({e}); use another --workdir") from None


def check_resume(plan: Plan, arms: list[str] | None, rounds: int | None, base: Config | None) -> Plan:
    """The plan a restarted ablation follows: its arms and base config are fixed; rounds may grow."""
    if arms is not None and arms != plan.arms:
        raise SealongError(
            f"this ablation's arms are {','.join(plan.arms)} (got --arms {','.join(arms)}); "
            "resume it without --arms, or use a new --workdir"
        )
    if base is not None and config_sha(base) != plan.base_config_sha256:
        raise SealongError(
            f"--config differs from the base config this ablation started with ({plan.base_config}); "
            "resume it without --config, or use a new --workdir"
        )
    if rounds is not None and rounds < plan.rounds:
        raise SealongError(f"--rounds {rounds} is below the {plan.rounds} this ablation already planned")
    return Plan(plan.arms, rounds or plan.rounds, plan.base_config, plan.base_config_sha256)


# -- the statistics -------------------------------------------------------------------------------------


def questions_needed(
    diffs: list[float], effect: float = 5.0, alpha: float = 0.05, power: float = 0.8
) -> int | None:
    """Eval questions a two-sided paired test at `alpha` needs to detect a mean difference of `effect`
    points with probability `power`, given per-question differences (points) measured between two arms:
    n = ((z_{1-alpha/2} + z_power) * sd / effect)^2 (the normal approximation). None when the measured
    differences have no spread (every question tied)."""
    if len(diffs) < 2:
        return None
    sd = statistics.stdev(diffs)
    if sd == 0:
        return None
    z = statistics.NormalDist()
    k = z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)
    return math.ceil((k * sd / effect) ** 2)


def analyse(
    evals: dict[str, dict[int, dict[str, tuple[str, float]]]], arms: list[str], seed: int = 0
) -> dict:
    """evals: arm -> round -> question id -> (task, SubEM 0/1) of that round's candidate, plus round -1 for
    the base model. Returns per-arm-round summaries, per-round paired differences against the first arm,
    the pooled difference (each question's mean over the rounds every arm finished) and the power note."""
    first = arms[0]
    out: dict[str, Any] = {"arms": arms, "rows": [], "diffs": [], "pooled": [], "power": []}

    def by_task(scores: dict[str, tuple[str, float]], qids: list[str]) -> dict[str, list[float]]:
        tasks: dict[str, list[float]] = {}
        for q in qids:
            t, s = scores[q]
            tasks.setdefault(t, []).append(s)
        return tasks

    rounds = sorted({r for arm in arms for r in evals.get(arm, {})})
    for r in rounds:
        have = [a for a in arms if r in evals.get(a, {})]
        for a in have:
            qids = sorted(evals[a][r])
            s = stats.arm_summary(by_task(evals[a][r], qids), seed=seed)
            out["rows"].append({"arm": a, "round": r, **s.to_dict()})
        if first not in have or r < 0:  # the base model is the same model in every arm
            continue
        for a in have:
            if a == first:
                continue
            qids = sorted(set(evals[a][r]) & set(evals[first][r]))
            if not qids:
                continue
            d = stats.paired_difference(by_task(evals[a][r], qids), by_task(evals[first][r], qids), seed=seed)
            out["diffs"].append({"arm": a, "vs": first, "round": r, **d.to_dict()})
    trained = [r for r in rounds if r >= 0 and all(r in evals.get(a, {}) for a in arms)]
    if trained:
        means: dict[str, dict[str, tuple[str, float]]] = {}
        for a in arms:
            qsets = [set(evals[a][r]) for r in trained]
            qids = sorted(set.intersection(*qsets))
            means[a] = {
                q: (evals[a][trained[0]][q][0], sum(evals[a][r][q][1] for r in trained) / len(trained))
                for q in qids
            }
        for a in arms[1:]:
            qids = sorted(set(means[a]) & set(means[first]))
            if not qids:
                continue
            d = stats.paired_difference(by_task(means[a], qids), by_task(means[first], qids), seed=seed)
            diffs = [100.0 * (means[a][q][1] - means[first][q][1]) for q in qids]
            out["pooled"].append({"arm": a, "vs": first, "rounds": trained, **d.to_dict()})
            one_round = [
                100.0 * (evals[a][r][q][1] - evals[first][r][q][1])
                for r in trained
                for q in sorted(set(evals[a][r]) & set(evals[first][r]))
            ]
            out["power"].append(
                {
                    "arm": a,
                    "vs": first,
                    "sd_points": statistics.stdev(diffs) if len(diffs) > 1 else 0.0,
                    "n_for_5_points": questions_needed(diffs, 5.0),
                    "n_for_10_points": questions_needed(diffs, 10.0),
                    "n": len(qids),
                    # one round's comparison (a single eval of each arm): the spread of per-round differences
                    "n_for_5_points_one_round": questions_needed(one_round, 5.0),
                    "sd_points_one_round": statistics.stdev(one_round) if len(one_round) > 1 else 0.0,
                }
            )
    return out
