"""Fixtures the metrics tests share (the project-wide ones are in tests/conftest.py)."""

from __future__ import annotations

import pytest

from histostain.runtime.device import DeviceManager


@pytest.fixture(scope="session")
def cpu() -> DeviceManager:
    """fp32 on the CPU: the reference device of every FID number."""
    return DeviceManager.create("cpu", "fp32")
