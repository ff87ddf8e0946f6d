"""Issue 8's defects, one test each: what a hostile caller with a valid key sent, and what it
must get (a precise status, an audit line that agrees, a bounded message); and what an owner
must see (one server per port, budgets charged once per call). Real server processes."""

from __future__ import annotations

import logging
import os
import subprocess
import uuid

import grpc
import pytest
import torch

from graytune import error_details, tensor_codec
from graytune.client.transport.local_server import LocalServer, server_command
from graytune.server.access.auth import Caller
from graytune.server.service.call_record import CallRecord
from graytune.server.service.servicer import OracleServicer
from graytune.v1 import oracle_pb2 as pb

from helpers import KEYED_ARGS, SERVER_ARGS, create_key, free_port, wait_until

INVALID = grpc.StatusCode.INVALID_ARGUMENT
LOGGED_ARGS = [a if a != "WARNING" else "INFO" for a in SERVER_ARGS]
HUGE = 20_000  # characters: more than gRPC's 8 KiB metadata limit if echoed in a status


@pytest.fixture(scope="module")
def logged():
    """A dev server logging every call at INFO, so tests can read its audit lines."""
    with LocalServer(LOGGED_ARGS) as s:
        yield s


@pytest.fixture(scope="module")
def channel(logged):
    with grpc.insecure_channel(logged.endpoint) as ch:
        yield ch


def rpc(channel, method: str, streaming: bool = True):
    """A raw method: requests and replies as bytes, so anything can be sent."""
    path = f"/graytune.v1.GradientOracle/{method}"
    make = channel.stream_stream if streaming else channel.unary_unary
    return make(path, request_serializer=None, response_deserializer=None)


