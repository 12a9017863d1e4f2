"""The ``explain`` run, one module per step of the data path:

* :mod:`~camscope.run.options`: :class:`ExplainOptions` (the CLI flags), :class:`RunResult`;
* :mod:`~camscope.run.plan`: :func:`plan_run` -- every check, the images and their names, the
  model and its split, the resume check; nothing is created before it has passed;
* :mod:`~camscope.run.explainer`: :class:`Explainer` -- explain a batch, write each image's
  files (the one code path, locally and on Ray workers);
* :mod:`~camscope.run.outputs`: the output kinds (``--outputs``) and :func:`write_image`;
* :mod:`~camscope.run.manifest`: the run's settings and manifest, :func:`record_outcome`;
* :mod:`~camscope.run.driver`: the loop every driver shares, and :func:`run_explain` (local);
* :mod:`~camscope.run.save`: a result from Python saved as a run folder.

File names and formats belong to :mod:`camscope.io.rundir`.
"""

from camscope.render.comparison import figure_rows, figure_title
from camscope.run.driver import record_batches, run_explain
from camscope.run.explainer import Explainer
from camscope.run.manifest import record_outcome
from camscope.run.options import ExplainOptions, RunResult
from camscope.run.outputs import OUTPUT_KINDS, OutputKind, register_output_kind, write_image
from camscope.run.plan import Plan, build_engine, plan_run
from camscope.run.records import Explained, Outcome, PlannedImage
from camscope.run.save import save_result

__all__ = [
    "ExplainOptions",
    "RunResult",
    "Plan",
    "Explainer",
    "Explained",
    "Outcome",
    "PlannedImage",
    "OutputKind",
    "OUTPUT_KINDS",
    "register_output_kind",
    "plan_run",
    "build_engine",
    "record_outcome",
    "record_batches",
    "run_explain",
    "write_image",
    "save_result",
    "figure_rows",
    "figure_title",
]
