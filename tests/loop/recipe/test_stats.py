"""Paired statistics for an ablation, against hand-computed cases."""

import pytest
from sealong.loop.recipe.stats import arm_summary, paired_difference


def test_exact_sign_flip_p_hand_computed():
    # A right on 5 questions where B is wrong, B right on 1 where A is wrong, 2 ties.
    a = [1, 1, 1, 1, 1, 0, 1, 0]
    b = [0, 0, 0, 0, 0, 1, 1, 0]
    r = paired_difference(a, b, samples=2000, seed=1)
    assert r.diff == pytest.approx(100 * 4 / 8)
    assert (r.wins, r.losses, r.n) == (5, 1, 8)
    # six non-zero differences of equal size, observed sum +4: the sign assignments with |sum| >= 4 are
    # all +, all -, and the 6 + 6 with one sign flipped: 14 of 2^6
    assert r.exact and r.p_value == pytest.approx(14 / 64)
    # three wins, no loss: 2 of 2^3 assignments reach |sum| = 3
    assert paired_difference([1, 1, 1, 0], [0, 0, 0, 0]).p_value == pytest.approx(2 / 8)
    assert paired_difference([1, 0], [1, 0]).p_value == 1.0  # no difference at all


def test_bootstrap_ci_hand_computed():
    # two questions, one right: resampled means 0, 50, 100 with probabilities 1/4, 1/2, 1/4, so the
    # 2.5th and 97.5th percentiles of many resamples are 0 and 100
    s = arm_summary([0, 1], samples=4000, seed=0)
    assert (s.subem, s.ci_low, s.ci_high, s.n) == (50.0, 0.0, 100.0, 2)
    c = arm_summary([1, 1, 1], samples=500)
    assert (c.subem, c.ci_low, c.ci_high) == (100.0, 100.0, 100.0)


def test_paired_ci_and_tasks():
    a = {"hotpotqa": [1, 1, 0, 1], "musique": [1, 0]}
    b = {"hotpotqa": [0, 1, 0, 1], "musique": [1, 0]}
    r = paired_difference(a, b, samples=3000, seed=0)
    assert r.diff == pytest.approx(100 * (0.25 + 0.0) / 2)  # mean over tasks of each task's mean
    assert r.ci_low <= r.diff <= r.ci_high and r.ci_low >= 0
    assert r.p_value == 1.0  # a single non-zero difference: both of its signs reach |observed|


def test_deterministic_and_checked():
    a, b = [1, 0, 1, 1, 0, 1] * 5, [0, 0, 1, 0, 0, 1] * 5
    assert paired_difference(a, b, seed=7) == paired_difference(a, b, seed=7)
    assert arm_summary(a, seed=7) == arm_summary(a, seed=7)
    mc = paired_difference(a, b, samples=2000, seed=7, exact_limit=1)  # Monte Carlo sign flips
    ex = paired_difference(a, b, samples=2000, seed=7)
    assert not mc.exact and ex.exact and mc.p_value == pytest.approx(ex.p_value, abs=0.02)
    with pytest.raises(ValueError, match="same questions"):
        paired_difference([1, 0], [1])
    with pytest.raises(TypeError):
        arm_summary("10")  # type: ignore[arg-type]
