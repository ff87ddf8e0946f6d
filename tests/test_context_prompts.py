"""The black-box text entry point: class names under candidate contexts over a server-side
template, through real server processes.

References are OpenCLIP's own `encode_text` on the same weights, the context added by a forward
hook on the token embedding, so they share no code with the server's context path.
"""

from __future__ import annotations

import grpc
import pytest
import torch

from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.v1 import oracle_pb2 as pb

from helpers import KEYED_ARGS, code_of, create_key, relative_error

TEMPLATE = "a photo of a"
NAMES = ["cat", "golden retriever", "seven"]
# float32 sums of a few hundred terms: rounding stays far below this, a wrong context far above
ROUNDING = 1e-5


def reference(backbone, names, delta):
    """(P, N, D) contexts -> (P, C, E): OpenCLIP's encode_text with the template's N tokens
    (positions 1..N of "<template> <name>.") shifted by each context."""
    model, tokenizer = backbone.model, backbone.text.tokenizer
    ids = tokenizer([f"{TEMPLATE} {name}." for name in names])
    n = delta.shape[1]
    outputs = []
    for context in delta:

        def shift(module, inputs, out, context=context):
            return torch.cat([out[:, :1], out[:, 1 : 1 + n] + context, out[:, 1 + n :]], dim=1)

        hook = model.token_embedding.register_forward_hook(shift)
        try:
            outputs.append(model.encode_text(ids))
        finally:
            hook.remove()
    return torch.stack(outputs)


def test_describe_offers_the_template_its_token_count_and_the_charges(oracle):
    info = oracle.describe()
    assert [(t.name, t.context_tokens) for t in info.text.prompt_templates] == [(TEMPLATE, 4)]
    assert "text.context_delta" in info.entry_points
    assert info.limits.max_context_rows > 0
    assert (info.charges.per_context, info.charges.per_image, info.charges.per_gradient_row) == (1, 1, 1)


def test_one_call_embeds_every_class_under_every_candidate(oracle, backbone):
    width = oracle.describe().text.token_width
    delta = 0.1 * torch.randn(5, 4, width, generator=torch.Generator().manual_seed(0))
    got = oracle.embed_contexts(TEMPLATE, NAMES, delta)
    assert got.shape == (5, len(NAMES), backbone.embed_dim)
    with torch.no_grad():
        want = reference(backbone, NAMES, delta)
    assert relative_error(got, want) < ROUNDING
    assert oracle.usage() == {"Embed_calls": 1, "Embed_samples": 5}  # one sample per candidate
    # a zero context is the template itself: the plain caption's embedding
    plain = oracle.embed_contexts(TEMPLATE, NAMES, torch.zeros(1, 4, width))[0]
    assert relative_error(plain, oracle.embed_texts([f"{TEMPLATE} {n}." for n in NAMES])) < ROUNDING


def test_a_graybox_forward_returns_the_gradient_of_the_contexts(oracle, backbone):
    width = oracle.describe().text.token_width
    delta = 0.1 * torch.randn(2, 4, width, generator=torch.Generator().manual_seed(1))
    weight = torch.randn(2, len(NAMES), backbone.embed_dim, generator=torch.Generator().manual_seed(2))
    handle, _ = _forward_contexts(oracle, delta)
    got = oracle.backward(handle, weight)["context_delta"]
    local = delta.clone().requires_grad_()
    (reference(backbone, NAMES, local) * weight).sum().backward()
    assert relative_error(got, local.grad) < ROUNDING


def _forward_contexts(oracle, delta):
    return oracle._inputs_call("Forward", pb.TEXT, {"context_delta": delta}, NAMES, prompt_template=TEMPLATE)


