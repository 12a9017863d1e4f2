"""The ``explain`` run: a folder of photos -> per-method maps, overlays, figures, CSV, manifest.

Images are streamed in small batches; each finished image is written at once (every file through
a temporary name and a rename) and recorded in ``manifest.json``, so memory stays flat, an
interrupted run loses nothing already written, and re-running the same command resumes.
One bad image is reported on one line, recorded in ``failures.csv`` and skipped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from camscope.errors import CamscopeError, ImageLoadError, UsageError

__all__ = ["ExplainOptions", "RunResult", "run_explain", "MANIFEST", "PREDICTIONS", "FAILURES"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PREDICTIONS = "predictions.csv"
FAILURES = "failures.csv"
FIGURES = "figures"
MANIFEST_VERSION = 1


@dataclass
class ExplainOptions:
    """Settings of an explain run (the CLI flags of ``camscope explain``)."""

    model: str = "resnet50"
    weights_tag: str | None = "IMAGENET1K_V1"
    weights_file: str | None = None
    labels: str | None = None
    preprocess: str = "classic"
    layer: str | None = None
    methods: Sequence[str] = ("gradcam", "ablationcam", "scorecam")
    smoothing: Sequence[str] = ()
    target_class: str | None = None
    top_k: int = 1
    device: str | None = None
    batch_size: int | None = None
    images_per_batch: int = 4
    precision: str = "fp32"
    compile: bool = False
    freeze: bool | None = None
    colormap: str = "jet"
    alpha: float = 0.5
    max_pixels: int = 89_478_485
    figures: bool = True
    quiet: bool = False
    force: bool = False
    fail_fast: bool = False
    trust_checkpoint: bool = False
    reshape: str = "auto"
    input_size: str | None = None
    mean: str | None = None
    std: str | None = None
    trust_remote_code: bool = False


@dataclass
class RunResult:
    out: Path
    loaded: Any = field(default=None, repr=False)
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def _settings(
    opts: ExplainOptions, loaded: Any, layer: str, methods: list[str], variants: list, reshape: str = "none"
) -> dict:
    """The settings that determine the outputs; a resumed run must match them. ``reshape`` (how
    the layer's output became a map, e.g. ``tokens:14x14:skip=1``) is recorded unless the output
    already was a (N, C, h, w) map, so runs of CNNs keep their settings."""
    extra = {} if reshape == "none" else {"reshape": reshape}
    return {
        "model": loaded.name,
        "weights": loaded.weights,
        "layer": layer,
        "methods": methods,
        "smoothing": ["+".join(v) for v in variants if v],
        "preprocess": loaded.preprocess.describe(),
        "target_class": opts.target_class,
        "top_k": opts.top_k,
        "precision": opts.precision,
        "colormap": opts.colormap,
        "alpha": opts.alpha,
        **extra,
    }


def _versions() -> dict[str, str]:
    import torchvision

    import camscope

    return {
        "camscope": camscope.__version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _check_writable(out: Path) -> None:
    """Check, without creating anything, that ``out`` is a writable folder or can be made one."""
    path = Path(os.path.abspath(out))
    if os.path.lexists(path) and not path.is_dir():
        what = "a broken symbolic link" if path.is_symlink() and not path.exists() else "not a directory"
        raise UsageError(f"--out {out}: output path exists and is {what}")
    existing = path
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent  # nearest existing ancestor: where mkdir would start
    if not existing.is_dir():
        raise UsageError(f"--out {out}: cannot create the output directory: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: output directory is not writable (permission denied on {existing})")


def _make_out_dir(out: Path) -> None:
    """Create ``out`` and prove it writable; called only once every argument has been checked."""
    from camscope.io.atomic import atomic_write_bytes

    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".camscope-write-test"
        atomic_write_bytes(probe, b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"--out {out}: output directory is not writable ({exc.strerror or exc})") from None


def _check_layer(loaded: Any, layer: str, reshape: str = "auto") -> None:
    """An explicit ``--layer`` must exist and output a feature map (or tokens / a channels-last
    map that ``--reshape`` turns into one) with more than 1x1 cells."""
    from camscope.core.layers import check_spatial_layer, default_layer

    h, w = loaded.preprocess.size
    shape = check_spatial_layer(loaded.model, layer, (1, 3, h, w), reshape)
    if shape[2] * shape[3] <= 1:
        try:
            hint = f" such as {default_layer(loaded.model, input_size=(1, 3, h, w))!r}"
        except CamscopeError:
            hint = ""
        raise UsageError(
            f"layer {layer!r} outputs shape {tuple(shape)}: a {shape[2]}x{shape[3]} map has no "
            f"spatial extent to explain; choose an earlier convolutional layer{hint}"
        )


class _FailFast(Exception):
    """Raised by the first failing image under --fail-fast (stops the run, not an error)."""


def pick_device(spec: str | torch.device | None) -> torch.device:
    """``--device``: CUDA when available for ``None``/``"auto"``; a clear error for bad values."""
    if isinstance(spec, torch.device):
        return spec
    if spec is None or spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise UsageError(f"unknown --device {spec!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {spec}: CUDA is not available on this machine")
    return dev


class _Outputs:
    """Names and atomic writers of every file of a run."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def stem(self, base: str, rank: int, k: int) -> str:
        return base if k == 1 else f"{base}.top{rank + 1}"

    def write_png(self, rel_path: str, data: bytes) -> None:
        from camscope.io.atomic import atomic_write_bytes

        atomic_write_bytes(self.out / rel_path, data)

    def write_npy(self, rel_path: str, arr: np.ndarray) -> None:
        from camscope.io.atomic import atomic_write_bytes

        buf = io.BytesIO()
        np.save(buf, arr.astype(np.float32))
        atomic_write_bytes(self.out / rel_path, buf.getvalue())


def output_stems(rels: Sequence[str]) -> dict[str, str]:
    """Output base name of each input: its relative path without the extension
    (``sub/cat.jpg`` -> ``sub/cat``), or with it where two inputs would otherwise collide."""
    def strip(rel: str) -> str:
        head, _, name = rel.rpartition("/")
        stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
        return f"{head}/{stem}" if head else stem

    counts: dict[str, int] = {}
    for rel in rels:
        key = strip(rel).casefold()
        counts[key] = counts.get(key, 0) + 1
    return {rel: strip(rel) if counts[strip(rel).casefold()] == 1 else rel for rel in rels}


def _read_manifest(out: Path) -> dict | None:
    path = out / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path}: existing manifest is unreadable ({exc}); use --force or another --out") from None


