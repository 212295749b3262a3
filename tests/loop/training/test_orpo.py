import copy

import pytest
import torch
from sealong.kernels.orpo import IGNORE_INDEX, orpo_loss_reference
from sealong.loop.config import TrainConfig
from sealong.loop.training.orpo import (
    PairExample,
    add_lora,
    encode_response,
    lora_parameters,
    orpo_step_loss,
    train_orpo,
)


def _examples(tok, n=3):
    out = []
    for i in range(n):
        prompt = tok(f"Context {i}: Ann was born in Ford{i}. Where was Ann born?", add_special_tokens=False)[
            "input_ids"
        ]
        c = encode_response(tok, prompt, f"Ann was born in Ford{i}.", 256)
        r = encode_response(tok, prompt, "I do not know the answer to that.", 256)
        out.append(PairExample(*c, *r))
    return out


def test_encode_masks_the_prompt(tiny_model):
    _, tok = tiny_model
    prompt = tok("some prompt", add_special_tokens=False)["input_ids"]
    ids, labels = encode_response(tok, prompt, "the answer", 64)
    assert ids[: len(prompt)] == prompt
    assert labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert labels[len(prompt) :] == ids[len(prompt) :]
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    ids, labels = encode_response(tok, prompt * 50, "the answer", 64)
    assert (
        len(ids) == 64 and labels[-1] != IGNORE_INDEX
    )  # overlong: the prompt loses tokens, the response does not


def test_few_steps_change_every_lora_param_and_no_base_weight(tiny_model):
    model, tok = tiny_model
    model = copy.deepcopy(model)
    cfg = TrainConfig(lora_r=4, lora_alpha=8, lr=1e-2, batch_size=1, grad_accum=1, epochs=1, warmup_ratio=0.0)
    peft_model = add_lora(model, cfg, None)
    # LoRA B starts at zero, so A gets no gradient on step 1; a few steps move both.
    before_lora = {n: p.detach().clone() for n, p in lora_parameters(peft_model).items()}
    before_base = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" not in n}
    assert before_lora and all(
        not p.requires_grad for n, p in peft_model.named_parameters() if "lora_" not in n
    )
    assert not any("lm_head" in n for n in before_lora)
    summary = train_orpo(peft_model, _examples(tok, 3), cfg, tok.pad_token_id, seed=0)
    assert summary["steps"] == 3
    after = dict(peft_model.named_parameters())
    unchanged = [n for n, p in before_lora.items() if torch.equal(p, after[n])]
    assert not unchanged, f"LoRA parameters that did not change: {unchanged[:5]}"
    changed_base = [n for n, p in before_base.items() if not torch.equal(p, after[n])]
    assert not changed_base, f"base weights that changed: {changed_base[:5]}"
    targets = {n.split(".")[-4] for n in before_lora if n.endswith("lora_A.default.weight")}
    assert targets == set(cfg.target_modules)


def test_step_loss_is_response_only_orpo(tiny_model):
    """The training forward equals the reference ORPO on the same hidden states, and prompt tokens do not count."""
    model, tok = tiny_model
    cfg = TrainConfig(lora_r=4, lora_alpha=8)
    peft_model = add_lora(copy.deepcopy(model), cfg, None)
    ex = _examples(tok, 1)
    out, _ = orpo_step_loss(peft_model, ex, 0.1, "naive", tok.pad_token_id)
    # Changing prompt labels to real tokens must change the NLL: so masking matters and is applied.
    leaky = [type(ex[0])(ex[0].chosen_ids, ex[0].chosen_ids, ex[0].rejected_ids, ex[0].rejected_labels)]
    out_leaky, _ = orpo_step_loss(peft_model, leaky, 0.1, "naive", tok.pad_token_id)
    assert not torch.isclose(out.nll, out_leaky.nll)
    # loss = nll + beta * or_loss, as in docs/ARCHITECTURE.md, "The recipe"
    torch.testing.assert_close(out.loss.detach(), out.nll + 0.1 * out.or_loss)
    # The same numbers as the reference ORPO on the model's hidden states (shift by one, prompt masked).
    decoder, head = peft_model.get_base_model().model, peft_model.get_base_model().lm_head
    with torch.no_grad():
        h = decoder(input_ids=torch.tensor([ex[0].chosen_ids])).last_hidden_state[:, :-1]
        hr = decoder(input_ids=torch.tensor([ex[0].rejected_ids])).last_hidden_state[:, :-1]
        ref = orpo_loss_reference(
            h,
            hr,
            head.weight,
            torch.tensor([ex[0].chosen_labels[1:]]),
            torch.tensor([ex[0].rejected_labels[1:]]),
            beta=0.1,
        )
    torch.testing.assert_close(out.loss.detach(), ref.loss, rtol=1e-5, atol=1e-6)
    fused, _ = orpo_step_loss(peft_model, ex, 0.1, "fused", tok.pad_token_id)
    torch.testing.assert_close(fused.loss.detach(), out.loss.detach(), rtol=1e-5, atol=1e-6)


