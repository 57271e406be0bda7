"""The exception types of napari-segtool's public API (documented, stable).

Every expected failure is one of these, with a one-line message that says what
is wrong and, where it helps, what to do instead::

    SegtoolError            base class of all of them
    ├── InputError          an image, labels, mask or argument the operation cannot use
    │   ├── ConfigError     a setting out of range (epochs, batch size, lr, device...)
    │   ├── DataError       training data that cannot be used   (napari_segtool.core.data)
    │   ├── AxesError       axes that do not fit the array      (napari_segtool.kernel.axes)
    │   └── ImageReadError  a file that cannot be read as an image (napari_segtool.io.images)
    ├── ModelError          a model that cannot be found, read or trusted
    │   └── ModelLoadError  (napari_segtool.core.checkpoint)
    ├── OutputError         an output that would overwrite something it did not create
    └── ProjectError        a project folder that cannot be used (napari_segtool.core.project)

All of them derive from :class:`ValueError` too, so code that caught ``ValueError``
before keeps working. Anything else raised by the package is a bug.

``napari_segtool.kernel.errors.InputError`` is the canonical ``InputError``;
``napari_segtool.core.predict.InputError`` is the same class.
"""
from __future__ import annotations

__all__ = [
    "SegtoolError",
    "InputError",
    "ConfigError",
    "ModelError",
    "OutputError",
    "user_errors",
]


class SegtoolError(ValueError):
    """Base class of every expected, user-facing failure of napari-segtool."""


class InputError(SegtoolError):
    """An input (image, labels, mask, argument) that the operation cannot use."""


class ConfigError(InputError):
    """A setting outside its valid range or of the wrong type (message names it and the range)."""


class ModelError(SegtoolError):
    """A model that cannot be found, read, validated against its weights, or used."""


class OutputError(SegtoolError):
    """An output path that would overwrite an input, a non-model folder or an existing result."""


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean 'bad input', for front ends that print one line for them."""
    return (SegtoolError,)
