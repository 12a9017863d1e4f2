"""CLIP as an embedding model and as a zero-shot classifier (open_clip or transformers).

* :class:`ClipImageEncoder`: images -> (N, D) image embeddings; explained with
  :class:`camscope.targets.Similarity` to a concept (task ``embed``).
* :class:`ClipZeroShot`: images -> (N, P) logits ``s * cos(e, t_p)`` over prompts ``p``
  (Radford et al. 2021, Sec. 3.1.2; ``s`` the model's learnt logit scale): a classifier whose
  classes are the prompts (task ``zeroshot``, targets: class logits).
* :func:`concept_embedding`: a concept as an embedding: a text prompt through the CLIP text
  tower, or a reference image through the image tower.

Both wrappers hold the user's model (nothing is copied or changed). open_clip models
(``encode_image`` / ``encode_text``) and transformers ``CLIPModel`` (``get_image_features`` /
``get_text_features``) are supported; both are optional (extras ``clip`` and ``hf``) and
imported only when a prompt must be tokenised.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from camscope.errors import UsageError

__all__ = ["ClipImageEncoder", "ClipZeroShot", "text_embeddings", "concept_embedding", "is_clip"]


def is_clip(model: Any) -> bool:
    """Whether ``model`` is a CLIP model camscope can use (open_clip or transformers)."""
    return (hasattr(model, "encode_image") and hasattr(model, "encode_text")) or (
        hasattr(model, "get_image_features") and hasattr(model, "get_text_features")
    )


def _image_features(clip: nn.Module, x: Tensor) -> Tensor:
    if hasattr(clip, "encode_image"):
        return clip.encode_image(x)
    out = clip.get_image_features(pixel_values=x)
    return out if isinstance(out, Tensor) else out.pooler_output


class ClipImageEncoder(nn.Module):
    """The image tower of a CLIP model: (N, 3, H, W) normalised images -> (N, D) embeddings."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        if not is_clip(clip):
            raise UsageError(f"{type(clip).__name__} is not a CLIP model (open_clip or transformers CLIPModel)")
        self.clip = clip

    def forward(self, x: Tensor) -> Tensor:
        return _image_features(self.clip, x)


class ClipZeroShot(nn.Module):
    """CLIP as a classifier over prompts: logits ``s * <e/|e|, t_p/|t_p|>`` (N, P)."""

    def __init__(self, clip: nn.Module, prompts: Sequence[str] | Tensor, tokenizer: Any = None) -> None:
        super().__init__()
        if not is_clip(clip):
            raise UsageError(f"{type(clip).__name__} is not a CLIP model (open_clip or transformers CLIPModel)")
        self.clip = clip
        if isinstance(prompts, Tensor):
            emb, self.prompts = prompts, [f"prompt {i}" for i in range(prompts.shape[0])]
        else:
            self.prompts = [str(p) for p in prompts]
            if not self.prompts:
                raise UsageError("zero-shot classification needs at least one prompt (--labels FILE)")
            emb = text_embeddings(clip, self.prompts, tokenizer)
        self.register_buffer("text", F.normalize(emb.detach().float(), dim=1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        e = F.normalize(_image_features(self.clip, x), dim=1)
        scale = getattr(self.clip, "logit_scale", None)
        s = scale.exp() if isinstance(scale, Tensor) else torch.tensor(100.0)
        return s * e @ self.text.to(e.dtype).T


@torch.no_grad()
def text_embeddings(clip: nn.Module, prompts: Sequence[str], tokenizer: Any = None) -> Tensor:
    """(P, D) text embeddings of ``prompts``. open_clip: its bundled BPE tokenizer by default
    (no download); transformers: pass the model's tokenizer."""
    if hasattr(clip, "encode_text"):
        if tokenizer is None:
            import open_clip  # optional extra "clip": only to tokenise prompts

            ctx = int(getattr(clip, "context_length", 77) or 77)
            tokens = open_clip.tokenize(list(prompts), context_length=ctx)
        else:
            tokens = tokenizer(list(prompts))
        device = next(clip.parameters()).device
        return clip.encode_text(tokens.to(device)).float()
    if tokenizer is None:
        raise UsageError("text prompts with a transformers CLIP model need its tokenizer (tokenizer=)")
    batch = tokenizer(list(prompts), padding=True, return_tensors="pt")
    out = clip.get_text_features(**batch)
    return (out if isinstance(out, Tensor) else out.pooler_output).float()


@torch.no_grad()
def concept_embedding(concept: str | Tensor, model: nn.Module | None = None, *, tokenizer: Any = None) -> Tensor:
    """A concept as a (D,) embedding: a tensor as it is; a text prompt through ``model``'s CLIP
    text tower; a reference image (a normalised (3, H, W) tensor) through ``model``'s image
    tower (a CLIP model, or any embedding model)."""
    if isinstance(concept, Tensor) and concept.dim() == 1:
        return concept.detach().float()
    if isinstance(concept, str):
        clip = model.clip if isinstance(model, (ClipImageEncoder, ClipZeroShot)) else model
        if clip is None or not is_clip(clip):
            raise UsageError(f"the text concept {concept!r} needs a CLIP model (open_clip or transformers) to embed "
                             "it; give a reference image or an embedding instead")
        return text_embeddings(clip, [concept], tokenizer)[0]
    if isinstance(concept, Tensor) and concept.dim() in (3, 4):
        if model is None:
            raise UsageError("a reference-image concept needs the model that embeds it")
        x = concept if concept.dim() == 4 else concept[None]
        enc = ClipImageEncoder(model) if is_clip(model) else model
        was = enc.training
        enc.eval()
        try:
            from camscope.targets import embedding_of

            return embedding_of(enc(x.to(next(enc.parameters()).device)))[0].float()
        finally:
            enc.train(was)
    raise UsageError(f"a concept must be a text prompt, a reference image or an embedding, not {type(concept).__name__}")
