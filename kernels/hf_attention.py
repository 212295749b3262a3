"""transformers attention functions (``AttentionInterface``) that run a causal LM sequence-parallel with
our ring attention or Ulysses, and the ``sequence_parallel`` block that says over which group.

Each rank feeds the model its shard of every sequence with ``position_ids`` = the global positions of its
tokens (RoPE needs them anyway). Inside ``with sequence_parallel(group):`` every attention layer attends
across the group; the token layout is gathered once per forward (per ``position_ids`` tensor) and reused by
every layer. For packed sequences (several documents in one row, position ids restarting per document),
pass ``positions`` (global token indices of this rank's tokens) and ``segments`` (their document ids) to
``sequence_parallel``: then position_ids only drive RoPE. ``attention_mask`` is ignored: right padding is
harmless under a causal mask (real tokens never see later pads; pad labels are ignored); left padding is not
supported.

Tests: tests/kernels/test_ring_attention.py (against transformers' eager attention, one process) and
tests/kernels/test_sequence_parallel.py (a LoRA Llama ORPO step under SP = 2, ring and Ulysses, against
SP = 1).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from sealong.kernels.ring_attention import RingLayout, ring_attention
from sealong.kernels.ulysses import UlyssesLayout, ulysses_attention

RING_ATTENTION_NAME = "sealong_ring"
ULYSSES_ATTENTION_NAME = "sealong_ulysses"


@dataclass
class _SequenceParallel:
    group: dist.ProcessGroup | None = None
    positions: torch.Tensor | None = None
    segments: torch.Tensor | None = None
    layouts: dict = field(default_factory=dict)  # layout class → (position_ids, length, layout)

    def layout(self, cls, position_ids: torch.Tensor | None, seq_len: int, device: torch.device):
        key = None if self.positions is not None else position_ids
        cached = self.layouts.get(cls)
        if cached is not None and cached[0] is key and cached[1] == seq_len:
            return cached[2]
        if self.positions is not None:
            positions, segments = self.positions.to(device), self.segments
        elif position_ids is not None:
            if position_ids.shape[0] > 1 and not bool((position_ids == position_ids[:1]).all()):
                raise ValueError(
                    "sequence-parallel attention needs the same position_ids in every row of the batch "
                    "(for packed documents pass positions and segments to sequence_parallel)"
                )
            positions, segments = position_ids[0].to(device), None
        else:
            positions, segments = torch.arange(seq_len, device=device), None
        built = cls(positions, None if segments is None else segments.to(device), self.group)
        self.layouts[cls] = (key, seq_len, built)  # holding position_ids keeps its id from being reused
        return built


_current = _SequenceParallel()


@contextmanager
def sequence_parallel(
    group: dist.ProcessGroup | None,
    positions: torch.Tensor | None = None,
    segments: torch.Tensor | None = None,
) -> Iterator[None]:
    """Within the block, models using these attention functions attend across ``group``."""
    global _current
    previous, _current = _current, _SequenceParallel(group, positions, segments)
    try:
        yield
    finally:
        _current = previous


def _run(attention, layout_cls, query, key, value, scaling, dropout, position_ids):
    if dropout:
        raise ValueError("sequence-parallel attention does not implement attention dropout")
    layout = _current.layout(layout_cls, position_ids, query.shape[2], query.device)
    out = attention(query, key, value, group=_current.group, causal=True, scale=scaling, layout=layout)
    return out.transpose(1, 2).contiguous(), None


def hf_ring_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_ids=None, **kwargs
):
    """AttentionInterface function: ``ring_attention`` over the current group (see module doc)."""
    return _run(ring_attention, RingLayout, query, key, value, scaling, dropout, position_ids)


def hf_ulysses_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, position_ids=None, **kwargs
):
    """AttentionInterface function: ``ulysses_attention`` over the current group (see module doc)."""
    return _run(ulysses_attention, UlyssesLayout, query, key, value, scaling, dropout, position_ids)


def register_hf_ring_attention(name: str = RING_ATTENTION_NAME) -> str:
    """Register the ring hook; then load or switch the model with attn_implementation=name."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, hf_ring_attention_forward)
    return name


def register_hf_ulysses_attention(name: str = ULYSSES_ATTENTION_NAME) -> str:
    """Register the Ulysses hook; then load or switch the model with attn_implementation=name."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, hf_ulysses_attention_forward)
    return name


def register_hf_sequence_parallel_attention(mode: str) -> str:
    """The attn_implementation name for mode "ring" or "ulysses" ([distributed] sequence_parallel)."""
    if mode == "ring":
        return register_hf_ring_attention()
    if mode == "ulysses":
        return register_hf_ulysses_attention()
    raise ValueError(f"sequence-parallel mode must be 'ring' or 'ulysses', got {mode!r}")
