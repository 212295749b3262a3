"""Multi-process tests on gloo (CPU): sequence-parallel ORPO, ring attention and Ulysses (fp32 1e-5 and bf16
2e-2 relative, odd lengths, GQA, packed documents, causal or not), and one training step of a tiny LoRA
Llama under each, against the single-process result. Workers: kernel_workers.py."""

from __future__ import annotations

import pytest
from kernel_workers import (
    llama_sequence_parallel_step,
    orpo_sequence_parallel,
    run_distributed,
    sequence_parallel_attention_matches_full,
)

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("world", [2, 4])
def test_fused_orpo_sequence_parallel_matches_single_process(world):
    run_distributed(orpo_sequence_parallel, world, "fused")


def test_naive_orpo_sequence_parallel_matches_single_process():
    run_distributed(orpo_sequence_parallel, 2, "naive")


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("mode", ["ring", "ulysses"])
def test_sequence_parallel_attention_matches_full_attention(mode, world):
    run_distributed(sequence_parallel_attention_matches_full, world, mode)


def test_llama_lora_step_sequence_parallel_2_matches_1():
    run_distributed(llama_sequence_parallel_step, 2, "ring")


def test_llama_lora_step_ulysses_2_matches_1():
    run_distributed(llama_sequence_parallel_step, 2, "ulysses")
