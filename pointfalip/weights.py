"""Which open_clip model and weights a model name and a ``pretrained`` argument give.

`build_clip` resolves open_clip tags, ``hf-hub:`` ids, local checkpoints (open_clip's format, or OpenAI's: a
TorchScript archive or a plain state dict, which implies QuickGELU) and ``"none"`` (random weights from a fixed
seed, with a warning); a model config JSON file is registered under its file stem (`resolve_model_name`).
`config_grid` reads a ViT's patch grid without building it. `pointfalip.model.load_model` wraps the result.
"""
from __future__ import annotations

import os
import warnings
import zipfile
from typing import Optional

import open_clip
import torch
from torch import nn

from .errors import InputError, UnsupportedModel, WeightsUnavailable, one_line
from .files import check_input_file

__all__ = ["RANDOM_WEIGHTS_SEED", "build_clip", "config_grid", "is_random", "resolve_model_name"]

# Keys that only OpenAI's released state dicts carry (integer buffers of their `build_model`).
_OPENAI_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")
RANDOM_WEIGHTS_SEED = 0  # pretrained="none" draws its weights from this seed: repeatable runs, equal torchrun ranks


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
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise InputError(f"model config {name} is not readable JSON ({one_line(e)})") from e
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
    from .downloads import offline_hint

    return offline_hint(what)


def build_clip(name: str, pretrained: Optional[str]) -> nn.Module:
    """The open_clip CLIP model ``name`` (an open_clip model name) with the weights ``pretrained`` names (see
    `pointfalip.model.load_model`); missing weights offline are a `WeightsUnavailable` saying what to do."""
    if is_random(pretrained):
        _check_name(name)
        warnings.warn(f"pointfalip: model '{name}' has random weights (pretrained='none'); "
                      "its predictions are meaningless", UserWarning, stacklevel=3)
        with torch.random.fork_rng(devices=[]):  # the same model in every process, the caller's RNG untouched
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            return _create(name, pretrained=None)
    pretrained = str(pretrained)
    if pretrained.startswith("hf-hub:"):
        from .downloads import check_hub_repo

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
    from .downloads import check_download

    check_download(name, pretrained)  # offline with nothing cached: fail within seconds, not after retries
    try:
        # A tag trained with QuickGELU must get it, whatever the config name says.
        return open_clip.create_model(name, pretrained=pretrained,
                                      force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)))
    except Exception as e:
        raise WeightsUnavailable(_offline_hint(f"'{pretrained}' for {name}")) from e
