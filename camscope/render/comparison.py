"""The comparison figure's layout: which maps it shows in which panel, and its title (the CLI's
figures, ``CamResult.figure`` and ``save``). Drawn by :func:`camscope.render.draw.comparison_figure`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from camscope.core.smoothing import Smoothing
from camscope.methods import get_method
from camscope.names import is_random_weights, variant_name, variant_title
from camscope.render.draw import Panel

__all__ = ["figure_rows", "figure_title"]


def figure_rows(
    maps: Mapping[str, np.ndarray], rank: int, methods: Sequence[str], variants: Sequence[Smoothing], label: str
) -> list[list[Panel]]:
    """The panels of a comparison figure: one row per smoothing variant, one panel per method,
    each titled with the method (and smoothing) and ``label`` (the explained class)."""
    return [
        [
            Panel(
                f"{variant_title(get_method(m).title, variant.parts)}\n{label}", maps[variant_name(m, variant.parts)][rank],
                pixel_level=get_method(m).pixel_level,
            )
            for m in methods
        ]
        for variant in variants
    ]


def figure_title(rel: str, explained: str, truth: str | None, weights: str | None) -> str:
    """A comparison figure's title: the photo, the explained class, the true class when known,
    and a warning when the model has random weights."""
    title = f"{rel} | explained: {explained}"
    if truth is not None:
        title += f" | true: {truth}"
    if weights is not None and is_random_weights(weights):
        title += "\nRANDOM WEIGHTS: these maps say nothing about a trained model"
    return title
