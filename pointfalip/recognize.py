"""The 3D pipeline: points -> depth views -> foveal masks -> FALIP view features -> fused class scores.

``score_c = Σ_v β_v cos(f_v, t_c)`` with view weights β (uniform unless a preset says otherwise); reported
probabilities are ``softmax(logit_scale · score)``. ``falip=False`` runs the same code without the bias.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import io, prompts
from . import presets
from .errors import InputError
from .foveal import FovealConfig, from_occupancy
from .model import FalipCLIP
from .projection import DepthViews, project

ENCODER_BATCH = 64  # images per encoder call: bounds memory, keeps batches large


@dataclass
class RecognizerConfig:
    """A 3D recognition preset (configs/presets/*.yaml)."""

    projection: str = "realistic"
    views: Union[str, dict] = "pointclip_v2"
    normalize_images: bool = False
    view_weights: Optional[list[float]] = None
    templates: Union[str, list[str]] = "depth"
    prompt_file: Optional[str] = None
    up_axis: str = "y"
    precision: str = "auto"  # what the command line loads the model in unless --precision says otherwise
    foveal: FovealConfig = field(default_factory=FovealConfig)



def list_presets() -> list[str]:
    """Names of the packaged recognition presets (configs/presets/*.yaml)."""
    return presets.list_presets("recognizer")


def load_preset(name_or_path: str) -> RecognizerConfig:
    """A preset by name (configs/presets/NAME.yaml) or from a YAML file."""
    return presets.from_mapping(RecognizerConfig, presets.load_preset("recognizer", name_or_path),
                                f"preset {name_or_path}")


def _as_clouds(points) -> tuple[list, bool]:
    """A list of clouds and whether the input was a single cloud."""
    if isinstance(points, (np.ndarray, torch.Tensor)):
        if points.ndim == 2:
            return [points], True
        if points.ndim == 3:
            return list(points), False
        raise InputError(f"points must be (N, 3) or (B, N, 3), got shape {tuple(points.shape)}")
    clouds = list(points)
    if not clouds:
        raise InputError("no point clouds given")
    return clouds, False


class Recognizer:
    """Zero-shot recognition of point clouds against a set of names.

    labels: names to choose from; or dataset: a label set of `prompts.list_label_sets()`. Other keyword
    arguments override the preset (projection, views, templates, prompt_file, up_axis, view_weights, foveal).
    """

    def __init__(self, model: FalipCLIP, labels: Optional[Sequence[str]] = None, dataset: Optional[str] = None,
                 preset: Union[str, RecognizerConfig] = "pointclip_v2", falip: bool = True,
                 cache_dir=None, **overrides):
        self.model = model
        self.config = preset if isinstance(preset, RecognizerConfig) else load_preset(preset)
        if overrides.get("projection") and "views" not in overrides:
            overrides["views"] = {"realistic": "pointclip_v2", "simple": "pointclip"}.get(overrides["projection"],
                                                                                      self.config.views)
        self.config = dataclasses.replace(self.config, **{k: v for k, v in overrides.items() if v is not None})
        self.falip = falip
        if falip:
            model.resolve_layers(self.config.foveal.layers)  # a preset's layers must fit the model before any work
        if dataset is not None:
            names = prompts.raw_class_names(dataset)
            self.labels = [prompts.humanize(n) for n in names]
        elif labels is not None:
            names = self.labels = [str(label).strip() for label in labels]
        else:
            raise InputError("give labels or a dataset name")
        if not self.labels or not all(self.labels):
            raise InputError("the label list is empty: give at least one label")
        # prompts from the dataset's raw names: a reference preset fills them by the reference's own rule
        prompt_sets = prompts.build_prompts(names, self.config.templates, self.config.prompt_file)
        self.text = prompts.text_features(model, prompt_sets, cache_dir=cache_dir)  # (C, D), unit norm
        self.last_timings: dict[str, float] = {}

    # ---- stages ---------------------------------------------------------------------------------------
    def prepare(self, points) -> list[np.ndarray]:
        """Validated clouds, centred, scaled to the unit sphere and turned to the preset's frame."""
        clouds, _ = _as_clouds(points)
        return [io.normalize(io.validate(c if isinstance(c, np.ndarray) else np.asarray(torch.as_tensor(c).cpu())),
                             self.config.up_axis) for c in clouds]

    def project(self, clouds: Sequence[np.ndarray]) -> DepthViews:
        """Depth views of normalised clouds, batched where the clouds have the same size."""
        size = self.model.image_size[0]
        kwargs = dict(method=self.config.projection, views=self.config.views, image_size=size)
        device = self.model.device
        if len({len(c) for c in clouds}) == 1:
            return project(torch.as_tensor(np.stack(clouds), device=device), **kwargs)
        parts = [project(torch.as_tensor(c, device=device), **kwargs) for c in clouds]
        return DepthViews(torch.cat([p.images for p in parts]), torch.cat([p.occupancy for p in parts]))

    def encoder_input(self, views: DepthViews) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Images (B·V, 3, S, S) for the encoder and their foveal biases (B·V, gh, gw), None without FALIP."""
        images = views.images.flatten(0, 1)
        if self.config.normalize_images:
            cfg = self.model.preprocess_cfg
            mean = torch.tensor(cfg["mean"], device=images.device).view(1, 3, 1, 1)
            std = torch.tensor(cfg["std"], device=images.device).view(1, 3, 1, 1)
            images = (images - mean) / std
        if not self.falip:
            return images, None
        bias = from_occupancy(views.occupancy.flatten(0, 1), self.model.grid_size, self.config.foveal)
        return images, bias

    def view_features(self, views: DepthViews) -> torch.Tensor:
        """Unit-norm features (B, V, D) of every view."""
        images, bias = self.encoder_input(views)
        kwargs = self.config.foveal.encoder_kwargs() if bias is not None else {}
        feats = []
        with torch.inference_mode():
            for start in range(0, images.shape[0], ENCODER_BATCH):
                chunk = slice(start, start + ENCODER_BATCH)
                feats.append(self.model.encode_image(images[chunk], None if bias is None else bias[chunk],
                                                     normalize=True, **kwargs))
        b, v = views.images.shape[:2]
        return torch.cat(feats).reshape(b, v, -1)

    def view_weights(self, num_views: int) -> torch.Tensor:
        weights = self.config.view_weights
        if weights is None:
            return torch.full((num_views,), 1.0 / num_views, device=self.model.device)
        if len(weights) != num_views:
            raise InputError(f"{len(weights)} view weights for {num_views} views")
        w = torch.tensor(weights, dtype=torch.float32, device=self.model.device)
        return w / w.sum()

    def fuse(self, view_feats: torch.Tensor) -> torch.Tensor:
        """Scores (B, C) = Σ_v β_v cos(f_v, t_c)."""
        cos = view_feats @ self.text.T  # (B, V, C)
        return torch.einsum("bvc,v->bc", cos, self.view_weights(view_feats.shape[1]))

    def scores(self, points) -> torch.Tensor:
        """Fused scores (B, C) for one cloud or a batch."""
        return self._run(points)[0]

    def _run(self, points):
        t0 = time.perf_counter()
        clouds = self.prepare(points)
        views = self.project(clouds)
        t1 = time.perf_counter()
        feats = self.view_features(views)
        t2 = time.perf_counter()
        self.last_timings = {"projection": t1 - t0, "encoder": t2 - t1}
        return self.fuse(feats), feats, views

    # ---- answers -------------------------------------------------------------------------------------
    def probabilities(self, scores: torch.Tensor) -> torch.Tensor:
        return (self.model.logit_scale * scores).softmax(dim=-1)

    def _ranked(self, probs: torch.Tensor, top_k: int) -> list[dict]:
        values, idx = probs.topk(min(top_k, probs.shape[-1]))
        return [{"label": self.labels[i], "score": float(v)} for v, i in zip(values.tolist(), idx.tolist())]

    def classify(self, points, top_k: int = 5, per_view: bool = False):
        """Best labels with probabilities: a list of {"label", "score"} for one cloud, a list of them for a batch.

        per_view=True returns (predictions, views) where views holds each view's top label and score.
        """
        if top_k < 1:
            raise InputError("top-k must be at least 1")
        _, single = _as_clouds(points)
        scores, feats, _ = self._run(points)
        results = [self._ranked(p, top_k) for p in self.probabilities(scores)]
        out = results[0] if single else results
        if not per_view:
            return out
        view_probs = self.probabilities(feats @ self.text.T)  # (B, V, C)
        views = [[self._ranked(p, 1)[0] for p in cloud] for cloud in view_probs]
        return out, (views[0] if single else views)
