"""Errors a user can cause: the command line prints their message in one line and exits with 2; `shown` keeps a
value echoed in such a message short."""
from typing import Any

SHOWN_CHARS = 80  # the most characters of a user's value a message echoes

_MAX_REASON_CHARS = 200  # a third-party error's text is cut to this length in our one-line messages


class InputError(ValueError):
    """Bad input from the user (file, array, label set, box, model name, weights)."""


class WeightsUnavailable(InputError):
    """Pretrained weights could not be found locally nor downloaded."""


class UnsupportedModel(InputError):
    """The model's image tower cannot take a foveal bias (e.g. a ResNet CLIP)."""


def one_line(e: BaseException) -> str:
    """A third-party exception as a short single line, to quote in an InputError's message."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """A value as a message echoes it: a string as it is, anything else as its repr, cut to ``limit`` characters
    (``...`` and the full length at the cut), so that a 150 KB value never becomes a 150 KB line."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
