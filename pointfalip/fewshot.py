"""Few-shot recognition on cached features: a training-free cache of labelled examples and PointCLIP's adapter.

Everything here works on features the encoder has already produced, so the encoder stays frozen:

* **Cache (Tip-Adapter, training-free).** K labelled clouds are embedded once. Their unit view features
  ``view_keys`` (K, V, D) are fused into one key per cloud, ``keys = normalize(Σ_v β_v f_v)`` with the
  recognizer's view weights β (normalised to sum 1; the norm is taken over D). A query with fused feature q
  (same fusion) gets ``cache_logits = α · exp(-β_c (1 - q·Kᵀ)) @ L`` with L the one-hot labels of the keys;
  the recognizer adds them to its zero-shot logits, ``logit_scale · score + cache_logits``. α, β_c come
  from the cache (defaults 1 and 5.5) or from :func:`tune`, a leave-one-out search on the shots alone.
* **Inter-view adapter (PointCLIP, trained).** :class:`InterViewAdapter` re-implements the adapter of
  PointCLIP's few-shot trainer (``trainers/fewshot.py`` in ZrrSkywalker/PointCLIP) and :func:`train_adapter`
  fits it on cached view features with the reference's label-smoothed loss and optimiser settings.
* **Storage.** One safetensors file holds a :class:`FewShotCache` (tensors, adapter state, JSON metadata).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import InputError
from .files import atomic_write, read_input
from .projection import unit_view_weights

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

FORMAT_NAME = "pointfalip-fewshot"
FORMAT_VERSION = 1
DEFAULT_ALPHA = 1.0  # weight of the cache logits (Tip-Adapter's residual ratio)
DEFAULT_BETA = 5.5  # sharpness of the affinity exp(-β (1 - cos))

# The leave-one-out grid of :func:`tune`. α = 0 is pure zero-shot: it wins (ties go to the smallest α) unless
# some cache weight classifies more held-out shots correctly. Both grids contain the defaults.
DEFAULT_ALPHAS = tuple(0.25 * i for i in range(0, 21))  # 0, 0.25, ..., 5.0
DEFAULT_BETAS = tuple(0.5 * i for i in range(1, 21))  # 0.5, 1.0, ..., 10.0
DEFAULT_GRID = (DEFAULT_ALPHAS, DEFAULT_BETAS)

METADATA_KEYS = ("model", "pretrained", "precision", "preset", "preset_hash", "falip", "shots", "points",
                 "up_axis", "format_version")
COMPATIBILITY_KEYS = ("model", "pretrained", "precision", "preset_hash", "falip")

# ---- PointCLIP's few-shot settings (ZrrSkywalker/PointCLIP) -------------------------------------------------
ADAPTER_RATIO = 0.6  # configs/trainers/PointCLIP_FS/*.yaml MODEL.ADAPTER.RATIO (also Dassl3D config defaults)
ADAPTER_FUSION_INIT = 0.5  # Dassl3D/dassl/config/defaults.py MODEL.ADAPTER.INIT: initial inter-view fusion ratio
ADAPTER_DROPOUT = 0.075  # Dassl3D/dassl/config/defaults.py MODEL.ADAPTER.DROPOUT
LABEL_SMOOTHING = 0.2  # trainers/fewshot.py smooth_loss: eps (taken there from DGCNN's util.py)
TRAIN_EPOCHS = 250  # configs/trainers/PointCLIP_FS/*.yaml OPTIM.MAX_EPOCH
TRAIN_LR = 0.01  # configs/trainers/PointCLIP_FS/*.yaml OPTIM.LR, optimiser OPTIM.NAME 'sgd'
TRAIN_BATCH = 32  # configs/trainers/PointCLIP_FS/*.yaml DATALOADER.TRAIN_X.BATCH_SIZE
SGD_MOMENTUM = 0.9  # Dassl3D/dassl/config/defaults.py OPTIM.MOMENTUM (dampening 0, no Nesterov)
WEIGHT_DECAY = 5e-4  # Dassl3D/dassl/config/defaults.py OPTIM.WEIGHT_DECAY, on every adapter parameter
WARMUP_EPOCHS = 1  # configs/trainers/PointCLIP_FS/*.yaml OPTIM.WARMUP_EPOCH, WARMUP_TYPE 'constant'
WARMUP_LR = 1e-5  # configs/trainers/PointCLIP_FS/*.yaml OPTIM.WARMUP_CONS_LR
# then OPTIM.LR_SCHEDULER 'cosine': CosineAnnealingLR(T_max=MAX_EPOCH), stepped once per epoch after warm-up.


# ---- cache -------------------------------------------------------------------------------------------------
@dataclass(eq=False)
class FewShotCache:
    """Labelled examples of a few-shot recognizer.

    view_keys: (K, V, D) float32, unit view features of the K labelled clouds.
    keys: (K, D) float32, their fused features ``normalize(Σ_v β_v view_keys[:, v])`` (see :func:`fuse_views`).
    labels: the label names of the cache, in order; targets: (K,) int64 indices into ``labels``.
    alpha, beta: cache weight and affinity sharpness of :func:`cache_logits`.
    metadata: how the features were made (:func:`cache_metadata`); compared by :func:`check_compatible`.
    adapter: an optional trained :class:`InterViewAdapter` (eval mode) for the same features.
    """

    view_keys: torch.Tensor
    keys: torch.Tensor
    labels: list[str]
    targets: torch.Tensor
    alpha: float = DEFAULT_ALPHA
    beta: float = DEFAULT_BETA
    metadata: dict = field(default_factory=dict)
    adapter: Optional["InterViewAdapter"] = None

    def __post_init__(self) -> None:
        self.labels = [str(label) for label in self.labels]
        self.targets = torch.as_tensor(self.targets, dtype=torch.int64)
        k = self.targets.shape[0]
        if self.view_keys.ndim != 3 or self.keys.ndim != 2 or self.targets.ndim != 1:
            raise InputError("few-shot cache: view_keys must be (K, V, D), keys (K, D) and targets (K,)")
        if self.view_keys.shape[0] != k or self.keys.shape[0] != k or self.keys.shape[1] != self.view_keys.shape[2]:
            raise InputError(f"few-shot cache: inconsistent shapes view_keys {tuple(self.view_keys.shape)}, "
                             f"keys {tuple(self.keys.shape)}, targets {tuple(self.targets.shape)}")
        if len(set(self.labels)) != len(self.labels):
            raise InputError("few-shot cache: duplicate label names")
        if k and (int(self.targets.min()) < 0 or int(self.targets.max()) >= len(self.labels)):
            raise InputError(f"few-shot cache: targets must index the {len(self.labels)} labels")
        if not self.view_keys.is_floating_point() or not self.keys.is_floating_point():
            raise InputError("few-shot cache: view_keys and keys must be floating-point features")
        if not (torch.isfinite(self.view_keys).all() and torch.isfinite(self.keys).all()):
            raise InputError("few-shot cache: its features hold NaN or infinite values")
        if k and not torch.allclose(self.keys.float().norm(dim=-1), torch.ones(k), atol=1e-3):
            raise InputError("few-shot cache: its keys are not unit vectors (fused, normalised view features)")
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
                    or not math.isfinite(value) or value < 0:
                raise InputError(f"few-shot cache: {name} must be a finite number >= 0, got {value!r}")
            setattr(self, name, float(value))
        if self.adapter is not None and not all(torch.isfinite(t).all() for t in self.adapter.state_dict().values()
                                                if t.is_floating_point()):
            raise InputError("few-shot cache: its adapter's weights hold NaN or infinite values")

    @property
    def num_views(self) -> int:
        return self.view_keys.shape[1]

    @property
    def dim(self) -> int:
        return self.view_keys.shape[2]

    def shot_counts(self) -> dict[str, int]:
        """Number of examples of every label of the cache."""
        counts = torch.bincount(self.targets, minlength=len(self.labels)).tolist()
        return dict(zip(self.labels, counts))


def _unit_weights(view_weights: torch.Tensor, num_views: int, like: torch.Tensor) -> torch.Tensor:
    return unit_view_weights(torch.as_tensor(view_weights).reshape(-1), num_views, like.device, like.dtype)


def fuse_views(view_feats: torch.Tensor, view_weights: torch.Tensor) -> torch.Tensor:
    """Fused unit features (B, D) = normalize(Σ_v β_v f_v) of view features (B, V, D), β normalised to sum 1.

    Since ``Σ_v β_v cos(f_v, t) = <Σ_v β_v f_v, t>`` for unit f_v and t, this is the direction the zero-shot
    score measures; queries and cache keys must both be fused with it.
    """
    feats = view_feats.float()
    w = _unit_weights(view_weights, feats.shape[1], feats)
    return F.normalize(torch.einsum("bvd,v->bd", feats, w), dim=-1)


def build_cache(view_feats: torch.Tensor, targets: Sequence[int], labels: Sequence[str],
                view_weights: torch.Tensor, metadata: Optional[Mapping[str, Any]] = None,
                alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA,
                adapter: Optional["InterViewAdapter"] = None) -> FewShotCache:
    """A cache from unit view features (K, V, D) of labelled clouds, targets (K,) indexing ``labels``."""
    view_keys = view_feats.detach().float().cpu().contiguous()
    keys = fuse_views(view_keys, torch.as_tensor(view_weights).detach().cpu())
    return FewShotCache(view_keys, keys, list(labels), torch.as_tensor(targets, dtype=torch.int64).cpu(),
                        float(alpha), float(beta), dict(metadata or {}), adapter)


def _label_matrix(cache: FewShotCache, class_labels: Sequence[str], device, dtype) -> torch.Tensor:
    """(K, C) one-hot: row k is 1 at the caller's column of the shot's label, all 0 if the caller lacks it."""
    column = {name: j for j, name in enumerate(class_labels)}
    cols = torch.tensor([column.get(name, -1) for name in cache.labels], dtype=torch.int64)[cache.targets]
    onehot = torch.zeros(len(cols), len(class_labels) + 1, dtype=dtype)
    onehot[torch.arange(len(cols)), cols] = 1  # -1 lands in the extra last column, which is dropped
    return onehot[:, :-1].to(device)


def cache_logits(query: torch.Tensor, cache: FewShotCache, class_labels: Sequence[str],
                 alpha: Optional[float] = None, beta: Optional[float] = None) -> torch.Tensor:
    """Tip-Adapter logits (B, C) = ``α · exp(-β (1 - q·Kᵀ)) @ L`` of fused unit queries (B, D).

    L maps each key's label onto the caller's ``class_labels``: keys whose label the caller does not list
    contribute nothing, and caller labels without examples get 0 (their pure zero-shot score). α, β default
    to the cache's. Computed in float32 on the query's device.
    """
    if query.ndim != 2 or query.shape[1] != cache.dim:
        raise InputError(f"query features must be (B, {cache.dim}) to match the few-shot cache, "
                         f"got {tuple(query.shape)}")
    alpha = cache.alpha if alpha is None else float(alpha)
    beta = cache.beta if beta is None else float(beta)
    q = query.float()
    keys = cache.keys.to(q.device, torch.float32)
    affinity = torch.exp(-beta * (1.0 - q @ keys.T))  # (B, K)
    return alpha * affinity @ _label_matrix(cache, class_labels, q.device, torch.float32)


def can_tune(cache: FewShotCache) -> bool:
    """Whether `tune` can hold a shot out: some label has at least two shots (else it keeps the defaults)."""
    return bool((torch.bincount(cache.targets, minlength=len(cache.labels)) >= 2).any())


def tune(cache: FewShotCache, zero_shot_logits: torch.Tensor,
         grid: tuple[Sequence[float], Sequence[float]] = DEFAULT_GRID) -> tuple[float, float]:
    """α, β maximising leave-one-out accuracy on the shots of the cache alone.

    zero_shot_logits: (K, len(cache.labels)) the zero-shot logits (``logit_scale · score``) of the cached
    shots over the cache's own labels, in order. Each shot is scored with ``zero_shot + α · A_{-k} L`` where
    A_{-k} is its affinity to every *other* key (its own key is excluded), and counts as correct when its
    arg-max is its target. grid: (alphas, betas), by default α ∈ {0, 0.25, …, 5} and β ∈ {0.5, 1, …, 10}.
    Ties go to the smallest α, then the smallest β. Nothing but the cache and its shots' logits is read, so
    no test label can leak in. Labels with one shot cannot be held out; with no label holding two shots the
    defaults are returned.
    """
    alphas, betas = sorted(float(a) for a in grid[0]), sorted(float(b) for b in grid[1])
    if not alphas or not betas:
        raise InputError("the tuning grid needs at least one alpha and one beta")
    k, c = cache.targets.shape[0], len(cache.labels)
    logits = torch.as_tensor(zero_shot_logits).detach().to("cpu", torch.float64)
    if tuple(logits.shape) != (k, c):
        raise InputError(f"zero-shot logits of the shots must be ({k}, {c}), got {tuple(logits.shape)}")
    counts = torch.bincount(cache.targets, minlength=c)
    single = int((counts == 1).sum())
    if not can_tune(cache):
        log.warning("few-shot tuning needs at least 2 shots of a label; keeping alpha=%g, beta=%g",
                    DEFAULT_ALPHA, DEFAULT_BETA)
        return DEFAULT_ALPHA, DEFAULT_BETA
    if single:
        log.warning("%d label(s) have a single shot: leave-one-out cannot check them", single)
    keys = cache.keys.to(torch.float64)
    sims = keys @ keys.T
    onehot = F.one_hot(cache.targets, c).to(torch.float64)
    targets = cache.targets
    best, best_correct = (alphas[0], betas[0]), -1
    per_beta = {}
    for beta in betas:
        affinity = torch.exp(-beta * (1.0 - sims))
        affinity.fill_diagonal_(0.0)
        per_beta[beta] = affinity @ onehot
    for alpha in alphas:
        for beta in betas:
            correct = int(((logits + alpha * per_beta[beta]).argmax(dim=1) == targets).sum())
            if correct > best_correct:
                best, best_correct = (alpha, beta), correct
    log.info("few-shot tuning: alpha=%g beta=%g, leave-one-out accuracy %d/%d", best[0], best[1], best_correct, k)
    return best


# ---- PointCLIP's inter-view adapter -----------------------------------------------------------------------
class InterViewAdapter(nn.Module):
    """PointCLIP's inter-view adapter on view features (B, V, D) -> adapted view features (B, V, D).

    With f the view features, w the learnable inter-view fusion ratios (V,) and r = ``ratio``:
    global branch ``g = Drop(ReLU(BN(Linear_{VD→D}(flatten(Drop(BN_D(w_v · f_v)))))))`` where BN_D normalises
    each of the D channels over all B·V views; view-wise branch ``a = ReLU(Linear_{D→VD}(ReLU(Linear_{D→D}(g))))``;
    output ``r · a + (1 - r) · f``, reshaped to (B, V, D). Initialisation as the reference: w = ``fusion_init``
    for every view, PyTorch's defaults for the linear and batch-norm layers. The output is not normalised; use
    :func:`adapted_view_features` to get features that fuse like unit view features.
    """

    def __init__(self, num_views: int, dim: int, ratio: float = ADAPTER_RATIO,
                 fusion_init: float = ADAPTER_FUSION_INIT, dropout: float = ADAPTER_DROPOUT):
        super().__init__()
        if num_views < 1 or dim < 1:
            raise InputError(f"an adapter needs at least one view and one channel, got {num_views} x {dim}")
        self.num_views, self.dim = int(num_views), int(dim)
        self.ratio, self.fusion_init, self.dropout = float(ratio), float(fusion_init), float(dropout)
        self.fusion_ratio = nn.Parameter(torch.full((num_views,), self.fusion_init))
        self.view_norm = nn.BatchNorm1d(dim)
        self.global_linear = nn.Linear(num_views * dim, dim)
        self.global_norm = nn.BatchNorm1d(dim)
        self.expand_hidden = nn.Linear(dim, dim)
        self.expand_views = nn.Linear(dim, num_views * dim)
        self.drop = nn.Dropout(self.dropout)

    def config(self) -> dict:
        """The constructor's arguments, to rebuild the module."""
        return {"num_views": self.num_views, "dim": self.dim, "ratio": self.ratio,
                "fusion_init": self.fusion_init, "dropout": self.dropout}

    def forward(self, view_feats: torch.Tensor) -> torch.Tensor:
        b, v, d = view_feats.shape
        if (v, d) != (self.num_views, self.dim):
            raise InputError(f"the adapter was trained on {self.num_views} views of {self.dim} channels, "
                             f"got {v} x {d}")
        x = view_feats * self.fusion_ratio.view(1, v, 1)
        x = self.view_norm(x.reshape(b * v, d)).reshape(b, v * d)
        g = self.drop(F.relu(self.global_norm(self.global_linear(self.drop(x)))))
        a = F.relu(self.expand_views(F.relu(self.expand_hidden(g))))
        return (self.ratio * a + (1.0 - self.ratio) * view_feats.reshape(b, v * d)).reshape(b, v, d)


