"""Tests for camscope.io.checkpoint: safe state-dict loading, unwrapping, refusal of pickles."""

from __future__ import annotations

import argparse
import logging
import os
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from camscope.errors import UnsafeCheckpointError, WeightsError
from camscope.io.checkpoint import load_checkpoint


class Payload:
    """Unpickling this calls os.mkdir(marker): stands in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.mkdir, (self.marker,))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2)
    )


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    model = _model()
    model(torch.zeros(1, 3, 5, 5))  # materialise the lazy layer
    return model.state_dict()


def _assert_same(loaded: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


def test_plain_state_dict_round_trip(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    torch.save(state, tmp_path / "w.pt")
    loaded = load_checkpoint(tmp_path / "w.pt")
    assert type(loaded) is dict
    _assert_same(loaded, state)
    fresh = _model()
    fresh(torch.zeros(1, 3, 5, 5))
    fresh.load_state_dict(loaded)  # strict: keys and shapes match
    torch.save(state, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    _assert_same(load_checkpoint(str(tmp_path / "legacy.pt")), state)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: {"state_dict": sd, "epoch": 3, "best_acc": 0.9},
        lambda sd: {"model": sd, "optimizer": {"state": {}, "param_groups": []}},
        lambda sd: {"model": {"state_dict": sd}},
        lambda sd: OrderedDict((f"module.{k}", v) for k, v in sd.items()),
        lambda sd: {"state_dict": {f"module._orig_mod.{k}": v for k, v in sd.items()}},
    ],
    ids=["state_dict", "model", "nested", "dataparallel", "ddp+compile"],
)
def test_wrappers_and_prefixes_unwrapped(
    tmp_path: Path, state: dict[str, torch.Tensor], wrap
) -> None:
    torch.save(wrap(state), tmp_path / "w.pt")
    _assert_same(load_checkpoint(tmp_path / "w.pt"), state)


def test_partial_prefix_is_kept(tmp_path: Path) -> None:
    sd = {"module.a": torch.ones(1), "b": torch.zeros(1)}
    torch.save(sd, tmp_path / "w.pt")
    assert list(load_checkpoint(tmp_path / "w.pt")) == ["module.a", "b"]


def test_malicious_pickle_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "extra": Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path)
    assert not marker.exists(), "the payload ran"
    message = str(info.value)
    assert "\n" not in message and "\x1b" not in message
    assert message.startswith(f"{path}: refused to load: the file needs arbitrary unpickling (")
    assert "mkdir" in message and "--trust-checkpoint" in message
    assert isinstance(info.value, WeightsError)  # callers catching WeightsError see it too


def test_trust_really_unpickles(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pt"
    torch.save({"weight": torch.ones(2), "extra": Payload(marker)}, path)
    with caplog.at_level(logging.WARNING, logger="camscope.io.checkpoint"):
        loaded = load_checkpoint(path, trust=True)
    assert marker.is_dir()  # proof that only the refusal stands between the file and code
    assert list(loaded) == ["weight"]  # the non-tensor entry is dropped
    assert "this can run code" in caplog.text and "non-tensor" in caplog.text


def test_other_pickled_objects_refused(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1)}, tmp_path / "ns.pt")
    with pytest.raises(UnsafeCheckpointError, match=r"it wants the global 'argparse\.Namespace'"):
        load_checkpoint(tmp_path / "ns.pt")
    _assert_same(load_checkpoint(tmp_path / "ns.pt", trust=True), state)
    model = nn.Linear(2, 3)
    torch.save(model, tmp_path / "module.pt")  # a whole pickled nn.Module
    with pytest.raises(UnsafeCheckpointError, match="torch.nn.modules.linear.Linear"):
        load_checkpoint(tmp_path / "module.pt")
    _assert_same(load_checkpoint(tmp_path / "module.pt", trust=True), model.state_dict())


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: None, "checkpoint file not found"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("just some text\n"), "not a PyTorch checkpoint"),
        (lambda p: p.write_bytes(bytes(range(256)) * 4), "not a PyTorch checkpoint"),
    ],
    ids=["missing", "directory", "empty", "text", "binary"],
)
def test_bad_files_are_weights_errors(tmp_path: Path, make, reason: str) -> None:
    path = tmp_path / "w.pt"
    make(path)
    with pytest.raises(WeightsError) as info:
        load_checkpoint(path)
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert str(info.value).startswith(f"{path}: ") and reason in str(info.value)
    assert "\n" not in str(info.value)


def test_truncated_and_tensorless(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    torch.save(state, tmp_path / "full.pt")
    data = (tmp_path / "full.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated or corrupt") as info:
        load_checkpoint(tmp_path / "cut.pt")
    assert "\n" not in str(info.value)
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "meta.pt")
    with pytest.raises(
        WeightsError,
        match=r"does not contain a state dict of tensors \(top-level keys: epoch, note\)",
    ):
        load_checkpoint(tmp_path / "meta.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(WeightsError, match="does not contain a state dict"):
        load_checkpoint(tmp_path / "list.pt")


def test_safetensors_without_package(tmp_path: Path) -> None:
    try:
        import safetensors  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("safetensors installed")
    (tmp_path / "w.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(WeightsError, match="install the 'safetensors' package"):
        load_checkpoint(tmp_path / "w.safetensors")


def test_trust_not_used_when_not_needed(
    tmp_path: Path, state: dict[str, torch.Tensor], caplog: pytest.LogCaptureFixture
) -> None:
    torch.save(state, tmp_path / "w.pt")
    with caplog.at_level(logging.WARNING, logger="camscope.io.checkpoint"):
        _assert_same(load_checkpoint(tmp_path / "w.pt", trust=True), state)
    assert "full unpickling" not in caplog.text
