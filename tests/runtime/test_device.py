"""DeviceManager decisions: CUDA/MPS branches through injected capabilities, the CPU path for real."""

from __future__ import annotations

import pytest
import torch

from histostain.errors import DeviceError
from histostain.runtime.device import Capabilities, DeviceManager, cpu_has_native_bf16, plan_device, probe_capabilities

CPU_ONLY = Capabilities(cpu_bf16=False)
CPU_BF16 = Capabilities(cpu_bf16=True)
AMPERE = Capabilities(cuda_available=True, cuda_device_count=2, cuda_bf16=(True, True), cuda_names=("A100", "A100"))
TURING = Capabilities(cuda_available=True, cuda_device_count=1, cuda_bf16=(False,), cuda_names=("T4",))
APPLE = Capabilities(mps_available=True, cpu_bf16=True)


def test_cpuinfo_flags_decide_native_bf16() -> None:
    assert not cpu_has_native_bf16("processor: 0\nflags\t: fpu sse avx2 avx512f\n")
    assert cpu_has_native_bf16("processor: 0\nflags\t: fpu avx512f avx512_bf16\n")
    assert cpu_has_native_bf16("flags : amx_tile amx_bf16 amx_int8\n")
    assert cpu_has_native_bf16("Features\t: fp asimd bf16 i8mm\n")  # aarch64
    assert not cpu_has_native_bf16("Features\t: fp asimd\n")
    # a flag name that merely contains the substring does not count
    assert not cpu_has_native_bf16("flags : avx512_bf16x\n")


@pytest.mark.parametrize(
    ("caps", "device", "precision", "autocast"),
    [
        (CPU_ONLY, "cpu", "fp32", False),
        (CPU_BF16, "cpu", "bf16", True),
        (AMPERE, "cuda:0", "bf16", True),
        (TURING, "cuda:0", "fp16", True),
        (APPLE, "mps", "fp32", False),
    ],
)
def test_auto_resolution(caps: Capabilities, device: str, precision: str, autocast: bool) -> None:
    plan = plan_device("auto", "auto", caps)
    assert (plan.device, plan.precision, plan.autocast_enabled) == (device, precision, autocast)
    assert plan.device_reason.startswith("auto")
    assert plan.precision_reason.startswith("auto")


def test_auto_never_enables_autocast_on_cpu_without_native_bf16() -> None:
    # even when a GPU machine's CPU is asked for explicitly
    for caps in (CPU_ONLY, AMPERE, TURING):
        plan = plan_device("cpu", "auto", caps)
        assert plan.precision == "fp32"
        assert not plan.autocast_enabled


def test_grad_scaler_only_for_cuda_fp16() -> None:
    assert plan_device("auto", "auto", TURING).needs_grad_scaler
    assert plan_device("cuda", "fp16", AMPERE).needs_grad_scaler
    assert not plan_device("auto", "auto", AMPERE).needs_grad_scaler  # bf16 needs no scaler
    assert not plan_device("cpu", "bf16", CPU_BF16).needs_grad_scaler
    assert not plan_device("mps", "fp16", APPLE).needs_grad_scaler


def test_explicit_cuda_index_and_channels_last() -> None:
    plan = plan_device("cuda:1", "fp32", AMPERE)
    assert plan.device == "cuda:1" and plan.precision == "fp32" and not plan.autocast_enabled
    assert plan.channels_last
    assert not plan_device("cpu", "auto", CPU_ONLY).channels_last


@pytest.mark.parametrize(
    ("caps", "device", "precision", "fragment"),
    [
        (CPU_ONLY, "cuda", "auto", "CUDA is not available"),
        (CPU_ONLY, "cuda:0", "auto", "CUDA is not available"),
        (AMPERE, "cuda:2", "auto", "only 2 CUDA device"),
        (CPU_ONLY, "mps", "auto", "MPS is not available"),
        (TURING, "cuda", "bf16", "does not support it"),
        (CPU_ONLY, "gpu", "auto", "unknown device"),
        (CPU_ONLY, "cpu", "int8", "unknown precision"),
    ],
)
def test_unavailable_requests_are_device_errors_with_hints(
    caps: Capabilities, device: str, precision: str, fragment: str
) -> None:
    with pytest.raises(DeviceError) as info:
        plan_device(device, precision, caps)
    assert fragment in info.value.message
    assert info.value.hint  # every device error tells the user what to do instead
    assert "\n" not in info.value.one_line()


def test_explicit_low_precision_on_plain_cpu_warns() -> None:
    plan = plan_device("cpu", "bf16", CPU_ONLY)
    assert plan.precision == "bf16"
    assert plan.warnings and "slower" in plan.warnings[0]
    assert plan_device("cpu", "bf16", CPU_BF16).warnings == ()


def _independent_native_bf16() -> bool | None:
    """This machine's native bf16, read independently of histostain: the kernel's CPU flags via ``grep``-like
    word matching (x86 ``avx512_bf16``/``amx_bf16``, aarch64 ``bf16``); None where /proc/cpuinfo is absent."""
    import re
    from pathlib import Path

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return None
    text = cpuinfo.read_text(errors="replace")
    return re.search(r"^(flags|Features)\s*:.*\b(avx512_bf16|amx_bf16|bf16)\b", text, re.M | re.I) is not None


def test_real_probe_matches_the_machine_and_auto_picks_bf16_only_on_native_bf16() -> None:
    caps = probe_capabilities()
    expected_bf16 = _independent_native_bf16()
    if expected_bf16 is None:
        pytest.skip("no /proc/cpuinfo on this system")
    assert caps.cpu_bf16 is expected_bf16
    assert caps.cuda_device_count == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
    plan = plan_device("auto", "auto", caps)
    if not caps.cuda_available and not caps.mps_available:
        assert plan.device == "cpu"
        assert plan.precision == ("bf16" if expected_bf16 else "fp32")


def test_cpu_manager_runs_a_model_in_fp32() -> None:
    manager = DeviceManager.create("cpu", "fp32", caps=CPU_ONLY)
    assert manager.device == torch.device("cpu")
    assert manager.amp_dtype is None
    model = manager.prepare_model(torch.nn.Conv2d(3, 4, 3))
    batch = manager.to_device(torch.rand(2, 3, 8, 8))
    with manager.autocast():
        out = model(batch)
    assert out.dtype == torch.float32 and out.shape == (2, 4, 6, 6)
    scaler = manager.grad_scaler()
    assert not scaler.is_enabled()
    loss = out.sum()
    assert scaler.scale(loss) is loss  # a disabled scaler passes the loss through


def test_cpu_manager_bf16_autocast_really_casts() -> None:
    manager = DeviceManager.create("cpu", "bf16", caps=CPU_BF16)
    with manager.autocast():
        out = torch.nn.functional.linear(torch.rand(2, 4), torch.rand(3, 4))
    assert out.dtype == torch.bfloat16


def test_num_threads_is_applied() -> None:
    before = torch.get_num_threads()
    try:
        DeviceManager.create("cpu", "fp32", num_threads=1, caps=CPU_ONLY)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