def _true_class(path: Path, rel: str, loaded: Any) -> int | None:
    from camscope.models import wnid_from_name

    if loaded.wnids is None:
        return None
    wnid = wnid_from_name(path.name) or wnid_from_name(rel)
    if wnid is None or wnid not in loaded.wnids:
        return None
    return loaded.wnids.index(wnid)


def run_explain(
    inputs: Sequence[str | Path],
    out: str | Path,
    opts: ExplainOptions | None = None,
    *,
    loaded: Any = None,
) -> RunResult:
    """Explain every image found in ``inputs`` and write the output tree under ``out``.

    Every argument is checked before any image is processed, and nothing is created under
    ``out`` until all checks have passed (a usage error leaves no trace). ``loaded`` may carry an already
    built :class:`camscope.models.LoadedModel` (for any ``nn.Module``); otherwise the model is
    built from ``opts``.
    """
    from tqdm.auto import tqdm

    from camscope.core.engine import CamEngine
    from camscope.io.atomic import cleanup_temp_files
    from camscope.io.images import find_images
    from camscope.methods.registry import get_method
    from camscope.models import class_index, load_class_names, load_model
    from camscope.render import colorize
    from camscope.smoothing import parse_smoothing

    opts = opts or ExplainOptions()
    t_start = time.perf_counter()
    out = Path(out)

    # ---- every argument checked before any work --------------------------------------------
    methods = [get_method(m).name for m in opts.methods]
    if len(set(methods)) != len(methods):
        methods = list(dict.fromkeys(methods))
    variants = parse_smoothing(list(opts.smoothing))
    if opts.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, not {opts.top_k}")
    if not 0.0 <= opts.alpha <= 1.0:
        raise UsageError(f"--alpha must be in [0, 1], not {opts.alpha}")
    if opts.images_per_batch < 1:
        raise UsageError(f"--images-per-batch must be at least 1, not {opts.images_per_batch}")
    if opts.max_pixels < 1:
        raise UsageError(f"--max-pixels must be at least 1, not {opts.max_pixels}")
    colorize(np.zeros((1, 1)), opts.colormap)
    device = pick_device(opts.device)
    images = find_images(inputs)
    if not images:
        raise UsageError(f"no images found in {', '.join(map(str, inputs))}")
    _check_writable(out)
    if loaded is None:
        loaded = load_model(
            opts.model,
            weights_tag=opts.weights_tag,
            weights_file=opts.weights_file,
            preprocess=opts.preprocess,
            device=device,
            trust_checkpoint=opts.trust_checkpoint,
            progress=not opts.quiet,
            input_size=opts.input_size,
            mean=opts.mean,
            std=opts.std,
            trust_remote_code=opts.trust_remote_code,
        )
    if opts.labels:
        loaded.categories = load_class_names(opts.labels)
    if opts.layer:
        _check_layer(loaded, opts.layer, opts.reshape)
    engine = CamEngine(
        loaded.model,
        opts.layer,
        methods=methods,
        smoothing=list(opts.smoothing),
        normalization=loaded.preprocess.normalization,
        batch_size=opts.batch_size,
        precision=opts.precision,
        progress=not opts.quiet,
        compile=opts.compile,
        freeze=opts.freeze,
        reshape=opts.reshape,
        input_size=(1, 3, *loaded.preprocess.size),
    )
    reshape = engine.resolve_reshape(loaded.preprocess.size).describe()
    num_classes = _num_outputs(loaded, device)
    if loaded.categories is not None and len(loaded.categories) != num_classes:
        raise UsageError(
            f"the labels give {len(loaded.categories)} class names but the model has {num_classes} outputs"
        )
    target = None if opts.target_class is None else class_index(opts.target_class, loaded.categories, num_classes)
    k = 1 if target is not None else min(opts.top_k, num_classes)

    settings = _settings(opts, loaded, engine.layer, methods, variants, reshape)
    previous = _read_manifest(out)
    done: dict[str, dict] = {}
    if previous is not None and not opts.force:
        if previous.get("settings") != settings:
            changed = sorted(
                key for key in settings if previous.get("settings", {}).get(key) != settings[key]
            )
            raise UsageError(
                f"{out} holds a run with other settings ({', '.join(changed)}); "
                "pass --force to recompute into it, or choose another --out"
            )
        done = {rel: rec for rel, rec in previous.get("images", {}).items() if rec.get("status") == "complete"}
    # ---- every check passed: only now is anything created under ``out`` ----------------------
    _make_out_dir(out)
    removed = cleanup_temp_files(out)
    if removed:
        logger.info("removed %d temporary files left by an interrupted run", removed)

    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "versions": _versions(),
        "settings": settings,
        "device": str(device),
        "methods": {m: _method_meta(m) for m in methods},
        "outputs": engine.names,
        "images": dict(done),
        "failures": {},
    }
    writer = _Outputs(out)
    stems = output_stems([item.rel for item in images])
    result = RunResult(out, loaded)
    todo = []
    for item in images:
        if item.rel in done and _files_exist(out, done[item.rel]):
            result.skipped.append(item.rel)
        else:
            todo.append(item)
    if result.skipped:
        logger.info("resuming: %d images already complete", len(result.skipped))

    def fail(item: Any, reason: str) -> None:
        line = f"{item.path}: {reason}"
        logger.error("%s", line)
        result.failed.append((str(item.path), reason))
        manifest["failures"][item.rel] = {"source": str(item.path), "reason": reason}
        manifest["images"].pop(item.rel, None)
        bar.update(1)
        if opts.fail_fast:
            raise _FailFast

    bar = tqdm(total=len(todo), desc="images", unit="img", disable=opts.quiet)
    try:
        for start in range(0, len(todo), opts.images_per_batch):
            batch = todo[start : start + opts.images_per_batch]
            loaded_imgs = []
            for item in batch:
                try:
                    loaded_imgs.append((item, _prepare(item, loaded, opts)))
                except Exception as exc:  # any failure costs this image only
                    reason = exc.reason if isinstance(exc, ImageLoadError) else None
                    fail(item, reason or _short(exc, "loading the image", "lower --max-pixels"))
            if not loaded_imgs:
                continue
            for item, rec, err in _explain_batch(engine, loaded_imgs, target, k, device):
                if err is not None:
                    fail(item, err)
                    continue
                try:
                    record = _write_image(writer, item, stems[item.rel], rec, loaded, variants, methods, opts)
                except Exception as exc:
                    fail(item, _short(exc, "writing the outputs"))
                    continue
                manifest["images"][item.rel] = record
                result.completed.append(item.rel)
                bar.update(1)
            del loaded_imgs
            _write_run_files(out, manifest, loaded)
    except _FailFast:
        left = len(todo) - len(result.completed) - len(result.failed)
        logger.error("stopped at the first failure (--fail-fast); %d images not processed", left)
    finally:
        bar.close()
        manifest["seconds"] = round(time.perf_counter() - t_start, 3)
        _write_run_files(out, manifest, loaded)
    result.seconds = time.perf_counter() - t_start
    return result


