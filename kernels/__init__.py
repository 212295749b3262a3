"""sealong.kernels: fused kernels for SEALONG, each with its plain torch reference beside it.

- ``mbr``: Minimum Bayes Risk scores from sentence embeddings (and token-level utilities).
- ``orpo``: the ORPO preference loss over response tokens only.
"""
