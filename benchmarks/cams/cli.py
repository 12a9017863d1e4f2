"""The command line of ``benchmarks/bench_cams.py`` and its main loop over the sections."""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from collections.abc import Sequence

import torch

from .common import DEFAULT_IMAGES, REPO, Report, log, machine_info
from .context import Bench
from .pgc import SHARED_METHODS
from .sections import sections
from .sections.study import STUDY_METHODS

SECTIONS = sections()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    names = list(SECTIONS)
    p = argparse.ArgumentParser(
        description="camscope vs pytorch-grad-cam: speed, map agreement and memory, side by side.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--sections", default=",".join(names), help=f"comma-separated subset of: {', '.join(names)}")
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
        help="naive Score-CAM: tests/reference.py (falls back to local when absent) or the local one here",
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
        p.error(f"unknown section(s) {', '.join(bad)}; choose from: {', '.join(names)}")
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


def main(script: str, argv: Sequence[str] | None = None) -> int:
    """Run the chosen sections in order; ``script`` is the entry point, for the command line
    written into the reports."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    exe = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else "python"
    command = " ".join(
        shlex.quote(a) for a in [exe, os.path.relpath(script, REPO), *(sys.argv[1:] if argv is None else argv)]
    )
    info = machine_info(args.device)
    bench = Bench(args)
    targets = [t for s in SECTIONS.values() for t in s.targets]
    report = Report(args, command, info, bench.model_desc, targets)

    def write(final: bool) -> None:
        report.write(bench.tables, bench.summary, [p.as_json() for p in bench.photos], final=final)

    log(f"temp folder: {bench.tmp}")
    log(f"model: {bench.model_desc}")
    try:
        if any(SECTIONS[s].needs_photos for s in args.sections):
            bench.load_photos(args.n_images)
            bench.warmup()
        for name in args.sections:
            log(f"section {name}")
            t0 = time.perf_counter()
            SECTIONS[name].run(bench)
            bench.summary.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)
            bench.report_tables()
            write(final=False)
    finally:
        if args.keep_outputs:
            log(f"outputs kept in {bench.tmp}")
        else:
            shutil.rmtree(bench.tmp, ignore_errors=True)
    write(final=True)
    return 0
