"""Pixel-altering visual prompts that FALIP is compared with: red circle, blur outside the region, crop.

They follow the paper's baselines; FALIP itself leaves the pixels alone and biases attention instead.
Boxes are checked with `foveal.check_box` (inside the image, not empty) and masks must match the image's size.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .errors import InputError
from .foveal import check_box

Box = Sequence[float]
PROMPTS = ("falip", "circle", "blur", "crop", "none")
CIRCLE_COLOR = (255, 0, 0)
CIRCLE_WIDTH_FRACTION = 0.01  # line width as a fraction of the image's longer side (at least 2 px)
BLUR_RADIUS_FRACTION = 0.02  # Gaussian blur radius as a fraction of the longer side


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1), ends exclusive, of a non-empty boolean mask (H, W)."""
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def _region_mask(image: Image.Image, mask: np.ndarray) -> np.ndarray:
    """A boolean mask of the image's size with at least one pixel set."""
    arr = np.asarray(mask, bool)
    if arr.shape != (image.height, image.width):
        raise InputError(f"the region mask has shape {arr.shape} but the image is {image.width}x{image.height}: "
                         f"give a mask of shape ({image.height}, {image.width})")
    if not arr.any():
        raise InputError("the region mask is empty: mark the region with non-zero pixels")
    return arr


def red_circle(image: Image.Image, box: Box) -> Image.Image:
    """The image with a red ellipse drawn around the box."""
    out = image.copy()
    width = max(2, round(CIRCLE_WIDTH_FRACTION * max(image.size)))
    ImageDraw.Draw(out).ellipse(check_box(box, image.width, image.height), outline=CIRCLE_COLOR, width=width)
    return out


def blur_outside(image: Image.Image, box: Optional[Box] = None, mask: Optional[np.ndarray] = None) -> Image.Image:
    """The image blurred everywhere except inside the box (or the region mask)."""
    radius = max(1.0, BLUR_RADIUS_FRACTION * max(image.size))
    blurred = image.filter(ImageFilter.GaussianBlur(radius))
    if mask is None:
        mask = np.zeros((image.height, image.width), bool)
        x0, y0, x1, y1 = check_box(box, image.width, image.height)
        mask[int(np.floor(y0)):int(np.ceil(y1)), int(np.floor(x0)):int(np.ceil(x1))] = True  # the pixels it touches
    keep = Image.fromarray(_region_mask(image, mask).astype(np.uint8) * 255)
    return Image.composite(image, blurred, keep)


def crop(image: Image.Image, box: Box) -> Image.Image:
    """The box cut out of the image (the model's preprocessing then resizes it)."""
    x0, y0, x1, y1 = check_box(box, image.width, image.height)
    return image.crop((int(np.floor(x0)), int(np.floor(y0)), int(np.ceil(x1)), int(np.ceil(y1))))


def apply(prompt: str, image: Image.Image, box: Optional[Box] = None,
          mask: Optional[np.ndarray] = None) -> Image.Image:
    """The image a pixel-altering prompt makes ("falip" and "none" leave it as it is)."""
    if prompt in ("falip", "none") or (box is None and mask is None):
        return image
    if box is not None and mask is not None:
        raise InputError("give a box or a region mask, not both")
    region_box = check_box(box, image.width, image.height) if box is not None else mask_box(_region_mask(image, mask))
    if prompt == "circle":
        return red_circle(image, region_box)
    if prompt == "blur":
        return blur_outside(image, box, mask)
    if prompt == "crop":
        return crop(image, region_box)
    raise ValueError(f"unknown visual prompt '{prompt}': choose one of {', '.join(PROMPTS)}")