def _num_outputs(loaded: Any, device: torch.device) -> int:
    if loaded.categories is not None:
        return len(loaded.categories)
    from camscope.core.capture import model_state_guard

    h, w = loaded.preprocess.size
    with model_state_guard(loaded.model), torch.inference_mode():
        return int(loaded.model(torch.zeros(1, 3, h, w, device=device)).shape[1])


def _method_meta(name: str) -> dict[str, str]:
    from camscope.methods.registry import get_method

    spec = get_method(name)
    return {"title": spec.title, "paper": spec.paper, "equation": spec.equation}


def _files_exist(out: Path, rec: dict) -> bool:
    paths = [f for v in rec.get("files", {}).values() for f in v]
    if rec.get("figure"):
        paths.append(rec["figure"])
    return all((out / p).exists() for p in paths)


def _prepare(item: Any, loaded: Any, opts: ExplainOptions) -> dict:
    from camscope.io.images import load_image

    photo = load_image(item.path, max_pixels=opts.max_pixels)
    return {"photo": photo, "tensor": loaded.preprocess.to_tensor(photo)}


def _explain_batch(engine: Any, items: list, target: int | None, k: int, device: torch.device):
    """Yield (item, record, error) per image; a failing batch is retried image by image."""
    x = torch.stack([rec["tensor"] for _, rec in items]).to(device)
    targets = None if target is None else [[target]] * len(items)
    try:
        res, error = engine(x, targets, top_k=k), None
    except Exception as exc:  # out of memory, a model that raises on one input, ...
        res, error = None, _short(exc, "computing the maps")
    if res is None:  # outside the except block, so the traceback's tensors are already freed
        del x
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if len(items) == 1:
            yield items[0][0], None, error
            return
        for one in items:  # retried image by image: only the culprit fails
            yield from _explain_batch(engine, [one], target, k, device)
        return
    for i, (item, rec) in enumerate(items):
        probs = res.probabilities[i]
        if not torch.isfinite(probs).all():
            yield item, None, "model output is not finite (NaN or inf scores)"
            continue
        maps = {name: m[i].numpy() for name, m in res.maps.items()}
        if any(not np.isfinite(m).all() for m in maps.values()):
            yield item, None, "a map is not finite (NaN or inf)"
            continue
        rec = dict(rec, probs=probs, targets=res.targets[i].tolist(), maps=maps)
        yield item, rec, None


