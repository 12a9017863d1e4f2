"""``--ray`` without Ray installed, and the Ray options' checks: one line, exit 2, nothing
written, Ray never imported (these tests need no Ray)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from camscope.cli import main

MODEL = ["--model", "resnet18", "--weights-tag", "none", "--methods", "gradcam", "--quiet"]


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("camscope: error: ")
    return line[len("camscope: error: ") :]


def test_missing_extra_is_one_line(photos, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: ``import ray`` fails
    out = tmp_path / "out"
    assert main(["explain", str(photos.dir), "--out", str(out), *MODEL, "--ray"]) == 2
    assert _error(capsys) == '--ray needs Ray: pip install "camscope[ray]"'
    assert not out.exists()
    (tmp_path / "run").mkdir()
    assert main(["report", str(tmp_path / "run"), "--ray", "auto"]) == 2
    assert _error(capsys) == '--ray needs Ray: pip install "camscope[ray]"'


@pytest.mark.parametrize(
    "extra,expected",
    [
        (["--workers", "2"], "--workers only apply with --ray"),
        (["--cpus-per-worker", "2", "--gpus-per-worker", "1"], "--gpus-per-worker, --cpus-per-worker only apply with --ray"),
        (["--ray", "--workers", "0"], "--workers must be at least 1, not 0"),
        (["--ray", "--cpus-per-worker", "0"], "--cpus-per-worker must be at least 1, not 0"),
        (["--ray", "--gpus-per-worker", "-1"], "--gpus-per-worker must be at least 0, not -1.0"),
        (["--ray", "some/folder"], "--ray 'some/folder': give auto, ray://HOST:PORT, HOST:PORT or nothing"),
        (["--outputs", "maps,heatmaps"], "unknown --outputs 'heatmaps'; choose from: maps, overlays, figures"),
        (["--outputs", ","], "--outputs must name at least one of: maps, overlays, figures"),
        (["--outputs", "figures", "--no-figures"], "--outputs must name at least one of"),
        (["--outputs", "overlays", "--report"], "--report measures the .npy maps: keep maps in --outputs"),
    ],
)
def test_option_errors(photos, tmp_path: Path, monkeypatch, capsys, extra: list[str], expected: str) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # checked before Ray would be needed
    out = tmp_path / "out"
    assert main(["explain", str(photos.dir), "--out", str(out), *MODEL, *extra]) == 2
    assert _error(capsys).startswith(expected)
    assert not out.exists()


def test_ray_is_imported_only_with_ray() -> None:
    """``import camscope``, the CLI's parser and the run modules load without Ray."""
    import subprocess

    code = (
        "import sys, camscope, camscope.cli, camscope.pipeline, camscope.report, camscope.distributed\n"
        "camscope.cli.build_parser()\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
