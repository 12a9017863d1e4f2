"""Drawing: colour maps, overlays and comparison figures (:mod:`camscope.render.draw`), and how a
:class:`~camscope.engine.CamResult` shows itself in a notebook (:mod:`camscope.render.notebook`).
matplotlib is imported only when a figure is drawn."""

from camscope.render.draw import (
    Panel,
    colorize,
    comparison_figure,
    figure_png,
    new_figure,
    overlay,
    png_bytes,
    resize_map,
)

__all__ = ["colorize", "overlay", "Panel", "comparison_figure", "new_figure", "figure_png", "png_bytes", "resize_map"]
