"""Prompt templates whose context tokens a caller shifts: CraFT's black-box entry point.

CraFT searches a prompt p0 + A·z where p0 is the embedding of a template such as "a photo of
a". Here p0 stays on the server: the caller names a template, sends class names and a delta of
shape (P, N, W) for P candidate contexts, and gets (P, C, E) embeddings of
"<template> <class name>." with the template's N tokens shifted by each candidate, one call per
CMA-ES generation.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from graytune.server.compute.errors import InputError
from graytune.tensor_codec import shown

DEFAULT_TEMPLATES = ("a photo of a",)


class PromptTemplates:
    """The templates a server offers, by name (their text), with their token ids."""

    def __init__(self, tokenizer, context_length: int, names: Sequence[str] = DEFAULT_TEMPLATES):
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.tokens: Dict[str, List[int]] = {}
        if not hasattr(tokenizer, "encode"):  # a Hugging Face tokenizer: no BPE ids to place
            names = ()
        for name in dict.fromkeys(names):  # in order, once each
            if not name.strip():
                raise ValueError("prompt template: empty")
            tokens = list(tokenizer.encode(name))
            if len(tokens) + 2 >= context_length:
                raise ValueError(f"prompt template {name!r}: {len(tokens)} tokens leave no room for a "
                                 f"class name in the context length {context_length}")
            self.tokens[name] = tokens

    def context_tokens(self, name: str) -> int:
        """N: how many tokens of the template a context delta shifts."""
        return len(self.tokens[self.checked(name)])

    def checked(self, name: str) -> str:
        if name not in self.tokens:
            raise InputError(f"prompt_template: {shown(name)} is not offered; this server offers "
                             f"{list(self.tokens)}")
        return name

    def token_ids(self, name: str, classnames: Sequence[str]) -> torch.Tensor:
        """-> (C, L) ids of "<template> <class name>." for each class name, the template's
        tokens at positions 1..N."""
        template = self.tokens[self.checked(name)]
        ids = torch.zeros(len(classnames), self.context_length, dtype=torch.long)  # (C, L), 0 pads
        for i, classname in enumerate(classnames):
            tokens = self.tokenizer.encode(f"{name} {classname}.")
            if len(tokens) + 2 > self.context_length:
                raise InputError(f"texts[{i}]: the prompt with template {shown(name)} has {len(tokens) + 2} "
                                 f"tokens; the context length is {self.context_length}")
            if tokens[:len(template)] != template:  # a tokenizer whose cleaning joins words
                raise InputError(f"texts[{i}]: {shown(classname)} does not tokenise apart from the "
                                 f"template {shown(name)}")
            ids[i, :len(tokens) + 2] = torch.tensor([self.tokenizer.sot_token_id, *tokens, self.tokenizer.eot_token_id])
        return ids  # what the tokenizer gives for the prompts, each encoded once


def add_context(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(C, L, W) token embeddings + (P, N, W) context deltas at positions 1..N
    -> (P*C, L, W): every class prompt under every candidate context, candidate-major."""
    n, length = delta.shape[1], x.shape[1]
    shifted = F.pad(delta, (0, 0, 1, length - 1 - n))  # (P, L, W), zero outside the context
    return (x.unsqueeze(0) + shifted.unsqueeze(1)).flatten(0, 1)
