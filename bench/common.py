"""Shared set-up of the bench scripts: one random-weight model in fp32 and a bf16 copy of it, the CPU's name."""
import copy
import platform
import warnings
from pathlib import Path

from pointfalip import load_model


def fp32_and_bf16(name: str):
    """(fp32, bf16) FalipCLIPs with the same random weights (timing does not depend on their values)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp32 = load_model(name, pretrained="none", precision="fp32")
    return fp32, type(fp32)(copy.deepcopy(fp32.clip), fp32.tokenizer, name=fp32.name, precision="bf16").eval()


def malloc_setting(default_malloc: bool) -> str:
    """Apply what the command line applies at start (`pointfalip.allocator`) unless told not to; its name for the
    table header (an older checkout without it runs with glibc's defaults)."""
    if default_malloc:
        return "glibc's default malloc"
    try:
        from pointfalip.allocator import reuse_freed_memory
    except ImportError:
        return "glibc's default malloc (no pointfalip.allocator)"
    return "freed memory reused (pointfalip.allocator)" if reuse_freed_memory() else "default malloc (not glibc)"


def cpu_name() -> str:
    """The CPU model as /proc/cpuinfo names it (every bench table names the CPU it ran on)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
