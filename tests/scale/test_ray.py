"""``--ray``: the same run on Ray Data gives the same tree as a local run, survives workers that
die, resumes after an interrupted driver, records bad images as failures, and refuses an
``--out`` a worker cannot write.

One Ray session for the module, started in this process (2 CPUs, no dashboard, a small object
store); ``--ray`` without an address uses it, the subprocess drivers join it by its address.
The model is ``resnet18`` with random weights saved to a file, the photos are generated, every
process runs one torch thread and the images are grouped into batches alike, so the maps of a
``--ray`` run are byte-identical to the local run's (a resumed run's: within 1e-5, its images
are grouped into batches from where the first run stopped).
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
from camscope.io.rundir import FAILURES, MANIFEST, PREDICTIONS
from tests.conftest import photo_array

ray = pytest.importorskip("ray", reason="the --ray tests need camscope[ray]")

pytestmark = pytest.mark.usefixtures("one_thread")

GOOD = 7
BAD = {"broken.jpg": "truncated or corrupt image data", "notes.png": "cannot identify image file"}
N_IMAGES = GOOD + len(BAD)
PER_BATCH = 2  # 9 inputs: 4 batches of 2 and one of 1


@pytest.fixture(scope="module")
def session():
    """The module's Ray session: 2 CPUs, no dashboard, a 100 MB object store, on the loopback
    address only (as camscope's own local mode)."""
    from camscope.scale.cluster import _loopback_only

    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    with _loopback_only():
        ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20,
                 configure_logging=False, log_to_driver=False, _node_ip_address="127.0.0.1",
                 _system_config={"worker_niceness": 0})  # fmt: skip
    address = ray.get_runtime_context().gcs_address
    assert address.startswith("127.0.0.1:"), address
    yield address
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    import torchvision

    root = tmp_path_factory.mktemp("ray")
    src = root / "photos"
    src.mkdir()
    for i in range(GOOD):
        Image.fromarray(photo_array(100 + 7 * i, 140 - 5 * i, seed=40 + i)).save(src / f"im{i}.jpg", quality=90)
    good = (src / "im0.jpg").read_bytes()
    (src / "broken.jpg").write_bytes(good[: len(good) // 3])
    (src / "notes.png").write_text("not a picture\n")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None)
    torch.save(model.state_dict(), root / "weights.pth")
    return {"root": root, "src": src, "weights": root / "weights.pth"}


def _args(setup: dict, out: Path, *extra: str) -> list[str]:
    return [
        "explain", str(setup["src"]), "--out", str(out),
        "--model", "resnet18", "--weights", str(setup["weights"]), "--weights-tag", "none",
        "--methods", "gradcam,ablationcam", "--images-per-batch", str(PER_BATCH), "--quiet", *extra,
    ]  # fmt: skip


RAY = ("--ray", "--workers", "2", "--cpus-per-worker", "1")


@pytest.fixture(scope="module")
def reference(setup: dict, one_thread) -> Path:
    """The local run (one thread, as every Ray worker here)."""
    out = setup["root"] / "local"
    assert main(_args(setup, out)) == 1  # the two bad images fail
    return out


def _files(out: Path) -> dict[str, Path]:
    return {str(p.relative_to(out)): p for p in sorted(out.rglob("*")) if p.is_file()}


def _manifest(out: Path) -> dict:
    return json.loads((out / MANIFEST).read_text(encoding="utf-8"))


def _assert_same_tree(out: Path, ref: Path, *, exact: bool = True) -> dict:
    """Same files; maps within 1e-5 and, with ``exact`` (same grouping of the images into
    batches), byte-identical as every other file -- else the PNGs the same but for the odd
    colour step where a map moved by rounding; the manifest equal but for the run time and the
    ``cluster`` section, which it returns."""
    files, ref_files = _files(out), _files(ref)
    assert sorted(files) == sorted(ref_files)
    assert not [n for n in files if is_temp_file(Path(n).name) or ".camscope-" in n]
    for rel, path in files.items():
        if rel.endswith(".npy"):
            got, want = np.load(path), np.load(ref_files[rel])
            assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5, rel
        if rel == MANIFEST or (not exact and rel.endswith(".npy")):
            continue
        if exact or not rel.endswith(".png"):
            assert path.read_bytes() == ref_files[rel].read_bytes(), rel
        else:
            with Image.open(path) as a, Image.open(ref_files[rel]) as b:
                got, want = np.asarray(a, dtype=np.int16), np.asarray(b, dtype=np.int16)
            assert got.shape == want.shape and (got != want).mean() < 0.01 and np.abs(got - want).max() <= 16, rel
    got, want = _manifest(out), _manifest(ref)
    got.pop("seconds"), want.pop("seconds")
    cluster = got.pop("cluster")
    assert "cluster" not in want
    assert got == want
    return cluster


# --------------------------------------------------------------------------- same results


def test_ray_run_equals_local_run(session, setup: dict, reference: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = setup["root"] / "ray"
    assert main(_args(setup, out, *RAY)) == 1
    err = capsys.readouterr().err
    assert f"{GOOD} images explained, 0 already complete, {len(BAD)} failed" in err
    cluster = _assert_same_tree(out, reference)
    assert cluster == {
        "ray": ray.__version__, "address": "local", "workers": 2, "cpus_per_worker": 1,
        "gpus_per_worker": 0.0, "threads_per_worker": 1, "device": "cpu",
    }  # fmt: skip
    assert list(_manifest(out)["images"]) == list(_manifest(reference)["images"])  # same order too
    # Bad images: one failure each, from a healthy worker, with the local run's reason.
    failures = _manifest(out)["failures"]
    assert sorted(failures) == sorted(BAD)
    for name, reason in BAD.items():
        assert reason in failures[name]["reason"]
    assert (out / FAILURES).read_bytes() == (reference / FAILURES).read_bytes()
    # Re-running resumes: nothing is recomputed, nothing rewritten but the tables.
    stamps = {rel: p.stat().st_mtime_ns for rel, p in _files(out).items() if rel not in (MANIFEST, PREDICTIONS, FAILURES)}
    assert main(_args(setup, out, *RAY)) == 1
    assert f"0 images explained, {GOOD} already complete, {len(BAD)} failed" in capsys.readouterr().err
    assert {rel: p.stat().st_mtime_ns for rel, p in _files(out).items() if rel in stamps} == stamps


# --------------------------------------------------------------------------- dying workers


class ExitOnce:
    """Fault hook: the worker process exits, as a crash would, after finishing its ``n``-th
    image -- once per run (the first worker to get there creates ``marker``)."""

    def __init__(self, n: int, marker: Path) -> None:
        self.n, self.marker = n, str(marker)

    def __call__(self, done: int, rel: str) -> None:
        if done == self.n and _first(self.marker):
            os._exit(1)


class ReportAndWait:
    """Fault hook: after its first image, the first worker hands its actor handle to the test
    (which ``ray.kill``s it) and stays busy in the middle of its batch."""

    def __init__(self, queue, marker: Path) -> None:
        self.queue, self.marker = queue, str(marker)

    def __call__(self, done: int, rel: str) -> None:
        if done == 1 and _first(self.marker):
            self.queue.put(ray.get_runtime_context().current_actor)
            time.sleep(60)  # killed long before


def _first(marker: str) -> bool:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


@pytest.fixture
def faulty_workers(monkeypatch: pytest.MonkeyPatch):
    """Fault injection: ``faulty_workers(fault)`` makes every explain worker of the next runs
    call ``fault(n, rel)`` after the n-th image it finished (its files written), so a test can
    make an actor die or be killed mid-batch. The worker class is defined here, in the test, so
    Ray ships it to the workers by value, fault included; production code has no hook."""
    from camscope.scale import explain

    def inject(fault) -> None:
        class FaultyExplainWorker(explain.ExplainWorker):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, **kwargs)
                explain_batch, done = self.explainer.explain, [0]

                def explain_then_fault(items):
                    for outcome in explain_batch(items):
                        yield outcome
                        done[0] += 1
                        fault(done[0], outcome.item.rel)

                self.explainer.explain = explain_then_fault

        monkeypatch.setattr(explain, "ExplainWorker", FaultyExplainWorker)

    return inject


def _run_api(setup: dict, out: Path) -> object:
    from camscope.models import ModelSpec
    from camscope.run import ExplainOptions
    from camscope.scale import RayOptions, run_explain_ray

    opts = ExplainOptions(
        model=ModelSpec("resnet18", weights_tag=None, weights_file=str(setup["weights"])),
        methods=["gradcam", "ablationcam"], images_per_batch=PER_BATCH, quiet=True,
    )  # fmt: skip
    return run_explain_ray([setup["src"]], out, opts, RayOptions(workers=2, cpus_per_worker=1))


def _assert_each_once(res, out: Path, ref: Path) -> None:
    assert sorted(res.completed) == sorted(_manifest(ref)["images"])  # each image exactly once
    assert sorted(Path(p).name for p, _ in res.failed) == sorted(BAD)
    _assert_same_tree(out, ref)


def test_worker_that_exits_on_its_third_image_is_restarted(session, setup: dict, reference: Path, faulty_workers) -> None:
    out = setup["root"] / "exit"
    marker = setup["root"] / "exit.marker"
    faulty_workers(ExitOnce(3, marker))
    res = _run_api(setup, out)
    assert marker.exists()  # a worker did die
    _assert_each_once(res, out, reference)


def test_killed_actor_is_restarted_and_its_batch_retried(session, setup: dict, reference: Path, faulty_workers) -> None:
    from ray.util.queue import Queue

    queue = Queue()
    killed: list[object] = []

    def killer() -> None:
        handle = queue.get(timeout=120)
        ray.kill(handle, no_restart=False)
        killed.append(handle)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    out = setup["root"] / "kill"
    faulty_workers(ReportAndWait(queue, setup["root"] / "kill.marker"))
    res = _run_api(setup, out)
    thread.join(timeout=5)
    assert killed, "no actor was killed"
    _assert_each_once(res, out, reference)


def test_batch_whose_worker_always_dies_is_recorded_as_failures(
    session, setup: dict, reference: Path, monkeypatch: pytest.MonkeyPatch, faulty_workers
) -> None:
    """A batch that kills its worker on every try is given up after the retries: its images are
    failures (re-run to retry), every other image is complete."""
    from camscope.scale import pool

    monkeypatch.setattr(pool, "MAX_TASK_RETRIES", 0)
    order = sorted(p.name for p in setup["src"].iterdir())  # the order the images are planned in
    i = order.index("im4.jpg") // PER_BATCH * PER_BATCH
    batch = set(order[i : i + PER_BATCH])
    out = setup["root"] / "poison"
    faulty_workers(_ExitOn("im4.jpg"))
    res = _run_api(setup, out)
    lost = {Path(p).name: reason for p, reason in res.failed}
    assert set(lost) == {*BAD, *batch}
    for name in batch:
        assert "its worker process died on every try (1)" in lost[name] and "re-run" in lost[name]
    assert sorted(res.completed) == sorted(set(_manifest(reference)["images"]) - batch)
    for rel in res.completed:  # what completed is complete and right
        np.testing.assert_array_equal(np.load(out / "gradcam" / rel.replace(".jpg", ".npy")),
                                      np.load(reference / "gradcam" / rel.replace(".jpg", ".npy")))  # fmt: skip
    assert not [n for n in _files(out) if is_temp_file(Path(n).name)]


class _ExitOn:
    """Fault hook: exit whenever ``rel`` is finished (every try of its batch dies)."""

    def __init__(self, rel: str) -> None:
        self.rel = rel

    def __call__(self, done: int, rel: str) -> None:
        if rel == self.rel:
            os._exit(1)


# --------------------------------------------------------------------------- interrupted driver

SIGNALS = {"SIGINT": signal.SIGINT, "SIGKILL": signal.SIGKILL}


def _complete(out: Path) -> int:
    try:
        return sum(rec["status"] == "complete" for rec in _manifest(out)["images"].values())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_interrupted_driver_resumes_to_the_same_tree(
    session: str, setup: dict, reference: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m camscope explain ... --ray ADDRESS`` for real, joining this session, stopped
    by SIGINT or SIGKILL once its manifest lists two images; re-running finishes the rest."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs: dict[str, tuple[subprocess.Popen, Path, Path]] = {}
    for name in SIGNALS:
        out, log = setup["root"] / f"interrupted-{name}", setup["root"] / f"{name}.log"
        with log.open("w") as fh:
            proc = subprocess.Popen(
                [sys.executable, "-m", "camscope", *_args(setup, out, "--ray", session, "--workers", "1", "--cpus-per-worker", "1")],
                stdout=fh, stderr=subprocess.STDOUT, env=env,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
            )  # fmt: skip
        procs[name] = (proc, out, log)
    try:
        waiting, deadline = set(SIGNALS), time.monotonic() + 150
        while waiting and time.monotonic() < deadline:
            for name in sorted(waiting):
                proc, out, log = procs[name]
                if _complete(out) >= 2:
                    proc.send_signal(SIGNALS[name])
                    waiting.discard(name)
                elif proc.poll() is not None:
                    pytest.fail(f"{name}: the run ended before it was interrupted:\n{log.read_text()}")
            time.sleep(0.01)
        assert not waiting, "the runs did not get going"
        status = {name: proc.wait(timeout=60) for name, (proc, _, _) in procs.items()}
    finally:
        for proc, _, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for name, (_, out, log) in procs.items():
        output = log.read_text()
        done = _complete(out)
        assert 2 <= done < GOOD, f"{name}: not interrupted half-way ({done})\n{output}"
        if name == "SIGINT":
            assert status[name] == 130, output
            assert "interrupted; re-run the same command to resume" in output
            assert "Traceback" not in output, output
        else:
            assert status[name] == -signal.SIGKILL, output
        for rec in _manifest(out)["images"].values():  # what it lists is complete and right
            for f in (f for files in rec["files"].values() for f in files):
                assert (out / f).read_bytes() == (reference / f).read_bytes(), f
        assert main(_args(setup, out, *RAY)) == 1
        err = capsys.readouterr().err
        assert f"{GOOD - done} images explained, {done} already complete" in err
        # The rest is grouped into batches from where the first run stopped: maps within 1e-5.
        _assert_same_tree(out, reference, exact=False)


# --------------------------------------------------------------------------- report


def test_report_on_ray_equals_local_report(session, setup: dict, tmp_path: Path) -> None:
    """``camscope report DIR --ray``: every photo measured on a worker (the model rebuilt there
    from the manifest) gives the local report's records, and the same tables."""
    src = tmp_path / "few"
    src.mkdir()
    for name in ("im0.jpg", "im1.jpg", "im2.jpg"):
        shutil.copyfile(setup["src"] / name, src / name)
    local, dist = tmp_path / "report-local", tmp_path / "report-ray"
    assert main([*_args({**setup, "src": src}, local), "--outputs", "maps"]) == 0
    shutil.copytree(local, dist)
    measure = ["--steps", "3", "--no-road", "--quiet"]
    assert main(["report", str(local), *measure]) == 0
    assert main(["report", str(dist), *measure, *RAY]) == 0
    names = sorted(p.name for p in (local / "metrics").iterdir())
    assert names == sorted(p.name for p in (dist / "metrics").iterdir()) == ["im0.jpg.json", "im1.jpg.json", "im2.jpg.json"]
    for name in names:
        got, want = (json.loads((d / "metrics" / name).read_text(encoding="utf-8")) for d in (dist, local))
        assert got == want, name
        assert got["targets"][0]["variants"]["gradcam"]["deletion_auc"] >= 0  # measured with the model
    assert (dist / "metrics.csv").read_bytes() == (local / "metrics.csv").read_bytes()
    got, want = (json.loads((d / "summary.json").read_text(encoding="utf-8")) for d in (dist, local))
    got.pop("generated"), want.pop("generated")
    assert got == want


# --------------------------------------------------------------------------- the probe


def test_probe_failure_is_one_line_and_writes_nothing(
    session, setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An ``--out`` the driver's node may write (its check is switched off here) but a worker's
    cannot: a folder made read-only (or, as root, who writes anywhere, immutable)."""
    from camscope.io.rundir import RunDir

    out = tmp_path / "locked"
    out.mkdir()
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(out)], capture_output=True).returncode:
            pytest.skip("running as root without a working chattr: cannot make a folder unwritable")
        unlock = ["chattr", "-i", str(out)]
    else:
        out.chmod(0o555)
        unlock = ["chmod", "755", str(out)]
    monkeypatch.setattr(RunDir, "check_writable", lambda self, what="--out": None)
    try:
        assert main(_args(setup, out, *RAY)) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("camscope: error: --out ") and str(out) in line
        assert "a Ray worker on" in line and "cannot write there" in line
        assert os.uname().nodename in line  # the node, by name
        assert list(out.iterdir()) == []
    finally:
        subprocess.run(unlock, check=True)
