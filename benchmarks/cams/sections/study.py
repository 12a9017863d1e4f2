"""study: the classic study end to end (photos x 3 methods x plain + eigen+aug): camscope's CLI
in a fresh process against the script a notebook would run with pytorch-grad-cam."""

from __future__ import annotations

import shlex
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..common import Table, Target, fmt_ratio, fmt_seconds, log, safe_div
from ..context import run_child
from ..pgc import PGC_DEFAULT_BATCH, SLOW_METHODS
from . import section

if TYPE_CHECKING:
    from ..context import Bench

STUDY_METHODS = ("gradcam", "ablationcam", "scorecam")
STUDY_VARIANTS = ("plain", "eigen+aug")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TARGETS = (Target("study_speedup", "classic study end to end: speed-up vs pytorch-grad-cam", ">=", 5.0),)


@section("study", order=50, targets=TARGETS)
def study(bench: Bench) -> None:
    args = bench.args
    n = min(args.study_images, len(bench.photo_paths))
    paths = bench.photo_paths[:n]
    study_dir = bench.tmp / "study-photos"
    study_dir.mkdir(exist_ok=True)
    for p in paths:  # links, not copies: the photos stay where they are
        link = study_dir / p.name
        if not link.exists():
            link.symlink_to(p.resolve())
    methods = list(args.study_methods)
    # camscope: the CLI, as a user runs it.
    out = bench.tmp / "study-camscope"
    cmd = bench.cli_command(
        "explain", str(study_dir), "--out", str(out),
        "--model", args.model, "--weights", str(bench.weights_file()),
        "--methods", ",".join(methods), "--smooth", "eigen,aug",
        "--device", args.device,
    )
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
    rc = run_child(cmd, bench.child_env())
    cs_total = time.perf_counter() - t0
    if rc != 0:
        log(f"study: camscope exited with {rc}")
    log(f"  -> camscope study: {fmt_seconds(cs_total)} s")

    ref_total, ref_label, per = None, "skipped (--skip-reference)", {}
    if not args.skip_reference:
        per, load_s = pgc_study(bench, paths, methods, args.study_reference_images)
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
    table.add(tool="pytorch-grad-cam (script)", seconds=ref_total, ratio=None, how=ref_label)
    table.add(
        tool="camscope explain (CLI)" + ("" if args.study_precision == "fp32" else f" --precision {args.study_precision}"),
        seconds=cs_total,
        ratio=safe_div(ref_total, cs_total),
        how=f"measured, wall time of the CLI process (exit code {rc})",
    )
    if per:
        bench.tables.append(detail_table(per, n))
    table.notes += [
        "camscope writes more per photo (overlay PNGs, .npy maps, a comparison figure, manifest, CSV)",
        f"camscope runs once per photo the 6 augmented views (flip x 0.9/1.0/1.1) and serves the plain "
        f"maps from the identity view; batch for Ablation-/Score-CAM: camscope {bench.camscope_batch_label()}, "
        f"pytorch-grad-cam its defaults {PGC_DEFAULT_BATCH['ablationcam']} / "
        f"{PGC_DEFAULT_BATCH['scorecam']}",
    ]
    bench.summary["study_speedup"] = safe_div(ref_total, cs_total)
    bench.summary["study_reference_label"] = ref_label
    bench.tables.append(table)


def detail_table(per: dict[tuple[str, str], list[float]], n: int) -> Table:
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
    return detail


def pgc_study(
    bench: Bench, paths: Sequence[Path], methods: Sequence[str], slow_limit: int
) -> tuple[dict[tuple[str, str], list[float]], list[float]]:
    """The pytorch-grad-cam script: seconds per (method, variant) and photo, and the seconds
    spent loading each photo."""
    import cv2
    from pytorch_grad_cam.utils.image import preprocess_image, show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    out = bench.tmp / "study-pgc"
    out.mkdir(exist_ok=True)
    per: dict[tuple[str, str], list[float]] = {(m, v): [] for m in methods for v in STUDY_VARIANTS}
    load_s: list[float] = []
    model, target_layers = bench.model, [bench.layers["layer4"]]
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        rgb = np.float32(cv2.resize(bgr[:, :, ::-1], (224, 224))) / 255
        x = preprocess_image(rgb, mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)).to(bench.device)
        with torch.no_grad():
            c = int(model(x).argmax())
        targets = [ClassifierOutputTarget(c)]
        load_s.append(time.perf_counter() - t0)
        for m in methods:
            if m in SLOW_METHODS and i >= slow_limit:
                continue
            t0 = time.perf_counter()
            # As a notebook does it: the CAM classes' own defaults (batch 32 / 16).
            with bench.pgc_class(m)(model=model, target_layers=target_layers) as cam:
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
        model.zero_grad(set_to_none=True)
    return {k: v for k, v in per.items() if v}, load_s
