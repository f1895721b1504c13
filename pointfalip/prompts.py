"""Class-name sets, prompt templates, prompt files and cached CLIP text features of class prompts.

Class names and template ensembles are packaged data (``data/classnames.json``, ``data/templates.json``).
A prompt file is PointCLIP V2's JSON layout ``{"class": ["prompt", ...], ...}``. `text_features` does CLIP's
prompt ensembling (normalise every prompt's feature, average per class, normalise the mean) and keeps the result
in a safetensors file keyed by the model and the exact prompts, so that thousands of prompts are encoded once.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .errors import InputError, shown
from .files import atomic_write, check_text, file_identity
from .weights import is_random
from .presets import read_data_json

log = logging.getLogger(__name__)

CACHE_ENV = "POINTFALIP_CACHE"
DEFAULT_CACHE_DIR = Path("~/.cache/pointfalip/text")
# Bump when the cached quantity or the key's layout changes, so old files are never read as new ones.
_CACHE_VERSION = 1
_CACHE_TENSOR = "text_features"
# Names that underscores-to-spaces alone would not make readable.
# Keys are lowercase with single spaces, so "night_stand" and "Night Stand" both become "nightstand".
_SPECIAL_NAMES = {"night stand": "nightstand"}

PathLike = Union[str, os.PathLike]
Prompts = dict[str, list[str]]


# ---- packaged data ---------------------------------------------------------------------------------------
def _label_sets() -> dict:
    return read_data_json("classnames.json")


def _ensembles() -> dict:
    return read_data_json("templates.json")


def list_label_sets() -> list[str]:
    """Names of the packaged class-name sets ("modelnet40", "modelnet10", "scanobjectnn")."""
    return list(_label_sets())


def raw_class_names(label_set: str) -> list[str]:
    """The dataset's own class names in its release's label order (label i is element i)."""
    sets = _label_sets()
    key = str(label_set).strip().lower()
    if key not in sets:
        raise InputError(f"unknown label set '{label_set}': choose one of {', '.join(sets)}")
    return list(sets[key]["names"])


def humanize(name: str) -> str:
    """A readable class name: underscores to spaces, single spaces, a few special cases (night_stand → nightstand)."""
    spaced = " ".join(str(name).replace("_", " ").split())
    return _SPECIAL_NAMES.get(spaced.lower(), spaced)


def class_names(label_set: str) -> list[str]:
    """Readable class names of a label set, in the same order as `raw_class_names`."""
    return [humanize(n) for n in raw_class_names(label_set)]


def list_templates() -> list[str]:
    """Names of the packaged template ensembles ("depth", "pointclip", "photo")."""
    return list(_ensembles())


def templates(name: str = "depth") -> list[str]:
    """The templates of a packaged ensemble, each with one "{}" placeholder for the class name."""
    ensembles = _ensembles()
    if name not in ensembles:
        raise InputError(f"unknown template set '{name}': choose one of {', '.join(ensembles)}")
    return list(ensembles[name]["templates"])


# ---- prompt files ----------------------------------------------------------------------------------------
def _validate_prompts(data, source: str) -> Prompts:
    if not isinstance(data, dict):
        raise InputError(f"{source} must map class names to lists of prompts, not a {type(data).__name__}")
    if not data:
        raise InputError(f"{source} holds no classes")
    out = {}
    for label, prompts in data.items():
        if not isinstance(label, str) or not label.strip():
            raise InputError(f"{source} has an empty or non-string class name")
        if not isinstance(prompts, list) or not prompts:
            raise InputError(f"{source}: class '{shown(label)}' needs a non-empty list of prompts")
        if not all(isinstance(p, str) and p.strip() for p in prompts):
            raise InputError(f"{source}: class '{shown(label)}' has a prompt that is not a non-empty string")
        for text in (label, *prompts):
            check_text(text, f"{source}: text")
        out[label] = list(prompts)
    return out


def read_prompt_json(path: PathLike):
    """The JSON a prompt file holds, unvalidated; one clear InputError when it cannot be read."""
    from .files import read_input_text

    text = read_input_text(path, "prompt file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"prompt file {path} is not valid JSON: {e}") from e
    except RecursionError:
        raise InputError(f"prompt file {path} nests too deeply to be a prompt file") from None


def load_prompt_file(path: PathLike) -> Prompts:
    """Read a prompt file in PointCLIP V2's layout ``{"class": ["prompt", ...]}``, validated."""
    return _validate_prompts(read_prompt_json(path), f"prompt file {path}")


