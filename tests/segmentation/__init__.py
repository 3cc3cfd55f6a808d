"""Tests of histostain.segmentation (HoVer-Net network, weights loading, targets, losses)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=False)
def single_thread() -> Iterator[None]:
    """Run torch single-threaded: these tensors are tiny, and on a shared, loaded machine OpenMP's spinning
    threads make tiny forwards 10-50x slower and erratic. The previous setting is restored afterwards."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
