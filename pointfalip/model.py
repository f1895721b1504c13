"""CLIP models from open_clip, wrapped so that the image encoder can take a foveal attention bias (FALIP).

`load_model` resolves open_clip tags, ``hf-hub:`` ids, local checkpoints (open_clip or OpenAI format) and
``"none"``; `FalipCLIP.encode_image` adds a bias to the CLS query's attention logits toward the patch tokens
in chosen blocks and heads, computing every other attention row exactly as open_clip does.
"""
from __future__ import annotations

import logging
import os
import warnings
import zipfile
from typing import Iterable, Optional, Sequence, Union

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import PatchDropout, ResidualAttentionBlock, VisionTransformer
from torch import nn

from .errors import InputError, WeightsUnavailable
from .files import check_input_file
from .presets import PRECISION_CHOICES

log = logging.getLogger(__name__)

# Weights and activations are cast to the chosen dtype. On CPU, torch's bf16 autocast was measured 3x slower
# than fp32 while bf16 weights run 7x faster with feature cosine 0.99995 (bench/bench_falip.py).
PRECISIONS = dict(zip(PRECISION_CHOICES[1:], (torch.float32, torch.bfloat16, torch.float16)))  # name -> dtype
# Keys that only OpenAI's released state dicts carry (integer buffers of their `build_model`).
_OPENAI_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")
_TEXT_BATCH = 256
RANDOM_WEIGHTS_SEED = 0  # pretrained="none" draws its weights from this seed: repeatable runs, equal torchrun ranks
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


class UnsupportedModel(InputError):
    """The model's image tower cannot take a foveal bias (e.g. a ResNet CLIP)."""


def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def _read_checkpoint(path: str) -> tuple[dict, bool]:
    """State dict of a local checkpoint and whether it is in OpenAI's format (implies QuickGELU)."""
    if os.path.isdir(path):
        raise InputError(f"checkpoint {path} is a folder; give the checkpoint file")
    if not os.access(path, os.R_OK):
        raise InputError(f"checkpoint {path}: permission denied")
    try:
        if _is_torchscript_archive(path):
            return dict(torch.jit.load(path, map_location="cpu").state_dict()), True
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            ckpt = load_file(path)
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated archives, foreign pickles, broken safetensors headers
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise InputError(f"cannot read checkpoint {path}: not a checkpoint, or damaged ({reason})") from e
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        ckpt = ckpt["state_dict"]
    if not isinstance(ckpt, dict) or not ckpt:
        raise InputError(f"checkpoint {path} holds no state dict")
    bad = [str(k) for k, v in ckpt.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InputError(f"checkpoint {path}: '{bad[0]}' holds a {type(ckpt[bad[0]]).__name__}, not a tensor; "
                         "it is not a model state dict")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in ckpt.items()}
    return state, any(k in state for k in _OPENAI_ONLY_KEYS)


def is_random(pretrained: Optional[str]) -> bool:
    """Whether ``pretrained`` asks for random weights (None, "" or "none")."""
    return pretrained is None or str(pretrained).strip().lower() in ("", "none")


def resolve_model_name(name: str) -> str:
    """An open_clip model name; a path to a model config JSON is registered under its file stem."""
    if name.endswith(".json") and os.path.lexists(name):
        check_input_file(name, "model config")  # open_clip reads it again by path: a regular file only
        import json

        try:
            with open(name, encoding="utf-8") as f:
                cfg = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"model config {name} is not readable JSON ({' '.join(str(e).split())})") from e
        if not isinstance(cfg, dict) or not isinstance(cfg.get("vision_cfg"), dict) or \
                not isinstance(cfg.get("text_cfg"), dict) or "embed_dim" not in cfg:
            raise InputError(f"model config {name} is not an open_clip model config (embed_dim, vision_cfg, text_cfg)")
        open_clip.add_model_config(name)
        return os.path.splitext(os.path.basename(name))[0]
    if name.endswith(".json"):
        raise InputError(f"model config {name} does not exist")
    return name


