"""Keep freed memory in the process instead of handing it back to the kernel after every training step.

glibc's malloc serves a block above its mmap threshold with a fresh mapping, and gives freed memory at the top of
its heap back to the kernel once more than the trim threshold is free. A CPU training step allocates and frees
tensors of tens of MB (the LM's logits, 700 x 10,000 fp32 values, and their gradients), so each step faults those
pages in again and the kernel zeroes them: on a 2-core EPYC a quarter of the step time went to page faults
(aten::fill_ and the first touch in log_softmax, see docs/performance.md). Raising both thresholds keeps the blocks
for the next step. jemalloc and tcmalloc (which Intel's PyTorch CPU guide preloads) do the same; this needs nothing
installed. Process-wide: call it at the start of a command, before the first big tensor.
"""
import ctypes
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20  # the largest glibc accepts on 64-bit (HEAP_MAX_SIZE / 2); bigger blocks stay mmapped
TRIM_THRESHOLD = 2**30  # free memory kept at the heap's top before any is returned (mallopt takes an int)

_state = {"setting": "default"}


def keep_freed_memory():
    """Raise glibc's mmap and trim thresholds (above). True if set; False, changing nothing, where malloc is not
    glibc's (macOS, musl) or it refuses."""
    if _state["setting"] != "default":
        return True
    libc = _glibc()
    if libc is None:
        return False
    if not (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return False
    _state["setting"] = f"glibc, freed memory kept (mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim threshold " \
                        f"{TRIM_THRESHOLD >> 20} MiB)"
    return True


def allocator_setting():
    """How this process's malloc is set, for provenance: "default" or the thresholds keep_freed_memory set."""
    return _state["setting"]


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the C library this Python links, whatever its file name
        libc.gnu_get_libc_version  # only glibc has it (musl has a mallopt that does nothing)
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    libc.mallopt.restype = ctypes.c_int
    return libc
