"""The Ray cluster of a ``--ray`` run: :class:`RayOptions`, the session (a local instance on
the loopback address, or joining ADDRESS), the resources per worker, and the probe that proves
``--out`` is writable and shared by every node before any work. Ray is imported only when used
(``pip install "camscope[ray]"``); storage, security and measurements: docs/cluster.md."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import camscope
from camscope.errors import UsageError, first_line
from camscope.io.atomic import atomic_write_text

__all__ = ["MISSING_RAY", "LOCAL", "RayOptions", "import_ray", "Cluster", "ray_session", "held_session",
           "Resources", "plan_resources", "probe_nodes"]

logger = logging.getLogger(__name__)

MISSING_RAY = '--ray needs Ray: pip install "camscope[ray]"'
LOCAL = "local"
"""``--ray`` without an address: start a Ray instance on this machine for the run."""
LOCAL_OBJECT_STORE = 256 * 2**20
"""Object store of a local instance: the data are paths and small records (no maps)."""
_PROBE = ".camscope-probe-{token}"
_ADDRESS = re.compile(r"^(auto|local|ray://[^\s/]+:\d+|[^\s/:]+:\d+)$")


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
        raise UsageError(f"--ray {opts.address}: cannot start or join Ray ({first_line(exc, 200)})") from None
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
