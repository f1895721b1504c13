"""pointfalip: zero-shot recognition of 3D point clouds and image regions with CLIP and foveal attention.

The public names below load on first use (PEP 562), so that ``import pointfalip.cli`` and ``pointfalip --help``
do not import torch and open_clip."""
__version__ = "0.1.0"

from .errors import InputError, WeightsUnavailable  # noqa: E402

_LAZY = {"FalipCLIP": "model", "load_model": "model", "Recognizer": "recognize", "parts": None,
         "reuse_freed_memory": "allocator"}  # name -> module

__all__ = ["FalipCLIP", "InputError", "Recognizer", "WeightsUnavailable", "load_model", "parts", "reuse_freed_memory",
           "__version__"]


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name] or name}", __name__)
        value = module if _LAZY[name] is None else getattr(module, name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
