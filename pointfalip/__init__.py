"""pointfalip: zero-shot recognition of 3D point clouds and image regions with CLIP and foveal attention."""
__version__ = "0.1.0"

from . import parts  # noqa: E402 - pointfalip.parts, the part-segmentation API
from .errors import InputError, WeightsUnavailable  # noqa: E402
from .model import FalipCLIP, load_model  # noqa: E402
from .recognize import Recognizer  # noqa: E402

__all__ = ["FalipCLIP", "InputError", "Recognizer", "WeightsUnavailable", "load_model", "parts", "__version__"]
