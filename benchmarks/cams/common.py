"""The one timing and reporting helper of the benchmarks: time a call, keep every run, format
the numbers, print the tables and write the ``--json`` / ``--markdown`` reports.

Nothing here knows camscope or pytorch-grad-cam; ``bench_cams.py`` and ``batch_sweep.py`` share it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
DEFAULT_IMAGES = REPO.parent / "shared" / "images" / "imagenet-samples"

#: Highest 1-minute load average seen after any measurement (a busy machine spoils timings).
LOAD_SEEN: list[float] = []


def note_load() -> None:
    if hasattr(os, "getloadavg"):
        LOAD_SEEN.append(os.getloadavg()[0])


def log(msg: str) -> None:
    """Progress line on stderr (the tables go to stdout)."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- numbers


def isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def pearson(a: Any, b: Any) -> float:
    """Pearson correlation of two maps (any shapes with the same number of elements)."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    x = x - x.mean()
    y = y - y.mean()
    den = math.sqrt(float((x * x).sum()) * float((y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else float("nan")


def median(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(vals) if vals else float("nan")


def safe_div(a: float | None, b: float | None) -> float:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return float("nan")
    return a / b


def summarise(
    rows: Sequence[dict[str, Any]],
    *,
    medians: Sequence[str] = (),
    minimums: Sequence[str] = (),
    maximums: Sequence[str] = (),
) -> dict[str, Any]:
    """A summary row: the median, minimum or maximum of each key over ``rows`` (None and NaN
    left out; NaN when nothing is left)."""

    def values(k: str) -> list[Any]:
        return [r[k] for r in rows if r.get(k) is not None and not isnan(r[k])]

    out: dict[str, Any] = {k: median(values(k)) for k in medians}
    out.update({k: min(values(k), default=float("nan")) for k in minimums})
    out.update({k: max(values(k), default=float("nan")) for k in maximums})
    return out


# --------------------------------------------------------------------------- formats


def fmt_num(v: Any, spec: str) -> str:
    if v is None or isnan(v):
        return "-"
    if isinstance(v, str):
        return v
    return format(v, spec)


def fmt_seconds(v: Any) -> str:
    if v is None or isnan(v):
        return "-"
    if v >= 100:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    if v >= 0.01:
        return f"{v:.3f}"
    return f"{v:.5f}"


def fmt_ratio(v: Any) -> str:
    if v is None or isnan(v):
        return "-"
    return f"{v:.0f}x" if v >= 100 else f"{v:.2f}x"


def fmt_corr(v: Any) -> str:
    if v is None or isnan(v):
        return "-"
    return f"{v:.5f}"


def fmt_mib(v: Any) -> str:
    return "-" if v is None else f"{v / 1024:.0f} MiB"


def fmt_load(v: Sequence[float] | None) -> str:
    return "-" if not v else "/".join(f"{x:.2f}" for x in v)


# --------------------------------------------------------------------------- tables

Column = tuple[str, str, Callable[[Any], str]]


@dataclass
class Table:
    title: str
    columns: list[Column]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    printed: bool = False

    def add(self, **row: Any) -> None:
        self.rows.append(row)

    def cells(self) -> list[list[str]]:
        return [[f(r.get(k)) for k, _, f in self.columns] for r in self.rows]

    def text(self) -> str:
        head = [h for _, h, _ in self.columns]
        body = self.cells()
        widths = [max(len(h), *(len(c[i]) for c in body)) if body else len(h) for i, h in enumerate(head)]
        line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
        out = [f"== {self.title}", line, "  ".join("-" * w for w in widths)]
        for c in body:
            out.append("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))
        out += [f"   note: {n}" for n in self.notes]
        return "\n".join(out)

    def markdown(self) -> str:
        head = [h for _, h, _ in self.columns]
        out = [f"#### {self.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for c in self.cells():
            out.append("| " + " | ".join(v.replace("|", "\\|") for v in c) + " |")
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out)

    def as_json(self) -> dict[str, Any]:
        return {"title": self.title, "rows": self.rows, "notes": self.notes}


# --------------------------------------------------------------------------- measurements


@dataclass
class Measurement:
    """Median time of one realistic call, the raw run times and what the call produced."""

    seconds: float
    times: list[float]
    warmup: list[float]
    output: Any = None
    setup_s: float | None = None
    batch: int | None = None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t0, out


def _kept(times: list[float], output: Any) -> Measurement:
    """With more than one run the first is a discarded warm-up; the median of the others."""
    warm, kept = (times[:1], times[1:]) if len(times) > 1 else ([], times)
    return Measurement(statistics.median(kept), kept, warm, output)


def measure(
    fn: Callable[[], Any], *, repeats: int, budget_s: float, device: torch.device
) -> Measurement:
    """Run ``fn`` up to ``repeats`` (+1 warm-up) times, stopping once ``budget_s`` seconds are
    used (always at least one run). With more than one run the first is a discarded warm-up;
    the result is the median of the others."""
    times: list[float] = []
    out = None
    for _ in range(repeats + 1):
        dt, out = _timed(fn, device)
        times.append(dt)
        if sum(times) >= budget_s:
            break
    note_load()
    return _kept(times, out)


def measure_interleaved(
    fns: dict[str, Callable[[], Any]], *, repeats: int, budget_s: float, device: torch.device
) -> dict[str, Measurement]:
    """Like :func:`measure` for several calls whose times are compared: their runs alternate
    (a, b, a, b, ...), so that a change in the machine's load hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, Any] = {}
    for _ in range(repeats + 1):
        for k, fn in fns.items():
            dt, outs[k] = _timed(fn, device)
            times[k].append(dt)
        if sum(sum(t) for t in times.values()) >= budget_s:
            break
    note_load()
    return {k: _kept(ts, outs[k]) for k, ts in times.items()}


