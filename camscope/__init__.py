"""camscope: class activation maps that are correct, fast and measured."""

from __future__ import annotations

__version__ = "0.1.0"
