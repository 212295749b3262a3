"""Property-based tests (hypothesis): SubEM normalisation, the JSONL loaders and the config validator on
arbitrary input, and middle truncation of prompts. A loader or validator given anything either returns
well-formed records / a Config or raises its own error naming the file (and line); nothing else."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sealong.loop.config import SECTIONS, Config, config_from_dict
from sealong.loop.errors import ConfigError, DataError
from sealong.loop.recipe.metrics import normalize, subem
from sealong.loop.tasks.longbench import load_longbench
from sealong.loop.tasks.musique import build_musique_pool
from sealong.loop.tasks.records import read_jsonl

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ARTICLES = {"a", "an", "the"}

# -- SubEM ------------------------------------------------------------------------------------------------------


@FAST
@given(st.text())
def test_normalize_is_idempotent_and_canonical(text: str):
    n = normalize(text)
    assert normalize(n) == n
    assert n == n.strip() and "  " not in n
    assert not set(n) & set(string.punctuation)
    assert not set(n.split()) & ARTICLES


@FAST
@given(st.text(), st.text(), st.text())
def test_an_answer_said_as_whole_words_is_found(before: str, answer: str, after: str):
    assume(normalize(answer))
    assert subem(f"{before} {answer} {after}", [answer]) == 1.0


@FAST
@given(st.text(alphabet=string.printable), st.lists(st.text(alphabet=string.printable), max_size=4))
def test_subem_ignores_ascii_case_and_answer_order(pred: str, answers: list[str]):
    score = subem(pred, answers)
    assert score in (0.0, 1.0)
    assert subem(pred.upper(), [a.lower() for a in reversed(answers)]) == score
    assert subem(pred, [*answers, pred]) == (1.0 if normalize(pred) else score)


@FAST
@given(st.text(), st.lists(st.text(), max_size=3))
def test_empty_answers_never_match(pred: str, answers: list[str]):
    assert subem(pred, [a for a in answers if not normalize(a)]) == 0.0


# -- loaders ----------------------------------------------------------------------------------------------------

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=6,
)
WORDS = st.text(min_size=1).map(lambda t: "w" + t)  # never blank
FIELD = {
    "input": WORDS,
    "context": WORDS,
    "answers": st.lists(WORDS, min_size=1, max_size=3),
    "_id": st.text() | st.integers(),
    "dataset": WORDS,
    "length": st.integers(min_value=0),
}


@st.composite
def longbench_record(draw) -> dict:
    """A valid record with, now and then, one field missing or replaced by any JSON value."""
    rec = {key: draw(good) for key, good in FIELD.items()}
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(FIELD)))
        if draw(st.booleans()):
            del rec[key]
        else:
            rec[key] = draw(JSON)
    return rec


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
    return path


@FAST
@given(st.lists(longbench_record(), min_size=1, max_size=4))
def test_longbench_loader_returns_valid_records_or_names_the_line(tmp_path_factory, records: list[dict]):
    for i, r in enumerate(records):
        r["_id"] = (
            f"{i}-{r.get('_id')}" if "_id" in r and isinstance(r["_id"], (str, int)) else r.get("_id", i)
        )
    path = _write(tmp_path_factory.mktemp("lb") / "x.jsonl", [json.dumps(r) for r in records])
    try:
        loaded = load_longbench(path)
    except DataError as e:
        assert str(e).startswith(f"{path}:") and e.line is not None and 1 <= e.line <= len(records)
        return
    assert len(loaded) == len(records) and len({r.id for r in loaded}) == len(loaded)
    for r in loaded:
        assert (
            r.question.strip()
            and r.context.strip()
            and r.answers
            and all(isinstance(a, str) for a in r.answers)
        )
        json.dumps(r.to_dict()).encode("utf-8")  # storable as it is


@FAST
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=5))
def test_jsonl_reader_on_arbitrary_bytes(tmp_path_factory, lines: list[bytes]):
    path = tmp_path_factory.mktemp("raw") / "x.jsonl"
    path.write_bytes(b"\n".join(lines))
    try:
        out = list(read_jsonl(path))
    except DataError as e:
        assert str(e).startswith(f"{path}:")
        return
    assert all(isinstance(obj, dict) and lineno >= 1 for lineno, obj in out)


MUSIQUE_FIELD = {
    "question": WORDS,
    "answer": WORDS,
    "answer_aliases": st.lists(WORDS, max_size=2),
    "answerable": st.booleans(),
    "paragraphs": st.lists(
        st.fixed_dictionaries(
            {"title": WORDS, "paragraph_text": WORDS}, optional={"is_supporting": st.booleans()}
        ),
        min_size=1,
        max_size=3,
    ),
}


@st.composite
def musique_item(draw, i: int = 0) -> dict:
    item = {"id": f"m{draw(st.integers(0, 10**9))}", **{k: draw(v) for k, v in MUSIQUE_FIELD.items()}}
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(item)))
        if draw(st.booleans()):
            del item[key]
        else:
            item[key] = draw(JSON)
    return item


@FAST
@given(st.lists(musique_item(), min_size=1, max_size=4))
def test_musique_builder_returns_a_pool_or_names_the_line(tmp_path_factory, items: list[dict]):
    path = _write(tmp_path_factory.mktemp("mq") / "m.jsonl", [json.dumps(i) for i in items])
    try:
        pool = build_musique_pool(path, n=3, min_tokens=5, max_tokens=20)
    except DataError as e:
        assert str(e).startswith(f"{path}")
        return
    assert 1 <= len(pool) <= 3
    for r in pool:
        assert r.question.strip() and r.context and all(isinstance(a, str) for a in r.answers)


# -- config validator -------------------------------------------------------------------------------------------

TOML_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-5, 5000)
    | st.floats(-2, 2, allow_nan=False)
    | st.text(max_size=8)
    | st.lists(st.integers(0, 4) | st.text(max_size=4), max_size=3)
)


@st.composite
def raw_config(draw) -> dict:
    raw = {}
    for section in draw(st.lists(st.sampled_from([*SECTIONS, "bogus"]), max_size=4, unique=True)):
        keys = [*Config().to_dict().get(section, {}), "bogus"]
        raw[section] = {
            k: draw(TOML_VALUES) for k in draw(st.lists(st.sampled_from(keys), max_size=4, unique=True))
        }
    return {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in raw.items()}


@FAST
@given(raw_config())
def test_config_validator_returns_a_config_or_one_config_error(raw: dict):
    try:
        cfg = config_from_dict(raw, "x.toml", check_paths=False)
    except ConfigError as e:
        assert e.problems and all(isinstance(p, str) and p for p in e.problems)
        return
    assert isinstance(cfg, Config)
    assert (
        config_from_dict(json.loads(json.dumps(cfg.to_dict())), check_paths=False).to_dict() == cfg.to_dict()
    )


# -- middle truncation ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return tiny_model[1]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.integers(1, 3000), budget=st.integers(96, 400))
def test_prompts_fit_their_budget_keep_both_ends_and_say_so(tokenizer, words: int, budget: int):
    from sealong.loop.recipe.prompts import build_prompt

    context = "HEADMARK " + " ".join(f"w{i}" for i in range(words)) + " TAILMARK"
    p = build_prompt(tokenizer, context, "Which word?", "Think.", budget)
    whole = build_prompt(tokenizer, context, "Which word?", "Think.", 10**6)
    assert len(p.input_ids) <= budget
    assert p.truncated == (len(whole.input_ids) > budget)
    assert "HEADMARK" in p.text and "TAILMARK" in p.text and "Which word?" in p.text


def test_a_huge_context_is_cut_without_tokenizing_it_whole(tokenizer):
    import time

    from sealong.loop.recipe.prompts import build_prompt

    context = "HEADMARK " + "lorem ipsum dolor sit amet " * 400_000 + " TAILMARK"  # 10.8 MB
    t0 = time.monotonic()
    p = build_prompt(tokenizer, context, "Which word?", "Think.", 256)
    assert time.monotonic() - t0 < 5  # tokenizing it whole takes ~10 s and 1.4 GB
    assert p.truncated and len(p.input_ids) <= 256 and "HEADMARK" in p.text and "TAILMARK" in p.text
