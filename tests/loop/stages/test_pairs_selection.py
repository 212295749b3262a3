"""[pairs] selection arms: each arm's chosen rule, SEALONG's rejected rule in every arm, and the config."""

import random

import pytest
import tomllib
from sealong.loop.config import (
    DEFAULT_CONFIG,
    SELECTION_UTILITY,
    config_from_dict,
    dump_config_toml,
)
from sealong.loop.errors import ConfigError
from sealong.loop.stages.pairs import choose_greedy_pair, choose_pair


def _samples(texts_scores):
    return [{"id": i, "sample_idx": i, "text": t, "mbr_score": s} for i, (t, s) in enumerate(texts_scores)]


TEXTS = [("a", 0.1), ("b", 0.9), ("c", 0.5), ("d", 0.2), ("e", 0.7), ("f", 0.3)]


@pytest.mark.parametrize("selection", ["mbr-embedding", "mbr-token", "mbr-rouge-l", "random"])
def test_score_arms_choose_the_best_by_their_utility_and_reject_from_the_lower_half(selection):
    # the score stage wrote the arm's utility's scores to mbr_score ([score] utility follows the arm)
    cfg = config_from_dict({"pairs": {"selection": selection}})
    assert cfg.score.utility == SELECTION_UTILITY[selection]
    seen = set()
    for seed in range(200):
        chosen, rejected = choose_pair(_samples(TEXTS), random.Random(seed))
        assert chosen["text"] == "b"
        seen.add(rejected["text"])
    assert seen == {"a", "d", "f"}


def test_greedy_as_chosen():
    greedy = {"id": 42, "text": "the greedy answer"}
    seen = set()
    for seed in range(200):
        chosen, rejected = choose_greedy_pair(_samples(TEXTS), greedy, random.Random(seed))
        assert chosen is greedy
        seen.add(rejected["text"])
    assert seen == {"a", "d", "f"}  # SEALONG's rejected rule, by [score] utility
    # a lower-half sample that repeats the greedy answer is never its rejected answer
    s = _samples([("x", 0.9), ("y", 0.8), ("g", 0.2), ("z", 0.1)])
    assert {
        choose_greedy_pair(s, {"id": 1, "text": "g"}, random.Random(k))[1]["text"] for k in range(50)
    } == {"z"}
    assert choose_greedy_pair(s, None, random.Random(0)) == "no greedy answer"
    assert choose_greedy_pair(s, {"id": 1, "text": "  "}, random.Random(0)) == "greedy answer empty"
    only = _samples([("x", 0.9), ("g", 0.1)])
    assert choose_greedy_pair(only, {"id": 1, "text": "g"}, random.Random(0)) == (
        "lower half only repeats the chosen answer"
    )


def test_selection_and_utility_follow_each_other():
    assert config_from_dict({}).pairs.selection == "mbr-embedding"
    assert config_from_dict({"score": {"utility": "bertscore"}}).pairs.selection == "mbr-token"
    assert config_from_dict({"pairs": {"selection": "mbr-token"}}).score.utility == "bertscore"
    g = config_from_dict({"pairs": {"selection": "greedy-as-chosen"}, "score": {"utility": "rouge-l"}})
    assert (g.pairs.selection, g.score.utility) == ("greedy-as-chosen", "rouge-l")
    with pytest.raises(ConfigError, match=r"\[pairs\] selection: 'random' ranks by the 'random' utility"):
        config_from_dict({"pairs": {"selection": "random"}, "score": {"utility": "embedding"}})
    with pytest.raises(ConfigError, match="greedy_diagnostics = true"):
        config_from_dict(
            {"pairs": {"selection": "greedy-as-chosen"}, "sample": {"greedy_diagnostics": False}}
        )
    with pytest.raises(ConfigError, match="must be one of"):
        config_from_dict({"pairs": {"selection": "self-eval"}})


def test_a_stored_config_from_before_the_new_keys_still_loads():
    old = tomllib.loads(DEFAULT_CONFIG.read_text())
    old.pop("pairs", None)
    old["embedder"].pop("encode_kwargs", None)
    old["embedder"].pop("max_length", None)
    old["score"]["utility"] = "bertscore"  # a run from before [pairs]: its pairs were MBR by bertscore
    cfg = config_from_dict(old, check_paths=False)
    assert cfg.pairs.selection == "mbr-token"
    assert (cfg.embedder.encode_kwargs, cfg.embedder.max_length) == ({}, 0)
    again = config_from_dict(tomllib.loads(dump_config_toml(cfg)), check_paths=False)
    assert again == cfg


def test_embedder_encode_arguments():
    cfg = config_from_dict({"embedder": {"encode_kwargs": {"task": "text-matching"}, "max_length": 8192}})
    assert (cfg.embedder.encode_kwargs, cfg.embedder.max_length) == ({"task": "text-matching"}, 8192)
    assert config_from_dict(tomllib.loads(dump_config_toml(cfg))) == cfg
    for bad, msg in (
        ({"encode_kwargs": {"batch_size": 8}}, "must not set batch_size"),
        ({"encode_kwargs": {"task": ["a"]}}, "strings, numbers or booleans"),
        ({"encode_kwargs": {"max_length": 8}}, r"set \[embedder\] max_length"),
        ({"encode_kwargs": "text-matching"}, "must be dict"),
        ({"max_length": -1}, "must be >= 0"),
    ):
        with pytest.raises(ConfigError, match=msg):
            config_from_dict({"embedder": bad})
