"""What travels between the planner, the explainer and the drivers: a planned image, its
computed result before its files are written, and its outcome."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from camscope.io.rundir import ImageRecord

__all__ = ["PlannedImage", "Explained", "Outcome"]


@dataclass(frozen=True)
class PlannedImage:
    """An input image and the stem of its output files."""

    path: Path
    rel: str
    stem: str


@dataclass
class Explained:
    """One image's computed result, before its files are written."""

    photo: Image.Image
    """The decoded PIL photo."""
    tensor: torch.Tensor | None
    """Its model input (3,H,W)."""
    probs: torch.Tensor | None = None
    targets: list[int] = field(default_factory=list)
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    """Variant name -> (k,H,W) maps in [0,1]."""
    task: str | None = None
    """The task of a run other than ``classify`` (None: a classifier run)."""
    explained: list[Any] | None = None
    """The :class:`camscope.targets.Target` objects explained (task runs; may be empty)."""
    scores: list[float] = field(default_factory=list)
    """Each target's score on the photo."""
    probabilities: list[float] = field(default_factory=list)
    """Each target's probability on the photo (``CamMaps.target_probabilities``)."""


@dataclass
class Outcome:
    """What became of one image: its record, or the one-line reason it failed."""

    item: PlannedImage
    record: ImageRecord | None = None
    reason: str | None = None
    seconds: float = 0.0
