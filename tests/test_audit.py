"""graytune-server audit: per-key counts read from a real server's log match the calls made."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from datetime import UTC, datetime

import pytest
import torch

from graytune import error_details
from graytune.client.transport.local_server import LocalServer, server_command
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.server.access.audit import parse_line
from graytune.v1 import oracle_pb2 as pb

from helpers import KEYED_ARGS, create_key, wait_until

E = 128  # graytune-tiny's embedding width


def pixels(n: int, height: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, height, 32)


def gradient_step(oracle: OracleClient, tower: int, tensors, texts=(), grad_inputs=("pixels",)) -> None:
    handle, embeddings = oracle.forward(tower, tensors, texts, grad_inputs)
    oracle.backward(handle, torch.ones_like(embeddings))


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A keyed server's log after known calls by keys a and b (graybox), c (blackbox) and no key;
    with what each key's client counted on the wire."""
    key_file = tmp_path_factory.mktemp("audit") / "keys.json"
    secrets = {
        name: create_key(key_file, "--tier", tier)
        for name, tier in (("a", "graybox"), ("b", "graybox"), ("c", "blackbox"))
    }
    start = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}.000+00:00"  # the log's ISO-8601 times, in UTC
    wire = {}
    with LocalServer([*KEYED_ARGS, "--keys", str(key_file)]) as server:
        with OracleClient(server.endpoint, api_key=secrets["a"], retries=0, timeout=60) as a:
            a.embed_images(pixels(3))
            a.embed_texts(["a cat", "a dog"])
            gradient_step(a, pb.IMAGE, {"pixels": pixels(4)})
            with pytest.raises(OracleError):  # INVALID_ARGUMENT: 31 rows
                a.embed_images(pixels(2, height=31))
            wire["a"] = (a.bytes_sent, a.bytes_received)
        with OracleClient(server.endpoint, api_key=secrets["b"], retries=0, timeout=60) as b:
            width = b.describe().text.token_width
            gradient_step(b, pb.IMAGE, {"pixels": pixels(2)})
            gradient_step(b, pb.TEXT, {"shift": torch.zeros(width)}, ["x", "y", "z"], ["shift"])
        with OracleClient(server.endpoint, api_key=secrets["c"], retries=0, timeout=60) as c:
            c.embed_images(pixels(1))
            with pytest.raises(OracleError):  # PERMISSION_DENIED: no gradients for blackbox
                c.forward(pb.IMAGE, {"pixels": pixels(1)})
        with OracleClient(server.endpoint, api_key="gt_k00000000_wrong", retries=0, timeout=60) as nobody:
            with pytest.raises(OracleError):  # UNAUTHENTICATED
                nobody.describe()
        server.stop()
        # The reader thread may lag the process: the last line it logs says every line is in.
        wait_until(lambda: any(line.endswith(" stopped") for line in server.output), 30, "log read")
        assert len(server.output) < server.output.maxlen, "the log lost its first lines"
    log = tmp_path_factory.mktemp("audit-log") / "server.log"
    log.write_text("\n".join(server.output) + "\n")
    ids = {name: secret.split("_")[1] for name, secret in secrets.items()}
    return {"log": log, "ids": ids, "wire": wire, "window": (start, f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}.999+00:00")}


def audit(*args, stdin=None) -> str:
    result = subprocess.run(
        server_command() + ["audit", *args], input=stdin, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_one_key_from_a_log_file(session):
    report = json.loads(audit("--log", str(session["log"]), "--key", session["ids"]["a"], "--json"))
    first, last = report.pop("first_seen"), report.pop("last_seen")
    start, end = session["window"]
    assert start <= first < last <= end
    bytes_sent, bytes_received = session["wire"]["a"]
    assert report == {
        "key": session["ids"]["a"],
        "tier": "graybox",
        "calls": 5,
        "calls_by_method": {"Embed": 3, "Forward": 1, "Backward": 1},
        "samples_embedded": 3 + 2 + 4,
        "gradient_samples": 4,
        "refusals": {"INVALID_ARGUMENT": 1},
        # Payload bytes: the refused call's pixels arrived too; it sent nothing back.
        "bytes_in": bytes_sent,
        "bytes_out": bytes_received,
    }
    assert bytes_sent == 4 * (3 * 3 * 32 * 32 + 4 * 3 * 32 * 32 + 4 * E + 2 * 3 * 31 * 32)


def test_every_key_from_stdin_among_other_lines(session):
    text = session["log"].read_text()
    noise = "not a log line\n\x00\x01 call method=\n2026-01-01 00:00:00,000 INFO other: call method=Embed caller=\n"
    report = json.loads(audit("--log", "-", "--json", stdin=noise + text + noise))
    ids = session["ids"]
    summary = [
        (u["key"], u["calls"], u["calls_by_method"], u["samples_embedded"], u["gradient_samples"], u["refusals"])
        for u in report
    ]
    assert summary == [  # heaviest gradient users first
        (ids["b"], 5, {"Describe": 1, "Forward": 2, "Backward": 2}, 2 + 3, 2 + 3, {}),
        (ids["a"], 5, {"Embed": 3, "Forward": 1, "Backward": 1}, 9, 4, {"INVALID_ARGUMENT": 1}),
        (ids["c"], 2, {"Embed": 1, "Forward": 1}, 1, 0, {"PERMISSION_DENIED": 1}),
        ("-", 1, {"Describe": 1}, 0, 0, {"UNAUTHENTICATED": 1}),
    ]
    rows = audit(stdin=text).splitlines()  # the table: a header, a row per key
    assert [row.split()[0] for row in rows] == ["key", ids["b"], ids["a"], ids["c"], "-"]


def test_an_unknown_key_has_no_calls(session):
    report = json.loads(audit("--log", str(session["log"]), "--key", "k99999999", "--json"))
    assert report["calls"] == 0 and report["first_seen"] is None


@pytest.mark.parametrize(
    "detail",
    [
        '"it\'s caller=kevil status=OK samples=999"',
        "'say \\'caller=kevil\\' samples=999'",
    ],
)
def test_text_in_a_detail_is_never_read_as_fields(detail):
    line = (
        "web-1  | 2026-11-24 10:00:02,100 WARNING graytune.server: call call_id=7 method=Embed "
        f"caller=ka tier=graybox samples=0 bytes_in=10 bytes_out=0 status=INVALID_ARGUMENT detail={detail}"
    )
    fields = parse_line(line)
    assert (fields["caller"], fields["status"], fields["samples"], fields["call_id"], fields["time"]) == (
        "ka",
        "INVALID_ARGUMENT",
        "0",
        "7",
        "2026-11-24 10:00:02,100",
    )


def test_a_json_log_gives_each_call_its_fields_peer_and_the_limit_that_refused_it(tmp_path):
    key_file = tmp_path / "keys.json"
    rated = create_key(key_file, "--tier", "graybox", "--rate", "0.001")  # one call, then refused for long
    spent = create_key(key_file, "--tier", "graybox", "--budget", "0")
    with LocalServer([*KEYED_ARGS, "--keys", str(key_file), "--log-format", "json"]) as server:
        for secret, calls in ((rated, 2), (spent, 1), ("gt_k00000000_wrong", 1)):
            with OracleClient(server.endpoint, api_key=secret, retries=0, timeout=60) as oracle:
                for n in range(calls):
                    with pytest.raises(OracleError) if n == calls - 1 else contextlib.nullcontext():
                        oracle.embed_images(pixels(1))
        server.stop()
        records = lambda: [json.loads(line) for line in server.output if line.startswith("{")]
        wait_until(lambda: any(r["message"] == "stopped" for r in records()), 30, "log read")
        other = [line for line in server.output if not line.startswith("{")]
    assert len(other) == 1 and other[0].startswith("graytune-server listening on"), other  # printed, not logged
    for record in records():
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", record["time"]), record
        assert record["level"] != "INFO" or record["logger"].startswith("graytune"), record  # no OpenCLIP chatter
    calls = [r for r in records() if r["message"].startswith("call ")]
    shown = [(r["caller"], r["method"], r["status"], r.get("reason")) for r in calls]
    ids = [s.split("_")[1] for s in (rated, spent)]
    assert shown == [
        (ids[0], "Embed", "OK", None),
        (ids[0], "Embed", "RESOURCE_EXHAUSTED", error_details.RATE_LIMITED),
        (ids[1], "Embed", "RESOURCE_EXHAUSTED", error_details.BUDGET_EXHAUSTED),
        ("-", "Embed", "UNAUTHENTICATED", None),
    ]
    assert all(r["peer"].startswith("ipv4:127.0.0.1:") and r["latency_ms"] >= 0 for r in calls)
    assert calls[0]["call_id"] and calls[0]["samples"] == 1
    log = tmp_path / "server.log"
    log.write_text("\n".join(server.output) + "\n")
    report = json.loads(audit("--log", str(log), "--json"))
    refusals = {u["key"]: u["refusals"] for u in report}
    assert refusals == {
        ids[0]: {"RESOURCE_EXHAUSTED/RATE_LIMITED": 1},
        ids[1]: {"RESOURCE_EXHAUSTED/BUDGET_EXHAUSTED": 1},
        "-": {"UNAUTHENTICATED": 1},
    }
