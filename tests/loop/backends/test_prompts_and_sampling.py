import torch
from sealong.loop.backends.transformers_backend import greedy_batch, sample_n
from sealong.loop.config import PLAN_AND_SOLVE
from sealong.loop.recipe.prompts import build_prompt


def test_prompt_order_and_template(tiny_model):
    _, tok = tiny_model
    p = build_prompt(tok, "CONTEXT-HERE", "QUESTION?", PLAN_AND_SOLVE, 4096)
    assert not p.truncated
    assert p.text.index("CONTEXT-HERE") < p.text.index("QUESTION?") < p.text.index("Let's first understand")
    assert p.text.rstrip().endswith("assistant")  # ends by opening the assistant turn
    assert len(p.input_ids) == len(tok(p.text, add_special_tokens=False)["input_ids"])


def test_middle_truncation_keeps_head_and_tail(tiny_model):
    _, tok = tiny_model
    context = "HEADMARK " + " ".join(f"word{i}" for i in range(600)) + " TAILMARK"
    p = build_prompt(tok, context, "Q?", PLAN_AND_SOLVE, 300)
    assert p.truncated and len(p.input_ids) <= 300
    assert "HEADMARK" in p.text and "TAILMARK" in p.text and "word300 " not in p.text


def test_shared_prefill_equals_full_prefill(tiny_model):
    model, tok = tiny_model
    ids = tok("Passage one. Passage two. Who is it?", add_special_tokens=False)["input_ids"]
    shared = sample_n(model, tok, ids, 4, 1.0, 1.0, 10, seed=7, shared_prefill=True)
    full = sample_n(model, tok, ids, 4, 1.0, 1.0, 10, seed=7, shared_prefill=False)
    assert [c.text for c in shared] == [c.text for c in full]
    assert len({c.text for c in shared}) > 1  # real sampling: the N draws differ


def test_greedy_batch_matches_one_by_one(tiny_model):
    model, tok = tiny_model
    prompts = [
        tok(t, add_special_tokens=False)["input_ids"]
        for t in ("short one", "a somewhat longer prompt here ok")
    ]
    batched = greedy_batch(model, tok, prompts, 8)
    single = [greedy_batch(model, tok, [p], 8)[0] for p in prompts]
    assert [c.text for c in batched] == [c.text for c in single]
    torch.testing.assert_close(
        torch.tensor([c.n_tokens for c in batched]), torch.tensor([c.n_tokens for c in single])
    )


def test_shared_prefill_through_a_lora_adapter(tiny_model):
    """The policy with a champion adapter is a PeftModel: the shared prefill must reach its base model's
    cache argument (named `cache` in transformers 5, `past_key_values` before) and match N prefills."""
    import copy

    from peft import LoraConfig, get_peft_model

    model, tok = tiny_model
    torch.manual_seed(0)
    peft_model = get_peft_model(
        copy.deepcopy(model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    )
    peft_model.eval()
    ids = tok("Passage one. Passage two. Who is it?", add_special_tokens=False)["input_ids"]
    shared = sample_n(peft_model, tok, ids, 3, 1.0, 1.0, 8, seed=3, shared_prefill=True)
    full = sample_n(peft_model, tok, ids, 3, 1.0, 1.0, 8, seed=3, shared_prefill=False)
    assert [c.text for c in shared] == [c.text for c in full]
    base = sample_n(model, tok, ids, 3, 1.0, 1.0, 8, seed=3, shared_prefill=True)
    assert [c.text for c in base] != [c.text for c in shared]  # the adapter is really applied
