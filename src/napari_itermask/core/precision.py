"""Inference precisions and whether this machine can run them (no torch import at module level).

``fp32``: float32 everywhere, the paper's arithmetic. ``bf16``: the networks' weights and
activations in bfloat16 (8 bits of mantissa) on CPUs with bf16 dot-product instructions
(AVX-512 BF16 or AMX), or CUDA GPUs that support it; the loop's decisions (τ, the threshold,
the error maps) stay in float32. bf16 changes the reconstructions by ~1e-2, so a model runs in
bf16 only with a τ and threshold calibrated in bf16 (its card's ``calibrations``).

Model cards import this module, so it must stay free of torch at import time.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_PRECISION", "PRECISIONS", "bf16_supported", "cpu_flags", "usable_precision"]

PRECISIONS = ("fp32", "bf16")
DEFAULT_PRECISION = "fp32"

# CPU feature flags (Linux /proc/cpuinfo) whose instructions run bf16 dot products natively
_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The feature flags of the first CPU in ``cpuinfo`` (empty where it cannot be read)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def bf16_supported(device: str = "cpu", *, flags: set[str] | None = None) -> bool:
    """Whether ``device`` (a name or ``torch.device``) runs bf16 natively.

    CPU: one of the flags in ``_BF16_FLAGS`` (``flags`` overrides /proc/cpuinfo, for tests);
    without them torch emulates bf16, which is slower than float32, so the answer is False.
    CUDA: ``torch.cuda.is_bf16_supported()``. Anything else (MPS): False.
    """
    kind = getattr(device, "type", str(device)).split(":")[0]
    if kind == "cpu":
        return bool((cpu_flags() if flags is None else flags) & set(_BF16_FLAGS))
    if kind == "cuda":
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return False


def usable_precision(requested: str, device: str = "cpu", *,
                     flags: set[str] | None = None) -> tuple[str, str | None]:
    """(the precision to run, a one-line notice or None) for a ``requested`` precision.

    bf16 where the device has no native bf16 falls back to fp32 (emulated bf16 would be slower
    and no more accurate), with a notice that says so. An unknown name raises ValueError.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r} (one of {', '.join(PRECISIONS)})")
    if requested == "bf16" and not bf16_supported(device, flags=flags):
        kind = getattr(device, "type", str(device))
        return "fp32", (f"bf16 was asked for but this {kind} has no native bf16 instructions; "
                        "running in fp32")
    return requested, None