def _adapter_input(adapter: InterViewAdapter, feats: torch.Tensor) -> torch.Tensor:
    param = adapter.fusion_ratio
    return feats.to(param.device, param.dtype)


def adapted_view_features(adapter: InterViewAdapter, view_feats: torch.Tensor) -> torch.Tensor:
    """Adapted view features (B, V, D), normalised over all V·D values together and scaled by √V.

    PointCLIP normalises the concatenated adapted views and matches them with the text feature repeated V
    times; ``Σ_v β_v <out_v, t_c>`` with these features and uniform β = 1/V is exactly that cosine. So the
    output can go wherever unit view features go (the zero-shot fusion ``Σ_v β_v <f_v, t_c>``).
    """
    out = adapter(_adapter_input(adapter, view_feats))
    b, v, d = out.shape
    return (F.normalize(out.reshape(b, v * d), dim=-1) * math.sqrt(v)).reshape(b, v, d)


def adapter_scores(adapter: InterViewAdapter, view_feats: torch.Tensor, text: torch.Tensor,
                   view_weights: torch.Tensor) -> torch.Tensor:
    """Scores (B, C) = Σ_v β_v <â_v, t_c> with â = :func:`adapted_view_features`, text (C, D) unit features.

    On the same scale as the zero-shot score: the caller multiplies by ``logit_scale``. With non-uniform β this
    differs from PointCLIP's post-hoc weighted logits only by the constant factor ``Σ w / V`` of unnormalised
    weights w.
    """
    feats = adapted_view_features(adapter, view_feats)
    w = _unit_weights(view_weights, feats.shape[1], feats)
    t = text.to(feats.device, feats.dtype)
    return torch.einsum("bvd,cd,v->bc", feats, t, w)