def config_grid(name: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """Patch grid (gh, gw) and input size (h, w) of an open_clip ViT config, without building the model."""
    name = resolve_model_name(name)
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        raise InputError(f"unknown model '{name}': choose one of open_clip.list_models(), e.g. ViT-B-16")
    vision = cfg.get("vision_cfg", {})
    patch = vision.get("patch_size")
    if not patch or vision.get("timm_model_name"):
        raise UnsupportedModel(f"model '{name}' is not a ViT: foveal masks need a patch grid")
    size = vision.get("image_size", 224)
    size = (size, size) if isinstance(size, int) else tuple(size)
    patch = (patch, patch) if isinstance(patch, int) else tuple(patch)
    return (size[0] // patch[0], size[1] // patch[1]), size


def _check_name(name: str) -> None:
    if name not in open_clip.list_models():
        raise InputError(f"unknown model '{name}': choose one of open_clip.list_models(), e.g. ViT-B-16")


def _create(name: str, **kwargs) -> nn.Module:
    _check_name(name)
    try:
        return open_clip.create_model(name, **kwargs)
    except (TypeError, ValueError, KeyError, AssertionError) as e:  # a config whose values do not build a model
        raise InputError(f"model '{name}' cannot be built from its config: {' '.join(str(e).split())[:200]}") from e


def _load_local(name: str, path: str) -> nn.Module:
    state, openai_format = _read_checkpoint(path)
    model = _create(name, pretrained=None, force_quick_gelu=openai_format)
    # OpenAI's integer buffers and non-persistent buffers that TorchScript archives carry (e.g. attn_mask)
    transient = set(_OPENAI_ONLY_KEYS) | ({n for n, _ in model.named_buffers()} - set(model.state_dict()))
    for key in transient:
        state.pop(key, None)
    scale = state.get("logit_scale")
    if scale is not None and scale.ndim != model.logit_scale.ndim:
        state["logit_scale"] = scale.reshape(model.logit_scale.shape)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise InputError(f"checkpoint {path} does not fit model '{name}': {detail}") from e
    return model


def _offline_hint(what: str) -> str:
    from .weights import offline_hint

    return offline_hint(what)


def _build(name: str, pretrained: Optional[str]) -> nn.Module:
    if is_random(pretrained):
        _check_name(name)
        warnings.warn(f"pointfalip: model '{name}' has random weights (pretrained='none'); "
                      "its predictions are meaningless", UserWarning, stacklevel=3)
        with torch.random.fork_rng(devices=[]):  # the same model in every process, the caller's RNG untouched
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            return _create(name, pretrained=None)
    pretrained = str(pretrained)
    if pretrained.startswith("hf-hub:"):
        from .weights import check_hub_repo

        check_hub_repo(pretrained[len("hf-hub:"):])  # offline with nothing cached: fail now, not after retries
        try:
            return open_clip.create_model(pretrained)
        except Exception as e:
            raise WeightsUnavailable(_offline_hint(f"'{pretrained}'")) from e
    tag_folder = os.path.isdir(pretrained) and open_clip.get_pretrained_cfg(name, pretrained)  # a tag wins
    if os.path.lexists(pretrained) and not tag_folder:
        # a checkpoint is read by path, more than once: a regular file only
        return _load_local(name, str(check_input_file(pretrained, "checkpoint")))
    _check_name(name)
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise InputError(f"'{pretrained}' is neither a file nor a pretrained tag of {name} (tags: {tags})")
    from .weights import check_download

    check_download(name, pretrained)  # offline with nothing cached: fail within seconds, not after retries
    try:
        # A tag trained with QuickGELU must get it, whatever the config name says.
        return open_clip.create_model(name, pretrained=pretrained,
                                      force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)))
    except Exception as e:
        raise WeightsUnavailable(_offline_hint(f"'{pretrained}' for {name}")) from e


