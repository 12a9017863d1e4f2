"""Atomic, resumable output: a run interrupted for real (SIGINT, SIGKILL) and re-run gives
outputs identical to an uninterrupted run; finished images are skipped; --force recomputes;
other settings into the same folder are refused.

The model is ``mobilenet_v3_small`` with random weights saved to a file (the same weights in
every process), one intra-op thread everywhere, so runs are bit-for-bit reproducible.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camscope.cli import main
from camscope.io.atomic import is_temp_file
from camscope.io.rundir import FAILURES, MANIFEST, PREDICTIONS, RunDir
from camscope.models import LoadedModel, Preprocess
from camscope.run import ExplainOptions, run_explain
from camscope.run import explainer as pipeline

try:
    from tests import corpus
except ImportError:  # tests/ itself on sys.path (pytest's default "prepend" import mode)
    import corpus  # type: ignore[no-redef]

pytestmark = pytest.mark.usefixtures("one_thread")

N_IMAGES = 8
RUN_FILES = {MANIFEST, PREDICTIONS, FAILURES}  # rewritten by every run


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torchvision

    root = tmp_path_factory.mktemp("resume")
    src = root / "photos"
    src.mkdir()
    for i in range(N_IMAGES):
        Image.fromarray(corpus.smooth_noise(36, 48, seed=100 + i)).save(src / f"im{i}.png")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.mobilenet_v3_small(weights=None)
    torch.save(model.state_dict(), root / "weights.pth")
    return {"root": root, "src": src, "weights": root / "weights.pth"}


def _args(setup: dict, out: Path, *extra: str) -> list[str]:
    return [
        "explain", str(setup["src"]), "--out", str(out),
        "--model", "mobilenet_v3_small", "--weights", str(setup["weights"]), "--weights-tag", "none",
        "--methods", "gradcam,ablationcam", "--images-per-batch", "1", "--quiet", "--no-figures",
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(setup: dict, one_thread) -> Path:
    """An uninterrupted run."""
    out = setup["root"] / "reference"
    assert main(_args(setup, out)) == 0
    return out


def _files(out: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(out)): p for p in sorted(out.rglob("*")) if p.is_file() or p.is_symlink()
    }


def _leftovers(out: Path) -> list[str]:
    return [n for n in _files(out) if is_temp_file(Path(n).name) or n.endswith(".camscope-write-test")]


def _complete(out: Path) -> list[str]:
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet
        return []
    return [rel for rel, rec in manifest["images"].items() if rec["status"] == "complete"]


def _assert_same_outputs(out: Path, ref: Path) -> None:
    """Same files, byte-identical maps / PNGs / CSVs, same manifest except the run time."""
    files, ref_files = _files(out), _files(ref)
    assert sorted(files) == sorted(ref_files)
    for rel, path in files.items():
        if rel != MANIFEST:
            assert path.read_bytes() == ref_files[rel].read_bytes(), rel
    got, want = (json.loads((d / MANIFEST).read_text(encoding="utf-8")) for d in (out, ref))
    got.pop("seconds"), want.pop("seconds")
    assert got == want
    assert list(got["images"]) == list(want["images"])  # same order too


SIGNALS = {"SIGINT": signal.SIGINT, "SIGKILL": signal.SIGKILL}


class _Interrupter(threading.Thread):
    """Starts ``python -m camscope explain ...`` for real, once per signal, and sends each its
    signal as soon as its manifest lists two complete images (in a thread, so that the slow
    interpreter start-ups overlap the in-process reference run)."""

    def __init__(self, setup: dict) -> None:
        super().__init__(daemon=True)
        self.root = setup["root"]
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}
        for name in SIGNALS:
            out = self.root / f"interrupted-{name}"
            with (self.root / f"{name}.log").open("w") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "camscope", *_args(setup, out)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    # A shell may start background jobs with SIGINT ignored; Python only turns
                    # SIGINT into KeyboardInterrupt when it starts with the default disposition.
                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                )
            self.procs[name] = (proc, out)
        self.error: str | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 120
        waiting = set(self.procs)
        while waiting and self.error is None:
            for name in sorted(waiting):
                proc, out = self.procs[name]
                if len(_complete(out)) >= 2:
                    proc.send_signal(SIGNALS[name])
                    waiting.discard(name)
                elif proc.poll() is not None:
                    self.error = f"{name}: the run ended before it could be interrupted"
            if time.monotonic() > deadline:
                self.error = "the runs did not get going"
            time.sleep(0.01)

    def results(self) -> dict[str, tuple[Path, int, str]]:
        """Wait for both; {signal name: (out, exit status, output)}."""
        try:
            self.join(timeout=150)
            status = {name: proc.wait(timeout=60) for name, (proc, _) in self.procs.items()}
        finally:
            for proc, _ in self.procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        logs = {name: (self.root / f"{name}.log").read_text(encoding="utf-8") for name in SIGNALS}
        assert self.error is None, f"{self.error}\n{logs}"
        return {name: (out, status[name], logs[name]) for name, (_, out) in self.procs.items()}


@pytest.fixture(scope="module")
def launched(setup: dict) -> _Interrupter:
    watcher = _Interrupter(setup)
    watcher.start()
    return watcher


@pytest.fixture(scope="module")
def interrupted(launched: _Interrupter, reference: Path) -> dict[str, tuple[Path, int, str]]:
    # ``launched`` before ``reference``: the subprocesses start first, the reference run overlaps.
    return launched.results()


@pytest.mark.parametrize("sig", list(SIGNALS))
def test_interrupted_run_resumes_to_identical_outputs(
    setup: dict, interrupted: dict, reference: Path, sig: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out, rc, output = interrupted[sig]
    done = _complete(out)
    assert 2 <= len(done) < N_IMAGES, "the run was not interrupted half-way"
    if sig == "SIGINT":
        assert rc == 130, output
        assert "interrupted; re-run the same command to resume" in output
        assert "Traceback" not in output
        assert _leftovers(out) == []  # temporary files are removed on the way out
    else:
        assert rc == -signal.SIGKILL, output
    # What the manifest lists as complete is complete and correct already.
    ref_manifest = json.loads((reference / MANIFEST).read_text(encoding="utf-8"))
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    for rel in done:
        assert manifest["images"][rel] == ref_manifest["images"][rel]
        for f in (f for fs in manifest["images"][rel]["files"].values() for f in fs):
            assert (out / f).read_bytes() == (reference / f).read_bytes(), f
    # What a kill in the middle of writing leaves: a temporary file, and an output file of an
    # image the manifest does not list (never trusted, always recomputed).
    assert "im7.png" not in done
    (out / "gradcam" / ".im7.npy.0123abcd.tmp").write_bytes(b"\x93NUMPY partial")
    (out / "gradcam" / "im7.npy").write_bytes(b"\x93NUMPY partial")
    mtimes = {f: (out / f).stat().st_mtime_ns for rel in done for fs in manifest["images"][rel]["files"].values() for f in fs}

    capsys.readouterr()
    assert main(_args(setup, out)) == 0  # the same command again
    err = capsys.readouterr().err
    assert f"resuming: {len(done)} images already complete" in err
    assert "temporary files left by an interrupted run" in err  # (at least) the planted one
    assert f"{N_IMAGES - len(done)} images explained, {len(done)} already complete, 0 failed" in err
    assert {f: (out / f).stat().st_mtime_ns for f in mtimes} == mtimes  # not rewritten
    _assert_same_outputs(out, reference)
    assert _leftovers(out) == []


def test_rerun_skips_force_recomputes_other_settings_refused(
    setup: dict, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = setup["root"] / "rerun"
    shutil.copytree(reference, out)
    stamps = {rel: p.stat().st_mtime_ns for rel, p in _files(out).items() if rel not in RUN_FILES}
    capsys.readouterr()

    assert main(_args(setup, out)) == 0  # everything finished: nothing recomputed
    err = capsys.readouterr().err
    assert f"resuming: {N_IMAGES} images already complete" in err
    assert f"0 images explained, {N_IMAGES} already complete" in err
    assert {rel: p.stat().st_mtime_ns for rel, p in _files(out).items() if rel not in RUN_FILES} == stamps
    _assert_same_outputs(out, reference)

    manifest_bytes = (out / MANIFEST).read_bytes()
    changes = {
        "methods": ["--methods", "gradcam"],
        "layer": ["--layer", "features.11"],
        "weights": ["--weights-tag", "none"],  # without --weights: other (random) weights
        "top_k": ["--top-k", "2"],
    }
    for what, change in changes.items():
        args = _args(setup, out)
        if what == "weights":
            i = args.index("--weights")
            del args[i : i + 2]
        rc = main([*args, *change])
        err = capsys.readouterr().err
        assert rc == 2, (what, err)
        (line,) = err.splitlines()
        assert line.startswith("camscope: error: ") and f"other settings ({what})" in line, line
        assert "--force" in line
        assert (out / MANIFEST).read_bytes() == manifest_bytes  # nothing touched
    assert {rel: p.stat().st_mtime_ns for rel, p in _files(out).items() if rel not in RUN_FILES} == stamps

    assert main([*_args(setup, out), "--force"]) == 0  # recomputes everything, same result
    err = capsys.readouterr().err
    assert f"{N_IMAGES} images explained, 0 already complete" in err
    new = {rel: p.stat().st_mtime_ns for rel, p in _files(out).items() if rel not in RUN_FILES}
    assert all(new[rel] > stamps[rel] for rel in stamps)
    _assert_same_outputs(out, reference)

    assert main([*_args(setup, out), "--methods", "gradcam", "--force"]) == 0  # --force allows it
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    assert manifest["settings"]["methods"] == ["gradcam"]
    assert all(list(rec["files"]) == ["gradcam"] for rec in manifest["images"].values())


def test_keyboard_interrupt_mid_image_with_figures(
    tmp_path: Path, make_tiny_cnn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted between two files of one image (figures on): the manifest never lists the
    half-written image, and the re-run completes it identically."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        Image.fromarray(corpus.smooth_noise(30, 40, seed=200 + i)).save(src / f"im{i}.png")
    model = make_tiny_cnn(seed=5)

    def run(out: Path) -> pipeline.RunResult:
        loaded = LoadedModel(model, "tiny", "random", None, Preprocess("classic", (64, 64)))
        opts = ExplainOptions(methods=["gradcam", "ablationcam"], quiet=True, images_per_batch=1)
        return run_explain([src], out, opts, loaded=loaded)

    run(tmp_path / "reference")
    real = RunDir.write_bytes
    calls = []

    def interrupting(self: RunDir, rel_path: str, data: bytes) -> None:
        if rel_path.endswith(".png"):
            calls.append(rel_path)
            if len(calls) == 8:  # image 3 of 4 (3 PNGs per image), after its first overlay
                raise KeyboardInterrupt
        real(self, rel_path, data)

    monkeypatch.setattr(RunDir, "write_bytes", interrupting)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run(out)
    assert _complete(out) == ["im0.png", "im1.png"]
    assert (out / "gradcam" / "im2.npy").exists()  # a file of the unfinished image is there
    assert _leftovers(out) == []
    monkeypatch.setattr(RunDir, "write_bytes", real)
    res = run(out)
    assert res.skipped == ["im0.png", "im1.png"] and res.completed == ["im2.png", "im3.png"]
    _assert_same_outputs(out, tmp_path / "reference")
    assert len(list((out / "figures").iterdir())) == 4
    np.testing.assert_array_equal(np.load(out / "gradcam" / "im2.npy"), np.load(tmp_path / "reference" / "gradcam" / "im2.npy"))
