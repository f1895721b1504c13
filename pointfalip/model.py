"""CLIP models from open_clip, wrapped so that the image encoder can take a foveal attention bias (FALIP).

Here: the device and precision policy (`check_device`, `default_device`, `default_precision`, `PRECISIONS`),
`load_model` (the model and its weights from `pointfalip.weights`: open_clip tags, ``hf-hub:`` ids, local
checkpoints in open_clip or OpenAI format, ``"none"``) and `FalipCLIP`, whose `encode_image` adds a bias to the
CLS query's attention logits toward the patch tokens in chosen blocks and heads, computing every other attention
row exactly as open_clip does. The block paths (foveal, plain, ClearCLIP) are `pointfalip.attention`'s.
"""
from __future__ import annotations

import logging
from typing import Iterable, Optional, Sequence, Union

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import PatchDropout, VisionTransformer
from torch import nn

from . import attention
from .attention import FovealPlan, clearclip_block
from .errors import InputError, UnsupportedModel
from .presets import PRECISION_CHOICES
from .weights import build_clip, resolve_model_name
# names that lived here, re-exported for their old import paths (pointfalip.model.config_grid, ...)
from .weights import RANDOM_WEIGHTS_SEED, config_grid, is_random

__all__ = ["DENSE_MODES", "PRECISIONS", "RANDOM_WEIGHTS_SEED", "RESIZE_MODES", "FalipCLIP", "UnsupportedModel",
           "check_device", "config_grid", "default_device", "default_precision", "is_random", "load_model",
           "resolve_model_name"]

log = logging.getLogger(__name__)

# Weights and activations are cast to the chosen dtype. On CPU, torch's bf16 autocast was measured 3x slower
# than fp32 while bf16 weights run 7x faster with feature cosine 0.99995 (bench/bench_falip.py).
PRECISIONS = dict(zip(PRECISION_CHOICES[1:], (torch.float32, torch.bfloat16, torch.float16)))  # name -> dtype
_TEXT_BATCH = 256
DENSE_MODES = ("tokens", "clearclip")  # how encode_image(..., return_tokens=True) makes its patch tokens
RESIZE_MODES = ("shortest", "longest", "squash")  # open_clip's eval resize modes

ImageBias = Optional[torch.Tensor]


