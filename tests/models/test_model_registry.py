"""The model-source registry: a source defined here, in the test, with one registration (its
prefix, loader, weights parsing and listing) is loaded by name, listed, and rebuilt from what it
recorded in a run's manifest -- no library file touched."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from camscope.errors import UsageError
from camscope.io.rundir import RunSettings
from camscope.models import (
    MODEL_SOURCES,
    LoadedModel,
    ModelSource,
    ModelSpec,
    Preprocess,
    list_models,
    load_from_settings,
    load_model,
    model_source,
    register_model_source,
)
from camscope.names import RANDOM_WEIGHTS

SIZES = {"small": 4, "wide": 8}


def _load(spec: ModelSpec, device: str | torch.device, progress: bool) -> LoadedModel:
    name = spec.name.removeprefix("toy/")
    if name not in SIZES:
        raise UsageError(f"--model {spec.name}: no toy model {name!r}")
    trained = spec.weights_tag not in (None, "none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1 if trained else 0)
        model = nn.Sequential(nn.Conv2d(3, SIZES[name], 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(SIZES[name], 5))
    weights = f"toy:{name}" if trained else RANDOM_WEIGHTS  # what the manifest records
    return LoadedModel(model.to(device).eval(), spec.name, weights, None, Preprocess("classic", (16, 16)), info={"source": "toy"})


def _reload(name: str, weights: str, weights_file: str | None) -> tuple[str, str | None]:
    return name, "DEFAULT" if weights.startswith("toy:") else None


@pytest.fixture
def toy_source() -> Iterator[None]:
    before = dict(MODEL_SOURCES)
    register_model_source(ModelSource(
        "toy", _load, _reload, prefix="toy/", list_names=lambda pattern: sorted(SIZES), example="toy/small",
    ))
    try:
        yield
    finally:
        MODEL_SOURCES.clear()
        MODEL_SOURCES.update(before)


def test_a_source_defined_in_a_test_loads_lists_and_reloads(toy_source: None) -> None:
    assert model_source("toy/small") == "toy" and model_source("resnet18") == "torchvision"
    loaded = load_model("toy/wide", weights_tag="DEFAULT", progress=False)
    assert loaded.weights == "toy:wide" and loaded.info["source"] == "toy"
    assert list_models("toy") == ["toy/small", "toy/wide"]
    assert list_models("toy", "w*") == ["toy/wide"]
    assert "toy/small" in list_models("all")
    x = torch.rand(2, 3, 16, 16)
    for weights_tag in ("DEFAULT", None):  # trained and random weights come back as recorded
        first = load_model("toy/wide", weights_tag=weights_tag, progress=False)
        settings = RunSettings(model=first.name, weights=first.weights, layer="0", methods=("gradcam",), smoothing=(),
                               preprocess=first.preprocess.describe())
        again = load_from_settings(settings, progress=False)
        assert again.weights == first.weights
        torch.testing.assert_close(again.model(x), first.model(x), rtol=0, atol=0)


def test_sources_claim_by_prefix_then_import_path_then_torchvision() -> None:
    assert [model_source(n) for n in ("timm/resnet18", "hf/org/name", "pkg.mod:build", "resnet18")] == [
        "timm", "hf", "import", "torchvision",
    ]
    with pytest.raises(UsageError, match="choose from: all, timm, open_clip, torchvision"):
        list_models("nope")


def test_a_second_fallback_is_refused(toy_source: None) -> None:
    with pytest.raises(ValueError, match="only one model source can be the fallback"):
        register_model_source(ModelSource("other", _load, _reload, fallback=True))
