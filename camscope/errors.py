"""User-facing errors: one line, naming the file or argument and the problem."""

from __future__ import annotations


class CamscopeError(Exception):
    """Base class for errors reported to the user as one line, without a traceback."""


class UsageError(CamscopeError):
    """A command-line argument or API parameter is invalid (checked before any work starts)."""


class ImageLoadError(CamscopeError):
    """An input file cannot be used as an image."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class WeightsError(CamscopeError):
    """Model weights cannot be obtained or loaded."""


class UnsafeCheckpointError(WeightsError):
    """A checkpoint needs arbitrary unpickling and was refused."""


def first_line(exc: object, limit: int | None = None, *, default: str | None = None) -> str:
    """The first line of an exception's message (``default``, else the exception's type name,
    when it has none), cut to ``limit`` characters: the one place that shortens an exception for
    a one-line report."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else (default if default is not None else type(exc).__name__)
    return first if limit is None else first[:limit]
