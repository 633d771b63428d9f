"""Freed weight-sized blocks go back to the system on the CPU (webui/model_manager/host_allocator.py).

The pattern that grew the heap: a large block allocated and freed around long-lived small ones, as
layerwise fp8 casting does for every weight on each pass. Each case runs in a fresh interpreter
with glibc's own malloc, so the allocator starts in its default state.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT

PATTERN = r'''
import ctypes, sys
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "fixed":
    from webui.model_manager.host_allocator import return_freed_blocks
    assert return_freed_blocks()

def rss_mib():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024

first = libc.malloc(8 << 20)  # freeing an 8 MiB block raises glibc's dynamic threshold past 4 MiB
ctypes.memset(first, 1, 8 << 20)
libc.free(first)
base = rss_mib()
copies, kept = [], []
for _ in range(100):  # a weight copy, then something small that stays
    copy = libc.malloc(4 << 20)
    ctypes.memset(copy, 1, 4 << 20)
    copies.append(copy)
    kept.append(libc.malloc(1000))
for copy in copies:
    libc.free(copy)
print(rss_mib() - base)
'''


def resident_growth(mode: str) -> float:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}  # no MALLOC_* variable from outside
    done = subprocess.run([sys.executable, "-c", PATTERN, mode], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_weight_copies_return_to_the_system_with_the_threshold_fixed():
    default, fixed = resident_growth("default"), resident_growth("fixed")
    assert default > 300, default  # glibc's default keeps the 400 MiB of freed copies resident
    assert fixed < 20, fixed


def test_a_threshold_set_by_the_user_is_kept(monkeypatch):
    from webui.model_manager.host_allocator import return_freed_blocks

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert return_freed_blocks() is False
