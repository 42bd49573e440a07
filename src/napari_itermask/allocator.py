"""Process allocator settings that stop glibc's mmap/munmap churn on large tensors.

At the batch sizes the networks run with, each activation is tens of MiB. glibc serves blocks
above its mmap threshold with a fresh ``mmap`` and returns them with ``munmap``, so every
forward pass maps, faults in and unmaps the same memory again: on the 2-core CPUs this project
is measured on, a third or more of the run was kernel time spent on page faults
(``docs/performance.md``). Keeping large blocks on the heap (no mmap) and never trimming it
makes the second and later batches reuse pages that are already resident.

``tune()`` is called once by each entry point (CLI, widget worker, training); it changes nothing
where glibc is not the C library (macOS, Windows, musl) and says so in its return value.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD_BYTES = 1 << 30  # keep up to 1 GiB of freed heap for reuse

ENV_OFF = "ITERMASK_NO_ALLOCATOR_TUNING"
_state: str | None = None
_libc = None  # the loaded C library (False where there is none to load)


def _glibc():
    """The process's C library on Linux, loaded once; None elsewhere or when it cannot load."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            except OSError:
                pass
    return _libc or None


def tune() -> str:
    """Apply the settings once per process. Returns ``"tuned"``, ``"disabled"`` (environment
    variable ``ITERMASK_NO_ALLOCATOR_TUNING`` set), ``"external"`` (another allocator such as
    tcmalloc or jemalloc is preloaded) or ``"unsupported"`` (no glibc ``mallopt``)."""
    global _state
    if _state is not None:
        return _state
    if os.environ.get(ENV_OFF):
        _state = "disabled"
    elif any(name in os.environ.get("LD_PRELOAD", "") for name in ("tcmalloc", "jemalloc")):
        _state = "external"
    elif not sys.platform.startswith("linux"):
        _state = "unsupported"
    else:
        mallopt = getattr(_glibc(), "mallopt", None)
        if mallopt is None:
            _state = "unsupported"
        else:
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            mallopt.restype = ctypes.c_int
            ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD,
                                                         _TRIM_THRESHOLD_BYTES) == 1
            _state = "tuned" if ok else "unsupported"
    return _state


def trim() -> None:
    """Give freed heap back to the system (glibc ``malloc_trim``). ``tune`` keeps freed heap
    for reuse *within* a run (up to 1 GiB, so batches do not fault pages in again); between the
    cases of a cohort that reserve would only grow with the largest case so far. Where glibc's
    ``malloc_trim`` is not there (macOS, musl) nothing is done."""
    malloc_trim = getattr(_glibc(), "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim.argtypes = [ctypes.c_size_t]
        malloc_trim.restype = ctypes.c_int
        malloc_trim(0)
