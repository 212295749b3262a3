"""Triton kernels for MBR scoring, with their launchers. The torch references live in ``sealong.kernels.mbr``.

Two ops, one file because they share the launch checks:

- ``embedding_mbr_scores``: one launch scores a ragged batch of questions (question q owns rows
  ``offsets[q]:offsets[q+1]``). One program per question: pass 1 L2-normalises each row and accumulates the
  centroid c = mean_j ê_j; pass 2 writes s_i = ê_i·c. fp32 accumulation for fp16/bf16/fp32 inputs.
- ``bertscore_precision_matrix``: for every ordered pair (i, j) of one question's outputs, the idf-weighted
  greedy-matching precision M[i, j] = Σ_s w_i(s)·max_t cos(x_i[s], x_j[t]) / Σ_s w_i(s). Tiled like
  FlashAttention: program (i, j) walks [BLOCK_S, BLOCK_T] tiles of the similarity with a running row
  maximum, so no L×L block and no N×N×L×L tensor is ever stored; memory is O(N·L·d) inputs + O(N²) output.

Every load is cast to fp32 before arithmetic: the interpreter (TRITON_INTERPRET=1, used by the CPU tests)
computes bf16 arithmetic wrongly, and fp32 accumulation is what we want on GPU too.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_EMBEDDING_DIM = 16384
MAX_TILE_ELEMENTS = 4096  # BLOCK_N × BLOCK_D of the embedding kernel: keeps one tile in registers on GPU


def interpreter_enabled() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_launchable(t: torch.Tensor, name: str) -> None:
    """Raise before launching on inputs the kernels do not handle."""
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if not t.is_cuda and not interpreter_enabled():
        raise RuntimeError(
            f"{name} is on {t.device}: Triton needs a CUDA tensor, or TRITON_INTERPRET=1 on CPU"
        )


def _offsets(counts: list[int], device: torch.device) -> torch.Tensor:
    if any(c < 1 for c in counts):
        raise ValueError(f"every question needs at least one row, got counts {counts}")
    off = [0]
    for c in counts:
        off.append(off[-1] + c)
    return torch.tensor(off, dtype=torch.int32, device=device)


@triton.jit
def _embedding_mbr_kernel(X, OUT, OFFSETS, stride_row, D, eps, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    q = tl.program_id(0)
    start = tl.load(OFFSETS + q)
    end = tl.load(OFFSETS + q + 1)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < D
    centroid = tl.zeros([BLOCK_D], dtype=tl.float32)
    for r0 in range(start, end, BLOCK_N):
        rows = r0 + tl.arange(0, BLOCK_N)
        row_ok = rows < end
        x = tl.load(
            X + rows[:, None] * stride_row + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0
        )
        x = x.to(tl.float32)
        inv = 1.0 / tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), eps)  # [BLOCK_N]
        centroid += tl.sum(x * inv[:, None], axis=0)
    centroid = centroid / (end - start).to(tl.float32)
    for r0 in range(start, end, BLOCK_N):
        rows = r0 + tl.arange(0, BLOCK_N)
        row_ok = rows < end
        x = tl.load(
            X + rows[:, None] * stride_row + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0.0
        )
        x = x.to(tl.float32)
        inv = 1.0 / tl.maximum(tl.sqrt(tl.sum(x * x, axis=1)), eps)
        tl.store(OUT + rows, tl.sum(x * centroid[None, :], axis=1) * inv, mask=row_ok)


def embedding_mbr_scores(
    embeddings: torch.Tensor, counts: list[int] | torch.Tensor, eps: float = 1e-12
) -> torch.Tensor:
    """Fused ragged embedding MBR: embeddings [sum(counts), d] → [sum(counts)] float32, one launch."""
    counts = [int(c) for c in counts]
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be [rows, d], got {tuple(embeddings.shape)}")
    if sum(counts) != embeddings.shape[0]:
        raise ValueError(f"counts sum to {sum(counts)} but embeddings has {embeddings.shape[0]} rows")
    d = embeddings.shape[1]
    if not 1 <= d <= MAX_EMBEDDING_DIM:
        raise ValueError(f"embedding dim {d} outside the supported 1..{MAX_EMBEDDING_DIM}")
    check_launchable(embeddings, "embeddings")
    out = torch.empty(embeddings.shape[0], dtype=torch.float32, device=embeddings.device)
    if not counts:
        return out
    x = embeddings if embeddings.stride(1) == 1 else embeddings.contiguous()
    offsets = _offsets(counts, x.device)
    block_d = triton.next_power_of_2(d)
    block_n = max(1, min(triton.next_power_of_2(max(counts)), MAX_TILE_ELEMENTS // block_d))
    _embedding_mbr_kernel[(len(counts),)](
        x, out, offsets, x.stride(0), d, eps, BLOCK_N=block_n, BLOCK_D=block_d
    )
    return out


@triton.jit
def _bertscore_precision_kernel(
    X, VALID, WEIGHT, WSUM, ROW_START, ROW_END, OUT,
    L, D, stride_xr, stride_xl, stride_vr, stride_wr, stride_out, eps,
    BLOCK_S: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0)
    jj = tl.program_id(1)
    j = tl.load(ROW_START + i) + jj
    if j < tl.load(ROW_END + i):
        acc = tl.zeros([BLOCK_S], dtype=tl.float32)
        for s0 in range(0, L, BLOCK_S):
            offs_s = s0 + tl.arange(0, BLOCK_S)
            s_ok = offs_s < L
            row_max = tl.full([BLOCK_S], float("-inf"), tl.float32)
            for t0 in range(0, L, BLOCK_T):
                offs_t = t0 + tl.arange(0, BLOCK_T)
                t_ok = offs_t < L
                dot = tl.zeros([BLOCK_S, BLOCK_T], dtype=tl.float32)
                sq_s = tl.zeros([BLOCK_S], dtype=tl.float32)
                sq_t = tl.zeros([BLOCK_T], dtype=tl.float32)
                for d0 in range(0, D, BLOCK_D):
                    offs_d = d0 + tl.arange(0, BLOCK_D)
                    d_ok = offs_d < D
                    a = tl.load(
                        X + i * stride_xr + offs_s[:, None] * stride_xl + offs_d[None, :],
                        mask=s_ok[:, None] & d_ok[None, :],
                        other=0.0,
                    ).to(tl.float32)
                    b = tl.load(
                        X + j * stride_xr + offs_t[:, None] * stride_xl + offs_d[None, :],
                        mask=t_ok[:, None] & d_ok[None, :],
                        other=0.0,
                    ).to(tl.float32)
                    dot += tl.dot(a, tl.trans(b), input_precision="ieee")
                    sq_s += tl.sum(a * a, axis=1)
                    sq_t += tl.sum(b * b, axis=1)
                inv_s = 1.0 / tl.maximum(tl.sqrt(sq_s), eps)
                inv_t = 1.0 / tl.maximum(tl.sqrt(sq_t), eps)
                sim = dot * inv_s[:, None] * inv_t[None, :]
                valid_t = tl.load(VALID + j * stride_vr + offs_t, mask=t_ok, other=0) != 0
                sim = tl.where(valid_t[None, :], sim, float("-inf"))
                row_max = tl.maximum(row_max, tl.max(sim, axis=1))
            row_max = tl.where(row_max == float("-inf"), 0.0, row_max)  # j has no valid token
            w = tl.load(WEIGHT + i * stride_wr + offs_s, mask=s_ok, other=0.0)
            acc += w * row_max
        wsum = tl.load(WSUM + i)
        precision = tl.where(wsum > 0, tl.sum(acc, axis=0) / tl.where(wsum > 0, wsum, 1.0), 0.0)
        tl.store(OUT + i * stride_out + jj, precision)


def bertscore_precision_matrix(
    token_emb: torch.Tensor, valid: torch.Tensor, weight: torch.Tensor, counts: list[int], eps: float = 1e-12
) -> torch.Tensor:
    """M[i, jj] = precision of output i against output j = row_start(i) + jj, for a ragged batch.

    token_emb: [R, L, d] (R = sum(counts)); valid: [R, L] bool (padding False); weight: [R, L] fp32 (idf, 0 on
    padding). Returns [R, max(counts)] float32; entries past a question's own N are left as zeros.
    """
    R, L, d = token_emb.shape
    if valid.shape != (R, L) or weight.shape != (R, L):
        raise ValueError(
            f"mask/idf must be [R, L] = {(R, L)}, got {tuple(valid.shape)} and {tuple(weight.shape)}"
        )
    if sum(counts) != R:
        raise ValueError(f"counts sum to {sum(counts)} but token_emb has {R} rows")
    check_launchable(token_emb, "token_emb")
    n_max = max(counts)
    out = torch.zeros(R, n_max, dtype=torch.float32, device=token_emb.device)
    x = token_emb if token_emb.stride(2) == 1 else token_emb.contiguous()
    valid_i8 = valid.to(torch.int8).contiguous()
    weight = (weight.float() * valid).contiguous()
    wsum = weight.sum(dim=1)
    offsets = _offsets(counts, x.device).long()
    q_of_row = torch.repeat_interleave(
        torch.arange(len(counts), device=x.device), torch.tensor(counts, device=x.device)
    )
    row_start = offsets[:-1][q_of_row].to(torch.int32)
    row_end = offsets[1:][q_of_row].to(torch.int32)
    block_d = min(64, max(16, triton.next_power_of_2(d)))
    block_l = 32 if L > 16 else 16
    _bertscore_precision_kernel[(R, n_max)](
        x, valid_i8, weight, wsum, row_start, row_end, out,
        L, d, x.stride(0), x.stride(1), valid_i8.stride(0), weight.stride(0), out.stride(0), eps,
        BLOCK_S=block_l, BLOCK_T=block_l, BLOCK_D=block_d,
    )  # fmt: skip
    return out
