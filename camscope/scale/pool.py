"""The Ray Data plumbing both ``--ray`` drivers share: a worker process's settings, the
dataset cut into the run's batches, the actor pool with its fault tolerance, the stream of
output batches and the one-line message of a worker's failure.

Fault tolerance is Ray's: a worker process that dies is restarted and its batch retried
(:data:`MAX_TASK_RETRIES` times); a batch whose worker dies on every try is given up and its
images recorded as failures (:data:`LOST`), so one image that crashes native code costs its
batch, not the run. Each worker holds one batch at a time, so a dying worker takes no innocent
batch down with it; rewriting a retried batch's files is harmless (atomic writes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from PIL import Image

from camscope.errors import CamscopeError
from camscope.scale.cluster import Resources

__all__ = ["MAX_TASK_RETRIES", "LOST", "worker_setup", "data_context", "dataset_of_batches", "actor_pool",
           "output_batches", "close_quietly", "root_message"]

MAX_TASK_RETRIES = 3
"""Tries of a batch after its worker died (on a restarted worker); then it is given up."""
LOST = "its worker process died on every try ({tries}) while explaining its batch; re-run to retry"


def worker_setup(threads: int, cwd: str, max_pixels: int | None = None) -> None:
    """A worker's process settings: torch threads = its CPUs, the driver's working directory
    (relative paths resolve as on the driver), Pillow's pixel limit as the CLI sets it."""
    torch.set_num_threads(max(1, threads))
    if os.path.isdir(cwd):
        os.chdir(cwd)
    if max_pixels is not None:
        if max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
            Image.MAX_IMAGE_PIXELS = max_pixels


@contextlib.contextmanager
def data_context(ray: Any) -> Iterator[None]:
    """Ray Data settings for a run, restored afterwards: no progress bars of its own (the driver
    shows one), no abort of a legitimately slow batch (Score-CAM on a CPU takes minutes per
    batch; Ray Data's default gives up after 30 minutes without progress), and a batch given
    up after its retries costs its images (recorded as failures), not the run."""
    ctx = ray.data.DataContext.get_current()
    changes = {
        "enable_progress_bars": False,
        "print_on_execution_start": False,
        "execution_no_progress_timeout_s": -1,
        "max_errored_blocks": -1,
    }
    saved = {k: getattr(ctx, k) for k in changes if hasattr(ctx, k)}
    with contextlib.suppress(ImportError):  # Ray Data says once that its bars are off: we know
        from ray.util.debug import log_once

        log_once("ray_data_progress_manager_disabled")
    for k in saved:
        setattr(ctx, k, changes[k])
    quiet = logging.getLogger("ray.data")
    level = quiet.level
    quiet.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        quiet.setLevel(level)


def dataset_of_batches(ray: Any, rows: list[dict[str, Any]], per_block: int) -> Any:
    """``from_items`` cut into blocks of exactly ``per_block`` rows (the last one shorter), in
    order: with ``batch_size=None`` every block is one batch, so the images are grouped into
    batches exactly as a local run groups them."""
    full = len(rows) // per_block * per_block
    parts = []
    if full:
        parts.append(ray.data.from_items(rows[:full], override_num_blocks=full // per_block))
    if full < len(rows):
        parts.append(ray.data.from_items(rows[full:], override_num_blocks=1))
    return parts[0] if len(parts) == 1 else parts[0].union(parts[1])


def actor_pool(ds: Any, worker: type, kwargs: dict[str, Any], res: Resources) -> Any:
    """``ds.map_batches`` through an actor pool of ``worker``: one batch (a block) per call, one
    batch in flight per worker (a batch never waits behind another on a worker, so a dying
    worker takes no other batch down), and the fault tolerance of :data:`MAX_TASK_RETRIES`: a
    dead worker is restarted without limit, its batch tried that many more times (Ray Data's
    own default retries forever, so a batch that kills its worker every time would never end).
    Ray deprecates passing those two through ``map_batches`` for its version 2.64; from there
    on its defaults apply."""
    import ray  # the optional extra, only ever imported on a --ray run

    major, minor = (int(x) for x in re.findall(r"\d+", ray.__version__)[:2])
    retries = {} if (major, minor) >= (2, 64) else {"max_restarts": -1, "max_task_retries": MAX_TASK_RETRIES}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(
            worker,
            fn_constructor_kwargs=kwargs,
            batch_size=None,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=res.workers, max_tasks_in_flight_per_actor=1),
            num_cpus=res.cpus,
            num_gpus=res.gpus,
            **retries,
        )


def output_batches(ds: Any) -> Iterator[dict[str, Any]]:
    """The dataset's output batches; a failure on the workers becomes one line."""
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")
    except CamscopeError:
        raise
    except Exception as exc:
        raise CamscopeError(f"the Ray workers failed: {root_message(exc)}") from exc


def close_quietly(stream: Any) -> None:
    with contextlib.suppress(Exception):
        stream.close()


def root_message(exc: BaseException) -> str:
    """The innermost cause's first line (a worker's own error inside Ray's wrappers)."""
    while True:
        inner = exc.__cause__ or getattr(exc, "cause", None)
        if not isinstance(inner, BaseException) or inner is exc:
            break
        exc = inner
    text = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    first = text[-1] if text and "Traceback" in text[0] else (text[0] if text else type(exc).__name__)
    return first.strip()[:300]
