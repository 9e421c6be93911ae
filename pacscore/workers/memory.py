"""Keep freed pixel buffers in the worker's heap instead of giving them back.

Every instance a worker prepares allocates a few frame-sized buffers (the pixels read,
the encoded codestream, the decoded verify copy).  glibc hands freed memory above its
trim threshold back to the kernel, and the next instance faults it in again page by
page: on C-STORE of 512x512 CT from 4 associations the workers took from 7 to 450
minor page faults per instance from one run to the next, and their system time
followed (0.7 to 3.5 ms per instance, /proc/<pid>/stat).  Fixed thresholds keep up to
``_TRIM`` of free memory per worker for reuse; buffers larger than ``_MMAP`` still get
their own mapping and go back when freed.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
_TRIM = 256 * 1024**2
_MMAP = 32 * 1024**2  # glibc's own upper bound for its dynamic threshold


def keep_freed_memory() -> bool:
    """Set the thresholds in this process; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM))
