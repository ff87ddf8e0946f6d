"""The key correctness test: gradients over the wire equal in-process autograd, entry by entry.

References are computed with OpenCLIP's own `encode_image` / `encode_text` on the same weights;
the shift and the extra tokens are injected with a forward hook on the token embedding, so the
reference shares no code with the server's text tower.
"""

from __future__ import annotations

import open_clip
import pytest
import torch

from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient
from graytune.client.transport.remote import RemoteImageTower, RemoteTextTower, remote_encode
from graytune.v1 import oracle_pb2 as pb

from helpers import CAPTIONS, REORDERED, SERVER_ARGS, TIGHT, reference_text, relative_error


@pytest.fixture(scope="module")
def token_ids():
    return open_clip.get_tokenizer("graytune-tiny")(CAPTIONS)  # (3, L)


def test_server_runs_the_same_backbone(oracle, backbone):
    assert oracle.describe().backbone.sha256 == backbone.sha256


def test_image_embeddings_match(oracle, backbone):
    pixels = torch.randn(5, 3, 32, 32)
    torch.testing.assert_close(oracle.embed_images(pixels), backbone.model.encode_image(pixels), **TIGHT)


def test_pixel_gradients_match(oracle, backbone):
    pixels = torch.randn(6, 3, 32, 32)
    weight = torch.randn(6, backbone.embed_dim)
    remote = pixels.clone().requires_grad_()
    (RemoteImageTower(oracle)(remote) * weight).sum().backward()
    local = pixels.clone().requires_grad_()
    (backbone.model.encode_image(local) * weight).sum().backward()
    assert remote.grad.abs().sum() > 0
    torch.testing.assert_close(remote.grad, local.grad, **TIGHT)


@pytest.mark.parametrize("num_extra", [0, 1, 3])
def test_text_shift_and_extra_token_gradients_match(oracle, backbone, token_ids, num_extra):
    width = backbone.text.token_width
    shift, extra = torch.randn(width) * 0.1, torch.randn(num_extra, width) * 0.1
    weight = torch.randn(len(CAPTIONS), backbone.embed_dim)

    r_shift, r_extra = shift.clone().requires_grad_(), extra.clone().requires_grad_()
    remote = RemoteTextTower(oracle)(CAPTIONS, r_shift, r_extra if num_extra else None)
    (remote * weight).sum().backward()

    l_shift, l_extra = shift.clone().requires_grad_(), extra.clone().requires_grad_()
    local = reference_text(backbone.model, token_ids, l_shift, l_extra if num_extra else None)
    (local * weight).sum().backward()

    assert relative_error(remote.detach(), local.detach()) < REORDERED
    assert relative_error(r_shift.grad, l_shift.grad) < REORDERED
    if num_extra:
        assert r_extra.grad.abs().sum() > 0
        assert relative_error(r_extra.grad, l_extra.grad) < REORDERED


def test_token_ids_entry_point_matches_captions(oracle, backbone, token_ids):
    """Token ids tokenised by the client give what captions tokenised by the server give."""
    shift = (torch.randn(backbone.text.token_width) * 0.1).requires_grad_()
    from_ids = remote_encode(oracle, pb.TEXT, token_ids=token_ids, shift=shift)
    from_ids.sum().backward()
    ids_grad = shift.grad.clone()
    shift.grad = None
    from_texts = RemoteTextTower(oracle)(CAPTIONS, shift)
    from_texts.sum().backward()
    torch.testing.assert_close(from_ids, from_texts, **TIGHT)
    torch.testing.assert_close(ids_grad, shift.grad, **TIGHT)


def test_zero_shift_and_no_extra_tokens_is_plain_clip(oracle, backbone, token_ids):
    embeddings = oracle.embed_texts(CAPTIONS, shift=torch.zeros(backbone.text.token_width))
    assert relative_error(embeddings, backbone.model.encode_text(token_ids)) < REORDERED


@pytest.mark.parametrize("num_extra", [0, 2])
def test_the_text_transformer_runs_only_to_the_last_end_of_text(backbone, token_ids, num_extra):
    """Positions after the batch's last end-of-text change nothing (the mask is causal), so they
    are not computed; the embeddings still equal OpenCLIP's over the whole context."""
    lengths = []
    hook = backbone.text.module.transformer.register_forward_pre_hook(lambda m, args: lengths.append(args[0].shape[1]))
    extra = torch.randn(num_extra, backbone.text.token_width) * 0.1
    try:
        embeddings = backbone.encode_text(token_ids, None, extra)
    finally:
        hook.remove()
    longest = int(token_ids.argmax(dim=-1).max()) + 1  # end-of-text has the highest id
    assert longest + num_extra < token_ids.shape[1] and lengths == [longest + num_extra]
    assert relative_error(embeddings, reference_text(backbone.model, token_ids, extra=extra)) < REORDERED


def test_an_extra_token_changes_the_embedding(oracle, backbone):
    """Guards against extra tokens landing after end-of-text, where they would change nothing."""
    plain = oracle.embed_texts(CAPTIONS)
    extra = oracle.embed_texts(CAPTIONS, extra_tokens=torch.randn(1, backbone.text.token_width))
    assert relative_error(extra, plain) > 1e-3


@pytest.mark.parametrize("wire_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_on_the_wire_stays_close(server, backbone, wire_dtype):
    pixels = torch.randn(4, 3, 32, 32)
    weight = torch.randn(4, backbone.embed_dim)
    with OracleClient(server.endpoint, wire_dtype=wire_dtype) as half:
        remote = pixels.clone().requires_grad_()
        (RemoteImageTower(half)(remote) * weight).sum().backward()
    local = pixels.clone().requires_grad_()
    (backbone.model.encode_image(local) * weight).sum().backward()
    assert 0 < relative_error(remote.grad, local.grad) < 2e-2


def test_pixel_gradients_match_without_merged_batches(backbone):
    """The server's one-call-at-a-time path (--no-merge-batches) gives the same gradients."""
    pixels, weight = torch.randn(3, 3, 32, 32), torch.randn(3, backbone.embed_dim)
    with LocalServer([*SERVER_ARGS, "--no-merge-batches"]) as server, OracleClient(server.endpoint) as oracle:
        remote = pixels.clone().requires_grad_()
        (RemoteImageTower(oracle)(remote) * weight).sum().backward()
    local = pixels.clone().requires_grad_()
    (backbone.model.encode_image(local) * weight).sum().backward()
    torch.testing.assert_close(remote.grad, local.grad, **TIGHT)
