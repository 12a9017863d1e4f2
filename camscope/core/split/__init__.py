"""Splitting a model at its target layer: ``split_model(model, layer)`` -> :class:`LayerSplit`,
whose ``head(x)`` returns the layer's maps and a :class:`Carry` (everything else the rest of the
network needs) and whose ``tail(maps, carry)`` returns the logits. torch.fx when the model
traces, a hook-based fallback otherwise."""

from camscope.core.split.layer_split import Carry, LayerSplit, split_model

__all__ = ["Carry", "LayerSplit", "split_model"]
