"""pointfalip: zero-shot recognition of 3D point clouds and image regions with CLIP and foveal attention."""
from .errors import InputError, WeightsUnavailable
from .model import FalipCLIP, load_model
from .recognize import Recognizer

__version__ = "0.1.0"
__all__ = ["FalipCLIP", "InputError", "Recognizer", "WeightsUnavailable", "load_model", "__version__"]
