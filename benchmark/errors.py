"""User-facing errors.

Every error a person can cause by a bad config, an unknown name or a bad file is a
:class:`DglbenchError`. The CLI prints its message as one line and exits with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class DglbenchError(Exception):
    """An error caused by the user's input; its message says what is wrong and how to fix it."""


class ConfigError(DglbenchError, ValueError):
    """A configuration value is unknown, of the wrong type, or out of range."""


class UnknownNameError(DglbenchError, KeyError):
    """A registry lookup for a name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; people should not see the quotes.
        return str(self.args[0]) if self.args else ""


class ShapeError(DglbenchError, ValueError):
    """A tensor (perturbation, gradient, image batch) does not have the expected shape."""


class NotTwiceDifferentiableError(DglbenchError, RuntimeError):
    """The model uses an operation that has no double backward (needed for K and Kᵀ products)."""


class DataNotFoundError(DglbenchError, FileNotFoundError):
    """A dataset's files are not on disk."""
