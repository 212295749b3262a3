import pytest
from sealong.loop.recipe import diagnostics, gate
from sealong.loop.recipe.diagnostics import QuestionSamples


def _by_metric(rows):
    return {(r["metric"], r["utility"]): (r["value"], r["n"]) for r in rows}


def test_diagnostics_on_known_samples():
    qs = [
        # greedy wrong; sample 0 right; MBR (embedding) picks idx 2 (right); random utility picks idx 1 (wrong)
        QuestionSamples(
            ["Ford"],
            ["Ford it is", "no idea", "born in Ford", "Kent"],
            {"embedding": [0.1, 0.2, 0.9, 0.3], "random": [0.0, 1.0, 0.5, 0.2]},
            greedy="Kent",
            pair=(2, 1),
        ),
        # nobody right
        QuestionSamples(
            ["Mere"],
            ["x", "y", "z", "w"],
            {"embedding": [0.4, 0.3, 0.2, 0.1], "random": [1, 0, 0, 0]},
            greedy="y",
            pair=(0, 3),
        ),
        # greedy right, all samples right
        QuestionSamples(
            ["Holt"],
            ["Holt", "holt.", "in Holt", "Holt!"],
            {"embedding": [1, 1, 1, 1], "random": [0, 0, 0, 1]},
            greedy="Holt",
            pair=None,
        ),
        QuestionSamples([], ["unlabelled"], {}, greedy=None),  # no gold answers: left out
    ]
    m = _by_metric(diagnostics.compute(qs))
    assert m[("random_sample", "-")] == (pytest.approx(200 / 3), 3)
    assert m[("mean_sample", "-")] == (pytest.approx(100 * (0.5 + 0 + 1) / 3), 3)
    assert m[("oracle", "-")] == (pytest.approx(200 / 3), 3)
    assert m[("greedy", "-")] == (pytest.approx(100 / 3), 3)
    assert m[("mbr", "embedding")] == (pytest.approx(200 / 3), 3)
    assert m[("mbr", "random")] == (pytest.approx(100 / 3), 3)
    assert m[("chosen", "-")] == (50.0, 2) and m[("rejected", "-")] == (0.0, 2)


def test_diagnostics_empty():
    assert diagnostics.compute([QuestionSamples([], ["a"])]) == []


def _scores(per_task_right: dict[str, tuple[int, int]]) -> dict[str, list[float]]:
    return {t: [1.0] * r + [0.0] * (n - r) for t, (r, n) in per_task_right.items()}


def test_gate_clear_improvement_promotes():
    champ = _scores({"a": (10, 40), "b": (12, 40)})
    cand = _scores({"a": (30, 40), "b": (31, 40)})
    for rule in ("bootstrap", "mcnemar", "margin"):
        d = gate.decide(cand, champ, rule=rule, margin=1.0, confidence=0.95, samples=1000)
        assert d.promoted, (rule, d.reason)
        assert d.gain == pytest.approx(100 * (30 + 31 - 10 - 12) / 80)
    d = gate.decide(cand, champ, rule="bootstrap", margin=1.0, confidence=0.95, samples=1000)
    assert d.ci_low > 1.0 and d.ci_low <= d.gain <= d.ci_high and d.p_value < 0.05


def test_gate_noise_does_not_promote():
    champ = _scores({"a": (10, 20), "b": (10, 20)})
    cand = {"a": [1.0 - x for x in champ["a"]], "b": list(champ["b"])}  # same totals, different questions
    cand["a"][0] = 1.0  # one more right answer: +2.5 points, but noise
    for rule in ("bootstrap", "mcnemar"):
        d = gate.decide(cand, champ, rule=rule, margin=0.0, confidence=0.9, samples=1000)
        assert d.gain > 0 and not d.promoted, (rule, d.reason)
    assert gate.decide(cand, champ, rule="margin", margin=0.0).promoted  # the naive rule would promote


def test_gate_on_the_margin():
    champ = _scores({"a": (0, 20)})
    cand = _scores({"a": (20, 20)})  # +100 points, no variance: CI is exactly [100, 100]
    assert gate.decide(cand, champ, rule="bootstrap", margin=99.9, samples=200).promoted
    assert not gate.decide(cand, champ, rule="bootstrap", margin=100.0, samples=200).promoted  # must exceed
    assert not gate.decide(cand, champ, rule="margin", margin=100.0).promoted


def test_mcnemar_exact_values():
    assert gate.mcnemar_p(0, 0) == 1.0
    assert gate.mcnemar_p(5, 0) == pytest.approx(1 / 32)
    assert gate.mcnemar_p(3, 3) == pytest.approx(sum(__import__("math").comb(6, k) for k in range(3, 7)) / 64)


def test_length_flag_and_mismatch():
    champ, cand = _scores({"a": (0, 20)}), _scores({"a": (20, 20)})
    d = gate.decide(cand, champ, rule="margin", cand_tokens=300, champ_tokens=100, max_length_increase=0.25)
    assert d.promoted and d.length_flag and d.length_ratio == pytest.approx(3.0) and "length" in d.reason
    assert not gate.decide(cand, champ, rule="margin", cand_tokens=110, champ_tokens=100).length_flag
    with pytest.raises(ValueError, match="same questions"):
        gate.decide({"a": [1.0]}, {"a": [1.0, 0.0]})
