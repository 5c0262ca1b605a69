"""Process-level settings: CPU inference tuning, the one pixel limit of every image decode, and the Prefect settings
flows run with (``PREFECT_DEFAULTS``).

``limit_image_pixels()``: the largest image (width × height) any stage decodes, ``LAIONET_MAX_IMAGE_PIXELS`` or 50 MP.
Every module that decodes with PIL calls it first (download, references, verify, OCR, inference batches, report
thumbnails): ``PIL.Image.MAX_IMAGE_PIXELS`` is set to it and PIL's ``DecompressionBombWarning`` (over the limit; PIL
itself only raises over twice it) becomes an error. img2dataset decodes with OpenCV in its own processes: the download
sets ``OPENCV_IO_MAX_IMAGE_PIXELS`` to the same number in their environment and checks each header first.

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
import warnings

MAX_IMAGE_PIXELS = 50_000_000

# The Prefect settings every entry point that runs flows starts with (`laionet run`, `python -m flows demo` = `make
# demo`; the tests' harness takes the server's): no analytics (SQLite lock noise), the library's log lines in Prefect's
# logs, time for the ephemeral API to start on a fresh database (15-20 s on 2 cores; Prefect's default is 20 s), and the
# server's task-run recorder writing the task runs' events in batches (every 2 s) instead of one transaction per
# event: on SQLite those writes collided with the client's own (a new task run, a slot request), the API answered
# "database is locked" (503) and the client waited ~2 s before each retry (benchmarks/bench_rerun.py: 6 retries and
# 14.5 s of flow runs in a cached demo run, against 1 and 4.0 s batched)
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "laionet",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "500",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "2",
}


def apply_prefect_defaults() -> None:
    """``PREFECT_DEFAULTS`` into this process's environment where not set already (a user's own value wins). Call it
    before Prefect is imported (its logging reads them then); an ephemeral API started later inherits them."""
    for name, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(name, value)


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


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 inference is ~2x fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cores() -> int:
    """The cores this process may run on (all of the machine's where the OS cannot say)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def tune_cpu() -> None:
    """All cores for torch; large freed blocks kept by the allocator (see the module docstring). Idempotent."""
    global _tuned
    import torch

    torch.set_num_threads(cores())
    if not _tuned:
        keep_freed_memory()
        _tuned = True


def max_image_pixels() -> int:
    """The pixel limit: ``LAIONET_MAX_IMAGE_PIXELS`` from the environment, else ``MAX_IMAGE_PIXELS`` (50 MP)."""
    text = os.environ.get("LAIONET_MAX_IMAGE_PIXELS", "").strip()
    return int(text) if text else MAX_IMAGE_PIXELS


def limit_image_pixels(limit: int | None = None) -> int:
    """PIL refuses to open an image of more than ``limit`` pixels (default ``max_image_pixels()``): sets
    ``PIL.Image.MAX_IMAGE_PIXELS`` and turns PIL's ``DecompressionBombWarning`` into an error (callers catch both it and
    ``DecompressionBombError`` with the decoding errors they count). Cheap; call it before decoding. Returns the limit.
    """
    from PIL import Image

    limit = limit or max_image_pixels()
    Image.MAX_IMAGE_PIXELS = limit
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)
    return limit
