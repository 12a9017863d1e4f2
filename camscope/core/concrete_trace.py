"""A torch.fx split for models whose forward asks questions of its tensors (Hugging Face).

Plain ``torch.fx`` tracing fails as soon as Python control flow reads a traced value:
transformers' models check ``if pixel_values.dtype != expected_dtype`` in their forward, so
they fell back to the hook path, where every Ablation-CAM tail is a full forward. (transformers
5 no longer ships its own fx tracer, ``transformers.utils.fx``.)

:class:`ConcreteSplitTracer` traces only the forward bodies of the target layer's *ancestors*
(the model, ``hf.vit``, the encoder list, the target's block); every other module is one leaf
call, run as it is. When that code asks a question of a traced value (``bool(proxy)``), the
answer is computed on an example input: the graph traced so far runs on it (an fx
``Interpreter``, with torch.fx's patches reverted), and its value decides. The traced graph
thus holds the branch the example took; :func:`camscope.core.split.split_model` checks that
``tail(head(x)) == model(x)`` on the example before using it, else it keeps the hook path.
Questions about the input's values (not its shape or dtype: ``bool()`` of a tensor, or a
number from ``.item()``) are refused, so such a model keeps the hook path; the ancestors of a layer in transformers' vision classifiers (ViT, DeiT, BEiT, Swin, ConvNeXt,
ResNet) have none: their questions are about dtypes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
from torch import Tensor, nn

__all__ = ["ConcreteSplitTracer"]

_VALUE_METHODS = {"item", "tolist", "numpy", "__bool__", "__int__", "__float__"}


def _reads_values(node: torch.fx.Node) -> bool:
    """Whether ``node`` depends on a tensor's values turned into Python numbers."""
    seen: set[torch.fx.Node] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_method" and n.target in _VALUE_METHODS:
            return True
        stack.extend(n.all_input_nodes)
    return False


class ConcreteSplitTracer(torch.fx.Tracer):
    """Traces the ancestors of ``target``; every other module is a leaf; ``bool()`` of a traced
    value is answered by running the graph so far on ``example`` (module docstring)."""

    def __init__(self, target: nn.Module, ancestors: list[nn.Module], example: Tensor) -> None:
        super().__init__()
        self._target = target
        self._ancestors = ancestors
        self.example = example
        self.decisions = 0
        """How many control-flow questions were answered from the example."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return not any(m is a for a in self._ancestors) or m is self._target

    def to_bool(self, obj: torch.fx.Proxy) -> bool:
        self.decisions += 1
        if _reads_values(obj.node):
            raise torch.fx.proxy.TraceError("control flow depends on tensor values (.item() / .tolist())")
        value = self._value(obj.node)
        if isinstance(value, Tensor):  # bool() of a tensor: a question about its values
            raise torch.fx.proxy.TraceError("control flow depends on tensor values")
        return bool(value)

    def _value(self, node: torch.fx.Node) -> Any:
        from torch.fx._symbolic_trace import _maybe_revert_all_patches

        graph = torch.fx.Graph()
        env: dict[torch.fx.Node, torch.fx.Node] = {}
        for n in self.graph.nodes:
            env[n] = graph.node_copy(n, env.__getitem__)
            if n is node:
                break
        graph.output(env[node])
        with _maybe_revert_all_patches(), torch.no_grad():
            gm = torch.fx.GraphModule(self.root, graph)
            return torch.fx.Interpreter(gm).run(self.example)
