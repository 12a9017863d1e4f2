"""``camscope methods --model X``: the methods that can explain X, then the others with why."""

from __future__ import annotations

from camscope.cli import main
from camscope.methods.registry import METHODS


def _listing(argv: list[str], capsys) -> tuple[list[str], dict[str, str]]:
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert not err.strip()
    usable, _, rest = out.partition("\nnot for ")
    names = [line.split()[0] for line in usable.splitlines() if line.strip()]
    refused = {}
    for line in rest.splitlines()[1:]:
        name, _, why = line.strip().partition(" ")
        refused[name] = why.strip()
    return names, refused


def test_cnn_lists_no_attention_method(capsys) -> None:
    names, refused = _listing(["methods", "--model", "resnet18"], capsys)
    assert "gradcam" in names and "rollout" not in names
    assert set(names) | set(refused) == set(METHODS)
    assert {"rollout", "chefer", "legrad"} <= set(refused)
    assert "attention" in refused["rollout"] and "ResNet" in refused["rollout"]


def test_vit_lists_every_method(capsys) -> None:
    names, refused = _listing(["methods", "--model", "vit_b_16"], capsys)
    assert names == [n for n in METHODS if n not in refused]
    assert {"rollout", "chefer", "legrad", "gradcam"} <= set(names)


def test_methods_all_keeps_the_methods_that_apply(tmp_path, caplog) -> None:
    """``--methods all`` on a CNN: every method except those that cannot explain it (said in
    the log); naming one of those explicitly is still a one-line refusal."""
    import logging

    import numpy as np
    import pytest
    from PIL import Image

    from camscope.errors import UsageError
    from camscope.methods import method_names
    from camscope.models import ModelSpec
    from camscope.run import ExplainOptions
    from camscope.run.plan import plan_run

    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(tmp_path / "p.png")
    spec = ModelSpec("resnet18", weights_tag="none")
    with caplog.at_level(logging.INFO, logger="camscope.run.plan"):
        plan = plan_run([tmp_path / "p.png"], tmp_path / "out", ExplainOptions(model=spec, methods=method_names(), quiet=True))
    assert plan.methods == [m for m in METHODS if m not in ("rollout", "chefer", "legrad")]
    assert [m.name for m in plan.engine.methods] == plan.methods
    assert "left out, as they cannot explain it: rollout, chefer, legrad" in caplog.text
    with pytest.raises(UsageError, match="method 'rollout' cannot explain this model"):
        plan_run([tmp_path / "p.png"], tmp_path / "out", ExplainOptions(model=spec, methods=["gradcam", "rollout"], quiet=True))
