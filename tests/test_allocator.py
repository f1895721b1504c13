"""reuse_freed_memory: freed blocks are reused by later allocations instead of being faulted in afresh."""
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from pointfalip.allocator import reuse_freed_memory
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else False
for _ in range(10):  # 64 MiB blocks, above glibc's default mmap threshold, as an encoder's batches allocate them
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 << 20)
    del x
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[bool, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True).stdout
    applied, faults = out.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_a_repeated_large_block_faults_its_pages_in_only_by_default():
    applied, reused = _faults("reuse")
    _, fresh = _faults("default")
    assert applied
    assert fresh > 10_000  # 16,384 pages of 4 KiB, faulted in again
    assert reused < 1_000


def test_package_face_exports_it():
    import pointfalip

    assert pointfalip.reuse_freed_memory is pointfalip.allocator.reuse_freed_memory
