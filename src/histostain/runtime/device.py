"""One device manager for every service: which device, which precision, and the contexts that go with them.

Decisions are made from a :class:`Capabilities` record so that the CUDA and MPS branches can be unit-tested
on a CPU-only machine by injecting a fake probe. Policy for ``precision="auto"``:

* CUDA: bf16 autocast when the GPU supports it (compute capability >= 8), else fp16 (with a GradScaler for
  training);
* MPS: fp32 (MPS autocast coverage is still partial; fp32 is the safe choice);
* CPU: fp32, unless the CPU has native bf16 instructions (AVX512-BF16 / AMX-BF16 / ARM BF16). Emulated bf16
  autocast on a CPU without them is tens of times slower than fp32, so ``auto`` never picks it there. A command
  whose answer must not depend on the precision asks with ``exact_cpu=True``: ``auto`` then keeps fp32 on every
  CPU (``segment``: bf16 autocast moves nuclei, single tiles down to PQ 0.89 against fp32; docs/segment-precision.md).
"""

from __future__ import annotations

import contextlib
import logging
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from histostain.errors import DeviceError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # x86 /proc/cpuinfo flags
_ARM_BF16_FLAGS = ("bf16",)  # aarch64 /proc/cpuinfo "Features"


@dataclass(frozen=True)
class Capabilities:
    """What the machine offers; produced by :func:`probe_capabilities` or built by hand in tests."""

    cuda_available: bool = False
    cuda_device_count: int = 0
    cuda_bf16: tuple[bool, ...] = ()  # per CUDA device
    cuda_names: tuple[str, ...] = ()
    mps_available: bool = False
    cpu_bf16: bool = False
    cpu_name: str = ""


def cpu_has_native_bf16(cpuinfo_text: str | None = None) -> bool:
    """True when the CPU executes bf16 natively (x86 AVX512-BF16/AMX-BF16, ARM BF16)."""
    if cpuinfo_text is None:
        try:
            cpuinfo_text = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            # macOS / Windows: Apple silicon has bf16; x86 Macs and unknown systems are treated as lacking it.
            return platform.system() == "Darwin" and platform.machine() == "arm64"
    flags: set[str] = set()
    for line in cpuinfo_text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in {"flags", "features"}:
            flags.update(value.split())
    return any(flag in flags for flag in _CPU_BF16_FLAGS + _ARM_BF16_FLAGS)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_capabilities() -> Capabilities:
    """Ask torch and the OS what this machine can do (imports torch)."""
    import torch

    cuda = torch.cuda.is_available()
    count = torch.cuda.device_count() if cuda else 0
    bf16: list[bool] = []
    names: list[str] = []
    for index in range(count):
        major, _minor = torch.cuda.get_device_capability(index)
        bf16.append(major >= 8)
        names.append(torch.cuda.get_device_name(index))
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    return Capabilities(
        cuda_available=cuda,
        cuda_device_count=count,
        cuda_bf16=tuple(bf16),
        cuda_names=tuple(names),
        mps_available=mps,
        cpu_bf16=cpu_has_native_bf16(),
        cpu_name=_cpu_name(),
    )


@dataclass(frozen=True)
class DevicePlan:
    """The resolved choice, without torch objects, so it can be printed and tested anywhere."""

    device: str  # "cpu", "cuda:0", "mps"
    precision: str  # "fp32", "bf16", "fp16"
    device_reason: str
    precision_reason: str
    channels_last: bool
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def kind(self) -> str:
        return self.device.split(":", 1)[0]

    @property
    def autocast_enabled(self) -> bool:
        return self.precision != "fp32"

    @property
    def needs_grad_scaler(self) -> bool:
        return self.kind == "cuda" and self.precision == "fp16"


_CUDA_INDEX = re.compile(r"^cuda(?::(\d+))?$")


