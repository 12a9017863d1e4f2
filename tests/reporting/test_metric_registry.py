"""The metric registry drives the report: a metric defined in a test (one function, one
registration) appears in DIR/metrics/, metrics.csv, summary.json and report.html; metrics that
re-explain get engines rebuilt from the manifest; --metrics selections and parameters are part
of the cache; the stability check; ``camscope.evaluate`` on a CamResult."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

import camscope
from camscope.core.threads import torch_threads
from camscope.errors import UsageError
from camscope.io.images import load_image
from camscope.metrics import (
    METRICS,
    MetricInputs,
    concentration,
    deletion_insertion,
    metrics_in,
    register_metric,
    road,
    spearman,
    unregister_metric,
)
from camscope.metrics.builtin import ROAD_FRACTIONS
from camscope.models import LoadedModel, Preprocess
from camscope.reporting import build_report
from camscope.reporting.cache import load_image_metrics
from camscope.run import ExplainOptions, run_explain

SIZE = 32
CLASSES = ["a", "b", "c", "d", "e"]


def _loaded(make_tiny_cnn: Callable[..., Any]) -> LoadedModel:
    return LoadedModel(make_tiny_cnn(seed=1).eval(), "tiny", "random", list(CLASSES), Preprocess("classic", (SIZE, SIZE)))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, make_tiny_cnn: Callable[..., Any]) -> tuple[Path, LoadedModel]:
    root = tmp_path_factory.mktemp("registry")
    src = root / "photos"
    src.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        arr = rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
        arr[4 + 2 * i : 20, 6:22 - i] = 255
        Image.fromarray(arr).save(src / f"p{i}.png")
    out = root / "out"
    loaded = _loaded(make_tiny_cnn)
    with torch_threads(1):
        res = run_explain(
            [src], out,
            ExplainOptions(methods=["gradcam", "gradcampp"], smoothing=["aug"], figures=False, quiet=True, device="cpu"),
            loaded=loaded,
        )
    assert not res.failed and len(res.completed) == 3
    return out, loaded


def _npy(out: Path, rel: str, variant: str) -> np.ndarray:
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    files = manifest["images"][rel]["files"][variant]
    return np.load(out / next(f for f in files if f.endswith(".npy"))).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# An example metric, defined here: one function and one registration
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def example_metric() -> Iterator[str]:
    @register_metric(
        "example_mass", title="Mass in the upper half", category="localisation", direction="higher",
        paper="a test", url="https://example.org/mass", equation="sum(S[:H/2]) / sum(S)", default=False,
        columns={"example_mass": {"unit": "fraction"}},
    )
    def example_mass(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
        """Share of the map's total in the upper half of the image."""
        h = maps.shape[1] // 2
        return {"example_mass": maps[:, :h].sum((1, 2)) / maps.sum((1, 2))}

    try:
        yield "example_mass"
    finally:
        unregister_metric("example_mass")
    assert "example_mass" not in METRICS


