"""Safe loading through the CLI: ``--weights`` files load with ``weights_only=True``; a file that
needs arbitrary unpickling is refused (exit 2, one line saying why and naming
``--trust-checkpoint``) before anything runs or is written; ``--trust-checkpoint`` allows it.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from PIL import Image

from camscope.cli import main

try:
    from tests import corpus
except ImportError:  # tests/ itself on sys.path (pytest's default "prepend" import mode)
    import corpus  # type: ignore[no-redef]

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = ["--model", "mobilenet_v3_small", "--weights-tag", "none"]


class Payload:
    """Unpickling this calls ``os.mkdir(marker)``: stands in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def state_dict() -> dict[str, torch.Tensor]:
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return torchvision.models.mobilenet_v3_small(weights=None).state_dict()


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(corpus.smooth_noise(24, 32, seed=9)).save(path)
    return path


def _explain(photo: Path, out: Path, weights: Path, *extra: str) -> list[str]:
    return ["explain", str(photo), "--out", str(out), *MODEL, "--weights", str(weights),
            "--methods", "gradcam", "--quiet", "--no-figures", *extra]  # fmt: skip


def _write_evil(kind: str, path: Path, marker: Path, state: dict | None = None) -> None:
    obj = {"extra": Payload(marker), "state_dict": state or {"w": torch.ones(2)}}
    if kind == "zip":
        torch.save(obj, path)
    elif kind == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle stream, as pickle.dump writes it (protocol 2, as torch.load reads)
        with open(path, "wb") as fh:
            pickle.dump(obj, fh, protocol=2)


@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle"])
def test_malicious_checkpoint_is_refused_and_never_runs(
    kind: str, tmp_path: Path, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    _write_evil(kind, evil, marker)
    out = tmp_path / "out"
    rc = main(_explain(photo, out, evil))
    err = capsys.readouterr().err
    assert rc == 2, err
    (line,) = err.splitlines()
    assert line.startswith(f"camscope: error: {evil}: refused to load"), line
    assert "arbitrary unpickling" in line and "can run code" in line  # says why
    assert "mkdir" in line  # names what it wanted to call
    assert "--trust-checkpoint" in line  # and the way out
    assert not marker.exists(), "the payload ran"
    assert not out.exists(), "something was written before the checks passed"


def test_trust_checkpoint_allows_it(
    tmp_path: Path, photo: Path, state_dict: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    evil = tmp_path / "trusted.pth"
    _write_evil("zip", evil, marker, state_dict)
    assert main(_explain(photo, tmp_path / "refused", evil)) == 2
    assert not marker.exists()
    capsys.readouterr()
    rc = main(_explain(photo, tmp_path / "out", evil, "--trust-checkpoint"))
    err = capsys.readouterr().err
    assert rc == 0, err
    assert marker.is_dir()  # proof that only the refusal stood between the file and its code
    assert "full unpickling (--trust-checkpoint)" in err  # said loudly
    assert (tmp_path / "out" / "gradcam" / "photo.npy").is_file()


def test_plain_state_dict_loads_weights_only(
    tmp_path: Path, photo: Path, state_dict: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    weights = tmp_path / "plain.pth"
    torch.save(state_dict, weights)
    calls: list[object] = []
    real = torch.load

    def spy(*args: object, **kw: object) -> object:
        calls.append(kw.get("weights_only"))
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "load", spy)
    assert main(_explain(photo, tmp_path / "out", weights, "--trust-checkpoint")) == 0
    assert calls == [True]  # trusted or not, a safe file never takes the unpickling path


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"hello, I am plain text\n", "not a PyTorch checkpoint"),
        (b"", "empty file"),
    ],
)
def test_not_a_checkpoint(
    tmp_path: Path, photo: Path, content: bytes, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(content)
    assert main(_explain(photo, tmp_path / "out", bad)) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"camscope: error: {bad}: ") and reason in line, line
    assert not (tmp_path / "out").exists()
