"""Credentials, tiers, budgets and rate limits, against real servers started with a key file."""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
from datetime import UTC, datetime, timedelta

import grpc
import pytest
import torch

from graytune import error_details
from graytune.client.transport.local_server import LocalServer, server_command
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.client.transport.remote import RemoteImageTower
from graytune.server.access.credentials import KeyFile
from graytune.v1 import oracle_pb2 as pb

from helpers import KEYED_ARGS, code_of, create_key, refusal_of, wait_until


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.json"
    secrets = {
        "blackbox": create_key(key_file, "--tier", "blackbox"),
        "graybox": create_key(key_file, "--tier", "graybox"),
        "plus": create_key(key_file, "--tier", "graybox-plus"),
        "other": create_key(key_file, "--tier", "graybox"),
        "budget": create_key(key_file, "--tier", "graybox", "--budget", "10"),
        "rate": create_key(key_file, "--tier", "graybox", "--rate", "0.5"),
        "slow": create_key(key_file, "--tier", "graybox", "--rate", "0.001"),  # a call per 1,000 s
    }
    return key_file, secrets


@pytest.fixture(scope="module")
def keyed_server(keys):
    with LocalServer([*KEYED_ARGS, "--keys", str(keys[0])]) as s:
        yield s


def client(server, secret=None) -> OracleClient:
    return OracleClient(server.endpoint, api_key=secret, retries=0, timeout=30)


def test_key_file_holds_hashes_never_secrets(keys):
    key_file, secrets = keys
    text = key_file.read_text()
    for secret in secrets.values():
        assert secret.startswith("gt_") and secret not in text
        assert secret.split("_")[1] in text  # the key id is there
    listing = subprocess.run(
        server_command() + ["keys", "--file", str(key_file), "list"], capture_output=True, text=True, check=True
    ).stdout
    assert len(listing.splitlines()) == 1 + len(secrets)  # a header, a row per key
    assert not any(secret in listing for secret in secrets.values())


@pytest.mark.parametrize("secret", [None, "gt_k00000000_wrong", "not-a-key"])
def test_missing_or_unknown_key_is_unauthenticated(keyed_server, secret):
    with client(keyed_server, secret) as oracle:
        code, details = code_of(oracle.describe)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "'authorization: Bearer <key>'" in details and "$GRAYTUNE_API_KEY" in details
    assert ("no key was sent: $GRAYTUNE_API_KEY is not set" in details) == (secret is None)


def test_right_id_with_wrong_secret_is_unauthenticated(keyed_server, keys):
    key_id = keys[1]["graybox"].split("_")[1]
    with client(keyed_server, f"gt_{key_id}_guessed") as oracle:
        assert code_of(oracle.describe)[0] == grpc.StatusCode.UNAUTHENTICATED


def test_health_needs_no_key(keyed_server):
    with client(keyed_server) as oracle:
        oracle.wait_ready(10)


def test_blackbox_embeds_but_gets_no_gradient(keyed_server, keys):
    with client(keyed_server, keys[1]["blackbox"]) as oracle:
        info = oracle.describe()
        assert info.tier == "blackbox" and "text.shift" not in info.entry_points
        assert oracle.embed_images(torch.randn(2, 3, 32, 32)).shape == (2, info.embed_dim)
        code, details = code_of(lambda: oracle.forward(pb.IMAGE, {"pixels": torch.randn(2, 3, 32, 32)}))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "blackbox" in details
        code, details = code_of(lambda: oracle.embed_texts(["a cat"], shift=torch.zeros(info.text.token_width)))
        assert code == grpc.StatusCode.PERMISSION_DENIED and "text.shift" in details
        code, _ = code_of(lambda: oracle.backward("00000000.1.0123456789abcdef", torch.zeros(2, info.embed_dim)))
        assert code == grpc.StatusCode.PERMISSION_DENIED


def test_graybox_trains_through_its_key(keyed_server, keys):
    with client(keyed_server, keys[1]["graybox"]) as oracle:
        info = oracle.describe()
        assert info.tier == "graybox" and info.caller_id == keys[1]["graybox"].split("_")[1]
        assert not info.HasField("budget_remaining")
        pixels = torch.randn(2, 3, 32, 32, requires_grad=True)
        RemoteImageTower(oracle)(pixels).sum().backward()
        assert pixels.grad.abs().sum() > 0


def test_deep_prompts_need_graybox_plus(keyed_server, keys):
    pixels = torch.randn(2, 3, 32, 32)
    with client(keyed_server, keys[1]["plus"]) as plus:
        info = plus.describe()
        assert info.tier == "graybox-plus" and info.image.deep_prompt_layers == 2
        prompts = torch.randn(2, 3, info.image.token_width, requires_grad=True)
        RemoteImageTower(plus)(pixels, prompts).sum().backward()
        assert prompts.grad.abs().sum() > 0
    for tier in ("graybox", "blackbox"):
        with client(keyed_server, keys[1][tier]) as oracle:
            code, details = code_of(lambda: oracle.embed_images(pixels, deep_prompts=prompts.detach()))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert f"image.deep_prompts: not an entry point of tier '{tier}'" in details
            code, details = code_of(lambda: oracle.embed_texts(["a"], deep_prompts=torch.zeros(1, 1, 128)))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "text.deep_prompts" in details


