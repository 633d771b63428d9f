"""Give freed weight-sized blocks back to the system: glibc's mmap threshold, fixed.

glibc serves an allocation above its mmap threshold with its own mapping, returned to the system
on free. The threshold starts at 128 KiB, but each time such a block is freed glibc raises it to
that block's size (up to 32 MiB), so later weight-sized allocations come from the heap instead,
where freed blocks stay resident between long-lived small ones. Running a model on the CPU with
fp8 or GGUF storage casts every weight up before each use and frees the copy after (diffusers'
layerwise casting, GGUF dequantization), so the heap grows with each pass. Measured on the full
SDXL architecture, one process per row (`python -m webui.bench_weights`): peak RSS with glibc's
default 10,797 MiB (fp16 storage) and 8,613 MiB (fp8), 0.80x; with the threshold fixed at 64 KiB
8,046 and 4,820 MiB, 0.60x.

`return_freed_blocks()` fixes the threshold (mallopt; the same as glibc's MALLOC_MMAP_THRESHOLD_
variable) when the model runs on the CPU of a glibc system. A threshold the user set in the
environment is kept. Other allocators and systems are left as they are. There is no library call
for this in torch or diffusers; ctypes is the only way short of re-executing the process.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
THRESHOLD_BYTES = 64 * 1024  # the value the bench measured; glibc's own starting value is 128 KiB
ENVIRONMENT = "MALLOC_MMAP_THRESHOLD_"


def return_freed_blocks(threshold: int = THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at `threshold` bytes; True when it was set now.

    False (and nothing changed) off Linux, without glibc, or when MALLOC_MMAP_THRESHOLD_ is set."""
    if not sys.platform.startswith("linux") or os.environ.get(ENVIRONMENT):
        return False
    libc = _glibc()
    if libc is None:
        return False
    if libc.mallopt(M_MMAP_THRESHOLD, threshold) != 1:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused %d", threshold)
        return False
    log.debug("glibc mmap threshold fixed at %d bytes: freed weight copies return to the system", threshold)
    return True


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it (musl, for one, has no mallopt threshold)
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
