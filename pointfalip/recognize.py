"""The 3D pipeline: points -> depth views -> foveal masks -> FALIP view features -> class logits.

Words used throughout: a **score** is the fused cosine ``score_c = Σ_v β_v cos(f_v, t_c)`` with view weights β
(uniform unless a preset says otherwise); **logits** are ``logit_scale · score`` plus, with a few-shot cache,
its term; a **probability** is ``softmax(logits)``. ``falip=False`` runs the same code without the bias.

Every caller scores through two steps of `Recognizer`: `Recognizer.embed` (points -> view features, optionally
with the plain-CLIP copy from the shared trunk) and `Recognizer.logits` (view features -> logits), which alone
owns the text features and the view weights.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch

from . import presets, prompts
from .clouds import UP_AXES, normalize, validate
from .compiled import ENGINES
from .errors import InputError
from .foveal import FovealConfig, from_occupancy
from .model import FalipCLIP
from .projection import DepthViews, check_view_weights, default_views, project, unit_view_weights, view_count

ENCODER_BATCH = 64  # images per encoder call: bounds memory; with freed memory reused (pointfalip.allocator) 64 ran
# as fast per image as 10-40 (bench/bench_falip.py --batch-sweep), without it 1.6x slower


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
    compile: Union[bool, str] = False  # the command line's encoder engine unless --compile says otherwise
    foveal: FovealConfig = field(default_factory=FovealConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.projection, str):
            raise InputError(f"projection must be a method name, got {self.projection!r}")
        if not isinstance(self.views, (str, dict)):
            raise InputError(f"views must be a view preset name or a mapping of angles, got {self.views!r}")
        if not isinstance(self.normalize_images, bool):
            raise InputError(f"normalize_images must be true or false, got {self.normalize_images!r}")
        if not (isinstance(self.templates, str) or isinstance(self.templates, list) and self.templates
                and all(isinstance(t, str) for t in self.templates)):
            raise InputError(f"templates must be an ensemble name or a list of templates with '{{}}', "
                             f"got {self.templates!r}")
        if self.prompt_file is not None and not isinstance(self.prompt_file, (str, dict)):
            raise InputError(f"prompt_file must be a file path or null, got {self.prompt_file!r}")
        if self.precision not in presets.PRECISION_CHOICES:
            raise InputError(f"precision must be one of {', '.join(presets.PRECISION_CHOICES)}, got {self.precision!r}")
        if not (isinstance(self.compile, bool) or self.compile in ENGINES):
            raise InputError(f"compile must be true, false or an engine ({', '.join(ENGINES)}), got {self.compile!r}")
        if self.up_axis not in UP_AXES:
            raise InputError(f"up_axis must be one of {', '.join(UP_AXES)}, got {self.up_axis!r}")
        if self.view_weights is not None:
            self.view_weights = list(check_view_weights(self.view_weights))



def list_presets() -> list[str]:
    """Names of the packaged recognition presets (configs/presets/*.yaml)."""
    return presets.list_presets("recognizer")


def load_preset(name_or_path: str) -> RecognizerConfig:
    """A preset by name (configs/presets/NAME.yaml) or from a YAML file."""
    return presets.from_mapping(RecognizerConfig, presets.load_preset("recognizer", name_or_path),
                                f"preset {name_or_path}")


def resolve_config(preset: Union[str, RecognizerConfig] = "pointclip_v2", **overrides) -> RecognizerConfig:
    """A preset (name, YAML file or config) with overrides of its fields (None values ignored): the one rule of
    the Recognizer and the commands. A projection other than the preset's brings its own default views
    (`projection.default_views`) unless ``views`` is given too."""
    config = preset if isinstance(preset, RecognizerConfig) else load_preset(preset)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("projection") and overrides["projection"] != config.projection and "views" not in overrides:
        overrides["views"] = default_views(overrides["projection"]) or config.views
    if not overrides:
        return config
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    values["foveal"] = dataclasses.asdict(config.foveal)
    if isinstance(overrides.get("foveal"), FovealConfig):
        overrides["foveal"] = dataclasses.asdict(overrides["foveal"])
    return presets.from_mapping(RecognizerConfig, {**values, **overrides}, "recognizer settings")


def project_clouds(config: RecognizerConfig, clouds, image_size: int, device="cpu") -> DepthViews:
    """Depth views of normalised clouds (a list, or a (B, N, 3) tensor) by the config's projection and views,
    batched where the clouds have the same size: what `Recognizer.project` and `pointfalip render` show."""
    kwargs = dict(method=config.projection, views=config.views, image_size=image_size)
    if isinstance(clouds, torch.Tensor) and clouds.ndim == 3:
        return project(clouds.to(device), **kwargs)
    if len({len(c) for c in clouds}) == 1:
        return project(torch.as_tensor(np.stack(clouds), device=device), **kwargs)
    parts = [project(torch.as_tensor(c, device=device), **kwargs) for c in clouds]
    return DepthViews(torch.cat([p.images for p in parts]), torch.cat([p.occupancy for p in parts]))


def foveal_biases(config: RecognizerConfig, views: DepthViews, grid: tuple[int, int]) -> torch.Tensor:
    """The foveal attention bias (B·V, gh, gw) of every view on a patch grid, from its occupancy."""
    return from_occupancy(views.occupancy.flatten(0, 1), grid, config.foveal)


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

    labels: names to choose from; or dataset: a label set of `prompts.list_label_sets()` (labels shown readable,
    prompts built from the dataset's raw names). With neither, the Recognizer only embeds (e.g. to build a
    few-shot cache). fewshot: a `fewshot.FewShotCache` (or its file) of labelled examples made with this model,
    preset and FALIP setting; its term joins `logits` for the labels it knows. Other keyword arguments override
    the preset (projection, views, templates, prompt_file, up_axis, view_weights, foveal, normalize_images).
    """

    def __init__(self, model: FalipCLIP, labels: Optional[Sequence[str]] = None, dataset: Optional[str] = None,
                 preset: Union[str, RecognizerConfig] = "pointclip_v2", falip: bool = True,
                 cache_dir=None, fewshot=None, **overrides):
        self.model = model
        self.preset = preset if isinstance(preset, str) else "custom"
        config = resolve_config(preset, **overrides)
        self.config = config
        self.falip = falip
        height, width = model.image_size
        if height != width:
            raise InputError(f"model '{model.name}' takes {height}x{width} images but depth views are square: "
                             "choose a model with square input")
        if falip:
            model.resolve_layers(self.config.foveal.layers)  # a preset's layers and heads must fit the model
            model.resolve_heads(self.config.foveal.heads)  # before any work
        self.text: Optional[torch.Tensor] = None
        self.fewshot = None
        self._fewshot_labels: list[str] = []
        self.last_timings: dict[str, float] = {}
        if dataset is not None:
            names = prompts.raw_class_names(dataset)
            self.labels = [prompts.humanize(n) for n in names]
        elif labels is not None:
            names = self.labels = [str(label).strip() for label in labels]
            if not self.labels or not all(self.labels):
                raise InputError("the label list is empty: give at least one label")
        else:
            self.labels = []
            return
        # prompts from the dataset's raw names: a reference preset fills them by the reference's own rule
        prompt_sets = prompts.build_prompts(names, self.config.templates, self.config.prompt_file)
        self.text = prompts.text_features(model, prompt_sets, cache_dir=cache_dir)  # (C, D), unit norm
        if fewshot is not None:
            self.use_fewshot(fewshot)

    # ---- few-shot -------------------------------------------------------------------------------------
    def feature_settings(self) -> dict:
        """The settings that shape view features and their fusion (what a few-shot cache must share)."""
        c = self.config
        return {"projection": c.projection, "views": c.views, "normalize_images": c.normalize_images,
                "view_weights": c.view_weights, "foveal": dataclasses.asdict(c.foveal)}

    def fewshot_metadata(self, shots: int, points: Optional[int]) -> dict:
        """How this Recognizer makes features, as a few-shot cache records it."""
        from . import fewshot

        return fewshot.cache_metadata(model=self.model.name, pretrained=self.model.pretrained,
                                      precision=self.model.precision, preset=self.preset,
                                      settings=self.feature_settings(), falip=self.falip, shots=shots,
                                      points=points, up_axis=self.config.up_axis)

    def use_fewshot(self, cache) -> None:
        """Add a few-shot cache (or its file) to `logits`; InputError if it was made with another model, preset or
        FALIP setting, or knows none of the labels."""
        from . import fewshot

        if not isinstance(cache, fewshot.FewShotCache):
            cache = fewshot.load_cache(cache)
        expected = self.fewshot_metadata(0, None)
        fewshot.check_compatible(cache, {k: expected[k] for k in ("model", "pretrained", "preset_hash", "falip")})
        views = view_count(self.config.projection, self.config.views)
        dim = None if self.text is None else self.text.shape[1]
        if (dim is not None and cache.dim != dim) or (views is not None and cache.num_views != views):
            raise InputError(f"the few-shot cache holds {cache.num_views} views of {cache.dim} features an example, "
                             f"this recognizer makes {views} views of {dim if dim is not None else '?'}: rebuild the "
                             "cache with this model and preset")
        by_key = {prompts.humanize(name).lower(): name for name in cache.labels}
        self._fewshot_labels = [by_key.get(prompts.humanize(label).lower(), label) for label in self.labels]
        if not set(self._fewshot_labels) & set(cache.labels):
            raise InputError(f"the few-shot cache knows {', '.join(cache.labels[:10])}: none of the labels given")
        self.fewshot = cache

    # ---- step 1: points -> view features -----------------------------------------------------------------
    def prepare(self, points) -> list[np.ndarray]:
        """Validated clouds, centred, scaled to the unit sphere and turned to the preset's frame."""
        clouds, _ = _as_clouds(points)
        return [normalize(validate(c if isinstance(c, np.ndarray) else np.asarray(torch.as_tensor(c).cpu())),
                          self.config.up_axis) for c in clouds]

    def project(self, clouds) -> DepthViews:
        """Depth views of normalised clouds (a list, or a (B, N, 3) tensor), batched where the clouds have the same
        size."""
        return project_clouds(self.config, clouds, self.model.image_size[0], self.model.device)

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
        return images, foveal_biases(self.config, views, self.model.grid_size)

    def embed_views(self, views: DepthViews, with_plain: bool = False):
        """Unit-norm features (B, V, D) of every view; with_plain (FALIP on): ``(foveal, plain)``, the plain copy
        from the blocks the two share (`FalipCLIP.encode_image_pair`)."""
        if with_plain and not self.falip:
            raise InputError("the plain copy comes with FALIP: build the Recognizer with falip=True")
        images, bias = self.encoder_input(views)
        kwargs = self.config.foveal.encoder_kwargs() if bias is not None else {}
        foveal, plain = [], []
        with torch.inference_mode():
            for start in range(0, images.shape[0], ENCODER_BATCH):
                chunk = slice(start, start + ENCODER_BATCH)
                if with_plain:
                    f, p = self.model.encode_image_pair(images[chunk], bias[chunk], normalize=True, **kwargs)
                    plain.append(p)
                else:
                    f = self.model.encode_image(images[chunk], None if bias is None else bias[chunk],
                                                normalize=True, **kwargs)
                foveal.append(f)
        b, v = views.images.shape[:2]
        if with_plain:
            return torch.cat(foveal).reshape(b, v, -1), torch.cat(plain).reshape(b, v, -1)
        return torch.cat(foveal).reshape(b, v, -1)

    def embed(self, points, with_plain: bool = False, prepared: bool = False):
        """View features (B, V, D) of one cloud or a batch (`embed_views` of `project` of `prepare`);
        ``prepared=True`` takes clouds that `prepare` already returned."""
        t0 = time.perf_counter()
        clouds = points if prepared else self.prepare(points)
        views = self.project(clouds)
        t1 = time.perf_counter()
        feats = self.embed_views(views, with_plain=with_plain)
        self.last_timings = {"projection": t1 - t0, "encoder": time.perf_counter() - t1}
        return feats

    # ---- step 2: view features -> logits ---------------------------------------------------------------
    def view_weights(self, num_views: int) -> torch.Tensor:
        """β (V,), summing to one: the preset's view weights or uniform."""
        return unit_view_weights(self.config.view_weights, num_views, self.model.device)

    def _text(self) -> torch.Tensor:
        if self.text is None:
            raise InputError("this Recognizer has no labels: give labels or a dataset to score clouds")
        return self.text

    def score(self, view_feats: torch.Tensor) -> torch.Tensor:
        """Scores (B, C) = Σ_v β_v cos(f_v, t_c) of view features (B, V, D)."""
        cos = view_feats @ self._text().T  # (B, V, C)
        return torch.einsum("bvc,v->bc", cos, self.view_weights(view_feats.shape[1]))

    def logits(self, view_feats: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) of view features (B, V, D): ``logit_scale · score``, plus with a few-shot cache its
        Tip-Adapter term ``α exp(-β(1 - cos(f, K))) L`` (labels it lacks get none), and with its trained adapter
        the score of the adapted view features (PointCLIP's inter-view adapter)."""
        if self.fewshot is None:
            return self.model.logit_scale * self.score(view_feats)
        from . import fewshot

        weights = self.view_weights(view_feats.shape[1])
        if self.fewshot.adapter is not None:
            adapter = self.fewshot.adapter.to(view_feats.device)
            with torch.no_grad():
                zero_shot = self.adapter_logits(adapter, view_feats)
        else:
            zero_shot = self.model.logit_scale * self.score(view_feats)
        query = fewshot.fuse_views(view_feats, weights)
        return zero_shot + fewshot.cache_logits(query, self.fewshot, self._fewshot_labels)

    def adapter_logits(self, adapter, view_feats: torch.Tensor) -> torch.Tensor:
        """``logit_scale · Σ_v β_v <â_v, t_c>`` (B, C) of an inter-view adapter's features â of view features
        (B, V, D): the adapted branch of `logits`, and what training the adapter optimises (differentiable)."""
        from . import fewshot

        return self.model.logit_scale * fewshot.adapter_scores(adapter, view_feats, self._text(),
                                                               self.view_weights(view_feats.shape[1]))

    def view_logits(self, view_feats: torch.Tensor) -> torch.Tensor:
        """Each view's own logits (B, V, C) against the text, before fusion (what each view alone would say)."""
        return self.model.logit_scale * (view_feats @ self._text().T)

    # ---- answers ---------------------------------------------------------------------------------------
    def scores(self, points) -> torch.Tensor:
        """Fused scores (B, C) for one cloud or a batch."""
        return self.score(self.embed(points))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """softmax over the labels of logits (..., C)."""
        return logits.softmax(dim=-1)

    def rank(self, view_feats: torch.Tensor, top_k: Optional[int] = 5) -> list[list["Prediction"]]:
        """Best labels with their probabilities of view features (B, V, D), one list a cloud (`logits`)."""
        return [ranked(self.labels, p, top_k) for p in self.probabilities(self.logits(view_feats))]

    def rank_views(self, view_feats: torch.Tensor) -> list[list["Prediction"]]:
        """Each view's best label and its probability of view features (B, V, D) (`view_logits`, no fusion): one
        list of `Prediction` (one a view) a cloud."""
        view_probs = self.probabilities(self.view_logits(view_feats))
        return [[ranked(self.labels, p, 1)[0] for p in cloud] for cloud in view_probs]

    def classify(self, points, top_k: int = 5):
        """Best labels with their probabilities: `Prediction` list for one cloud, a list of them for a batch."""
        top_k = check_top_k(top_k)
        _, single = _as_clouds(points)
        results = self.rank(self.embed(points), top_k)
        return results[0] if single else results

    def classify_views(self, points) -> list:
        """Each view's best label and its probability (view features against the text, no fusion): a list of
        `Prediction` (one a view) for one cloud, a list of them for a batch."""
        _, single = _as_clouds(points)
        views = self.rank_views(self.embed(points))
        return views[0] if single else views


@dataclass(frozen=True)
class Prediction:
    """One label and its probability. In JSON the probability keeps the field name ``score`` (compatibility)."""

    label: str
    probability: float

    def to_dict(self) -> dict:
        return {"label": self.label, "score": self.probability}


def check_top_k(top_k) -> int:
    """top_k as a positive int: the one rule for every command and function that ranks labels."""
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise InputError(f"top-k must be at least 1, got {top_k!r}")
    return int(top_k)


def ranked(labels: Sequence[str], probs: torch.Tensor, top_k: Optional[int] = None) -> list[Prediction]:
    """The top_k labels (all without it) of a probability vector (C,), best first."""
    k = probs.shape[-1] if top_k is None else min(check_top_k(top_k), probs.shape[-1])
    values, idx = probs.topk(k)
    return [Prediction(labels[i], float(v)) for v, i in zip(values.tolist(), idx.tolist())]
