"""The intra-op thread count, set for the duration of a block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (None: unchanged); the previous setting
    is restored. Small dense problems (eigen-decompositions of a few hundred rows, a tiny CNN's
    training steps) run fastest on one thread: oversubscribed threads made them ~50x slower on a
    busy 2-core machine."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(old)
