"""The report end to end on a tiny model: DIR/metrics/, metrics.csv, summary.json, report.html,
metric caching, HTML escaping, and the page opened in headless Chromium.

The Chromium test is skipped (with the reason) only when no Chromium binary is found; CI installs
the Debian packages ``chromium`` and ``chromium-driver``. ``CAMSCOPE_CHROMIUM`` overrides the path.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import camscope.reporting
from camscope.cli import main
from camscope.core.threads import torch_threads
from camscope.models import LoadedModel, Preprocess
from camscope.reporting import build_report, report_after_explain
from camscope.reporting.evaluate import MeasureSettings
from camscope.run import ExplainOptions, run_explain

SPECIAL_DIR = '<script>alert("x")<'
SPECIAL_FILE = "script> & 'q'.png"
SPECIAL_REL = f"{SPECIAL_DIR}/{SPECIAL_FILE}"  # the rel name reads <script>alert("x")</script> & 'q'.png
CLASSES = ["tabby", "beagle", 'fox & "hen"', "<b>bold</b>", "zebra"]
N_VARIANTS = 4  # gradcam, scorecam, each plain and +aug
STEPS = 10


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, len(CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class Exploding(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model must not run when every metric is cached")


def _loaded(model: nn.Module | None = None) -> LoadedModel:
    torch.manual_seed(0)
    return LoadedModel((model or Tiny()).eval(), "tiny", "random", list(CLASSES), Preprocess("classic", (64, 64)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    src = root / "photos"
    (src / SPECIAL_DIR).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, rel in enumerate(["cat.png", "dog.jpg", SPECIAL_REL]):
        arr = rng.integers(0, 255, (40 + 8 * i, 56, 3), dtype=np.uint8)
        arr[10:30, 10:30] = 255
        Image.fromarray(arr).save(src / rel)
    boxes = root / "boxes.csv"
    boxes.write_text("file,x0,y0,x1,y1\ncat.png,10,10,30,30\n", encoding="utf-8")
    out = root / "out"
    loaded = _loaded()
    with torch_threads(1):
        res = run_explain(
            [src], out,
            ExplainOptions(methods=["gradcam", "scorecam"], smoothing=["aug"], figures=False, quiet=True, device="cpu"),
            loaded=loaded,
        )
        assert not res.failed and len(res.completed) == 3
        # Pretend the true class of dog.jpg is known and is not the predicted one.
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        dog = manifest["images"]["dog.jpg"]
        wrong = dog["top5"][1]
        dog.update(true_class=wrong["class"], true_name=wrong["name"], correct=False)
        (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        code = report_after_explain(out, loaded, boxes=boxes, measure=MeasureSettings(steps=STEPS), progress=False)
    assert code == 0
    return out


def _metrics(out: Path) -> dict[str, dict]:
    return {
        p.relative_to(out / "metrics").as_posix()[: -len(".json")]: json.loads(p.read_text(encoding="utf-8"))
        for p in (out / "metrics").rglob("*.json")
    }


def _strict_json(text: str) -> dict:
    def no_nan(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=no_nan)


def test_outputs_are_consistent(run_dir: Path) -> None:
    recs = _metrics(run_dir)
    assert sorted(recs) == sorted(["cat.png", "dog.jpg", SPECIAL_REL])
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 3 * N_VARIANTS
    for row in rows:
        v = recs[row["file"]]["targets"][0]["variants"][row["variant"]]
        for key in ("deletion_auc", "insertion_auc", "road_morf", "road_lerf", "top10_energy", "entropy"):
            assert float(row[key]) == pytest.approx(v[key], abs=1e-6), key
        assert float(row["gap"]) == pytest.approx(v["insertion_auc"] - v["deletion_auc"], abs=1e-6)
        assert len(v["curves"]["deletion"]) == STEPS + 1
    summary = _strict_json((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert summary["n_photos"] == 3 and len(summary["ranking"]) == N_VARIANTS
    for name, s in summary["variants"].items():
        vals = [r["targets"][0]["variants"][name]["deletion_auc"] for r in recs.values()]
        assert s["metrics"]["deletion_auc"]["mean"] == pytest.approx(np.mean(vals), abs=1e-6)
        assert s["metrics"]["deletion_auc"]["std"] == pytest.approx(np.std(vals), abs=1e-6)
        assert s["metrics"]["pointing_game"]["n"] == 1  # only cat.png has a box
    assert summary["images"]["dog.jpg"]["correct"] is False
    assert summary["images"]["dog.jpg"]["findings"][0].startswith("Not the file name's label: the model predicted")
    # Localisation only where a box is known, in the 64x64 input frame (photo 56x40 -> 64x64).
    cat = recs["cat.png"]
    assert cat["boxes"][0] == pytest.approx([10 * 64 / 56, 16.0, 30 * 64 / 56, 48.0], abs=1e-3)
    assert isinstance(cat["targets"][0]["variants"]["gradcam"]["pointing_game"], bool)
    assert "pointing_game" not in recs["dog.jpg"]["targets"][0]["variants"]["gradcam"]
    # Agreement between every pair of variants.
    assert len(cat["targets"][0]["agreement"]) == N_VARIANTS * (N_VARIANTS - 1) // 2


def test_html_escapes_user_strings(run_dir: Path) -> None:
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    # Two script elements only, the explorer's data (JSON, every '<' escaped) and its code
    # (the package's own file); outside them no script and nothing injected.
    blocks = re.findall(r"<script\b([^>]*)>(.*?)</script>", page, re.S | re.I)
    assert [attrs for attrs, _ in blocks] == [' type="application/json" id="camscope-data"', ""]
    assert "<" not in blocks[0][1] and SPECIAL_REL in [p["rel"] for p in json.loads(blocks[0][1])["photos"]]
    assert blocks[1][1] == (Path(camscope.reporting.__file__).parent / "assets" / "explore.js").read_text(encoding="utf-8")
    assert "<script" not in re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.S | re.I).lower()
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    # Jinja2's autoescape (markupsafe) writes quotes as &#34; and &#39;.
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#39;q&#39;.png" in page
    assert "fox &amp; &#34;hen&#34;" in page
    # Links to the overlays are percent-encoded relative URLs inside DIR.
    overlay = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))["images"][SPECIAL_REL]["files"]["gradcam"][0]
    assert f'src="{quote(overlay)}"' in page
    assert "%3Cscript%3Ealert%28%22x%22%29%3C/script%3E%20%26%20%27q%27" in page
    assert '>not the file-name label</span>' in page
    assert "http://" not in page.replace('href="http', "")  # no external resources


def test_rebuild_reuses_cached_metrics(run_dir: Path, tmp_path: Path) -> None:
    before = _metrics(run_dir)
    with torch_threads(1):
        ev, files = build_report(run_dir, model=_loaded(Exploding()), steps=STEPS)
    model_metrics = ("deletion_insertion", "average_drop", "road")  # the default set's model-based metrics
    assert ev.computed == dict.fromkeys(model_metrics, 0)
    assert ev.reused == dict.fromkeys(model_metrics, 3 * N_VARIANTS)
    with pytest.deprecated_call(match="per metric now"):  # camscope 0.1's group names still read
        assert ev.reused["faithfulness"] == ev.reused["road"] == 3 * N_VARIANTS
    assert _metrics(run_dir) == before  # boxes kept from the cache too
    # `camscope report DIR` through its argparse glue: no model is even built (the manifest's
    # model "tiny" is not a torchvision model, so building it would fail).
    assert main(["report", str(run_dir), "--steps", str(STEPS), "--quiet"]) == 0
    assert _metrics(run_dir) == before


def test_changed_map_is_remeasured_and_map_only_mode(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    npy = out / manifest["images"]["cat.png"]["files"]["scorecam"][1]
    np.save(npy, np.load(npy)[::-1].copy())
    with torch_threads(1):
        ev, _ = build_report(out, model=_loaded(), steps=STEPS)
    assert ev.computed == {"deletion_insertion": 1, "average_drop": 1, "road": 1}
    assert ev.reused == {"deletion_insertion": 3 * N_VARIANTS - 1, "average_drop": 3 * N_VARIANTS - 1, "road": 3 * N_VARIANTS - 1}
    ev2, files = build_report(out, faithfulness=False, recompute=True)
    assert ev2.computed == {} and ev2.maps_computed == 0  # no model-based metric selected
    v = _metrics(out)["cat.png"]["targets"][0]["variants"]["gradcam"]
    assert "deletion_auc" not in v and "entropy" in v
    assert isinstance(v["pointing_game"], bool)  # localisation kept from the cache without --boxes
    assert files.html.is_file()


# ---------------------------------------------------------------------------------------------
# Headless Chromium
# ---------------------------------------------------------------------------------------------

PROBE = """
window.__errs = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  if (t && t !== window && t.tagName) { window.__errs.push('failed to load ' + t.tagName + ' ' + (t.currentSrc || t.src || t.href || '')); }
  else { window.__errs.push('error: ' + e.message); }
}, true);
window.addEventListener('unhandledrejection', function (e) { window.__errs.push('unhandled rejection: ' + e.reason); });
['error', 'warn'].forEach(function (level) {
  var orig = console[level];
  console[level] = function () { window.__errs.push('console.' + level + ': ' + Array.prototype.join.call(arguments, ' ')); return orig.apply(console, arguments); };
});
document.addEventListener('DOMContentLoaded', function () {
  // Images load lazily; load them all now, so that the load event waits for every one.
  Array.prototype.forEach.call(document.images, function (i) { i.loading = 'eager'; });
});
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                   .map(function (i) { return (i.getAttribute('src') || '').slice(0, 120); });
  var out = document.createElement('pre');
  out.id = 'camscope-probe';
  out.textContent = JSON.stringify({images: imgs.length, broken: broken, errors: window.__errs});
  document.body.appendChild(out);
});
"""


def _chromium() -> str | None:
    env = os.environ.get("CAMSCOPE_CHROMIUM")
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _chromium_run(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000",
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120, check=False)


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def _probe(binary: str, profile: Path, page: Path, url: str) -> dict:
    """Open a copy of ``page`` with the probe script injected; return what the probe saw."""
    text = page.read_text(encoding="utf-8")
    page.with_name("report.probe.html").write_text(
        text.replace("<head>", f"<head><script>{PROBE}</script>", 1), encoding="utf-8"
    )
    res = _chromium_run(binary, profile, "--dump-dom", url)
    m = re.search(r'<pre id="camscope-probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"probe result missing (rc {res.returncode}): {res.stderr[-2000:]}"
    import html as _html

    result = json.loads(_html.unescape(m.group(1)))
    result["console"] = _console_lines(res.stderr)
    return result


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _serve(folder: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_report_opens_in_headless_chromium(run_dir: Path, tmp_path: Path) -> None:
    binary = _chromium()
    if binary is None:
        pytest.skip(
            "Chromium not found (chromium, chromium-browser, google-chrome; or set CAMSCOPE_CHROMIUM): "
            "install the Debian packages chromium and chromium-driver"
        )
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    n_img = (out / "report.html").read_text(encoding="utf-8").count("<img ")
    assert n_img >= 3 * (1 + N_VARIANTS)  # photo + grid per photo, plus plots

    # 1. Served over HTTP: every relative, percent-encoded link must resolve.
    with _serve(out) as base:
        # Negative control: the probe does see a missing image and a console error.
        bad = out / "bad" / "report.html"
        bad.parent.mkdir()
        bad.write_text('<html><head></head><body><img src="missing%20x.png">'
                       '<script>console.error("boom")</script></body></html>', encoding="utf-8")
        seen = _probe(binary, tmp_path / "profile0", bad, f"{base}/bad/report.probe.html")
        assert seen["broken"] == ["missing%20x.png"] and len(seen["errors"]) == 2 and seen["console"]
        seen = _probe(binary, tmp_path / "profile1", out / "report.html", f"{base}/report.probe.html")
        # The explorer adds a thumbnail per photo and the photo it shows.
        n_img += 3 + 1
        assert seen == {"images": n_img, "broken": [], "errors": [], "console": []}
        shot = tmp_path / "report.png"
        res = _chromium_run(
            binary, tmp_path / "profile2", "--hide-scrollbars", "--window-size=1280,2400",
            f"--screenshot={shot}", f"{base}/report.html",
        )
        assert _console_lines(res.stderr) == []
    assert shot.is_file() and shot.stat().st_size > 10_000
    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        assert np.unique(np.asarray(im.convert("L").resize((64, 120)))).size > 20  # not a blank page

    # 2. --embed: report.html alone, moved away from DIR, still shows every image.
    with torch_threads(1):
        build_report(out, steps=STEPS, embed=True)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(out / "report.html", alone / "report.html")
    page = (alone / "report.html").read_text(encoding="utf-8")
    assert not re.search(r'<img src="(?!data:)', page)
    seen = _probe(binary, tmp_path / "profile3", alone / "report.html", (alone / "report.probe.html").as_uri())
    assert seen["broken"] == [] and seen["errors"] == [] and seen["console"] == []
    assert seen["images"] == n_img