def test_a_handle_never_crosses_between_keys(keyed_server, keys):
    with client(keyed_server, keys[1]["graybox"]) as alice, client(keyed_server, keys[1]["other"]) as bob:
        handle, emb = alice.forward(pb.IMAGE, {"pixels": torch.randn(2, 3, 32, 32)})
        code, details = code_of(lambda: bob.backward(handle, torch.ones_like(emb)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown" in details
        assert set(alice.backward(handle, torch.ones_like(emb))) == {"pixels"}


def test_rate_limit_says_when_the_next_call_is_allowed(keyed_server, keys):
    with client(keyed_server, keys[1]["slow"]) as oracle:  # retries=0: the refusal itself
        info = oracle.describe()
        assert (info.rate_per_second, info.rate_limit_scope) == (0.001, "process")  # each replica counts its own
        oracle.embed_texts(["a cat."])  # a burst of one call
        oracle.describe(refresh=True)  # Describe is not rate limited
        error = refusal_of(lambda: oracle.embed_texts(["a cat."]))
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == error_details.RATE_LIMITED
    assert "0.001 calls/s" in error.details and "allowed in" in error.details


def test_a_rate_limited_call_waits_as_long_as_the_server_asks(keyed_server, keys):
    with OracleClient(keyed_server.endpoint, api_key=keys[1]["rate"], timeout=30) as oracle:
        for _ in range(3):  # a burst of one call at 0.5 calls/s: the 2nd and 3rd wait
            oracle.embed_texts(["a cat."])
        assert 0 < oracle.rate_limited_seconds <= 3 * 2.0 + 0.01  # a wait is at most 1 / rate (+ ns of rounding)
    with OracleClient(keyed_server.endpoint, api_key=keys[1]["slow"], timeout=30, reconnect_timeout=60) as oracle:
        error = refusal_of(lambda: [oracle.embed_texts(["a cat."]) for _ in range(2)])  # 1,000 s > 60
    assert error.reason == error_details.RATE_LIMITED and "waited 0.0 s of 60 s" in error.details


def test_calls_refused_together_by_the_rate_limit_log_it_once(keyed_server, keys, caplog):
    """Threads of one client refused at the same moment (a step's two tower calls) warn once."""
    with OracleClient(keyed_server.endpoint, api_key=keys[1]["rate"], timeout=30) as oracle:
        together = threading.Barrier(3)

        def call():
            together.wait()
            oracle.embed_texts(["a cat."])

        threads = [threading.Thread(target=call) for _ in range(3)]  # a burst of one: two or three refused
        with caplog.at_level(logging.WARNING, logger="graytune.client.transport.oracle_client"):
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert oracle.rate_limited_seconds > 0
    assert sum("rate limit refused" in r.getMessage() for r in caplog.records) == 1


def test_budget_runs_out_and_stays_out_after_a_restart(keys):
    key_file, secrets = keys
    pixels = lambda n: torch.randn(n, 3, 32, 32)
    with LocalServer([*KEYED_ARGS, "--keys", str(key_file)]) as server:
        with client(server, secrets["budget"]) as oracle:
            oracle.embed_images(pixels(6))
            code, _ = code_of(lambda: oracle.embed_images(pixels(3)[:, :1]))  # bad input: refunded
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert oracle.describe(refresh=True).budget_remaining == 4
            error = refusal_of(lambda: oracle.embed_images(pixels(5)))
            assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.reason == error_details.BUDGET_EXHAUSTED
            assert "4 of 10 samples left" in error.details and "needs 5" in error.details
    with LocalServer([*KEYED_ARGS, "--keys", str(key_file)]) as server:  # a restart refills nothing
        with client(server, secrets["budget"]) as oracle:
            info = oracle.describe()
            assert (info.budget_samples, info.budget_remaining) == (10, 4)
            oracle.embed_images(pixels(4))
            assert code_of(lambda: oracle.embed_images(pixels(1)))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    listing = subprocess.run(
        server_command() + ["keys", "--file", str(key_file), "list"], capture_output=True, text=True, check=True
    ).stdout
    budget_id = secrets["budget"].split("_")[1]
    assert [row.split()[:2] + row.split()[4:7] for row in listing.splitlines() if row.startswith(budget_id)] == [
        [budget_id, "graybox", "10", "used", "10"]
    ]  # label and expiry unset: "-"


def test_audit_log_names_the_key_never_the_secret(keyed_server, keys):
    secret = keys[1]["graybox"]
    with client(keyed_server, secret) as oracle:
        oracle.embed_images(torch.randn(3, 3, 32, 32))
    lines = lambda: [
        line
        for line in keyed_server.output
        if "method=Embed" in line and f"caller={secret.split('_')[1]}" in line and "samples=3" in line
    ]
    wait_until(lines, 60, "the call's audit line")  # the reply may arrive before the log line
    assert "status=OK" in lines()[-1]
    assert not any(secret in line for line in keyed_server.output)


def test_serving_without_keys_needs_dev_mode():
    result = subprocess.run(server_command() + ["--port", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--keys FILE, or --dev" in result.stderr


# Key changes while a server runs: its own key file and server, as these tests revoke and break keys.


@pytest.fixture(scope="module")
def reloading(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("reload") / "keys.json"
    kept = create_key(key_file, "--tier", "graybox", "--label", "kept")
    with LocalServer([*KEYED_ARGS, "--keys", str(key_file)]) as server:
        yield server, key_file, kept


def accepted(server, secret) -> bool:
    try:
        with client(server, secret) as oracle:
            oracle.describe()
        return True
    except OracleError as e:
        assert e.code == grpc.StatusCode.UNAUTHENTICATED, e
        return False


def logged(server, *texts) -> bool:
    """Whether one line of the server's output holds all of `texts`."""
    return any(all(text in line for text in texts) for line in list(server.output))


def test_a_key_created_after_start_is_accepted_without_a_restart(reloading):
    server, key_file, _ = reloading
    secret = create_key(key_file, "--tier", "graybox")
    wait_until(
        lambda: logged(server, f"keys reloaded from {key_file}", f"added {secret.split('_')[1]}"),
        30,
        "the new key loaded",
    )
    assert accepted(server, secret)


def test_a_revoked_key_is_refused_within_seconds_without_a_restart(reloading):
    server, key_file, _ = reloading
    secret = create_key(key_file, "--tier", "graybox")
    key_id = secret.split("_")[1]
    wait_until(lambda: logged(server, f"added {key_id}"), 30, "the new key loaded")
    assert accepted(server, secret)
    revoked = subprocess.run(
        server_command() + ["keys", "--file", str(key_file), "revoke", key_id],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"key {key_id} (graybox) revoked: removed from {key_file}" in revoked.stdout
    wait_until(lambda: logged(server, f"keys reloaded from {key_file}", f"revoked {key_id}"), 30, "the revocation")
    assert not accepted(server, secret)


def test_sighup_reloads_the_keys_and_the_server_survives_it(reloading):
    server, key_file, kept = reloading
    server.process.send_signal(signal.SIGHUP)
    wait_until(lambda: logged(server, f"keys reloaded from {key_file} (SIGHUP)"), 30, "the reload on SIGHUP")
    assert server.process.poll() is None and accepted(server, kept)


def test_an_invalid_edit_is_logged_and_the_keys_before_keep_serving(reloading):
    server, key_file, kept = reloading
    valid = key_file.read_text()
    try:
        key_file.write_text(valid.replace('"tier": "graybox"', '"tier": "gold"', 1))
        # Two lines, each read from the server's output as it comes: wait for both.
        wait_until(
            lambda: (
                logged(server, "ERROR", f"{key_file}: keys[0] (id ", 'tier: "gold" is not one of')
                and logged(server, "ERROR", "keeping the", f"keys loaded before from {key_file}")
            ),
            30,
            "the invalid file refused and the keys before kept",
        )
        assert accepted(server, kept)
    finally:
        key_file.write_text(valid)
    wait_until(lambda: logged(server, f"keys reloaded from {key_file}", "no changes"), 30, "the repaired file")


def test_an_expired_key_is_refused(reloading):
    server, key_file, _ = reloading
    keys, now = KeyFile(key_file), datetime.now(UTC)
    expired = keys.create("graybox", expires_at=now - timedelta(seconds=1))
    live = keys.create("graybox", expires_at=now + timedelta(days=1))
    for secret in (expired, live):
        wait_until(lambda: logged(server, "keys reloaded from", "added", secret.split("_")[1]), 30, "a new key loaded")
    assert not accepted(server, expired) and accepted(server, live)


SHA = "0" * 64


@pytest.mark.parametrize(
    "text, problems",
    [
        (
            f'{{"keys": [{{"id": "k1", "sha256": "{SHA}", "tier": "graybox", "rate_per_second": 0}},'
            f' {{"id": "k1", "sha256": "{SHA}", "tier": "graybox", "budget_samples": "lots"}}]}}',
            [
                "{file}: keys[0] (id k1): rate_per_second: 0 is not a positive finite number",
                '{file}: keys[1] (id k1): budget_samples: "lots" is not an integer',
                "{file}: keys[1] (id k1): id: duplicate of keys[0]",
            ],
        ),
        (
            '{"kees": []}',
            ['{file}: must be a JSON object with exactly one field, "keys", a list of keys (found ["kees"])'],
        ),
        (
            '{"keys": [\n  {"id": "k1",}\n]}',
            ["{file}: line 2 column 15: not valid JSON: Expecting property name enclosed in double quotes"],
        ),
    ],
)
def test_a_server_with_an_invalid_key_file_does_not_start(tmp_path, text, problems):
    key_file = tmp_path / "keys.json"
    key_file.write_text(text)
    result = subprocess.run(
        server_command() + [*KEYED_ARGS, "--port", "0", "--keys", str(key_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("graytune-server: error:")] == [
        f"graytune-server: error: {problem.format(file=key_file)}" for problem in problems
    ]
