"""ORPO single process: the token-chunked fused loss against the naive one that materialises logits
(loss, metrics, gradients of hidden states and lm_head), Liger against its own convention, the dispatcher."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import assert_close
from sealong.kernels import orpo as orpo_module
from sealong.kernels.orpo import (
    IGNORE_INDEX,
    fused_linear_orpo_loss,
    orpo_loss,
    orpo_loss_reference,
    orpo_loss_reference_liger_convention,
    response_logp_sums_chunked,
    response_logp_sums_reference,
)

# (B, T_chosen, T_rejected, H, V): includes the odd 3×47×31 and a batch of one
SHAPES = [(1, 16, 16, 8, 32), (3, 47, 39, 31, 67), (2, 64, 24, 16, 128)]
CHUNKS = [1, 7, 1024]


def make_pair(B, Tc, Tr, H, V, dtype=torch.float32, seed=0, weight_grad=True):
    g = torch.Generator().manual_seed(seed)

    def labels(T):
        y = torch.randint(0, V, (B, T), generator=g)
        prompt = torch.randint(1, T, (B,), generator=g)  # every row keeps at least one response token
        return y.masked_fill(torch.arange(T) < prompt.unsqueeze(1), IGNORE_INDEX)

    hc = torch.randn(B, Tc, H, generator=g).to(dtype).requires_grad_()
    hr = torch.randn(B, Tr, H, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g) / H**0.5).to(dtype).requires_grad_(weight_grad)
    return hc, hr, w, labels(Tc), labels(Tr)


def loss_and_grads(fn, hc, hr, w, lc, lr, **kw):
    out = fn(hc, hr, w, lc, lr, **kw)
    leaves = [t for t in (hc, hr, w) if t.requires_grad]
    return out, torch.autograd.grad(out.loss, leaves)


def check_outputs(got, want, atol, rtol):
    for name in ("loss", "nll", "or_loss", "log_odds_ratio", "chosen_logp", "rejected_logp"):
        assert_close(getattr(got, name), getattr(want, name), atol, rtol, name)


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_matches_naive_fp32(shape, chunk_size):
    args = make_pair(*shape)
    got, g_got = loss_and_grads(fused_linear_orpo_loss, *args, chunk_size=chunk_size, beta=0.2)
    want, g_want = loss_and_grads(orpo_loss_reference, *args, beta=0.2)
    check_outputs(got, want, 1e-6, 1e-5)
    for a, b, name in zip(g_got, g_want, ("hidden_chosen", "hidden_rejected", "weight")):
        assert_close(a, b, 1e-6, 1e-5, name)


@pytest.mark.parametrize("dtype,atol,rtol", [(torch.bfloat16, 2e-2, 2e-2), (torch.float16, 2e-3, 2e-3)])
def test_fused_matches_naive_half(dtype, atol, rtol):
    args = make_pair(3, 47, 39, 32, 67, dtype)
    got, g_got = loss_and_grads(fused_linear_orpo_loss, *args, chunk_size=16)
    want, g_want = loss_and_grads(orpo_loss_reference, *args)
    check_outputs(got, want, atol, rtol)
    for a, b, name in zip(g_got, g_want, ("hidden_chosen", "hidden_rejected", "weight")):
        assert a.dtype == b.dtype == dtype
        assert_close(a, b, atol, rtol, name)


def test_frozen_lm_head_gets_no_gradient():
    hc, hr, w, lc, lr = make_pair(2, 20, 20, 8, 32, weight_grad=False)
    got, (g_hc, g_hr) = loss_and_grads(fused_linear_orpo_loss, hc, hr, w, lc, lr, chunk_size=5)
    want, (w_hc, w_hr) = loss_and_grads(orpo_loss_reference, hc, hr, w, lc, lr)
    assert_close(g_hc, w_hc, 1e-6, 1e-5, "hidden_chosen")
    assert_close(g_hr, w_hr, 1e-6, 1e-5, "hidden_rejected")
    assert w.grad is None


def test_prompt_positions_get_zero_gradient():
    hc, hr, w, lc, lr = make_pair(2, 30, 30, 8, 32)
    _, (g_hc, _, _) = loss_and_grads(fused_linear_orpo_loss, hc, hr, w, lc, lr, chunk_size=4)
    assert (g_hc[lc == IGNORE_INDEX] == 0).all()
    assert (g_hc[lc != IGNORE_INDEX].abs().sum(-1) > 0).all()


def test_chunked_sums_match_reference():
    hc, _, w, lc, _ = make_pair(3, 47, 47, 31, 67)
    sums, counts = response_logp_sums_chunked(hc, w, lc, chunk_size=10)
    ref_sums, ref_counts = response_logp_sums_reference(hc, w, lc)
    assert_close(sums, ref_sums, 1e-5, 1e-5, "sums")
    assert torch.equal(counts, ref_counts)


def test_liger_backend_matches_its_convention():
    args = make_pair(3, 24, 18, 16, 50)
    got, g_got = loss_and_grads(orpo_loss, *args, backend="liger")
    want, g_want = loss_and_grads(orpo_loss_reference_liger_convention, *args)
    check_outputs(got, want, 1e-5, 1e-5)
    for a, b, name in zip(g_got, g_want, ("hidden_chosen", "hidden_rejected", "weight")):
        assert_close(a, b, 1e-6, 1e-5, name)


def test_liger_convention_differs_only_in_nll_normalisation():
    """Token-weighted vs sequence-weighted NLL: equal for one pair, different for unequal lengths."""
    one = make_pair(1, 20, 20, 8, 32)
    assert_close(
        orpo_loss_reference_liger_convention(*one).loss, orpo_loss_reference(*one).loss, 1e-6, 1e-6, "B=1"
    )
    many = make_pair(3, 40, 40, 8, 32, seed=4)
    liger, ours = orpo_loss_reference_liger_convention(*many), orpo_loss_reference(*many)
    assert_close(liger.or_loss, ours.or_loss, 1e-6, 1e-6, "odds-ratio term")
    assert abs(liger.nll.item() - ours.nll.item()) > 1e-4


def test_dispatcher(monkeypatch):
    args = make_pair(2, 12, 12, 8, 32)
    ref = orpo_loss_reference(*args)
    for backend in ("naive", "fused"):
        assert_close(orpo_loss(*args, backend=backend).loss, ref.loss, 1e-6, 1e-6, backend)
    with pytest.raises(ValueError, match="backend"):
        orpo_loss(*args, backend="trl")
    monkeypatch.setattr(orpo_module, "group_size", lambda group: 2)  # a 2-rank group without spawning one
    with pytest.raises(ValueError, match="sequence parallelism"):
        orpo_loss(*args, backend="liger", group=object())


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda a: {**a, "labels_chosen": a["labels_chosen"].clamp(min=0) + 1000}, "labels"),
        (lambda a: {**a, "chunk_size": 0}, "chunk_size"),
        (lambda a: {**a, "weight": a["weight"][:, :5]}, "weight"),
        (lambda a: {**a, "hidden_rejected": a["hidden_rejected"][:1]}, "batch"),
        (lambda a: {**a, "labels_chosen": a["labels_chosen"][:, :3]}, "labels"),
    ],
)
def test_fused_rejects_bad_inputs(mutate, match):
    hc, hr, w, lc, lr = make_pair(2, 12, 12, 8, 32)
    kwargs = dict(hidden_chosen=hc, hidden_rejected=hr, weight=w, labels_chosen=lc, labels_rejected=lr)
    with pytest.raises(ValueError, match=match):
        fused_linear_orpo_loss(**mutate(kwargs))
