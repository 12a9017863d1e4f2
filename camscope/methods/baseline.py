"""A random-map baseline for the metrics: what a method that knows nothing scores."""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from camscope.core.capture import Capture
from camscope.core.runtime import Runtime
from camscope.methods.registry import register

SEED = 0


def _row_seed(view: Tensor, target: int, seed: int) -> int:
    """A seed from the view's pixels and the class: the same photo and class give the same map
    in any batch, different photos or classes different maps."""
    data = view.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    digest = hashlib.blake2b(data, digest_size=8, key=f"{seed}:{target}".encode()).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


@register(
    "random",
    title="Random map (baseline)",
    paper="baseline (cf. pytorch-grad-cam's RandomCAM)",
    url="https://github.com/jacobgil/pytorch-grad-cam",
    equation="L_ij ~ U(0,1) i.i.d. at the target layer's resolution, seeded by the photo and class",
    output="map",
    aliases=("randomcam", "random-baseline"),
)
def random_map(cap: Capture, rt: Runtime) -> Tensor:
    """Uniform noise on the target layer's grid, upsampled like every map: the floor a metric's
    score must beat (a map that carries no information about the model or the photo). Seeded
    by the view's pixels and the class, so it is reproducible and independent of the batch."""
    h, w = cap.view_activations.shape[-2:]
    out = torch.empty(cap.targets.shape[0], h, w)
    gen = torch.Generator()
    for r, (v, c) in enumerate(zip(cap.view_index.tolist(), cap.targets.tolist(), strict=True)):
        gen.manual_seed(_row_seed(cap.views[v], c, SEED))
        out[r] = torch.rand(h, w, generator=gen)
    return out.to(cap.view_activations.device)
