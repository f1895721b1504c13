"""Image files read as a model should see them: EXIF orientation applied, 16-bit grey scaled to 8 bits
(``round(v / 257)``), transparent pixels composited on white (`IMAGE_BACKGROUND`), every other mode converted to
RGB. Masks (`load_mask`) mark the pixels that are not black once shown: transparent pixels are outside the region
(as if composited on black). `open_image` gives the decoded image of any mode (depth maps keep their 16 bits).
Every failure a user can cause is a one-line InputError.
"""
from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import InputError
from .files import check_input_file, path_text

IMAGE_BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as image viewers and web pages do
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # "I" (32-bit) is read as 16-bit: PNG's 16-bit grey
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_DENIED = "permission denied; make the file readable (chmod +r) or give a copy you can read"


def open_image(path, what: str = "image", upright: bool = True) -> Image.Image:
    """A fully decoded, EXIF-oriented image of any mode; every failure is a one-line InputError.

    upright=False keeps the pixels as stored (COCO's boxes and ReCLIP's code read them so)."""
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
        check_input_file(path, what)  # names what it is: a device, a named pipe, a process substitution
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
                return _upright(im) if upright else im.copy()
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


def load_image(path, upright: bool = True) -> Image.Image:
    """An 8-bit RGB image from a file, as a model should see it (see the module's docstring); upright=False
    ignores the EXIF orientation.

    Raises InputError (one line) for a missing, empty, unreadable, truncated or foreign file, a folder, and an
    image beyond Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``).
    """
    return _to_rgb(open_image(path, "image", upright), f"image {path_text(Path(path))}", IMAGE_BACKGROUND)


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
