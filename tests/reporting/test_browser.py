"""The report's explorer in a real browser (selenium + headless Chromium), and its static parts.

One run folder (tiny model, 96x128 input, Grad-CAM and Score-CAM, plain and +aug) is built per
module, with a map written by the test (known values), an empty map (degenerate), two photos
marked misclassified and two photos whose names carry markup. One browser serves every test.

The browser tests skip (with the reason) when selenium, Chromium or chromedriver is missing; CI
installs the Debian packages ``chromium`` and ``chromium-driver`` and the ``test`` extra.
``CAMSCOPE_CHROMIUM`` / ``CAMSCOPE_CHROMEDRIVER`` override the binaries' paths.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from camscope.core.threads import torch_threads
from camscope.io.rundir import is_random_weights
from camscope.models import LoadedModel, Preprocess
from camscope.reporting import evaluate_run, write_report
from camscope.reporting.explore import (
    LOW_AGREEMENT,
    colormap_lut,
    encode_map,
    explorer_data,
    json_for_script,
    map_grid,
    weights_banner,
)
from camscope.run import ExplainOptions, run_explain

CLASSES = ["tabby", "beagle", 'fox & "hen"', "<b>bold</b>", "zebra"]
SCRIPT_DIR = "<script>alert(1)<"
SCRIPT_REL = f"{SCRIPT_DIR}/script>.png"  # reads <script>alert(1)</script>.png
IMG_REL = "<img src=x onerror=alert(2)>.png"
RELS = ["a.png", "b.png", "c.png", "d.jpg", SCRIPT_REL, IMG_REL]
MISCLASSIFIED = {"b.png", IMG_REL}
H, W = 96, 128  # model input; embedded maps 48x64 (box factor 2)
KNOWN = "a.png"  # its plain Grad-CAM map is written by the test: 8x8 blocks of known values
EMPTY = ("c.png", "scorecam")  # an all-zero map: degenerate "empty"
STEPS = 5


def known_map() -> np.ndarray:
    """8x8 blocks of 12x16 pixels; block (r, c) holds (8 r + c) / 63."""
    blocks = np.arange(64, dtype=np.float32).reshape(8, 8) / 63.0
    return np.kron(blocks, np.ones((H // 8, W // 8), dtype=np.float32))


def _finite(x: Any) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _records(out: Path) -> dict[str, dict]:
    return {rel: json.loads((out / "metrics" / f"{rel}.json").read_text(encoding="utf-8")) for rel in RELS}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, make_tiny_cnn: Callable[..., Any]) -> Path:
    root = tmp_path_factory.mktemp("explorer")
    src = root / "photos"
    (src / SCRIPT_DIR).mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i, rel in enumerate(RELS):
        arr = rng.integers(0, 255, (48 + 4 * i, 64, 3), dtype=np.uint8)
        arr[8 + 2 * i : 30, 10 : 30 + 3 * i] = 255
        Image.fromarray(arr).save(src / rel)
    out = root / "linked"
    torch.manual_seed(0)
    loaded = LoadedModel(make_tiny_cnn(seed=3, classes=len(CLASSES)), "tiny", "random (no weights)",
                         list(CLASSES), Preprocess("classic", (H, W)))
    with torch_threads(1):
        res = run_explain(
            [src], out,
            ExplainOptions(methods=["gradcam", "scorecam"], smoothing=["aug"], figures=False, quiet=True,
                           device="cpu", colormap="viridis", alpha=0.4),
            loaded=loaded,
        )
        assert not res.failed and len(res.completed) == len(RELS)
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        for rel, rec in manifest["images"].items():
            truth = rec["top5"][1 if rel in MISCLASSIFIED else 0]
            rec.update(true_class=truth["class"], true_name=truth["name"], correct=rel not in MISCLASSIFIED)
        (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        files = manifest["images"]
        np.save(out / [f for f in files[KNOWN]["files"]["gradcam"] if f.endswith(".npy")][0], known_map())
        rel, variant = EMPTY
        np.save(out / [f for f in files[rel]["files"][variant] if f.endswith(".npy")][0], np.zeros((H, W), np.float32))
        ev = evaluate_run(out, model=loaded, steps=STEPS, road=False)
    assert ev.exit_code == 0
    write_report(out, ev.images, plots=False)  # matplotlib's plots would double the setup time
    embed = root / "embed"
    shutil.copytree(out, embed)
    write_report(embed, embed=True, plots=False)
    alone = root / "alone"
    alone.mkdir()
    shutil.copy(embed / "report.html", alone / "report.html")  # one file, away from its folder
    return out


# ---------------------------------------------------------------------------------------------
# Static: the page's data block, script and banner (no browser)
# ---------------------------------------------------------------------------------------------

SCRIPT_RE = re.compile(r"<script\b([^>]*)>(.*?)</script\s*>", re.S | re.I)


def _page(out: Path) -> str:
    return (out / "report.html").read_text(encoding="utf-8")


def _data(page: str) -> dict:
    blocks = SCRIPT_RE.findall(page)
    assert [attrs for attrs, _ in blocks] == [' type="application/json" id="camscope-data"', ""]
    return json.loads(blocks[0][1])


def test_json_block_and_script_cannot_be_broken_out_of(run_dir: Path) -> None:
    page = _page(run_dir)
    blocks = SCRIPT_RE.findall(page)
    data_text, js = blocks[0][1], blocks[1][1]
    assert not set("<>&") & set(data_text)  # escaped as \u003c \u003e \u0026
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e.png" in data_text
    data = json.loads(data_text)
    assert [p["rel"] for p in data["photos"]] == sorted(RELS)
    # Exactly these two script elements; nothing else in the page is a script.
    assert page.lower().count("<script") == 2
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "eval(" not in js
    # The Content-Security-Policy allows this script, by its hash, and nothing else.
    digest = base64.b64encode(hashlib.sha256(js.encode("utf-8")).digest()).decode("ascii")
    assert f"script-src 'sha256-{digest}';" in page
    assert page.index("Content-Security-Policy") < page.index("<style>")
    assert "http://" not in js and "https://" not in js


def test_explorer_data_values(run_dir: Path) -> None:
    data = _data(_page(run_dir))
    recs = _records(run_dir)
    assert data["alpha"] == 0.4 and data["colormap"] == "viridis"
    assert base64.b64decode(data["lut"]) == colormap_lut("viridis")
    assert [m["key"] for m in data["methods"]] == ["gradcam", "scorecam"] and data["smoothings"] == ["aug"]
    assert list(data["variants"]) == ["gradcam", "scorecam", "gradcam+aug", "scorecam+aug"]
    assert data["low_agreement"] == LOW_AGREEMENT
    for i, p in enumerate(data["photos"], 1):
        rec = recs[p["rel"]]
        entry = rec["targets"][0]
        assert p["anchor"] == f"photo-{i}" and f'id="photo-{i}"' in _page(run_dir)
        assert p["correct"] is (p["rel"] not in MISCLASSIFIED)
        assert p["predicted"] == rec["top5"][0]["name"]
        rhos = [x for x in (_finite(a["spearman"]) for a in entry["agreement"]) if x is not None]
        assert p["min_spearman"] == pytest.approx(min(rhos), abs=1e-6)
        for name, v in entry["variants"].items():
            for key in ("deletion_auc", "insertion_auc", "average_drop", "entropy", "top10_energy"):
                want, got = _finite(v.get(key)), p["metrics"][name][key]
                assert got is None if want is None else got == pytest.approx(want, abs=1e-6), (name, key)
        assert set(p["maps"]) == set(data["variants"])
    empty = next(p for p in data["photos"] if p["rel"] == EMPTY[0])
    assert empty["degenerate"] == {EMPTY[1]: "empty"}
    known = next(p for p in data["photos"] if p["rel"] == KNOWN)
    with Image.open(__import__("io").BytesIO(base64.b64decode(known["maps"]["gradcam"]))) as im:
        grid = np.asarray(im)
    assert im.mode == "L" and grid.shape == (H // 2, W // 2)
    assert np.array_equal(grid, np.rint(np.kron(np.arange(64).reshape(8, 8) / 63, np.ones((6, 8))) * 255))


def test_map_grid_and_json_escaping() -> None:
    sal = np.linspace(0, 1, 224 * 224, dtype=np.float32).reshape(224, 224)
    g = map_grid(sal)
    assert g.shape == (56, 56) and g.dtype == np.uint8
    assert g[0, 0] == round(255 * float(sal[:4, :4].mean()))
    assert map_grid(np.full((299, 150), 2.0)).shape == (60, 30) and map_grid(np.full((299, 150), 2.0)).max() == 255
    assert map_grid(np.array([[np.nan, -1.0], [0.5, 1.0]])).tolist() == [[0, 0], [128, 255]]
    with Image.open(__import__("io").BytesIO(base64.b64decode(encode_map(g)))) as im:
        assert np.array_equal(np.asarray(im), g)
    text = json_for_script({"a": "</script><!-- & é \u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- & é \u2028"}
    with pytest.raises(ValueError):
        json_for_script({"x": math.nan})
    # A colour map this matplotlib does not know: the explorer falls back to jet.
    data = explorer_data([], {}, anchors=[], methods={}, smoothings=[], colormap="no-such-map", alpha=7)
    assert data["colormap"] == "jet" and base64.b64decode(data["lut"]) == colormap_lut("jet")
    assert data["alpha"] == 0.5 and data["photos"] == []


def test_random_weights_banner(run_dir: Path, tmp_path: Path) -> None:
    assert is_random_weights("random (no weights)") and not is_random_weights("IMAGENET1K_V1")
    assert weights_banner(None) == "" and weights_banner("file:w.pt") == ""
    page = _page(run_dir)
    header = page[page.index("<header>") : page.index("</header>")]
    assert "Random weights: these maps say nothing about a trained model" in header
    assert "(the run's weights: random (no weights))" in header
    # Weights named by the user are escaped; a trained model's run has no banner.
    out = tmp_path / "copy"
    shutil.copytree(run_dir, out)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    manifest["settings"]["weights"] = "random <i>init</i>"
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    write_report(out, plots=False)
    assert "random &lt;i&gt;init&lt;/i&gt;" in _page(out) and "<i>init" not in _page(out)
    manifest["settings"]["weights"] = "IMAGENET1K_V1"
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    write_report(out, plots=False)
    assert 'id="weights-warning"' not in _page(out) and "say nothing about" not in _page(out)


def test_static_page_without_javascript(run_dir: Path) -> None:
    """The explorer is one empty hidden section; every static section is still there."""
    page = _page(run_dir)
    mount = re.search(r'<section id="camscope-explorer"[^>]*>(.*?)</section>', page, re.S)
    assert mount and mount.group(1) == "" and " hidden" in mount.group(0)
    for sid in ("summary", "photos", "definitions", *(f"photo-{i}" for i in range(1, len(RELS) + 1))):
        assert f'id="{sid}"' in page
    imgs = re.findall(r"<img [^>]*>", page)
    assert imgs and all('loading="lazy"' in tag for tag in imgs)


# ---------------------------------------------------------------------------------------------
# Browser
# ---------------------------------------------------------------------------------------------

HOOK = """
window.__alerts = [];
['alert', 'confirm', 'prompt'].forEach(function (f) {
  window[f] = function (m) { window.__alerts.push(f + ':' + m); return null; };
});
window.__errors = [];
window.addEventListener('error', function (e) { window.__errors.push(String(e.message || (e.target && e.target.src))); }, true);
window.addEventListener('unhandledrejection', function (e) { window.__errors.push('rejection: ' + e.reason); });
document.addEventListener('securitypolicyviolation', function (e) { window.__errors.push('CSP: ' + e.violatedDirective); });
"""

FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--window-size=1280,1000",
)


def _binary(env: str, names: tuple[str, ...]) -> str | None:
    """The executable named by ``env``, else the first of ``names`` on PATH (None: not found)."""
    if os.environ.get(env):
        return shutil.which(os.environ[env])
    return next((p for p in map(shutil.which, names) if p), None)


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    chromium = _binary("CAMSCOPE_CHROMIUM", ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"))
    chromedriver = _binary("CAMSCOPE_CHROMEDRIVER", ("chromedriver",))
    if chromium is None or chromedriver is None:
        pytest.skip("Chromium or chromedriver not found (set CAMSCOPE_CHROMIUM / CAMSCOPE_CHROMEDRIVER): "
                    "install the Debian packages chromium and chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in FLAGS:
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="camscope-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=chromedriver))
    try:
        drv.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": HOOK})
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(drv: Any, js: str, timeout: float = 10.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        value = drv.execute_script(js)
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for: {js}")
        time.sleep(0.02)


def _open(drv: Any, page: Path) -> None:
    drv.get_log("browser")  # drop what earlier pages logged
    drv.get(page.as_uri())
    _wait(drv, "return document.getElementById('camscope-explorer').getAttribute('data-ready') === 'true'")


def _clean_console(drv: Any) -> None:
    """No console message at warning level or above, no page error, no alert."""
    logs = [e for e in drv.get_log("browser") if e["level"] in ("WARNING", "SEVERE")]
    assert logs == []
    assert drv.execute_script("return window.__errors") == []
    assert drv.execute_script("return window.__alerts") == []


def _id(drv: Any, el_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return drv.find_element(By.ID, el_id)


def _select(drv: Any, el_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(_id(drv, el_id)).select_by_value(value)


def _tiles(drv: Any) -> list[str]:
    return drv.execute_script("return [...document.querySelectorAll('#ex-grid .ex-tile .ex-name')].map(e => e.textContent)")


def _shown(drv: Any, expect: str) -> None:
    _wait(drv, f"return document.getElementById('ex-stage').getAttribute('data-shown') === {json.dumps(expect)}")


def _pick(drv: Any, rel: str) -> None:
    drv.execute_script(
        "const t = [...document.querySelectorAll('#ex-grid .ex-tile')].find(t => t.querySelector('.ex-name').textContent === arguments[0]);"
        "t.scrollIntoView({block: 'center'}); t.click();", rel)
    _wait(drv, f"return document.getElementById('ex-title').textContent.endsWith({json.dumps(' · ' + rel)})")


def _canvas(drv: Any, el_id: str = "ex-heat-a") -> str:
    return drv.execute_script(f"return document.getElementById('{el_id}').toDataURL()")


def test_without_javascript_the_page_reads_as_before(driver: Any, run_dir: Path) -> None:
    from selenium.webdriver.common.by import By

    static_imgs = _page(run_dir).count("<img ")
    driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
    try:
        driver.get((run_dir / "report.html").as_uri())
        assert not _id(driver, "camscope-explorer").is_displayed()
        assert driver.execute_script("return document.getElementById('camscope-explorer').children.length") == 0
        for sid in ("summary", "photos", "definitions", *(f"photo-{i}" for i in range(1, len(RELS) + 1))):
            assert _id(driver, sid).is_displayed()
        assert len(driver.find_elements(By.TAG_NAME, "img")) == static_imgs
        assert _id(driver, "weights-warning").is_displayed()
    finally:
        driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": False})
    _open(driver, run_dir / "report.html")
    assert _id(driver, "camscope-explorer").is_displayed()
    assert len(driver.find_elements(By.TAG_NAME, "img")) == static_imgs + len(RELS) + 1
    _clean_console(driver)


def test_opacity_slider(driver: Any, run_dir: Path) -> None:
    from selenium.webdriver.common.keys import Keys

    _open(driver, run_dir / "report.html")
    heat = "return getComputedStyle(document.getElementById('ex-heat-a')).opacity"
    assert float(driver.execute_script(heat)) == pytest.approx(0.4)  # the run's --alpha
    assert float(driver.execute_script("return getComputedStyle(document.getElementById('ex-photo')).opacity")) == 1
    slider = _id(driver, "ex-opacity")
    slider.send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT, Keys.ARROW_RIGHT)
    assert float(driver.execute_script(heat)) == pytest.approx(0.55)
    assert _id(driver, "ex-opacity-val").text == "55%"
    slider.send_keys(Keys.HOME)
    assert float(driver.execute_script(heat)) == 0
    _clean_console(driver)


def test_method_and_smoothing_switch_the_shown_map(driver: Any, run_dir: Path) -> None:
    _open(driver, run_dir / "report.html")
    _pick(driver, KNOWN)
    _shown(driver, "gradcam")
    # The drawn heat map is the known map through the run's colour map: the centre of block
    # (r, c) has the colour of round(255 * (8 r + c) / 63).
    lut = np.frombuffer(colormap_lut("viridis"), np.uint8).reshape(256, 3)
    size = driver.execute_script("const c = document.getElementById('ex-heat-a'); return [c.width, c.height]")
    assert size == [256, 192]  # 64x48 map, 4x
    for r, c in [(0, 0), (2, 5), (7, 7), (5, 1)]:
        x, y = int((c + 0.5) * 256 / 8), int((r + 0.5) * 192 / 8)
        rgb = driver.execute_script(
            f"return [...document.getElementById('ex-heat-a').getContext('2d').getImageData({x}, {y}, 1, 1).data]")
        assert rgb[:3] == lut[round(255 * (8 * r + c) / 63)].tolist() and rgb[3] == 255
    plain = _canvas(driver)
    _select(driver, "ex-method", "scorecam")
    _shown(driver, "scorecam")
    assert _id(driver, "ex-heat-a").get_attribute("data-variant") == "scorecam"
    scorecam = _canvas(driver)
    assert scorecam != plain
    _select(driver, "ex-smooth", "aug")
    _shown(driver, "scorecam+aug")
    assert _canvas(driver) not in (plain, scorecam)
    rec = _records(run_dir)[KNOWN]["targets"][0]["variants"]["scorecam+aug"]
    line = _id(driver, "ex-metrics-a").text
    assert line.startswith("Score-CAM +aug: Deletion AUC ") and f"Deletion AUC {rec['deletion_auc']:.3f}" in line
    _select(driver, "ex-smooth", "")
    _shown(driver, "scorecam")
    assert _canvas(driver) == scorecam
    _clean_console(driver)


def test_swipe_divider_and_value_under_cursor(driver: Any, run_dir: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    _open(driver, run_dir / "report.html")
    _pick(driver, KNOWN)
    stage = _id(driver, "ex-stage")
    w, h = stage.size["width"], stage.size["height"]
    assert w / h == pytest.approx(W / H, abs=0.02)

    def point(fx: float, fy: float) -> str:
        ActionChains(driver).move_to_element_with_offset(stage, int(fx * w - w / 2), int(fy * h - h / 2)).perform()
        return _id(driver, "ex-readout").text

    for r, c in [(0, 0), (2, 5), (7, 6), (4, 3)]:
        want = round(255 * (8 * r + c) / 63) / 255
        assert point((c + 0.5) / 8, (r + 0.5) / 8) == f"Grad-CAM: value ≈ {want:.2f} (map at 64x48)"

    _id(driver, "ex-compare").click()
    _shown(driver, "gradcam | scorecam")
    clip = "return getComputedStyle(document.getElementById(arguments[0])).clipPath"
    assert driver.execute_script(clip, "ex-heat-b") == "inset(0px 0px 0px 50%)"
    assert driver.execute_script(clip, "ex-heat-a") == "inset(0px 50% 0px 0px)"
    left = driver.execute_script("return document.getElementById('ex-divider').getBoundingClientRect().left")
    ActionChains(driver).click_and_hold(_id(driver, "ex-handle")).move_by_offset(int(w / 4), 0).release().perform()
    moved = driver.execute_script("return document.getElementById('ex-divider').getBoundingClientRect().left")
    assert moved - left == pytest.approx(w / 4, abs=3)
    b_clip = driver.execute_script(clip, "ex-heat-b")
    frac = float(re.fullmatch(r"inset\(0px 0px 0px ([\d.]+)%\)", b_clip).group(1))
    assert frac == pytest.approx(75, abs=1)
    a_clip = re.fullmatch(r"inset\(0px ([\d.]+)% 0px 0px\)", driver.execute_script(clip, "ex-heat-a"))
    assert float(a_clip.group(1)) == pytest.approx(100 - frac, abs=1e-3)
    assert _id(driver, "ex-handle").get_attribute("aria-valuenow") == str(round(frac))
    # Left of the divider the readout reads Grad-CAM (the known map), right of it Score-CAM.
    assert point(5.5 / 8, 2.5 / 8) == f"Grad-CAM: value ≈ {round(255 * 21 / 63) / 255:.2f} (map at 64x48)"
    assert point(0.9, 0.5).startswith("Score-CAM: value ≈ ")
    _id(driver, "ex-compare").click()
    _shown(driver, "gradcam")
    assert driver.execute_script(clip, "ex-heat-a") == "none"
    assert driver.execute_script("return document.getElementById('ex-heat-b').hidden") is True
    _clean_console(driver)


def test_filters_and_sorting(driver: Any, run_dir: Path) -> None:
    recs = _records(run_dir)
    _open(driver, run_dir / "report.html")
    assert _tiles(driver) == sorted(RELS)
    assert _id(driver, "ex-count").text == f"{len(RELS)} of {len(RELS)} photos"
    _id(driver, "ex-f-misclassified").click()
    assert sorted(_tiles(driver)) == sorted(MISCLASSIFIED)
    assert _id(driver, "ex-count").text == f"2 of {len(RELS)} photos"
    _id(driver, "ex-f-misclassified").click()
    _id(driver, "ex-f-degenerate").click()
    assert _tiles(driver) == [EMPTY[0]]
    _id(driver, "ex-f-degenerate").click()

    def min_rho(rel: str) -> float:
        return min(x for x in (_finite(a["spearman"]) for a in recs[rel]["targets"][0]["agreement"]) if x is not None)

    _id(driver, "ex-f-low").click()
    low = sorted(rel for rel in RELS if min_rho(rel) < LOW_AGREEMENT)
    assert _tiles(driver) == low
    _id(driver, "ex-f-low").click()
    assert _tiles(driver) == sorted(RELS)

    def by(variant: str, key: str) -> list[str]:
        values = {r: _finite(recs[r]["targets"][0]["variants"][variant].get(key)) for r in RELS}
        assert all(v is not None for v in values.values())
        return sorted(RELS, key=lambda r: values[r])

    _select(driver, "ex-sort", "m:deletion_auc")
    assert _tiles(driver) == by("gradcam", "deletion_auc")
    shown = driver.execute_script("return [...document.querySelectorAll('#ex-grid .ex-val')].map(e => e.textContent)")
    assert shown == [f"{recs[r]['targets'][0]['variants']['gradcam']['deletion_auc']:.3f}" for r in by("gradcam", "deletion_auc")]
    _select(driver, "ex-dir", "desc")
    assert _tiles(driver) == by("gradcam", "deletion_auc")[::-1]
    _select(driver, "ex-dir", "asc")
    _select(driver, "ex-method", "scorecam")  # the sort follows the shown map
    _select(driver, "ex-smooth", "aug")
    assert _tiles(driver) == by("scorecam+aug", "deletion_auc")
    _select(driver, "ex-sort", "m:entropy")
    assert _tiles(driver) == by("scorecam+aug", "entropy")
    _select(driver, "ex-sort", "agreement")
    assert _tiles(driver) == sorted(RELS, key=min_rho)
    _id(driver, "ex-f-misclassified").click()  # filters and sorting combine
    assert _tiles(driver) == sorted(MISCLASSIFIED, key=min_rho)
    _clean_console(driver)


def test_keyboard_navigation(driver: Any, run_dir: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    _open(driver, run_dir / "report.html")
    order = sorted(RELS)
    title = lambda: _id(driver, "ex-title").text  # noqa: E731
    current = lambda: driver.execute_script(  # noqa: E731
        "return document.querySelector('#ex-grid .ex-tile[aria-current=\"true\"] .ex-name').textContent")
    assert title() == f"1 / {len(RELS)} · {order[0]}" and current() == order[0]
    driver.execute_script("document.activeElement.blur()")
    ActionChains(driver).send_keys("j").perform()
    assert title() == f"2 / {len(RELS)} · {order[1]}" and current() == order[1]
    ActionChains(driver).send_keys(Keys.ARROW_RIGHT, Keys.ARROW_RIGHT).perform()
    assert current() == order[3]
    ActionChains(driver).send_keys("k").perform()
    assert current() == order[2]
    # Keys typed into a control stay there.
    _id(driver, "ex-f-low").send_keys("j")
    slider = _id(driver, "ex-opacity")
    slider.send_keys(Keys.ARROW_RIGHT)
    assert current() == order[2] and _id(driver, "ex-opacity-val").text == "45%"
    # From a focused tile, focus follows the selection; the ends do not wrap.
    driver.execute_script("document.querySelector('#ex-grid .ex-tile[aria-current=\"true\"]').focus()")
    ActionChains(driver).send_keys("k", "k", "k").perform()
    assert current() == order[0]
    assert driver.execute_script("return document.activeElement.querySelector('.ex-name').textContent") == order[0]
    # Navigation walks the filtered list.
    _id(driver, "ex-f-misclassified").click()
    driver.execute_script("document.activeElement.blur()")
    mis = sorted(MISCLASSIFIED)
    assert current() == mis[0]
    ActionChains(driver).send_keys("j").perform()
    assert current() == mis[1] and title() == f"2 / 2 · {mis[1]}"
    _clean_console(driver)


def test_the_hooks_see_an_alert_and_a_blocked_handler(driver: Any, tmp_path: Path) -> None:
    """Negative control: the checks of the next test do see a script that runs (an alert) and
    an inline handler blocked by a Content-Security-Policy."""
    page = tmp_path / "control.html"
    page.write_text('<html><head></head><body><script>alert(1)</script></body></html>', encoding="utf-8")
    driver.get(page.as_uri())
    assert driver.execute_script("return window.__alerts") == ["alert:1"]
    page.write_text("<html><head><meta http-equiv=\"Content-Security-Policy\" content=\"script-src 'none'\">"
                    '</head><body><img src="x" onerror="alert(2)"></body></html>', encoding="utf-8")
    driver.get(page.as_uri())
    _wait(driver, "return window.__errors.some(e => e.startsWith('CSP: script-src'))")
    assert driver.execute_script("return window.__alerts") == []
    assert any(e["level"] == "SEVERE" for e in driver.get_log("browser"))


@pytest.mark.parametrize("mode", ["linked", "alone"])
def test_names_with_markup_run_nothing(driver: Any, run_dir: Path, mode: str) -> None:
    """Every view of the explorer with photos named <script>alert(1)</script>.png and
    <img src=x onerror=alert(2)>.png: no alert, no injected element, the names shown as text."""
    page = run_dir.parent / mode / "report.html"
    if mode == "alone":
        assert not re.search(r'<img src="(?!data:)', page.read_text(encoding="utf-8"))
    _open(driver, page)
    for rel in (SCRIPT_REL, IMG_REL):
        _pick(driver, rel)
        _shown(driver, "gradcam")
        _wait(driver, "return document.getElementById('ex-photo').naturalWidth > 0")
        _id(driver, "ex-compare").click()
        _shown(driver, "gradcam | scorecam")
        _select(driver, "ex-smooth", "aug")
        _shown(driver, "gradcam+aug | scorecam")
        _select(driver, "ex-smooth", "")
        _id(driver, "ex-compare").click()
        _shown(driver, "gradcam")
    for box in ("ex-f-misclassified", "ex-f-degenerate", "ex-f-low"):
        _id(driver, box).click()
        _id(driver, box).click()
    _select(driver, "ex-sort", "m:entropy")
    _select(driver, "ex-dir", "desc")
    names = _tiles(driver)
    assert SCRIPT_REL in names and IMG_REL in names  # shown as text
    found = driver.execute_script("""
      const onAttrs = [...document.querySelectorAll('*')].filter(e => [...e.attributes].some(a => a.name.startsWith('on')));
      return {
        scripts: document.scripts.length,
        bold: [...document.querySelectorAll('b')].filter(b => b.textContent === 'bold').length,
        x: document.querySelectorAll('img[src="x"]').length,
        on: onAttrs.map(e => e.tagName),
        h2: [...document.querySelectorAll('section.photo h2')].map(h => h.firstChild.textContent),
      };""")
    assert found["scripts"] == 2 and found["x"] == 0 and found["on"] == [] and found["bold"] == 0
    assert sorted(found["h2"]) == sorted(f"{rel} " for rel in RELS)  # the name, then its badge
    # Every thumbnail (lazy, all in view) loads.
    _wait(driver, f"return [...document.querySelectorAll('#ex-grid img')].filter(i => i.naturalWidth > 0).length === {len(RELS)}")
    _clean_console(driver)