def load_model(name: str = "ViT-B-16", pretrained: Optional[str] = "openai", device: Union[str, torch.device] = "cpu",
               precision: str = "fp32") -> "FalipCLIP":
    """Load an open_clip model as a `FalipCLIP`.

    name: an open_clip model name, or a model config JSON file (registered under its file stem).
    pretrained: an open_clip tag ("openai", "laion2b_s34b_b88k", ...), an "hf-hub:org/repo" id, a local
    checkpoint (open_clip format; or OpenAI format, a TorchScript archive or a plain state dict, which implies
    QuickGELU), or "none" for random weights. precision: "fp32", "bf16" or "fp16": the dtype of the weights and
    of the computation; images and outputs stay float32 for the caller.
    """
    device = check_device(device)
    if precision == "auto":
        precision = default_precision(device)
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision '{precision}': choose one of auto, {', '.join(PRECISIONS)}")
    name = resolve_model_name(name)
    clip = _build(name, pretrained)
    tokenizer_name = pretrained if str(pretrained).startswith("hf-hub:") else name
    tokenizer = open_clip.get_tokenizer(tokenizer_name)
    return FalipCLIP(clip, tokenizer, name=name, pretrained=str(pretrained), precision=precision).to(device).eval()


def _as_flat_bias(cls_bias: torch.Tensor, n: int, num_patches: int) -> torch.Tensor:
    """(N, gh, gw) or (N, gh*gw) -> (N, 1 + P) with a zero column for the CLS key."""
    bias = cls_bias.reshape(cls_bias.shape[0], -1)
    if bias.shape[1] != num_patches:
        raise ValueError(f"cls_bias has {bias.shape[1]} patch weights but the model has {num_patches} patches")
    if bias.shape[0] not in (1, n):
        raise ValueError(f"cls_bias has batch {bias.shape[0]} for {n} images")
    return F.pad(bias.float(), (1, 0)).expand(n, -1)


