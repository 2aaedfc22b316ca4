"""core.allocator: glibc keeps a training step's big tensors in its heap after they are freed (so the next step does
not fault the pages in again), where by default it maps them afresh and unmaps them. Read from glibc's own
accounting (mallinfo2) in a fresh process each."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LOGITS_MB = 700 * 10000 * 4 // 2**20  # the LM's logits at the medium shape, fp32 (26.7 MiB)

ONE_STEP = """
import ctypes, sys, torch
from core.allocator import allocator_setting, keep_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL(None).mallinfo2
mallinfo2.restype = MallInfo2
if sys.argv[1] == "kept":
    assert keep_freed_memory()
before = mallinfo2()
logits = torch.ones(700, 10000)
log_probs = logits.log_softmax(-1)
live = mallinfo2()
del logits, log_probs
freed = mallinfo2()
mb = lambda n: round(n / 2**20)
print(mb(live.hblkhd - before.hblkhd), mb(freed.arena - before.arena), allocator_setting())
"""


def malloc_accounting(mode):
    """(MB mapped on their own for the logits, MB the heap grew by and kept after they were freed, the setting)"""
    out = subprocess.run([sys.executable, "-c", ONE_STEP, mode], cwd=ROOT, capture_output=True, text=True, check=True)
    mapped, heap, setting = out.stdout.split(" ", 2)
    return int(mapped), int(heap), setting.strip()


glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and mallinfo2")


@glibc_only
def test_by_default_glibc_maps_big_tensors_and_hands_them_back():
    mapped, heap, setting = malloc_accounting("default")
    assert setting == "default"
    assert mapped >= 2 * LOGITS_MB and heap < 1


@glibc_only
def test_kept_memory_stays_in_the_heap_for_the_next_step():
    mapped, heap, setting = malloc_accounting("kept")
    assert setting.startswith("glibc, freed memory kept")
    assert mapped < 1 and heap >= 2 * LOGITS_MB


def test_provenance_names_the_malloc_setting():
    from core.provenance import malloc_text, provenance

    prov = provenance("cpu", "cmd")
    assert prov["malloc"] in malloc_text(prov)
    assert malloc_text({}) == ", malloc: default (before core.allocator)"  # runs recorded before the setting
