from hypothesis import given
from hypothesis import strategies as st
from sealong.loop.recipe.metrics import normalize, subem


def test_normalize_rules():
    assert normalize("The  Quick, brown fox!") == "quick brown fox"
    assert normalize("An apple a day") == "apple day"
    assert normalize("Theatre") == "theatre"  # 'the' only as a whole word


def test_subem_substring_and_aliases():
    assert subem("So the answer is Velmor County.", ["Velmor County"]) == 1.0
    assert subem("It is in velmor", ["Velmor County", "Velmor"]) == 1.0
    assert subem("It is in Velmorby", ["Velmor County"]) == 0.0
    assert subem("anything", []) == 0.0
    assert subem("anything", ["", "  "]) == 0.0


@given(st.text(max_size=60))
def test_normalize_idempotent(s):
    assert normalize(normalize(s)) == normalize(s)


@given(st.text(max_size=40), st.text(max_size=40), st.text(min_size=1, max_size=20))
def test_gold_inside_prediction_always_matches(pre, post, gold):
    if normalize(gold):
        assert subem(f"{pre} {gold} {post}", [gold]) == 1.0
