"""The ``explain`` run: plan (checks, images, names, resume), explain and write each batch,
record every outcome in the run folder; also a :class:`~camscope.engine.CamResult` saved as
a run folder. File names and formats belong to :mod:`camscope.io.rundir`."""

from camscope.run.explainer import (
    Explained,
    Explainer,
    ExplainOptions,
    Outcome,
    Plan,
    PlannedImage,
    RunResult,
    figure_rows,
    figure_title,
    plan_run,
    record_outcome,
    run_explain,
    save_result,
    write_image,
)

__all__ = [
    "ExplainOptions",
    "RunResult",
    "Plan",
    "Explainer",
    "Explained",
    "Outcome",
    "PlannedImage",
    "plan_run",
    "record_outcome",
    "run_explain",
    "write_image",
    "save_result",
    "figure_rows",
    "figure_title",
]
