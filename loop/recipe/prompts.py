"""Plan-and-solve prompts in the model's chat template, with LongBench's middle truncation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Prompt:
    text: str  # the chat-templated prompt, ending with the assistant turn's opening
    input_ids: list[int]
    truncated: bool  # the context was cut in the middle to fit max_prompt_tokens


def user_message(context: str, question: str, instruction: str) -> str:
    # Context first, then the question, then the plan-and-solve instruction (SEALONG's format).
    return f"{context}\n\n{question}\n{instruction}"


def chat_prompt(tokenizer, message: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": message}], tokenize=False, add_generation_prompt=True
    )


# A token is rarely longer than this many characters: a context longer than this × the token budget is
# first cut in the middle by characters, so a huge context (a 15 MB record) is never tokenised whole
# (that takes seconds and gigabytes); the exact cut is then made in tokens as usual.
MAX_CHARS_PER_TOKEN = 16


def build_prompt(tokenizer, context: str, question: str, instruction: str, max_prompt_tokens: int) -> Prompt:
    """Chat-templated prompt; if too long, keep the head and tail of the context and drop its middle."""
    max_chars = MAX_CHARS_PER_TOKEN * max_prompt_tokens
    if len(context) > max_chars:
        prompt = build_prompt(
            tokenizer,
            context[: max_chars // 2] + context[len(context) - max_chars // 2 :],
            question,
            instruction,
            max_prompt_tokens,
        )
        return Prompt(prompt.text, prompt.input_ids, True)
    text = chat_prompt(tokenizer, user_message(context, question, instruction))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_prompt_tokens:
        return Prompt(text, ids, False)
    ctx_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    overhead = len(ids) - len(ctx_ids)
    keep = max_prompt_tokens - overhead
    if keep < 16:
        raise ValueError(
            f"max_prompt_tokens={max_prompt_tokens} leaves no room for the context (template + question take {overhead})"
        )
    head, tail = ctx_ids[: keep // 2], ctx_ids[len(ctx_ids) - (keep - keep // 2) :]
    cut = tokenizer.decode(head) + tokenizer.decode(tail)
    text = chat_prompt(tokenizer, user_message(cut, question, instruction))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # Re-tokenising at the seam can shift a token or two; trim the context further if needed.
    while len(ids) > max_prompt_tokens and keep > 16:
        keep -= max(1, len(ids) - max_prompt_tokens)
        head, tail = ctx_ids[: keep // 2], ctx_ids[len(ctx_ids) - (keep - keep // 2) :]
        text = chat_prompt(
            tokenizer, user_message(tokenizer.decode(head) + tokenizer.decode(tail), question, instruction)
        )
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return Prompt(text, ids, True)
