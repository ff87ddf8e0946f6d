"""The text tower's forward with the gray-box entry points: shift vector, extra tokens and
deep prompts.

CLIP's text transformer is causal and pools at the end-of-text token, so a token placed after
it changes nothing. Extra tokens therefore go right after start-of-text, the caption moves K
positions right (dropping K padding positions at the end), and the pooling index moves with it.
Deep prompts (see `deep_prompts.py`) go right after start-of-text too, before the extra tokens,
into a sequence K' longer with its causal mask to match; the pooling index moves by K' more.

For the same reason the positions after the batch's last end-of-text change nothing either: the
transformer runs only up to it (captions are shorter than the context, 77 tokens for CLIP), which
gives the same embeddings and gradients with a fraction of the work.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from open_clip.model import CLIP

from graytune.server.compute import OpenClipModel, deep_prompts
from graytune.server.compute.context_prompts import DEFAULT_TEMPLATES, PromptTemplates, add_context
from graytune.server.compute.errors import InputError
from graytune.server.compute.tokenizer import BoundedBPE, TooManyTokens


class TextTower:
    """Wraps the text half of an OpenCLIP model (CLIP or CustomTextCLIP with a TextTransformer)."""

    def __init__(self, model: OpenClipModel, tokenizer, templates: Sequence[str] = DEFAULT_TEMPLATES):
        text = model if isinstance(model, CLIP) else getattr(model, "text", None)
        if text is None or not hasattr(text, "token_embedding") or getattr(text, "cls_emb", None) is not None:
            raise ValueError(f"{type(model).__name__}: text tower is not an OpenCLIP text transformer")
        self.module = text
        self.tokenizer = tokenizer
        self.pool_type = getattr(text, "text_pool_type", getattr(text, "pool_type", "argmax"))
        self.eos_id = getattr(text, "text_eos_id", getattr(text, "eos_id", None))
        if self.pool_type not in ("argmax", "eos"):
            raise ValueError(f"text pooling '{self.pool_type}' cannot place extra tokens")
        self.context_length = int(text.positional_embedding.shape[0])
        mask = text.attn_mask
        self.causal = mask is not None and torch.equal(mask, deep_prompts.causal_mask(self.context_length, mask))
        self.token_width = int(text.token_embedding.weight.shape[1])
        self.vocab_size = int(text.token_embedding.weight.shape[0])
        self.prompt_depth = deep_prompts.prompt_depth(text.transformer)
        # open_clip's BPE tokenizer, bounded; None for a Hugging Face tokenizer (no BPE in Python)
        self.bpe = BoundedBPE(tokenizer) if hasattr(tokenizer, "encode") else None
        self.templates = PromptTemplates(self.bpe, self.context_length, templates)

    def pool_index(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) -> (B,) position whose output is the caption's embedding."""
        if self.pool_type == "argmax":  # end-of-text has the highest id
            return token_ids.argmax(dim=-1)
        assert self.eos_id is not None  # OpenCLIP's "eos" pooling comes with its eos_id
        return (token_ids == self.eos_id).int().argmax(dim=-1)

    def tokenize(self, texts: list[str], num_extra: int) -> torch.Tensor:
        """Captions -> (B, L) ids; refuses a caption that would not fit beside the extra tokens,
        before BPE where its words already show it (see tokenizer.py)."""
        if self.bpe is None:
            return self.tokenizer(texts)
        rows = []
        for i, text in enumerate(texts):
            try:
                rows.append(self.bpe.encode(text, room=self.context_length - 2 - num_extra))
            except TooManyTokens as e:
                raise InputError(
                    f"texts[{i}]: {e} + {num_extra} extra tokens exceed the context length {self.context_length}"
                ) from None
        return self.bpe.ids(rows, self.context_length)

    def check_room(self, token_ids: torch.Tensor, num_extra: int) -> None:
        last = int(self.pool_index(token_ids).max()) if token_ids.numel() else 0
        if last + num_extra >= self.context_length:
            raise InputError(
                f"token_ids: end-of-text at position {last} + {num_extra} extra tokens exceed the "
                f"context length {self.context_length}"
            )

    def __call__(
        self,
        token_ids: torch.Tensor,
        shift: torch.Tensor | None = None,
        extra_tokens: torch.Tensor | None = None,
        prompts: torch.Tensor | None = None,
        context_delta: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, L) ids [+ (D,) shift] [+ (K, D) extra tokens] [+ (depth, K', D) deep prompts]
        -> (B, E) embeddings; or (C, L) template prompts + (P, N, D) context deltas
        -> (P, C, E)."""
        text = self.module
        cast_dtype = text.transformer.get_cast_dtype()
        x = text.token_embedding(token_ids).to(cast_dtype)  # (B, L, D)
        if shift is not None:
            x = x + shift.to(cast_dtype)
        pool = self.pool_index(token_ids)  # (B,)
        if context_delta is not None:  # B = P*C from here on
            x = add_context(x, context_delta.to(cast_dtype))
            pool = pool.repeat(context_delta.shape[0])
        if extra_tokens is not None and extra_tokens.shape[0] > 0:
            k = extra_tokens.shape[0]
            extra = extra_tokens.to(cast_dtype).expand(x.shape[0], k, -1)  # (B, K, D)
            x = torch.cat([x[:, :1], extra, x[:, 1:-k]], dim=1)  # (B, L, D)
            pool = pool + k
        x = x + text.positional_embedding.to(cast_dtype)
        if self.causal and pool.numel():
            x = x[:, : int(pool.max()) + 1]  # (B, L', D): nothing after the last end-of-text
        if prompts is None:
            length = x.shape[1]
            x = text.transformer(x, attn_mask=None if text.attn_mask is None else text.attn_mask[:length, :length])
        else:
            size = x.shape[1] + prompts.shape[1]
            mask = None if text.attn_mask is None else deep_prompts.causal_mask(size, text.attn_mask)
            x = deep_prompts.run_with_prompts(text.transformer, x, prompts, at=1, attn_mask=mask)
            pool = pool + prompts.shape[1]
        x = text.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), pool]  # (B, D)
        projection = text.text_projection
        if projection is not None:
            x = projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
        return x if context_delta is None else x.unflatten(0, (context_delta.shape[0], -1))
