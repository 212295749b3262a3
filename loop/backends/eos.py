"""Where a model's answers end: end-of-turn and stop tokens, from the model itself.

Nothing here names a model family's tokens. The end-of-turn token is the special token the model's chat
template writes right after an assistant message (ChatML's <|im_end|>, Llama-3's <|eot_id|>, Gemma's
<end_of_turn>, Phi-3's <|end|>); training appends it to each response, so the policy learns to stop
where its template stops. Generation stops at any of: the model's generation_config.json eos_token_id
(an int or a list: Llama-3.1 lists <|eot_id|>, <|eom_id|> and <|end_of_text|>), the tokenizer's EOS, and
the end-of-turn token. load_tokenizer (models.py) works these out once and keeps them on the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

_SENTINEL = "SEALONG_END_OF_TURN_PROBE"


def _special_ids(tok) -> set[int]:
    ids = set(getattr(tok, "all_special_ids", []) or [])
    for i, t in (getattr(tok, "added_tokens_decoder", {}) or {}).items():
        if getattr(t, "special", False):
            ids.add(int(i))
    return ids


def end_of_turn_id(tok) -> int | None:
    """The first special token the chat template puts after an assistant message; None if it puts none
    (or the template cannot render a user/assistant exchange)."""
    if not getattr(tok, "chat_template", None):
        return None
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}]
    try:
        text = tok.apply_chat_template(messages, tokenize=False)
    except Exception:  # a template that refuses the exchange: fall back to EOS
        return None
    if not isinstance(text, str) or _SENTINEL not in text:
        return None
    after = text[text.index(_SENTINEL) + len(_SENTINEL) :]
    special = _special_ids(tok)
    for i in tok(after, add_special_tokens=False)["input_ids"]:
        if i in special:
            return int(i)
    return None


def generation_eos_ids(model_dir: str | Path | None) -> list[int]:
    """eos_token_id of the model's generation_config.json (an int or a list); [] without one."""
    if model_dir is None:
        return []
    path = Path(model_dir) / "generation_config.json"
    try:
        eos = json.loads(path.read_text()).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return []
    eos = [eos] if isinstance(eos, int) else eos if isinstance(eos, list) else []
    return [int(i) for i in eos if isinstance(i, int) and not isinstance(i, bool)]


def attach(tok, model_dir: str | Path | None) -> None:
    """Work out the tokenizer's end-of-turn and stop ids once (see stop_ids, response_end_id)."""
    eot = end_of_turn_id(tok)
    tok.sealong_end_of_turn_id = eot
    ids: list[int] = []
    for i in [*generation_eos_ids(model_dir), tok.eos_token_id, eot]:
        if i is not None and i not in ids:
            ids.append(int(i))
    tok.sealong_stop_ids = ids


def stop_ids(tok) -> list[int]:
    """Every id that ends a generated answer."""
    if getattr(tok, "sealong_stop_ids", None) is None:
        attach(tok, getattr(tok, "name_or_path", None) or None)
    return list(tok.sealong_stop_ids)


def response_end_id(tok) -> int:
    """The id training appends to a response: the template's end-of-turn token, else the EOS."""
    if not hasattr(tok, "sealong_end_of_turn_id"):
        attach(tok, getattr(tok, "name_or_path", None) or None)
    eot = tok.sealong_end_of_turn_id
    return eot if eot is not None else tok.eos_token_id