def _match_key(label: str) -> str:
    return humanize(label).lower()


def _fill(template: str, name: str) -> str:
    if "{}" not in template:
        raise InputError(f"template '{template}' has no '{{}}' placeholder for the class name")
    try:
        return template.format(name)
    except (IndexError, KeyError, ValueError) as e:
        raise InputError(f"template '{template}' is not a format string with one '{{}}': {e}") from e


def reference_name(name: str) -> str:
    """PointCLIP's rule for the class name in a prompt: underscores to spaces, nothing else (night_stand → night
    stand); the rule of ensembles that reproduce a reference (``"names": "reference"`` in data/templates.json)."""
    return str(name).replace("_", " ")


_NAME_RULES = {"readable": humanize, "reference": reference_name}


def _resolve_templates(spec: Union[str, Sequence[str]]) -> tuple[list[str], Callable[[str], str]]:
    """The templates and the class-name rule they are filled with."""
    if isinstance(spec, str):
        # A packaged ensemble by name, or a single template written out.
        if "{}" in spec and spec not in _ensembles():
            return [spec], humanize
        rule = _ensembles().get(spec, {}).get("names", "readable")
        if rule not in _NAME_RULES:
            raise InputError(f"template set '{spec}': unknown name rule '{rule}' (one of {', '.join(_NAME_RULES)})")
        return templates(spec), _NAME_RULES[rule]
    out = list(spec)
    if not out or not all(isinstance(t, str) for t in out):
        raise InputError("templates must be an ensemble name or a non-empty list of strings with '{}'")
    return out, humanize


def build_prompts(labels: Sequence[str], templates: Union[str, Sequence[str]] = "depth",
                  prompt_file: Optional[Union[PathLike, Mapping[str, list[str]]]] = None) -> Prompts:
    """The prompts of each label, in the labels' order.

    With `prompt_file` (a path, or an already loaded mapping) a label takes the file's prompts: the key equal to
    the label, else the key equal after `humanize` and lowercasing ("night_stand" finds "nightstand" and
    "Night Stand"); a label the file lacks is an error. Without it, every template (an ensemble name from
    `list_templates`, a list of templates, or one template string) is filled with `humanize(label)`, or, for an
    ensemble that reproduces a reference (``"names": "reference"``), with `reference_name(label)`: give the
    dataset's raw class names as labels for those.
    """
    if isinstance(labels, str):
        labels = [labels]
    labels = list(labels)
    if not labels:
        raise InputError("no labels given")
    for label in labels:
        if not isinstance(label, str) or not label.strip():
            raise InputError(f"labels must be non-empty strings, got {shown(label)}")
        check_text(label, "label")
    duplicates = sorted({lb for lb in labels if labels.count(lb) > 1})
    if duplicates:
        raise InputError(f"duplicate labels: {', '.join(duplicates)}")

    if prompt_file is None:
        chosen, name_of = _resolve_templates(templates)
        return {label: [_fill(t, name_of(label)) for t in chosen] for label in labels}

    if isinstance(prompt_file, Mapping):
        table = _validate_prompts(dict(prompt_file), "prompt mapping")
        source = "the prompt mapping"
    else:
        table = load_prompt_file(prompt_file)
        source = f"prompt file {prompt_file}"
    by_key: dict[str, str] = {}
    for key in table:
        by_key.setdefault(_match_key(key), key)
    out = {}
    for label in labels:
        key = label if label in table else by_key.get(_match_key(label))
        if key is None:
            have = ", ".join(list(table)[:20]) + (", ..." if len(table) > 20 else "")
            raise InputError(f"label '{label}' is not in {source} (it has: {have})")
        out[label] = list(table[key])
    return out


# ---- text features ---------------------------------------------------------------------------------------
def _cache_dir(cache_dir: Optional[PathLike]) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE_DIR.expanduser()