# --------------------------------------------------------------------------- machine


def machine_info(device: str) -> dict[str, Any]:
    import torchvision

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gib = round(int(line.split()[1]) / 2**20, 1)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    for dist in ("grad-cam", "camscope"):
        with contextlib.suppress(Exception):
            import importlib.metadata as md

            versions[dist] = md.version(dist)
    git = {}
    with contextlib.suppress(Exception):
        git["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        git["dirty"] = bool(
            subprocess.run(
                ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        )
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "memory_gib": mem_gib,
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git": git,
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


# --------------------------------------------------------------------------- targets and reports


class Target(NamedTuple):
    """A target of the issue: ``summary[key] <op> threshold``."""

    key: str
    description: str
    op: str  # ">=" or "<="
    threshold: float


def evaluate_targets(summary: dict[str, Any], targets: Sequence[Target]) -> Table:
    table = Table(
        "targets of the issue",
        [
            ("target", "target", str),
            ("value", "measured", lambda v: fmt_num(v, ".4g")),
            ("want", "wanted", str),
            ("ok", "ok", str),
        ],
    )
    for key, desc, op, thr in targets:
        v = summary.get(key)
        if v is None or isnan(v):
            ok = "not measured"
        else:
            ok = "yes" if (v >= thr if op == ">=" else v <= thr) else "NO"
        table.add(target=desc, value=v, want=f"{op} {thr:g}", ok=ok, key=key)
    return table


@dataclass
class Report:
    """What a run writes: the tables so far, its summary, its header; ``--json`` / ``--markdown``."""

    args: Any  # argparse.Namespace: images, n_images, device, json, markdown
    command: str
    info: dict[str, Any]
    model_desc: str
    targets: Sequence[Target]
    t_start: float = field(default_factory=time.perf_counter)

    def header(self, photos: Sequence[dict[str, Any]]) -> list[str]:
        args, info = self.args, self.info
        load_start, load_now = info.get("loadavg_start"), info.get("loadavg_end")
        peak = max([*LOAD_SEEN, *(v[0] for v in (load_start, load_now) if v)], default=None)
        info["loadavg_1min_max_seen"] = peak
        busy = peak is not None and peak > 1.2 * (info["usable_cpus"] or 1)
        return [
            f"command: {self.command}",
            f"machine: {info['cpu']}, {info['usable_cpus']} usable CPUs, {info['memory_gib']} GiB, "
            f"torch {info['versions'].get('torch')} with {info['torch_threads']} threads, device {args.device}"
            + (f" ({info['gpu']})" if info.get("gpu") else ""),
            f"versions: {', '.join(f'{k} {v}' for k, v in info['versions'].items())}; camscope commit "
            f"{info['git'].get('commit', '?')}{' (uncommitted changes)' if info['git'].get('dirty') else ''}",
            f"model: {self.model_desc}",
            f"photos: {args.images} (first {args.n_images}); predicted classes "
            + (", ".join(str(p["target"]) for p in photos) if photos else "-"),
            f"load average (1/5/15 min) at start {fmt_load(load_start)}, at end {fmt_load(load_now)}; "
            f"highest 1-min load seen {fmt_num(peak, '.2f')} ({info['usable_cpus']} CPUs)"
            + ("  <- the machine was busy: timings are not trustworthy" if busy else ""),
            f"total {time.perf_counter() - self.t_start:.0f} s",
        ]

    def write(
        self,
        tables: Sequence[Table],
        summary: dict[str, Any],
        photos: Sequence[dict[str, Any]],
        *,
        final: bool,
    ) -> None:
        """Print the targets and header (final) and (re)write --json / --markdown; called after
        every section so that an interrupted long run keeps what it measured."""
        args = self.args
        self.info["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        targets = evaluate_targets(summary, self.targets)
        header = self.header(photos)
        if not final:
            header.append("(partial: the run has not finished)")
        if final:
            print(targets.text())
            print()
            print("\n".join(header), flush=True)
        if args.json:
            data = {
                "command": self.command,
                "finished": final,
                "machine": self.info,
                "model": self.model_desc,
                "args": dict(vars(args)),
                "photos": list(photos),
                "summary": summary,
                "tables": [t.as_json() for t in [*tables, targets]],
            }
            Path(args.json).write_text(json.dumps(_finite(data), indent=2, default=_json_default) + "\n")
        if args.markdown:
            md = ["### Benchmark: camscope vs pytorch-grad-cam", "", "```", *header, "```", ""]
            md += [t.markdown() + "\n" for t in [targets, *tables]]
            Path(args.markdown).write_text("\n".join(md))
        if final:
            for path in filter(None, (args.json, args.markdown)):
                log(f"wrote {path}")


def _finite(o: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN)."""
    if isnan(o):
        return None
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    if isnan(o):
        return None
    return str(o)
