"""Explain and measure a whole dataset on a Ray cluster: one run folder, many workers.

``camscope explain ... --ray [ADDRESS]`` and ``camscope report DIR --ray [ADDRESS]`` run the
same work as a local run on Ray Data, never with a scheduler of camscope's own:

* the driver plans the run exactly as a local run does (:func:`camscope.run.explainer.plan_run`:
  every check, the images and their output names, the resume check against the manifest);
* one probe task per node writes a file into ``--out``, the driver checks that it sees it, and
  the task removes it again (so ``--out`` is proven writable *and shared* before any work);
* ``ray.data.from_items`` of the pending (path, output name) records, cut into blocks of
  ``--images-per-batch`` rows, goes through ``map_batches`` with a callable class on an actor
  pool: each actor loads the model and builds one :class:`~camscope.run.explainer.Explainer` once,
  decodes its own images, writes their files with the same atomic writes as a local run (the
  same code path) and returns one small record per image -- never a map;
* the driver streams those records (``iter_batches``) into ``manifest.json``,
  ``predictions.csv`` and ``failures.csv`` as they arrive, so its memory stays bounded and an
  interrupted driver leaves a manifest that a re-run resumes from.

Fault tolerance is Ray's: a worker process that dies is restarted (``max_restarts=-1``) and its
batch retried (``max_task_retries``); a batch whose worker dies on every try is given up and
its images recorded as failures (Ray Data's ``max_errored_blocks``), so one image that crashes
native code costs its batch, not the run. Each worker holds one batch at a time
(``max_tasks_in_flight_per_actor=1``): a batch never waits behind another on a worker, so a
dying worker takes no innocent batch down with it. Rewriting a retried batch's files is harmless: every
file is written to a temporary name and renamed.

Ray is imported here only, and only when ``--ray`` is used (``pip install "camscope[ray]"``).
A local instance (no ADDRESS) listens on the loopback address only. The storage a cluster needs,
security, and which settings give byte-identical maps: docs/cluster.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from camscope.errors import CamscopeError, UsageError

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

logger = logging.getLogger(__name__)

MISSING_RAY = '--ray needs Ray: pip install "camscope[ray]"'
LOCAL = "local"
"""``--ray`` without an address: start a Ray instance on this machine for the run."""
MAX_TASK_RETRIES = 3
"""Tries of a batch after its worker died (on a restarted worker); then it is given up."""
LOCAL_OBJECT_STORE = 256 * 2**20
"""Object store of a local instance: the data are paths and small records (no maps)."""
LOST = "its worker process died on every try ({tries}) while explaining its batch; re-run to retry"
_PROBE = ".camscope-probe-{token}"
_ADDRESS = re.compile(r"^(auto|local|ray://[^\s/]+:\d+|[^\s/:]+:\d+)$")


# --------------------------------------------------------------------------------------------
# Options and the session
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a ``--ray`` run goes (the ``--ray``, ``--workers``,
    ``--gpus-per-worker`` and ``--cpus-per-worker`` options).

    Attributes:
        address: ``"local"`` (start Ray on this machine, listening on the loopback address),
            ``"auto"`` (join the cluster this machine belongs to), ``"ray://HOST:PORT"`` (Ray
            Client) or ``"HOST:PORT"`` (a cluster's GCS address).
        workers: actors in the pool (default: as many as the cluster's GPUs, or CPUs, allow
            at the resources below; never more than there are batches).
        gpus_per_worker: GPUs per actor, fractions allowed (default: 1 when the cluster has
            GPUs, else 0).
        cpus_per_worker: CPUs per actor, and the actor's torch thread count (default: 1 without
            GPUs; with GPUs, a GPU node's CPUs divided among its workers).
    """

    address: str = LOCAL
    workers: int | None = None
    gpus_per_worker: float | None = None
    cpus_per_worker: int | None = None

    def __post_init__(self) -> None:
        if not _ADDRESS.match(self.address):
            raise UsageError(
                f"--ray {self.address!r}: give auto, ray://HOST:PORT, HOST:PORT or nothing (a local "
                "Ray); put --ray after the images, or write --ray=ADDRESS"
            )
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers must be at least 1, not {self.workers}")
        if self.cpus_per_worker is not None and self.cpus_per_worker < 1:
            raise UsageError(f"--cpus-per-worker must be at least 1, not {self.cpus_per_worker}")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise UsageError(f"--gpus-per-worker must be at least 0, not {self.gpus_per_worker}")


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or a one-line error naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (pyarrow, pandas: part of the extra)
    except ImportError:
        raise UsageError(MISSING_RAY) from None
    return ray


