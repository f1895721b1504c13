"""Zero-shot part segmentation of point clouds with CLIP's dense patch tokens, as PointCLIP V2's ``zeroshot_seg``.

One path, each step public:

1. `project_parts` (the projection method ``"pointclip_v2_parts"`` of `pointfalip.projection.project`, which
   `PartSegmenter` goes through): every cloud is turned into V views (PointCLIP V2's ten), voxelised into a
   224 x 224 x 112 grid (each voxel holds its point's depth value), densified with an 11 x 11 x 5 max-pool,
   smoothed with a 5 x 5 x 5 Gaussian, reduced with a max over depth, divided by the image's maximum and
   inverted (background 1); then cropped to ``[20:204]`` and resized to 224 (no CLIP mean/std normalisation).
   Every point keeps its pixel and a visibility flag: seen where the smoothed response at its own depth is
   within 0.1 of the image's (normalised) value at its pixel, i.e. nothing much nearer the viewer covers it.
2. `pixel_logits`: ``100 · tokens · textᵀ`` on the patch grid, from unit-norm patch tokens (after ``ln_post``
   and the projection) and unit-norm part text features.
3. `smooth_and_upsample`: replication pad (2, 3, 2, 3), 6 x 6 mean (stride 1: the grid keeps its size),
   bilinear upsample to the image size (``align_corners=False``, as V2's ``nn.Upsample``).
4. `point_scores`: each point reads every view's map at its pixel; the views are summed with weight x
   visibility. `PartSegmenter` runs the four steps; its ``segment`` is the argmax over parts.

Settings come from a parts preset (``configs/parts/*.yaml``, `load_part_preset`): the projection, the dense
features (``tokens``: V2's; ``clearclip``), the templates and the view weights. `PartSegmenter.mode_scores` gives
both dense modes from one projection and one pass of the blocks before the last (`pointfalip.evaluate_parts`'s
``--compare``).

Coordinates: a view turns a point ``p`` (row vector) into ``p @ R1.T @ R2.T @ R3.T - t`` (V2's three Euler
rotations and translation). In that frame the image **row** grows with ``x``, the **column** with ``y``, and
``z`` is depth: the point with the largest ``z`` of a pixel is the one the viewer sees (darkest in the image).

V2's code reads each point at ``(col, row)`` instead of ``(row, col)`` (its ``point_loc_in_img`` is
``(yy, xx)`` of a grid it transposed); its visibility test and its back-projection both use that transposed
pixel. ``PartProjectionConfig(v2_transposed_lookup=True)`` reproduces it exactly (to compare with V2's
numbers); the default looks points up where they are drawn.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import io as _io
from . import presets as _presets
from . import projection as _projection
from . import prompts as _prompts
from .errors import InputError
# the part metrics lived here: re-exported from pointfalip.metrics for the old import paths
from .metrics import class_miou, instance_miou, metrics_from_shapes, part_iou, segmentation_metrics, shape_miou
from .metrics import mean_point_accuracy as accuracy
from .model import DENSE_MODES
from .presets import PRECISION_CHOICES, read_data_json
from .projection import (DepthViews, ViewSet, _as_points, _integer, _real, _sliding_max, check_translation,
                         check_view_weights, euler_to_matrix, gaussian_taps, view_frames)

log = logging.getLogger(__name__)

DATA_FILE = "shapenetpart.json"
DEFAULT_PRESET = "pointfalip_parts"  # V2 with points read where drawn; "pointclip_v2_parts" is V2 exactly
PRESET_KIND = "parts"  # pointfalip.presets kind: configs/parts/<name>.yaml
ENCODER_BATCH = 64  # images per encoder call
_GROUP_IMAGES = 256  # views projected and encoded together: bounds the memory of the images
_CPU_CHUNK_FLOATS = 1 << 21  # voxels a projection chunk may hold on the CPU (8 MiB a buffer: cache-sized)
_GPU_CHUNK_FLOATS = 1 << 27  # the same on other devices (512 MiB a buffer)

Euler = tuple[tuple[float, float, float], ...]

__all__ = [
    "PartPrediction",
    "PartPreset",
    "PartProjectionConfig",
    "PartSegmenter",
    "PartViews",
    "accuracy",
    "category_labels",
    "category_parts",
    "class_miou",
    "instance_miou",
    "list_categories",
    "list_part_presets",
    "load_part_preset",
    "metrics_from_shapes",
    "part_iou",
    "part_templates",
    "pixel_logits",
    "point_scores",
    "project_parts",
    "resolve_parts",
    "segmentation_metrics",
    "shape_miou",
    "smooth_and_upsample",
]


# ---------------------------------------------------------------------------------------------- projection

@dataclass(frozen=True)
class PartProjectionConfig:
    """PointCLIP V2's part-segmentation projection (``zeroshot_seg/realistic_projection.py`` and ``main.py``).

    Angles are Euler triples in degrees, ``R = Rx(a) Ry(b) Rz(c)``, one triple a view in each of the three
    rotations (applied in order). Padding of the max-pool and of the Gaussian is 'same' (half the window).
    """

    # four views around the vertical axis tilted 45°, the same four untilted, then top and bottom (V2's _views)
    view_euler: Euler = ((0, 0, 90), (90, 0, 90), (180, 0, 90), (270, 0, 90),
                         (0, 0, 90), (90, 0, 90), (180, 0, 90), (270, 0, 90),
                         (0, -90, 90), (0, 90, 90))
    # second rotation "to reveal more surface": 45° about x for the first four, 12° (π/15) for top and bottom
    bias_euler: Euler = ((45, 0, 0),) * 4 + ((0, 0, 0),) * 4 + ((12, 0, 0),) * 2
    # third rotation: 20° (π/9) about y for the ring views, 12° (π/15) for top and bottom (V2's _views3)
    bias2_euler: Euler = ((0, 20, 0),) * 8 + ((0, 12, 0),) * 2
    translation: tuple[float, float, float] = (-0.5, -0.5, -1.5)  # subtracted after the rotations (V2's TRANS)
    resolution: int = 224  # side of the voxel grid's image plane and of the raw image, pixels
    depth: int = 112  # depth bins of the voxel grid; values are clipped to [1, depth - 2]
    obj_ratio: float = 0.7  # share of the image the cloud's largest extent spans along rows and columns
    depth_bias: float = 0.3  # offset added to the normalised depth before binning
    pool_size: int = 11  # rows and columns of the max-pool window that densifies the grid
    pool_depth: int = 5  # depth of that window
    gaussian_size: int = 5  # rows and columns of the Gaussian smoothing window
    gaussian_depth: int = 5  # depth of that window
    gaussian_sigma: float = 1.0  # its standard deviation along rows and columns, in pixels
    gaussian_depth_sigma: float = 2.0  # its standard deviation along depth, in bins
    seen_tolerance: float = 0.1  # a point is seen where |image - grid at the point's depth| < this (normalised)
    crop: tuple[int, int] = (20, 204)  # rows and columns [start, stop) of the raw image kept before the resize
    image_size: int = 224  # side of the images the encoder gets (bilinear resize, align_corners=True)
    v2_transposed_lookup: bool = False  # True: look points up at (col, row) as V2's code does (see the module doc)
    occupancy_tolerance: float = 1e-6  # DepthViews.occupancy: a pixel is covered where its value < 1 - this

    def __post_init__(self) -> None:
        for name in ("resolution", "depth", "pool_size", "pool_depth", "gaussian_size", "gaussian_depth",
                     "image_size"):
            _integer(self, name, 1)
        for name in ("obj_ratio", "depth_bias", "gaussian_sigma", "gaussian_depth_sigma", "seen_tolerance",
                     "occupancy_tolerance"):
            _real(self, name)  # finite numbers: sizes and bins are derived from them
        if isinstance(self.v2_transposed_lookup, (bool, np.bool_)):
            object.__setattr__(self, "v2_transposed_lookup", bool(self.v2_transposed_lookup))
        else:
            raise InputError(f"PartProjectionConfig.v2_transposed_lookup must be true or false, "
                             f"got {self.v2_transposed_lookup!r}")
        for name in ("pool_size", "pool_depth", "gaussian_size", "gaussian_depth"):
            if getattr(self, name) % 2 != 1:
                raise InputError(f"PartProjectionConfig.{name} must be odd, got {getattr(self, name)}")
        if self.resolution < 3 or self.depth < 4:
            raise InputError("PartProjectionConfig needs resolution >= 3 and depth >= 4")
        rotations = []
        for name in ("view_euler", "bias_euler", "bias2_euler"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.ndim != 2 or arr.shape[1] != 3 or arr.shape[0] == 0 or not np.isfinite(arr).all():
                raise InputError(f"PartProjectionConfig.{name} must be a list of finite [x, y, z] angles in degrees")
            object.__setattr__(self, name, tuple(tuple(float(a) for a in row) for row in arr))
            rotations.append(arr.shape[0])
        if len(set(rotations)) != 1:
            raise InputError(f"PartProjectionConfig: view_euler, bias_euler and bias2_euler need one triple a view, "
                             f"got {rotations}")
        object.__setattr__(self, "translation", check_translation(self.translation, "PartProjectionConfig"))
        crop = self.crop
        if isinstance(crop, (str, bytes)) or not isinstance(crop, Sequence) or len(crop) != 2 or not all(
                isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in crop):
            raise InputError(f"PartProjectionConfig.crop must be two integers [start, stop), got {crop!r}")
        lo, hi = (int(c) for c in crop)
        if not 0 <= lo < hi <= self.resolution:
            raise InputError(f"PartProjectionConfig.crop must satisfy 0 <= start < stop <= resolution, "
                             f"got {self.crop}")
        object.__setattr__(self, "crop", (lo, hi))
        if not 0 < self.obj_ratio <= 1:
            raise InputError(f"PartProjectionConfig.obj_ratio must be in (0, 1], got {self.obj_ratio}")
        if self.depth_bias < 0:
            raise InputError(f"PartProjectionConfig.depth_bias must be >= 0, got {self.depth_bias}")
        if not (self.gaussian_sigma > 0 and self.gaussian_depth_sigma > 0 and self.seen_tolerance > 0):
            raise InputError("PartProjectionConfig: the Gaussian sigmas and seen_tolerance must be positive")
        if not 0 <= self.occupancy_tolerance < 1:
            raise InputError(f"PartProjectionConfig.occupancy_tolerance must be in [0, 1), "
                             f"got {self.occupancy_tolerance}")

    @property
    def num_views(self) -> int:
        return len(self.view_euler)

    @classmethod
    def from_dict(cls, values: Mapping) -> "PartProjectionConfig":
        """Build from a mapping of field names (unknown keys raise, missing ones keep their defaults)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown part projection settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    def rotations(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The three rotations of every view, ``(V, 3, 3)`` float32 each, world to view frame."""
        return tuple(euler_to_matrix(torch.tensor(np.radians(np.asarray(angles, dtype=np.float64)),
                                                  dtype=torch.float32))
                     for angles in (self.view_euler, self.bias_euler, self.bias2_euler))


class PartViews(NamedTuple):
    """Projected views of a batch of clouds, with every point's pixel and visibility in each view."""

    images: torch.Tensor  # (B, V, 3, S, S) float32 in [0, 1], background 1: what the encoder gets (no mean/std)
    raw_images: torch.Tensor  # (B, V, R, R) float32: the image before the crop and the resize
    point_pixels: torch.Tensor  # (B, V, N, 2) int64 (row, col) in the S x S image
    raw_point_pixels: torch.Tensor  # (B, V, N, 2) int64 (row, col) in the raw R x R image
    visible: torch.Tensor  # (B, V, N) bool: the point is seen in the view


def _valid_correlate(x: torch.Tensor, taps: Sequence[float], dim: int) -> torch.Tensor:
    """Correlation with ``taps`` along ``dim`` over every full window (no padding)."""
    n = x.shape[dim] - len(taps) + 1
    out = x.narrow(dim, 0, n) * taps[0]
    for j in range(1, len(taps)):
        out.add_(x.narrow(dim, j, n), alpha=taps[j])
    return out


def _reach(cfg: PartProjectionConfig) -> tuple[int, int]:
    """How far (rows and columns, depth bins) a point's response spreads through the pool and the Gaussian."""
    return cfg.pool_size // 2 + cfg.gaussian_size // 2, cfg.pool_depth // 2 + cfg.gaussian_depth // 2


def _box(index: torch.Tensor, reach: int, size: int) -> tuple[int, int]:
    """``[start, stop)`` of the cells within ``reach`` of any ``index``, inside ``[0, size)``."""
    return max(0, int(index.min()) - reach), min(size, int(index.max()) + reach + 1)


def _write_last(grid: torch.Tensor, index: torch.Tensor, value: torch.Tensor) -> None:
    """``grid[i, index[i, j]] = value[i, j]`` in point order: of the points sharing a cell the last one stays.

    V2's ``index_put`` keeps one of them (the last written, on the CPU); this is that choice, deterministic.
    """
    index, order = index.sort(dim=1, stable=True)
    last = torch.ones_like(index, dtype=torch.bool)
    last[:, :-1] = index[:, 1:] != index[:, :-1]
    rows = torch.arange(index.shape[0], device=index.device)[:, None].expand_as(index)
    grid[rows[last], index[last]] = value.gather(1, order)[last]


def _render(row: torch.Tensor, col: torch.Tensor, level: torch.Tensor, value: torch.Tensor,
            look_row: torch.Tensor, look_col: torch.Tensor, look_level: torch.Tensor,
            cfg: PartProjectionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw images ``(M, R, R)`` (max-normalised, inverted) and the visibility ``(M, N)`` of a chunk of views.

    Responses are computed in the box of cells that points reach through the pool and the Gaussian (outside
    it they are 0, as in V2's full grid). The grid holds a margin of ``reach`` more cells around the box so that
    both passes run without padding; cells outside the image or the depth range are 0 there, as V2's padding.
    """
    m, res = row.shape[0], cfg.resolution
    reach_xy, reach_z = _reach(cfg)
    (r0, r1), (c0, c1) = _box(row, reach_xy, res), _box(col, reach_xy, res)
    d0, d1 = _box(level, reach_z, cfg.depth)
    shape = (d1 - d0 + 2 * reach_z, r1 - r0 + 2 * reach_xy, c1 - c0 + 2 * reach_xy)
    grid = torch.zeros(m, math.prod(shape), dtype=torch.float32, device=value.device)
    index = ((level - d0 + reach_z) * shape[1] + (row - r0 + reach_xy)) * shape[2] + (col - c0 + reach_xy)
    _write_last(grid, index, value)
    pooled = grid.view(m, *shape)
    for dim, k in ((-1, cfg.pool_size), (-2, cfg.pool_size), (-3, cfg.pool_depth)):
        pooled = _sliding_max(pooled, k, dim)
    # pooled covers the box plus the Gaussian's reach; what lies outside the image or the depth range is padding
    g_xy, g_z = cfg.gaussian_size // 2, cfg.gaussian_depth // 2
    for dim, start, stop, reach, size in ((-1, c0, c1, g_xy, res), (-2, r0, r1, g_xy, res),
                                         (-3, d0, d1, g_z, cfg.depth)):
        before, after = max(0, reach - start), max(0, stop + reach - size)
        if before:
            pooled.narrow(dim, 0, before).zero_()
        if after:
            pooled.narrow(dim, pooled.shape[dim] - after, after).zero_()
    xy = gaussian_taps(cfg.gaussian_size, cfg.gaussian_sigma)
    smooth = pooled
    for dim, taps in ((-1, xy), (-2, xy), (-3, gaussian_taps(cfg.gaussian_depth, cfg.gaussian_depth_sigma))):
        smooth = _valid_correlate(smooth, taps, dim)
    db, hb, wb = smooth.shape[1:]
    canvas = smooth.new_zeros(m, res, res)
    canvas[:, r0:r1, c0:c1] = smooth.amax(dim=1)
    peak = canvas.amax(dim=(-2, -1))[:, None]
    inside = ((look_row >= r0) & (look_row < r1) & (look_col >= c0) & (look_col < c1)
              & (look_level >= d0) & (look_level < d1))
    flat = ((look_level - d0).clamp(0, db - 1) * hb + (look_row - r0).clamp(0, hb - 1)) * wb \
        + (look_col - c0).clamp(0, wb - 1)
    response = torch.where(inside, smooth.reshape(m, -1).gather(1, flat), torch.zeros_like(value))
    at_pixel = canvas.view(m, -1).gather(1, look_row * res + look_col)
    seen = ((1 - at_pixel / peak) - (1 - response / peak)).abs() < cfg.seen_tolerance
    return 1 - canvas / peak[:, :, None], seen


def _chunk_views(m: int, voxels: int, device: torch.device) -> int:
    budget = _CPU_CHUNK_FLOATS if device.type == "cpu" else _GPU_CHUNK_FLOATS
    return max(1, min(m, budget // max(1, voxels)))


@torch.no_grad()
def project_parts(points, config: Optional[PartProjectionConfig] = None) -> PartViews:
    """Project clouds into PointCLIP V2's part-segmentation views, with each point's pixel and visibility.

    The projection method ``"pointclip_v2_parts"`` of `pointfalip.projection.project` is this function (its
    `DepthViews` leave out the raw images and pixels).

    Args:
        points: ``(N, 3)`` or ``(B, N, 3)`` coordinates (any N), numpy array or torch tensor; computed in float32
            on the tensor's device. Each view re-centres and rescales its cloud, so scale and position do not
            matter; the views expect y-up clouds (ShapeNetPart's h5 files are).
        config: settings; ``None`` is PointCLIP V2's.

    Returns:
        `PartViews`. ``point_pixels`` is V2's ``ceil((raw - crop_start) * S / (crop_stop - crop_start))`` of the
        raw pixel, clamped into the image.
    """
    cfg = config if config is not None else PartProjectionConfig()
    if not isinstance(cfg, PartProjectionConfig):
        raise InputError(f"config must be a PartProjectionConfig, got {type(cfg).__name__}")
    return _project(_as_points(points), cfg.rotations(), cfg)


@_projection.register_projection(_projection.PART_METHOD, PartProjectionConfig, default_views=None)
def _project_views(points: torch.Tensor, views: Optional[ViewSet], image_size: int,
                   cfg: PartProjectionConfig) -> DepthViews:
    """The registered projection ``"pointclip_v2_parts"``: `project_parts` as `DepthViews`.

    ``views`` ``None``: the settings' three rotations a view; a `ViewSet`: its rotation, then its bias rotation.
    ``image_size`` replaces the settings' ``image_size``.
    """
    if image_size != cfg.image_size:
        cfg = dataclasses.replace(cfg, image_size=image_size)
    rotations = cfg.rotations() if views is None else (views.rotations, views.bias_rotations)
    out = _project(points, rotations, cfg)
    occupancy = out.images[:, :, 0] < 1 - cfg.occupancy_tolerance
    return DepthViews(out.images, occupancy, out.point_pixels, out.visible)


def _project(pts: torch.Tensor, rotations: Sequence[torch.Tensor], cfg: PartProjectionConfig) -> PartViews:
    """`project_parts` of validated clouds ``(B, N, 3)`` float32 with the views' rotations ``(V, 3, 3)`` each."""
    b, n, _ = pts.shape
    v, res, size = rotations[0].shape[0], cfg.resolution, cfg.image_size
    frames = view_frames(pts, rotations, cfg.translation)
    row, col, level, value = _projection.voxel_coordinates(frames, cfg.resolution, cfg.depth, cfg.obj_ratio,
                                                           cfg.depth_bias)
    look_row, look_col = (col, row) if cfg.v2_transposed_lookup else (row, col)
    look_level = level.clamp(1, cfg.depth - 3)  # V2 clips the bin it reads to [1, depth - 3]
    m = frames.shape[0]
    reach_xy, reach_z = _reach(cfg)
    boxes = ((_box(row, reach_xy, res), reach_xy), (_box(col, reach_xy, res), reach_xy),
             (_box(level, reach_z, cfg.depth), reach_z))
    step = _chunk_views(m, math.prod(hi - lo + 2 * r for (lo, hi), r in boxes), pts.device)
    raw = torch.empty(m, res, res, dtype=torch.float32, device=pts.device)
    visible = torch.empty(m, n, dtype=torch.bool, device=pts.device)
    for start in range(0, m, step):
        part = slice(start, min(m, start + step))
        raw[part], visible[part] = _render(row[part], col[part], level[part], value[part], look_row[part],
                                           look_col[part], look_level[part], cfg)
    lo, hi = cfg.crop
    images = F.interpolate(raw[:, None, lo:hi, lo:hi], size=(size, size), mode="bilinear", align_corners=True)
    raw_pixels = torch.stack([look_row, look_col], dim=-1)
    pixels = ((raw_pixels.float() - lo) * float(size) / float(hi - lo)).ceil().clamp(0, size - 1).long()
    return PartViews(images.expand(-1, 3, -1, -1).reshape(b, v, 3, size, size), raw.view(b, v, res, res),
                     pixels.view(b, v, n, 2), raw_pixels.view(b, v, n, 2), visible.view(b, v, n))


# ---------------------------------------------------------------------------------------------- scoring

def pixel_logits(tokens: torch.Tensor, text: torch.Tensor, grid: Sequence[int], scale: float = 100.0) -> torch.Tensor:
    """Part logits on the patch grid: ``scale · tokens · textᵀ``, ``(B·V, C, gh, gw)``.

    tokens: ``(B·V, gh*gw, D)`` unit-norm patch tokens in row-major patch order; text: ``(C, D)`` unit-norm part
    features; scale: V2's 100. (V2 multiplies in fp16; this stays in the tokens' float dtype.)
    """
    gh, gw = (int(g) for g in grid)
    if tokens.ndim != 3 or tokens.shape[1] != gh * gw:
        raise InputError(f"tokens must be (B·V, {gh * gw}, D) for a {gh}x{gw} grid, got {tuple(tokens.shape)}")
    if text.ndim != 2 or text.shape[1] != tokens.shape[2]:
        raise InputError(f"text features must be (C, {tokens.shape[2]}), got {tuple(text.shape)}")
    logits = scale * tokens @ text.to(tokens.dtype).T  # (B·V, gh*gw, C)
    return logits.transpose(1, 2).reshape(tokens.shape[0], text.shape[0], gh, gw)


def smooth_and_upsample(logits: torch.Tensor, size: int = 224, window: int = 6,
                        padding: tuple[int, int, int, int] = (2, 3, 2, 3)) -> torch.Tensor:
    """V2's smoothing of patch logits: replication pad ``(left, right, top, bottom)``, ``window`` x ``window``
    mean with stride 1, bilinear upsample to ``size`` x ``size`` (``align_corners=False``). ``(K, C, S, S)``."""
    padded = F.pad(logits, padding, mode="replicate")
    smooth = F.avg_pool2d(padded, window, stride=1)
    return F.interpolate(smooth, size=(size, size), mode="bilinear", align_corners=False)


def point_scores(pixel_maps: torch.Tensor, point_pixels: torch.Tensor, visible: torch.Tensor,
                 view_weights: torch.Tensor) -> torch.Tensor:
    """Per-point part scores ``(B, N, C)``: ``Σ_v w_v · seen_vn · map_v[:, row_vn, col_vn]``.

    pixel_maps: ``(B, V, C, S, S)``; point_pixels: ``(B, V, N, 2)`` int (row, col); visible: ``(B, V, N)`` bool;
    view_weights: ``(V,)``.
    """
    b, v, c, s, s2 = pixel_maps.shape
    n = point_pixels.shape[2]
    if point_pixels.shape != (b, v, n, 2) or visible.shape != (b, v, n) or tuple(view_weights.shape) != (v,):
        raise InputError(f"point_scores: shapes do not fit maps {tuple(pixel_maps.shape)}: pixels "
                         f"{tuple(point_pixels.shape)}, visible {tuple(visible.shape)}, weights "
                         f"{tuple(view_weights.shape)}")
    flat = (point_pixels[..., 0] * s2 + point_pixels[..., 1]).long()  # (B, V, N)
    picked = pixel_maps.reshape(b, v, c, s * s2).gather(3, flat[:, :, None, :].expand(b, v, c, n))  # (B, V, C, N)
    weight = view_weights.to(pixel_maps)[None, :, None] * visible.to(pixel_maps)  # (B, V, N)
    return torch.einsum("bvcn,bvn->bnc", picked, weight)


# ---------------------------------------------------------------------------------------------- part names

def _data() -> dict:
    return read_data_json(DATA_FILE)


def list_categories() -> list[str]:
    """ShapeNetPart's 16 categories, in its label order."""
    return list(_data()["categories"])


def _category(name: str) -> dict:
    cats = _data()["categories"]
    key = " ".join(str(name).split()).lower()
    if key not in cats:
        raise InputError(f"unknown category '{name}': choose one of {', '.join(cats)}, or give the parts yourself")
    return cats[key]


def category_parts(category: str) -> list[str]:
    """The part names PointCLIP V2 prompts for a ShapeNetPart category (part label i is element i)."""
    return list(_category(category)["parts"])


def category_labels(category: str) -> range:
    """The dataset's part labels of a category (``range(first, first + count)``); local label = label - first."""
    info = _category(category)
    return range(int(info["first_label"]), int(info["first_label"]) + int(info["labels"]))


def part_templates(with_category: bool = True) -> list[str]:
    """The packaged part templates: ``{part}`` and, ``with_category``, ``{category}`` placeholders."""
    return list(_data()["templates"]["category" if with_category else "part"])


def _fill(template: str, part: str, category: Optional[str]) -> str:
    if not isinstance(template, str) or "{part}" not in template:
        raise InputError(f"part template {template!r} has no '{{part}}' placeholder")
    if "{category}" in template and category is None:
        raise InputError(f"part template {template!r} needs a category: give category=...")
    try:
        return template.format(part=part, category=category)
    except (IndexError, KeyError, ValueError) as e:
        raise InputError(f"part template {template!r} may only hold {{part}} and {{category}}: {e}") from e


def _clean_parts(parts: Union[str, Sequence[str]]) -> list[str]:
    if isinstance(parts, str):
        parts = parts.split(",")
    parts = [" ".join(str(p).split()) for p in parts]
    if not parts or not all(parts):
        raise InputError("the part list is empty or holds an empty name: give names like 'back,seat,leg'")
    duplicates = sorted({p for p in parts if parts.count(p) > 1})
    if duplicates:
        raise InputError(f"duplicate parts: {', '.join(duplicates)}")
    return parts


def resolve_parts(parts: Optional[Union[str, Sequence[str]]] = None, category: Optional[str] = None) -> list[str]:
    """The part names to segment: ``parts`` (a list or "a,b,c"), else the ShapeNetPart ``category``'s.

    Raises InputError (one line) for an empty or duplicated list, an unknown category without parts, or neither.
    """
    if category is not None and not " ".join(str(category).split()):
        raise InputError("category is empty")
    if parts is None:
        if category is None:
            raise InputError("give the parts (e.g. 'back,seat,leg') or a ShapeNetPart category")
        return category_parts(category)
    return _clean_parts(parts)


# ---------------------------------------------------------------------------------------------- presets

@dataclass(frozen=True)
class PartPreset:
    """A parts preset (``configs/parts/<name>.yaml``): everything `PartSegmenter` takes besides the model and
    the part names. ``projection.image_size`` is replaced by the model's image size."""

    projection: PartProjectionConfig = field(default_factory=PartProjectionConfig)
    dense: str = "tokens"  # one of model.DENSE_MODES
    templates: Optional[tuple[str, ...]] = None  # None: the packaged part templates (data/shapenetpart.json)
    prompt_file: Optional[str] = None  # {part: [prompts]} JSON instead of templates
    view_weights: Optional[tuple[float, ...]] = None  # one a view; None: all 1 (V2's zero-shot setting)
    up_axis: str = "y"  # up axis of the command line's input clouds
    precision: str = "auto"  # model precision for the command line

    def __post_init__(self) -> None:
        if not isinstance(self.projection, PartProjectionConfig):
            raise InputError("projection must be a mapping of part projection settings")
        if self.dense not in DENSE_MODES:
            raise InputError(f"dense must be one of {', '.join(DENSE_MODES)}, got {self.dense!r}")
        if self.templates is not None:
            chosen = [self.templates] if isinstance(self.templates, str) else self.templates
            if not isinstance(chosen, (list, tuple)) or not chosen or not all(isinstance(t, str) for t in chosen):
                raise InputError("templates must be a non-empty list of strings with '{part}'")
            object.__setattr__(self, "templates", tuple(chosen))
        if self.prompt_file is not None and self.templates is not None:
            raise InputError("give templates or prompt_file, not both")
        if self.view_weights is not None:
            object.__setattr__(self, "view_weights", check_view_weights(self.view_weights))
        if self.up_axis not in _io.UP_AXES:
            raise InputError(f"up_axis must be one of {', '.join(_io.UP_AXES)}, got {self.up_axis!r}")
        if self.precision not in PRECISION_CHOICES:
            raise InputError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r}")


def list_part_presets() -> list[str]:
    """Names of the packaged parts presets (``configs/parts/``)."""
    return _presets.list_presets(PRESET_KIND)


def load_part_preset(preset: Union[str, Path, PartPreset] = DEFAULT_PRESET) -> PartPreset:
    """A `PartPreset` from a packaged name, a user's YAML file, or itself; bad keys or values are one line."""
    if isinstance(preset, PartPreset):
        return preset
    values = _presets.load_preset(PRESET_KIND, preset)
    return _presets.from_mapping(PartPreset, values, f"parts preset '{preset}'")


# ---------------------------------------------------------------------------------------------- segmenter

class PartPrediction(NamedTuple):
    """What `PartSegmenter.predict` computed for a batch of clouds."""

    views: DepthViews  # the projected views, with every point's pixel and visibility
    scores: dict  # dense mode -> (B, N, P) float32 part scores


class PartSegmenter:
    """Zero-shot part segmentation of point clouds (PointCLIP V2's method, with a prompt ensemble).

    parts: part names (a list or "a,b,c"); without them, the category's ShapeNetPart parts. category: the
    object's name, filled into ``{category}`` of the templates (any name when parts are given). preset: a parts
    preset name (`list_part_presets`), YAML file or `PartPreset`; it gives the defaults of every argument below.
    templates: part templates with ``{part}`` (and ``{category}``). prompts: ``{part: [prompt, ...]}`` or a
    prompt file in that layout, instead of templates. view_weights: one a view (preset null: all 1).
    dense: ``"tokens"`` (V2) or ``"clearclip"``. config: the projection; its ``image_size`` must be the model's
    (the preset's is set to the model's). cache_dir: where text features are cached (`prompts.text_features`;
    False disables the cache).
    """

    def __init__(self, model, parts: Optional[Union[str, Sequence[str]]] = None, category: Optional[str] = None,
                 preset: Union[str, Path, PartPreset] = DEFAULT_PRESET, templates: Optional[Sequence[str]] = None,
                 prompts=None, view_weights: Optional[Sequence[float]] = None, dense: Optional[str] = None,
                 config: Optional[PartProjectionConfig] = None, cache_dir=None):
        settings = load_part_preset(preset)
        dense = settings.dense if dense is None else dense
        if dense not in DENSE_MODES:
            raise InputError(f"unknown dense mode '{dense}': choose one of {', '.join(DENSE_MODES)}")
        self.model = model
        self.preset = settings
        self.dense = dense
        self.grid = tuple(model.grid_size)
        side = model.image_size
        if side[0] != side[1]:
            raise InputError(f"part segmentation needs a model with square images, {model.name} takes {side}")
        if config is None:
            config = dataclasses.replace(settings.projection, image_size=side[0])
        self.config = config
        if not isinstance(self.config, PartProjectionConfig):
            raise InputError(f"config must be a PartProjectionConfig, got {type(self.config).__name__}")
        if self.config.image_size != side[0]:
            raise InputError(f"config.image_size is {self.config.image_size} but the model takes {side[0]}")
        self.parts = resolve_parts(parts, category)
        self.category = None if category is None else " ".join(str(category).split())
        if prompts is None and templates is None:
            prompts, templates = settings.prompt_file, settings.templates
        if prompts is not None:
            if templates is not None:
                raise InputError("give templates or prompts, not both")
            table = _prompts.build_prompts(self.parts, prompt_file=_category_prompts(prompts, self.category))
        else:
            chosen = part_templates(self.category is not None) if templates is None else templates
            if isinstance(chosen, str):
                chosen = [chosen]
            chosen = list(chosen)
            if not chosen:
                raise InputError("templates is empty")
            table = {p: [_fill(t, p, self.category) for t in chosen] for p in self.parts}
        self.prompts = table
        self.text = _prompts.text_features(model, table, cache_dir=cache_dir)  # (P, D) unit norm
        v = self.config.num_views
        if view_weights is None:
            view_weights = settings.view_weights
        weights = torch.ones(v) if view_weights is None else torch.tensor(check_view_weights(view_weights, v),
                                                                           dtype=torch.float32)
        self.view_weights = weights.to(model.device)
        log.debug("part segmenter: %d parts, %d prompts, %d views, dense=%s", len(self.parts),
                  sum(len(ps) for ps in table.values()), v, dense)

    def _points(self, points) -> torch.Tensor:
        """Clouds ``(B, N, 3)`` float32 moved to the model's device first and validated there (a GPU checks a
        large cloud much faster than the CPU)."""
        if isinstance(points, torch.Tensor):
            points = points.detach().to(self.model.device)
        else:
            try:
                points = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)).to(self.model.device)
            except (TypeError, ValueError):
                pass  # _as_points says what is wrong
        return _as_points(points)

    def project(self, points) -> DepthViews:
        """``project(points, method="pointclip_v2_parts")`` of ``(N, 3)`` or ``(B, N, 3)`` clouds with these
        settings, on the model's device."""
        return _projection.project(self._points(points), method=_projection.PART_METHOD,
                                   image_size=self.config.image_size, config=self.config)

    def view_tokens(self, images: torch.Tensor, modes: Optional[Sequence[str]] = None) -> dict[str, torch.Tensor]:
        """Unit-norm patch tokens ``(K, gh*gw, D)`` of images ``(K, 3, S, S)`` for each dense mode (default this
        segmenter's), encoded in batches; the blocks before the last run once for all modes."""
        modes = (self.dense,) if modes is None else tuple(dict.fromkeys(modes))
        unknown = [m for m in modes if m not in DENSE_MODES]
        if unknown or not modes:
            raise InputError(f"unknown dense modes {unknown}: choose from {', '.join(DENSE_MODES)}")
        out: dict[str, list] = {m: [] for m in modes}
        with torch.inference_mode():
            for start in range(0, images.shape[0], ENCODER_BATCH):
                for m, tokens in self.model.encode_dense(images[start:start + ENCODER_BATCH], modes).items():
                    out[m].append(tokens)
        return {m: torch.cat(t) for m, t in out.items()}

    def score_views(self, views: DepthViews, tokens: torch.Tensor) -> torch.Tensor:
        """Part scores ``(B, N, P)`` from projected views and their tokens ``(B·V, gh*gw, D)``."""
        b, v = views.visible.shape[:2]
        size = self.config.image_size
        step = max(1, ENCODER_BATCH // v)  # clouds whose score maps are held at once
        out = []
        with torch.no_grad():
            for start in range(0, b, step):
                stop = min(b, start + step)
                logits = pixel_logits(tokens[start * v:stop * v], self.text, self.grid)
                maps = smooth_and_upsample(logits, size).view(stop - start, v, -1, size, size)
                out.append(point_scores(maps, views.point_pixels[start:stop], views.visible[start:stop],
                                        self.view_weights))
        return torch.cat(out)

    def predict(self, points, modes: Optional[Sequence[str]] = None) -> PartPrediction:
        """Views and part scores ``(B, N, P)`` of each dense mode (default this segmenter's) for clouds
        ``(N, 3)`` or ``(B, N, 3)``: one projection and one encoder pass for all modes."""
        views = self.project(points)
        tokens = self.view_tokens(views.images.flatten(0, 1), modes)
        return PartPrediction(views, {m: self.score_views(views, t) for m, t in tokens.items()})

    def mode_scores(self, points, modes: Sequence[str]) -> dict[str, torch.Tensor]:
        """`scores` of each dense mode in ``modes`` from one projection and one encoder pass."""
        pts = self._points(points)
        group = max(1, _GROUP_IMAGES // self.config.num_views)
        out: dict[str, list] = {}
        for start in range(0, pts.shape[0], group):
            for m, s in self.predict(pts[start:start + group], modes).scores.items():
                out.setdefault(m, []).append(s)
        single = _is_single(points)
        return {m: torch.cat(s)[0] if single else torch.cat(s) for m, s in out.items()}

    def scores(self, points) -> torch.Tensor:
        """Part scores ``(N, P)`` for a cloud ``(N, 3)``, ``(B, N, P)`` for a batch, on the model's device."""
        return self.mode_scores(points, (self.dense,))[self.dense]

    def segment(self, points) -> torch.Tensor:
        """Part index per point: ``(N,)`` for a cloud, ``(B, N)`` for a batch (indices into ``self.parts``)."""
        return self.scores(points).argmax(dim=-1)


def _category_prompts(prompts, category: Optional[str]):
    """The ``{part: [prompts]}`` of a prompt file or mapping; one laid out by category (``{category: {part:
    [prompts]}}``, as PointCLIP V2's per-category released prompts are) gives the category's own."""
    table = prompts if isinstance(prompts, Mapping) else _prompts.read_prompt_json(prompts)
    if not isinstance(table, Mapping) or not table or not all(isinstance(v, Mapping) for v in table.values()):
        return table  # {part: [prompts]}: build_prompts validates it
    if category is None:
        raise InputError(f"the prompt file is laid out by category ({', '.join(list(table)[:8])}): give --category")
    by_key = {_prompts.humanize(k).lower(): k for k in table}
    key = by_key.get(_prompts.humanize(category).lower())
    if key is None:
        raise InputError(f"the prompt file has no prompts for category '{category}' (it has: "
                         f"{', '.join(list(table)[:16])})")
    return table[key]


def _is_single(points) -> bool:
    return np.ndim(points) == 2 if not isinstance(points, torch.Tensor) else points.ndim == 2
