"""What one call may ask of the server: the owner's limits (graytune-server's --max-* flags),
apart from the checks that apply them (validation.py) so the command line reads them without
importing torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_batch: int = 256
    max_tensor_bytes: int = 256 << 20
    max_message_bytes: int = 8 << 20  # gRPC receive limit; tensors travel in chunks below it
    chunk_bytes: int = 1 << 20
    max_graph_bytes: int = 4 << 30
    max_graph_bytes_per_key: int | None = None  # None: a key may hold all of max_graph_bytes
    handle_ttl_seconds: float = 120.0
    max_extra_tokens: int = 16
    max_deep_prompt_tokens: int = 16  # per layer
    max_call_seconds: float = 300.0  # any call, from its first message to its last
    # UTF-8 bytes per caption, checked from the header, before tokenising: the most a 77-token
    # context can use. It holds 75 caption tokens (with start- and end-of-text) of at most 32
    # bytes each (CLIP's longest BPE token: eight 4-byte emoji; the longest of letters is 24),
    # and a space after each is more than captions need: 75 x (32 + 1) = 2,475. Only HTML
    # entities (unescaped before BPE) and runs of whitespace could make a caption that fits
    # longer. tests/test_tokenizer_bounds.py derives this from the vocabulary.
    max_caption_bytes: int = 2475
    # Rows of one context_delta call (candidates × class names): CraFT's generation of 40
    # candidates over 51 classes in one call. A row is a whole prompt through the text tower
    # (ViT-B-32: about 0.6 MB of activations per row at the widest layer), so this bounds the
    # device memory one call takes; a client splits a larger generation over several calls.
    max_context_rows: int = 2048
    # The pixel adapters a frugal image call may declare (InputHeader.pixel_adapter): layers,
    # channels between them, kernel size; (0, 0, 0) runs none. At the largest, (3·16 + 16·16·2 +
    # 16·3)·5² = 15,200 multiply-adds per pixel: at 224² about a third of ViT-B-32's forward.
    max_pixel_adapter: tuple[int, int, int] = (4, 16, 5)
