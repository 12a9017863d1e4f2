#!/usr/bin/env python
"""What a 200-photo report costs: page size and load time in headless Chromium, linked and --embed.

    python benchmarks/report_scale.py --out runs/report-scale
    python benchmarks/report_scale.py --out runs/report-scale --photos-from ../shared/images/imagenet-samples

Builds a run folder of ``--n`` photos (default 200; generated 500x375 JPEGs: smooth random colour
fields with texture, or random crops of the photos in ``--photos-from``), explains them with a
small CNN with random weights that downsamples like ResNet (224x224 input, 7x7 target layer;
Grad-CAM and Score-CAM, plain and +aug: 4 maps per photo), measures them (deletion/insertion
with 25 steps, Average Drop; ``--no-road``: ROAD's sparse solves would take ~2 s per map on a
CPU) and writes the report twice: linked (``DIR/report.html`` + the files in ``DIR``) and
``--embed`` (one self-contained file, opened from a folder of its own).

Then, per mode, a fresh headless Chromium opens the page ``--loads`` times (file:// URL, window
1280x1000) and reports, from the Navigation Timing API: DOMContentLoaded, the ``load`` event and
the explorer being ready (its first map drawn: the ``camscope-explorer-ready`` performance mark);
first load and median of the others. Sizes: the HTML file, its explorer data block, and for the
linked page every file it references plus the bytes of the images actually loaded by the load
event (lazy loading leaves the rest for scrolling).

Needs selenium, ``chromium`` and ``chromium-driver`` (Debian). Not part of the test suite.
Results: printed as Markdown and written to ``OUT/scale.json``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import torch
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

CLASSES = [f"class {i}" for i in range(10)]
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--window-size=1280,1000",
)


class Strided(nn.Module):
    """Five stride-2 3x3 convolutions (224 -> 7, like ResNet's layer4), GAP, linear."""

    def __init__(self) -> None:
        super().__init__()
        chans = [3, 8, 16, 16, 32, 32]
        layers: list[nn.Module] = []
        for a, b in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(chans[-1], len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


def generated_photo(rng: np.random.Generator, size: tuple[int, int] = (500, 375)) -> Image.Image:
    """Smooth random colour field + mid-frequency texture + noise: compresses like a photo."""
    w, h = size
    out = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((4, 110.0), (16, 40.0), (64, 18.0)):
        field = rng.normal(0.0, 1.0, (max(2, cells * h // w), cells, 3)).astype(np.float32)
        layer = np.stack([np.asarray(Image.fromarray(field[..., c], mode="F").resize((w, h), Image.Resampling.BICUBIC))
                          for c in range(3)], axis=-1)
        out += amp * layer
    out += 128.0 + rng.normal(0.0, 5.0, out.shape)
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def cropped_photo(rng: np.random.Generator, sources: list[Path]) -> Image.Image:
    with Image.open(sources[rng.integers(len(sources))]) as im:
        im = im.convert("RGB")
        s = rng.uniform(0.6, 0.95)
        cw, ch = int(im.width * s), int(im.height * s)
        x, y = int(rng.integers(0, im.width - cw + 1)), int(rng.integers(0, im.height - ch + 1))
        im = im.crop((x, y, x + cw, y + ch))
        return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else im


def build_run(out: Path, n: int, photos_from: Path | None, seed: int) -> tuple[Path, float]:
    """Photos, explain, metrics, linked report; returns (run folder, seconds)."""
    from camscope.models import LoadedModel, Preprocess
    from camscope.reporting import evaluate_run, write_report
    from camscope.run import ExplainOptions, run_explain

    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    src = out / "photos"
    src.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in photos_from.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")) if photos_from else []
    for i in range(n):
        img = cropped_photo(rng, sources) if sources else generated_photo(rng)
        img.save(src / f"photo_{i:03d}.jpg", quality=90)
    torch.manual_seed(seed)
    loaded = LoadedModel(Strided().eval(), "strided-cnn", "random (no weights)", list(CLASSES), Preprocess("classic", (224, 224)))
    run = out / "run"
    opts = ExplainOptions(methods=["gradcam", "scorecam"], smoothing=["aug"], figures=False, quiet=True, device="cpu")
    res = run_explain([src], run, opts, loaded=loaded)
    if res.failed:
        raise SystemExit(f"explain failed for {len(res.failed)} photos: {res.failed[:3]}")
    # The generated photos have no true class; give each one (a fifth disagree with the prediction)
    # so that the misclassified filter has something to show.
    manifest = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    for i, rec in enumerate(manifest["images"].values()):
        truth = rec["top5"][1 if i % 5 == 0 else 0]
        rec.update(true_class=truth["class"], true_name=truth["name"], correct=i % 5 != 0)
    (run / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    ev = evaluate_run(run, model=loaded, road=False)
    write_report(run, ev.images)
    return run, time.perf_counter() - t0


def referenced_files(page: Path) -> list[Path]:
    """Distinct files inside the page's folder named by its src/href attributes."""
    text = page.read_text(encoding="utf-8")
    found = []
    for url in dict.fromkeys(re.findall(r'(?:src|href)="([^"#:]+)"', text)):
        path = page.parent / unquote(url.replace("&amp;", "&"))
        if path.is_file():
            found.append(path)
    return found


def measure(page: Path, loads: int) -> dict[str, Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in FLAGS:
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="camscope-scale-")
    opts.add_argument(f"--user-data-dir={profile}")
    drv = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    runs = []
    try:
        for _ in range(loads):
            drv.get("about:blank")
            drv.get(page.as_uri())
            end = time.monotonic() + 60
            while drv.execute_script("return document.getElementById('camscope-explorer').getAttribute('data-ready')") != "true":
                if time.monotonic() > end:
                    raise SystemExit("the explorer did not become ready within 60 s")
                time.sleep(0.01)
            runs.append(drv.execute_script("""
              const nav = performance.getEntriesByType('navigation')[0];
              const mark = performance.getEntriesByName('camscope-explorer-ready')[0];
              const loaded = [...document.images].filter(i => i.complete && i.naturalWidth > 0);
              return {dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd, ready: mark.startTime,
                      images: document.images.length, loaded: loaded.map(i => i.currentSrc)};"""))
        # Lazy thumbnails: those in view load when the explorer is scrolled to, the rest when the
        # grid (a scroll container) is scrolled.
        count = "return [...document.querySelectorAll('#ex-grid img')].slice(arguments[0]).filter(i => i.complete && i.naturalWidth > 0).length"
        drv.execute_script("document.getElementById('camscope-explorer').scrollIntoView()")
        time.sleep(1.0)
        in_view = drv.execute_script(count, 0)
        drv.execute_script("const g = document.getElementById('ex-grid'); g.scrollTop = g.scrollHeight")
        time.sleep(1.0)
        last = drv.execute_script(count, -8)
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)
    loaded_bytes = 0
    for url in dict.fromkeys(runs[-1]["loaded"]):
        if url.startswith("file:"):
            loaded_bytes += Path(unquote(urlparse(url).path)).stat().st_size
    rest = runs[1:] or runs

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in rest), 1)

    return {
        "first": {k: round(runs[0][k], 1) for k in ("dcl", "load", "ready")},
        "median": {k: med(k) for k in ("dcl", "load", "ready")},
        "images": runs[-1]["images"],
        "images_loaded_at_load": len(runs[-1]["loaded"]),
        "linked_bytes_loaded_at_load": loaded_bytes,
        "thumbnails_loaded_in_view": in_view,
        "last_8_thumbnails_loaded_after_grid_scroll": last,
    }


def data_block_bytes(page: Path) -> int:
    m = re.search(r'<script type="application/json" id="camscope-data">(.*?)</script>', page.read_text(encoding="utf-8"), re.S)
    return len(m.group(1).encode("utf-8")) if m else 0


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="working folder (photos/, run/, alone/)")
    p.add_argument("--n", type=int, default=200, help="photos (default 200)")
    p.add_argument("--photos-from", type=Path, default=None, help="random crops of these photos instead of generated ones")
    p.add_argument("--loads", type=int, default=7, help="page loads per mode (first + median of the rest; default 7)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest for a tiny CNN on 2 cores)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse the run and metrics in OUT/run if there; only rewrite the reports and measure")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from camscope.reporting import write_report

    run = args.out / "run"
    build_s = None
    if not (args.reuse and (run / "report.html").is_file()):
        if args.out.exists():
            shutil.rmtree(args.out)
        run, build_s = build_run(args.out, args.n, args.photos_from, args.seed)
    else:
        write_report(run)  # the page of the current code, from the cached metrics
    linked = run / "report.html"
    linked_html = linked.stat().st_size
    files = referenced_files(linked)
    linked_total = linked_html + sum(f.stat().st_size for f in files)
    linked_data = data_block_bytes(linked)

    t0 = time.perf_counter()
    embed_run = args.out / "embed-run"
    if embed_run.exists():
        shutil.rmtree(embed_run)
    shutil.copytree(run, embed_run)
    write_report(embed_run, embed=True)
    embed_s = time.perf_counter() - t0
    alone = args.out / "alone"
    alone.mkdir(exist_ok=True)
    shutil.copy(embed_run / "report.html", alone / "report.html")
    embed_html = (alone / "report.html").stat().st_size

    res = {
        "photos": args.n,
        "maps_per_photo": 4,
        "source": str(args.photos_from) if args.photos_from else "generated 500x375",
        "build_seconds": None if build_s is None else round(build_s, 1),
        "embed_write_seconds": round(embed_s, 1),
        "linked": {"html_bytes": linked_html, "data_block_bytes": linked_data, "files_referenced": len(files),
                   "total_bytes": linked_total, **measure(linked, args.loads)},
        "embed": {"html_bytes": embed_html, "data_block_bytes": data_block_bytes(alone / "report.html"),
                  **measure(alone / "report.html", args.loads)},
    }
    (args.out / "scale.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    lk, em = res["linked"], res["embed"]
    built = "run and metrics reused" if build_s is None else f"built in {res['build_seconds']} s (explain + metrics + linked report)"
    print(f"{args.n} photos x 4 maps ({res['source']}); {built}; --embed rewrite {res['embed_write_seconds']} s\n")
    print("| mode | report.html | of which explorer data | with linked files | loaded by the load event "
          "| DOMContentLoaded | load | explorer ready |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in (("linked", lk), ("--embed", em)):
        total = mb(r["total_bytes"]) + f" ({r['files_referenced']} files)" if "total_bytes" in r else "–"
        at_load = (f"{r['images_loaded_at_load']} of {r['images']} images"
                   + (f", {mb(r['linked_bytes_loaded_at_load'])}" if name == "linked" else ""))
        f, m = r["first"], r["median"]
        print(f"| {name} | {mb(r['html_bytes'])} | {mb(r['data_block_bytes'])} | {total} | {at_load} "
              f"| {m['dcl']:.0f} ms (first {f['dcl']:.0f}) | {m['load']:.0f} ms (first {f['load']:.0f}) "
              f"| {m['ready']:.0f} ms (first {f['ready']:.0f}) |")
    print(f"\nThumbnails (of {args.n}) loaded once the explorer is scrolled into view: linked "
          f"{lk['thumbnails_loaded_in_view']}, --embed {em['thumbnails_loaded_in_view']}; of the last 8 after "
          f"scrolling the grid to its end: {lk['last_8_thumbnails_loaded_after_grid_scroll']} and "
          f"{em['last_8_thumbnails_loaded_after_grid_scroll']}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
