"""Process-level settings for CPU inference.

``tune_cpu()``: torch uses every core this process may run on, and glibc's allocator keeps large freed blocks
instead of returning them to the OS. By default glibc serves every block above 128 KiB-32 MiB (a dynamic threshold)
with its own mmap and unmaps it on free, so each layer's activation buffer of a batched forward pass is mapped,
zero-filled page by page by the kernel, and unmapped again: on this project's 2-core machine EfficientNet-Lite0 spent
as much time in the kernel as in user space, at 27 images/s; with the thresholds raised it ran at 85-91 images/s
(``benchmarks/bench_inference.py``). The price: the process keeps its peak heap instead of shrinking after it.
"""

from __future__ import annotations

import ctypes
import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_tuned = False


def keep_freed_memory(threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap and trim thresholds to ``threshold`` bytes (no-op elsewhere); True when applied."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(threshold)) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(threshold)) == 1
        ok &= libc.mallopt(_M_TOP_PAD, ctypes.c_int(1 << 28)) == 1
        return bool(ok)
    except (OSError, AttributeError):  # not glibc
        return False


def tune_cpu() -> None:
    """All cores for torch; large freed blocks kept by the allocator (see the module docstring). Idempotent."""
    global _tuned
    import torch

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    if not _tuned:
        keep_freed_memory()
        _tuned = True
