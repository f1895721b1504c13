"""Errors a user can cause: the command line prints their message in one line and exits with 2."""


class InputError(ValueError):
    """Bad input from the user (file, array, label set, box, model name, weights)."""


class WeightsUnavailable(InputError):
    """Pretrained weights could not be found locally nor downloaded."""


class UnsupportedModel(InputError):
    """The model's image tower cannot take a foveal bias (e.g. a ResNet CLIP)."""
