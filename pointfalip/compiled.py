"""The image encoder compiled: by ``torch.compile`` (inductor), or as an OpenVINO model on Intel CPUs.

`compile_encoder` turns `FalipCLIP._run_encoder` (the blocks of the image encoder, a function of the images, the
foveal bias and constants) into a callable of the same signature, by one of `ENGINES`:

- ``inductor``: ``torch.compile`` with ``freezing`` (weights prepacked for oneDNN on CPUs), the memory-bound work
  around the GEMMs fused; the batch is marked dynamic (`mark_batch_dynamic`), so the view batches of a run share
  one graph, and the compiled code is cached on disk (`cache_dir`) for later processes. CPU and CUDA.
- ``openvino``: `OpenVINOEncoder`, each kind of call converted once by ``openvino.convert_model`` with a dynamic
  batch and run by OpenVINO's CPU plugin in the model's precision (bf16 on AMX/AVX512-BF16). CPU only; the
  ``openvino`` extra.

The foveal bias stays an input of either. What each gains is measured by ``bench/bench_falip.py``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch

from .errors import InputError
from .presets import COMPILE_ENGINES as ENGINES

__all__ = ["CACHE_ENV", "DEFAULT_CACHE_DIR", "ENGINES", "OpenVINOEncoder", "cache_dir", "check_engine",
           "compile_encoder", "mark_batch_dynamic"]

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"  # torch's own variable: a user's setting wins
DEFAULT_CACHE_DIR = Path("~/.cache/pointfalip/inductor")
# Recompiles a FalipCLIP may need in one process: each mix of foveal layers, amplify, --compare and pooling is a
# graph, and a batch of one is specialised apart from the others.
RECOMPILE_LIMIT = 32


def cache_dir() -> Path:
    """Where inductor keeps compiled code: ``$TORCHINDUCTOR_CACHE_DIR``, else ``~/.cache/pointfalip/inductor``
    (torch's default lies under /tmp, which does not outlive a reboot)."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR).expanduser()


def check_engine(compile) -> Optional[str]:
    """The engine a ``compile`` setting names: None for False/None/"off", "inductor" for True; InputError else."""
    if compile is None or compile is False or compile == "off":
        return None
    if compile is True:
        return "inductor"
    if compile not in ENGINES:
        raise InputError(f"unknown compile engine {compile!r}: choose one of {', '.join(ENGINES)} (or true/false)")
    return compile


def compile_encoder(model, engine: str = "inductor") -> Callable:
    """``model._run_encoder`` compiled by ``engine`` (`ENGINES`)."""
    if engine == "openvino":
        return OpenVINOEncoder(model)
    return compile_inductor(model._run_encoder)


def compile_inductor(fn: Callable) -> Callable:
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


class _Blocks(torch.nn.Module):
    """One kind of `FalipCLIP._run_encoder` call as a module of the images (and the bias), for conversion."""

    def __init__(self, model, static: tuple):
        super().__init__()
        self.model = model
        self.static = static

    def forward(self, images: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.model._run_encoder(images, bias, *self.static)[0]


class OpenVINOEncoder:
    """`FalipCLIP._run_encoder` run by OpenVINO: each kind of call (bias or none, foveal layers, amplify, --compare,
    pooling) is converted at its first call, with a dynamic batch, and compiled for the CPU in the model's
    precision; the weights are read at that conversion."""

    _HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}

    def __init__(self, model):
        try:
            import openvino
        except ImportError:
            raise InputError("compile=openvino needs OpenVINO: pip install 'pointfalip[openvino]'") from None
        self._ov = openvino
        self._core = openvino.Core()
        self._model = model
        self._requests: dict = {}

    def __call__(self, images: torch.Tensor, bias: Optional[torch.Tensor], layers: tuple, amplify: float,
                 with_plain: bool, last: str) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        if images.device.type != "cpu":
            raise InputError("compile=openvino runs on the CPU: use --device cpu, or compile=inductor on CUDA")
        static = (layers, amplify, with_plain, last)
        key = (None if bias is None else tuple(bias.shape[1:]), static)
        inputs = [images] if bias is None else [images, bias.to(images.dtype).contiguous()]
        if key not in self._requests:
            self._requests[key] = self._convert(inputs, static)
        out = self._requests[key].infer([t.float().numpy() for t in inputs])[0]
        return torch.tensor(out, dtype=images.dtype), bias

    def _convert(self, inputs: list, static: tuple):
        """The OpenVINO request of one kind of call: converted from float32 (OpenVINO takes no bfloat16 input; the
        image tower is cast there and back, which is exact) and run in the model's precision."""
        ov = self._ov
        shapes = [ov.PartialShape([-1, *t.shape[1:]]) for t in inputs]
        visual = self._model.visual
        dtype = next(visual.parameters()).dtype
        try:
            visual.float()
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)  # static shapes iterated on purpose
                warnings.simplefilter("ignore", FutureWarning)  # OpenVINO traces with torch.jit.trace
                converted = ov.convert_model(_Blocks(self._model, static), input=shapes,
                                             example_input=tuple(t.float() for t in inputs))
        finally:
            visual.to(dtype)
        hint = self._HINTS[self._model.precision]
        config = {"INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
        return self._core.compile_model(converted, "CPU", config).create_infer_request()
