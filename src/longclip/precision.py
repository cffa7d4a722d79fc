"""Which floating-point type to run inference in, chosen from what the hardware computes natively.

``dtype="auto"`` (the default of ``longclip.load`` and of every command that embeds) picks:

- bfloat16 on CUDA devices that support it (compute capability 8.0 and later), float16 on older CUDA devices;
- bfloat16 on CPUs that compute it natively — AVX512-BF16 or AMX instructions, read from the processor itself, never
  guessed from its vendor or model name;
- float32 everywhere else (on a CPU without those instructions bf16 is emulated, and slower than float32).

The environment variable ``LONGCLIP_AUTO_DTYPE`` (float32, float16 or bfloat16) overrides the automatic choice, for
whole runs and their subprocesses (the test suite pins it to float32, as its parity checks compare with float32
references). Training is not affected: it keeps float32 master weights and uses autocast (``--precision``).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DTYPE_NAMES = ("auto", "float32", "float16", "bfloat16")
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of the native bf16 instructions


@dataclass(frozen=True)
class PrecisionChoice:
    """A chosen dtype and the reason for it (``longclip info`` and the benchmarks print both)."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


@functools.lru_cache(maxsize=1)
def cpu_bf16_instructions() -> tuple[str, ...]:
    """The native bf16 instruction sets this CPU reports (empty if none, or if it cannot be told)."""
    found = []
    # torch asks the processor (cpuid) itself; these helpers are private, so read /proc/cpuinfo where they are gone.
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    for flag, probe in probes.items():
        check = getattr(torch.cpu, probe, None)
        if check is not None:
            try:
                if check():
                    found.append(flag)
                continue
            except RuntimeError:
                pass
        if flag in _cpuinfo_flags():
            found.append(flag)
    return tuple(found)


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def choose_dtype(device: str | torch.device = "cpu") -> PrecisionChoice:
    """The dtype ``"auto"`` means on ``device``, with the reason."""
    forced = os.environ.get("LONGCLIP_AUTO_DTYPE", "").strip()
    if forced:
        if forced not in DTYPE_NAMES[1:]:
            raise ValueError(f"LONGCLIP_AUTO_DTYPE must be float32, float16 or bfloat16, got {forced!r}")
        return PrecisionChoice(getattr(torch, forced), f"set by LONGCLIP_AUTO_DTYPE={forced}")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return PrecisionChoice(torch.float32, "CUDA is not available")
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice(torch.bfloat16, f"{name} computes bfloat16 natively")
        return PrecisionChoice(torch.float16, f"{name} has no native bfloat16; float16 instead")
    if device.type == "cpu":
        flags = cpu_bf16_instructions()
        if flags:
            return PrecisionChoice(torch.bfloat16, f"the CPU computes bfloat16 natively ({', '.join(flags)})")
        return PrecisionChoice(torch.float32, "the CPU has no native bfloat16 (no AVX512-BF16 or AMX): float32")
    return PrecisionChoice(torch.float32, f"no automatic choice for {device.type} devices: float32")


def resolve_dtype(dtype: torch.dtype | str | None, device: str | torch.device = "cpu") -> torch.dtype:
    """The weight dtype to load in: ``dtype`` itself, or for ``"auto"`` / None the hardware's choice.

    Raises:
        ValueError: ``dtype`` is a name other than auto, float32, float16 or bfloat16.
    """
    if dtype is None or dtype == "auto":
        choice = choose_dtype(device)
        logger.info("dtype auto -> %s (%s)", choice.name, choice.reason)
        return choice.dtype
    if isinstance(dtype, str):
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
        return getattr(torch, dtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype or one of {', '.join(DTYPE_NAMES)}, got {dtype}")
    return dtype


def emulated_autocast_warning(precision: str, device: str | torch.device) -> str | None:
    """A warning for training with ``--precision bf16`` on a CPU that has no native bfloat16, else None.

    There autocast's bf16 matrix products are emulated: a ViT-B/16-sized Long-CLIP training step ran about 30x slower
    than float32 on an AVX2 processor (``benchmarks/train_throughput.py``, figures in ``benchmarks/RESULTS.md``).
    """
    if precision != "bf16" or torch.device(device).type != "cpu" or cpu_bf16_instructions():
        return None
    return (
        "--precision bf16 on this CPU is emulated (no AVX512-BF16 or AMX): a training step is far slower than in "
        "fp32 (about 30x for a ViT-B/16 step on an AVX2 processor, benchmarks/RESULTS.md); use --precision fp32 here"
    )
