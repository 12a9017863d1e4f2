"""The settings of an explain run (``camscope explain``'s flags) and what a run returns."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import InitVar, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from camscope.core.runtime import SpeedSettings
from camscope.errors import UsageError
from camscope.models import LoadedModel, ModelSpec
from camscope.render.draw import colorize
from camscope.run.outputs import output_kind_names

__all__ = ["ExplainOptions", "RunResult"]


class _Unset:
    def __repr__(self) -> str:
        return "unset"


_UNSET: Any = _Unset()
MODEL_KEYWORDS = ("weights_tag", "weights_file", "labels", "preprocess", "trust_checkpoint")
"""Former ``ExplainOptions`` fields, now ``model=ModelSpec(...)``."""
SPEED_KEYWORDS = ("batch_size", "precision", "compile", "freeze")
"""Former ``ExplainOptions`` fields, now ``speed=SpeedSettings(...)``."""


@dataclass
class ExplainOptions:
    """Settings of an explain run (the CLI flags of ``camscope explain``). ``model`` may be
    given as a name (``"resnet50"``) for a :class:`~camscope.models.ModelSpec` with defaults."""

    model: ModelSpec | str = field(default_factory=ModelSpec)
    layer: str | None = None
    reshape: str = "auto"
    methods: Sequence[str] = ("gradcam", "ablationcam", "scorecam")
    smoothing: Sequence[str] = ()
    target_class: str | None = None
    top_k: int | None = None
    """At most this many targets per image (None: the task's default: 1 class or segment,
    10 detections or labels)."""
    task: str | None = None
    """``--task``: a registered task (None: from the model; see :mod:`camscope.run.tasks`)."""
    target_boxes: Sequence[str] = ()
    """``--box x0,y0,x1,y1[:label]`` (photo pixels): detections to explain (task ``detect``)."""
    score_threshold: float | None = None
    """``--score-threshold``: least detection / label score (``detect``, ``multilabel``)."""
    concept: str | None = None
    """``--concept TEXT|IMAGE``: what ``embed`` compares the image embedding with."""
    contrast: str | None = None
    """``--contrast CLASS``: the class ``d`` of ``y_c - y_d`` (task ``contrast``)."""
    device: str | None = None
    speed: SpeedSettings = field(default_factory=SpeedSettings)
    images_per_batch: int = 4
    colormap: str = "jet"
    alpha: float = 0.5
    max_pixels: int = 89_478_485
    outputs: Sequence[str] = ("maps", "overlays", "figures")
    """What each image writes (``--outputs``): any registered output kind
    (:mod:`camscope.run.outputs`); built in: ``maps`` (``.npy``), ``overlays`` (PNG per map),
    ``figures`` (comparison figure)."""
    figures: bool = True
    """False drops ``figures`` from ``outputs`` (``--no-figures``); afterwards it says whether
    ``outputs`` holds ``figures``."""
    quiet: bool = False
    force: bool = False
    fail_fast: bool = False
    # Deprecated spellings (one release, with a DeprecationWarning): the model's and the speed's
    # former fields, now model=ModelSpec(...) and speed=SpeedSettings(...).
    weights_tag: InitVar[Any] = _UNSET
    weights_file: InitVar[Any] = _UNSET
    labels: InitVar[Any] = _UNSET
    preprocess: InitVar[Any] = _UNSET
    trust_checkpoint: InitVar[Any] = _UNSET
    batch_size: InitVar[Any] = _UNSET
    precision: InitVar[Any] = _UNSET
    compile: InitVar[Any] = _UNSET
    freeze: InitVar[Any] = _UNSET

    def __post_init__(self, *legacy: Any) -> None:
        old = {k: v for k, v in zip((*MODEL_KEYWORDS, *SPEED_KEYWORDS), legacy, strict=True) if v is not _UNSET}
        if isinstance(self.model, str):
            self.model = ModelSpec(self.model)
        if old:
            self._apply_deprecated(old)
        if isinstance(self.outputs, str):
            self.outputs = [p.strip() for p in self.outputs.split(",") if p.strip()]
        kinds = output_kind_names()
        wanted = set(self.outputs) - ({"figures"} if not self.figures else set())
        unknown = sorted(wanted - set(kinds))
        if unknown:
            raise UsageError(f"unknown --outputs {', '.join(map(repr, unknown))}; choose from: {', '.join(kinds)}")
        self.outputs = tuple(k for k in kinds if k in wanted)
        self.figures = "figures" in self.outputs

    def _apply_deprecated(self, old: dict[str, Any]) -> None:
        model = {k: v for k, v in old.items() if k in MODEL_KEYWORDS}
        speed = {k: v for k, v in old.items() if k in SPEED_KEYWORDS}
        assert isinstance(self.model, ModelSpec)
        self.model = replace(self.model, **model)
        self.speed = replace(self.speed, **speed)
        new = []
        if model:
            new.append(f"model=ModelSpec({self.model.name!r}, {', '.join(f'{k}={v!r}' for k, v in model.items())})")
        if speed:
            new.append(f"speed=SpeedSettings({', '.join(f'{k}={v!r}' for k, v in speed.items())})")
        warnings.warn(
            f"ExplainOptions({', '.join(f'{k}=' for k in old)}) is deprecated and will be removed; "
            f"pass {' and '.join(new)} instead",
            DeprecationWarning,
            stacklevel=4,
        )

    @property
    def model_spec(self) -> ModelSpec:
        assert isinstance(self.model, ModelSpec)
        return self.model

    def check(self) -> None:
        """One-line errors for option values that cannot work (before any work starts)."""
        if self.top_k is not None and self.top_k < 1:
            raise UsageError(f"--top-k must be at least 1, not {self.top_k}")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"--alpha must be in [0, 1], not {self.alpha}")
        if self.images_per_batch < 1:
            raise UsageError(f"--images-per-batch must be at least 1, not {self.images_per_batch}")
        if self.max_pixels < 1:
            raise UsageError(f"--max-pixels must be at least 1, not {self.max_pixels}")
        if not self.outputs:
            raise UsageError(f"--outputs must name at least one of: {', '.join(output_kind_names())}")
        colorize(np.zeros((1, 1)), self.colormap)


@dataclass
class RunResult:
    """What a run did: the images it completed, skipped (already complete) and failed (path,
    reason), and its wall time."""

    out: Path
    loaded: LoadedModel | None = field(default=None, repr=False)
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0
