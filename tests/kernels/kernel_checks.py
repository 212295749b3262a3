"""Comparison helpers shared by the kernel tests and their spawned workers."""

from __future__ import annotations

import torch


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float, what: str = ""
) -> None:
    """allclose that reports NaN/inf, the worst index and how many elements are off."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    bad_values = ~torch.isfinite(actual) & torch.isfinite(expected)
    assert not bad_values.any(), f"{what}: NaN/inf at {bad_values.nonzero()[:5].tolist()}"
    err = (actual - expected).abs()
    off = err > atol + rtol * expected.abs()
    if off.any():
        worst = int(err.argmax())
        idx = list(torch.unravel_index(torch.tensor(worst), err.shape)) if err.dim() else []
        raise AssertionError(
            f"{what}: {int(off.sum())}/{err.numel()} elements off (atol={atol}, rtol={rtol}); worst at "
            f"{[int(i) for i in idx]}: {actual.reshape(-1)[worst].item()} vs {expected.reshape(-1)[worst].item()}, "
            f"first bad indices {off.nonzero()[:5].tolist()}"
        )


def assert_close_relative(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, what: str = ""
) -> None:
    """Relative agreement at the tensor's scale: |a − e| <= rtol·|e| + rtol·max|e| elementwise."""
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    assert_close(actual, expected, atol=rtol * max(scale, 1e-30), rtol=rtol, what=what)
