"""The ablation's pure part: arm configs, the plan a restart must follow, the statistics and the power
formula, each against a case worked by hand."""

from __future__ import annotations

import pytest
from sealong.loop.config import load_config
from sealong.loop.errors import SealongError
from sealong.loop.recipe import ablation

from ...conftest import TINY_CONFIG


def test_parse_arms_names_the_bad_one():
    assert ablation.parse_arms(" mbr-embedding, random ") == ["mbr-embedding", "random"]
    with pytest.raises(SealongError, match="unknown selection mbr-bleu"):
        ablation.parse_arms("mbr-embedding,mbr-bleu")
    with pytest.raises(SealongError, match="at least two"):
        ablation.parse_arms("random")
    with pytest.raises(SealongError, match="each arm once"):
        ablation.parse_arms("random,random")


def test_arm_config_changes_only_selection_name_and_patience():
    base = load_config(TINY_CONFIG)
    before = base.to_dict()
    cfg = ablation.arm_config(base, "random", rounds=5)
    assert base.to_dict() == before  # the base is not modified
    assert cfg.pairs.selection == "random" and cfg.score.utility == "random"
    assert cfg.run.name == f"{base.run.name}-random" and cfg.run.max_rounds == 5
    assert cfg.run.patience == max(base.run.patience, 5)
    greedy = ablation.arm_config(base, "greedy-as-chosen", rounds=1)
    assert greedy.score.utility == base.score.utility  # greedy ranks its rejected by the base utility
    changed = {(s, k) for s, sec in cfg.to_dict().items() for k, v in sec.items() if before[s][k] != v}
    assert changed <= {
        ("run", "name"),
        ("run", "max_rounds"),
        ("run", "patience"),
        ("pairs", "selection"),
        ("score", "utility"),
    }


def test_a_restart_keeps_arms_and_config_and_may_add_rounds():
    base = load_config(TINY_CONFIG)
    plan = ablation.Plan(["mbr-embedding", "random"], 2, str(TINY_CONFIG), ablation.config_sha(base))
    assert ablation.check_resume(plan, None, None, None) == plan
    assert ablation.check_resume(plan, None, 4, base).rounds == 4
    with pytest.raises(SealongError, match="arms are mbr-embedding,random"):
        ablation.check_resume(plan, ["mbr-embedding", "greedy-as-chosen"], None, None)
    with pytest.raises(SealongError, match="below the 2"):
        ablation.check_resume(plan, None, 1, None)
    other = ablation.arm_config(base, "random", 1)  # any change of the base config
    with pytest.raises(SealongError, match="differs from the base config"):
        ablation.check_resume(plan, None, None, other)


def test_questions_needed_by_hand():
    # differences 100, 0, -100, 0 points: sd = sqrt(20000 / 3) = 81.650; z(0.975) + z(0.8) = 1.95996 + 0.84162
    # = 2.80159; n = (2.80159 * 81.650 / 5)^2 = 2093.03 -> 2094, and for 10 points 523.26 -> 524
    assert ablation.questions_needed([100, 0, -100, 0], 5.0) == 2094
    assert ablation.questions_needed([100, 0, -100, 0], 10.0) == 524
    assert ablation.questions_needed([0, 0, 0], 5.0) is None  # no spread: no estimate
    assert ablation.questions_needed([100], 5.0) is None


def test_analyse_by_hand():
    # four eval questions, two tasks; arm A is the reference
    def ev(*s):
        return {f"q{i}": ("t1" if i < 2 else "t2", float(x)) for i, x in enumerate(s)}

    evals = {
        "mbr-embedding": {-1: ev(0, 0, 0, 0), 0: ev(1, 0, 1, 0), 1: ev(1, 1, 0, 0)},
        "random": {-1: ev(0, 0, 0, 0), 0: ev(0, 0, 1, 0), 1: ev(1, 0, 0, 0)},
    }
    res = ablation.analyse(evals, ["mbr-embedding", "random"])
    subem = {(r["arm"], r["round"]): r["subem"] for r in res["rows"]}
    # per task means then their mean: round 0 A = (0.5 + 0.5) / 2 = 50; B = (0 + 0.5) / 2 = 25
    assert subem[("mbr-embedding", 0)] == 50.0 and subem[("random", 0)] == 25.0
    assert subem[("mbr-embedding", 1)] == 50.0 and subem[("random", 1)] == 25.0
    diffs = {d["round"]: d for d in res["diffs"]}
    assert set(diffs) == {0, 1}  # no difference of the base model with itself
    assert diffs[0]["diff"] == -25.0 and (diffs[0]["wins"], diffs[0]["losses"]) == (0, 1)
    # one non-zero difference: of the 2 sign assignments both reach |25|, p = 1
    assert diffs[0]["p_value"] == 1.0 and diffs[0]["exact"]
    (pooled,) = res["pooled"]
    # per-question means over rounds 0-1: A = (1, .5, .5, 0), B = (.5, 0, .5, 0); differences B - A =
    # (-.5, -.5, 0, 0): task t1 mean -0.5, t2 0 -> -25 points
    assert pooled["rounds"] == [0, 1] and pooled["diff"] == -25.0 and pooled["losses"] == 2
    (power,) = res["power"]
    # differences in points -50, -50, 0, 0: sd = sqrt(4 * 625 / 3) = 28.87; n for 5 = (2.80159 * 28.87 / 5)^2
    # = 261.6 -> 262
    assert power["n_for_5_points"] == 262 and round(power["sd_points"], 2) == 28.87
    # one round at a time: differences -100, 0, 0, 0 (round 0) and 0, -100, 0, 0 (round 1), mean -25:
    # sd = sqrt((2 * 75^2 + 6 * 25^2) / 7) = 46.29; n = (2.80159 * 46.29 / 5)^2 = 672.7 -> 673
    assert power["n_for_5_points_one_round"] == 673
