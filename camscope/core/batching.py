"""Rows per pass chosen by measurement, on the work itself.

The fastest number of images per full forward on a CPU depends on the CPU (caches, vector
width, bf16 units), the model and the precision: on ResNet-50 at 224x224, 2 cores, it was 4
on one AMD EPYC with AVX-512 (8 was 10 % slower) and flat between 8 and 16 on an AVX2 one.
``BatchTuner`` times the first batches of a many-forward method at each candidate size and
keeps the fastest for the rest. Every timed batch is real work whose result is used, so the
measurement costs nothing beyond running a few batches at a slower size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["BatchTuner", "CPU_FORWARD_CANDIDATES"]

#: Candidate images per full forward on CPU (``benchmarks/batch_sweep.py --forward-only`` on
#: an AVX-512 CPU, ResNet-50: 1 image was 1.5x slower per image than 4; the fastest was 4 at
#: fp32 and 16 at bf16; see benchmarks/results/2026-12-02-amd-avx512-forward-sweep.md).
CPU_FORWARD_CANDIDATES = (2, 4, 8, 16)


class BatchTuner:
    """Tries each candidate batch size on real batches and settles on the fastest per row.

    Each candidate runs ``1 + timed`` full batches: the first is not timed (a new input shape
    makes oneDNN build its kernels; the very first batch also builds the frozen copy), the
    others are, and the candidate's cost is its fastest seconds per row (the least disturbed
    by other load). Call ``next_size`` before a batch and ``record`` after it.
    """

    def __init__(self, candidates: Sequence[int], timed: int = 2) -> None:
        if not candidates or any(c < 1 for c in candidates):
            raise ValueError(f"batch candidates must be positive integers, got {list(candidates)}")
        self.candidates = list(dict.fromkeys(int(c) for c in candidates))
        self.timed = timed
        self._runs: list[int] = [0] * len(self.candidates)
        self._cost: list[float] = [math.inf] * len(self.candidates)
        self._i = 0

    @property
    def done(self) -> bool:
        """Whether every candidate has been measured."""
        return self._i >= len(self.candidates)

    @property
    def best(self) -> int | None:
        """Fastest candidate measured so far (None before any timed batch)."""
        costs = self.costs()
        return min(costs, key=costs.__getitem__) if costs else None

    def costs(self) -> dict[int, float]:
        """Seconds per row of each measured candidate."""
        return {c: cost for c, cost in zip(self.candidates, self._cost, strict=True) if cost < math.inf}

    def next_size(self) -> int:
        """Batch size to run next: the candidate being measured, then the best one."""
        if self.done:
            best = self.best
            return best if best is not None else self.candidates[0]
        return self.candidates[self._i]

    def record(self, rows: int, seconds: float) -> None:
        """Time of the batch just run at ``next_size()`` rows (a shorter, last batch is ignored)."""
        if self.done or rows != self.candidates[self._i]:
            return
        run = self._runs[self._i]
        if run > 0:  # run 0 is the warm-up
            self._cost[self._i] = min(self._cost[self._i], seconds / rows)
        self._runs[self._i] = run + 1
        if self._runs[self._i] > self.timed:
            self._i += 1