def smooth_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, eps: float = LABEL_SMOOTHING) -> torch.Tensor:
    """PointCLIP's label-smoothed cross-entropy: target 1 - eps on the true class, eps / (C - 1) on each other."""
    c = logits.shape[1]
    if c < 2:
        raise InputError("training the adapter needs at least two labels")
    onehot = F.one_hot(targets, c).to(logits.dtype)
    soft = onehot * (1.0 - eps) + (1.0 - onehot) * (eps / (c - 1))
    return -(soft * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def _epoch_lr(epoch: int, epochs: int, lr: float) -> float:
    """Dassl's constant warm-up then CosineAnnealingLR(T_max=epochs), restarted after the warm-up."""
    if epoch < WARMUP_EPOCHS:
        return WARMUP_LR
    return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - WARMUP_EPOCHS) / epochs))


def train_adapter(view_feats: torch.Tensor, targets: torch.Tensor, text: Optional[torch.Tensor] = None,
                  view_weights: Optional[torch.Tensor] = None, logit_scale: Optional[float] = None,
                  epochs: int = TRAIN_EPOCHS, lr: float = TRAIN_LR, seed: int = 0, *, batch_size: int = TRAIN_BATCH,
                  ratio: float = ADAPTER_RATIO, fusion_init: float = ADAPTER_FUSION_INIT,
                  dropout: float = ADAPTER_DROPOUT, device: Union[str, torch.device] = "cpu",
                  logits: Optional[Callable[[InterViewAdapter, torch.Tensor], torch.Tensor]] = None
                  ) -> InterViewAdapter:
    """Fit an :class:`InterViewAdapter` on cached unit view features (K, V, D) with targets (K,) indexing the labels.

    ``logits(adapter, view_feats) -> (B, C)`` scores the adapted features (a Recognizer passes its own
    `Recognizer.adapter_logits`, the adapted branch of its one scoring step); without it they are
    ``logit_scale · adapter_scores(adapter, f, text, view_weights)`` of text features (C, D). Loss
    :func:`smooth_cross_entropy`; SGD with the reference's
    momentum, weight decay, batch size, one constant warm-up epoch and a cosine schedule (constants above).
    Unlike the reference there is no point-cloud augmentation (the encoder never runs again) and no checkpoint
    selection on validation (test) accuracy: the last epoch is returned. Seeded: the weights depend only on the
    inputs and ``seed``; the caller's global RNG state is left as it was. Returns the adapter in eval mode.
    """
    device = torch.device(device)
    feats = view_feats.detach().to(device, torch.float32)
    y = torch.as_tensor(targets, dtype=torch.int64).to(device)
    if feats.ndim != 3 or y.shape != (feats.shape[0],):
        raise InputError(f"view features must be (K, V, D) with K targets, got {tuple(feats.shape)} "
                         f"and {tuple(y.shape)}")
    k, v, d = feats.shape
    if k < 2:
        raise InputError("training the adapter needs at least two labelled examples")
    if logits is None:
        if text is None or view_weights is None or logit_scale is None:
            raise ValueError("train_adapter needs logits=, or text, view_weights and logit_scale")
        t = F.normalize(text.detach().to(device, torch.float32), dim=-1)
        w = torch.as_tensor(view_weights).detach().to(device, torch.float32)
        if t.shape[1] != d or (k and (int(y.min()) < 0 or int(y.max()) >= t.shape[0])):
            raise InputError(f"text features must be (C, {d}) with every target below C")
        scale = float(logit_scale)

        def logits(adapter: InterViewAdapter, f: torch.Tensor) -> torch.Tensor:
            return scale * adapter_scores(adapter, f, t, w)
    if epochs < 0 or batch_size < 2:
        raise InputError("epochs must be >= 0 and the batch size >= 2")
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        adapter = InterViewAdapter(v, d, ratio=ratio, fusion_init=fusion_init, dropout=dropout).to(device)
        optimiser = torch.optim.SGD(adapter.parameters(), lr=lr, momentum=SGD_MOMENTUM, weight_decay=WEIGHT_DECAY)
        order = torch.Generator().manual_seed(seed)
        # Dassl drops the last incomplete batch when there are enough examples for a full one
        step = min(batch_size, k)
        adapter.train()
        for epoch in range(epochs):
            for group in optimiser.param_groups:
                group["lr"] = _epoch_lr(epoch, epochs, lr)
            perm = torch.randperm(k, generator=order).to(device)
            total = 0.0
            for start in range(0, k - step + 1, step):
                batch = perm[start:start + step]
                loss = smooth_cross_entropy(logits(adapter, feats[batch]), y[batch])
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                total += float(loss.detach())
            log.debug("adapter epoch %d/%d: loss %.4f", epoch + 1, epochs, total / (k // step))
    adapter.eval()
    log.info("trained the inter-view adapter on %d examples for %d epochs", k, epochs)
    return adapter


# ---- metadata -----------------------------------------------------------------------------------------------
def settings_hash(settings: Any) -> str:
    """sha256 of a preset's settings (a dict or a dataclass such as RecognizerConfig) as canonical JSON."""
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        settings = dataclasses.asdict(settings)
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_metadata(model: str, pretrained: str, precision: str, preset: str, settings: Any, falip: bool,
                   shots: int, points: Optional[int], up_axis: str) -> dict:
    """The metadata of a cache: how its features were made (``settings`` is hashed with :func:`settings_hash`)."""
    return {"model": str(model), "pretrained": str(pretrained), "precision": str(precision), "preset": str(preset),
            "preset_hash": settings_hash(settings), "falip": bool(falip), "shots": int(shots),
            "points": None if points is None else int(points), "up_axis": str(up_axis),
            "format_version": FORMAT_VERSION}


def check_compatible(cache: FewShotCache, expected_metadata: Mapping[str, Any]) -> None:
    """Raise InputError naming the first of model, pretrained, precision, preset_hash, falip that differs.

    Only keys present in ``expected_metadata`` are compared; a key the cache lacks counts as different.
    """
    for key in COMPATIBILITY_KEYS:
        if key not in expected_metadata:
            continue
        have, want = cache.metadata.get(key, "<missing>"), expected_metadata[key]
        if have != want:
            extra = f" (cache preset '{cache.metadata.get('preset')}')" if key == "preset_hash" else ""
            raise InputError(f"the few-shot cache does not match the recognizer: {key} is {have!r}{extra} in the "
                             f"cache but {want!r} now; rebuild the cache with these settings")


# ---- storage ------------------------------------------------------------------------------------------------
_ADAPTER_PREFIX = "adapter."
_HEADER_BYTES = 8
_MAX_HEADER = 100_000_000  # safetensors' own limit on the JSON header
MAX_CACHE_BYTES = 16 << 30  # a cache larger than this is not one (10,000 shots x 10 views x 1024 floats is 400 MB)


def save_cache(path: PathLike, cache: FewShotCache) -> None:
    """Write ``cache`` as one safetensors file, atomically (temporary file in the same folder, fsync, replace).

    Tensors: view_keys, keys (float32), targets (int64) and ``adapter.<name>`` for the adapter's state.
    String metadata, each value JSON: format, labels, alpha, beta, adapter (its config or null), and
    ``meta.<key>`` for every metadata entry (format_version is always the current one).
    """
    from safetensors.torch import save

    path = Path(path)
    tensors = {"view_keys": cache.view_keys.detach().float().cpu().contiguous(),
               "keys": cache.keys.detach().float().cpu().contiguous(),
               "targets": cache.targets.detach().to("cpu", torch.int64).contiguous()}
    if cache.adapter is not None:
        for name, value in cache.adapter.state_dict().items():
            tensors[_ADAPTER_PREFIX + name] = value.detach().cpu().clone().contiguous()
    metadata = {**cache.metadata, "format_version": FORMAT_VERSION}
    header = {"format": FORMAT_NAME, "labels": list(cache.labels), "alpha": float(cache.alpha),
              "beta": float(cache.beta), "adapter": None if cache.adapter is None else cache.adapter.config()}
    header.update({f"meta.{key}": value for key, value in metadata.items()})
    try:
        strings = {key: json.dumps(value) for key, value in header.items()}
    except TypeError as e:
        raise InputError(f"few-shot cache metadata must be JSON values: {e}") from e
    data = save(tensors, metadata=strings)
    _write_atomic(path, data)
    log.info("saved a few-shot cache of %d examples (%d labels) to %s", len(cache.targets), len(cache.labels), path)


def _write_atomic(path: Path, data: bytes) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: the folder {folder} does not exist")
    atomic_write(path, lambda f: f.write(data))


def _read_header(path: Path, data: bytes) -> dict:
    bad = f"{path} is not a pointfalip few-shot cache"
    if len(data) < _HEADER_BYTES:
        raise InputError(f"{bad} (file too short or truncated)")
    size = int.from_bytes(data[:_HEADER_BYTES], "little")
    if size > _MAX_HEADER or _HEADER_BYTES + size > len(data):
        raise InputError(f"{bad} (no safetensors header, or the file is truncated)")
    try:
        header = json.loads(data[_HEADER_BYTES:_HEADER_BYTES + size].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InputError(f"{bad} (unreadable safetensors header)") from None
    strings = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(strings, dict) or "format" not in strings:
        raise InputError(f"{bad} (a safetensors file without few-shot metadata)")
    try:
        meta = {key: json.loads(value) for key, value in strings.items()}
    except (TypeError, ValueError, RecursionError):
        raise InputError(f"{bad} (metadata is not JSON)") from None
    if meta.get("format") != FORMAT_NAME:
        raise InputError(f"{bad} (format {meta.get('format')!r})")
    version = meta.get("meta.format_version")
    if version != FORMAT_VERSION:
        raise InputError(f"{path} is a few-shot cache of format version {version}, this pointfalip reads version "
                         f"{FORMAT_VERSION}: rebuild it with `pointfalip fewshot build`")
    return meta


def load_cache(path: PathLike) -> FewShotCache:
    """Read a cache written by :func:`save_cache`.

    A missing, truncated, foreign or wrong-version file raises InputError with a one-line message.
    """
    from safetensors.torch import load

    path = Path(path)
    data = read_input(path, "few-shot cache", limit=MAX_CACHE_BYTES)
    meta = _read_header(path, data)
    try:
        tensors = load(data)
    except Exception:  # safetensors raises its own error types for corrupt data
        raise InputError(f"{path} is a damaged or truncated few-shot cache: rebuild it") from None
    missing = [name for name in ("view_keys", "keys", "targets") if name not in tensors]
    if missing:
        raise InputError(f"{path} is a damaged few-shot cache: no {', '.join(missing)}")
    labels = meta.get("labels")
    if not isinstance(labels, list):
        raise InputError(f"{path} is a damaged few-shot cache: no label list")
    adapter = None
    config = meta.get("adapter")
    if config is not None:
        state = {name[len(_ADAPTER_PREFIX):]: value for name, value in tensors.items()
                 if name.startswith(_ADAPTER_PREFIX)}
        try:
            adapter = InterViewAdapter(**config)
            adapter.load_state_dict(state)
        except (TypeError, RuntimeError, InputError):
            raise InputError(f"{path} is a damaged few-shot cache: its adapter does not load") from None
        adapter.eval()
    metadata = {key[len("meta."):]: value for key, value in meta.items() if key.startswith("meta.")}
    try:
        cache = FewShotCache(tensors["view_keys"], tensors["keys"], labels, tensors["targets"],
                             meta.get("alpha", DEFAULT_ALPHA), meta.get("beta", DEFAULT_BETA), metadata, adapter)
    except (InputError, TypeError, ValueError) as e:
        raise InputError(f"{path} is a damaged few-shot cache: {e}") from None
    if adapter is not None and (adapter.num_views, adapter.dim) != (cache.num_views, cache.dim):
        raise InputError(f"{path} is a damaged few-shot cache: its adapter does not fit its features")
    return cache


# ---- shot selection -----------------------------------------------------------------------------------------
def select_shots(labels: Union[Sequence[int], np.ndarray, torch.Tensor], shots: int,
                 seed: int) -> tuple[np.ndarray, dict[int, int]]:
    """Indices (sorted, int64) of ``shots`` examples per class and the number taken of every class.

    labels: (N,) integer class of each example. Classes are visited in increasing order and each draws
    without replacement from ``np.random.default_rng(seed)``; a class with fewer examples gives all it has
    (its count tells the caller to warn).
    """
    if isinstance(shots, bool) or int(shots) != shots or shots < 1:
        raise InputError(f"shots must be a positive integer, got {shots!r}")
    arr = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).reshape(-1)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InputError("select_shots needs integer class labels")
    rng = np.random.default_rng(seed)
    chosen, counts = [], {}
    for cls in np.unique(arr):
        members = np.flatnonzero(arr == cls)
        if len(members) > shots:
            members = rng.choice(members, size=int(shots), replace=False)
        chosen.append(members)
        counts[int(cls)] = int(len(members))
    indices = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    return indices.astype(np.int64), counts


# ---- building from labelled clouds --------------------------------------------------------------------------
BUILD_BATCH = 16  # clouds encoded together while building a cache: bounds memory, keeps batches large


def embed_examples(recognizer, dataset, indices: Sequence[int], with_plain: bool = False,
                   progress: bool = True) -> tuple[torch.Tensor, Optional[torch.Tensor], list[int], list[str]]:
    """View features (K, V, D) of the dataset's items ``indices`` by `Recognizer.embed` (and the plain copy with
    ``with_plain``), their targets and sources; unreadable items are skipped (one warning), none readable is an
    InputError."""
    from tqdm import tqdm

    feats, plain, targets, sources, skipped = [], [], [], [], []
    indices = [int(i) for i in indices]
    bar = tqdm(total=len(indices), unit="obj", desc="few-shot examples", disable=not progress)
    try:
        for start in range(0, len(indices), BUILD_BATCH):
            clouds = []
            for i in indices[start:start + BUILD_BATCH]:
                try:
                    points, label = dataset[i]
                    clouds.append(recognizer.prepare([points])[0])
                except InputError as e:
                    skipped.append(f"{dataset.source(i)}: {e}")
                    continue
                targets.append(int(label))
                sources.append(dataset.source(i))
            if clouds:
                out = recognizer.embed(clouds, prepared=True, with_plain=with_plain)
                feats.append((out[0] if with_plain else out).cpu())
                if with_plain:
                    plain.append(out[1].cpu())
            bar.update(len(indices[start:start + BUILD_BATCH]))
    finally:
        bar.close()
    if not feats:
        raise InputError(f"no readable example in {dataset.root} (first: {skipped[0] if skipped else 'none'})")
    if skipped:
        log.warning("skipped %d unreadable example(s), first: %s", len(skipped), skipped[0])
    return torch.cat(feats), (torch.cat(plain) if with_plain else None), targets, sources


def draw_shots(dataset, shots: int, seed: int) -> np.ndarray:
    """`select_shots` over a dataset's labels, refusing classes without any example and warning once for
    classes with fewer than ``shots``."""
    classes = list(dataset.classes)
    indices, counts = select_shots(dataset.labels, shots, seed)
    empty = [classes[c] for c in range(len(classes)) if counts.get(c, 0) == 0]
    if empty:
        raise InputError(f"no example of {', '.join(empty)} in {dataset.root}: every label needs at least one "
                         "(an empty class folder?)")
    short = [f"{classes[c]} ({n})" for c, n in sorted(counts.items()) if n < shots]
    if short:
        log.warning("fewer than %d examples for %s: using what exists", shots, ", ".join(short))
    return indices


def cache_from_features(recognizer, view_feats: torch.Tensor, targets: Sequence[int], shots: int, points,
                        tune_cache: bool = False, adapter: bool = False, adapter_epochs: int = TRAIN_EPOCHS,
                        seed: int = 0) -> FewShotCache:
    """A cache of the recognizer's labels (they are the classes ``targets`` index) from encoded examples:
    α, β tuned by leave-one-out on the examples alone with ``tune_cache``, PointCLIP's adapter with ``adapter``."""
    weights = recognizer.view_weights(view_feats.shape[1]).cpu()
    metadata = recognizer.fewshot_metadata(shots, points)
    cache = build_cache(view_feats, targets, list(recognizer.labels), weights, metadata)
    if tune_cache:
        if recognizer.fewshot is not None:
            raise ValueError("tuning a new cache needs the zero-shot logits: use a recognizer without a cache")
        with torch.no_grad():  # the shots' zero-shot logits, scored as every query is (Recognizer.logits)
            zero_shot = recognizer.logits(view_feats.to(recognizer.model.device)).float().cpu()
        cache.alpha, cache.beta = tune(cache, zero_shot)
        cache.metadata["tuned"] = can_tune(cache)
    if adapter:
        cache.adapter = train_adapter(view_feats, cache.targets, epochs=adapter_epochs, seed=seed,
                                      logits=recognizer.adapter_logits)
    return cache


def build_from_dataset(recognizer, dataset, shots: int, seed: int = 0, tune_cache: bool = False,
                       adapter: bool = False, adapter_epochs: int = TRAIN_EPOCHS,
                       progress: bool = True) -> FewShotCache:
    """A cache of ``shots`` examples per class of a `pointfalip.datasets.Dataset`, drawn with ``seed``, each
    encoded once with the recognizer's own model, preset and FALIP setting (`Recognizer.embed`).

    The recognizer's labels must be the dataset's classes, in order (`tune_cache` scores the shots against
    them; the adapter trains on them). A class with fewer examples gives what it has (one warning); a class
    without any, or a dataset with nothing readable, is an InputError. Unreadable items are skipped.
    """
    if list(recognizer.labels) != list(dataset.classes):
        raise ValueError("the recognizer's labels must be the dataset's classes, in order")
    indices = draw_shots(dataset, shots, seed)
    feats, _, targets, _ = embed_examples(recognizer, dataset, indices, progress=progress)
    return cache_from_features(recognizer, feats, targets, shots, getattr(dataset, "num_points", None),
                               tune_cache=tune_cache, adapter=adapter, adapter_epochs=adapter_epochs, seed=seed)