@dataclass
class Cluster:
    """A connected Ray session: the module, the address asked for, and whether this process
    started it (and so shuts it down)."""

    ray: Any
    address: str
    started: bool

    def resources(self) -> dict[str, float]:
        return dict(self.ray.cluster_resources())

    def nodes(self) -> list[dict[str, Any]]:
        return [n for n in self.ray.nodes() if n.get("Alive")]


@contextlib.contextmanager
def ray_session(opts: RayOptions) -> Iterator[Cluster]:
    """Connect to Ray for the block. If this process already runs Ray (``ray.init`` called by
    the caller), that session is used and left running; otherwise one is started (``local``) or
    joined, and shut down at the end."""
    ray = import_ray()
    if ray.is_initialized():
        yield Cluster(ray, opts.address, started=False)
        return
    reaper = None
    try:
        if opts.address == LOCAL:
            from camscope.scale.reaper import start_reaper

            reaper = start_reaper()  # a killed driver leaves no Ray agent running
            with _loopback_only():
                ray.init(
                    address="local",
                    include_dashboard=False,
                    object_store_memory=LOCAL_OBJECT_STORE,
                    _node_ip_address="127.0.0.1",
                    # Ray starts workers at nice 15; here they do what a local run does, at its
                    # priority (at 15 they yield to any other work on a shared machine).
                    _system_config={"worker_niceness": 0},
                )
            ip = ray.util.get_node_ip_address()
            if ip not in ("127.0.0.1", "localhost", "::1"):
                logger.warning("the local Ray instance listens on %s, not only on the loopback address: "
                               "keep this machine's ports on a trusted network (docs/cluster.md)", ip)
        elif opts.address.split("://")[-1].rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
            with _loopback_only():  # a Ray on the loopback address only, e.g. another --ray's
                ray.init(address=opts.address)
        else:
            ray.init(address=opts.address)
    except Exception as exc:  # ConnectionError, a missing ray[client] for ray://, ...
        _stop(reaper)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"--ray {opts.address}: cannot start or join Ray ({first[:200]})") from None
    if _held["depth"]:  # kept for the next run of the same command; held_session shuts it down
        _held["started"] = True
        _held["reaper"] = reaper
        yield Cluster(ray, opts.address, started=True)
        return
    try:
        yield Cluster(ray, opts.address, started=True)
    finally:
        ray.shutdown()
        _stop(reaper)


def _stop(reaper: subprocess.Popen | None) -> None:
    """End the watcher of a local Ray that this process shut down itself."""
    if reaper is not None and reaper.poll() is None:
        reaper.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            reaper.wait(timeout=5)


_held: dict[str, Any] = {"depth": 0, "started": False}


@contextlib.contextmanager
def held_session() -> Iterator[None]:
    """Within the block, a Ray session that :func:`ray_session` starts stays up for the next
    one (``explain --ray --report``: one start for both) and is shut down at the end. Starts
    nothing itself, so a command's argument checks still come before Ray starts."""
    _held["depth"] += 1
    try:
        yield
    finally:
        _held["depth"] -= 1
        if _held["depth"] == 0 and _held["started"]:
            _held["started"] = False
            import ray

            ray.shutdown()
            _stop(_held.pop("reaper", None))


@contextlib.contextmanager
def _loopback_only() -> Iterator[None]:
    """Make a new local Ray instance take the loopback address: on Linux Ray replaces
    ``127.0.0.1`` by the machine's routable address unless multi-node clusters are switched off,
    which is what its constant ``ENABLE_RAY_CLUSTER`` does (read at call time). Where that
    constant is missing (another Ray version), the caller checks the address and warns."""
    try:
        from ray._private import ray_constants
    except ImportError:  # pragma: no cover - another Ray layout
        yield
        return
    old = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    if old is None:  # pragma: no cover
        yield
        return
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old


@contextlib.contextmanager
def _data_context(ray: Any) -> Iterator[None]:
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


