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
