"""glibc allocator tuning against the fragmentation image servers are known for.

Decoding and encoding images on several threads makes glibc create one malloc arena per thread
and keep freed image buffers in them, so a process grows after bursts and never gives the
memory back. Two remedies, both no-ops where the C library is not glibc:

* :func:`limit_malloc_arenas` caps the number of arenas (what ``MALLOC_ARENA_MAX`` does, but
  applied from inside the process, so it also works when imgsrv is not started by its CLI);
* :func:`release_free_memory` returns freed heap pages to the system (``malloc_trim``), which
  the runtime calls once the transform pool goes idle after work.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("imgsrv.memory")

M_ARENA_MAX = -8  # from glibc's malloc.h


def _glibc() -> ctypes.CDLL | None:
    # The symbols the process already has (the C library among them): no library search,
    # which in ctypes.util.find_library runs ldconfig as a child process on every start.
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    return libc


_LIBC = _glibc()


def limit_malloc_arenas(count: int) -> bool:
    """Cap glibc malloc arenas at ``count`` (0 leaves the default); True if applied."""
    if count <= 0 or _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_ARENA_MAX, count))


def release_free_memory() -> bool:
    """Give freed heap memory back to the operating system; True if any was released."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(0))