# --------------------------------------------------------------------------------------------
# Resources and the probe
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resources:
    """What the pool asks for: actors, CPUs and GPUs per actor, the device they use."""

    workers: int
    cpus: int
    gpus: float
    device: str

    def describe(self, cluster: Cluster) -> dict[str, Any]:
        """The manifest's ``cluster`` section."""
        return {
            "ray": cluster.ray.__version__,
            "address": cluster.address,
            "workers": self.workers,
            "cpus_per_worker": self.cpus,
            "gpus_per_worker": self.gpus,
            "threads_per_worker": self.cpus,
            "device": self.device,
        }


def plan_resources(cluster: Cluster, opts: RayOptions, device: str | None, batches: int) -> Resources:
    """Workers and resources per worker from the options and what the cluster offers."""
    res = cluster.resources()
    cpus_total, gpus_total = int(res.get("CPU", 0)), float(res.get("GPU", 0))
    gpus = opts.gpus_per_worker if opts.gpus_per_worker is not None else (1.0 if gpus_total >= 1 else 0.0)
    cpus = opts.cpus_per_worker or _default_cpus(cluster, gpus)
    if gpus > 0 and gpus_total == 0:
        raise UsageError(f"--gpus-per-worker {gpus:g}: the Ray cluster has no GPUs")
    if device is not None and device.startswith("cuda") and gpus == 0:
        raise UsageError(f"--device {device} needs GPUs: give --gpus-per-worker (the cluster has {gpus_total:g})")
    if opts.workers is not None:
        workers = opts.workers
    elif gpus > 0:
        workers = max(1, int(gpus_total // gpus))
    else:
        workers = max(1, cpus_total // cpus)
    workers = max(1, min(workers, batches))
    if workers * cpus > cpus_total or workers * gpus > gpus_total:
        logger.warning(
            "%d workers x (%d CPU, %g GPU) exceed what the cluster has now (%d CPU, %g GPU): "
            "some wait until nodes join", workers, cpus, gpus, cpus_total, gpus_total,
        )  # fmt: skip
    return Resources(workers, cpus, gpus, device or ("cuda" if gpus > 0 else "cpu"))


def _default_cpus(cluster: Cluster, gpus: float) -> int:
    """CPUs per worker by default: 1 without GPUs (one single-threaded worker per core gives the
    most photos per second on CPUs); with GPUs, a GPU node's CPUs shared by its workers (they
    decode photos and write files while the GPU computes), the smallest share over the nodes."""
    if gpus <= 0:
        return 1
    shares = [
        int(r.get("CPU", 0) // max(1, int(r["GPU"] // gpus)))
        for r in (n.get("Resources", {}) for n in cluster.nodes())
        if r.get("GPU", 0) >= gpus
    ]
    return max(1, min(shares, default=1))


def _probe_write(directory: str, token: str, cwd: str) -> dict[str, Any]:
    """Runs on a node: write a probe file into ``directory`` (or, while it does not exist, into
    its nearest existing parent, where it would be created); report where, and the node."""
    import platform
    import socket

    import camscope

    path = Path(directory)
    while not path.exists() and path.parent != path:
        path = path.parent
    probe = path / _PROBE.format(token=token)
    info: dict[str, Any] = {
        "node": socket.gethostname(),
        "probe": str(probe),
        "camscope": camscope.__version__,
        "python": platform.python_version(),
        "cwd": os.path.isdir(cwd),
        "error": None,
    }
    try:
        from camscope.io.atomic import atomic_write_text

        atomic_write_text(probe, token)
    except OSError as exc:
        info["error"] = f"{exc.strerror or exc} ({path})"
    return info


def _probe_remove(probe: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(probe)


def probe_nodes(cluster: Cluster, out: Path, res: Resources, *, relative: bool) -> None:
    """Prove ``out`` writable from every node that can host a worker, and the same folder as
    the driver's (a shared file system): one task per node writes a file, the driver looks for
    it, a second task on the node removes it. Nothing is left behind; one-line errors."""
    import camscope

    ray = cluster.ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [
        n for n in cluster.nodes()
        if n.get("Resources", {}).get("CPU", 0) >= res.cpus and n.get("Resources", {}).get("GPU", 0) >= res.gpus
    ] or cluster.nodes()  # fmt: skip
    token = secrets.token_hex(8)
    cwd = os.getcwd()
    write = ray.remote(num_cpus=0, max_retries=0)(_probe_write)
    remove = ray.remote(num_cpus=0, max_retries=0)(_probe_remove)

    def on(node: dict[str, Any]) -> Any:
        return NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)

    infos = ray.get([write.options(scheduling_strategy=on(n)).remote(str(out), token, cwd) for n in nodes])
    try:
        for node, info in zip(nodes, infos, strict=True):
            where = f"{info['node']} ({node.get('NodeManagerAddress', '?')})"
            if info["error"]:
                raise UsageError(f"--out {out}: a Ray worker on {where} cannot write there: {info['error']}")
            try:
                seen = Path(info["probe"]).read_text(encoding="utf-8") == token
            except OSError:
                seen = False
            if not seen:
                raise UsageError(
                    f"--out {out}: a file written there by a Ray worker on {where} is not visible "
                    "here; --out must be on a file system shared by every node (docs/cluster.md)"
                )
            if info["camscope"] != camscope.__version__:
                raise UsageError(
                    f"Ray node {where} runs camscope {info['camscope']}, this driver "
                    f"{camscope.__version__}: install the same camscope on every node"
                )
            if relative and not info["cwd"]:
                raise UsageError(
                    f"Ray node {where} has no folder {cwd} (this driver's working directory): "
                    "give the images, --out, --weights and --labels as absolute paths on shared storage"
                )
    finally:
        ray.get([remove.options(scheduling_strategy=on(n)).remote(i["probe"]) for n, i in zip(nodes, infos, strict=True) if not i["error"]])


# --------------------------------------------------------------------------------------------
# Explain on the workers
# --------------------------------------------------------------------------------------------


def _worker_setup(threads: int, cwd: str, max_pixels: int | None = None) -> None:
    """A worker's process settings: torch threads = its CPUs, the driver's working directory
    (relative paths resolve as on the driver), Pillow's pixel limit as the CLI sets it."""
    import torch

    torch.set_num_threads(max(1, threads))
    if os.path.isdir(cwd):
        os.chdir(cwd)
    if max_pixels is not None:
        from PIL import Image

        if max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
            Image.MAX_IMAGE_PIXELS = max_pixels


class ExplainWorker:
    """The callable class of ``map_batches``: one per actor. ``__init__`` loads the model and
    builds one :class:`~camscope.run.explainer.Explainer` (the local run's); ``__call__`` explains
    one batch of (path, rel, stem) rows, writing each image's files, and returns one small
    record per image (rel, status, record JSON, reason, seconds) -- never maps.

    ``_fault`` is a test hook, not a feature: when given, it is called in the worker as
    ``_fault(n, rel)`` after the n-th image this actor finished (its files written), so a test
    can make an actor die or be killed mid-batch.
    """

    def __init__(
        self,
        opts: Any,
        out: str,
        *,
        layer: str,
        target: int | None,
        k: int,
        device: str,
        threads: int,
        cwd: str,
        _fault: Callable[[int, str], None] | None = None,
    ) -> None:
        from camscope.io.rundir import RunDir
        from camscope.models import pick_device
        from camscope.run.explainer import Explainer

        _worker_setup(threads, cwd, opts.max_pixels)
        opts = replace(opts, quiet=True, device=device)
        loaded = opts.model_spec.load(pick_device(device), progress=False)
        self.explainer = Explainer(opts, loaded, RunDir(out), layer=layer, target=target, k=k)
        self.fault = _fault
        self.done = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from camscope.run.explainer import PlannedImage

        items = [PlannedImage(Path(str(p)), str(r), str(s)) for p, r, s in zip(batch["path"], batch["rel"], batch["stem"], strict=True)]
        cols: dict[str, list[Any]] = {"rel": [], "status": [], "record": [], "reason": [], "seconds": []}
        for outcome in self.explainer.explain(items):
            ok = outcome.record is not None
            cols["rel"].append(outcome.item.rel)
            cols["status"].append("complete" if ok else "failed")
            cols["record"].append(json.dumps(outcome.record.to_json(), ensure_ascii=False) if ok else "")
            cols["reason"].append("" if ok else (outcome.reason or "unknown failure"))
            cols["seconds"].append(float(outcome.seconds))
            self.done += 1
            if self.fault is not None:
                self.fault(self.done, outcome.item.rel)
        return {k: np.asarray(v, dtype=np.float64 if k == "seconds" else object) for k, v in cols.items()}


def _dataset(ray: Any, rows: list[dict[str, Any]], per_block: int) -> Any:
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


class _ManifestWriter:
    """Rewrites the manifest after received batches, at most as often as keeps the writing
    below a tenth of the time (a 50 000-image manifest takes a while to write)."""

    def __init__(self, rundir: Any, manifest: Any) -> None:
        self.rundir, self.manifest = rundir, manifest
        self.last, self.cost = 0.0, 0.0

    def maybe(self) -> None:
        if time.monotonic() - self.last >= 10 * self.cost:
            self.now()

    def now(self) -> None:
        t0 = time.monotonic()
        self.rundir.write_manifest(self.manifest)
        self.last = time.monotonic()
        self.cost = self.last - t0


def run_explain_ray(
    inputs: Sequence[str | Path],
    out: str | Path,
    opts: Any = None,
    ray_opts: RayOptions | None = None,
    *,
    _fault: Callable[[int, str], None] | None = None,
) -> Any:
    """:func:`camscope.run.explainer.run_explain` on a Ray cluster: same checks, names, resume,
    files and manifest (plus its ``cluster`` section). The model must come from ``opts``
    (a :class:`~camscope.models.ModelSpec`): every worker builds it. ``_fault``: see
    :class:`ExplainWorker` (tests only)."""
    from tqdm.auto import tqdm

    from camscope.io.atomic import cleanup_temp_files
    from camscope.io.rundir import ImageRecord
    from camscope.run.explainer import ExplainOptions, Outcome, RunResult, plan_run, record_outcome

    opts = opts or ExplainOptions()
    ray_opts = ray_opts or RayOptions()
    t_start = time.perf_counter()
    import_ray()  # a missing extra is one line before anything else
    # The driver only plans (layer, classes, names); the workers explain, on their device.
    plan = plan_run(inputs, out, replace(opts, device="cpu"))
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
        first = list(manifest.images)
        result = RunResult(Path(out), plan.loaded, skipped=list(plan.skipped))
        if result.skipped:
            logger.info("resuming: %d images already complete", len(result.skipped))
        logger.info("Ray %s: %d worker(s) x %d CPU, %g GPU (%s)", cluster.ray.__version__, res.workers, res.cpus, res.gpus, res.device)
        pending = {item.rel: item for item in todo}
        writer = _ManifestWriter(plan.rundir, manifest)
        bar = tqdm(total=len(todo), desc="images", unit="img", disable=opts.quiet)
        finished = False
        try:
            if todo:
                rows = [{"path": str(i.path), "rel": i.rel, "stem": i.stem} for i in todo]
                with _data_context(cluster.ray):
                    kwargs = {
                        "opts": opts, "out": str(root), "layer": plan.layer, "target": plan.target, "k": plan.k,
                        "device": res.device, "threads": res.cpus, "cwd": os.getcwd(), "_fault": _fault,
                    }  # fmt: skip
                    ds = _pool(_dataset(cluster.ray, rows, opts.images_per_batch), ExplainWorker, kwargs, res)
                    stream = iter(_batches(ds))
                    try:
                        for batch in stream:
                            for rel, status, record, reason, seconds in zip(
                                batch["rel"], batch["status"], batch["record"], batch["reason"], batch["seconds"], strict=True
                            ):
                                item = pending.pop(str(rel), None)
                                if item is None:  # a retried batch reported twice: once is recorded
                                    continue
                                rec = ImageRecord.from_json(json.loads(record)) if status == "complete" else None
                                record_outcome(manifest, Outcome(item, rec, None if rec else str(reason), float(seconds)), result)
                                bar.update(1)
                                if rec is None and opts.fail_fast:
                                    logger.error("stopped at the first failure (--fail-fast); %d images not processed", len(pending))
                                    return result
                            writer.maybe()
                    finally:
                        _close(stream)
            for item in list(pending.values()):  # batches Ray gave up on after their retries
                record_outcome(manifest, Outcome(item, None, LOST.format(tries=MAX_TASK_RETRIES + 1)), result)
                pending.pop(item.rel)
            finished = True
        finally:
            bar.close()
            _in_plan_order(manifest, first, [i.rel for i in todo])
            manifest.seconds = round(time.perf_counter() - t_start, 3)
            writer.now()
            result.seconds = time.perf_counter() - t_start
        if finished:
            # Every task has ended: what a killed worker left half-written is only a temporary file.
            cleanup_temp_files(plan.rundir.root)
    return result


def _pool(ds: Any, worker: type, kwargs: dict[str, Any], res: Resources) -> Any:
    """``ds.map_batches`` through an actor pool of ``worker``: one batch (a block) per call, one
    batch in flight per worker (a batch never waits behind another on a worker, so a dying
    worker takes no other batch down), and the fault tolerance of :data:`MAX_TASK_RETRIES`: a
    dead worker is restarted without limit, its batch tried that many more times (Ray Data's
    own default retries forever, so a batch that kills its worker every time would never end).
    Ray deprecates passing those two through ``map_batches`` for its version 2.64; from there
    on its defaults apply."""
    import ray

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


def _batches(ds: Any) -> Iterator[dict[str, Any]]:
    """The dataset's output batches; a failure on the workers becomes one line."""
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")
    except CamscopeError:
        raise
    except Exception as exc:
        raise CamscopeError(f"the Ray workers failed: {_root_message(exc)}") from exc


def _close(stream: Any) -> None:
    with contextlib.suppress(Exception):
        stream.close()


def _root_message(exc: BaseException) -> str:
    """The innermost cause's first line (a worker's own error inside Ray's wrappers)."""
    while True:
        inner = exc.__cause__ or getattr(exc, "cause", None)
        if not isinstance(inner, BaseException) or inner is exc:
            break
        exc = inner
    text = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    first = text[-1] if text and "Traceback" in text[0] else (text[0] if text else type(exc).__name__)
    return first.strip()[:300]


def _model_paths(opts: Any) -> list[str]:
    spec = opts.model_spec
    return [p for p in (spec.weights_file, spec.labels) if p]


def _in_plan_order(manifest: Any, first: list[str], todo: list[str]) -> None:
    """Records in the order a local run leaves them: the earlier run's, then this run's in the
    order of the images (the workers finish in any order)."""
    order = {rel: i for i, rel in enumerate(dict.fromkeys([*first, *todo]))}
    manifest.images = dict(sorted(manifest.images.items(), key=lambda kv: order.get(kv[0], len(order))))
    manifest.failures = dict(sorted(manifest.failures.items(), key=lambda kv: order.get(kv[0], len(order))))


# --------------------------------------------------------------------------------------------
# Measure on the workers (camscope report --ray)
# --------------------------------------------------------------------------------------------


class MeasureWorker:
    """The callable class of ``camscope report --ray``: one
    :class:`~camscope.reporting.evaluate.PhotoMeasurer` per actor (the model is built once, on
    first need); ``__call__`` measures a batch of photos, writes each one's
    ``DIR/metrics/<rel>.json`` and returns the records."""

    def __init__(
        self, out: str, header: dict[str, Any], measure: Any, options: dict[str, Any], *, threads: int, cwd: str
    ) -> None:
        from camscope.io.rundir import Manifest
        from camscope.reporting.evaluate import PhotoMeasurer

        _worker_setup(threads, cwd)
        self.measurer = PhotoMeasurer(out, Manifest.from_json(header), measure, **options)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from camscope.io.rundir import ImageRecord

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
    measure: Any = None,
    trust_checkpoint: bool = False,
    progress: bool = False,
    **options: Any,
) -> Any:
    """:func:`camscope.reporting.evaluate.evaluate_run` on a Ray cluster: every photo is measured
    by a worker (one photo per batch: the slow ones balance out) through the same
    :class:`~camscope.reporting.evaluate.PhotoMeasurer`, cached in ``DIR/metrics/<rel>.json``;
    the driver collects the records. A photo whose worker died on every try is a problem."""
    from tqdm.auto import tqdm

    from camscope.io.rundir import Manifest, RunDir
    from camscope.metrics import load_boxes
    from camscope.reporting.evaluate import (
        EvaluationResult,
        Measured,
        add_measured,
        check_measurable,
        log_measured,
        measure_settings,
    )

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
                with _data_context(cluster.ray):
                    kwargs = {
                        "out": str(out), "header": header, "measure": measure, "options": worker_options,
                        "threads": res.cpus, "cwd": os.getcwd(),
                    }  # fmt: skip
                    ds = _pool(_dataset(cluster.ray, rows, 1), MeasureWorker, kwargs, res)
                    stream = iter(_batches(ds))
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
                        _close(stream)
            finally:
                bar.close()
    for rel in sorted(pending):
        reason = LOST.format(tries=MAX_TASK_RETRIES + 1).replace("explaining", "measuring")
        logger.warning("%s: %s", rel, reason)
        result.problems.append((rel, reason))
    order = list(images)
    result.images = {rel: result.images[rel] for rel in order if rel in result.images}
    result.seconds = time.perf_counter() - t0
    log_measured(result)
    return result

