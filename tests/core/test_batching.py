"""Rows per full forward chosen by measurement (``BatchTuner``, ``Runtime.forward_slices``).

- the tuner tries every candidate, ignores each one's first (warm-up) batch and short batches,
  and settles on the fastest per row;
- ``forward_slices`` covers every row once, in order, tunes on the first call only (per key;
  calls with too few rows go on where the last stopped), and does not tune with a batch size
  set, with ``compile`` or on CUDA;
- Score-CAM with a tuned batch equals Score-CAM with a fixed one, and a frozen copy whose
  trace kept its batch size is caught and padded instead.
"""

from __future__ import annotations

import pytest
import torch

import camscope.core.batching as batching
import camscope.core.runtime as runtime_mod
from camscope.core.batching import BatchTuner
from camscope.core.runtime import Runtime, SpeedSettings
from camscope.engine import CamEngine

pytestmark = pytest.mark.usefixtures("one_thread")


def test_tuner_picks_fastest_per_row_after_warm_up() -> None:
    tuner = BatchTuner([2, 4, 8, 4], timed=2)
    assert tuner.candidates == [2, 4, 8]
    per_row = {2: 3.0, 4: 1.0, 8: 2.0}
    warm_up = {2: 0.1, 4: 99.0, 8: 0.1}  # a slow first batch (kernel building) does not count
    seen = []
    while not tuner.done:
        size = tuner.next_size()
        seen.append(size)
        first = seen.count(size) == 1
        tuner.record(size, warm_up[size] if first else per_row[size] * size)
    assert seen == [2, 2, 2, 4, 4, 4, 8, 8, 8]
    assert tuner.best == 4 and tuner.next_size() == 4
    assert tuner.costs() == {2: 3.0, 4: 1.0, 8: 2.0}


def test_tuner_takes_fastest_timed_run_and_ignores_short_batches() -> None:
    tuner = BatchTuner([4], timed=3)
    assert tuner.best is None and tuner.next_size() == 4
    tuner.record(4, 1.0)  # warm-up
    tuner.record(3, 0.0)  # a last, shorter batch: not a measurement of 4 rows
    for seconds in (8.0, 4.0, 6.0):
        tuner.record(4, seconds)
    assert tuner.done and tuner.costs() == {4: 1.0}


@pytest.mark.parametrize("bad", [[], [0, 4], [-2]])
def test_tuner_rejects_bad_candidates(bad) -> None:
    with pytest.raises(ValueError, match="positive integers"):
        BatchTuner(bad)


