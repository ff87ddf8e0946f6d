"""Prompt templates whose context tokens a caller shifts: CraFT's black-box entry point.

CraFT searches a prompt p0 + A·z where p0 is the embedding of a template such as "a photo of
a". Here p0 stays on the server: the caller names a template, sends class names and a delta of
shape (P, N, W) for P candidate contexts, and gets (P, C, E) embeddings of
"<template> <class name>." with the template's N tokens shifted by each candidate, one call per
CMA-ES generation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from graytune.server.compute.errors import InputError
from graytune.server.compute.tokenizer import BoundedBPE, TooManyTokens
from graytune.tensor_codec import shown

DEFAULT_TEMPLATES = ("a photo of a",)


class PromptTemplates:
    """The templates a server offers, by name (their text), with their token ids."""

    def __init__(self, bpe: BoundedBPE | None, context_length: int, names: Sequence[str] = DEFAULT_TEMPLATES):
        """`bpe`: None for a Hugging Face tokenizer, which has no BPE ids to place: no templates."""
        self.bpe = bpe
        self.context_length = context_length
        self.tokens: dict[str, list[int]] = {}
        if bpe is None:
            return
        for name in dict.fromkeys(names):  # in order, once each
            if not name.strip():
                raise ValueError("prompt template: empty")
            try:  # with start- and end-of-text, and room for a class name
                self.tokens[name] = bpe.encode(name, room=context_length - 3)
            except TooManyTokens as e:
                raise ValueError(
                    f"prompt template {name!r}: {e} leave no room for a class name in the "
                    f"context length {context_length}"
                ) from None

    def context_tokens(self, name: str) -> int:
        """N: how many tokens of the template a context delta shifts."""
        return len(self.tokens[self.checked(name)])

    def checked(self, name: str) -> str:
        if name not in self.tokens:
            raise InputError(f"prompt_template: {shown(name)} is not offered; this server offers {list(self.tokens)}")
        return name

    def token_ids(self, name: str, classnames: Sequence[str]) -> torch.Tensor:
        """-> (C, L) ids of "<template> <class name>." for each class name, the template's
        tokens at positions 1..N."""
        template = self.tokens[self.checked(name)]
        assert self.bpe is not None  # templates are offered only with a BPE
        rows = []
        for i, classname in enumerate(classnames):
            try:
                tokens = self.bpe.encode(f"{name} {classname}.", room=self.context_length - 2)
            except TooManyTokens as e:
                raise InputError(
                    f"texts[{i}]: the prompt with template {shown(name)} has {e}; the context "
                    f"length is {self.context_length}"
                ) from None
            if tokens[: len(template)] != template:  # a tokenizer whose cleaning joins words
                raise InputError(
                    f"texts[{i}]: {shown(classname)} does not tokenise apart from the template {shown(name)}"
                )
            rows.append(tokens)
        return self.bpe.ids(rows, self.context_length)  # what the tokenizer gives for the prompts


def add_context(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(C, L, W) token embeddings + (P, N, W) context deltas at positions 1..N
    -> (P*C, L, W): every class prompt under every candidate context, candidate-major."""
    n, length = delta.shape[1], x.shape[1]
    shifted = F.pad(delta, (0, 0, 1, length - 1 - n))  # (P, L, W), zero outside the context
    return (x.unsqueeze(0) + shifted.unsqueeze(1)).flatten(0, 1)