def failure(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value


def audit_line(server, call_id: str) -> str:
    """The call's one audit line; the server may answer before its log line reaches us."""
    lines = lambda: [line for line in server.output if f"call_id={call_id}" in line]
    wait_until(lambda: lines(), 60, f"the audit line of call {call_id}")
    assert len(lines()) == 1, f"expected one audit line for {call_id}: {lines()}"
    return lines()[0]


def send(channel, method: str, messages, call_id: str):
    """Serialized messages to a streaming method; returns the reply messages (bytes)."""
    data = [m if isinstance(m, bytes) else m.SerializeToString() for m in messages]
    return list(rpc(channel, method)(iter(data), timeout=60, metadata=(("x-graytune-call-id", call_id),)))


def input_messages(tower, tensors, **header):
    yield pb.InputMessage(header=pb.InputHeader(tower=tower, **header))
    for chunk in tensor_codec.tensors_to_chunks(tensors):
        yield pb.InputMessage(chunk=chunk)


def declared_only(name: str, dtype: int, shape) -> pb.TensorChunk:
    """A first chunk declaring a shape, with four bytes of payload."""
    return pb.TensorChunk(name=name, dtype=dtype, shape=shape, data=b"\0\0\0\0")


def expect_refused(server, channel, method, messages, *fragments, code=INVALID) -> str:
    """The call fails with `code` and a bounded message naming `fragments`; the audit line says
    the same status; the server still answers."""
    call_id = uuid.uuid4().hex
    error = failure(lambda: send(channel, method, messages, call_id))
    assert error.code() == code, error.details()
    assert len(error.details()) < 1000
    for fragment in fragments:
        assert fragment in error.details(), error.details()
    line = audit_line(server, call_id)
    assert f"status={code.name}" in line and len(line) < 1500
    pixels = torch.zeros(1, 3, 32, 32)
    assert len(send(channel, "Embed", input_messages(pb.IMAGE, {"pixels": pixels}), uuid.uuid4().hex)) > 1
    return error.details()


# -- 2: shapes whose element count overflows; empty differentiable inputs ------------------------
@pytest.mark.parametrize(
    "method,tower,chunk",
    [
        ("Embed", pb.IMAGE, declared_only("pixels", pb.FLOAT32, [0, 2**62, 2**62])),
        ("Forward", pb.TEXT, declared_only("shift", pb.BFLOAT16, [2**32, 2**32, 0])),
    ],
    ids=["embed_pixels", "forward_shift"],
)
def test_a_shape_whose_element_count_overflows_is_invalid(logged, channel, method, tower, chunk):
    messages = [
        pb.InputMessage(header=pb.InputHeader(tower=tower, texts=["a"] if tower == pb.TEXT else [])),
        pb.InputMessage(chunk=chunk),
    ]
    expect_refused(logged, channel, method, messages, chunk.name, "exceeds the limit")


def test_backward_embeddings_whose_element_count_overflows_is_invalid(logged, channel):
    replies = send(
        channel, "Forward", input_messages(pb.IMAGE, {"pixels": torch.zeros(1, 3, 32, 32)}), uuid.uuid4().hex
    )
    handle = pb.OutputMessage.FromString(replies[0]).header.handle
    messages = [
        pb.BackwardMessage(header=pb.BackwardHeader(handle=handle)),
        pb.BackwardMessage(chunk=declared_only("embeddings", pb.FLOAT32, [0, 2**62, 2**62])),
    ]
    expect_refused(logged, channel, "Backward", messages, "embeddings", "exceeds the limit")


@pytest.mark.parametrize("grad_inputs", [[], ["extra_tokens"]])
def test_zero_extra_tokens_are_refused_at_forward(logged, channel, grad_inputs):
    messages = input_messages(pb.TEXT, {"extra_tokens": torch.zeros(0, 128)}, texts=["a cat"], grad_inputs=grad_inputs)
    expect_refused(logged, channel, "Forward", messages, "extra_tokens", "0 tokens")


def test_an_unexpected_error_is_internal_with_a_traceback_and_an_audit_line(caplog):
    call = CallRecord("Embed", Caller("k1", "graybox"))
    with caplog.at_level(logging.INFO, logger="graytune.server"):
        code, message = OracleServicer._status_of(RuntimeError("Stride calculation overflowed"), call)
    assert code == grpc.StatusCode.INTERNAL
    assert "Stride" not in message  # the caller learns nothing of the server's insides
    assert any(r.exc_info and "Stride calculation" in str(r.exc_info[1]) for r in caplog.records)


# -- 3: bytes that are not a valid message ------------------------------------------------------
def test_describe_request_that_is_not_a_message_is_invalid(logged, channel):
    call_id = uuid.uuid4().hex
    error = failure(
        lambda: rpc(channel, "Describe", streaming=False)(
            b"\xff\xff\xff", timeout=60, metadata=(("x-graytune-call-id", call_id),)
        )
    )
    assert error.code() == INVALID and "DescribeRequest" in error.details()
    assert "status=INVALID_ARGUMENT" in audit_line(logged, call_id)


def test_stream_message_that_is_not_a_message_is_invalid(logged, channel):
    expect_refused(logged, channel, "Embed", [b"\xff\xff\xff"], "message 0", "InputMessage")


def test_header_with_invalid_utf8_is_invalid(logged, channel):
    header = bytearray(pb.InputMessage(header=pb.InputHeader(tower=pb.TEXT, texts=["ab"])).SerializeToString())
    header[header.index(b"ab")] = 0xFF  # "\xffb": not UTF-8
    expect_refused(logged, channel, "Embed", [bytes(header)], "message 0", "UTF-8")


# -- 4: caller-chosen strings are capped in statuses and logs ------------------------------------
def test_an_enormous_chunk_name_is_refused_and_not_echoed(logged, channel):
    messages = [
        pb.InputMessage(header=pb.InputHeader(tower=pb.IMAGE)),
        pb.InputMessage(chunk=pb.TensorChunk(name="p" * HUGE, dtype=pb.FLOAT32, shape=[1])),
    ]
    expect_refused(logged, channel, "Embed", messages, "longer than 64 characters", f"({HUGE} characters)")


def test_an_enormous_grad_inputs_entry_is_refused_and_not_echoed(logged, channel):
    messages = input_messages(pb.IMAGE, {"pixels": torch.zeros(1, 3, 32, 32)}, grad_inputs=["g" * HUGE])
    expect_refused(logged, channel, "Forward", messages, "grad_inputs", "longer than 64 characters")


def test_an_enormous_call_id_is_refused_and_not_echoed(logged, channel):
    error = failure(
        lambda: list(
            rpc(channel, "Embed")(
                iter([pb.InputMessage(header=pb.InputHeader(tower=pb.IMAGE)).SerializeToString()]),
                timeout=60,
                metadata=(("x-graytune-call-id", "c" * 4000),),
            )
        )
    )
    assert error.code() == INVALID and len(error.details()) < 1000


# -- 5: a long caption is refused by its bytes, before tokenising --------------------------------
@pytest.mark.parametrize("letters", [40_000, 200_000])
def test_a_long_caption_is_refused_before_tokenising(logged, channel, letters):
    messages = [pb.InputMessage(header=pb.InputHeader(tower=pb.TEXT, texts=["x" * letters]))]
    expect_refused(logged, channel, "Embed", messages, "texts[0]", f"{letters} bytes", "limit of 2475")


# -- 6: a retried call is charged once; a failed call is refunded --------------------------------
@pytest.fixture(scope="module")
def budgeted(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.json"
    secrets = {
        name: create_key(key_file, "--tier", "graybox", *args)
        for name, args in {
            "budget": ("--budget", "100", "--gradient-budget", "3"),
            "tiny": ("--budget", "3"),
            "other": (),
        }.items()
    }
    with LocalServer([*KEYED_ARGS, "--keys", str(key_file), "--max-batch", "8", "--max-graph-mb", "1"]) as server:
        yield server, secrets


def keyed_send(server, secret, method, messages, call_id):
    with grpc.insecure_channel(server.endpoint) as ch:
        data = [m.SerializeToString() for m in messages]
        return list(
            rpc(ch, method)(
                iter(data),
                timeout=60,
                metadata=(("authorization", f"Bearer {secret}"), ("x-graytune-call-id", call_id)),
            )
        )


def remaining(server, secret):
    from graytune.client.transport.oracle_client import OracleClient

    with OracleClient(server.endpoint, api_key=secret) as oracle:
        info = oracle.describe(refresh=True)
    return info.budget_remaining, info.gradient_budget_remaining


def test_a_retried_call_is_charged_once(budgeted):
    server, secrets = budgeted
    pixels = {"pixels": torch.zeros(5, 3, 32, 32)}
    before, _ = remaining(server, secrets["budget"])
    call_id = uuid.uuid4().hex
    for _ in range(2):  # the same logical call twice, as a client retrying a lost reply
        keyed_send(server, secrets["budget"], "Embed", input_messages(pb.IMAGE, pixels), call_id)
    assert remaining(server, secrets["budget"])[0] == before - 5
    keyed_send(server, secrets["budget"], "Embed", input_messages(pb.IMAGE, pixels), uuid.uuid4().hex)
    assert remaining(server, secrets["budget"])[0] == before - 10  # another call is charged


def test_a_call_that_fails_after_its_charge_is_refunded(budgeted):
    server, secrets = budgeted
    before, _ = remaining(server, secrets["budget"])
    big = {"pixels": torch.zeros(8, 3, 32, 32)}  # its graph (~1.6 MB) is over --max-graph-mb 1
    error = failure(
        lambda: keyed_send(server, secrets["budget"], "Forward", input_messages(pb.IMAGE, big), uuid.uuid4().hex)
    )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "graph" in error.details()
    assert error_details.refusal(error) == (error_details.GRAPH_TOO_LARGE, None)  # waiting will not help
    assert remaining(server, secrets["budget"])[0] == before


def test_gradient_samples_have_a_budget_of_their_own(budgeted):
    server, secrets = budgeted
    pixels = {"pixels": torch.zeros(2, 3, 32, 32)}

    def forward_backward():
        replies = keyed_send(server, secrets["budget"], "Forward", input_messages(pb.IMAGE, pixels), uuid.uuid4().hex)
        handle = pb.OutputMessage.FromString(replies[0]).header.handle
        messages = [pb.BackwardMessage(header=pb.BackwardHeader(handle=handle))] + [
            pb.BackwardMessage(chunk=c) for c in tensor_codec.tensor_to_chunks("embeddings", torch.ones(2, 128))
        ]
        return keyed_send(server, secrets["budget"], "Backward", messages, uuid.uuid4().hex)

    forward_backward()
    assert remaining(server, secrets["budget"])[1] == 1  # of 3
    error = failure(forward_backward)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "gradient samples" in error.details()
    assert error_details.refusal(error).reason == error_details.BUDGET_EXHAUSTED
    assert remaining(server, secrets["budget"])[1] == 1  # the refused call cost nothing


# -- 7: one server per port ---------------------------------------------------------------------
def test_a_second_server_on_a_port_in_use_fails_to_start_before_its_model_loads(tmp_path):
    port = free_port()
    with LocalServer([*SERVER_ARGS, "--port", str(port)]):
        # A model built at start in an empty cache (a minute or more): refused before it.
        second = subprocess.run(
            server_command() + [*SERVER_ARGS, "--port", str(port), "--pretrained", "mnist"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "GRAYTUNE_CACHE": str(tmp_path)},
        )
    assert second.returncode == 2
    [error] = [line for line in second.stderr.splitlines() if line.strip()]
    assert error.startswith(f"graytune-server: error: cannot listen on 127.0.0.1:{port}: ") and "in use" in error
    assert not list(tmp_path.iterdir()), "nothing was built"


# -- 9: handles that are not the caller's; size checked before budget ----------------------------
def test_another_keys_handle_gets_the_answer_of_a_never_issued_one(budgeted):
    server, secrets = budgeted
    replies = keyed_send(
        server,
        secrets["other"],
        "Forward",
        input_messages(pb.IMAGE, {"pixels": torch.zeros(1, 3, 32, 32)}),
        uuid.uuid4().hex,
    )
    handle = pb.OutputMessage.FromString(replies[0]).header.handle
    grad = list(tensor_codec.tensor_to_chunks("embeddings", torch.ones(1, 128)))

    def backward(secret, h):
        messages = [pb.BackwardMessage(header=pb.BackwardHeader(handle=h))] + [
            pb.BackwardMessage(chunk=c) for c in grad
        ]
        return keyed_send(server, secret, "Backward", messages, uuid.uuid4().hex)

    instance, seq, mac = handle.split(".")
    never_issued = f"{instance}.{int(seq) + 1000}.{mac}"
    answers = [failure(lambda: backward(secrets["budget"], never_issued))]
    answers.append(failure(lambda: backward(secrets["budget"], handle)))  # held, for "other"
    backward(secrets["other"], handle)  # consumed by its owner
    answers.append(failure(lambda: backward(secrets["budget"], handle)))
    seen = {(e.code(), e.details().replace(never_issued, handle)) for e in answers}
    assert len(seen) == 1 and next(iter(seen))[0] == INVALID, seen


def test_a_batch_over_the_size_limit_is_refused_for_size_before_budget(budgeted):
    server, secrets = budgeted
    pixels = {"pixels": torch.zeros(9, 3, 32, 32)}  # --max-batch 8; the key has 3 samples left
    error = failure(
        lambda: keyed_send(server, secrets["tiny"], "Embed", input_messages(pb.IMAGE, pixels), uuid.uuid4().hex)
    )
    assert error.code() == INVALID and "limit of 8" in error.details()
