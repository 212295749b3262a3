"""ring-flash-attn (zhuzilin/ring-flash-attention) as a transformers attention function, when it is usable:
CUDA, flash_attn and ring_flash_attn importable.

UNTESTED: no GPU with flash_attn has run this file; on CPU only its guards are tested
(tests/kernels/test_ring_attention.py). What it relies on, read in the sources:
- ring_flash_attn imports flash_attn at import time (CUDA only), and its package ``__init__`` imports its HF
  adapter, which imports ``is_flash_attn_greater_or_equal_2_10`` (older releases) from
  ``transformers.modeling_flash_attention_utils``; transformers 5.x moved it to ``transformers.utils``.
  Providing the attribute before the import makes the package import (OpenRLHF's
  ``patch_transformers_for_ring_flash_attn`` does the same).
- Its ``substitute_hf_flash_attn`` replaces transformers' private ``_flash_attention_forward`` after a
  parameter-count check that fails on transformers 5.25, so it is not used: ``hf_ring_flash_attention_forward``
  is registered through ``AttentionInterface`` and calls the core ``llama3_flash_attn_varlen_func`` itself.
- Layout: one packed row of documents (``cu_seqlens`` over the whole row), each rank holding a contiguous
  slice (loop/training/orpo.py ``pack_for_ring_flash``); ``update_ring_flash_attn_params`` per batch computes the
  slice's cu_seqlens with ring_flash_attn's ``llama3_flash_attn_prepare_cu_seqlens``.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.distributed as dist

RING_FLASH_ATTENTION_NAME = "sealong_ring_flash"


def ring_flash_attn_available() -> bool:
    """ring-flash-attn imports flash_attn at import time, which needs CUDA: check without importing."""
    return (
        torch.cuda.is_available()
        and importlib.util.find_spec("flash_attn") is not None
        and importlib.util.find_spec("ring_flash_attn") is not None
    )


def _import_ring_flash_attn():
    """Import ring_flash_attn after giving transformers 5.x back the helper its HF adapter imports."""
    import transformers.modeling_flash_attention_utils as fa_utils
    import transformers.utils as tf_utils

    for name in ("is_flash_attn_greater_or_equal_2_10", "is_flash_attn_greater_or_equal"):
        if not hasattr(fa_utils, name) and hasattr(tf_utils, name):
            setattr(fa_utils, name, getattr(tf_utils, name))
    import ring_flash_attn

    return ring_flash_attn


_state: dict = {}  # group, heads_k_stride, and the current batch's cu_seqlens parameters


def hf_ring_flash_attention_forward(
    module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs
):
    """AttentionInterface function: llama3 varlen ring over the enabled group. query [1, H, L/sp, D]."""
    from ring_flash_attn import llama3_flash_attn_varlen_func

    if "cu_seqlens_q" not in _state:
        raise RuntimeError("update_ring_flash_attn_params must be called for every batch")
    if query.shape[0] != 1:
        raise ValueError("ring-flash-attn takes one packed row (batch size 1)")
    dtype = query.dtype
    flash_dtype = torch.bfloat16 if dtype == torch.float32 else dtype  # flash_attn: fp16/bf16 only
    q, k, v = (t[0].transpose(0, 1).to(flash_dtype) for t in (query, key, value))  # [L/sp, H, D]
    out = llama3_flash_attn_varlen_func(
        q, k, v,
        _state["cu_seqlens_q"], _state["cu_seqlens_k"], _state["max_seqlen_q"], _state["max_seqlen_k"],
        heads_k_stride=_state["heads_k_stride"], local_k_slice=_state["local_k_slice"],
        dropout_p=dropout, softmax_scale=scaling, causal=True, group=_state["group"],
    )  # fmt: skip
    return out.unsqueeze(0).to(dtype), None  # [1, L/sp, H, D]


def enable_ring_flash_attn(group: dist.ProcessGroup | None, heads_k_stride: int = 1) -> str:
    """Import ring-flash-attn and register ``hf_ring_flash_attention_forward``; returns the
    attn_implementation name. UNTESTED until run on a CUDA GPU (see module doc)."""
    if not ring_flash_attn_available():
        raise RuntimeError(
            "ring-flash-attn needs CUDA, flash_attn and ring_flash_attn; use the torch ring attention"
        )
    _import_ring_flash_attn()
    from transformers import AttentionInterface

    AttentionInterface.register(RING_FLASH_ATTENTION_NAME, hf_ring_flash_attention_forward)
    _state.clear()
    _state.update(group=dist.group.WORLD if group is None else group, heads_k_stride=heads_k_stride)
    return RING_FLASH_ATTENTION_NAME


def try_enable_ring_flash_attn(group: dist.ProcessGroup | None, heads_k_stride: int = 1) -> str | None:
    """Enable ring-flash-attn if it imports here; None on success, else why not (the caller falls back)."""
    if not ring_flash_attn_available():
        return "ring-flash-attn needs CUDA, flash_attn and ring_flash_attn"
    try:
        enable_ring_flash_attn(group, heads_k_stride)
    except (ImportError, OSError, ValueError, RuntimeError, AttributeError) as e:  # OSError: a flash_attn
        # built against another torch fails to load its library
        return f"ring-flash-attn unusable here ({type(e).__name__}: {e})"
    return None


def update_ring_flash_attn_params(cu_seqlens: torch.Tensor, group: dist.ProcessGroup | None) -> None:
    """Per-batch parameters from cu_seqlens of the whole packed row (before slicing). UNTESTED (module doc)."""
    if not ring_flash_attn_available():
        raise RuntimeError("ring-flash-attn needs CUDA, flash_attn and ring_flash_attn")
    from ring_flash_attn import llama3_flash_attn_prepare_cu_seqlens

    group = dist.group.WORLD if group is None else group
    cu_q, cu_k, max_q, max_k, k_slice = llama3_flash_attn_prepare_cu_seqlens(
        cu_seqlens, True, dist.get_rank(group), dist.get_world_size(group)
    )
    _state.update(
        cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=max_q, max_seqlen_k=max_k, local_k_slice=k_slice
    )
