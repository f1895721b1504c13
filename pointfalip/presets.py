"""The one home of configuration: packaged presets and data found as package resources, YAML read with one clear
error, and settings dataclasses built from mappings with every key and value checked.

The repository keeps ``configs/`` and ``data/`` at its top; the wheel ships them as the packages
``pointfalip.configs`` and ``pointfalip.data`` (see pyproject.toml), and this module reads them through
`importlib.resources`, so an installed wheel works exactly as a source checkout. A user's own YAML file is read by
path wherever a preset name is accepted.

Preset kinds (`list_presets(kind)`, `preset_path(kind, name)`, `load_preset(kind, name_or_path)`):

- ``recognizer``: one YAML file a preset in ``configs/presets/`` (`pointfalip.recognize.RecognizerConfig`);
- ``views``: the ``presets:`` mapping of ``configs/views.yaml`` (`pointfalip.projection.view_preset`);
- ``segmentation``: the ``presets:`` mapping of ``configs/scene.yaml`` (`pointfalip.scene.SegmentationConfig`);
- ``tracking``: the ``tracking:`` mapping of ``configs/scene.yaml`` (`pointfalip.tracking.TrackerConfig`);
- ``parts``: one YAML file a preset in ``configs/parts/`` (`pointfalip.parts.PartPreset`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from functools import lru_cache
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any, Mapping, Optional, TypeVar, Union

import numpy as np
import yaml

from .errors import InputError, shown
from .files import read_input_text

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")  # the one list: presets, --precision, load_model
COMPILE_ENGINES = ("inductor", "openvino")  # the one list: presets' compile, --compile, load_model(compile=...)
CONFIG_PACKAGE = "pointfalip.configs"
DATA_PACKAGE = "pointfalip.data"

# kind -> (resource package, file name of a shared mapping or None for one file a preset, key of that mapping)
_KINDS: dict[str, tuple[str, Optional[str], str]] = {
    "recognizer": (CONFIG_PACKAGE + ".presets", None, ""),
    "views": (CONFIG_PACKAGE, "views.yaml", "presets"),
    "segmentation": (CONFIG_PACKAGE, "scene.yaml", "presets"),
    "tracking": (CONFIG_PACKAGE, "scene.yaml", "tracking"),
    "parts": (CONFIG_PACKAGE + ".parts", None, ""),
}
_META_KEYS = ("description",)  # keys a preset may carry that are not settings

T = TypeVar("T")
Source = Union[str, Path, Traversable]


# ---- resources -----------------------------------------------------------------------------------------
def config_file(name: str) -> Traversable:
    """A packaged file of ``configs/`` (e.g. ``"scene.yaml"``)."""
    return resources.files(CONFIG_PACKAGE).joinpath(name)


def data_file(name: str) -> Traversable:
    """A packaged file of ``data/`` (e.g. ``"templates.json"``)."""
    return resources.files(DATA_PACKAGE).joinpath(name)


@lru_cache(maxsize=None)
def read_data_json(name: str) -> Any:
    """The parsed contents of a packaged JSON file of ``data/``."""
    return json.loads(data_file(name).read_text(encoding="utf-8"))


def read_yaml(source: Source) -> dict:
    """The mapping a YAML file (a path or a packaged resource) holds; InputError when it is missing, unreadable,
    invalid or not a mapping."""
    try:
        if isinstance(source, (str, Path)):
            text = read_input_text(source, "config file")
        else:
            text = source.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except FileNotFoundError as e:
        raise InputError(f"config file {source} not found") from e
    except UnicodeDecodeError as e:
        raise InputError(f"config file {source} is not UTF-8 text") from e
    except yaml.YAMLError as e:
        raise InputError(f"config file {source} is not valid YAML: {shown(' '.join(str(e).split()), 300)}") from e
    except RecursionError:
        raise InputError(f"config file {source} nests too deeply to be a settings file") from None
    if not isinstance(data, dict):
        raise InputError(f"config file {source} must hold a mapping")
    return data


# ---- presets -------------------------------------------------------------------------------------------
def _kind(kind: str) -> tuple[str, Optional[str]]:
    if kind not in _KINDS:
        raise ValueError(f"unknown preset kind {kind!r}: one of {', '.join(_KINDS)}")
    return _KINDS[kind][:2]


def shared_key(kind: str) -> str:
    """The top-level key of the shared file that maps a kind's preset names to settings (``presets``, ``tracking``)."""
    _kind(kind)
    return _KINDS[kind][2]


def _shared_presets(kind: str, source: Source) -> dict:
    key = shared_key(kind)
    presets = read_yaml(source).get(key)
    if not isinstance(presets, dict) or not presets:
        raise InputError(f"config file {source} has no '{key}' mapping (see configs/{_kind(kind)[1]})")
    return presets


def list_presets(kind: str) -> list[str]:
    """Names of the packaged presets of a kind (``recognizer``, ``views``, ``segmentation``, ``tracking``)."""
    package, shared = _kind(kind)
    if shared is None:
        return sorted(p.name[:-len(".yaml")] for p in resources.files(package).iterdir() if p.name.endswith(".yaml"))
    return sorted(_shared_presets(kind, config_file(shared)))


