"""Scale-out with Ray (``--ray``): the driver plans and records, a Ray Data actor pool explains
or measures the photos. Ray is imported only when used (``pip install "camscope[ray]"``)."""

from camscope.scale.ray_driver import (
    MISSING_RAY,
    Cluster,
    RayOptions,
    evaluate_run_ray,
    held_session,
    import_ray,
    ray_session,
    run_explain_ray,
)

__all__ = [
    "MISSING_RAY",
    "RayOptions",
    "Cluster",
    "import_ray",
    "ray_session",
    "held_session",
    "run_explain_ray",
    "evaluate_run_ray",
]
