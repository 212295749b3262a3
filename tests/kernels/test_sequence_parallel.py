"""Multi-process tests on gloo (CPU): sequence-parallel ORPO, ring attention and one training step of a
tiny LoRA Llama, each against the single-process result (fp32, 1e-5 relative). Workers: kernel_workers.py."""

from __future__ import annotations

import pytest
from kernel_workers import (
    llama_sequence_parallel_step,
    orpo_sequence_parallel,
    ring_attention_matches_full,
    run_distributed,
)

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("world", [2, 4])
def test_fused_orpo_sequence_parallel_matches_single_process(world):
    run_distributed(orpo_sequence_parallel, world, "fused")


def test_naive_orpo_sequence_parallel_matches_single_process():
    run_distributed(orpo_sequence_parallel, 2, "naive")


@pytest.mark.parametrize("world", [2, 4])
def test_ring_attention_matches_full_attention(world):
    run_distributed(ring_attention_matches_full, world)


def test_llama_lora_step_sequence_parallel_2_matches_1():
    run_distributed(llama_sequence_parallel_step, 2)