def test_example_metric_reaches_every_output(run: tuple[Path, LoadedModel], example_metric: str, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    ev, files = build_report(out, metrics=f"{example_metric},complexity")
    assert ev.exit_code == 0 and ev.maps_computed == 0  # no model-based metric: no model built
    expected = {}
    for rel in ("p0.png", "p1.png", "p2.png"):
        for v in ("gradcam", "gradcampp", "gradcam+aug", "gradcampp+aug"):
            sal = _npy(out, rel, v)
            expected[rel, v] = sal[: SIZE // 2].sum() / sal.sum()
            assert ev.images[rel]["targets"][0]["variants"][v]["example_mass"] == pytest.approx(expected[rel, v], abs=1e-6)
    with open(files.csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert "example_mass" in rows[0] and len(rows) == 12
    for row in rows:
        assert float(row["example_mass"]) == pytest.approx(expected[row["file"], row["variant"]], abs=1e-6)
        assert row["deletion_auc"] == ""  # a default column, not measured in this selection
    summary = json.loads(files.summary.read_text(encoding="utf-8"))
    meta = next(m for m in summary["metrics"] if m["key"] == "example_mass")
    assert meta == {"key": "example_mass", "label": "Mass in the upper half", "better": "higher",
                    "category": "localisation", "metric": "example_mass", "ranked": True, "unit": "fraction"}
    means = {v: float(np.mean([expected[r, v] for r in ("p0.png", "p1.png", "p2.png")]))
             for v in ("gradcam", "gradcampp", "gradcam+aug", "gradcampp+aug")}
    for v, m in means.items():
        assert summary["variants"][v]["metrics"]["example_mass"]["mean"] == pytest.approx(m, abs=1e-6)
    # its category is ranked (by the example metric alone) and named in the findings
    assert summary["categories"]["localisation"]["columns"] == ["example_mass"]
    assert summary["categories"]["localisation"]["ranking"][0] == max(means, key=means.__getitem__)
    assert any(f.startswith("Best localising on ") and "Mass in the upper half" in f for f in summary["findings"])
    assert summary["measured_with"]["example_mass"]["category"] == "localisation"
    page = files.html.read_text(encoding="utf-8")
    assert "Mass in the upper half ↑" in page and 'id="metric-example_mass"' in page
    assert 'href="https://example.org/mass"' in page
    data = json.loads(page.split('id="camscope-data">', 1)[1].split("</script>", 1)[0])
    assert {"key": "example_mass", "label": "Mass in the upper half", "better": "higher",
            "category": "localisation"} in data["metrics"]  # the explorer can sort by it


def test_registration_is_checked() -> None:
    kw = dict(title="x", paper="p", url="https://x")
    with pytest.raises(ValueError, match="category"):
        register_metric("bad", category="speed", direction="higher", **kw)
    with pytest.raises(ValueError, match="direction"):
        register_metric("bad", category="complexity", direction="up", **kw)
    with pytest.raises(ValueError, match="needs"):
        register_metric("bad", category="complexity", direction="higher", needs=("gpu",), **kw)
    with pytest.raises(ValueError, match="already returned by 'concentration'"):
        register_metric("bad", category="complexity", direction="higher", keys=("entropy",), **kw)(lambda i, m: {})
    with pytest.raises(ValueError, match="sweep parameter"):
        register_metric("bad", category="complexity", direction="higher", sweep=("k", (1, 2)), **kw)
    assert "bad" not in METRICS
    with pytest.raises(UsageError, match="unknown metric or category 'nope'"):
        metrics_in("faithfulness,nope")
    localisation = [m.name for m in METRICS.values() if m.category == "localisation"]
    assert {"pointing_game", "energy_pg", "relevance_mass"} <= set(localisation)
    assert [m.name for m in metrics_in("localisation,concentration")] == [*localisation, "concentration"]
    assert [m.name for m in metrics_in(None)] == [m.name for m in METRICS.values() if m.default]
    assert {m.name for m in metrics_in("all")} == set(METRICS)
    # A new registration is opt-in: the default report keeps its cost.
    register_metric("example_optin", category="complexity", direction="higher", **kw)(lambda i, m: {})
    try:
        assert "example_optin" not in [m.name for m in metrics_in(None)]
        assert "example_optin" in [m.name for m in metrics_in("complexity")]
    finally:
        unregister_metric("example_optin")
    with pytest.raises(UsageError, match="has no parameter 'stepz'"):
        METRICS["deletion_insertion"].resolved({"stepz": 3})


def test_a_metric_returning_the_wrong_shape_is_a_problem_not_a_crash(run: tuple[Path, LoadedModel], tmp_path: Path) -> None:
    import shutil

    @register_metric("example_broken", title="Broken", category="complexity", direction="higher", paper="p",
                     url="https://x", default=False)
    def broken(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
        return {"example_broken": torch.zeros(maps.shape[0] + 1)}

    try:
        out = tmp_path / "run"
        shutil.copytree(run[0], out)
        ev, _ = build_report(out, metrics="example_broken")
    finally:
        unregister_metric("example_broken")
    assert ev.exit_code == 1
    assert all("metric example_broken failed: metric 'example_broken': 'example_broken' has 5 values for 4 maps" in p
               for _, p in ev.problems)


# ---------------------------------------------------------------------------------------------
# Metrics that re-explain: engines rebuilt from the manifest
# ---------------------------------------------------------------------------------------------


def test_explain_metric_gets_engines_that_reproduce_the_saved_maps(run: tuple[Path, LoadedModel], tmp_path: Path) -> None:
    import shutil

    seen: list[int] = []

    @register_metric("example_reexplain", title="Re-explained map vs saved map", category="robustness",
                     direction="lower", paper="a test", url="https://x", needs=("explain",), default=False)
    def reexplain(inputs: MetricInputs, maps: Tensor) -> dict[str, Tensor]:
        assert inputs.explainers is not None and len(inputs.explainers) == maps.shape[0]
        seen.append(len(inputs.explainers))
        out = []
        for i, explainer in enumerate(inputs.explainers):
            again = explainer(inputs.image[None], [inputs.target])[0].cpu().double()
            out.append(float((again - maps[i]).abs().max()))
        return {"example_reexplain": torch.tensor(out)}

    try:
        out = tmp_path / "run"
        shutil.copytree(run[0], out)
        with torch_threads(1):
            ev, _ = build_report(out, model=run[1], metrics="example_reexplain")
    finally:
        unregister_metric("example_reexplain")
    assert ev.exit_code == 0 and seen == [4, 4, 4]
    assert ev.computed == {"example_reexplain": 12}
    for rec in ev.images.values():
        for v in rec["targets"][0]["variants"].values():
            assert v["example_reexplain"] < 1e-5  # same method, layer and smoothing as the run


# ---------------------------------------------------------------------------------------------
# Selection and parameters in the cache key
# ---------------------------------------------------------------------------------------------


def test_cache_follows_selection_and_parameters(run: tuple[Path, LoadedModel], tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    model = run[1]
    with torch_threads(1):
        ev, _ = build_report(out, model=model, metrics="deletion_insertion", steps=4)
        assert ev.computed == {"deletion_insertion": 12} and ev.reused == {"deletion_insertion": 0}
        v = ev.images["p1.png"]["targets"][0]["variants"]["gradcampp"]
        sal = _npy(out, "p1.png", "gradcampp")
        x = Preprocess("classic", (SIZE, SIZE)).to_tensor(load_image(run[0].parent / "photos" / "p1.png"))
        want = deletion_insertion(lambda b: model.model(b), x, sal, ev.images["p1.png"]["targets"][0]["class"], steps=4)
        assert v["deletion_auc"] == pytest.approx(want.deletion_auc, abs=1e-6)
        assert v["measured"] == {"deletion_insertion": {"params": {"delete": "zero", "insert": "blur", "score": "prob", "steps": 4}}}
        assert "top5_energy" not in v and "average_drop" not in v  # only the selection
        ev, _ = build_report(out, model=model, metrics="deletion_insertion", steps=4)
        assert ev.computed == {"deletion_insertion": 0} and ev.reused == {"deletion_insertion": 12}
        ev, _ = build_report(out, model=model, metrics="deletion_insertion", steps=5)  # other setting
        assert ev.computed == {"deletion_insertion": 12}
        ev, _ = build_report(out, model=model, metrics="road", params={"road": {"noise": 0.02}})
        assert ev.computed == {"road": 12}
        ev, _ = build_report(out, model=model, metrics="road", seed=1)  # seeded: the seed is in the key
        assert ev.computed == {"road": 12}
        ev, _ = build_report(out, model=model, metrics="road", seed=1)
        assert ev.reused == {"road": 12}
    rec = load_image_metrics(out, "p0.png")
    assert rec["metrics"] == {"road": {"params": {"fractions": list(ROAD_FRACTIONS), "noise": 0.01, "score": "prob"}, "seed": 1}}
    with pytest.raises(UsageError, match="not selected"):
        build_report(out, metrics="road", params={"deletion_insertion": {"steps": 3}})


def test_cli_metrics_option(run: tuple[Path, LoadedModel], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    from camscope.cli import main

    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    assert main(["report", str(out), "--metrics", "complexity,agreement", "--quiet"]) == 0
    v = load_image_metrics(out, "p2.png")["targets"][0]["variants"]["gradcam"]
    sal = _npy(out, "p2.png", "gradcam")
    assert v["entropy"] == pytest.approx(concentration(np.clip(sal, 0, None))["entropy"], abs=1e-6)
    others = [_npy(out, "p2.png", n) for n in ("gradcampp", "gradcam+aug", "gradcampp+aug")]
    assert v["mean_spearman"] == pytest.approx(np.mean([spearman(sal, o) for o in others]), abs=1e-6)
    assert main(["report", str(out), "--metrics", "speed"]) == 2
    assert "unknown metric or category 'speed'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Stability of the rankings
# ---------------------------------------------------------------------------------------------


def test_stability_values_and_rank_agreement(run: tuple[Path, LoadedModel], tmp_path: Path) -> None:
    import shutil

    from scipy.stats import kendalltau

    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    model = run[1]
    with torch_threads(1):
        ev, files = build_report(out, model=model, metrics="road", stability=True)
    v = ev.images["p0.png"]["targets"][0]["variants"]["gradcam+aug"]
    assert sorted(v["stability"]["road"]) == ["noise=0.005", "noise=0.02", "seed=1", "seed=2"]
    sal = _npy(out, "p0.png", "gradcam+aug")
    x = Preprocess("classic", (SIZE, SIZE)).to_tensor(load_image(run[0].parent / "photos" / "p0.png"))
    t = ev.images["p0.png"]["targets"][0]["class"]
    want = road(lambda b: model.model(b), x, sal, t, fractions=ROAD_FRACTIONS, order="morf", seed=2)
    assert v["stability"]["road"]["seed=2"]["road_morf"] == pytest.approx(want.auc, abs=1e-6)
    want = road(lambda b: model.model(b), x, sal, t, fractions=ROAD_FRACTIONS, order="lerf", noise=0.02)
    assert v["stability"]["road"]["noise=0.02"]["road_lerf"] == pytest.approx(want.auc, abs=1e-6)
    summary = json.loads(files.summary.read_text(encoding="utf-8"))
    rows = {(r["key"], r["setting"]): r for r in summary["stability"]}
    assert len(rows) == 8
    r = rows["road_morf", "seed=1"]
    names = list(ev.images["p0.png"]["targets"][0]["variants"])
    base = [np.mean([ev.images[p]["targets"][0]["variants"][n]["road_morf"] for p in ev.images]) for n in names]
    alt = [np.mean([ev.images[p]["targets"][0]["variants"][n]["stability"]["road"]["seed=1"]["road_morf"]
                    for p in ev.images]) for n in names]
    assert r["kendall_tau"] == pytest.approx(kendalltau(base, alt).statistic, abs=1e-4)
    assert r["order"] == [n for _, n in sorted(zip(base, names, strict=True))]
    assert any("The ranking by ROAD MoRF" in f for f in summary["findings"])
    assert 'id="stability"' in files.html.read_text(encoding="utf-8")
    # cached: a second run with --stability computes nothing
    with torch_threads(1):
        ev, _ = build_report(out, model=model, metrics="road", stability=True)
    assert ev.computed == {"road": 0}


# ---------------------------------------------------------------------------------------------
# camscope.evaluate on a CamResult
# ---------------------------------------------------------------------------------------------


def test_evaluate_on_a_cam_result(make_tiny_cnn: Callable[..., Any]) -> None:
    model = make_tiny_cnn(seed=2).eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch_threads(1):
        res = camscope.explain(model, x, methods=["gradcam", "layercam"])
        table = camscope.evaluate(res, ["deletion_insertion", "complexity"], model=model,
                                  params={"deletion_insertion": {"steps": 4}})
    assert table.variants == ["gradcam", "layercam"]
    assert len(table.rows) == 4
    for r in table.rows:
        sal = res.maps[r["variant"]][r["image"], 0]
        want = deletion_insertion(model, x[r["image"]], sal, r["class"], steps=4)
        assert r["deletion_auc"] == pytest.approx(want.deletion_auc, abs=1e-6)
        assert r["insertion_auc"] == pytest.approx(want.insertion_auc, abs=1e-6)
        assert r["entropy"] == pytest.approx(concentration(sal.clamp(min=0))["entropy"], abs=1e-6)
    m = table.means()
    assert m["gradcam"]["deletion_auc"] == pytest.approx(np.mean(table.values("gradcam", "deletion_auc")))
    assert table["layercam"] == m["layercam"]
    assert "<table>" in table._repr_html_() and "deletion_auc" in table._repr_html_()
    # localisation without regions: NaN, not an error; with a region: the pointing game
    t2 = camscope.evaluate(res, "pointing_game")
    assert all(math.isnan(r["pointing_game"]) for r in t2.rows)
    box = [(0, 0, SIZE, SIZE)]
    t3 = camscope.evaluate(res, "pointing_game", regions=[box, box])
    assert all(r["pointing_game"] == 1.0 for r in t3.rows)
    res.model = None  # e.g. a result computed with a CamEngine directly
    with pytest.raises(UsageError, match="need the model"):
        camscope.evaluate(res, "faithfulness")


def test_records_of_camscope_0_1_are_reused(run: tuple[Path, LoadedModel], tmp_path: Path) -> None:
    """A DIR/metrics/ written by the fixed-group report (record version 1) keeps its costly
    values: no forward pass after the upgrade."""
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run[0], out)
    with torch_threads(1):
        ev, _ = build_report(out, model=run[1], steps=4)
    assert ev.maps_computed == 12
    for rel, rec in ev.images.items():  # rewrite each record as camscope 0.1 wrote it
        rec["version"] = 1
        for entry in rec["targets"]:
            for v in entry["variants"].values():
                del v["measured"], v["gap"]
                v["faithfulness_key"] = {"steps": 4, "score": "prob", "delete": "zero", "insert": "blur", "adi": "pixel-space"}
                v["road_key"] = {"fractions": list(ROAD_FRACTIONS), "noise": 0.01, "seed": 0, "score": "prob"}
        (out / "metrics" / f"{rel}.json").write_text(json.dumps(rec), encoding="utf-8")

    class Exploding(torch.nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            raise AssertionError("the model must not run: every value is cached")

    before = {rel: rec["targets"][0]["variants"]["gradcam"]["insertion_auc"] for rel, rec in ev.images.items()}
    ev2, _ = build_report(out, model=Exploding(), steps=4)
    assert ev2.maps_computed == 0 and ev2.maps_reused == 12
    for rel, rec in ev2.images.items():
        v = rec["targets"][0]["variants"]["gradcam"]
        assert v["insertion_auc"] == before[rel] and v["gap"] == pytest.approx(v["insertion_auc"] - v["deletion_auc"])
        assert rec["version"] == 2