def _short(exc: BaseException, during: str, oom_hint: str = "try a smaller --batch-size or --images-per-batch") -> str:
    """One-line reason for an unexpected exception raised while ``during`` one image."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in first.lower():
        return f"out of memory while {during} ({oom_hint}; see docs/limits.md)"
    return f"{type(exc).__name__} while {during}: {first[:200]}"


def _class_name(loaded: Any, idx: int) -> str:
    if loaded.categories is not None and 0 <= idx < len(loaded.categories):
        return loaded.categories[idx]
    return f"class {idx}"


def _write_image(
    writer: _Outputs,
    item: Any,
    base: str,
    rec: dict,
    loaded: Any,
    variants: list,
    methods: list[str],
    opts: ExplainOptions,
) -> dict:
    from camscope.methods.registry import get_method
    from camscope.render import Panel, comparison_figure, overlay, png_bytes

    photo = loaded.preprocess.frame(rec["photo"])
    probs = rec["probs"]
    k = len(rec["targets"])
    top = probs.topk(min(5, probs.numel()))
    top5 = [
        {"class": int(c), "name": _class_name(loaded, int(c)), "prob": round(float(p), 6)}
        for p, c in zip(top.values, top.indices, strict=True)
    ]
    truth = _true_class(item.path, item.rel, loaded)
    files: dict[str, list[str]] = {}
    figures: list[str] = []
    for rank, cls in enumerate(rec["targets"]):
        stem = writer.stem(base, rank, k)
        label = f"{_class_name(loaded, cls)} {float(probs[cls]):.1%}"
        rows = []
        for variant in variants:
            row = []
            for m in methods:
                name = "+".join([m, *variant])
                sal = rec["maps"][name][rank]
                png, npy = f"{name}/{stem}.png", f"{name}/{stem}.npy"
                writer.write_npy(npy, sal)
                writer.write_png(png, png_bytes(overlay(photo, sal, alpha=opts.alpha, colormap=opts.colormap)))
                files.setdefault(name, []).extend([png, npy])
                suffix = f" +{'+'.join(variant)}" if variant else ""
                row.append(Panel(f"{get_method(m).title}{suffix}\n{label}", sal))
            rows.append(row)
        if opts.figures:
            title = f"{item.rel} | explained: {_class_name(loaded, cls)} ({float(probs[cls]):.1%})"
            if truth is not None:
                title += f" | true: {_class_name(loaded, truth)}"
            fig = f"{FIGURES}/{stem}.png"
            writer.write_png(fig, comparison_figure(photo, rows, suptitle=title, alpha=opts.alpha, colormap=opts.colormap))
            figures.append(fig)
    return {
        "source": str(item.path),
        "status": "complete",
        "size": list(rec["photo"].size),
        "top5": top5,
        "targets": [{"class": int(c), "name": _class_name(loaded, int(c)), "prob": round(float(probs[c]), 6)} for c in rec["targets"]],
        "true_class": truth,
        "true_name": None if truth is None else _class_name(loaded, truth),
        "correct": None if truth is None else bool(int(top.indices[0]) == truth),
        "files": files,
        "figure": figures[0] if figures else None,
        "figures": figures,
    }


def _write_run_files(out: Path, manifest: dict, loaded: Any) -> None:
    """Rewrite manifest.json, predictions.csv and failures.csv (atomically) from the manifest."""
    from camscope.io.atomic import atomic_write_text

    atomic_write_text(out / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    header = ["file", "source"]
    for i in range(1, 6):
        header += [f"top{i}_class", f"top{i}_name", f"top{i}_prob"]
    header += ["target_class", "target_name", "target_prob", "true_class", "true_name", "correct"]
    w.writerow(header)
    for rel, rec in sorted(manifest["images"].items()):
        row = [rel, rec["source"]]
        for i in range(5):
            t = rec["top5"][i] if i < len(rec["top5"]) else {"class": "", "name": "", "prob": ""}
            row += [t["class"], t["name"], t["prob"]]
        tg = rec["targets"][0]
        correct = "" if rec["correct"] is None else ("yes" if rec["correct"] else "no")
        row += [tg["class"], tg["name"], tg["prob"], _blank(rec["true_class"]), _blank(rec["true_name"]), correct]
        w.writerow(row)
    atomic_write_text(out / PREDICTIONS, buf.getvalue())
    fbuf = io.StringIO()
    fw = csv.writer(fbuf)
    fw.writerow(["file", "source", "reason"])
    for rel, f in sorted(manifest["failures"].items()):
        fw.writerow([rel, f["source"], f["reason"]])
    if manifest["failures"] or (out / FAILURES).exists():
        atomic_write_text(out / FAILURES, fbuf.getvalue())


def _blank(v: Any) -> Any:
    return "" if v is None else v


def options_dict(opts: ExplainOptions) -> dict:
    """The options as a plain dict (for logging)."""
    return asdict(opts)