def test_nf4_base_trains_on_cpu(tiny_model_dir):
    pytest.importorskip("bitsandbytes")
    from sealong.loop.backends.models import load_causal_lm, load_tokenizer

    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, "float32", quantize="nf4")
    assert any("4bit" in type(m).__name__ for m in model.modules())
    cfg = TrainConfig(lora_r=4, lora_alpha=8, lr=1e-2, quantize="nf4", warmup_ratio=0.0)
    peft_model = add_lora(model, cfg, None)
    before = {n: p.detach().clone() for n, p in lora_parameters(peft_model).items()}
    summary = train_orpo(peft_model, _examples(tok, 2), cfg, tok.pad_token_id, seed=0)
    assert summary["steps"] == 2 and summary["last_loss"] == summary["last_loss"]  # finite
    assert any(not torch.equal(p, dict(peft_model.named_parameters())[n]) for n, p in before.items())


def test_resume_from_mid_epoch_checkpoint_matches_uninterrupted(tiny_model, tmp_path):
    model, tok = tiny_model
    cfg = TrainConfig(lora_r=4, lora_alpha=8, lr=1e-2, lora_dropout=0.1, warmup_ratio=0.0, epochs=2)
    examples = _examples(tok, 3)  # 6 steps over 2 epochs

    def fresh():
        torch.manual_seed(0)
        return add_lora(copy.deepcopy(model), cfg, None)

    straight = fresh()
    train_orpo(straight, examples, cfg, tok.pad_token_id, seed=1)
    interrupted = fresh()
    ckpt = tmp_path / "ckpt"
    first = train_orpo(
        interrupted,
        examples,
        cfg,
        tok.pad_token_id,
        seed=1,
        checkpoint_dir=ckpt,
        checkpoint_every=2,
        stop_after=5,
    )  # "killed" after step 5: checkpoints were written at steps 2 and 4, and only the newest is kept
    assert first["steps"] == 5 and [p.name for p in sorted(ckpt.iterdir())] == ["step-000004"]
    resumed = fresh()
    summary = train_orpo(
        resumed, examples, cfg, tok.pad_token_id, seed=1, checkpoint_dir=ckpt, checkpoint_every=2
    )
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 6
    want, got = lora_parameters(straight), lora_parameters(resumed)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("sp", [1, 2, 3, 4])
def test_ring_flash_packing_covers_every_token_once(sp: int):
    """The ring-flash-attn layout (guarded, untested on GPU): packing 2B sequences into one row, cut in sp
    contiguous slices, puts every token with its own label and position on exactly one rank."""
    from sealong.loop.training.orpo import IGNORE, pack_for_ring_flash

    seqs = [[10, 11, 12, 13, 14], [20, 21, 22], [30, 31, 32, 33, 34, 35, 36], [40]]
    shifted = [s[1:] + [IGNORE] for s in seqs]
    seen: dict[tuple[int, int], int] = {}
    n_tok = 0
    for rank in range(sp):
        sh = pack_for_ring_flash(seqs, shifted, rank, sp, pad_id=0)
        row_ids, row_pos = sh.input_ids[0].tolist(), sh.position_ids[0].tolist()
        assert len(row_ids) * sp == sh.cu_seqlens[-1].item() and sh.cu_seqlens.dtype == torch.int32
        n_tok += sh.n_tokens
        for j in range(len(seqs)):
            for g, lab in zip(sh.gather[j].tolist(), sh.labels[j].tolist()):
                if g < 0:
                    assert lab == IGNORE
                    continue
                tok, pos = row_ids[g], row_pos[g]
                assert seqs[j][pos] == tok and shifted[j][pos] == lab
                key = (j, pos)
                assert key not in seen
                seen[key] = rank
    assert n_tok == sum(map(len, seqs))
    assert set(seen) == {(j, p) for j, s in enumerate(seqs) for p in range(len(s))}
    assert sh.cu_seqlens.tolist()[: len(seqs) + 1] == [0, 5, 8, 15, 16]


