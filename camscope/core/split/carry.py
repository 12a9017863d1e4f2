"""What the head of a split hands its tail: :class:`Carry` (the values computed before the
target layer and used after it, the prefix tokens of a transformer's layer, which call of a
module reused several times is the target), with the batch selection the tail needs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from camscope.core.reshape import Reshape

__all__ = ["Carry", "map_tensors", "clone_tensors", "leading_dim"]


def map_tensors(value: Any, fn: Callable[[Tensor], Any]) -> Any:
    """Apply ``fn`` to every tensor in nested tuples / lists / dicts; other leaves pass as is."""
    if isinstance(value, Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
        return type(value)(*(map_tensors(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    return value


def clone_tensors(value: Any) -> Any:
    return map_tensors(value, lambda t: t.clone())


def leading_dim(value: Any) -> int:
    """Batch size of a tensor (or of the first tensor in a nested structure)."""
    found: list[int] = []
    map_tensors(value, lambda t: found.append(t.shape[0] if t.dim() else 1))
    if not found:
        raise TypeError(f"expected a tensor, got {type(value).__name__}")
    return found[0]


@dataclass
class Carry:
    """What the tail needs besides the activations, for a batch of ``batch_size`` images.

    ``values``: traced split: values computed before the target and used after it; hook fallback:
    ``(x,)``. ``batched[i]`` says whether ``values[i]`` is derived from the input: its tensors
    whose first dimension is ``batch_size`` are gathered by the tail's ``index``; everything else
    (constants, non-tensors, tensors of another length) is passed as is. ``acts_shape`` is the
    target map's shape without the batch dimension (checked by ``tail``); ``target_call`` is the
    1-based call of the target module whose output the hook fallback substitutes. ``reshape`` is
    how the layer's output became the map, and ``kept`` the prefix tokens it set aside (B, t, C),
    gathered by the tail's ``index`` like the batched values.
    """

    values: tuple[Any, ...]
    batch_size: int
    batched: tuple[bool, ...]
    acts_shape: tuple[int, ...] | None = None
    target_call: int = 1
    reshape: Reshape | None = None
    kept: Tensor | None = None

    def select(self, index: Tensor | None, n: int) -> tuple[Any, ...]:
        """Values for ``n`` tail rows; row ``i`` belongs to image ``index[i]``.

        ``index=None`` means row ``i`` is image ``i`` (``n == batch_size``), or, for a single
        image, that all rows belong to it. With one image the values are broadcast with
        ``expand`` (no copy), otherwise gathered with ``index_select``.
        """
        index = self._check_index(index, n)
        gather = self._gatherer(index, n)
        return tuple(
            map_tensors(v, gather) if batched else v
            for v, batched in zip(self.values, self.batched, strict=True)
        )

    def select_kept(self, index: Tensor | None, n: int) -> Tensor | None:
        """The prefix tokens for ``n`` tail rows (as :meth:`select`)."""
        if self.kept is None:
            return None
        return self._gatherer(self._check_index(index, n), n)(self.kept)

    def _check_index(self, index: Tensor | None, n: int) -> Tensor | None:
        b = self.batch_size
        if index is None:
            if n != b and b != 1:
                raise ValueError(f"tail got {n} rows for a batch of {b} images; pass index")
        else:
            index = torch.as_tensor(index)
            if (
                index.dim() != 1
                or index.shape[0] != n
                or index.is_floating_point()
                or index.dtype == torch.bool
            ):
                raise ValueError(
                    f"index must be an integer tensor of shape ({n},), got {index.dtype} {tuple(index.shape)}"
                )
            index = index.long()
            if n and (int(index.min()) < 0 or int(index.max()) >= b):
                raise ValueError(
                    f"index values must be in [0, {b}), got [{int(index.min())}, {int(index.max())}]"
                )
        return index

    def _gatherer(self, index: Tensor | None, n: int) -> Callable[[Tensor], Tensor]:
        b = self.batch_size

        def gather(t: Tensor) -> Tensor:
            if t.dim() == 0 or t.shape[0] != b or (index is None and n == b):
                return t
            if b == 1:
                return t.expand(n, *t.shape[1:])
            assert index is not None
            return t.index_select(0, index.to(t.device))

        return gather


# --------------------------------------------------------------------------- split
