"""Zero-shot part segmentation of point clouds with CLIP's dense patch tokens, as PointCLIP V2's ``zeroshot_seg``.

One path, each step public:

1. `pointfalip.projection.project_parts` (the projection method ``"pointclip_v2_parts"`` of
   `pointfalip.projection.project`, which `PartSegmenter` goes through): every cloud is turned into V views
   (PointCLIP V2's ten), voxelised, densified, smoothed, reduced to images; every point keeps its pixel and a
   visibility flag (the details, coordinates and V2's transposed lookup are in `pointfalip.projection`).
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

The metrics (part IoU, instance and class mIoU, point accuracy) are `pointfalip.metrics`'; they and the part
projection (`PartProjectionConfig`, `PartViews`, `project_parts`) stay importable from here.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from . import presets as _presets
from . import projection as _projection
from . import prompts as _prompts
from .clouds import UP_AXES
from .errors import InputError
# the part metrics lived here: re-exported from pointfalip.metrics for the old import paths
from .metrics import class_miou, instance_miou, metrics_from_shapes, part_iou, segmentation_metrics, shape_miou
from .metrics import mean_point_accuracy as accuracy
from .model import DENSE_MODES
from .presets import PRECISION_CHOICES, read_data_json
from .projection import DepthViews, as_points, check_view_weights
# the part projection lived here: re-exported from pointfalip.projection for the old import paths
from .projection import PartProjectionConfig, PartViews, project_parts

log = logging.getLogger(__name__)

DATA_FILE = "shapenetpart.json"
DEFAULT_PART_PRESET = "pointfalip_parts"  # V2 with points read where drawn; "pointclip_v2_parts" is V2 exactly
DEFAULT_PRESET = DEFAULT_PART_PRESET  # its old name
PRESET_KIND = "parts"  # pointfalip.presets kind: configs/parts/<name>.yaml
ENCODER_BATCH = 64  # images per encoder call
_GROUP_IMAGES = 256  # views projected and encoded together: bounds the memory of the images

__all__ = [
    "DEFAULT_PART_PRESET",
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
        if self.up_axis not in UP_AXES:
            raise InputError(f"up_axis must be one of {', '.join(UP_AXES)}, got {self.up_axis!r}")
        if self.precision not in PRECISION_CHOICES:
            raise InputError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {self.precision!r}")


def list_part_presets() -> list[str]:
    """Names of the packaged parts presets (``configs/parts/``)."""
    return _presets.list_presets(PRESET_KIND)


def load_part_preset(preset: Union[str, Path, PartPreset] = DEFAULT_PART_PRESET) -> PartPreset:
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
                 preset: Union[str, Path, PartPreset] = DEFAULT_PART_PRESET, templates: Optional[Sequence[str]] = None,
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
                pass  # as_points says what is wrong
        return as_points(points)

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
