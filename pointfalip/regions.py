"""Image regions: classify a box or mask against names, and rank boxes for a referring expression.

FALIP keeps the pixels and biases attention toward the region; the pixel-altering prompts of
`visual_prompts` are there to compare with it through the same code path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from . import foveal, visual_prompts
from .errors import InputError
from .model import FalipCLIP
from .prompts import build_prompts, text_features

Box = Sequence[float]


def load_image(path) -> Image.Image:
    """An RGB image from a file; unreadable or missing files are an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image {path} does not exist")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"cannot read image {path}: not an image file or corrupt") from e


def load_mask(path, image_size: tuple[int, int]) -> np.ndarray:
    """A boolean region mask (H, W) from an image file (non-zero = region), the size of the image."""
    mask = np.asarray(load_image(path).convert("L")) > 0
    if (mask.shape[1], mask.shape[0]) != tuple(image_size):
        raise InputError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but the image is "
                         f"{image_size[0]}x{image_size[1]}: they must be the same size")
    if not mask.any():
        raise InputError(f"mask {path} is empty: mark the region with non-zero pixels")
    return mask


def parse_box(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError as e:
        raise InputError(f"box '{text}' must be four numbers x0,y0,x1,y1") from e
    if len(values) != 4:
        raise InputError(f"box '{text}' must be four numbers x0,y0,x1,y1")
    return values


def region_batch(model: FalipCLIP, image: Image.Image, regions: Sequence[dict], prompt: str = "falip",
                 config: Optional[foveal.FovealConfig] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Encoder inputs for one image and several regions ({"box": ...} or {"mask": ...}).

    Returns images (R, 3, H, W) and, for FALIP, the foveal biases (R, gh, gw); None for the other prompts.
    """
    if prompt not in visual_prompts.PROMPTS:
        raise InputError(f"unknown prompt '{prompt}': choose one of {', '.join(visual_prompts.PROMPTS)}")
    for region in regions:
        if region.get("box") is not None:
            region["box"] = foveal.check_box(region["box"], image.width, image.height)
    if prompt == "falip" and regions:
        tensor = model.preprocess(image)
        biases = [foveal.from_box(r["box"], image.size, model.preprocess_cfg, model.grid_size, config)
                  if r.get("box") is not None else
                  foveal.from_region(r["mask"], model.preprocess_cfg, model.grid_size, config)
                  for r in regions]
        return tensor.expand(len(regions), -1, -1, -1), torch.stack(biases)
    pictures = [visual_prompts.apply(prompt, image, r.get("box"), r.get("mask")) for r in regions] or [image]
    return torch.stack([model.preprocess(p) for p in pictures]), None


def _encode(model: FalipCLIP, images: torch.Tensor, bias: Optional[torch.Tensor],
            config: Optional[foveal.FovealConfig]) -> torch.Tensor:
    kwargs = (config or foveal.FovealConfig()).encoder_kwargs() if bias is not None else {}
    with torch.inference_mode():
        return model.encode_image(images, cls_bias=bias, normalize=True, **kwargs)


def _ranked(names: Sequence[str], probs: torch.Tensor, top_k: Optional[int] = None) -> list[dict]:
    order = torch.argsort(probs, descending=True)[:top_k]
    return [{"label": names[i], "score": float(probs[i])} for i in order.tolist()]


def classify_region(model: FalipCLIP, image: Image.Image, labels: Sequence[str], box: Optional[Box] = None,
                    mask: Optional[np.ndarray] = None, prompt: str = "falip", templates="photo",
                    config: Optional[foveal.FovealConfig] = None, top_k: Optional[int] = None) -> list[dict]:
    """Which label fits the region (or the whole image without one): [{"label", "score"}], best first."""
    if not labels:
        raise InputError("the label list is empty: give at least one label")
    regions = [{"box": box, "mask": mask}] if box is not None or mask is not None else []
    images, bias = region_batch(model, image, regions, prompt, config)
    feats = _encode(model, images, bias, config)
    text = text_features(model, build_prompts(labels, templates))
    probs = (model.logit_scale * feats[0] @ text.T).softmax(dim=-1)
    return _ranked(list(labels), probs, top_k)


def rank_boxes(model: FalipCLIP, image: Image.Image, boxes: Sequence[Box], caption: str, prompt: str = "falip",
               config: Optional[foveal.FovealConfig] = None) -> list[dict]:
    """Which box the caption refers to: [{"label": "x0,y0,x1,y1", "score"}], best first (one batched pass)."""
    if not boxes:
        raise InputError("no candidate boxes: give at least one with --boxes")
    if not caption.strip():
        raise InputError("the caption is empty")
    images, bias = region_batch(model, image, [{"box": b} for b in boxes], prompt, config)
    feats = _encode(model, images, bias, config)
    with torch.inference_mode():
        text = model.encode_text([caption], normalize=True)[0]
    probs = (model.logit_scale * feats @ text).softmax(dim=-1)
    names = [",".join(f"{v:g}" for v in b) for b in boxes]
    return _ranked(names, probs)
