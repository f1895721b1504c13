"""Errors a user can cause: the command line prints their message in one line and exits with 2; `shown` keeps a
value echoed in such a message short."""
from typing import Any

SHOWN_CHARS = 80  # the most characters of a user's value a message echoes


class InputError(ValueError):
    """Bad input from the user (file, array, label set, box, model name, weights)."""


class WeightsUnavailable(InputError):
    """Pretrained weights could not be found locally nor downloaded."""


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """A value as a message echoes it: a string as it is, anything else as its repr, cut to ``limit`` characters
    (``...`` and the full length at the cut), so that a 150 KB value never becomes a 150 KB line."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