def preset_path(kind: str, name: str) -> Traversable:
    """The packaged file that holds preset ``name`` of ``kind`` (for a shared mapping, the file of all of them)."""
    package, shared = _kind(kind)
    if name not in list_presets(kind):
        raise InputError(f"unknown {kind} preset '{name}': choose one of {', '.join(list_presets(kind))} "
                         "or a YAML file")
    return config_file(shared) if shared else resources.files(package).joinpath(f"{name}.yaml")


def load_preset(kind: str, name_or_path: Union[str, Path], config_file_: Optional[Source] = None) -> dict:
    """The settings mapping of a preset: a packaged name, or a user's YAML file by path.

    For a shared-mapping kind, ``config_file_`` names another file laid out like the packaged one (its
    ``presets:`` mapping, or the kind's own key such as ``tracking:``, holds ``name_or_path``). ``description``
    keys are dropped.
    """
    _, shared = _kind(kind)
    if config_file_ is not None:
        presets = _shared_presets(kind, config_file_)
        if name_or_path not in presets:
            raise InputError(f"unknown {kind} preset '{name_or_path}' in {config_file_}: choose one of "
                             f"{', '.join(sorted(presets))}")
        values, where = presets[name_or_path], f"{config_file_}: preset '{name_or_path}'"
    elif _is_path(kind, str(name_or_path)):
        values, where = read_yaml(Path(name_or_path)), str(name_or_path)
    elif shared is None:
        values, where = read_yaml(preset_path(kind, str(name_or_path))), f"preset '{name_or_path}'"
    else:
        presets = _shared_presets(kind, config_file(shared))
        if name_or_path not in presets:
            raise InputError(f"unknown {kind} preset '{name_or_path}': choose one of {', '.join(sorted(presets))}")
        values, where = presets[name_or_path], f"{kind} preset '{name_or_path}'"
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise InputError(f"{where} must be a mapping of settings")
    return {k: v for k, v in values.items() if k not in _META_KEYS}


def _is_path(kind: str, name: str) -> bool:
    """Whether a preset argument names a file: a YAML name, or an existing path (a pipe such as ``<(cmd)``
    included) that is not a folder named like a packaged preset."""
    if name.endswith((".yaml", ".yml")):
        return True
    return os.path.exists(name) and not (os.path.isdir(name) and name in list_presets(kind))


# ---- settings from mappings ----------------------------------------------------------------------------
def from_mapping(cls: type[T], data: Optional[Mapping[str, Any]], what: str) -> T:
    """A settings dataclass from a mapping: unknown keys, wrong types and invalid values are one-line
    InputErrors that name ``what`` and the key; nested dataclass fields take nested mappings."""
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise InputError(f"{what} must be a mapping of settings, not {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(str(k) for k in data if k not in fields)
    if unknown:
        raise InputError(f"{what}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} "
                         f"(known: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values = {}
    for key, value in data.items():
        _check_plain(value, f"{what}: {key}")
        nested = _dataclass_in(hints.get(key))
        values[key] = from_mapping(nested, value, f"{what}: {key}") if nested and value is not None else value
    try:
        return cls(**values)
    except InputError as e:
        raise InputError(f"{what}: {e}") from e
    except (TypeError, ValueError, OverflowError) as e:
        raise InputError(f"{what}: invalid value ({shown(' '.join(str(e).split()), 200)})") from e


SETTING_MAGNITUDE = (1e-30, 1e12)  # a setting's number is 0 or of a size in this range: beyond it none means anything
SETTING_TEXT_CHARS = 1000  # the longest text a setting holds (a prompt template is far shorter)
SETTING_ITEMS = 10_000  # the most items of a setting's list (views, layers, templates)


def _check_plain(value: Any, where: str, depth: int = 0) -> None:
    """A settings value as the door accepts it: numbers of a size a setting can have, texts and lists of a size a
    setting can have, nesting shallow; one-line InputErrors naming the setting (the value cut short)."""
    if depth > 8:
        raise InputError(f"{where}: nested {depth} levels deep; no setting is")
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float, np.integer, np.floating)):
        lo, hi = SETTING_MAGNITUDE
        size = abs(float(value))  # NaN and infinity: each setting's own check names them
        if math.isfinite(size) and value != 0 and not lo <= size <= hi:
            raise InputError(f"{where} = {shown(value)} is outside the numbers a setting can take (0, or "
                             f"{lo:g} to {hi:g} in size)")
    elif isinstance(value, str):
        if len(value) > SETTING_TEXT_CHARS:
            raise InputError(f"{where} = {shown(value, 40)}: a text of {len(value)} characters; no setting is "
                             f"longer than {SETTING_TEXT_CHARS}")
    elif isinstance(value, (list, tuple)):
        if len(value) > SETTING_ITEMS:
            raise InputError(f"{where}: a list of {len(value)} items; no setting holds more than {SETTING_ITEMS}")
        for item in value:
            _check_plain(item, where, depth + 1)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_plain(item, f"{where}: {shown(str(key), 40)}", depth + 1)


def _dataclass_in(hint) -> Optional[type]:
    """The dataclass a field's type hint names (directly or inside Optional), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    for arg in typing.get_args(hint):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def check_int(cfg: Any, name: str, minimum: int) -> None:
    """Settings field ``name`` of a frozen dataclass as an int >= ``minimum``; a one-line InputError otherwise."""
    value = getattr(cfg, name)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{type(cfg).__name__}.{name} must be an integer >= {minimum}, got {value!r}")
    object.__setattr__(cfg, name, int(value))
