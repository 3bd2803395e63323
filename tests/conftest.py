"""Fixtures shared by several test modules."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_thread_float32():
    """One torch thread (the networks are tiny, and so are the torchrun workers' shares) and float32
    defaults, whatever another test module set (test_theory sets float64 when it is imported)."""
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