class FalipCLIP(nn.Module):
    """An open_clip CLIP whose ViT image encoder can take a foveal bias on the CLS query's attention."""

    def __init__(self, clip: nn.Module, tokenizer, name: str = "", pretrained: str = "", precision: str = "fp32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision '{precision}': choose one of {', '.join(PRECISIONS)}")
        self.clip = clip.to(PRECISIONS[precision])
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.precision = precision

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
        features) or "clearclip" (ClearCLIP's last block, see `_clearclip_block`; the pooled features stay
        the encoder's own).
        """
        images = images.to(self.device, self.dtype)
        if dense not in DENSE_MODES:
            raise InputError(f"unknown dense mode '{dense}': choose one of {', '.join(DENSE_MODES)}")
        if cls_bias is None and not return_tokens:
            feats = self.clip.encode_image(images)
        else:
            x, plan = self._trunk(images, cls_bias, layers, heads, amplify, stop_before_last=dense == "clearclip")
            if dense == "clearclip":
                last = self.visual.transformer.resblocks[-1]
                dense_x = _clearclip_block(last, x)
                x = self._run_block(last, x, len(self.visual.transformer.resblocks) - 1, plan)
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
        if not (isinstance(pd, PatchDropout) and pd.training and pd.prob > 0):
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
        x, plan = self._trunk(images.to(self.device, self.dtype), None, None, None, 0.0, stop_before_last=True)
        last = {"tokens": lambda: self._run_block(blocks[-1], x, len(blocks) - 1, plan),
                "clearclip": lambda: _clearclip_block(blocks[-1], x)}
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
        x, _ = self._trunk(images, cls_bias, layers, heads, amplify, with_plain=with_plain)
        return self._pool_project(x)[0]

    def _trunk(self, images, cls_bias, layers, heads, amplify, with_plain: bool = False,
               stop_before_last: bool = False) -> tuple[torch.Tensor, tuple]:
        """Tokens (N, 1 + P, W) after the transformer blocks (all, or all but the last), the foveal bias applied
        in the chosen blocks, and the plan `_run_block` needs for a block not yet run; with_plain doubles the
        batch from the first foveal block on (biased copy, then plain copy)."""
        self._require_vit()
        v = self.visual
        gh, gw = self.grid_size
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"images are {tuple(images.shape[-2:])} but {self.name} takes {self.image_size}")
        blocks = v.transformer.resblocks
        chosen = set(self.resolve_layers(layers)) if cls_bias is not None else set()
        x, keep = self._embed(images)
        bias = None
        if cls_bias is not None:
            bias = _as_flat_bias(torch.as_tensor(cls_bias, device=self.device), images.shape[0], gh * gw)
            if keep is not None:
                bias = torch.cat([bias[:, :1], bias[:, 1:].gather(1, keep)], dim=1)
            head_mask = self._head_mask(heads)
            bias = bias[:, None, None, :]  # (N, 1, 1, L): broadcast over heads and the single CLS query
            if head_mask is not None:
                bias = bias * head_mask[None, :, None, None]
        first = min(chosen) if chosen else len(blocks)
        end = len(blocks) - 1 if stop_before_last else len(blocks)
        for i in range(end):
            if with_plain and i == first:  # from here on, a biased copy and a plain copy (zero bias)
                x = torch.cat([x, x])
                half = x.shape[0] // 2
                bias = torch.cat([bias.expand(half, *bias.shape[1:]), torch.zeros_like(bias).expand(half, *bias.shape[1:])])
            x = self._run_block(blocks[i], x, i, (chosen, bias, amplify))
        return x, (chosen, bias, amplify)

    def _run_block(self, block: nn.Module, x: torch.Tensor, index: int, plan) -> torch.Tensor:
        chosen, bias, amplify = plan
        if index in chosen:
            return _foveal_block(block, x, bias, amplify)
        if getattr(self.visual.transformer, "batch_first", True):
            return block(x)
        return block(x.transpose(0, 1)).transpose(0, 1)

    def _pool_project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled (N, D), patch tokens (N, P, D)) after ln_post and the projection, as open_clip pools."""
        v = self.visual
        pooled, tokens = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
            tokens = tokens @ v.proj
        return pooled, tokens


def _foveal_block(block: nn.Module, x: torch.Tensor, bias: torch.Tensor, amplify: float) -> torch.Tensor:
    """One residual block whose CLS query row gets `bias` (N, H|1, 1, L) on its attention logits.

    The bias goes to SDPA as an (L, L) mask per image that is zero outside the CLS row, as in the authors'
    code; with amplify, the CLS row is also computed without it for G'_h + γ(G'_h - G_h).
    """
    if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, nn.MultiheadAttention):
        raise UnsupportedModel(f"foveal attention needs open_clip's standard attention blocks, "
                               f"not {type(block).__name__}")
    attn = block.attn
    n, length, dim = x.shape
    heads = attn.num_heads
    head_dim = dim // heads
    y = block.ln_1(x)
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).view(n, length, 3, heads, head_dim).permute(
        2, 0, 3, 1, 4)
    mask = x.new_zeros(n, bias.shape[1], length, length)
    mask[:, :, :1] = bias.to(x.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if amplify:
        plain_cls = F.scaled_dot_product_attention(q[:, :, :1], k, v)
        cls = out[:, :, :1]
        out = torch.cat([cls + amplify * (cls - plain_cls), out[:, :, 1:]], dim=2)
    out = attn.out_proj(out.transpose(1, 2).reshape(n, length, dim))
    x = x + block.ls_1(out)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _clearclip_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ClearCLIP's last block (Lan et al., ECCV 2024, eq. 6-7): ``X = Proj(Attn_qq(LN(X)))``.

    The residual connection and the feed-forward branch are dropped and the attention is query-query:
    ``Attn_qq = softmax(Q Qᵀ / √d) V``, per head, with the block's own projections. What it returns goes to
    ``ln_post`` and the output projection as the encoder's own tokens do.
    """
    if not isinstance(block, ResidualAttentionBlock) or not isinstance(block.attn, nn.MultiheadAttention):
        raise UnsupportedModel(f"ClearCLIP needs open_clip's standard attention blocks, not {type(block).__name__}")
    attn = block.attn
    n, length, dim = x.shape
    heads = attn.num_heads
    q, _, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).view(
        n, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, q, v)
    return attn.out_proj(out.transpose(1, 2).reshape(n, length, dim))
