"""Kernel tests run on CPU: Triton kernels in interpreter mode, multi-process tests on gloo.

TRITON_INTERPRET must be set before triton compiles (decorates) a kernel; the Makefile sets it too.
This folder goes on sys.path so that spawned worker processes can import ``kernel_workers`` by name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """The kernel tests are tiny; one thread avoids oversubscribing a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
