#!/usr/bin/env python
"""How fast is ``camscope explain --ray`` against a local run on the same machine, and what does
each output kind cost per photo?

    python benchmarks/scale_ray.py                                   # every section
    python benchmarks/scale_ray.py --sections throughput --repeats 2
    python benchmarks/scale_ray.py --sections scorecam --scorecam-model resnet18

Sections (``--sections``, comma-separated):

* ``throughput``: Grad-CAM + Ablation-CAM (ResNet-50, random weights, every output kind) on
  ``--photos`` photos (the shared ImageNet samples, repeated under other names) and on
  ``--small`` photos, each run a fresh ``camscope explain`` process: locally, and with ``--ray``
  (a local Ray instance started by the command) at 1 worker x 2 CPUs and 2 workers x 1 CPU.
  Photos per second end to end; Ray's overhead per photo against the local run, in total and
  split by the two run sizes into a fixed cost (Ray's start, the workers' start) and a cost per
  photo (the slope); and the largest difference of the maps from the local run's.
* ``scorecam``: Score-CAM on ``--scorecam-photos`` photos, the same three ways, one photo per
  batch (so that both workers get work).
* ``outputs``: bytes and seconds per photo of each output kind (``--outputs maps``,
  ``overlays``, ``figures``) for three maps per photo (Grad-CAM, Ablation-CAM, Layer-CAM),
  written from maps computed once, in this process.

The photos are copied into a temporary folder (never into the repository), removed at the end.
The machine is usually shared: the load average is printed before and after. Not part of the
test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # this checkout's camscope, also for the runs in this process
    sys.path.insert(0, str(REPO))
DEFAULT_IMAGES = REPO.parent / "shared" / "images" / "imagenet-samples"
SUFFIXES = (".jpg", ".jpeg", ".png", ".JPEG")

CONFIGS = {
    "local": [],
    "ray 1 worker x 2 CPU": ["--ray", "--workers", "1", "--cpus-per-worker", "2"],
    "ray 2 workers x 1 CPU": ["--ray", "--workers", "2", "--cpus-per-worker", "1"],
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sections", default="throughput,scorecam,outputs")
    p.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of photos")
    p.add_argument("--photos", type=int, default=40, help="photos of the throughput runs (default 40)")
    p.add_argument("--small", type=int, default=4, help="photos of the short runs that give the fixed cost (default 4)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs of each setting, interleaved; the fastest is shown (on a shared machine the "
                   "least disturbed; every run is printed as it ends)")
    p.add_argument("--model", default="resnet50")
    p.add_argument("--scorecam-model", default="resnet50")
    p.add_argument("--scorecam-photos", type=int, default=4)
    p.add_argument("--outputs-photos", type=int, default=10)
    return p.parse_args(argv)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def photos(src: Path, n: int, dest: Path) -> Path:
    """``n`` photos: the samples in order, repeated under other names (copied: a symbolic link
    or hard link to one file is explained once)."""
    files = sorted(p for p in src.iterdir() if p.suffix in SUFFIXES)
    dest.mkdir(parents=True)
    for i in range(n):
        f = files[i % len(files)]
        shutil.copyfile(f, dest / f"r{i // len(files)}_{f.name}")
    return dest


def explain(folder: Path, out: Path, model: str, methods: str, extra: list[str]) -> tuple[float, float]:
    """One ``camscope explain`` process: (wall seconds, the manifest's run seconds)."""
    cmd = [sys.executable, "-m", "camscope", "explain", str(folder), "--out", str(out), "--model", model,
           "--weights-tag", "none", "--methods", methods, "--quiet", *extra]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return wall, float(json.loads((out / "manifest.json").read_text())["seconds"])


def map_difference(out: Path, ref: Path) -> tuple[float, int, int]:
    """(largest |difference| of the maps, byte-identical maps, maps)."""
    worst, same, total = 0.0, 0, 0
    for f in ref.rglob("*.npy"):
        other = out / f.relative_to(ref)
        a, b = np.load(f), np.load(other)
        worst = max(worst, float(np.abs(a - b).max()))
        same += f.read_bytes() == other.read_bytes()
        total += 1
    return worst, same, total


def run_configs(tmp: Path, sizes: list[int], src: Path, model: str, methods: str, repeats: int, common: list[str] = ()) -> dict:
    """{(config, n): {"wall": [...], "run": [...], "diff": (...)}}, configs interleaved."""
    folders = {n: photos(src, n, tmp / f"in{n}") for n in sizes}
    res: dict = {}
    for r in range(repeats):
        for n in sizes:
            for name, extra in CONFIGS.items():
                out = tmp / f"out-{n}-{list(CONFIGS).index(name)}-{r}"
                wall, run = explain(folders[n], out, model, methods, [*common, *extra])
                entry = res.setdefault((name, n), {"wall": [], "run": []})
                entry["wall"].append(wall)
                entry["run"].append(run)
                print(f"  {name:24s} {n:3d} photos: {wall:7.1f} s wall, {run:7.1f} s in the run  (load {load()})", flush=True)
                if name == "local":
                    entry["out"] = out
                else:
                    entry["diff"] = map_difference(out, res[("local", n)]["out"])
                    shutil.rmtree(out)
        for n in sizes:
            shutil.rmtree(res[("local", n)]["out"])
    return res


def section_throughput(args: argparse.Namespace, tmp: Path) -> None:
    n, small = args.photos, args.small
    print(f"\n## Grad-CAM + Ablation-CAM, {args.model} (random weights), all outputs: {small} and {n} photos\n", flush=True)
    res = run_configs(tmp / "throughput", [small, n], Path(args.images), args.model, "gradcam,ablationcam", args.repeats)
    med = {k: min(v["wall"]) for k, v in res.items()}
    slope = {c: (med[(c, n)] - med[(c, small)]) / (n - small) for c in CONFIGS}
    fixed = {c: med[(c, n)] - n * slope[c] for c in CONFIGS}
    print(f"\n| {n} photos | wall s | photos/s | s per photo (slope {small}->{n}) | fixed s | "
          f"overhead per photo vs local, total | of which per photo (slope) | maps vs local |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for c in CONFIGS:
        wall = med[(c, n)]
        if c == "local":
            over, per, diff = "", "", ""
        else:
            total = (wall - med[("local", n)]) / n
            over = f"{total:+.3f} s ({100 * (wall / med[('local', n)] - 1):+.0f} %)"
            per = f"{slope[c] - slope['local']:+.3f} s ({100 * (slope[c] / slope['local'] - 1):+.0f} %)"
            worst, same, total_maps = res[(c, n)]["diff"]
            diff = f"max abs diff {worst:.1e}, {same}/{total_maps} byte-identical"
        print(f"| {c} | {wall:.1f} | {n / wall:.2f} | {slope[c]:.3f} | {fixed[c]:.1f} | {over} | {per} | {diff} |")
    print(f"\n(fastest of {args.repeats} run(s) each; wall = the whole `camscope explain` process, "
          "Python start, model load and, with --ray, Ray's start included)")  # fmt: skip


def section_scorecam(args: argparse.Namespace, tmp: Path) -> None:
    n = args.scorecam_photos
    print(f"\n## Score-CAM, {args.scorecam_model} (random weights), all outputs, --images-per-batch 1: {n} photos\n", flush=True)
    # One photo per batch: Score-CAM gains nothing from grouping photos, and 4 photos in one
    # batch would leave the second worker without work.
    res = run_configs(tmp / "scorecam", [n], Path(args.images), args.scorecam_model, "scorecam", args.repeats,
                      ["--images-per-batch", "1"])  # fmt: skip
    local = min(res[("local", n)]["wall"])
    print("\n| config | wall s | s per photo | photos/s | speed-up vs local | maps vs local |")
    print("|---|---:|---:|---:|---:|---|")
    for c in CONFIGS:
        wall = min(res[(c, n)]["wall"])
        diff = ""
        if c != "local":
            worst, same, total = res[(c, n)]["diff"]
            diff = f"max abs diff {worst:.1e}, {same}/{total} byte-identical"
        print(f"| {c} | {wall:.1f} | {wall / n:.1f} | {n / wall:.3f} | {local / wall:.2f}x | {diff} |")


def section_outputs(args: argparse.Namespace, tmp: Path) -> None:
    """Bytes and seconds per photo of each output kind, from maps computed once."""
    from camscope.core.smoothing import parse_smoothing
    from camscope.engine import CamEngine
    from camscope.io.images import load_image
    from camscope.io.rundir import OUTPUT_KINDS, RunDir
    from camscope.models import load_model
    from camscope.run import Explained, ExplainOptions, PlannedImage, write_image

    methods = ["gradcam", "ablationcam", "layercam"]
    n = args.outputs_photos
    print(f"\n## Output kinds: {n} photos x {len(methods)} maps ({', '.join(methods)}), {args.model}\n", flush=True)
    loaded = load_model(args.model, weights_tag=None, progress=False)
    engine = CamEngine(loaded.model, None, methods=methods, normalization=loaded.preprocess.normalization, progress=False)
    folder = photos(Path(args.images), n, tmp / "outputs-in")
    variants = parse_smoothing([])
    items, explained = [], []
    for path in sorted(folder.iterdir()):
        photo = load_image(path)
        x = loaded.preprocess.to_tensor(photo)
        res = engine(x[None], top_k=1)
        e = Explained(photo, x, res.probabilities[0], res.targets[0].tolist(), {k: v[0].numpy() for k, v in res.maps.items()})
        items.append(PlannedImage(path, path.name, path.stem))
        explained.append(e)
    rows = []
    for kind in OUTPUT_KINDS:
        run = RunDir(tmp / f"outputs-{kind}")
        opts = ExplainOptions(model="resnet50", methods=methods, outputs=(kind,))
        t0 = time.perf_counter()
        for item, e in zip(items, explained, strict=True):
            write_image(run, item, e, loaded, variants, methods, opts.outputs, alpha=opts.alpha, colormap=opts.colormap)
        seconds = (time.perf_counter() - t0) / n
        files = [p for p in run.root.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files) / n
        rows.append((kind, len(files) / n, size, seconds))
    print("| `--outputs` | files per photo | bytes per photo | s per photo (writing) | 50 000 photos: size | 50 000 photos: CPU-hours writing |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, files, size, seconds in rows:
        print(f"| {kind} | {files:.0f} | {size / 1e3:.0f} kB | {seconds:.3f} | {size * 50_000 / 1e9:.1f} GB | {seconds * 50_000 / 3600:.1f} |")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        raise SystemExit('the --ray runs need Ray: pip install -e ".[ray]"') from None
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), ray {ray_version}, Python {platform.python_version()}; load {load()}")  # fmt: skip
    sections = {"throughput": section_throughput, "scorecam": section_scorecam, "outputs": section_outputs}
    with tempfile.TemporaryDirectory(prefix="camscope-scale-") as tmp:
        for name in args.sections.split(","):
            t0 = time.perf_counter()
            sections[name](args, Path(tmp))
            print(f"\n({name}: {time.perf_counter() - t0:.0f} s; load {load()})", flush=True)


if __name__ == "__main__":
    main()