def plan_device(
    device: str = "auto", precision: str = "auto", caps: Capabilities | None = None, *, exact_cpu: bool = False
) -> DevicePlan:
    """Decide device and precision from a request and the machine's capabilities (pure function).

    ``exact_cpu``: ``auto`` resolves to fp32 on a CPU even when it has native bf16 (an explicit precision is still
    honoured; CUDA and MPS are unaffected)."""
    caps = caps if caps is not None else probe_capabilities()
    device = device.strip().lower()
    precision = precision.strip().lower()
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}", hint="use auto, fp32, bf16 or fp16")

    if device == "auto":
        if caps.cuda_available and caps.cuda_device_count > 0:
            chosen, why = "cuda:0", "auto: CUDA is available"
        elif caps.mps_available:
            chosen, why = "mps", "auto: Apple MPS is available"
        else:
            chosen, why = "cpu", "auto: no CUDA or MPS device found"
    elif device == "cpu":
        chosen, why = "cpu", "requested"
    elif device == "mps":
        if not caps.mps_available:
            raise DeviceError(
                "device 'mps' requested but Apple MPS is not available on this machine",
                hint="use --device cpu (or auto)",
            )
        chosen, why = "mps", "requested"
    else:
        match = _CUDA_INDEX.match(device)
        if match is None:
            raise DeviceError(f"unknown device {device!r}", hint="use auto, cpu, cuda, cuda:N or mps")
        if not caps.cuda_available or caps.cuda_device_count == 0:
            raise DeviceError(
                f"device {device!r} requested but CUDA is not available (no GPU or a CPU-only torch build)",
                hint="use --device cpu, or install a CUDA build of torch on a machine with an NVIDIA GPU",
            )
        index = int(match.group(1) or 0)
        if index >= caps.cuda_device_count:
            raise DeviceError(
                f"device {device!r} requested but only {caps.cuda_device_count} CUDA device(s) exist",
                hint=f"use cuda:0 .. cuda:{caps.cuda_device_count - 1}",
            )
        chosen, why = f"cuda:{index}", "requested"

    kind = chosen.split(":", 1)[0]
    warnings: list[str] = []
    if kind == "cuda":
        index = int(chosen.split(":", 1)[1])
        gpu_bf16 = index < len(caps.cuda_bf16) and caps.cuda_bf16[index]
        if precision == "auto":
            resolved, pwhy = (
                ("bf16", "auto: the GPU supports bf16")
                if gpu_bf16
                else (
                    "fp16",
                    "auto: the GPU lacks bf16, fp16 autocast (GradScaler when training)",
                )
            )
        else:
            resolved, pwhy = precision, "requested"
            if precision == "bf16" and not gpu_bf16:
                raise DeviceError(
                    f"bf16 requested but {chosen} does not support it (compute capability < 8.0)",
                    hint="use --precision fp16 or fp32",
                )
        channels_last = True
    elif kind == "mps":
        resolved, pwhy = (
            ("fp32", "auto: fp32 is the safe choice on MPS")
            if precision == "auto"
            else (
                precision,
                "requested",
            )
        )
        channels_last = False
    else:
        if precision == "auto":
            if caps.cpu_bf16 and exact_cpu:
                resolved, pwhy = "fp32", "auto: fp32 on CPU for this command, bf16 autocast would change its answer"
            elif caps.cpu_bf16:
                resolved, pwhy = "bf16", "auto: the CPU has native bf16 instructions"
            else:
                resolved, pwhy = "fp32", "auto: the CPU lacks native bf16, so autocast would be much slower"
        else:
            resolved, pwhy = precision, "requested"
            if precision != "fp32" and not caps.cpu_bf16:
                warnings.append(
                    f"{precision} on a CPU without native bf16/fp16 support is emulated and much slower than fp32"
                )
        channels_last = False
    return DevicePlan(
        device=chosen,
        precision=resolved,
        device_reason=why,
        precision_reason=pwhy,
        channels_last=channels_last,
        warnings=tuple(warnings),
    )


class DeviceManager:
    """Owns the torch device and mixed-precision policy; services receive one and never call ``.cuda()``."""

    def __init__(self, plan: DevicePlan, num_threads: int | None = None) -> None:
        import torch

        self.plan = plan
        self.device = torch.device(plan.device)
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        for message in plan.warnings:
            log.warning(message)

    @classmethod
    def create(
        cls,
        device: str = "auto",
        precision: str = "auto",
        num_threads: int | None = None,
        caps: Capabilities | None = None,
        *,
        exact_cpu: bool = False,
    ) -> DeviceManager:
        """Resolve a request (``--device``, ``--precision``) into a manager (``exact_cpu``: see :func:`plan_device`)."""
        return cls(plan_device(device, precision, caps, exact_cpu=exact_cpu), num_threads=num_threads)

    @property
    def precision(self) -> str:
        return self.plan.precision

    @property
    def amp_dtype(self) -> torch.dtype | None:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.plan.precision)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed-precision context for forward passes; a no-op context in fp32."""
        import torch

        if not self.plan.autocast_enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.plan.kind, dtype=self.amp_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is enabled only for CUDA fp16 (elsewhere a disabled, pass-through scaler)."""
        import torch

        return torch.amp.GradScaler("cuda" if self.plan.kind == "cuda" else "cpu", enabled=self.plan.needs_grad_scaler)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move a model to the device (and to channels_last memory where that is faster)."""
        import torch

        model = model.to(self.device)
        if self.plan.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """Move an input batch to the device, matching the model's memory format."""
        import torch

        tensor = tensor.to(self.device, non_blocking=self.plan.kind == "cuda")
        if self.plan.channels_last and tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        return tensor

    def empty_cache(self) -> None:
        import torch

        if self.plan.kind == "cuda":
            torch.cuda.empty_cache()
        elif self.plan.kind == "mps":
            torch.mps.empty_cache()

    def describe(self) -> str:
        return f"{self.plan.device} ({self.plan.precision}; {self.plan.device_reason}; {self.plan.precision_reason})"
