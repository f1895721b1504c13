"""Image regions: classify a box or mask against names, and rank boxes for a referring expression.

FALIP keeps the pixels and biases attention toward the region; the pixel-altering prompts of
`visual_prompts` are there to compare with it through the same code path.

Images are read as a model should see them (`load_image`): EXIF orientation applied, 16-bit grey scaled
to 8 bits (``round(v / 257)``), transparent pixels composited on white (`IMAGE_BACKGROUND`), every other
mode converted to RGB. Masks (`load_mask`) mark the pixels that are not black once shown: transparent
pixels are outside the region (as if composited on black). Boxes follow one rule, `foveal.parse_box` /
`foveal.check_box`.
"""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from . import foveal, visual_prompts
from .errors import InputError
from .io import path_text
from .model import FalipCLIP
from .prompts import build_prompts, text_features
from .recognize import Prediction, check_top_k, ranked

Box = Sequence[float]
IMAGE_BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as image viewers and web pages do
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I" (32-bit) is read as 16-bit: PNG's 16-bit grey
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_DENIED = "permission denied; make the file readable (chmod +r) or give a copy you can read"


# ---- files -----------------------------------------------------------------------------------------------
def open_image(path, what: str = "image") -> Image.Image:
    """A fully decoded, EXIF-oriented image of any mode; every failure is a one-line InputError."""
    path = Path(path)
    name = f"{what} {path_text(path)}"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputError(f"{name} does not exist") from None
    except PermissionError:
        raise InputError(f"{name}: permission denied (a folder on its path cannot be searched)") from None
    except (OSError, ValueError) as e:  # a link loop, a name too long, a NUL byte
        raise InputError(f"{name}: not a usable path ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{name} is a folder, not a file; give an image file")
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{name} is not a regular file; give an image file")
    if info.st_size == 0:
        raise InputError(f"{name} is empty; give an image file")
    if not os.access(path, os.R_OK):
        raise InputError(f"{name}: {_DENIED}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                return _upright(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(f"{name} has more than {Image.MAX_IMAGE_PIXELS} pixels, Pillow's limit against "
                         "decompression bombs; downscale it first") from None
    except PermissionError:
        raise InputError(f"{name}: {_DENIED}") from None
    except MemoryError:
        raise InputError(f"{name} is too large to decode in memory; downscale it first") from None
    except Exception:  # noqa: BLE001 - Pillow raises many types for truncated or foreign files
        raise InputError(f"cannot read {name}: not an image file, or truncated or corrupt") from None


