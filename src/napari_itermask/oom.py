"""Out of memory on the device: the batch that failed runs again in halves, and someone is told.

The shrink loop sends up to ``batch_size`` slices through a network at once. On a GPU that is
already busy (another program, a large scan) one such pass can run out of memory; stopping the
whole run then throws away minutes of work. ``split_on_oom(bundle, limit)`` gives a bundle whose
networks run a batch that ran out of memory again in pieces of half the size (down to one
slice), and keep that smaller size for the rest of the run; ``limit.report(line)`` is told once
per reduction (the command line prints it, the widget shows it as a notification).

Each slice's reconstruction does not depend on which other slices share its batch (the noise is
drawn per slice, the networks are in eval mode), so the result equals that of a run that never
ran out of memory (to float rounding; the tests compare labels exactly).

No Qt, no napari: used by ``cohort.segment_and_write`` (every command-line run) and by the
widget's runner.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch

__all__ = ["BatchLimit", "OutOfMemory", "RetryingBundle", "SplitOnOOM", "is_out_of_memory",
           "split_on_oom"]

_OOM_TYPES = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                               getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
_OOM_TEXT = ("out of memory", "can't allocate memory")  # CUDA/MPS; the CPU allocator


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device running out of memory (CUDA, MPS or the CPU allocator)."""
    if _OOM_TYPES and isinstance(exc, _OOM_TYPES):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXT)


class OutOfMemory(MemoryError):
    """Out of memory even with one slice per pass: nothing smaller to try."""


class BatchLimit:
    """The largest batch a run's networks are given, shared by both networks of a run;
    ``report(line)`` is called from the thread that ran out of memory."""

    def __init__(self, batch_size: int, report: Callable[[str], None] | None = None):
        self.size = max(1, int(batch_size))
        self.start = self.size
        self.report = report
        self.reductions: list[tuple[int, int, str]] = []  # (from, to, device)
        self._lock = threading.Lock()

    @property
    def reduced(self) -> bool:
        return bool(self.reductions)

    def halve(self, tried: int, device: str) -> int:
        """After a batch of ``tried`` slices ran out of memory: the new size (half of it)."""
        with self._lock:
            if tried <= self.size:
                self.size = max(1, tried // 2)
                self.reductions.append((tried, self.size, device))
                line = (f"out of memory on {device} with {tried} slice(s) per pass: "
                        f"retrying with {self.size} (the result is the same, only slower)")
            else:  # another net already lowered it: no second message
                line = None
            size = self.size
        if line and self.report is not None:
            self.report(line)
        return size

    def record(self) -> dict:
        """For the sidecar: the batch sizes tried and the one the run finished with."""
        return {"batch_size_asked": self.start, "batch_size_used": self.size,
                "reductions": [{"from": a, "to": b, "device": d} for a, b, d in self.reductions]}


def _free(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        try:
            torch.mps.empty_cache()
        except Exception:  # pragma: no cover - older torch
            pass


class SplitOnOOM(torch.nn.Module):
    """A network whose batch runs again in pieces of half the size when it runs out of memory.

    The wrapped network is a submodule (its parameters are this module's), so code that asks a
    network for its device or puts it in eval mode sees the real one."""

    def __init__(self, net: torch.nn.Module, limit: BatchLimit):
        super().__init__()
        self.net = net
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = int(x.shape[0])
        size = min(n, self.limit.size)
        while True:
            try:
                if size >= n:
                    return self.net(x)
                return torch.cat([self.net(x[i:i + size]) for i in range(0, n, size)])
            except Exception as exc:  # noqa: BLE001 - only out of memory is retried
                if not is_out_of_memory(exc):
                    raise
                device = x.device
                _free(device)
                if size <= 1:
                    raise OutOfMemory(f"out of memory on {device} even with one slice per "
                                      "pass; free the device or use --device cpu") from None
                size = self.limit.halve(size, str(device))


class RetryingBundle:
    """A model bundle whose networks retry a batch that runs out of memory in halves; every
    other attribute (card, path, name, weights) is the wrapped bundle's, which is not changed
    (it may be cached and shared by other runs).

    The networks a run is given come from ``bundle.nets(precision)`` (the inference copies),
    or, for a bundle without that method, ``bundle.first`` and ``bundle.masked``; both ways
    are wrapped in ``SplitOnOOM`` with this bundle's ``oom_limit``."""

    def __init__(self, bundle, limit: BatchLimit):
        self._bundle = bundle
        self.oom_limit = limit

    def __getattr__(self, name):
        if name == "first" or name == "masked":
            net = getattr(self._bundle, name)
            return net if hasattr(self._bundle, "nets") else SplitOnOOM(net, self.oom_limit)
        return getattr(self._bundle, name)

    def nets(self, *args, **kwargs):
        return tuple(SplitOnOOM(net, self.oom_limit)
                     for net in self._bundle.nets(*args, **kwargs))

    def to(self, device):
        self._bundle.to(device)
        return self

    def __repr__(self) -> str:
        return f"RetryingBundle({self._bundle!r}, batch limit {self.oom_limit.size})"


def split_on_oom(bundle, limit: BatchLimit):
    """``bundle`` with networks that retry in smaller batches on out of memory
    (``RetryingBundle``); the bundle itself is left as it is."""
    if isinstance(bundle, RetryingBundle):
        return bundle
    return RetryingBundle(bundle, limit)