def _cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_device(device: Union[str, torch.device]) -> torch.device:
    """The torch device, if this machine has it; else a one-line InputError."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise InputError(f"unknown device '{device}': use cpu or cuda") from e
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if dev.type not in available:
        raise InputError(f"device '{device}' cannot run the model: use cpu or cuda")
    if not available[dev.type]:
        raise InputError(f"device '{device}' is not available on this machine: use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device '{device}': this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def default_device() -> str:
    """"cuda" where a CUDA device is available, else "cpu": the device a run uses unless told otherwise."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_precision(device: Union[str, torch.device]) -> str:
    """fp16 on CUDA (the references run CLIP in fp16 there), bf16 on CPUs with native bf16 (AVX512-BF16 or
    AMX: about 7x faster than fp32 for ViT-B-16, feature cosine ≥ 0.9999), fp32 elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return "fp16"
    return "bf16" if device.type == "cpu" and _cpu_has_native_bf16() else "fp32"


def load_model(name: str = "ViT-B-16", pretrained: Optional[str] = "openai", device: Union[str, torch.device] = "cpu",
               precision: str = "fp32", compile: Union[bool, str] = False) -> "FalipCLIP":
    """Load an open_clip model as a `FalipCLIP`.

    name: an open_clip model name, or a model config JSON file (registered under its file stem).
    pretrained: an open_clip tag ("openai", "laion2b_s34b_b88k", ...), an "hf-hub:org/repo" id, a local
    checkpoint (open_clip format; or OpenAI format, a TorchScript archive or a plain state dict, which implies
    QuickGELU), or "none" for random weights. precision: "fp32", "bf16" or "fp16": the dtype of the weights and
    of the computation; images and outputs stay float32 for the caller. compile: run the image encoder compiled
    (`pointfalip.compiled`): True or "inductor" (``torch.compile``, its code cached on disk for later processes),
    "openvino" (an OpenVINO model, on the CPU). The first call of each kind compiles (seconds to a minute).
    """
    device = check_device(device)
    if precision == "auto":
        precision = default_precision(device)
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}': choose one of auto, {', '.join(PRECISIONS)}")
    name = resolve_model_name(name)
    clip = build_clip(name, pretrained)
    tokenizer_name = pretrained if str(pretrained).startswith("hf-hub:") else name
    tokenizer = open_clip.get_tokenizer(tokenizer_name)
    return FalipCLIP(clip, tokenizer, name=name, pretrained=str(pretrained), precision=precision,
                     compile=compile).to(device).eval()


class FalipCLIP(nn.Module):
    """An open_clip CLIP whose ViT image encoder can take a foveal bias on the CLS query's attention."""

    def __init__(self, clip: nn.Module, tokenizer, name: str = "", pretrained: str = "", precision: str = "fp32",
                 compile: Union[bool, str] = False):
        super().__init__()
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
        self.clip = clip.to(PRECISIONS[precision])
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.precision = precision
        self._compiled_encoder = None
        self.compile_engine: Optional[str] = None
        self.set_compile(compile)

    @property
    def compiled(self) -> bool:
        """Whether the image encoder runs compiled (`set_compile`)."""
        return self._compiled_encoder is not None

    def set_compile(self, compile: Union[bool, str] = True) -> "FalipCLIP":
        """Run the image encoder's blocks compiled or eagerly: True or "inductor" (``torch.compile``), "openvino"
        (an OpenVINO model, CPU), False (eager); see `pointfalip.compiled`.

        Compiled, the blocks' weights are read into the compiled code at the first call of each kind: change
        weights only before it (or call ``set_compile`` again). The foveal bias stays an input; batch sizes share
        one compiled graph.
        """
        from .compiled import check_engine, compile_encoder

        engine = check_engine(compile)
        if engine != self.compile_engine:
            self._compiled_encoder = compile_encoder(self, engine) if engine else None
            self.compile_engine = engine
        return self

    # ---- properties read from the wrapped model -------------------------------------------------------
    @property
    def visual(self) -> nn.Module:
        return self.clip.visual

    @property
    def is_vit(self) -> bool:
        return isinstance(self.visual, VisionTransformer)

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (gh, gw) of the image encoder."""
        self._require_vit()
        return tuple(self.visual.grid_size)

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.visual.image_size
        return (size, size) if isinstance(size, int) else tuple(size)

    @property
    def num_layers(self) -> int:
        self._require_vit()
        return len(self.visual.transformer.resblocks)

    @property
    def num_heads(self) -> int:
        self._require_vit()
        return self.visual.transformer.resblocks[0].attn.num_heads

    @property
    def device(self) -> torch.device:
        return self.clip.logit_scale.device

    @property
    def logit_scale(self) -> float:
        return float(self.clip.logit_scale.detach().exp().clamp(max=100.0))

    @property
    def preprocess_cfg(self) -> dict:
        return open_clip.get_model_preprocess_cfg(self.clip)

    def preprocess_config(self, resize_mode: Optional[str] = None) -> dict:
        """The model's preprocessing settings, with another resize mode if one is given."""
        cfg = dict(self.preprocess_cfg)
        if resize_mode is not None:
            if resize_mode not in RESIZE_MODES:
                raise InputError(f"unknown resize mode '{resize_mode}': choose one of {', '.join(RESIZE_MODES)}")
            cfg["resize_mode"] = resize_mode
        return cfg

    def preprocess(self, image, resize_mode: Optional[str] = None) -> torch.Tensor:
        """A PIL image -> (3, H, W) tensor exactly as open_clip's eval transform makes it.

        resize_mode: overrides the model's ("shortest", "longest" or "squash": the whole image resized to the
        input size, as ReCLIP's square-size preprocessing does).
        """
        cfg = open_clip.transform.PreprocessCfg(**self.preprocess_config(resize_mode))
        return open_clip.transform.image_transform_v2(cfg, is_train=False)(image)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the encoders compute in."""
        return PRECISIONS[self.precision]

    # ---- encoders -----------------------------------------------------------------------------------
    def encode_text(self, texts: Union[str, Sequence[str]], normalize: bool = False) -> torch.Tensor:
        """Text features (T, D) for a list of strings, tokenized by the model's own tokenizer."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        feats = []
        for start in range(0, len(texts), _TEXT_BATCH):
            tokens = self.tokenizer(texts[start:start + _TEXT_BATCH]).to(self.device)
            feats.append(self.clip.encode_text(tokens).float())
        out = torch.cat(feats) if feats else torch.empty(0, self.visual.output_dim, device=self.device)
        return F.normalize(out, dim=-1) if normalize else out

    def encode_image(self, images: torch.Tensor, cls_bias: ImageBias = None, layers: Optional[Iterable[int]] = None,
                     heads: Optional[Iterable[int]] = None, amplify: float = 0.0, normalize: bool = False,
                     return_tokens: bool = False, dense: str = "tokens"):
        """Image features (N, D) with an optional foveal bias; with return_tokens, also the patch tokens.

        images: (N, 3, H, W) preprocessed, any float dtype. cls_bias: (N, gh, gw) or (N, gh*gw) added to the CLS
        query's attention logits toward the patch tokens in blocks `layers` (default: the last four; negative
        indices allowed) and heads `heads` (default: all). amplify: γ of the head-sensitivity rule
        G'_h + γ(G'_h - G_h) on the CLS output of those blocks. cls_bias=None is open_clip's encode_image.

        return_tokens: return ``(features (N, D), tokens (N, gh*gw, D))``, the patch tokens after ``ln_post`` and
        the projection (float32, unit-normalised with ``normalize``), in row-major patch order. dense: how the
        tokens are made, one of `DENSE_MODES`: "tokens" (the encoder's own last block, PointCLIP V2's dense
        features) or "clearclip" (ClearCLIP's last block, see `attention.clearclip_block`; the pooled features stay
        the encoder's own).
        """
        images = images.to(self.device, self.dtype)
        if dense not in DENSE_MODES:
            raise InputError(f"unknown dense mode '{dense}': choose one of {', '.join(DENSE_MODES)}")
        if cls_bias is None and not return_tokens and not self.is_vit:
            feats = self.clip.encode_image(images)
        elif not return_tokens:
            feats = self._encode_foveal(images, cls_bias, layers, heads, amplify)
        else:
            x, plan = self._trunk(images, cls_bias, layers, heads, amplify, last="skip" if dense == "clearclip" else "all")
            if dense == "clearclip":
                dense_x = clearclip_block(self.visual.transformer.resblocks[-1], x)
                x = self._run_last_block(x, plan)
                feats, _ = self._pool_project(x)
                _, tokens = self._pool_project(dense_x)
            else:
                feats, tokens = self._pool_project(x)
            if return_tokens:
                feats, tokens = feats.float(), tokens.float()
                if normalize:
                    feats, tokens = F.normalize(feats, dim=-1), F.normalize(tokens, dim=-1)
                return feats, tokens
        feats = feats.float()
        return F.normalize(feats, dim=-1) if normalize else feats

    # ---- foveal forward -----------------------------------------------------------------------------
    def _require_vit(self) -> None:
        if not self.is_vit:
            raise UnsupportedModel(f"model '{self.name}' has a {type(self.visual).__name__} image tower: foveal "
                                   "attention needs an open_clip ViT (e.g. ViT-B-16); use --no-falip or a ViT")

    def resolve_layers(self, layers: Optional[Iterable[int]]) -> list[int]:
        """Block indices (non-negative, sorted) of `layers` (default the last four); InputError if out of range."""
        n = self.num_layers
        chosen = list(range(max(0, n - 4), n)) if layers is None else list(layers)
        bad = [i for i in chosen if isinstance(i, bool) or not isinstance(i, int) or not -n <= i < n]
        if bad:
            raise InputError(f"foveal layers {chosen} do not fit model '{self.name}': its image encoder has {n} "
                             f"blocks (valid: {-n} .. {n - 1}); choose layers in that range in the preset")
        return sorted({i % n for i in chosen})

    def resolve_heads(self, heads: Optional[Iterable[int]]) -> Optional[list[int]]:
        """Head indices (non-negative, sorted) of `heads` (None: all); InputError if out of range."""
        if heads is None:
            return None
        h = self.num_heads
        chosen = list(heads)
        bad = [i for i in chosen if isinstance(i, bool) or not isinstance(i, int) or not -h <= i < h]
        if bad:
            raise InputError(f"foveal heads {chosen} do not fit model '{self.name}': its attention has {h} heads "
                             f"(valid: {-h} .. {h - 1}); choose heads in that range in the preset")
        return sorted({i % h for i in chosen})

    def _head_mask(self, heads: Optional[Iterable[int]]) -> Optional[torch.Tensor]:
        chosen = self.resolve_heads(heads)
        if chosen is None:
            return None
        mask = torch.zeros(self.num_heads, device=self.device)
        mask[chosen] = 1.0
        return mask

    def _embed(self, images: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Tokens after ln_pre, and the kept patch indices when patch dropout is active (training mode)."""
        v = self.visual
        pd = v.patch_dropout
        if not self._drops_patches:
            return v._embeds(images), None
        if not pd.exclude_first_token:
            raise UnsupportedModel("patch dropout that may drop the CLS token is not supported")
        x = v.conv1(images).flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        n, num_patches = x.shape[0], x.shape[1] - 1
        keep_n = max(1, int(num_patches * (1 - pd.prob)))
        keep = torch.randn(n, num_patches).topk(keep_n, dim=-1).indices.to(x.device)  # as open_clip draws it
        patches = x[:, 1:].gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))
        return v.ln_pre(torch.cat([x[:, :1], patches], dim=1)), keep

    def encode_dense(self, images: torch.Tensor, modes: Sequence[str] = ("tokens",),
                     normalize: bool = True) -> dict[str, torch.Tensor]:
        """Patch tokens (N, gh*gw, D) of the same images for each dense mode of `DENSE_MODES`: the blocks before
        the last run once, each mode runs its own last block (the encoder's, or ClearCLIP's) and the shared
        ``ln_post`` and projection. Float32, unit-normalised with ``normalize``."""
        unknown = [m for m in modes if m not in DENSE_MODES]
        if unknown or not modes:
            raise InputError(f"unknown dense mode {unknown[0] if unknown else None!r}: choose from "
                             f"{', '.join(DENSE_MODES)}")
        blocks = self.visual.transformer.resblocks
        x, plan = self._trunk(images.to(self.device, self.dtype), None, None, None, 0.0, last="skip")
        last = {"tokens": lambda: self._run_last_block(x, plan),
                "clearclip": lambda: clearclip_block(blocks[-1], x)}
        out = {}
        for mode in dict.fromkeys(modes):
            tokens = self._pool_project(last[mode]())[1].float()
            out[mode] = F.normalize(tokens, dim=-1) if normalize else tokens
        return out

    def encode_image_pair(self, images: torch.Tensor, cls_bias: torch.Tensor, layers: Optional[Iterable[int]] = None,
                          heads: Optional[Iterable[int]] = None, amplify: float = 0.0,
                          normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(foveal, plain) features of the same images in one pass: the blocks before the first foveal block run
        once, the rest run on both copies. The plain half equals `encode_image(images)` up to float rounding."""
        images = images.to(self.device, self.dtype)
        both = self._encode_foveal(images, cls_bias, layers, heads, amplify, with_plain=True)
        both = both.float()
        both = F.normalize(both, dim=-1) if normalize else both
        return both[:images.shape[0]], both[images.shape[0]:]

    def _encode_foveal(self, images, cls_bias, layers, heads, amplify, with_plain: bool = False) -> torch.Tensor:
        """Pooled features (N or 2N, D) in the model's dtype: only the CLS token goes through the last block
        where the encoder pools that token (`attention.cls_block`)."""
        x, _ = self._trunk(images, cls_bias, layers, heads, amplify, with_plain=with_plain,
                           last="cls" if self._pools_cls_token else "all")
        return self._pool_project(x)[0]

    @property
    def _drops_patches(self) -> bool:
        """Whether patch dropout is active (training mode): the compiled path leaves such calls to eager."""
        pd = self.visual.patch_dropout
        return isinstance(pd, PatchDropout) and pd.training and pd.prob > 0

    @property
    def _pools_cls_token(self) -> bool:
        v = self.visual
        return getattr(v, "attn_pool", None) is None and getattr(v, "pool_type", "tok") == "tok"

    def _trunk(self, images, cls_bias, layers, heads, amplify, with_plain: bool = False,
               last: str = "all") -> tuple[torch.Tensor, FovealPlan]:
        """Tokens after the transformer blocks with the foveal bias applied in the chosen blocks (`_run_encoder`'s
        ``last``), and the plan (`attention.FovealPlan`) of a block not yet run; with_plain doubles the batch from
        the first foveal block on (biased copy, then plain copy)."""
        self._require_vit()
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"images are {tuple(images.shape[-2:])} but {self.name} takes {self.image_size}")
        gh, gw = self.grid_size
        if cls_bias is None:
            plan = FovealPlan(frozenset(), None, amplify)
        else:
            plan = attention.foveal_plan(torch.as_tensor(cls_bias, device=self.device), self.resolve_layers(layers),
                                         images.shape[0], gh * gw, amplify, self._head_mask(heads))
        run = self._run_encoder
        if self._compiled_encoder is not None and not self._drops_patches:
            from .compiled import mark_batch_dynamic

            mark_batch_dynamic(images, plan.bias)
            run = self._compiled_encoder
        x, bias = run(images, plan.bias, tuple(sorted(plan.layers)), float(plan.amplify), with_plain, last)
        stop = self.num_layers - (0 if last == "all" else 1)
        return x, attention.plan_after(plan._replace(bias=bias), stop, with_plain)

    def _run_encoder(self, images: torch.Tensor, bias: Optional[torch.Tensor], layers: tuple, amplify: float,
                     with_plain: bool, last: str) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Images through the encoder's blocks under a foveal bias ``(N, H|1, 1, 1 + P)`` in blocks ``layers``:
        a function of tensors and constants only, what ``torch.compile`` takes whole.

        last: "all" runs every block; "skip" all but the last (the caller runs it, `_run_last_block`); "cls" the
        last one for the CLS token alone (`attention.run_cls_block`: tokens ``(N, 1, W)``). Returns the tokens and
        the bias of the patches kept (patch dropout in training mode drops some).
        """
        x, keep = self._embed(images)
        if keep is not None and bias is not None:
            bias = attention.kept_columns(bias, keep)
        transformer = self.visual.transformer
        blocks = transformer.resblocks
        stop = len(blocks) - (0 if last == "all" else 1)
        x, plan = attention.run_blocks(transformer, x, FovealPlan(frozenset(layers), bias, amplify), stop, with_plain)
        if last == "cls":
            x = attention.run_cls_block(blocks[-1], x, stop, plan, getattr(transformer, "batch_first", True))
        return x, bias

    def _run_last_block(self, x: torch.Tensor, plan: FovealPlan) -> torch.Tensor:
        """The encoder's last block on the tokens `_trunk` left with ``last="skip"``."""
        transformer = self.visual.transformer
        return attention.run_block(transformer.resblocks[-1], x, len(transformer.resblocks) - 1, plan,
                                   getattr(transformer, "batch_first", True))

    def _pool_project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (N, D), patch tokens (N, P, D)) after ln_post and the projection, as open_clip pools."""
        v = self.visual
        pooled, tokens = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
            tokens = tokens @ v.proj
        return pooled, tokens