def cache_key(model, prompts: Mapping[str, Sequence[str]]) -> str:
    """sha256 hex of the model's identity and the ordered labels with their prompts.

    For a local checkpoint the file's size and modification time join the key, so a replaced file is re-encoded.
    """
    identity = file_identity(str(getattr(model, "pretrained", "")))
    pretrained, weights_file = (identity[0], identity[1:]) if isinstance(identity, list) else (identity, None)
    payload = {
        "version": _CACHE_VERSION,
        "model": str(getattr(model, "name", "")),
        "pretrained": pretrained,
        "weights_file": weights_file,
        "precision": str(getattr(model, "precision", "")),
        "prompts": [[label, list(ps)] for label, ps in prompts.items()],
    }
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _read_cache(path: Path, num_classes: int) -> Optional[torch.Tensor]:
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    try:
        feats = load_file(str(path))[_CACHE_TENSOR]
    except Exception as e:  # truncated or foreign file: encode again and overwrite it
        log.warning("ignoring unreadable text-feature cache %s (%s)", path, str(e).splitlines()[0] if str(e) else e)
        return None
    if feats.ndim != 2 or feats.shape[0] != num_classes or not torch.isfinite(feats).all():
        log.warning("ignoring text-feature cache %s with unexpected contents %s", path, tuple(feats.shape))
        return None
    return feats.float()


def _write_cache(path: Path, feats: torch.Tensor, model, num_classes: int) -> None:
    from safetensors.torch import save

    meta = {"model": str(getattr(model, "name", "")), "pretrained": str(getattr(model, "pretrained", "")),
            "precision": str(getattr(model, "precision", "")), "classes": str(num_classes)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = save({_CACHE_TENSOR: feats.detach().cpu().contiguous()}, metadata=meta)
        atomic_write(path, lambda f: f.write(data))  # readers never see a half-written file
    except OSError as e:
        log.warning("could not write text-feature cache %s: %s", path, e)


def _ensemble(model, prompts: Mapping[str, Sequence[str]]) -> torch.Tensor:
    counts = [len(ps) for ps in prompts.values()]
    flat = [p for ps in prompts.values() for p in ps]
    with torch.no_grad():
        feats = F.normalize(model.encode_text(flat).float(), dim=-1)
        means = torch.stack([chunk.mean(dim=0) for chunk in feats.split(counts)])
    return F.normalize(means, dim=-1)


def text_features(model, prompts: Mapping[str, Sequence[str]],
                  cache_dir: Optional[Union[PathLike, bool]] = None) -> torch.Tensor:
    """Class text features (C, D) float32 on `model.device`, unit norm, in the order of `prompts`.

    Each class's prompts are encoded (all classes in one `encode_text` call), normalised, averaged, and the mean
    normalised again (CLIP's prompt ensembling). The result is cached under `cache_dir` (default
    ``$POINTFALIP_CACHE`` or ``~/.cache/pointfalip/text``) as safetensors; ``cache_dir=False`` disables the
    cache, and a model with random weights (pretrained "none") is never cached.
    """
    prompts = _validate_prompts(dict(prompts), "prompts")
    use_cache = cache_dir is not False and not is_random(getattr(model, "pretrained", None))
    path = None
    if use_cache:
        path = _cache_dir(None if cache_dir is True else cache_dir) / f"{cache_key(model, prompts)}.safetensors"
        cached = _read_cache(path, len(prompts))
        if cached is not None:
            log.debug("text features from cache %s", path)
            return cached.to(model.device)
    feats = _ensemble(model, prompts)
    if path is not None:
        _write_cache(path, feats, model, len(prompts))
    return feats.to(model.device)


def encode(model, labels: Sequence[str], templates: Union[str, Sequence[str]] = "depth", prompt_file=None,
           cache_dir: Optional[Union[PathLike, bool]] = None) -> torch.Tensor:
    """`text_features` of `build_prompts(labels, templates, prompt_file)`: (C, D) in the labels' order."""
    return text_features(model, build_prompts(labels, templates, prompt_file), cache_dir=cache_dir)
