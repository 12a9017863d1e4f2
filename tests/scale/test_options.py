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
        "import sys, camscope, camscope.cli, camscope.run, camscope.reporting, camscope.scale\n"
        "camscope.cli.build_parser()\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


class _FakeRay:
    """What ``plan_resources`` reads of a cluster: its nodes and their resources."""

    __version__ = "0"

    def __init__(self, *nodes: dict[str, float]) -> None:
        self._nodes = [{"Alive": True, "Resources": dict(r)} for r in nodes]

    def nodes(self) -> list[dict]:
        return self._nodes

    def cluster_resources(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for n in self._nodes:
            for k, v in n["Resources"].items():
                total[k] = total.get(k, 0) + v
        return total


def test_workers_and_resources_per_worker() -> None:
    from camscope.errors import UsageError
    from camscope.scale.cluster import Cluster, RayOptions, Resources, plan_resources

    def plan(opts: RayOptions, *nodes: dict[str, float], device: str | None = None, batches: int = 1000) -> Resources:
        return plan_resources(Cluster(_FakeRay(*nodes), opts.address, started=False), opts, device, batches)

    cpu16 = {"CPU": 16}
    assert plan(RayOptions(), cpu16) == Resources(16, 1, 0.0, "cpu")  # one single-threaded worker per core
    assert plan(RayOptions(cpus_per_worker=4), cpu16) == Resources(4, 4, 0.0, "cpu")
    assert plan(RayOptions(cpus_per_worker=4), cpu16, batches=3).workers == 3  # never more than batches
    assert plan(RayOptions(workers=2), cpu16) == Resources(2, 1, 0.0, "cpu")
    head, gpu_node = {"CPU": 4}, {"CPU": 32, "GPU": 8}
    assert plan(RayOptions("auto"), head, gpu_node, gpu_node) == Resources(16, 4, 1.0, "cuda")  # a GPU each
    assert plan(RayOptions("auto", gpus_per_worker=0.5), head, gpu_node) == Resources(16, 2, 0.5, "cuda")
    assert plan(RayOptions("auto", gpus_per_worker=0), head, gpu_node) == Resources(36, 1, 0.0, "cpu")
    with pytest.raises(UsageError, match="--gpus-per-worker 1: the Ray cluster has no GPUs"):
        plan(RayOptions(gpus_per_worker=1), cpu16)
    with pytest.raises(UsageError, match="--device cuda needs GPUs"):
        plan(RayOptions(), cpu16, device="cuda")
