"""End-of-turn and stop tokens come from the model: its chat template and its generation config."""

import json
from pathlib import Path

import pytest
from sealong.loop.backends import eos
from sealong.loop.backends.transformers_backend import stop_ids
from sealong.loop.training.orpo import IGNORE, encode_response

# chat templates in the style of each family (the part that matters: what follows an assistant message)
TEMPLATES = {
    "gemma": "{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<end_of_turn>\n{% endfor %}",
    "phi3": "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}<|endoftext|>",
    "llama31": "<|begin_of_text|>{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}",
}
SPECIALS = {
    "gemma": ["<eos>", "<start_of_turn>", "<end_of_turn>"],
    "phi3": ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"],
    "llama31": ["<|end_of_text|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                "<|eot_id|>", "<|eom_id|>"],
}  # fmt: skip


def _tokenizer(family: str, tmp_path: Path, generation_eos=None):
    """A small word-level tokenizer built offline, with the family's special tokens and template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "hi", "hello", "there", "user", "assistant", "model", "\n"]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token=SPECIALS[family][0])
    tok.add_special_tokens({"additional_special_tokens": SPECIALS[family][1:]})
    tok.chat_template = TEMPLATES[family]
    d = tmp_path / family
    d.mkdir()
    if generation_eos is not None:
        ids = [tok.convert_tokens_to_ids(t) for t in generation_eos]
        (d / "generation_config.json").write_text(
            json.dumps({"eos_token_id": ids if len(ids) > 1 else ids[0]})
        )
    eos.attach(tok, d)
    return tok


@pytest.mark.parametrize(
    "family, end_of_turn, generation_eos",
    [
        ("gemma", "<end_of_turn>", ["<eos>", "<end_of_turn>"]),
        ("phi3", "<|end|>", ["<|endoftext|>", "<|end|>"]),
        ("llama31", "<|eot_id|>", ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]),
    ],
)
def test_each_family_stops_and_trains_on_its_own_end_of_turn(family, end_of_turn, generation_eos, tmp_path):
    tok = _tokenizer(family, tmp_path, generation_eos)
    eot = tok.convert_tokens_to_ids(end_of_turn)
    assert tok.sealong_end_of_turn_id == eot
    assert set(stop_ids(tok)) == {tok.convert_tokens_to_ids(t) for t in generation_eos} | {tok.eos_token_id}
    ids, labels = encode_response(tok, [5, 1], "hello there", max_length=64)
    assert ids[-1] == eot and labels[-1] == eot  # the response target ends with the end-of-turn token
    assert labels[:2] == [IGNORE, IGNORE]


def test_without_generation_config_the_template_and_eos_still_stop(tmp_path):
    tok = _tokenizer("phi3", tmp_path)  # no generation_config.json
    assert set(stop_ids(tok)) == {tok.convert_tokens_to_ids("<|end|>"), tok.eos_token_id}


def test_a_template_with_nothing_after_the_answer_falls_back_to_eos(tmp_path):
    tok = _tokenizer("gemma", tmp_path)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    eos.attach(tok, None)
    assert tok.sealong_end_of_turn_id is None
    assert encode_response(tok, [1], "hi", 16)[0][-1] == tok.eos_token_id
    assert stop_ids(tok) == [tok.eos_token_id]


def test_generation_eos_ids(tmp_path):
    assert eos.generation_eos_ids(tmp_path) == []
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [128001, 128008, 128009]}')
    assert eos.generation_eos_ids(tmp_path) == [128001, 128008, 128009]
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": 2}')
    assert eos.generation_eos_ids(tmp_path) == [2]
    (tmp_path / "generation_config.json").write_text("not json")
    assert eos.generation_eos_ids(tmp_path) == []
