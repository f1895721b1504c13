"""Errors a user can cause: the command line prints their message in one line and exits with 2."""

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