@pytest.mark.parametrize(
    "template, names, tensors, field",
    [
        (
            "a drawing of a",
            NAMES,
            {"context_delta": torch.zeros(1, 4, 128)},
            "prompt_template: 'a drawing of a' is not offered",
        ),
        (
            TEMPLATE,
            NAMES,
            {"context_delta": torch.zeros(1, 3, 128)},
            "context_delta: shape (1, 3, 128) does not match (*, 4, 128)",
        ),
        (TEMPLATE, NAMES, {"context_delta": torch.full((1, 4, 128), float("nan"))}, "context_delta: contains NaN"),
        (TEMPLATE, NAMES, {"context_delta": torch.zeros(0, 4, 128)}, "context_delta: empty batch"),
        (
            TEMPLATE,
            [],
            {"context_delta": torch.zeros(1, 4, 128)},
            "texts: a prompt_template call needs the class names",
        ),
        (TEMPLATE, NAMES, {}, "context_delta: missing"),
        (
            TEMPLATE,
            NAMES,
            {"context_delta": torch.zeros(1, 4, 128), "shift": torch.zeros(128)},
            "'shift': a prompt_template call takes only context_delta",
        ),
        ("", NAMES, {"context_delta": torch.zeros(1, 4, 128)}, "context_delta: needs a prompt_template"),
        (TEMPLATE, ["x" * 300], {"context_delta": torch.zeros(1, 4, 128)}, "texts[0]: the prompt with template"),
        ("t" * 5000, NAMES, {"context_delta": torch.zeros(1, 4, 128)}, "prompt_template: 'tttttttt"),
    ],
)
def test_bad_context_calls_are_refused_with_the_field_and_the_limit(server, template, names, tensors, field):
    with OracleClient(server.endpoint, retries=0, timeout=30) as oracle:
        code, details = code_of(lambda: oracle._inputs_call("Embed", pb.TEXT, tensors, names, prompt_template=template))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and field in details, details
        assert len(details) < 1000  # a 5000-letter name is not echoed whole
        assert oracle.embed_texts(["still serving"]).shape[0] == 1


def test_rows_over_the_limit_are_refused(tmp_path):
    with (
        LocalServer(["--dev", "--plaintext", "--threads", "1", "--max-context-rows", "8"]) as server,
        OracleClient(server.endpoint, retries=0, timeout=30) as oracle,
    ):
        assert oracle.describe().limits.max_context_rows == 8
        assert oracle.embed_contexts(TEMPLATE, NAMES[:2], torch.zeros(4, 4, 128)).shape[:2] == (4, 2)
        code, details = code_of(lambda: oracle.embed_contexts(TEMPLATE, NAMES, torch.zeros(3, 4, 128)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "3 candidates x 3 class names = 9 rows exceed the limit of 8" in details


def test_an_owner_offers_templates_of_its_own():
    with (
        LocalServer(
            [
                "--dev",
                "--plaintext",
                "--threads",
                "1",
                "--prompt-template",
                "a sketch of a",
                "--prompt-template",
                "a photo of the big",
            ]
        ) as server,
        OracleClient(server.endpoint, timeout=30) as oracle,
    ):
        templates = {t.name: t.context_tokens for t in oracle.describe().text.prompt_templates}
        assert templates == {"a sketch of a": 4, "a photo of the big": 5}
        assert oracle.embed_contexts("a photo of the big", NAMES, torch.zeros(2, 5, 128)).shape[:2] == (2, 3)


def test_a_blackbox_key_embeds_contexts_charged_per_candidate_and_gets_no_gradient(tmp_path):
    key_file = tmp_path / "keys.json"
    secret = create_key(key_file, "--tier", "blackbox", "--budget", "100")
    with (
        LocalServer([*KEYED_ARGS, "--keys", str(key_file)]) as server,
        OracleClient(server.endpoint, api_key=secret, retries=0, timeout=30) as oracle,
    ):
        oracle.embed_contexts(TEMPLATE, NAMES, torch.zeros(7, 4, 128))
        assert oracle.describe(refresh=True).budget_remaining == 100 - 7  # 7 candidates, 3 names each
        code, details = code_of(lambda: _forward_contexts(oracle, torch.zeros(2, 4, 128)))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "blackbox" in details
        with pytest.raises(OracleError, match="93 of 100 samples left and this call needs 94"):
            oracle.embed_contexts(TEMPLATE, NAMES, torch.zeros(94, 4, 128))
        assert oracle.describe(refresh=True).budget_remaining == 93
