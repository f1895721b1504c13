"""Pixel-altering visual prompts that FALIP is compared with: crop, blur outside the region, red circle, red shade.

Each makes the same pixels as ReCLIP / FALIP's reference code (pumpkin805/FALIP ``executor.py``), by the same Pillow
calls on the box as given (floats included; Pillow rounds as it does there):

- crop: ``image.crop(box)``;
- blur: the image blurred by ``GaussianBlur(BLUR_RADIUS)``, the box's rectangle pasted back sharp;
- circle: the same blur outside the box's filled ellipse, then a red ellipse outline ``int(max(W, H) / 200)`` px
  wide (FALIP's variant of the red circle; below 200 px the width is 0 and Pillow draws no outline);
- shade: CPT's red tint, ``SHADE_COLOR`` at alpha ``SHADE_ALPHA`` over the box; its caption gets ``CAPTION_SUFFIX``.

FALIP itself leaves the pixels alone and biases attention instead. Boxes are checked with `foveal.check_box` (inside
the image, not empty) and masks must match the image's size.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .errors import InputError
from .foveal import check_box

Box = Sequence[float]
PROMPTS = ("falip", "circle", "blur", "crop", "shade", "none")
CIRCLE_COLOR = "red"
CIRCLE_WIDTH_DIVISOR = 200  # outline width: int(longer side / 200) px, as FALIP's code draws it
BLUR_RADIUS = 100  # Gaussian blur radius in px whatever the image size (ReCLIP's --blur_std_dev default)
SHADE_COLOR = (240, 0, 30)  # CPT's red tint
SHADE_ALPHA = 127
CAPTION_SUFFIX = {"shade": " is in red color."}  # CPT's caption for a shaded region (ReCLIP's shade text)


def caption_for(prompt: str, caption: str) -> str:
    """The caption a prompt is scored with: the shade's caption says the region is red."""
    return caption + CAPTION_SUFFIX.get(prompt, "")


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


def _corners(box: Box) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = box
    return [(x0, y0), (x1, y1)]


def blurred(image: Image.Image) -> Image.Image:
    """The whole image blurred as the blur and circle prompts blur it (one blur serves every box of an image)."""
    return image.filter(ImageFilter.GaussianBlur(BLUR_RADIUS))


def red_circle(image: Image.Image, box: Box, blurred_image: Optional[Image.Image] = None) -> Image.Image:
    """The image blurred outside the box's ellipse, with a red ellipse drawn around the box."""
    box = check_box(box, image.width, image.height)
    keep = Image.new("L", image.size, 0)
    ImageDraw.Draw(keep).ellipse(_corners(box), outline=CIRCLE_COLOR, fill=255)
    out = (blurred_image or blurred(image)).copy()
    out.paste(image, mask=keep)
    width = int(max(image.size) / CIRCLE_WIDTH_DIVISOR)
    ImageDraw.Draw(out).ellipse(_corners(box), outline=CIRCLE_COLOR, width=width)
    return out


def blur_outside(image: Image.Image, box: Optional[Box] = None, mask: Optional[np.ndarray] = None,
                 blurred_image: Optional[Image.Image] = None) -> Image.Image:
    """The image blurred everywhere except inside the box's rectangle (or the region mask)."""
    if mask is None:
        keep = Image.new("L", image.size, 0)
        ImageDraw.Draw(keep).rectangle(_corners(check_box(box, image.width, image.height)), fill=255)
    else:
        keep = Image.fromarray(_region_mask(image, mask).astype(np.uint8) * 255)
    out = (blurred_image or blurred(image)).copy()
    out.paste(image, mask=keep)
    return out


def crop(image: Image.Image, box: Box) -> Image.Image:
    """The box cut out of the image by Pillow (which rounds the box; the model's preprocessing resizes it)."""
    box = check_box(box, image.width, image.height)
    x0, y0, x1, y1 = (round(v) for v in box)
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"box {','.join(f'{v:g}' for v in box)} is less than a pixel wide or high once rounded: "
                         "the crop prompt would be empty")
    return image.crop(box)


def shade(image: Image.Image, box: Optional[Box] = None, mask: Optional[np.ndarray] = None) -> Image.Image:
    """The image with the box (or the region mask) tinted red, as CPT shades it."""
    overlay = Image.new("RGBA", image.size, SHADE_COLOR + (0,))
    if mask is None:
        ImageDraw.Draw(overlay).rectangle(_corners(check_box(box, image.width, image.height)),
                                          fill=SHADE_COLOR + (SHADE_ALPHA,))
    else:
        alpha = _region_mask(image, mask).astype(np.uint8) * SHADE_ALPHA
        overlay.putalpha(Image.fromarray(alpha))
    return Image.alpha_composite(image.convert("RGBA"), overlay).convert("RGB")


def apply(prompt: str, image: Image.Image, box: Optional[Box] = None, mask: Optional[np.ndarray] = None,
          blurred_image: Optional[Image.Image] = None) -> Image.Image:
    """The image a pixel-altering prompt makes ("falip" and "none" leave it as it is).

    blurred_image: `blurred(image)` made once for several boxes of one image (blur and circle).
    """
    if prompt in ("falip", "none") or (box is None and mask is None):
        return image
    if box is not None and mask is not None:
        raise InputError("give a box or a region mask, not both")
    region_box = check_box(box, image.width, image.height) if box is not None else mask_box(_region_mask(image, mask))
    if prompt == "circle":
        return red_circle(image, region_box, blurred_image)
    if prompt == "blur":
        return blur_outside(image, box, mask, blurred_image)
    if prompt == "crop":
        return crop(image, region_box)
    if prompt == "shade":
        return shade(image, box, mask)
    raise ValueError(f"unknown visual prompt '{prompt}': choose one of {', '.join(PROMPTS)}")
