"""``camscope report DIR --ray``: every photo measured by a Ray worker through the local run's
:class:`~camscope.reporting.evaluate.PhotoMeasurer`, cached in ``DIR/metrics/<rel>.json``."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from camscope.io.rundir import ImageRecord, Manifest, RunDir
from camscope.metrics import load_boxes
from camscope.reporting.evaluate import (
    EvaluationResult,
    Measured,
    MeasureSettings,
    PhotoMeasurer,
    add_measured,
    check_measurable,
    log_measured,
    measure_settings,
)
from camscope.scale import pool
from camscope.scale.cluster import RayOptions, import_ray, plan_resources, probe_nodes, ray_session

__all__ = ["MeasureWorker", "evaluate_run_ray", "RayMeasurement"]

logger = logging.getLogger(__name__)


class MeasureWorker:
    """The callable class of ``camscope report --ray``: one
    :class:`~camscope.reporting.evaluate.PhotoMeasurer` per actor (the model is built once, on
    first need); ``__call__`` measures a batch of photos, writes each one's
    ``DIR/metrics/<rel>.json`` and returns the records."""

    def __init__(
        self, out: str, header: dict[str, Any], measure: MeasureSettings, options: dict[str, Any], *, threads: int, cwd: str
    ) -> None:
        pool.worker_setup(threads, cwd)
        self.measurer = PhotoMeasurer(out, Manifest.from_json(header), measure, **options)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        cols: dict[str, list[Any]] = {"rel": [], "record": [], "problem": [], "counts": [], "seconds": []}
        for rel, rec in zip(batch["rel"], batch["record"], strict=True):
            m = self.measurer.measure(str(rel), ImageRecord.from_json(json.loads(rec)))
            cols["rel"].append(m.rel)
            cols["record"].append(json.dumps(m.record, ensure_ascii=False, allow_nan=True))
            cols["problem"].append(m.problem or "")
            cols["counts"].append(json.dumps({"computed": m.computed, "reused": m.reused}))
            cols["seconds"].append(m.seconds)
        return {k: np.asarray(v, dtype=np.float64 if k == "seconds" else object) for k, v in cols.items()}


def evaluate_run_ray(
    out_dir: str | Path,
    ray_opts: RayOptions | None = None,
    *,
    weights_file: str | Path | None = None,
    boxes: str | Path | dict | None = None,
    device: str | None = None,
    measure: MeasureSettings | None = None,
    trust_checkpoint: bool = False,
    progress: bool = False,
    **options: Any,
) -> EvaluationResult:
    """:func:`camscope.reporting.evaluate.evaluate_run` on a Ray cluster: every photo is measured
    by a worker (one photo per batch: the slow ones balance out) through the same
    :class:`~camscope.reporting.evaluate.PhotoMeasurer`, cached in ``DIR/metrics/<rel>.json``;
    the driver collects the records. A photo whose worker died on every try is a problem."""
    ray_opts = ray_opts or RayOptions()
    measure = measure_settings(measure, options)
    t0 = time.perf_counter()
    import_ray()
    out = Path(os.path.abspath(out_dir))
    manifest = RunDir(out).load()
    check_measurable(Path(out_dir), manifest)
    table = load_boxes(boxes) if isinstance(boxes, (str, Path)) else boxes
    images = manifest.complete()
    result = EvaluationResult(Path(out_dir))
    with ray_session(ray_opts) as cluster:
        res = plan_resources(cluster, ray_opts, device, max(1, len(images)))
        paths = [*(r.source for r in images.values()), *([str(weights_file)] if weights_file else [])]
        probe_nodes(cluster, out, res, relative=not all(Path(p).is_absolute() for p in paths))
        header = Manifest(manifest.settings, methods=manifest.methods, outputs=manifest.outputs,
                          output_kinds=manifest.output_kinds).to_json()
        worker_options = {
            "weights_file": weights_file, "boxes": table, "device": res.device,
            "trust_checkpoint": trust_checkpoint, "progress": False,
        }  # fmt: skip
        pending = set(images)
        if images:
            rows = [{"rel": rel, "record": json.dumps(rec.to_json(), ensure_ascii=False)} for rel, rec in images.items()]
            bar = tqdm(total=len(rows), desc="measuring", unit="img", disable=not progress)
            try:
                with pool.data_context(cluster.ray):
                    kwargs = {
                        "out": str(out), "header": header, "measure": measure, "options": worker_options,
                        "threads": res.cpus, "cwd": os.getcwd(),
                    }  # fmt: skip
                    ds = pool.actor_pool(pool.dataset_of_batches(cluster.ray, rows, 1), MeasureWorker, kwargs, res)
                    stream = iter(pool.output_batches(ds))
                    try:
                        for batch in stream:
                            for rel, record, problem, counts, seconds in zip(
                                batch["rel"], batch["record"], batch["problem"], batch["counts"], batch["seconds"], strict=True
                            ):
                                if str(rel) not in pending:
                                    continue
                                pending.discard(str(rel))
                                c = json.loads(counts)
                                add_measured(result, Measured(str(rel), json.loads(record), str(problem) or None,
                                                              c["computed"], c["reused"], float(seconds)))
                                bar.update(1)
                    finally:
                        pool.close_quietly(stream)
            finally:
                bar.close()
    for rel in sorted(pending):
        reason = pool.LOST.format(tries=pool.MAX_TASK_RETRIES + 1).replace("explaining", "measuring")
        logger.warning("%s: %s", rel, reason)
        result.problems.append((rel, reason))
    order = list(images)
    result.images = {rel: result.images[rel] for rel in order if rel in result.images}
    result.seconds = time.perf_counter() - t0
    log_measured(result)
    return result


@dataclass(frozen=True)
class RayMeasurement:
    """What ``build_report(ray=...)`` takes to measure on Ray (the report knows nothing of Ray):
    :meth:`evaluate_run` is :func:`evaluate_run_ray` with these options."""

    options: RayOptions

    def evaluate_run(self, out_dir: str | Path, **kwargs: Any) -> EvaluationResult:
        return evaluate_run_ray(out_dir, self.options, **kwargs)
