import random

from sealong.loop.stages.pairs import choose_pair


def _samples(texts_scores):
    return [{"id": i, "sample_idx": i, "text": t, "mbr_score": s} for i, (t, s) in enumerate(texts_scores)]


def test_chosen_is_best_and_rejected_from_lower_half():
    s = _samples([("a", 0.1), ("b", 0.9), ("c", 0.5), ("d", 0.2), ("e", 0.7), ("f", 0.3)])
    seen = set()
    for seed in range(200):
        chosen, rejected = choose_pair(s, random.Random(seed))
        assert chosen["text"] == "b"
        seen.add(rejected["text"])
    assert seen == {"a", "d", "f"}  # uniform over the three lowest, never the upper half


def test_odd_n_lower_half_is_floor():
    s = _samples([("a", 0.9), ("b", 0.8), ("c", 0.1), ("d", 0.2), ("e", 0.5)])
    rejected = {choose_pair(s, random.Random(k))[1]["text"] for k in range(100)}
    assert rejected == {"c", "d"}


def test_degenerate_questions():
    assert choose_pair(_samples([("", 0.0), ("  ", 0.0)]), random.Random(0)) == "all samples empty"
    assert (
        choose_pair(_samples([("x", 1.0), ("x", 1.0), ("x", 1.0)]), random.Random(0))
        == "all samples identical"
    )
    assert (
        choose_pair(_samples([("x", 0.9), ("y", 0.8), ("x", 0.1)]), random.Random(0))
        == "lower half only repeats the chosen answer"
    )