def test_models_go_where_the_config_says(tiny_model_dir):
    """policy.device: "auto" is the CPU on a machine without CUDA; "cuda" there is one clear error."""
    import torch
    from sealong.loop.backends.models import compute_device, load_causal_lm
    from sealong.loop.errors import SealongError

    assert compute_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert compute_device("auto").type == "cuda"
        assert next(load_causal_lm(tiny_model_dir, device="auto").parameters()).is_cuda
        return
    assert compute_device("auto") == torch.device("cpu")
    with pytest.raises(SealongError, match="policy.device = 'cuda' but torch sees no CUDA GPU"):
        load_causal_lm(tiny_model_dir, device="cuda")


@pytest.mark.parametrize("on", [True, False])
def test_gradient_checkpointing_is_switched_on_only_when_asked(on: bool):
    from sealong.loop.backends.models import build_tiny_random_llama

    model, _ = build_tiny_random_llama(0)
    peft_model = add_lora(model, TrainConfig(gradient_checkpointing=on), None)
    layers = peft_model.get_base_model().model.layers
    assert [bool(getattr(layer, "gradient_checkpointing", False)) for layer in layers] == [on] * len(layers)


@pytest.mark.parametrize("upcast", [False, True])
def test_a_bf16_nf4_base_trains_in_bf16_unless_upcast_is_asked(tiny_model_dir, upcast: bool):
    """train.upcast_base = false: embeddings, norms and the residual stream stay bf16 (no fp32 copies);
    the LoRA weights and their gradients are fp32. true: PEFT's k-bit preparation (fp32 copies and stream)."""
    pytest.importorskip("bitsandbytes")
    from sealong.loop.backends.models import load_causal_lm, load_tokenizer
    from sealong.loop.training.orpo import decoder_and_head

    tok = load_tokenizer(tiny_model_dir)
    model = load_causal_lm(tiny_model_dir, "bfloat16", quantize="nf4")
    cfg = TrainConfig(lora_r=4, lora_alpha=8, lr=1e-2, quantize="nf4", warmup_ratio=0.0, upcast_base=upcast)
    peft_model = add_lora(model, cfg, None)
    base = peft_model.get_base_model()
    want = torch.float32 if upcast else torch.bfloat16
    assert base.get_input_embeddings().weight.dtype == want
    assert base.model.norm.weight.dtype == want and base.model.layers[0].input_layernorm.weight.dtype == want
    assert {p.dtype for p in lora_parameters(peft_model).values()} == {torch.float32}
    assert not any(p.requires_grad for n, p in peft_model.named_parameters() if "lora_" not in n)
    decoder, _ = decoder_and_head(peft_model)
    ids = torch.tensor([_examples(tok, 1)[0].chosen_ids])
    assert decoder(input_ids=ids).last_hidden_state.dtype == want  # the residual stream
    summary = train_orpo(peft_model, _examples(tok, 2), cfg, tok.pad_token_id, seed=0)
    assert summary["steps"] == 2 and summary["last_loss"] == summary["last_loss"]  # finite


@pytest.mark.parametrize("action", ["nan", "inf"])
def test_a_loss_fault_stops_training_at_that_micro_batch(tiny_model, monkeypatch, action: str):
    """train_orpo reaches the fault point `loss` (sealong.store.faults.tamper) with each micro-batch's
    loss: SEALONG_FAULT="train:loss@2:<action>" in the train stage makes the 2nd non-finite."""
    from sealong.loop.errors import NonFiniteLoss
    from sealong.store import faults

    model, tok = tiny_model
    cfg = TrainConfig(lora_r=4, lora_alpha=8, batch_size=1, grad_accum=1, epochs=1, warmup_ratio=0.0)
    peft_model = add_lora(copy.deepcopy(model), cfg, None)
    monkeypatch.setenv(faults.ENV, f"train:loss@2:{action}")
    monkeypatch.setitem(faults._context, "stage", "train")
    monkeypatch.setitem(faults._context, "round", 0)
    steps = []
    with pytest.raises(NonFiniteLoss, match=rf"^non-finite ORPO loss \({action}\) at optimizer step 2$"):
        train_orpo(peft_model, _examples(tok, 3), cfg, tok.pad_token_id, seed=0, on_step=steps.append)
    assert [s["step"] for s in steps] == [1]
