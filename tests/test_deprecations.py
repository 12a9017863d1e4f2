"""Removed spellings keep working for a release with a DeprecationWarning naming the new one:
``CamEngine(..., precision=...)`` and the other speed keywords (now ``speed=SpeedSettings(...)``),
and the module paths that moved into packages (``camscope.pipeline`` -> ``camscope.run`` ...)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

import camscope
from camscope import SpeedSettings
from camscope._moved import MOVED

pytestmark = pytest.mark.usefixtures("one_thread")


def test_camengine_precision_keyword_warns_and_means_speed(tiny_cnn, images) -> None:
    x = images(2)
    want = camscope.CamEngine(tiny_cnn, "features", methods=["gradcam", "ablationcam"],
                              speed=SpeedSettings(precision="fp32", batch_size=3))(x)
    with pytest.warns(DeprecationWarning, match=r"pass speed=SpeedSettings\(precision='fp32', batch_size=3\) instead") as rec:
        engine = camscope.CamEngine(tiny_cnn, "features", methods=["gradcam", "ablationcam"], precision="fp32", batch_size=3)
    assert rec[0].filename == __file__  # points at the caller's line
    assert engine.runtime.speed == SpeedSettings(precision="fp32", batch_size=3)
    got = engine(x)
    for name in want.maps:
        torch.testing.assert_close(got.maps[name], want.maps[name], rtol=0, atol=0)


def test_explain_and_compute_cams_take_the_old_keywords(tiny_cnn, images) -> None:
    x = images(1)
    with pytest.warns(DeprecationWarning, match=r"explain\(freeze=\) is deprecated.*speed=SpeedSettings\(freeze=False\)"):
        res = camscope.explain(tiny_cnn, x, layer="features", methods=["gradcam"], freeze=False)
    assert res.speed == SpeedSettings(freeze=False)
    with pytest.warns(DeprecationWarning, match=r"compute_cams\(compile=\)"):
        res = camscope.compute_cams(tiny_cnn, x, layer="features", methods=["gradcam"], compile=False)
    assert isinstance(res, camscope.CamResult)


def test_unknown_or_doubled_keywords_are_type_errors(tiny_cnn) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'precison'"):
        camscope.CamEngine(tiny_cnn, "features", methods=["gradcam"], precison="bf16")
    with pytest.raises(TypeError, match="not both"):
        camscope.CamEngine(tiny_cnn, "features", methods=["gradcam"], speed=SpeedSettings(), precision="bf16")


def test_old_module_paths_import_the_new_module_with_a_warning() -> None:
    """In one fresh interpreter (the module cache would hide the warning), every old path in
    turn: its first import warns with the new path, and it is the new module."""
    code = (
        "import warnings, importlib, json, sys\n"
        "out = {}\n"
        "for old, new in json.loads(sys.argv[1]).items():\n"
        "    warnings.simplefilter('error', DeprecationWarning)\n"
        "    try:\n        importlib.import_module(old)\n        out[old] = None\n"
        "    except DeprecationWarning as w:\n        out[old] = str(w)\n"
        "    warnings.simplefilter('ignore', DeprecationWarning)\n"
        "    assert importlib.import_module(old) is importlib.import_module(new), old\n"
        "print(json.dumps(out))\n"
    )
    import json

    res = subprocess.run([sys.executable, "-c", code, json.dumps(MOVED)], capture_output=True, text=True, check=True)
    got = json.loads(res.stdout)
    for old in sorted(MOVED):
        assert got[old] == f"{old} is deprecated; import {MOVED[old]} instead", old


def test_public_names_of_old_paths_still_resolve() -> None:
    with pytest.warns(DeprecationWarning):
        pipeline = importlib.import_module("camscope.pipeline") if "camscope.pipeline" not in sys.modules else sys.modules["camscope.pipeline"]
    assert pipeline.ExplainOptions is camscope.ExplainOptions and pipeline.run_explain is camscope.run_explain


def test_explain_options_take_the_former_model_and_speed_fields() -> None:
    from camscope.models import ModelSpec
    from camscope.run import ExplainOptions

    with pytest.warns(DeprecationWarning, match=r"pass model=ModelSpec\('resnet18', weights_tag=None\) and "
                                                r"speed=SpeedSettings\(batch_size=8, precision='bf16'\) instead"):
        old = ExplainOptions(model="resnet18", weights_tag=None, precision="bf16", batch_size=8)
    assert old == ExplainOptions(model=ModelSpec("resnet18", weights_tag=None),
                                 speed=SpeedSettings(precision="bf16", batch_size=8))
