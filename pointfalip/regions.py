"""Image regions: classify a box or mask against names, and rank boxes for a referring expression.

FALIP keeps the pixels and biases attention toward the region; the pixel-altering prompts of
`visual_prompts` are there to compare with it through the same code path.

Images and masks are read by `pointfalip.images`. Boxes follow one rule, `foveal.parse_box` / `foveal.check_box`.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image

from . import foveal, visual_prompts
from .errors import InputError
from .model import FalipCLIP
from .prompts import build_prompts, text_features
from .recognize import Prediction, check_top_k, ranked

Box = Sequence[float]


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
                 config: Optional[foveal.FovealConfig] = None, resize_mode: Optional[str] = None,
                 rule: str = "overlap") -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Encoder inputs for one image and several regions ({"box": ...} or {"mask": ...}; not modified).

    Returns images (R, 3, H, W) and, for FALIP, the foveal biases (R, gh, gw); None for the other prompts.
    resize_mode: the preprocessing's resize (default the model's; "squash" is ReCLIP's); rule: FALIP's box
    rule (`foveal.from_box`).
    """
    if prompt not in visual_prompts.PROMPTS:
        raise InputError(f"unknown prompt '{prompt}': choose one of {', '.join(visual_prompts.PROMPTS)}")
    checked = [_checked_region(r, image) for r in regions]
    if prompt == "falip" and checked:
        cfg = model.preprocess_config(resize_mode)
        tensor = model.preprocess(image, resize_mode)
        biases = [foveal.from_box(r["box"], image.size, cfg, model.grid_size, config, rule)
                  if r["box"] is not None else
                  foveal.from_region(r["mask"], cfg, model.grid_size, config)
                  for r in checked]
        return tensor.expand(len(checked), -1, -1, -1), torch.stack(biases)
    blurred = visual_prompts.blurred(image) if prompt in ("blur", "circle") and checked else None
    pictures = [visual_prompts.apply(prompt, image, r["box"], r["mask"], blurred) for r in checked] or [image]
    return torch.stack([model.preprocess(p, resize_mode) for p in pictures]), None


def encode_regions(model: FalipCLIP, images: torch.Tensor, bias: Optional[torch.Tensor],
                   config: Optional[foveal.FovealConfig] = None) -> torch.Tensor:
    """Unit image features (R, D) of `region_batch`'s output (the foveal bias in ``config``'s blocks and heads)."""
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
    feats = encode_regions(model, images, bias, config)
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
    feats = encode_regions(model, images, bias, config)
    with torch.inference_mode():
        text = model.encode_text([visual_prompts.caption_for(prompt, caption)], normalize=True)[0]
    probs = (model.logit_scale * feats @ text).softmax(dim=-1)
    names = [",".join(f"{v:g}" for v in b) for b in checked]
    return ranked(names, probs, top_k)
