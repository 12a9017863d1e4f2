#!/usr/bin/env python
"""camscope vs pytorch-grad-cam, side by side in one run: speed, agreement of the maps, memory.

Same photos, same model object, same target layer, same target class for both tools; every time
is a median over repeats of the realistic per-image call. Sections (``--sections``):

    methods             every method both tools have, per image: seconds, ratio, map correlation
    ablation-layer3     Ablation-CAM at layer3[-1] (camscope's tail = layer4 + head)
    scorecam-precision  camscope Score-CAM fp32 vs bf16: speed, correlation, ratio vs pytorch-grad-cam
    gradient-fusion     camscope's five gradient methods in one call vs Grad-CAM alone
    study               the classic study end to end (photos x 3 methods x plain + eigen+aug)
    memory              peak RSS of ``camscope explain`` over 10 vs 100 photos

Not part of the test suite. See benchmarks/README.md for commands and expected durations.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = REPO.parent / "shared" / "images" / "imagenet-samples"
if str(REPO) not in sys.path:  # run from a checkout without installing camscope
    sys.path.insert(0, str(REPO))

SECTIONS = (
    "methods",
    "ablation-layer3",
    "scorecam-precision",
    "gradient-fusion",
    "study",
    "memory",
)

#: benchmark name -> (pytorch-grad-cam class, camscope method)
SHARED_METHODS: dict[str, tuple[str, str]] = {
    "gradcam": ("GradCAM", "gradcam"),
    "gradcam++": ("GradCAMPlusPlus", "gradcampp"),
    "xgradcam": ("XGradCAM", "xgradcam"),
    "hirescam": ("HiResCAM", "hirescam"),
    "layercam": ("LayerCAM", "layercam"),
    "eigencam": ("EigenCAM", "eigencam"),
    "ablationcam": ("AblationCAM", "ablationcam"),
    "scorecam": ("ScoreCAM", "scorecam"),
}
#: pytorch-grad-cam needs minutes per image for these (one full forward per channel).
SLOW_METHODS = ("ablationcam", "scorecam")
#: pytorch-grad-cam's own batch sizes (AblationCAM's argument, ScoreCAM's fallback).
PGC_DEFAULT_BATCH = {"ablationcam": 32, "scorecam": 16}
GRADIENT_METHODS = ("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam")
STUDY_METHODS = ("gradcam", "ablationcam", "scorecam")
STUDY_VARIANTS = ("plain", "eigen+aug")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: The issue's targets: (key, description, comparison, threshold).
TARGETS = (
    ("ablation_l4_speedup", "Ablation-CAM layer4[-1]: speed-up vs pytorch-grad-cam", ">=", 300.0),
    ("ablation_l4_corr", "Ablation-CAM layer4[-1]: map correlation (min over images)", ">=", 0.999),
    ("ablation_l3_speedup", "Ablation-CAM layer3[-1]: speed-up vs pytorch-grad-cam", ">=", 3.0),
    ("scorecam_fp32_speedup", "Score-CAM fp32: speed-up vs pytorch-grad-cam", ">=", 2.0),
    ("scorecam_bf16_speedup", "Score-CAM bf16: speed-up vs pytorch-grad-cam", ">=", 6.0),
    ("scorecam_bf16_corr", "Score-CAM bf16: correlation with fp32 (min over images)", ">=", 0.99),
    ("fusion_factor", "five gradient methods / Grad-CAM alone (time)", "<=", 1.3),
    ("study_speedup", "classic study end to end: speed-up vs pytorch-grad-cam", ">=", 5.0),
    ("memory_ratio", "peak memory, most photos / fewest (issue: 100 vs 10)", "<=", 1.10),
)


#: Highest 1-minute load average seen after any measurement (a busy machine spoils timings).
LOAD_SEEN: list[float] = []


def note_load() -> None:
    if hasattr(os, "getloadavg"):
        LOAD_SEEN.append(os.getloadavg()[0])


def log(msg: str) -> None:
    """Progress line on stderr (the tables go to stdout)."""
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- small helpers


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


def fmt_num(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, str):
        return v
    return format(v, spec)


def fmt_seconds(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v >= 100:
        return f"{v:.1f}"
    if v >= 1:
        return f"{v:.2f}"
    if v >= 0.01:
        return f"{v:.3f}"
    return f"{v:.5f}"


def fmt_ratio(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.0f}x" if v >= 100 else f"{v:.2f}x"


def fmt_corr(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.5f}"


def fmt_mib(v: Any) -> str:
    return "-" if v is None else f"{v / 1024:.0f} MiB"


def safe_div(a: float | None, b: float | None) -> float:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return float("nan")
    return a / b


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

    def as_json(self) -> dict[str, Any]:
        return {
            "seconds_median": self.seconds,
            "runs_s": self.times,
            "discarded_warmup_s": self.warmup,
            "setup_s": self.setup_s,
            "batch": self.batch,
        }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    fn: Callable[[], Any], *, repeats: int, budget_s: float, device: torch.device
) -> Measurement:
    """Run ``fn`` up to ``repeats`` (+1 warm-up) times, stopping once ``budget_s`` seconds are
    used (always at least one run). With more than one run the first is a discarded warm-up;
    the result is the median of the others."""
    times: list[float] = []
    out = None
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if sum(times) >= budget_s:
            break
    warm, kept = (times[:1], times[1:]) if len(times) > 1 else ([], times)
    note_load()
    return Measurement(statistics.median(kept), kept, warm, out)


def measure_interleaved(
    fns: dict[str, Callable[[], Any]], *, repeats: int, budget_s: float, device: torch.device
) -> dict[str, Measurement]:
    """Like :func:`measure` for several calls whose times are compared: their runs alternate
    (a, b, a, b, ...), so that a change in the machine's load hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    outs: dict[str, Any] = {}
    for _ in range(repeats + 1):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            outs[k] = fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
        if sum(sum(t) for t in times.values()) >= budget_s:
            break
    note_load()
    result = {}
    for k, ts in times.items():
        warm, kept = (ts[:1], ts[1:]) if len(ts) > 1 else ([], ts)
        result[k] = Measurement(statistics.median(kept), kept, warm, outs[k])
    return result


# --------------------------------------------------------------------------- machine


def machine_info(args: argparse.Namespace) -> dict[str, Any]:
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
        "device": args.device,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
        "git": git,
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if args.device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    return info


# --------------------------------------------------------------------------- photos and model


@dataclass
class Photo:
    name: str
    path: Path
    tensor: torch.Tensor  # (1,3,224,224), normalised, on the device
    target: int = -1
    prob: float = float("nan")
    live_l4: float = float("nan")  # fraction of layer4[-1] channels not zero everywhere
    live_l3: float = float("nan")


def list_photos(folder: Path) -> list[Path]:
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
    if not folder.is_dir():
        raise SystemExit(f"bench_cams: error: --images {folder}: not a folder")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() in exts and p.is_file())
    if not photos:
        raise SystemExit(f"bench_cams: error: --images {folder}: no photos found")
    return photos


def build_model(args: argparse.Namespace) -> tuple[torch.nn.Module, str]:
    import torchvision

    if args.weights:
        model = torchvision.models.get_model(args.model, weights=None)
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        desc = f"{args.model}, weights from {args.weights}"
    else:
        torch.manual_seed(args.seed)
        model = torchvision.models.get_model(args.model, weights=None)
        desc = (
            f"{args.model}(weights=None), torch.manual_seed({args.seed}): random weights "
            "(pretrained weights cannot be downloaded here)"
        )
    for attr in ("layer3", "layer4"):
        if not hasattr(model, attr):
            raise SystemExit(f"bench_cams: error: --model {args.model} has no {attr}; use a ResNet")
    return model.to(args.device).eval(), desc


