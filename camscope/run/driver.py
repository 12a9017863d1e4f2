"""Driving an explain run: the loop both drivers share (record each outcome, show progress,
stop at the first failure with ``--fail-fast``, keep ``manifest.json`` current), and the local
driver :func:`run_explain`. What differs between drivers is only how batches reach the
workers: here, an :class:`~camscope.run.explainer.Explainer` in this process; with ``--ray``,
an actor pool (:mod:`camscope.scale.explain`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tqdm.auto import tqdm

from camscope.io.rundir import Manifest, RunDir
from camscope.models import LoadedModel
from camscope.run.explainer import Explainer
from camscope.run.manifest import record_outcome
from camscope.run.options import ExplainOptions, RunResult
from camscope.run.plan import Plan, plan_run
from camscope.run.records import Outcome

__all__ = ["ManifestWriter", "record_batches", "run_explain"]

logger = logging.getLogger(__name__)


class ManifestWriter:
    """Writes the manifest after every batch (the local run: batches are few and slow)."""

    def __init__(self, rundir: RunDir, manifest: Manifest) -> None:
        self.rundir, self.manifest = rundir, manifest

    def after_batch(self) -> None:
        self.write()

    def write(self) -> None:
        self.rundir.write_manifest(self.manifest)


def record_batches(
    plan: Plan, opts: ExplainOptions, result: RunResult, batches: Iterable[Iterable[Outcome]], writer: ManifestWriter,
    *, started: float,
) -> bool:
    """Record the outcomes of ``batches`` (in the order they arrive) in the plan's manifest and
    in ``result``; the manifest is written after each batch (as ``writer`` decides) and at the
    end, whatever happens. Returns False when ``--fail-fast`` stopped at a failure."""
    if result.skipped:
        logger.info("resuming: %d images already complete", len(result.skipped))
    bar = tqdm(total=len(plan.todo), desc="images", unit="img", disable=opts.quiet)
    try:
        for batch in batches:
            for outcome in batch:
                record_outcome(plan.manifest, outcome, result)
                bar.update(1)
                if outcome.reason is not None and opts.fail_fast:
                    left = len(plan.todo) - len(result.completed) - len(result.failed)
                    logger.error("stopped at the first failure (--fail-fast); %d images not processed", left)
                    return False
            writer.after_batch()
        return True
    finally:
        bar.close()
        plan.manifest.seconds = round(time.perf_counter() - started, 3)
        writer.write()
        result.seconds = time.perf_counter() - started


def run_explain(
    inputs: Sequence[str | Path],
    out: str | Path,
    opts: ExplainOptions | None = None,
    *,
    loaded: LoadedModel | None = None,
) -> RunResult:
    """Explain every image found in ``inputs`` and write the output tree under ``out``.

    Every argument is checked before any image is processed, and nothing is created under
    ``out`` until all checks have passed (a usage error leaves no trace). ``loaded`` may carry
    an already built :class:`camscope.models.LoadedModel` (for any ``nn.Module``); otherwise the
    model is built from ``opts``. The images stream through one
    :class:`~camscope.run.explainer.Explainer`, ``--images-per-batch`` at a time; the manifest
    is rewritten after each batch, so an interrupted run loses nothing already written and
    re-running the same command resumes.
    """
    opts = opts or ExplainOptions()
    started = time.perf_counter()
    plan = plan_run(inputs, out, opts, loaded=loaded)
    explainer = Explainer(
        opts, plan.loaded, plan.rundir, layer=plan.layer, target=plan.target, k=plan.k, engine=plan.engine,
        task=plan.task,
    )
    # ---- every check passed: only now is anything created under ``out`` ----------------------
    plan.rundir.create()
    result = RunResult(Path(out), plan.loaded, skipped=list(plan.skipped))
    record_batches(plan, opts, result, _local_batches(explainer, plan, opts), ManifestWriter(plan.rundir, plan.manifest), started=started)
    return result


def _local_batches(explainer: Explainer, plan: Plan, opts: ExplainOptions) -> Iterator[Iterator[Outcome]]:
    todo = plan.todo
    for start in range(0, len(todo), opts.images_per_batch):
        yield explainer.explain(todo[start : start + opts.images_per_batch])
