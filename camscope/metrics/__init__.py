"""Metrics for saliency maps: faithfulness, localisation, map properties, sanity checks.

Importing this package registers the built-in metrics (:mod:`camscope.metrics.builtin`) and
every metric family module in :data:`~camscope.metrics.registry.METRICS`, which the report and
``camscope.evaluate`` read.
"""

from __future__ import annotations

# Registered metric families (importing a module registers its metrics).
from camscope.metrics import (  # noqa: F401
    arcc,
    axiomatic,
    complexity,
    faithfulness_extra,
    localisation_masks,
    randomisation,
    robustness,
)
from camscope.metrics import builtin as _builtin  # noqa: F401  (registers the built-in metrics)
from camscope.metrics.faithfulness import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    AdicPerImage,
    AdicResult,
    CurveResult,
    RoadResult,
    average_drop_increase,
    deletion_insertion,
    noisy_linear_imputation,
    road,
)
from camscope.metrics.inputs import MetricInputs
from camscope.metrics.localisation import (
    Box,
    boxes_to_mask,
    energy_pointing_game,
    find_boxes,
    load_boxes,
    pointing_game,
    pointing_hits,
    region_mask,
    scale_boxes,
)
from camscope.metrics.maps import (
    Agreement,
    concentration,
    is_degenerate,
    pairwise_agreement,
    spearman,
    top_iou,
)
from camscope.metrics.registry import (
    CATEGORIES,
    METRICS,
    Column,
    MetricSpec,
    get_metric,
    metrics_in,
    register_metric,
    unregister_metric,
)
from camscope.metrics.sanity import (
    cascading_randomization,
    compare_maps,
    randomization_layers,
    sanity_verdict,
    ssim,
)

__all__ = [
    "CATEGORIES",
    "METRICS",
    "Column",
    "MetricInputs",
    "MetricSpec",
    "get_metric",
    "metrics_in",
    "register_metric",
    "unregister_metric",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AdicPerImage",
    "AdicResult",
    "Agreement",
    "Box",
    "CurveResult",
    "RoadResult",
    "average_drop_increase",
    "boxes_to_mask",
    "cascading_randomization",
    "compare_maps",
    "concentration",
    "deletion_insertion",
    "energy_pointing_game",
    "find_boxes",
    "is_degenerate",
    "load_boxes",
    "noisy_linear_imputation",
    "pairwise_agreement",
    "pointing_game",
    "pointing_hits",
    "randomization_layers",
    "region_mask",
    "road",
    "sanity_verdict",
    "scale_boxes",
    "spearman",
    "ssim",
    "top_iou",
]
