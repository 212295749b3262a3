"""The CUDA paths, on a machine that has a GPU: `make test-gpu` (TRITON_INTERPRET=0 pytest -m gpu_test tests/gpu).

Skipped everywhere else, so `make test` on the CPU never runs them: until a session with a GPU has run
them, every test here is UNTESTED. They compare the compiled Triton kernels with their torch references
on CUDA tensors, run a QLoRA ORPO step on bitsandbytes' CUDA NF4 path with the fused loss, sample and
decode on the GPU, and run one whole round of the loop with the policy on the GPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))  # test_orpo imports kernel_checks
from ..conftest import cli, write_config  # noqa: E402
from ..kernels.kernel_checks import assert_close  # noqa: E402
from ..kernels.test_orpo import loss_and_grads, make_pair  # noqa: E402

pytestmark = [
    pytest.mark.gpu_test,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") == "1", reason="run with TRITON_INTERPRET=0 (make test-gpu)"
    ),
]


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("counts", [[32] * 64, [1, 7, 33, 2, 64], [5]])
@pytest.mark.parametrize("d", [384, 1024, 17])
def test_triton_embedding_mbr_on_cuda(counts, d, dtype, atol):
    from sealong.kernels import mbr

    x = torch.randn(sum(counts), d, device="cuda").to(dtype)
    got = mbr.mbr_scores(x, counts, backend="triton")
    want = mbr.ragged_embedding_mbr_scores_reference(x.float(), counts)
    assert got.is_cuda
    assert_close(got, want, atol, atol, "embedding MBR")


@pytest.mark.parametrize("n,length,d", [(8, 40, 384), (5, 129, 64), (32, 17, 384)])
def test_triton_bertscore_mbr_on_cuda(n, length, d):
    from sealong.kernels import mbr

    emb = torch.randn(n, length, d, device="cuda")
    mask = torch.rand(n, length, device="cuda") > 0.2
    mask[:, 0] = True
    got = mbr.bertscore_mbr_scores(emb, mask, backend="triton")
    want = mbr.bertscore_mbr_scores_reference(emb, mask)
    assert_close(got, want, 1e-4, 1e-4, "bertscore MBR")


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("shape", [(1, 16, 16, 8, 32), (3, 47, 39, 31, 67), (2, 1000, 300, 576, 49152)])
def test_fused_orpo_on_cuda_matches_naive(shape, dtype, tol):
    from sealong.kernels.orpo import fused_linear_orpo_loss, orpo_loss_reference

    args = [t.detach().cuda().requires_grad_(t.requires_grad) if t.is_floating_point() else t.cuda()
            for t in make_pair(*shape, dtype=dtype)]  # fmt: skip
    got, g_got = loss_and_grads(fused_linear_orpo_loss, *args, chunk_size=256, beta=0.1)
    want, g_want = loss_and_grads(orpo_loss_reference, *args, beta=0.1)
    assert_close(got.loss, want.loss, tol, tol, "loss")
    for a, b, name in zip(g_got, g_want, ("hidden_chosen", "hidden_rejected", "weight")):
        assert_close(a, b, tol, tol, name)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 3e-2)])
def test_liger_orpo_on_cuda_matches_its_convention(dtype, tol):
    """Liger's chunked ORPO (torch.compile'd on CUDA) against the reference in Liger's convention."""
    pytest.importorskip("liger_kernel")
    from sealong.kernels.orpo import orpo_loss, orpo_loss_reference_liger_convention

    args = [t.detach().cuda().requires_grad_(t.requires_grad) if t.is_floating_point() else t.cuda()
            for t in make_pair(3, 47, 39, 64, 4099, dtype=dtype)]  # fmt: skip
    got, g_got = loss_and_grads(orpo_loss, *args, backend="liger")
    want, g_want = loss_and_grads(orpo_loss_reference_liger_convention, *args)
    assert_close(got.loss, want.loss, tol, tol, "loss")
    for a, b, name in zip(g_got, g_want, ("hidden_chosen", "hidden_rejected", "weight")):
        assert_close(a, b, tol, tol, name)


def test_qlora_orpo_step_on_cuda_nf4(tiny_model_dir: Path):
    pytest.importorskip("bitsandbytes")
    from sealong.loop.backends.models import load_causal_lm
    from sealong.loop.config import TrainConfig
    from sealong.loop.training.orpo import PairExample, add_lora, lora_parameters, orpo_step_loss

    cfg = TrainConfig(quantize="nf4", lora_r=4, lora_alpha=8, loss="fused", gradient_checkpointing=True)
    model = add_lora(load_causal_lm(tiny_model_dir, "bfloat16", "nf4", device="cuda"), cfg, None)
    layer = model.get_base_model().model.layers[0].mlp.down_proj.base_layer
    assert type(layer).__name__ == "Linear4bit" and layer.weight.is_cuda
    before = {n: p.detach().clone() for n, p in lora_parameters(model).items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = list(range(5, 60))
    pair = PairExample(ids, [-100] * 40 + ids[40:], ids[:50], [-100] * 40 + ids[40:50])
    model.train()
    out, n_tok = orpo_step_loss(model, [pair], 0.1, "fused", 0)
    assert torch.isfinite(out.loss) and n_tok == len(ids) + 50
    out.loss.backward()
    opt.step()
    changed = [n for n, p in lora_parameters(model).items() if not torch.equal(p.detach(), before[n])]
    assert any("lora_B" in n for n in changed)


def test_sampling_and_greedy_on_cuda(tiny_model_dir: Path):
    from sealong.loop.backends.models import load_policy, load_tokenizer
    from sealong.loop.backends.transformers_backend import greedy_batch, sample_n

    model, tok = load_policy(tiny_model_dir, None, "float32", device="auto"), load_tokenizer(tiny_model_dir)
    assert next(model.parameters()).is_cuda
    ids = tok("Where was Ada born?")["input_ids"]
    shared = sample_n(model, tok, ids, 4, 1.0, 1.0, 12, seed=3, shared_prefill=True)
    assert len(shared) == 4 and all(c.n_tokens >= 1 for c in shared)
    one = greedy_batch(model, tok, [ids], 8)[0]
    two = greedy_batch(model, tok, [ids[:3], ids], 8)[1]
    assert one.text == two.text  # left padding does not change a greedy answer


def test_one_round_with_the_policy_on_the_gpu(tmp_path: Path):
    wd = tmp_path / "run"
    # SEALONG_TEST_EMBEDDER: a local embedder directory where the bundled one is not installed (the GPU
    # check's kit, bench/device_kit.py)
    embedder = os.environ.get("SEALONG_TEST_EMBEDDER", "bundled:all-minilm-l6-v2")
    cfg = write_config(
        tmp_path / "c.toml", policy={"device": "auto", "threads": 0}, embedder={"model": embedder}
    )
    proc = cli("start", "--config", str(cfg), "--workdir", str(wd), "--plain", check=True, timeout=420)
    assert "finished: 1 round(s) done" in proc.stdout
