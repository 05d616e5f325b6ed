"""Host memory for compute processes: keep freed memory for reuse instead of handing it back to the kernel.

XLA:CPU allocates an executable's temporaries as one block per call (412 MB for the small train step of
``benchmarks/train_step.py``) from the thread that runs it. glibc serves a block that large from ``mmap``
whenever the caller's arena is a thread arena (those grow only to 64 MB), and ``free`` unmaps it, so every
step faulted 105 000 fresh 4 KiB pages back in (430 MB, counted with ``getrusage``): ~20 % of that step's time
on this 2-core machine. torch's CPU allocator goes through the same ``malloc``.

:func:`reuse_freed_memory` sets three ``mallopt`` parameters: one arena (every thread allocates from the main
heap, which can grow past 64 MB), no ``mmap`` below 1 GiB, and no trimming of the heap's top. The second step
of a program then reuses the first step's pages: no page faults. The cost is that the process keeps its peak
heap (a training or evaluation process holds it anyway). ``dreamjax train / demo / eval / generate / forward``
call it before JAX starts; ``convert`` and ``export`` do not (they stream tensors and return memory on
purpose). ``DREAMJAX_MALLOC=default`` turns it off. glibc on Linux only; elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc <malloc.h>
_log = logging.getLogger(__name__)
_done = False


def reuse_freed_memory() -> bool:
    """Tune glibc malloc for a long-running compute process (see the module docstring). Returns whether it
    did; idempotent. Call it before JAX creates its CPU client (its threads pick an arena at their first
    allocation)."""
    global _done
    if _done:
        return True
    if os.environ.get("DREAMJAX_MALLOC", "") == "default" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    settings = {"M_ARENA_MAX": (M_ARENA_MAX, 1), "M_MMAP_THRESHOLD": (M_MMAP_THRESHOLD, 1 << 30),
                "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, (1 << 31) - 1)}
    refused = [name for name, (param, value) in settings.items() if mallopt(param, value) != 1]
    if refused:
        _log.warning("mallopt refused %s; freed host memory may still go back to the kernel", ", ".join(refused))
    _done = not refused
    return _done
