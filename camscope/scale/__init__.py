"""Scale-out with Ray (``--ray``): the driver plans and records exactly as a local run does, a
Ray Data actor pool explains (:mod:`~camscope.scale.explain`) or measures
(:mod:`~camscope.scale.measure`) the photos; the cluster, its resources and the probe of
``--out`` in :mod:`~camscope.scale.cluster`, the shared pool plumbing in
:mod:`~camscope.scale.pool`. Ray is imported only when used (``pip install "camscope[ray]"``).
"""

from camscope.scale.cluster import (
    MISSING_RAY,
    Cluster,
    RayOptions,
    held_session,
    import_ray,
    ray_session,
)
from camscope.scale.explain import run_explain_ray
from camscope.scale.measure import RayMeasurement, evaluate_run_ray

__all__ = [
    "MISSING_RAY",
    "RayOptions",
    "Cluster",
    "import_ray",
    "ray_session",
    "held_session",
    "run_explain_ray",
    "evaluate_run_ray",
    "RayMeasurement",
]
