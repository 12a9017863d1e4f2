"""Names every layer shares, with no dependency: how a method under a smoothing is named
(``gradcam``, ``gradcam+eigen+aug``: the keys of ``CamResult.maps`` and the run folder's
variant folders) and how a model's ``weights`` are described when it has none or was passed from
Python. The run folder (:mod:`camscope.io.rundir`) records these names; the engine and the model
sources make them; neither depends on the other for it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "RANDOM_WEIGHTS",
    "PYTHON_MODEL",
    "is_random_weights",
    "variant_name",
    "parse_variant",
    "smoothing_label",
    "smoothing_parts",
    "variant_title",
]

RANDOM_WEIGHTS = "random (no weights)"
"""The ``weights`` description of a model without trained weights."""
PYTHON_MODEL = "given as a Python object"
"""The ``weights`` description of a model passed from Python (it cannot be rebuilt by name)."""


def is_random_weights(weights: str) -> bool:
    """Whether a ``weights`` description says the model had no trained weights."""
    return weights.startswith("random")


_SEP = "+"


def variant_name(method: str, smoothing: Sequence[str] = ()) -> str:
    """Name of a method under a smoothing variant: ``gradcam``, ``gradcam+eigen+aug``."""
    return _SEP.join([method, *smoothing])


def parse_variant(name: str) -> tuple[str, tuple[str, ...]]:
    """Inverse of :func:`variant_name`: ``"gradcam+eigen+aug"`` -> ``("gradcam", ("eigen", "aug"))``."""
    method, *smoothing = name.split(_SEP)
    return method, tuple(smoothing)


def smoothing_label(smoothing: Sequence[str]) -> str:
    """``("eigen", "aug")`` -> ``"eigen+aug"`` (``""`` for the plain variant)."""
    return _SEP.join(smoothing)


def smoothing_parts(label: str) -> tuple[str, ...]:
    """Inverse of :func:`smoothing_label`: ``"eigen+aug"`` -> ``("eigen", "aug")``."""
    return tuple(label.split(_SEP)) if label else ()


def variant_title(title: str, smoothing: Sequence[str] | str = ()) -> str:
    """A variant's display title: the method's title, then its smoothing (``"Grad-CAM +eigen+aug"``;
    ``smoothing`` as parts or as a label). The one spelling of figures, the notebook grid, the
    report and the benchmark tables."""
    label = smoothing if isinstance(smoothing, str) else smoothing_label(smoothing)
    return f"{title} +{label}" if label else title
