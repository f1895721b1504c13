"""Where the YAML presets live and how they are read (one clear error for a missing or malformed file)."""
from __future__ import annotations

from pathlib import Path

import yaml

from .errors import InputError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def read_yaml(path) -> dict:
    """The mapping a YAML file holds; InputError when it is missing, invalid or not a mapping."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError as e:
        raise InputError(f"config file {path} not found") from e
    except yaml.YAMLError as e:
        raise InputError(f"config file {path} is not valid YAML: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict):
        raise InputError(f"config file {path} must hold a mapping")
    return data