def _upright(im: Image.Image) -> Image.Image:
    """A decoded copy turned as its EXIF orientation says, as viewers show it (as stored if the EXIF is broken)."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a malformed EXIF block must not cost the image
        return im.copy()


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or "transparency" in im.info


def _sixteen_bit_to_8(im: Image.Image) -> np.ndarray:
    """16-bit grey (0..65535) scaled to 0..255 as ``round(v / 257)``; values beyond 16 bits are clipped."""
    return np.clip(np.rint(np.asarray(im, dtype=np.float64) / 257.0), 0, 255).astype(np.uint8)


def _to_rgb(im: Image.Image, name: str, background: tuple[int, int, int]) -> Image.Image:
    if im.mode in SIXTEEN_BIT_MODES:
        return Image.fromarray(_sixteen_bit_to_8(im), "L").convert("RGB")
    if im.mode == "F":
        raise InputError(f"{name} has 32-bit floating-point pixels, whose range is unknown; save it as an 8- or "
                         "16-bit image")
    try:
        if _has_alpha(im):
            rgba = im.convert("RGBA")
            return Image.alpha_composite(Image.new("RGBA", im.size, background + (255,)), rgba).convert("RGB")
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise InputError(f"{name}: pixels of mode {im.mode} cannot be converted to RGB ({e}); "
                         "save it as an RGB image") from None


def load_image(path) -> Image.Image:
    """An 8-bit RGB image from a file, as a model should see it (see the module's docstring).

    Raises InputError (one line) for a missing, empty, unreadable, truncated or foreign file, a folder, and an
    image beyond Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``).
    """
    return _to_rgb(open_image(path, "image"), f"image {path_text(Path(path))}", IMAGE_BACKGROUND)


def load_mask(path, image_size: tuple[int, int]) -> np.ndarray:
    """A boolean region mask (H, W) from an image file, the size (width, height) of the image.

    A pixel is in the region when it is not black once shown: a single-band image (1, L, P without
    transparency, 16-bit, float) where its value is non-zero; a colour image where a channel is non-zero;
    a pixel with alpha 0 is never in the region.
    """
    name = f"mask {path_text(Path(path))}"
    im = open_image(path, "mask")
    if _has_alpha(im) and im.mode not in SIXTEEN_BIT_MODES:
        rgba = np.asarray(im.convert("RGBA"))
        mask = (rgba[..., 3] > 0) & (rgba[..., :3].max(axis=-1) > 0)
    elif im.mode in ("1", "L", "F") or im.mode in SIXTEEN_BIT_MODES:
        mask = np.nan_to_num(np.asarray(im, dtype=np.float64)) != 0
    else:
        mask = np.asarray(_to_rgb(im, name, (0, 0, 0))).max(axis=-1) > 0
    if (mask.shape[1], mask.shape[0]) != tuple(image_size):
        raise InputError(f"{name} is {mask.shape[1]}x{mask.shape[0]} but the image is "
                         f"{image_size[0]}x{image_size[1]}: they must be the same size")
    if not mask.any():
        raise InputError(f"{name} is empty: mark the region with non-black pixels")
    return mask


# ---- arguments -------------------------------------------------------------------------------------------
def check_mask(mask, width: int, height: int) -> np.ndarray:
    """A non-empty boolean region mask (H, W) the size of a width × height image."""
    arr = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"a region mask must hold booleans or numbers, got dtype {arr.dtype}")
    if arr.shape != (height, width):
        raise InputError(f"the region mask has shape {tuple(arr.shape)} but the image is {width}x{height}: "
                         f"give a mask of shape ({height}, {width})")
    arr = np.nan_to_num(arr) != 0
    if not arr.any():
        raise InputError("the region mask is empty: mark the region with non-zero pixels")
    return arr


def _checked_region(region: dict, image: Image.Image) -> dict:
    """A new region dict with a checked box or mask (the caller's dict is left as it is)."""
    box, mask = region.get("box"), region.get("mask")
    if (box is None) == (mask is None):
        raise InputError("a region needs a box or a mask, not both and not neither")
    if box is not None:
        return {"box": foveal.check_box(box, image.width, image.height), "mask": None}
    return {"box": None, "mask": check_mask(mask, image.width, image.height)}


# ---- models ----------------------------------------------------------------------------------------------
def region_batch(model: FalipCLIP, image: Image.Image, regions: Sequence[dict], prompt: str = "falip",
                 config: Optional[foveal.FovealConfig] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Encoder inputs for one image and several regions ({"box": ...} or {"mask": ...}; not modified).

    Returns images (R, 3, H, W) and, for FALIP, the foveal biases (R, gh, gw); None for the other prompts.
    """
    if prompt not in visual_prompts.PROMPTS:
        raise InputError(f"unknown prompt '{prompt}': choose one of {', '.join(visual_prompts.PROMPTS)}")
    checked = [_checked_region(r, image) for r in regions]
    if prompt == "falip" and checked:
        tensor = model.preprocess(image)
        biases = [foveal.from_box(r["box"], image.size, model.preprocess_cfg, model.grid_size, config)
                  if r["box"] is not None else
                  foveal.from_region(r["mask"], model.preprocess_cfg, model.grid_size, config)
                  for r in checked]
        return tensor.expand(len(checked), -1, -1, -1), torch.stack(biases)
    pictures = [visual_prompts.apply(prompt, image, r["box"], r["mask"]) for r in checked] or [image]
    return torch.stack([model.preprocess(p) for p in pictures]), None


def _encode(model: FalipCLIP, images: torch.Tensor, bias: Optional[torch.Tensor],
            config: Optional[foveal.FovealConfig]) -> torch.Tensor:
    kwargs = (config or foveal.FovealConfig()).encoder_kwargs() if bias is not None else {}
    with torch.inference_mode():
        return model.encode_image(images, cls_bias=bias, normalize=True, **kwargs)


def classify_region(model: FalipCLIP, image: Image.Image, labels: Sequence[str], box: Optional[Box] = None,
                    mask: Optional[np.ndarray] = None, prompt: str = "falip", templates="photo",
                    config: Optional[foveal.FovealConfig] = None, top_k: Optional[int] = None) -> list[Prediction]:
    """Which label fits the region (or the whole image without one): `Prediction`s, best first.

    top_k: how many to return (None: all); below 1 is an InputError, as for `Recognizer.classify`.
    """
    top_k = None if top_k is None else check_top_k(top_k)
    if not labels:
        raise InputError("the label list is empty: give at least one label")
    regions = [{"box": box, "mask": mask}] if box is not None or mask is not None else []
    images, bias = region_batch(model, image, regions, prompt, config)
    feats = _encode(model, images, bias, config)
    text = text_features(model, build_prompts(labels, templates))
    probs = (model.logit_scale * feats[0] @ text.T).softmax(dim=-1)
    return ranked(list(labels), probs, top_k)


def rank_boxes(model: FalipCLIP, image: Image.Image, boxes: Sequence[Box], caption: str, prompt: str = "falip",
               config: Optional[foveal.FovealConfig] = None, top_k: Optional[int] = None) -> list[Prediction]:
    """Which box the caption refers to: `Prediction`s labelled "x0,y0,x1,y1", best first (one batched pass).

    top_k: how many to return (None: all); below 1 is an InputError, as for `Recognizer.classify`.
    """
    top_k = None if top_k is None else check_top_k(top_k)
    if not boxes:
        raise InputError("no candidate boxes: give at least one with --boxes")
    if not caption.strip():
        raise InputError("the caption is empty")
    checked = [foveal.check_box(b, image.width, image.height) for b in boxes]
    images, bias = region_batch(model, image, [{"box": b} for b in checked], prompt, config)
    feats = _encode(model, images, bias, config)
    with torch.inference_mode():
        text = model.encode_text([caption], normalize=True)[0]
    probs = (model.logit_scale * feats @ text).softmax(dim=-1)
    names = [",".join(f"{v:g}" for v in b) for b in checked]
    return ranked(names, probs, top_k)