class _FakeClock:
    """Stands in for time.perf_counter: advanced by the loop body by a cost per row."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _drain(rt: Runtime, n: int, per_row: dict[int, float], clock: _FakeClock, key=None) -> list[int]:
    sizes, covered = [], []
    for sl in rt.forward_slices(n, {"cpu": 8, "cuda": 128}, key=key):
        rows = list(range(n))[sl]
        covered += rows
        sizes.append(len(rows))
        clock.now += per_row.get(len(rows), 5.0) * len(rows)
    assert covered == list(range(n))
    return sizes


def test_forward_slices_tune_once_per_key(monkeypatch, tiny_cnn) -> None:
    clock = _FakeClock()
    monkeypatch.setattr(runtime_mod.time, "perf_counter", clock)
    monkeypatch.setattr(batching, "CPU_FORWARD_CANDIDATES", (2, 4, 8))
    per_row = {2: 3.0, 4: 1.0, 8: 2.0}
    rt = Runtime(tiny_cnn, split=None)
    sizes = _drain(rt, 60, per_row, clock, key=(3, 32, 32))
    assert sizes[:9] == [2, 2, 2, 4, 4, 4, 8, 8, 8]
    assert sizes[9:] == [4, 4, 4, 4, 2]  # the 18 rows left: the fastest per row
    # Next call, same key: no tuning; another key (input shape) tunes again.
    assert _drain(rt, 10, per_row, clock, key=(3, 32, 32)) == [4, 4, 2]
    assert _drain(rt, 60, per_row, clock, key=(3, 64, 64))[:3] == [2, 2, 2]


def test_forward_slices_too_few_rows_to_finish_tuning(monkeypatch, tiny_cnn) -> None:
    clock = _FakeClock()
    monkeypatch.setattr(runtime_mod.time, "perf_counter", clock)
    monkeypatch.setattr(batching, "CPU_FORWARD_CANDIDATES", (2, 4, 8))
    rt = Runtime(tiny_cnn, split=None)
    per_row = {2: 3.0, 4: 1.0, 8: 2.0}
    assert _drain(rt, 9, per_row, clock) == [2, 2, 2, 3]
    tuner = next(iter(rt.tuners.values()))
    assert not tuner.done and tuner.costs() == {2: 3.0}
    # The next calls go on where it stopped (4 rows: warm-up, then timed), then settle.
    assert _drain(rt, 12, per_row, clock) == [4, 4, 4]
    assert _drain(rt, 30, per_row, clock) == [8, 8, 8, 4, 2]
    assert tuner.done and tuner.best == 4
    assert _drain(rt, 9, per_row, clock) == [4, 4, 1]


def test_forward_slices_fixed_without_tuning(tiny_cnn) -> None:
    clock = _FakeClock()
    assert _drain(Runtime(tiny_cnn, split=None, speed=SpeedSettings(batch_size=3)), 10, {}, clock) == [3, 3, 3, 1]
    assert _drain(Runtime(tiny_cnn, split=None, speed=SpeedSettings(compile=True)), 20, {}, clock) == [8, 8, 4]
    rt = Runtime(tiny_cnn, split=None, device=torch.device("cuda"))  # device type only; nothing runs
    assert _drain(rt, 300, {}, clock) == [128, 128, 44]


def test_tuned_scorecam_equals_fixed_batch(monkeypatch, make_tiny_cnn, images) -> None:
    monkeypatch.setattr(batching, "CPU_FORWARD_CANDIDATES", (2, 3, 5))
    model = make_tiny_cnn(channels=40, dead=(1, 7))
    x = images(2, seed=4)
    fixed = CamEngine(model, "features", methods=["scorecam"], speed=SpeedSettings(batch_size=8, freeze=True))(x)
    engine = CamEngine(model, "features", methods=["scorecam"], speed=SpeedSettings(freeze=True))
    tuned = engine(x)
    assert engine.runtime.mode == "frozen" and engine.runtime.forward_mode.any_batch is True
    assert next(iter(engine.runtime.tuners.values())).best in (2, 3, 5)
    torch.testing.assert_close(tuned.maps["scorecam"], fixed.maps["scorecam"], atol=1e-5, rtol=1e-4)


class _BakedBatch(torch.nn.Module):
    """Its trace keeps the batch size: ``int(x.shape[0])`` becomes a constant."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU())
        self.fc = torch.nn.Linear(6 * 8 * 8, 4)

    def forward(self, x):
        f = torch.nn.functional.avg_pool2d(self.features(x), 4)
        return self.fc(f.reshape(int(f.shape[0]), -1))


def test_frozen_copy_with_baked_batch_size_is_padded(images) -> None:
    model = _BakedBatch().eval()
    rt = CamEngine(model, "features", methods=["scorecam"], speed=SpeedSettings(freeze=True)).runtime
    with torch.inference_mode():
        first = images(4, size=32, seed=1)
        torch.testing.assert_close(rt.forward(first), model(first), atol=1e-5, rtol=1e-4)
        assert rt.mode == "frozen"
        for n in (3, 6, 2):
            xs = images(n, size=32, seed=n)
            torch.testing.assert_close(rt.forward(xs), model(xs), atol=1e-5, rtol=1e-4)
    assert rt.forward_mode.any_batch is False
