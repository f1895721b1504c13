"""Foveal attention weights on a ViT patch grid (FALIP).

A region of attention becomes a box of patch tokens; inside it the weights are the paper's Gaussian
``R_ij = exp(-((i-(H'-1)/2)² + (j-(W'-1)/2)²) / (2σ²))`` min-max normalised to
``α·(R - min R + ε)/(max R - min R + ε)``; outside it they are zero. The result is the `cls_bias` of
`FalipCLIP.encode_image`. Regions come from boxes or masks in original-image pixels (mapped through the
model's resize / crop), or from projected occupancy (point clouds).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError, shown

Grid = tuple[int, int]
MODES = ("box", "coverage")


# the values of each FALIP number where the weights and the biased attention stay finite in every precision (the
# paper's alpha 0.2, sigma 100; beyond these no setting changes anything but the rounding, or overflows)
FOVEAL_RANGES = {"alpha": (0.0, 100.0), "sigma": (1e-3, 1e6), "eps": (1e-12, 1.0), "amplify": (-100.0, 100.0)}


@dataclass
class FovealConfig:
    """FALIP settings; the defaults are the paper's."""

    alpha: float = 0.2  # peak weight added to the CLS query's logits
    sigma: float = 100.0  # Gaussian width in tokens (wide: the min-max normalisation sets the range)
    eps: float = 1e-6  # keeps the normalisation finite for one-token boxes
    layers: Optional[Sequence[int]] = (-4, -3, -2, -1)  # blocks that get the bias: the last four
    heads: Optional[Sequence[int]] = None  # attention heads that get the bias: all
    amplify: float = 0.0  # γ of the head-sensitivity rule; 0 is plain FALIP
    mode: str = "box"  # occupancy -> weights: "box" (Gaussian over the token box) or "coverage" (times coverage)

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"unknown foveal mode '{shown(self.mode)}': choose one of {', '.join(MODES)}")
        for name, (lo, hi) in FOVEAL_RANGES.items():
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not (ok and lo <= value <= hi):
                raise InputError(f"foveal {name} must be a number from {lo:g} to {hi:g}, got {shown(repr(value))}")
            setattr(self, name, float(value))
        for name in ("layers", "heads"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or \
                    not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
                raise InputError(f"foveal {name} must be a list of block or head indices (integers) or null, "
                                 f"got {shown(value)}")
            setattr(self, name, tuple(value))

    def encoder_kwargs(self) -> dict:
        """Keyword arguments for `FalipCLIP.encode_image` besides the bias."""
        return {"layers": self.layers, "heads": self.heads, "amplify": self.amplify}


def from_token_boxes(boxes: torch.Tensor, grid: Grid, config: Optional[FovealConfig] = None,
                     reference: bool = False) -> torch.Tensor:
    """Weights (N, gh, gw) for token boxes (N, 4) = (row0, col0, row1, col1), ends exclusive.

    Empty boxes (row1 <= row0 or col1 <= col0) give all-zero weights. reference=True computes them as FALIP's
    ``generate_gaussian_mask_region`` does: the Gaussian of the distance in float64, stored in float32, and the
    min-max normalisation in float32 in its order, ``(R - min + eps) / (max + eps - min) · alpha`` (the Gaussian
    is so flat that float32 changes the weights by up to 1e-3 of alpha).
    """
    cfg = config or FovealConfig()
    boxes = torch.as_tensor(boxes).reshape(-1, 4).to(torch.float64)
    gh, gw = grid
    r0, c0, r1, c1 = boxes.unbind(-1)
    rows = torch.arange(gh, dtype=torch.float64, device=boxes.device)
    cols = torch.arange(gw, dtype=torch.float64, device=boxes.device)
    di = rows[None, :] - r0[:, None] - (r1 - r0 - 1)[:, None] / 2  # (N, gh) offset from the box centre
    dj = cols[None, :] - c0[:, None] - (c1 - c0 - 1)[:, None] / 2
    inside = ((rows[None] >= r0[:, None]) & (rows[None] < r1[:, None]))[:, :, None] & \
             ((cols[None] >= c0[:, None]) & (cols[None] < c1[:, None]))[:, None, :]
    if reference:
        distance = torch.sqrt(di[:, :, None] ** 2 + dj[:, None, :] ** 2)
        r = torch.exp(-0.5 * (distance / cfg.sigma) ** 2).float()
    else:
        r = torch.exp(-(di[:, :, None] ** 2 + dj[:, None, :] ** 2) / (2 * cfg.sigma ** 2))
    r_min = torch.where(inside, r, torch.inf).amin(dim=(1, 2), keepdim=True)
    r_max = torch.where(inside, r, -torch.inf).amax(dim=(1, 2), keepdim=True)
    if reference:
        weights = (r - r_min + cfg.eps) / (r_max + cfg.eps - r_min) * cfg.alpha
    else:
        weights = cfg.alpha * (r - r_min + cfg.eps) / (r_max - r_min + cfg.eps)
    return torch.where(inside, weights, 0.0).float()


def token_box(occupied: torch.Tensor) -> torch.Tensor:
    """Bounding token boxes (N, 4) of boolean patch grids (N, gh, gw); empty grids give (0, 0, 0, 0)."""
    rows = occupied.any(dim=2)
    cols = occupied.any(dim=1)

    def span(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(mask.shape[1], device=mask.device)
        first = torch.where(mask, idx, mask.shape[1]).amin(dim=1)
        last = torch.where(mask, idx, -1).amax(dim=1) + 1
        empty = ~mask.any(dim=1)
        return first.masked_fill(empty, 0), last.masked_fill(empty, 0)

    r0, r1 = span(rows)
    c0, c1 = span(cols)
    return torch.stack([r0, c0, r1, c1], dim=1)


def pool_to_grid(occupancy: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Occupied fraction (N, gh, gw) of each patch for boolean images (N, S, S)."""
    occ = occupancy.reshape(-1, 1, *occupancy.shape[-2:]).float()
    return F.adaptive_avg_pool2d(occ, grid).reshape(-1, *grid)


def from_occupancy(occupancy: torch.Tensor, grid: Grid, config: Optional[FovealConfig] = None,
                   mode: Optional[str] = None) -> torch.Tensor:
    """Weights (..., gh, gw) for boolean occupancy images (..., S, S) of what each view's object covers.

    mode "box": the Gaussian over the bounding box of occupied patches; "coverage": that Gaussian times each
    patch's occupied fraction. A view with nothing occupied gets zero weights (no bias).
    """
    cfg = config or FovealConfig()
    mode = mode or cfg.mode
    if mode not in MODES:
        raise InputError(f"unknown foveal mode '{mode}': choose one of {', '.join(MODES)}")
    lead = occupancy.shape[:-2]
    coverage = pool_to_grid(occupancy, grid)
    weights = from_token_boxes(token_box(coverage > 0), grid, cfg).to(coverage.device)
    if mode == "coverage":
        weights = weights * coverage
    return weights.reshape(*lead, *grid)


# ---- regions in original-image pixels --------------------------------------------------------------------
@dataclass(frozen=True)
class Geometry:
    """How open_clip's eval transform maps an image of (width, height) onto the model input.

    model_x = x * scale_x - left and model_y = y * scale_y - top, for continuous pixel-edge coordinates.
    """

    width: int
    height: int
    out_w: int
    out_h: int
    scale_x: float
    scale_y: float
    left: float
    top: float

    @classmethod
    def from_preprocess(cls, width: int, height: int, preprocess_cfg: dict) -> "Geometry":
        size = preprocess_cfg.get("size", 224)
        th, tw = (size, size) if isinstance(size, int) else tuple(size)
        mode = preprocess_cfg.get("resize_mode", "shortest")
        if mode == "squash":
            return cls(width, height, tw, th, tw / width, th / height, 0.0, 0.0)
        if mode == "shortest" and th == tw:  # torchvision Resize(int): shortest edge -> size, long edge truncated
            if width <= height:
                new_w, new_h = th, int(th * height / width)
            else:
                new_w, new_h = int(th * width / height), th
        else:  # open_clip ResizeKeepRatio: shortest (longest=0) or longest (longest=1) edge fits
            ratio_h, ratio_w = height / th, width / tw
            ratio = max(ratio_h, ratio_w) if mode == "longest" else min(ratio_h, ratio_w)
            new_h, new_w = round(height / ratio), round(width / ratio)
        # CenterCrop / CenterCropOrPad: pad smaller edges first, then crop at the rounded centre offset
        left = -((tw - new_w) // 2) if new_w < tw else int(round((new_w - tw) / 2.0))
        top = -((th - new_h) // 2) if new_h < th else int(round((new_h - th) / 2.0))
        return cls(width, height, tw, th, new_w / width, new_h / height, float(left), float(top))

    def map_box(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = box
        return (x0 * self.scale_x - self.left, y0 * self.scale_y - self.top,
                x1 * self.scale_x - self.left, y1 * self.scale_y - self.top)

    def map_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """Boolean (H, W) mask in original pixels -> (out_h, out_w) mask in model-input pixels (nearest)."""
        new_h = round(self.height * self.scale_y)
        new_w = round(self.width * self.scale_x)
        resized = F.interpolate(mask[None, None].float(), size=(new_h, new_w), mode="nearest")[0, 0]
        out = torch.zeros(self.out_h, self.out_w, dtype=resized.dtype, device=resized.device)
        top, left = int(self.top), int(self.left)
        src_r0, src_c0 = max(top, 0), max(left, 0)
        dst_r0, dst_c0 = max(-top, 0), max(-left, 0)
        h = min(new_h - src_r0, self.out_h - dst_r0)
        w = min(new_w - src_c0, self.out_w - dst_c0)
        out[dst_r0:dst_r0 + h, dst_c0:dst_c0 + w] = resized[src_r0:src_r0 + h, src_c0:src_c0 + w]
        return out > 0.5


BOX_FORMAT = "x0,y0,x1,y1"  # pixels, x to the right, y down, ends exclusive


def _box_text(box) -> str:
    text = box if isinstance(box, str) else repr(box)
    text = " ".join(text.split())
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _real(value) -> float:
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range
        return math.inf


def parse_box(box) -> tuple[float, float, float, float]:
    """Four finite numbers (x0, y0, x1, y1) from ``"x0,y0,x1,y1"`` or a sequence / array / tensor of four reals.

    The one rule for reading a box; `check_box` adds the image's bounds. Raises InputError otherwise.
    """
    bad = InputError(f"box {_box_text(box)} must be four numbers {BOX_FORMAT}")
    if isinstance(box, str):
        try:
            values = [float(v) for v in box.split(",")]
        except ValueError:
            raise bad from None
    else:
        if isinstance(box, torch.Tensor):
            box = box.detach().cpu().tolist()
        elif isinstance(box, np.ndarray):
            box = box.tolist()
        try:
            values = list(box)
        except TypeError:
            raise bad from None
        if not all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                   for v in values):
            raise bad
        values = [_real(v) for v in values]
    if len(values) != 4:
        raise bad
    if not all(math.isfinite(v) for v in values):
        raise InputError(f"box {_box_text(box)} must be four finite numbers {BOX_FORMAT}")
    x0, y0, x1, y1 = values
    return x0, y0, x1, y1


def check_box(box, width: int, height: int) -> tuple[float, float, float, float]:
    """A box (`parse_box`'s forms) in pixels that lies inside a width × height image and is not empty."""
    x0, y0, x1, y1 = parse_box(box)
    if x1 <= x0 or y1 <= y0:
        raise InputError(f"box {x0:g},{y0:g},{x1:g},{y1:g} is empty: need x0 < x1 and y0 < y1")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise InputError(f"box {x0:g},{y0:g},{x1:g},{y1:g} lies outside the {width}x{height} image: "
                         f"need 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height}")
    return x0, y0, x1, y1


def _patch_size(image_size: Grid, grid: Grid) -> tuple[float, float]:
    return image_size[0] / grid[0], image_size[1] / grid[1]


BOX_RULES = ("overlap", "reclip")  # which patches a box takes and how its weights are computed: see from_box


def _reclip_span(v0: float, v1: float, patch: float) -> tuple[int, int]:
    """ReCLIP / FALIP's token span: first ``max(ceil(v0 / p), 1) - 1``, end ``max(ceil(v1 / p), 1)``."""
    return max(math.ceil(v0 / patch), 1) - 1, max(math.ceil(v1 / patch), 1)


def box_to_tokens(model_box: Sequence[float], image_size: Grid, grid: Grid,
                  rule: str = "overlap") -> tuple[int, int, int, int]:
    """Token box (row0, col0, row1, col1) of a model-input box (x0, y0, x1, y1).

    rule "overlap": the patches the box overlaps (coordinates rounded to 1e-6 against float noise); "reclip":
    FALIP's reference rule (``transform_box2token_base``), exact floats, under which a box starting exactly on a
    patch edge also takes the patch before it.
    """
    if rule not in BOX_RULES:
        raise InputError(f"unknown box rule '{rule}': choose one of {', '.join(BOX_RULES)}")
    ph, pw = _patch_size(image_size, grid)
    h, w = image_size
    x0, y0, x1, y1 = model_box if rule == "reclip" else (round(v, 6) for v in model_box)
    x0, x1 = max(x0, 0.0), min(x1, float(w))
    y0, y1 = max(y0, 0.0), min(y1, float(h))
    if x1 <= x0 or y1 <= y0:
        raise InputError("the box lies outside the part of the image the model sees (its centre crop)")
    if rule == "reclip":
        (r0, r1), (c0, c1) = _reclip_span(y0, y1, ph), _reclip_span(x0, x1, pw)
        return r0, c0, r1, c1
    return math.floor(y0 / ph), math.floor(x0 / pw), math.ceil(y1 / ph), math.ceil(x1 / pw)


def from_box(box: Sequence[float], image_wh: tuple[int, int], preprocess_cfg: dict, grid: Grid,
             config: Optional[FovealConfig] = None, rule: str = "overlap") -> torch.Tensor:
    """Weights (gh, gw) for a box (x0, y0, x1, y1) in pixels of the original image of size (width, height).

    rule: "overlap" (the patches the box overlaps) or "reclip" (FALIP's reference code: its token rule of
    `box_to_tokens` and its float32 weights of `from_token_boxes`; with a "squash" preprocess_cfg, its REC protocol).
    """
    width, height = image_wh
    geo = Geometry.from_preprocess(width, height, preprocess_cfg)
    tokens = box_to_tokens(geo.map_box(check_box(box, width, height)), (geo.out_h, geo.out_w), grid, rule)
    return from_token_boxes(torch.tensor([tokens]), grid, config, reference=rule == "reclip")[0]


def from_region(mask: Union[np.ndarray, torch.Tensor], preprocess_cfg: dict, grid: Grid,
                config: Optional[FovealConfig] = None, mode: Optional[str] = None) -> torch.Tensor:
    """Weights (gh, gw) for a boolean region mask (H, W) of the original image."""
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).bool()
    if mask.ndim != 2:
        raise InputError(f"a region mask must be 2-D (H, W), got shape {tuple(mask.shape)}")
    if not mask.any():
        raise InputError("the region mask is empty: mark the region with non-zero pixels")
    geo = Geometry.from_preprocess(mask.shape[1], mask.shape[0], preprocess_cfg)
    model_mask = geo.map_mask(mask)
    if not model_mask.any():
        raise InputError("the region lies outside the part of the image the model sees (its centre crop)")
    return from_occupancy(model_mask[None], grid, config, mode)[0]
