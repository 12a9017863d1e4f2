"""``camscope explain ... --ray``: the local run's work on a Ray cluster.

The driver plans exactly as a local run does (:func:`camscope.run.plan.plan_run`: every check,
the images and their output names, the resume check), probes ``--out`` on every node, then
sends the pending images, ``--images-per-batch`` per block, through an actor pool of
:class:`ExplainWorker` (each builds the model and one :class:`~camscope.run.explainer.Explainer`
once and writes its images' files -- the local run's code path) and records the small records
that come back with the loop every driver shares (:func:`camscope.run.driver.record_batches`).
Only how the batches reach the workers differs from the local run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from camscope.errors import UsageError
from camscope.io.atomic import cleanup_temp_files
from camscope.io.rundir import COMPLETE, ImageRecord, Manifest, RunDir
from camscope.models import pick_device
from camscope.run.driver import ManifestWriter, record_batches
from camscope.run.explainer import Explainer
from camscope.run.options import ExplainOptions, RunResult
from camscope.run.plan import plan_run
from camscope.run.records import Outcome, PlannedImage
from camscope.scale import pool
from camscope.scale.cluster import (
    Cluster,
    RayOptions,
    Resources,
    import_ray,
    plan_resources,
    probe_nodes,
    ray_session,
)

__all__ = ["ExplainWorker", "run_explain_ray"]

logger = logging.getLogger(__name__)


class ExplainWorker:
    """The callable class of ``map_batches``: one per actor. ``__init__`` loads the model and
    builds one :class:`~camscope.run.explainer.Explainer` (the local run's); ``__call__`` explains
    one batch of (path, rel, stem) rows, writing each image's files, and returns one small
    record per image (rel, status, record JSON, reason, seconds) -- never maps."""

    def __init__(
        self,
        opts: ExplainOptions,
        out: str,
        *,
        layer: str,
        target: int | None,
        k: int,
        device: str,
        threads: int,
        cwd: str,
    ) -> None:
        pool.worker_setup(threads, cwd, opts.max_pixels)
        opts = replace(opts, quiet=True, device=device)
        loaded = opts.model_spec.load(pick_device(device), progress=False)
        self.explainer = Explainer(opts, loaded, RunDir(out), layer=layer, target=target, k=k)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = [PlannedImage(Path(str(p)), str(r), str(s)) for p, r, s in zip(batch["path"], batch["rel"], batch["stem"], strict=True)]
        cols: dict[str, list[Any]] = {"rel": [], "status": [], "record": [], "reason": [], "seconds": []}
        for outcome in self.explainer.explain(items):
            ok = outcome.record is not None
            cols["rel"].append(outcome.item.rel)
            cols["status"].append(COMPLETE if ok else "failed")
            cols["record"].append(json.dumps(outcome.record.to_json(), ensure_ascii=False) if ok else "")
            cols["reason"].append("" if ok else (outcome.reason or "unknown failure"))
            cols["seconds"].append(float(outcome.seconds))
        return {k: np.asarray(v, dtype=np.float64 if k == "seconds" else object) for k, v in cols.items()}


class ThrottledManifestWriter(ManifestWriter):
    """Rewrites the manifest after received batches, at most as often as keeps the writing
    below a tenth of the time (a 50 000-image manifest takes a while to write); the final
    write puts the records in the order a local run leaves them."""

    def __init__(self, rundir: RunDir, manifest: Manifest, order: Sequence[str]) -> None:
        super().__init__(rundir, manifest)
        self.order = order
        self.last, self.cost = 0.0, 0.0

    def after_batch(self) -> None:
        if time.monotonic() - self.last >= 10 * self.cost:
            self._timed_write()

    def write(self) -> None:
        _in_plan_order(self.manifest, self.order)
        self._timed_write()

    def _timed_write(self) -> None:
        t0 = time.monotonic()
        self.rundir.write_manifest(self.manifest)
        self.last = time.monotonic()
        self.cost = self.last - t0


def run_explain_ray(
    inputs: Sequence[str | Path],
    out: str | Path,
    opts: ExplainOptions | None = None,
    ray_opts: RayOptions | None = None,
) -> RunResult:
    """:func:`camscope.run.driver.run_explain` on a Ray cluster: same checks, names, resume,
    files and manifest (plus its ``cluster`` section). The model must come from ``opts``
    (a :class:`~camscope.models.ModelSpec`): every worker builds it."""
    opts = opts or ExplainOptions()
    ray_opts = ray_opts or RayOptions()
    started = time.perf_counter()
    import_ray()  # a missing extra is one line before anything else
    # The driver only plans (layer, classes, names); the workers explain, on their device.
    plan = plan_run(inputs, out, replace(opts, device="cpu"))
    opts = replace(opts, methods=plan.methods)  # --methods all: what the plan kept for this model
    if plan.task is not None:
        raise UsageError(f"--ray explains classifiers only so far; run --task {plan.task.name} without --ray")
    todo = plan.todo
    batches = -(-len(todo) // opts.images_per_batch)
    with ray_session(ray_opts) as cluster:
        res = plan_resources(cluster, ray_opts, opts.device, max(1, batches))
        root = Path(os.path.abspath(out))
        relative = not all(Path(p).is_absolute() for p in [*(i.path for i in todo), *_model_paths(opts)])
        probe_nodes(cluster, root, res, relative=relative)
        # ---- every check passed: only now is anything created under ``out`` -------------------
        plan.rundir.create()
        manifest = plan.manifest
        manifest.device = res.device
        manifest.cluster = res.describe(cluster)
        order = list(dict.fromkeys([*manifest.images, *(i.rel for i in todo)]))
        result = RunResult(Path(out), plan.loaded, skipped=list(plan.skipped))
        logger.info("Ray %s: %d worker(s) x %d CPU, %g GPU (%s)", cluster.ray.__version__, res.workers, res.cpus, res.gpus, res.device)
        worker = {
            "opts": opts, "out": str(root), "layer": plan.layer, "target": plan.target, "k": plan.k,
            "device": res.device, "threads": res.cpus, "cwd": os.getcwd(),
        }  # fmt: skip
        # closing(): the stream of batches ends (and Ray Data lets go) inside the Ray session,
        # also when the driver is interrupted
        with contextlib.closing(_remote_batches(cluster, res, todo, opts.images_per_batch, worker)) as outcomes:
            finished = record_batches(
                plan, opts, result, outcomes, ThrottledManifestWriter(plan.rundir, manifest, order), started=started
            )
        if finished:
            # Every task has ended: what a killed worker left half-written is only a temporary file.
            cleanup_temp_files(plan.rundir.root)
    return result


def _remote_batches(
    cluster: Cluster, res: Resources, todo: list[PlannedImage], per_batch: int, worker: dict[str, Any]
) -> Iterator[list[Outcome]]:
    """The outcomes of ``todo``, one list per batch as the workers return them (a retried batch
    reported twice counts once); then, as failures, the images of batches Ray gave up on."""
    pending = {item.rel: item for item in todo}
    if todo:
        rows = [{"path": str(i.path), "rel": i.rel, "stem": i.stem} for i in todo]
        with pool.data_context(cluster.ray):
            ds = pool.actor_pool(pool.dataset_of_batches(cluster.ray, rows, per_batch), ExplainWorker, worker, res)
            stream = iter(pool.output_batches(ds))
            try:
                for batch in stream:
                    outcomes = []
                    for rel, status, record, reason, seconds in zip(
                        batch["rel"], batch["status"], batch["record"], batch["reason"], batch["seconds"], strict=True
                    ):
                        item = pending.pop(str(rel), None)
                        if item is None:  # a retried batch reported twice: once is recorded
                            continue
                        rec = ImageRecord.from_json(json.loads(record)) if status == COMPLETE else None
                        outcomes.append(Outcome(item, rec, None if rec else str(reason), float(seconds)))
                    yield outcomes
            finally:
                pool.close_quietly(stream)
    lost = pool.LOST.format(tries=pool.MAX_TASK_RETRIES + 1)
    yield [Outcome(item, None, lost) for item in pending.values()]  # batches given up after their retries


def _model_paths(opts: ExplainOptions) -> list[str]:
    spec = opts.model_spec
    return [p for p in (spec.weights_file, spec.labels) if p]


def _in_plan_order(manifest: Manifest, order: Sequence[str]) -> None:
    """Records in the order a local run leaves them: the earlier run's, then this run's in the
    order of the images (the workers finish in any order)."""
    rank = {rel: i for i, rel in enumerate(order)}
    manifest.images = dict(sorted(manifest.images.items(), key=lambda kv: rank.get(kv[0], len(rank))))
    manifest.failures = dict(sorted(manifest.failures.items(), key=lambda kv: rank.get(kv[0], len(rank))))
