"""memory: peak RSS of ``camscope explain`` over 10 vs 100 photos, each run a fresh process."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .. import camscope_api as cs
from ..common import Table, Target, fmt_mib, fmt_num, fmt_seconds, log, safe_div
from ..context import run_child
from . import section

if TYPE_CHECKING:
    from ..context import Bench

TARGETS = (Target("memory_ratio", "peak memory, most photos / fewest (issue: 100 vs 10)", "<=", 1.10),)


def run_camscope_peak(
    cli_args: list[str], env: dict[str, str], peak_file: Path
) -> tuple[int, int | None, int | None]:
    """``camscope <cli_args>`` in a fresh process; its exit code, own peak RSS and peak CUDA
    memory allocated by torch (KiB; None when CUDA was not used)."""
    peak_file.unlink(missing_ok=True)
    rc = run_child([sys.executable, "-c", cs.PEAK_WRAPPER, *cli_args], dict(env, CAMSCOPE_BENCH_PEAK_FILE=str(peak_file)))
    try:
        fields = peak_file.read_text().split()
        return rc, int(fields[0]), int(fields[1]) if len(fields) > 1 else None
    except (OSError, ValueError, IndexError):
        return rc, None, None


@section("memory", order=60, targets=TARGETS)
def memory(bench: Bench) -> None:
    args = bench.args
    counts = sorted(args.memory_images)
    sets = {c: make_photo_set(bench, c) for c in counts}
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
            if bench.device.type == "cuda"
            else []
        ),
    )
    peak_file = bench.tmp / "peak-rss.txt"
    rc, floor, _ = run_camscope_peak([], bench.child_env(), peak_file)
    table.add(photos="0 (imports only)", peak_kib=floor, seconds=None, ratio=None, exit_code=rc)
    base = gpu_base = None
    for c in counts:
        out = bench.tmp / f"memory-out-{c}"
        cli = [
            "explain", str(sets[c]), "--out", str(out),
            "--model", args.model, "--weights", str(bench.weights_file()),
            "--methods", args.memory_methods, "--device", args.device, "--quiet",
        ]
        if args.batch_size:
            cli += ["--batch-size", str(args.batch_size)]
        log(f"memory: camscope {' '.join(shlex.quote(a) for a in cli)}")
        t0 = time.perf_counter()
        rc, peak, gpu_peak = run_camscope_peak(cli, bench.child_env(), peak_file)
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
        f"the photos: the first {min(10, len(bench.photo_paths))} of --images (linked), then same-size "
        "variants of them (flips, 180-degree turn, brightness/contrast) written to a temp folder",
    ]
    rows = table.rows
    bench.summary["memory_ratio"] = rows[-1]["ratio"] if len(rows) > 2 else None
    if len(rows) > 2 and rows[-1].get("gpu_ratio") is not None:
        bench.summary["memory_gpu_ratio"] = rows[-1]["gpu_ratio"]
    if len(rows) > 2:
        bench.summary["memory_above_imports_ratio"] = safe_div(rows[-1]["above_kib"], rows[1]["above_kib"])
    bench.tables.append(table)


def make_photo_set(bench: Bench, count: int) -> Path:
    """``count`` photos in a temp folder: the originals (linked), then same-size variants."""
    from PIL import Image, ImageEnhance, ImageOps

    folder = bench.tmp / f"photos-{count}"
    if folder.exists():
        return folder
    folder.mkdir()
    sources = bench.photo_paths[:10]
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