def module_name(model: torch.nn.Module, module: torch.nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise LookupError("module not in model")


# --------------------------------------------------------------------------- the benchmark


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.model, self.model_desc = build_model(args)
        self.layers = {
            "layer4": self.model.layer4[-1],
            "layer3": self.model.layer3[-1],
        }
        self.layer_names = {k: module_name(self.model, m) for k, m in self.layers.items()}
        self.tmp = Path(tempfile.mkdtemp(prefix="camscope-bench-"))
        self.cache: dict[tuple, Measurement] = {}
        self.batch_rows: list[dict[str, Any]] = []
        self.tables: list[Table] = []
        self.summary: dict[str, Any] = {}
        self.photo_paths = list_photos(Path(args.images))
        self.photos: list[Photo] = []
        self._weights_file: Path | None = Path(args.weights) if args.weights else None

    # ---- setup

    def load_photos(self, n: int) -> None:
        from camscope.io.images import load_image
        from camscope.models import Preprocess

        pre = Preprocess("classic")
        paths = self.photo_paths[:n]
        if len(paths) < n:
            log(f"only {len(paths)} photos in {self.args.images}; using them all")
        acts: dict[str, torch.Tensor] = {}
        hooks = [
            self.layers[k].register_forward_hook(lambda _m, _i, o, k=k: acts.__setitem__(k, o.detach()))
            for k in ("layer4", "layer3")
        ]
        try:
            for p in paths:
                x = pre.to_tensor(load_image(p))[None].to(self.device)
                with torch.no_grad():
                    logits = self.model(x)
                prob, cls = torch.softmax(logits, 1).max(1)
                live = {k: float((a[0].flatten(1) != 0).any(1).float().mean()) for k, a in acts.items()}
                self.photos.append(Photo(p.stem, p, x, int(cls), float(prob), live["layer4"], live["layer3"]))
        finally:
            for h in hooks:
                h.remove()

    def warmup(self) -> None:
        """A few untimed forwards so that thread pools and oneDNN primitives exist."""
        x = self.photos[0].tensor
        with torch.no_grad():
            for _ in range(2):
                self.model(x)
            self.model(x.expand(8, -1, -1, -1).contiguous())
        sync(self.device)

    def weights_file(self) -> Path:
        """The model's state dict as a file, for the CLI runs (study, memory)."""
        if self._weights_file is None:
            path = self.tmp / f"{self.args.model}-seed{self.args.seed}.pt"
            torch.save({k: v.cpu() for k, v in self.model.state_dict().items()}, path)
            self._weights_file = path
        return self._weights_file

    def slow_photos(self) -> list[Photo]:
        return self.photos[: self.args.slow_images]

    def budget(self) -> dict[str, Any]:
        return {"repeats": self.args.repeats, "budget_s": self.args.time_budget, "device": self.device}

    # ---- pytorch-grad-cam

    def pgc_class(self, name: str):
        try:
            module = importlib.import_module("pytorch_grad_cam")
        except ImportError:
            raise SystemExit(
                "bench_cams: error: pytorch-grad-cam is not installed: pip install -e '.[bench]' "
                "(or pass --skip-reference)"
            ) from None
        return getattr(module, SHARED_METHODS[name][0])

    def pgc_batches(self, method: str) -> list[int | None]:
        """The batch sizes pytorch-grad-cam is timed with (--pgc-batch-sizes) for ``method``."""
        if method not in SLOW_METHODS:
            return [None]
        out: list[int | None] = []
        for spec in self.args.pgc_batch_sizes:
            b = {"same": self.camscope_forward_batch(), "default": PGC_DEFAULT_BATCH[method]}.get(spec) or int(spec)
            if b not in out:
                out.append(b)
        return out

    def camscope_forward_batch(self) -> int:
        """Images per full forward in camscope's Score-CAM: --batch-size, else camscope's fixed
        default (FORWARD_BATCH; on CPU camscope measures its own per run unless compiling)."""
        if self.args.batch_size:
            return self.args.batch_size
        perturbation = importlib.import_module("camscope.methods.perturbation")
        default = getattr(perturbation, "FORWARD_BATCH", 32)
        if isinstance(default, dict):
            return int(default.get(self.device.type, default["cpu"]))
        return int(default)

    def camscope_batch_label(self) -> str:
        if self.args.batch_size:
            return str(self.args.batch_size)
        perturbation = importlib.import_module("camscope.methods.perturbation")
        tail = getattr(perturbation, "TAIL_BATCH", None)
        fwd = getattr(perturbation, "FORWARD_BATCH", None)
        kind = self.device.type
        tail = tail.get(kind, tail["cpu"]) if isinstance(tail, dict) else tail
        fwd = fwd.get(kind, fwd["cpu"]) if isinstance(fwd, dict) else fwd
        if kind == "cpu" and hasattr(importlib.import_module("camscope.core.capture").Runtime, "forward_slices"):
            fwd = "measured per run among 2/4/8/16"
        return f"its defaults (tail rows {tail}, full forwards {fwd})" if tail or fwd else "its default"

    def pgc_label(self, method: str) -> str:
        bs = self.pgc_batches(method)
        if bs == [None]:
            return "-"
        return ", ".join(
            f"{b}{' (its default)' if b == PGC_DEFAULT_BATCH[method] else ''}" for b in bs if b is not None
        )

    def reference(self, method: str, layer: str, photos: Sequence[Photo]) -> dict[int, Measurement]:
        """pytorch-grad-cam's time per photo: the fastest over the batch sizes it is timed with
        (each one's times go to a table of their own when there are several)."""
        if self.args.skip_reference:
            return {}
        per_batch = {b: self.run_pgc(method, layer, photos, b) for b in self.pgc_batches(method)}
        best = {i: min((r[i] for r in per_batch.values()), key=lambda m: m.seconds) for i in range(len(photos))}
        if len(per_batch) > 1:
            for i, p in enumerate(photos):
                for b, r in per_batch.items():
                    row = dict(
                        method=method, layer=self.layer_names[layer], photo=p.name, batch=b,
                        seconds=r[i].seconds, used="yes" if r[i] is best[i] else "", runs_s=r[i].times,
                    )
                    if row not in self.batch_rows:
                        self.batch_rows.append(row)
        return best

    def run_pgc(
        self, method: str, layer: str, photos: Sequence[Photo], batch: int | None = None
    ) -> dict[int, Measurement]:
        """pytorch-grad-cam: one CAM object (``with`` block) for all photos, timed per call."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        todo = [p for p in photos if ("pgc", method, layer, batch, p.name) not in self.cache]
        if todo:
            cls = self.pgc_class(method)
            kwargs: dict[str, Any] = {"model": self.model, "target_layers": [self.layers[layer]]}
            if method == "ablationcam" and batch is not None:
                kwargs["batch_size"] = batch
            t0 = time.perf_counter()
            with cls(**kwargs) as cam:
                setup = time.perf_counter() - t0
                if method == "scorecam" and batch is not None:
                    cam.batch_size = batch
                for i, p in enumerate(todo, 1):
                    slow = method in SLOW_METHODS
                    log(
                        f"pytorch-grad-cam {cls.__name__} at {self.layer_names[layer]}"
                        f"{f' batch {batch}' if batch else ''}, photo {i}/{len(todo)} "
                        f"({p.name}){' - minutes per photo' if slow else ''}"
                    )
                    targets = [ClassifierOutputTarget(p.target)]

                    def call(p=p, targets=targets, cam=cam):
                        return cam(input_tensor=p.tensor, targets=targets)[0]

                    m = measure(call, **self.budget())
                    m.setup_s = setup
                    m.batch = batch
                    self.cache[("pgc", method, layer, batch, p.name)] = m
                    log(f"  -> {fmt_seconds(m.seconds)} s ({len(m.times)} run(s))")
            self.model.zero_grad(set_to_none=True)  # pytorch-grad-cam's backward fills .grad
        return {i: self.cache[("pgc", method, layer, batch, p.name)] for i, p in enumerate(photos)}

    def flush_batch_table(self) -> None:
        """A table of pytorch-grad-cam's times per batch size, for what the last section measured."""
        if not self.batch_rows:
            return
        table = Table(
            "pytorch-grad-cam batch sizes (the faster per photo is the one compared)",
            [
                ("method", "method", str),
                ("layer", "layer", str),
                ("photo", "photo", str),
                ("batch", "batch", str),
                ("seconds", "seconds", fmt_seconds),
                ("used", "used", str),
            ],
        )
        for row in self.batch_rows:
            table.add(**row)
        self.batch_rows = []
        self.tables.append(table)

    # ---- camscope

    def run_camscope(
        self,
        methods: Sequence[str],
        layer: str,
        photos: Sequence[Photo],
        precision: str = "fp32",
        compile: bool = False,
    ) -> dict[int, Measurement]:
        """camscope: engine built once (timed separately), then the per-photo call, timed.

        With ``compile``, the first call (which compiles) is timed on its own as the setup: it
        is reported as "compile s", and the timed runs are the compiled ones."""
        from camscope.core.engine import CamEngine

        key = (*methods, "compiled") if compile else tuple(methods)
        todo = [p for p in photos if ("camscope", key, layer, precision, p.name) not in self.cache]
        if todo:
            t0 = time.perf_counter()
            engine = CamEngine(
                self.model,
                self.layer_names[layer],
                methods=list(methods),
                batch_size=self.args.batch_size,  # None: camscope's per-method defaults
                precision=precision,
                compile=compile,
            )
            if compile:
                log(f"camscope: compiling the model ({precision}), first call on {todo[0].name}")
                engine(todo[0].tensor, targets=[[todo[0].target]])
                if not engine.runtime.compiled:
                    log("  -> torch.compile failed: the compiled timings below are uncompiled")
            setup = time.perf_counter() - t0
            if compile:
                log(f"  -> engine build + compile + first call: {fmt_seconds(setup)} s")
            for i, p in enumerate(todo, 1):
                log(
                    f"camscope {'+'.join(key)} ({precision}) at {self.layer_names[layer]}, "
                    f"photo {i}/{len(todo)} ({p.name})"
                )

                def call(p=p):
                    res = engine(p.tensor, targets=[[p.target]])
                    return {name: maps[0, 0].numpy() for name, maps in res.maps.items()}

                m = measure(call, **self.budget())
                m.setup_s = setup
                self.cache[("camscope", key, layer, precision, p.name)] = m
                log(f"  -> {fmt_seconds(m.seconds)} s ({len(m.times)} run(s))")
        return {i: self.cache[("camscope", key, layer, precision, p.name)] for i, p in enumerate(photos)}

    # ---- naive Score-CAM reference

    def reference_scorecam(self, photo: Photo, layer: str = "layer4") -> Measurement:
        key = ("reference-scorecam", layer, photo.name)
        if key not in self.cache:
            log(f"naive Score-CAM reference, {photo.name} - minutes per photo")
            fn, desc = self._reference_impl()
            t0 = time.perf_counter()
            out = fn(photo, layer)
            dt = time.perf_counter() - t0
            self.cache[key] = Measurement(dt, [dt], [], out)
            self.summary["scorecam_reference"] = desc
            log(f"  -> {fmt_seconds(dt)} s")
        return self.cache[key]

    def _reference_impl(self) -> tuple[Callable[[Photo, str], np.ndarray], str]:
        """camscope.methods.reference.reference_maps("scorecam", ...) (a naive Score-CAM written
        independently of the fast one) unless --reference-impl local or it is absent; the local
        one below also takes over if the module's fails (e.g. on a GPU)."""
        local = (
            "local naive Score-CAM in benchmarks/bench_cams.py (official normalisation: "
            "align_corners=False upsampling, min-max, constant channels skipped, softmax "
            "probability of the class; independent masked forwards stacked into batches)"
        )
        if self.args.reference_impl == "local":
            return self.local_reference_scorecam, local
        try:
            reference_maps = importlib.import_module("camscope.methods.reference").reference_maps
        except (ImportError, AttributeError):
            return self.local_reference_scorecam, local
        chunk = self.camscope_forward_batch()

        def call(photo: Photo, layer: str) -> np.ndarray:
            try:
                maps = reference_maps(
                    "scorecam", self.model, self.layer_names[layer], photo.tensor, [photo.target], chunk=chunk
                )
                return maps.detach().cpu().numpy().reshape(photo.tensor.shape[-2:])
            except Exception as exc:  # say so, and use the local one
                log(f"camscope.methods.reference failed ({type(exc).__name__}: {exc}); using the local reference")
                self.summary["scorecam_reference_fallback"] = local
                return self.local_reference_scorecam(photo, layer)

        return call, (
            f"camscope.methods.reference.reference_maps('scorecam', ..., chunk={chunk}): naive "
            f"Score-CAM, full model, one masked input per channel ({chunk} such forwards stacked per batch)"
        )

    def local_reference_scorecam(self, photo: Photo, layer: str) -> np.ndarray:
        """Score-CAM as the official implementation (haofanwang/Score-CAM) computes it, one
        channel at a time; only the masked forwards are grouped into batches."""
        model, x, c = self.model, photo.tensor, photo.target
        got: dict[str, torch.Tensor] = {}
        h = self.layers[layer].register_forward_hook(lambda _m, _i, o: got.__setitem__("a", o.detach()))
        try:
            with torch.no_grad():
                model(x)
        finally:
            h.remove()
        acts = got["a"].float()
        size = x.shape[-2:]
        sal = torch.zeros(size, dtype=torch.float64, device=x.device)
        pending: list[tuple[int, torch.Tensor]] = []
        ups: dict[int, torch.Tensor] = {}

        def flush() -> None:
            if not pending:
                return
            masks = torch.stack([m for _, m in pending])
            with torch.no_grad():
                probs = torch.softmax(model(x * masks[:, None]), dim=1)[:, c]
            for (k, _), p in zip(pending, probs.tolist(), strict=True):
                sal.add_(ups.pop(k).double(), alpha=p)
            pending.clear()

        for k in range(acts.shape[1]):
            up = F.interpolate(acts[:, k : k + 1], size=size, mode="bilinear", align_corners=False)[0, 0]
            lo, hi = up.min(), up.max()
            if hi == lo:
                continue
            ups[k] = up
            pending.append((k, (up - lo) / (hi - lo)))
            if len(pending) == self.camscope_forward_batch():
                flush()
        flush()
        sal = torch.relu(sal)
        lo, hi = sal.min(), sal.max()
        sal = (sal - lo) / (hi - lo) if hi > lo else torch.zeros_like(sal)
        return sal.float().cpu().numpy()

    # ---------------------------------------------------------------- sections

    def section_methods(self) -> None:
        args = self.args
        names = args.methods
        cols: list[Column] = [
            ("method", "method", str),
            ("photo", "photo", str),
            ("pgc_s", "pytorch-grad-cam s", fmt_seconds),
            ("camscope_s", "camscope s", fmt_seconds),
            ("ratio", "speed-up", fmt_ratio),
            ("corr", "corr", fmt_corr),
            ("corr_with", "corr against", str),
            ("runs", "runs pgc/cs", str),
        ]
        table = Table(f"methods: per photo, {self.model_desc.split(',')[0]} at {self.layer_names['layer4']}", cols)
        summary = Table(
            "methods: medians over photos",
            [
                ("method", "method", str),
                ("n", "photos", str),
                ("pgc_s", "pytorch-grad-cam s", fmt_seconds),
                ("camscope_s", "camscope s", fmt_seconds),
                ("ratio", "speed-up", fmt_ratio),
                ("corr_min", "corr (min)", fmt_corr),
                ("corr_with", "corr against", str),
                ("setup_s", "camscope engine build s", fmt_seconds),
            ],
        )
        for name in names:
            cs_name = SHARED_METHODS[name][1]
            photos = self.slow_photos() if name in SLOW_METHODS else self.photos
            ref = self.reference(name, "layer4", photos)
            ours = self.run_camscope([cs_name], "layer4", photos)
            rows = []
            for i, p in enumerate(photos):
                o = ours[i]
                r = ref.get(i)
                cs_map = o.output[cs_name]
                if name == "scorecam":
                    corr, against = float("nan"), "-"
                    if i < args.reference_images:
                        corr = pearson(cs_map, self.reference_scorecam(p).output)
                        against = "naive Score-CAM reference"
                else:
                    corr = pearson(cs_map, r.output) if r else float("nan")
                    against = "pytorch-grad-cam" if r else "-"
                row = dict(
                    method=name,
                    photo=p.name,
                    pgc_s=r.seconds if r else None,
                    camscope_s=o.seconds,
                    ratio=safe_div(r.seconds if r else None, o.seconds),
                    corr=corr,
                    corr_with=against,
                    runs=f"{len(r.times) if r else 0}/{len(o.times)}",
                    pgc_runs_s=r.times if r else None,
                    camscope_runs_s=o.times,
                    camscope_setup_s=o.setup_s,
                )
                rows.append(row)
                table.add(**row)
            summary.add(
                method=name,
                n=str(len(rows)),
                pgc_s=median([r["pgc_s"] for r in rows if r["pgc_s"] is not None]),
                camscope_s=median([r["camscope_s"] for r in rows]),
                ratio=median([r["ratio"] for r in rows]),
                corr_min=min((r["corr"] for r in rows if not math.isnan(r["corr"])), default=float("nan")),
                corr_with=rows[0]["corr_with"] if rows else "-",
                setup_s=ours[0].setup_s if ours else None,
            )
            if name == "ablationcam":
                self.summary["ablation_l4_speedup"] = median([r["ratio"] for r in rows])
                self.summary["ablation_l4_corr"] = summary.rows[-1]["corr_min"]
            if name == "scorecam":
                self.summary["scorecam_fp32_speedup"] = median([r["ratio"] for r in rows])
                self._scorecam_pgc_equivalent(photos, ref, table, summary)
        table.notes += [
            f"same input tensors (classic 224x224 resize + ImageNet normalisation), same model "
            f"object, target = predicted class; Ablation-/Score-CAM on the first {args.slow_images} "
            f"photo(s) (--slow-images); their batch: camscope {self.camscope_batch_label()}, pytorch-grad-cam "
            f"Ablation-CAM {self.pgc_label('ablationcam')}, Score-CAM {self.pgc_label('scorecam')} "
            "(with several, the faster one per photo is used)",
            "speed-up = pytorch-grad-cam s / camscope s; corr = Pearson of the two 224x224 maps",
            "Score-CAM: pytorch-grad-cam computes another weighting (target logit + softmax across "
            "channels); camscope's scorecam is checked against a naive Score-CAM, and camscope's "
            "scorecam-logit-softmax against pytorch-grad-cam",
            "Eigen-CAM: pytorch-grad-cam leaves the sign of the principal component to the SVD; "
            "camscope fixes it to agree with the channel sum, so a low correlation there can be a sign flip",
            f"Score-CAM reference: {self.summary.get('scorecam_reference', 'not run')}",
            f"live channels (not zero everywhere) at {self.layer_names['layer4']}: "
            f"{median([p.live_l4 for p in self.photos]):.1%} (median over photos); both tools' "
            "Ablation-CAM and camscope's Score-CAM skip the dead ones, so the weights change the speed",
        ]
        self.tables += [table, summary]

    def _scorecam_pgc_equivalent(self, photos, ref, table: Table, summary: Table) -> None:
        if self.args.skip_logit_softmax:
            return
        ours = self.run_camscope(["scorecam-logit-softmax"], "layer4", photos)
        rows = []
        for i, p in enumerate(photos):
            o, r = ours[i], ref.get(i)
            row = dict(
                method="scorecam-logit-softmax",
                photo=p.name,
                pgc_s=r.seconds if r else None,
                camscope_s=o.seconds,
                ratio=safe_div(r.seconds if r else None, o.seconds),
                corr=pearson(o.output["scorecam-logit-softmax"], r.output) if r else float("nan"),
                corr_with="pytorch-grad-cam ScoreCAM" if r else "-",
                runs=f"{len(r.times) if r else 0}/{len(o.times)}",
                camscope_runs_s=o.times,
            )
            rows.append(row)
            table.add(**row)
        summary.add(
            method="scorecam-logit-softmax",
            n=str(len(rows)),
            pgc_s=median([r["pgc_s"] for r in rows if r["pgc_s"] is not None]),
            camscope_s=median([r["camscope_s"] for r in rows]),
            ratio=median([r["ratio"] for r in rows]),
            corr_min=min((r["corr"] for r in rows if not math.isnan(r["corr"])), default=float("nan")),
            corr_with=rows[0]["corr_with"] if rows else "-",
            setup_s=ours[0].setup_s if ours else None,
        )

    def section_ablation_layer3(self) -> None:
        photos = self.slow_photos()
        ref = self.reference("ablationcam", "layer3", photos)
        ours = self.run_camscope(["ablationcam"], "layer3", photos)
        table = Table(
            f"ablation-layer3: Ablation-CAM at {self.layer_names['layer3']} (camscope tail = layer4 + head)",
            [
                ("photo", "photo", str),
                ("pgc_s", "pytorch-grad-cam s", fmt_seconds),
                ("camscope_s", "camscope s", fmt_seconds),
                ("ratio", "speed-up", fmt_ratio),
                ("corr", "corr", fmt_corr),
                ("live", "live channels", lambda v: fmt_num(v, ".1%")),
            ],
        )
        for i, p in enumerate(photos):
            r, o = ref.get(i), ours[i]
            table.add(
                photo=p.name,
                pgc_s=r.seconds if r else None,
                camscope_s=o.seconds,
                ratio=safe_div(r.seconds if r else None, o.seconds),
                corr=pearson(o.output["ablationcam"], r.output) if r else float("nan"),
                live=p.live_l3,
                pgc_runs_s=r.times if r else None,
                camscope_runs_s=o.times,
            )
        rows = table.rows
        table.add(
            photo="median",
            pgc_s=median([r["pgc_s"] for r in rows if r["pgc_s"] is not None]),
            camscope_s=median([r["camscope_s"] for r in rows]),
            ratio=median([r["ratio"] for r in rows]),
            corr=min((r["corr"] for r in rows if not math.isnan(r["corr"])), default=float("nan")),
        )
        table.notes.append("median row: medians of the times and speed-ups; corr = minimum over photos")
        self.summary["ablation_l3_speedup"] = table.rows[-1]["ratio"]
        self.tables.append(table)

    def section_scorecam_precision(self) -> None:
        low = self.args.low_precision
        photos = self.slow_photos()
        # Photo by photo (pytorch-grad-cam, camscope fp32, camscope low precision), so that each
        # photo's ratios come from minutes apart: on shared machines the speed drifts by tens of
        # percent over tens of minutes (the same pytorch-grad-cam call took 58 s and 95 s).
        ref, fp32, lowp = {}, {}, {}
        runs = [
            (ref, lambda p: self.reference("scorecam", "layer4", [p])),
            (fp32, lambda p: self.run_camscope(["scorecam"], "layer4", [p], "fp32")),
        ]
        if low != "none":
            runs.append((lowp, lambda p: self.run_camscope(["scorecam"], "layer4", [p], low)))
        for i, p in enumerate(photos):
            for out, run in runs:
                got = run(p).get(0)
                if got is not None:
                    out[i] = got
        cp = self.args.compile_precision or (low if lowp else "fp32")
        comp = self.run_camscope(["scorecam"], "layer4", photos, cp, compile=True) if self.args.compile else {}
        columns_low = [
            ("low_s", f"camscope {low} s", fmt_seconds),
            ("low_ratio", f"{low} speed-up", fmt_ratio),
            ("low_vs_fp32", f"{low}/fp32 speed", fmt_ratio),
            ("corr", f"corr {low} vs fp32", fmt_corr),
        ] if lowp else []
        columns_compiled = [
            ("comp_s", f"camscope {cp}+compile s", fmt_seconds),
            ("comp_ratio", f"{cp}+compile speed-up", fmt_ratio),
            ("comp_corr", f"corr {cp}+compile vs fp32", fmt_corr),
        ] if comp else []
        table = Table(
            f"scorecam-precision: camscope Score-CAM fp32 vs {low}" if lowp else "scorecam-precision: camscope Score-CAM fp32",
            [
                ("photo", "photo", str),
                ("pgc_s", "pytorch-grad-cam s", fmt_seconds),
                ("fp32_s", "camscope fp32 s", fmt_seconds),
                ("fp32_ratio", "fp32 speed-up", fmt_ratio),
                *columns_low,
                *columns_compiled,
            ],
        )
        for i, p in enumerate(photos):
            r = ref.get(i)
            a = fp32[i]
            row = {
                "photo": p.name,
                "pgc_s": r.seconds if r else None,
                "fp32_s": a.seconds,
                "fp32_ratio": safe_div(r.seconds if r else None, a.seconds),
            }
            if lowp:
                b = lowp[i]
                row.update(
                    low_s=b.seconds,
                    low_ratio=safe_div(r.seconds if r else None, b.seconds),
                    low_vs_fp32=safe_div(a.seconds, b.seconds),
                    corr=pearson(a.output["scorecam"], b.output["scorecam"]),
                )
            if comp:
                c = comp[i]
                row.update(
                    comp_s=c.seconds,
                    comp_ratio=safe_div(r.seconds if r else None, c.seconds),
                    comp_corr=pearson(a.output["scorecam"], c.output["scorecam"]),
                )
            table.add(**row)
        rows = table.rows
        medians = ("pgc_s", "fp32_s", "fp32_ratio", "low_s", "low_ratio", "low_vs_fp32", "comp_s", "comp_ratio")
        minimums = ("corr", "comp_corr")
        table.add(
            photo="median",
            **{k: median([r[k] for r in rows if r.get(k) is not None]) for k in medians if k in rows[0]},
            **{k: min(r[k] for r in rows) for k in minimums if k in rows[0]},
        )
        table.notes.append("speed-ups are against pytorch-grad-cam's ScoreCAM (fp32); corr row: minimum")
        if comp:
            setup = next(iter(comp.values())).setup_s
            table.notes.append(
                f"{cp}+compile: torch.compile of the model, paid once per run (engine build + compile + "
                f"first photo: {fmt_seconds(setup)} s), not in the per-photo times"
            )
            self.summary["scorecam_compiled_speedup"] = table.rows[-1]["comp_ratio"]
            self.summary["scorecam_compiled_corr"] = table.rows[-1]["comp_corr"]
            self.summary["scorecam_compile_setup_s"] = setup
        self.summary["scorecam_fp32_speedup"] = table.rows[-1]["fp32_ratio"]
        if lowp:
            self.summary["scorecam_bf16_speedup"] = table.rows[-1]["low_ratio"]
            self.summary["scorecam_bf16_corr"] = table.rows[-1]["corr"]
        self.tables.append(table)

    def fused_vs_single(self, photos: Sequence[Photo]) -> tuple[dict[int, Measurement], dict[int, Measurement]]:
        """camscope Grad-CAM alone and the five gradient methods in one call, runs interleaved."""
        from camscope.core.engine import CamEngine

        engines = {}
        setup = {}
        for key, methods in (("one", ["gradcam"]), ("five", list(GRADIENT_METHODS))):
            t0 = time.perf_counter()
            engines[key] = CamEngine(self.model, self.layer_names["layer4"], methods=methods, batch_size=self.args.batch_size)
            setup[key] = time.perf_counter() - t0
        one, five = {}, {}
        for i, p in enumerate(photos):
            log(f"camscope gradcam alone vs five gradient methods (interleaved), photo {i + 1}/{len(photos)} ({p.name})")

            def call(engine, p=p):
                res = engine(p.tensor, targets=[[p.target]])
                return {name: maps[0, 0].numpy() for name, maps in res.maps.items()}

            ms = measure_interleaved(
                {"one": lambda p=p: call(engines["one"], p), "five": lambda p=p: call(engines["five"], p)},
                **self.budget(),
            )
            for key in ms:
                ms[key].setup_s = setup[key]
            one[i], five[i] = ms["one"], ms["five"]
            log(f"  -> {fmt_seconds(one[i].seconds)} s vs {fmt_seconds(five[i].seconds)} s ({len(one[i].times)} run(s) each)")
        return one, five

    def section_gradient_fusion(self) -> None:
        photos = self.photos
        one, five = self.fused_vs_single(photos)
        pgc_five: dict[int, float] = {}
        if not self.args.skip_reference:
            per = [
                self.reference(n, "layer4", photos) for n in ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
            ]
            pgc_five = {i: sum(m[i].seconds for m in per) for i in range(len(photos))}
        table = Table(
            "gradient-fusion: camscope's five gradient methods in one call vs Grad-CAM alone",
            [
                ("photo", "photo", str),
                ("one_s", "camscope gradcam s", fmt_seconds),
                ("five_s", "camscope 5 methods s", fmt_seconds),
                ("factor", "time factor", lambda v: fmt_num(v, ".3f")),
                ("pgc_five_s", "pytorch-grad-cam 5 calls s", fmt_seconds),
                ("same", "gradcam map equal", lambda v: fmt_num(v, ".1e")),
            ],
        )
        for i, p in enumerate(photos):
            a, b = one[i], five[i]
            table.add(
                photo=p.name,
                one_s=a.seconds,
                five_s=b.seconds,
                factor=safe_div(b.seconds, a.seconds),
                pgc_five_s=pgc_five.get(i),
                same=float(np.abs(a.output["gradcam"] - b.output["gradcam"]).max()),
            )
        rows = table.rows
        table.add(
            photo="median",
            one_s=median([r["one_s"] for r in rows]),
            five_s=median([r["five_s"] for r in rows]),
            factor=median([r["factor"] for r in rows]),
            pgc_five_s=median([r["pgc_five_s"] for r in rows if r["pgc_five_s"] is not None]),
            same=max(r["same"] for r in rows),
        )
        table.notes += [
            "time factor = 5 methods / gradcam alone (target <= 1.3); 'gradcam map equal' = max |diff| "
            "between the gradcam map of the fused call and of the single call",
            "pytorch-grad-cam 5 calls = sum of its five per-method medians (one forward+backward each)",
            "the two camscope calls alternate run by run (a, b, a, b, ...) so that load changes hit both",
        ]
        self.summary["fusion_factor"] = table.rows[-1]["factor"]
        self.tables.append(table)

    # ---- study

    def section_study(self) -> None:
        args = self.args
        n = min(args.study_images, len(self.photo_paths))
        paths = self.photo_paths[:n]
        study_dir = self.tmp / "study-photos"
        study_dir.mkdir(exist_ok=True)
        for p in paths:  # links, not copies: the photos stay where they are
            link = study_dir / p.name
            if not link.exists():
                link.symlink_to(p.resolve())
        methods = list(args.study_methods)
        # camscope: the CLI, as a user runs it.
        out = self.tmp / "study-camscope"
        cmd = [
            sys.executable, "-m", "camscope", "explain", str(study_dir), "--out", str(out),
            "--model", args.model, "--weights", str(self.weights_file()),
            "--methods", ",".join(methods), "--smooth", "eigen,aug",
            "--device", args.device,
        ]
        if args.batch_size:
            cmd += ["--batch-size", str(args.batch_size)]
        if args.compile:
            cmd.append("--compile")
        if args.study_precision != "fp32":
            cmd += ["--precision", args.study_precision]
        if args.quiet:
            cmd.append("--quiet")
        log(f"study: camscope CLI on {n} photos: {' '.join(shlex.quote(c) for c in cmd)}")
        t0 = time.perf_counter()
        rc = run_child(cmd, self.child_env())
        cs_total = time.perf_counter() - t0
        if rc != 0:
            log(f"study: camscope exited with {rc}")
        log(f"  -> camscope study: {fmt_seconds(cs_total)} s")

        ref_total, ref_label, per = None, "skipped (--skip-reference)", {}
        if not args.skip_reference:
            per, load_s = self.pgc_study(paths, methods, args.study_reference_images)
            ref_total = sum(load_s)
            labels = []
            for (m, v), times in per.items():
                if len(times) >= n:
                    ref_total += sum(times)
                else:
                    ref_total += statistics.median(times) * n
                    labels.append(f"{m} {v}: {len(times)}/{n}")
            ref_label = (
                "measured on every photo"
                if not labels
                else "EXTRAPOLATED: median per-photo time x photos, measured on " + ", ".join(labels)
            )
        table = Table(
            f"study: {n} photos x {{{', '.join(methods)}}} x {{plain, eigen+aug}} end to end",
            [
                ("tool", "tool", str),
                ("seconds", "seconds", fmt_seconds),
                ("ratio", "speed-up", fmt_ratio),
                ("how", "how", str),
            ],
        )
        table.add(
            tool="pytorch-grad-cam (script)", seconds=ref_total, ratio=None, how=ref_label,
        )
        table.add(
            tool="camscope explain (CLI)" + ("" if args.study_precision == "fp32" else f" --precision {args.study_precision}"),
            seconds=cs_total,
            ratio=safe_div(ref_total, cs_total),
            how=f"measured, wall time of the CLI process (exit code {rc})",
        )
        if per:
            detail = Table(
                "study: pytorch-grad-cam script, per (method, variant), seconds per photo",
                [
                    ("method", "method", str),
                    ("variant", "variant", str),
                    ("n", "photos measured", str),
                    ("median_s", "median s/photo", fmt_seconds),
                    ("total_s", f"for {n} photos s", fmt_seconds),
                ],
            )
            for (m, v), times in per.items():
                detail.add(
                    method=m, variant=v, n=f"{len(times)}/{n}", median_s=statistics.median(times),
                    total_s=sum(times) if len(times) >= n else statistics.median(times) * n,
                    runs_s=times,
                )
            detail.notes.append(
                "script = what a notebook does: cv2 load + resize + preprocess_image, one CAM object per "
                "method (`with`), cam(...) plain and cam(..., aug_smooth=True, eigen_smooth=True), "
                "show_cam_on_image + cv2.imwrite; target = class predicted on the plain photo"
            )
            self.tables.append(detail)
        table.notes += [
            "camscope writes more per photo (overlay PNGs, .npy maps, a comparison figure, manifest, CSV)",
            f"camscope runs once per photo the 6 augmented views (flip x 0.9/1.0/1.1) and serves the plain "
            f"maps from the identity view; batch for Ablation-/Score-CAM: camscope {self.camscope_batch_label()}, "
            f"pytorch-grad-cam its defaults {PGC_DEFAULT_BATCH['ablationcam']} / "
            f"{PGC_DEFAULT_BATCH['scorecam']}",
        ]
        self.summary["study_speedup"] = safe_div(ref_total, cs_total)
        self.summary["study_reference_label"] = ref_label
        self.tables.append(table)

    def pgc_study(
        self, paths: Sequence[Path], methods: Sequence[str], slow_limit: int
    ) -> tuple[dict[tuple[str, str], list[float]], list[float]]:
        import cv2
        from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        out = self.tmp / "study-pgc"
        out.mkdir(exist_ok=True)
        per: dict[tuple[str, str], list[float]] = {(m, v): [] for m in methods for v in STUDY_VARIANTS}
        load_s: list[float] = []
        target_layers = [self.layers["layer4"]]
        for i, path in enumerate(paths):
            t0 = time.perf_counter()
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            rgb = np.float32(cv2.resize(bgr[:, :, ::-1], (224, 224))) / 255
            x = preprocess_image(rgb, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)).to(self.device)
            with torch.no_grad():
                c = int(self.model(x).argmax())
            targets = [ClassifierOutputTarget(c)]
            load_s.append(time.perf_counter() - t0)
            for m in methods:
                if m in SLOW_METHODS and i >= slow_limit:
                    continue
                t0 = time.perf_counter()
                # As a notebook does it: the CAM classes' own defaults (batch 32 / 16).
                with self.pgc_class(m)(model=self.model, target_layers=target_layers) as cam:
                    build = time.perf_counter() - t0
                    for v in STUDY_VARIANTS:
                        smooth = v != "plain"
                        log(
                            f"study: pytorch-grad-cam {m} {v}, photo {i + 1}/{len(paths)} ({path.stem})"
                            + (" - minutes" if m in SLOW_METHODS else "")
                        )
                        t0 = time.perf_counter()
                        g = cam(input_tensor=x, targets=targets, aug_smooth=smooth, eigen_smooth=smooth)[0]
                        vis = show_cam_on_image(rgb, g, use_rgb=True)
                        cv2.imwrite(str(out / f"{path.stem}_{m}_{v}.jpg"), cv2.cvtColor(vis, cv2.COLOR_RGB2BGR))
                        dt = time.perf_counter() - t0 + (build if v == "plain" else 0.0)
                        per[(m, v)].append(dt)
                        log(f"  -> {fmt_seconds(dt)} s")
            self.model.zero_grad(set_to_none=True)
        return {k: v for k, v in per.items() if v}, load_s

    # ---- memory

    def section_memory(self) -> None:
        args = self.args
        counts = sorted(args.memory_images)
        sets = {c: self.make_photo_set(c) for c in counts}
        table = Table(
            f"memory: peak RSS of `camscope explain --methods {args.memory_methods}`",
            [
                ("photos", "photos", str),
                ("peak_kib", "peak RSS", fmt_mib),
                ("above_kib", "above imports", fmt_mib),
                ("seconds", "wall s", fmt_seconds),
                ("ratio", f"vs {counts[0]} photos", lambda v: fmt_num(v, ".3f")),
            ]
            + (
                [("gpu_kib", "peak CUDA alloc", fmt_mib), ("gpu_ratio", "CUDA vs fewest", lambda v: fmt_num(v, ".3f"))]
                if self.device.type == "cuda"
                else []
            ),
        )
        peak_file = self.tmp / "peak-rss.txt"
        rc, floor, _ = run_camscope_peak([], self.child_env(), peak_file)
        table.add(photos="0 (imports only)", peak_kib=floor, seconds=None, ratio=None, exit_code=rc)
        base = gpu_base = None
        for c in counts:
            out = self.tmp / f"memory-out-{c}"
            cli = [
                "explain", str(sets[c]), "--out", str(out),
                "--model", args.model, "--weights", str(self.weights_file()),
                "--methods", args.memory_methods, "--device", args.device, "--quiet",
            ]
            if args.batch_size:
                cli += ["--batch-size", str(args.batch_size)]
            log(f"memory: camscope {' '.join(shlex.quote(a) for a in cli)}")
            t0 = time.perf_counter()
            rc, peak, gpu_peak = run_camscope_peak(cli, self.child_env(), peak_file)
            dt = time.perf_counter() - t0
            if rc != 0:
                log(f"memory: camscope exited with {rc}")
            base = base or peak
            gpu_base = gpu_base or gpu_peak
            table.add(
                photos=str(c), peak_kib=peak, above_kib=peak - floor if peak and floor else None,
                gpu_kib=gpu_peak, seconds=dt, ratio=safe_div(peak, base),
                gpu_ratio=safe_div(gpu_peak, gpu_base) if gpu_peak else None, exit_code=rc,
            )
            log(f"  -> peak {fmt_mib(peak)}, GPU {fmt_mib(gpu_peak)}, {fmt_seconds(dt)} s")
        table.notes += [
            "peak RSS = VmHWM of a fresh process running camscope's CLI main(), read by that process "
            "at its end (ru_maxrss of a child is polluted by the parent's peak on Linux); 'above "
            "imports' subtracts the peak of a process that only imports torch, torchvision, matplotlib "
            "and camscope, so that growth with the number of photos is not hidden by that floor",
            f"the photos: the first {min(10, len(self.photo_paths))} of --images (linked), then same-size "
            "variants of them (flips, 180-degree turn, brightness/contrast) written to a temp folder",
        ]
        self.summary["memory_ratio"] = table.rows[-1]["ratio"] if len(table.rows) > 2 else None
        if len(table.rows) > 2 and table.rows[-1].get("gpu_ratio") is not None:
            self.summary["memory_gpu_ratio"] = table.rows[-1]["gpu_ratio"]
        if len(table.rows) > 2:
            self.summary["memory_above_imports_ratio"] = safe_div(table.rows[-1]["above_kib"], table.rows[1]["above_kib"])
        self.tables.append(table)

    def make_photo_set(self, count: int) -> Path:
        """``count`` photos in a temp folder: the originals (linked), then same-size variants."""
        from PIL import Image, ImageEnhance, ImageOps

        folder = self.tmp / f"photos-{count}"
        if folder.exists():
            return folder
        folder.mkdir()
        sources = self.photo_paths[:10]
        variants: list[tuple[str, Callable[[Image.Image], Image.Image]]] = [
            ("hflip", ImageOps.mirror),
            ("vflip", ImageOps.flip),
            ("rot180", lambda im: im.rotate(180)),
            ("bright08", lambda im: ImageEnhance.Brightness(im).enhance(0.8)),
            ("bright12", lambda im: ImageEnhance.Brightness(im).enhance(1.2)),
            ("contrast08", lambda im: ImageEnhance.Contrast(im).enhance(0.8)),
            ("contrast12", lambda im: ImageEnhance.Contrast(im).enhance(1.2)),
            ("hflip-bright09", lambda im: ImageEnhance.Brightness(ImageOps.mirror(im)).enhance(0.9)),
            ("vflip-contrast11", lambda im: ImageEnhance.Contrast(ImageOps.flip(im)).enhance(1.1)),
        ]
        made = 0
        for src in sources:
            if made >= count:
                break
            (folder / src.name).symlink_to(src.resolve())
            made += 1
        k = 0
        while made < count:
            src = sources[k % len(sources)]
            name, fn = variants[(k // len(sources)) % len(variants)]
            rnd = k // (len(sources) * len(variants))
            with Image.open(src) as im:
                fn(im.convert("RGB")).save(folder / f"{src.stem}_{name}{rnd or ''}.jpg", quality=92)
            made += 1
            k += 1
        return folder

    def child_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        if self.args.threads:
            env["OMP_NUM_THREADS"] = str(self.args.threads)
            env["MKL_NUM_THREADS"] = str(self.args.threads)
        return env


#: Run in a fresh interpreter: ``sys.argv[1:]`` are camscope CLI arguments (none: imports only);
#: at the end the process writes its own peak RSS (VmHWM, KiB) to $CAMSCOPE_BENCH_PEAK_FILE.
#: Not ru_maxrss from os.wait4: Python starts children with vfork, and Linux then carries the
#: parent's peak RSS (this benchmark's, gigabytes after pytorch-grad-cam) into the child's.
PEAK_WRAPPER = """
import os, sys
if len(sys.argv) > 1:
    from camscope.cli import main
    rc = main(sys.argv[1:])
else:
    import matplotlib.pyplot, torch, torchvision  # noqa
    import camscope.cli, camscope.pipeline, camscope.render  # noqa
    rc = 0
try:
    with open("/proc/self/status") as fh:
        peak = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
except (OSError, StopIteration):
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak // 1024 if sys.platform == "darwin" else peak
gpu = ""
torch = sys.modules.get("torch")
if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
    gpu = str(torch.cuda.max_memory_allocated() // 1024)
with open(os.environ["CAMSCOPE_BENCH_PEAK_FILE"], "w") as fh:
    fh.write(f"{peak} {gpu}")
sys.exit(rc)
"""


def run_child(cmd: list[str], env: dict[str, str]) -> int:
    """Run a command in the repository root; return its exit code."""
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        raise


def run_camscope_peak(
    cli_args: list[str], env: dict[str, str], peak_file: Path
) -> tuple[int, int | None, int | None]:
    """``camscope <cli_args>`` in a fresh process; its exit code, own peak RSS and peak CUDA
    memory allocated by torch (KiB; None when CUDA was not used)."""
    peak_file.unlink(missing_ok=True)
    rc = run_child([sys.executable, "-c", PEAK_WRAPPER, *cli_args], dict(env, CAMSCOPE_BENCH_PEAK_FILE=str(peak_file)))
    try:
        fields = peak_file.read_text().split()
        return rc, int(fields[0]), int(fields[1]) if len(fields) > 1 else None
    except (OSError, ValueError, IndexError):
        return rc, None, None


# --------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="camscope vs pytorch-grad-cam: speed, map agreement and memory, side by side.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of: {', '.join(SECTIONS)}")
    p.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of photos (read in place, never copied)")
    p.add_argument("--n-images", type=int, default=10, help="photos for the fast measurements")
    p.add_argument(
        "--slow-images", type=int, default=3,
        help="photos (the first of --n-images) for Ablation-/Score-CAM, where pytorch-grad-cam "
        "needs minutes per photo (methods, ablation-layer3, scorecam-precision)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median), plus one warm-up")
    p.add_argument(
        "--time-budget", type=float, default=20.0,
        help="stop repeating a measurement once it has used this many seconds (at least one run; "
        "a single run is then the time, without warm-up)",
    )
    p.add_argument(
        "--methods", default=",".join(SHARED_METHODS),
        help=f"methods for the methods section: {', '.join(SHARED_METHODS)}",
    )
    p.add_argument("--model", default="resnet50", help="torchvision ResNet (resnet18 is a quick stand-in for validation)")
    p.add_argument("--weights", help="state dict file for the model (default: random weights, seeded)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's default); also passed to the CLI runs")
    p.add_argument(
        "--batch-size", type=int,
        help="camscope's rows per pass for Ablation-/Score-CAM (default: camscope's own per-method defaults)",
    )
    p.add_argument(
        "--pgc-batch-sizes", default="same,default",
        help="batch sizes pytorch-grad-cam's Ablation-/Score-CAM are timed with, comma-separated: "
        "'same' (camscope's images per full forward: --batch-size, else its Score-CAM default), "
        "'default' (pytorch-grad-cam's own: AblationCAM 32, ScoreCAM 16) or numbers; "
        "the speed-ups use the faster per photo. The study uses its defaults",
    )
    p.add_argument(
        "--low-precision", choices=("bf16", "fp16", "none"), default="bf16",
        help="scorecam-precision section; 'none': fp32 only (e.g. on a CPU that emulates bf16)",
    )
    p.add_argument(
        "--compile-precision", choices=("fp32", "bf16", "fp16"),
        help="precision of the compiled Score-CAM column (default: --low-precision; fp32 when that is none)",
    )
    p.add_argument(
        "--compile", action="store_true",
        help="also time camscope's Score-CAM compiled (scorecam-precision: a low-precision+compile column, "
        "compile time reported apart) and pass --compile to the study's CLI run",
    )
    p.add_argument(
        "--reference-images", type=int,
        help="photos on which camscope's Score-CAM is checked against the naive reference "
        "(minutes per photo; default: --slow-images; 0 skips it)",
    )
    p.add_argument(
        "--reference-impl", choices=("camscope", "local"), default="camscope",
        help="naive Score-CAM: camscope.methods.reference (falls back to local when absent) or the local one here",
    )
    p.add_argument("--skip-logit-softmax", action="store_true", help="skip camscope's scorecam-logit-softmax check against pytorch-grad-cam")
    p.add_argument("--skip-reference", action="store_true", help="time camscope only (no pytorch-grad-cam)")
    p.add_argument("--study-images", type=int, default=10, help="photos in the classic study")
    p.add_argument(
        "--study-reference-images", type=int, default=1,
        help="photos on which the pytorch-grad-cam study script runs Ablation-/Score-CAM (about 45 min "
        "per photo on 2 CPU cores); the rest is extrapolated and labelled so. Grad-CAM runs on all",
    )
    p.add_argument("--study-methods", default=",".join(STUDY_METHODS), help="methods of the study")
    p.add_argument(
        "--study-precision", choices=("fp32", "bf16", "fp16"), default="fp32",
        help="--precision of the study's camscope CLI run (pytorch-grad-cam always runs fp32)",
    )
    p.add_argument("--memory-images", default="10,100", help="photo counts compared in the memory section")
    p.add_argument("--memory-methods", default="gradcam", help="methods of the memory runs")
    p.add_argument("--json", help="write all results (with every run's time) to this JSON file")
    p.add_argument("--markdown", help="write the tables as markdown (for the README) to this file")
    p.add_argument("--keep-outputs", action="store_true", help="keep the temp folder (study/memory outputs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars from the camscope CLI runs")
    args = p.parse_args(argv)

    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        p.error(f"unknown section(s) {', '.join(bad)}; choose from: {', '.join(SECTIONS)}")
    args.methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in SHARED_METHODS]
    if bad:
        p.error(f"unknown method(s) {', '.join(bad)}; choose from: {', '.join(SHARED_METHODS)}")
    args.study_methods = [m.strip().lower() for m in args.study_methods.split(",") if m.strip()]
    bad = [m for m in args.study_methods if m not in SHARED_METHODS]
    if bad:
        p.error(f"unknown study method(s) {', '.join(bad)}")
    try:
        args.memory_images = sorted({int(v) for v in args.memory_images.split(",") if v.strip()})
    except ValueError:
        p.error("--memory-images takes comma-separated integers, e.g. 10,100")
    for name in ("n_images", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    args.pgc_batch_sizes = [v.strip().lower() for v in args.pgc_batch_sizes.split(",") if v.strip()]
    if not args.pgc_batch_sizes or any(
        v not in ("same", "default") and not (v.isdigit() and int(v) > 0) for v in args.pgc_batch_sizes
    ):
        p.error("--pgc-batch-sizes takes 'same', 'default' or positive numbers, comma-separated")
    args.slow_images = max(0, min(args.slow_images, args.n_images))
    if args.reference_images is None:
        args.reference_images = args.slow_images
    return args


def evaluate_targets(summary: dict[str, Any]) -> Table:
    table = Table(
        "targets of the issue",
        [
            ("target", "target", str),
            ("value", "measured", lambda v: fmt_num(v, ".4g")),
            ("want", "wanted", str),
            ("ok", "ok", str),
        ],
    )
    for key, desc, op, thr in TARGETS:
        v = summary.get(key)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            ok = "not measured"
        else:
            ok = "yes" if (v >= thr if op == ">=" else v <= thr) else "NO"
        table.add(target=desc, value=v, want=f"{op} {thr:g}", ok=ok, key=key)
    return table


def report_header(args: argparse.Namespace, bench: Bench, info: dict[str, Any], command: str, total_s: float) -> list[str]:
    load_start, load_now = info.get("loadavg_start"), info.get("loadavg_end")
    peak = max([*LOAD_SEEN, *(v[0] for v in (load_start, load_now) if v)], default=None)
    info["loadavg_1min_max_seen"] = peak
    busy = peak is not None and peak > 1.2 * (info["usable_cpus"] or 1)
    return [
        f"command: {command}",
        f"machine: {info['cpu']}, {info['usable_cpus']} usable CPUs, {info['memory_gib']} GiB, "
        f"torch {info['versions'].get('torch')} with {info['torch_threads']} threads, device {args.device}"
        + (f" ({info['gpu']})" if info.get("gpu") else ""),
        f"versions: {', '.join(f'{k} {v}' for k, v in info['versions'].items())}; camscope commit "
        f"{info['git'].get('commit', '?')}{' (uncommitted changes)' if info['git'].get('dirty') else ''}",
        f"model: {bench.model_desc}",
        f"photos: {args.images} (first {args.n_images}); predicted classes "
        + (", ".join(str(p.target) for p in bench.photos) if bench.photos else "-"),
        f"load average (1/5/15 min) at start {fmt_load(load_start)}, at end {fmt_load(load_now)}; "
        f"highest 1-min load seen {fmt_num(peak, '.2f')} ({info['usable_cpus']} CPUs)"
        + ("  <- the machine was busy: timings are not trustworthy" if busy else ""),
        f"total {total_s:.0f} s",
    ]


def fmt_load(v: Sequence[float] | None) -> str:
    return "-" if not v else "/".join(f"{x:.2f}" for x in v)


def write_reports(
    args: argparse.Namespace, bench: Bench, info: dict[str, Any], command: str, t_start: float, *, final: bool
) -> None:
    """Print the targets and header (final) and (re)write --json / --markdown; called after
    every section so that an interrupted long run keeps what it measured."""
    info["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    targets = evaluate_targets(bench.summary)
    header = report_header(args, bench, info, command, time.perf_counter() - t_start)
    if not final:
        header.append("(partial: the run has not finished)")
    if final:
        print(targets.text())
        print()
        print("\n".join(header), flush=True)
    if args.json:
        data = {
            "command": command,
            "finished": final,
            "machine": info,
            "model": bench.model_desc,
            "args": dict(vars(args)),
            "photos": [
                {"name": p.name, "target": p.target, "prob": p.prob, "live_layer4": p.live_l4, "live_layer3": p.live_l3}
                for p in bench.photos
            ],
            "summary": bench.summary,
            "tables": [t.as_json() for t in [*bench.tables, targets]],
        }
        Path(args.json).write_text(json.dumps(_finite(data), indent=2, default=_json_default) + "\n")
    if args.markdown:
        md = ["### Benchmark: camscope vs pytorch-grad-cam", "", "```", *header, "```", ""]
        md += [t.markdown() + "\n" for t in [targets, *bench.tables]]
        Path(args.markdown).write_text("\n".join(md))
    if final:
        for path in filter(None, (args.json, args.markdown)):
            log(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    exe = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else "python"
    command = " ".join(
        shlex.quote(a) for a in [exe, os.path.relpath(__file__, REPO), *(sys.argv[1:] if argv is None else argv)]
    )
    info = machine_info(args)
    bench = Bench(args)
    t_start = time.perf_counter()
    log(f"temp folder: {bench.tmp}")
    log(f"model: {bench.model_desc}")
    try:
        if any(s in args.sections for s in ("methods", "ablation-layer3", "scorecam-precision", "gradient-fusion")):
            bench.load_photos(args.n_images)
            bench.warmup()
        for section in args.sections:
            log(f"section {section}")
            t0 = time.perf_counter()
            getattr(bench, "section_" + section.replace("-", "_"))()
            bench.flush_batch_table()
            bench.summary.setdefault("section_seconds", {})[section] = round(time.perf_counter() - t0, 1)
            for t in bench.tables:
                if not t.printed:
                    print(t.text() + "\n", flush=True)
                    t.printed = True
            write_reports(args, bench, info, command, t_start, final=False)
    finally:
        if args.keep_outputs:
            log(f"outputs kept in {bench.tmp}")
        else:
            shutil.rmtree(bench.tmp, ignore_errors=True)
    write_reports(args, bench, info, command, t_start, final=True)
    return 0


def _finite(o: Any) -> Any:
    """NaN -> None, recursively (JSON has no NaN)."""
    if isinstance(o, float) and math.isnan(o):
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
    if isinstance(o, float) and math.isnan(o):
        return None
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
