"""sealong.kernels: fused kernels for SEALONG, each with its plain torch reference beside it.

- ``mbr``: Minimum Bayes Risk scores (embedding, BERTScore-style token, ROUGE-L, random utilities) and their
  dispatchers; Triton kernels in ``triton_mbr``.
- ``orpo``: the ORPO preference loss over response tokens only (``naive``, ``fused``, ``liger`` backends);
  ``orpo_reference``, ``orpo_fused`` (token-chunked, sequence-parallel), ``orpo_liger``.
- ``ring_attention``: torch ring attention over torch.distributed, its HF attention hook, zigzag sharding,
  and the guarded ring-flash-attn integration (CUDA only).
- ``distributed``: the differentiable all-reduce and gradient all-reduce for sequence parallelism.
"""
