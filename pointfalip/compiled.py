"""The image encoder through ``torch.compile``: inductor with its weights frozen into the code, caches on disk.

`compile_encoder` wraps `FalipCLIP._run_encoder` (the blocks of the image encoder, a function of the images, the
foveal bias and constants): inductor fuses the memory-bound work around the GEMMs (layer norms, residual adds,
bias and GELU epilogues) and, with ``freezing``, prepacks the weights for oneDNN on CPUs. The foveal bias stays
an input, and the batch is marked dynamic (`mark_batch_dynamic`) so that the view batches of a run share one
graph. The compiled code is cached on disk (`cache_dir`), so that a second process pays only the tracing.
Where the first compile pays off is measured in ``bench/bench_falip.py``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch

__all__ = ["CACHE_ENV", "DEFAULT_CACHE_DIR", "cache_dir", "compile_encoder", "mark_batch_dynamic"]

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # torch's own variable: a user's setting wins
DEFAULT_CACHE_DIR = Path("~/.cache/pointfalip/inductor")
# Recompiles a FalipCLIP may need in one process: each mix of foveal layers, amplify, --compare and pooling is a
# graph, and a batch of one is specialised apart from the others.
RECOMPILE_LIMIT = 32


def cache_dir() -> Path:
    """Where inductor keeps compiled code: ``$TORCHINDUCTOR_CACHE_DIR``, else ``~/.cache/pointfalip/inductor``
    (torch's default lies under /tmp, which does not outlive a reboot)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def compile_encoder(fn: Callable) -> Callable:
    """``fn`` compiled by inductor with frozen weights (in inference mode; with gradients on it compiles without
    freezing), its code cached under `cache_dir`."""
    os.environ.setdefault(CACHE_ENV, str(cache_dir()))
    import torch._dynamo

    limit = getattr(torch._dynamo.config, "recompile_limit", None)
    if limit is not None and limit < RECOMPILE_LIMIT:
        torch._dynamo.config.recompile_limit = RECOMPILE_LIMIT
    return torch.compile(fn, options={"freezing": True})


def mark_batch_dynamic(*tensors: Optional[torch.Tensor]) -> None:
    """Mark dim 0 of each tensor a dynamic size, so that a new batch size does not compile a new graph."""
    for t in tensors:
        if t is not None and t.shape[0] > 1:
            torch._dynamo.maybe_mark_dynamic(t, 0)
