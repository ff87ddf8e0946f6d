"""TLS and mutual TLS: handshakes, and what the server and the client say when one cannot work.
Certificates are made here with openssl."""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import time
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from graytune.client.transport.local_server import LocalServer, server_command
from graytune.client.transport.oracle_client import OracleClient, OracleError, tls_channel_credentials

TLS_ARGS = ("--dev", "--threads", "1", "--log-level", "WARNING")
LOCAL = "DNS:localhost,IP:127.0.0.1"
# Far beyond any test: a handshake failure waited out instead of reported would hang the test.
NEVER = 3600.0


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory, name, days=30):
    openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        str(days),
        "-subj",
        f"/CN={name}",
        "-addext",
        f"subjectAltName={LOCAL}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        cwd=directory,
    )


def make_request(directory, name, san):
    """NAME.key, its certificate signing request NAME.csr, and NAME.ext naming `san` for the signer."""
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        f"/CN={name}",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        cwd=directory,
    )
    (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")


def make_cert(directory, ca, name, san, days=30):
    make_request(directory, name, san)
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        str(days),
        "-out",
        f"{name}.crt",
        "-extfile",
        f"{name}.ext",
        cwd=directory,
    )


def make_dated_cert(directory, ca, name, start, end):
    """A certificate valid from `start` to `end` (YYYYMMDDHHMMSSZ): `openssl x509` (3.0) only
    counts days from now, `openssl ca` takes any dates."""
    (directory / "ca.cnf").write_text(
        "[ca]\ndefault_ca = signer\n[signer]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n"
        "default_md = sha256\npolicy = anything\n[anything]\ncommonName = supplied\n"
    )
    (directory / "index.txt").write_text("")
    (directory / "serial").write_text("01\n")
    make_request(directory, name, LOCAL)
    openssl(
        "ca",
        "-batch",
        "-config",
        "ca.cnf",
        "-cert",
        f"{ca}.crt",
        "-keyfile",
        f"{ca}.key",
        "-notext",
        "-in",
        f"{name}.csr",
        "-out",
        f"{name}.crt",
        "-startdate",
        start,
        "-enddate",
        end,
        "-extfile",
        f"{name}.ext",
        cwd=directory,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "rogue-ca")  # also a self-signed certificate for 127.0.0.1
    make_cert(d, "ca", "server", LOCAL)
    make_cert(d, "ca", "public", "DNS:oracle.example.com")  # names only the public host
    make_cert(d, "ca", "customer", "DNS:customer")
    make_cert(d, "rogue-ca", "intruder", "DNS:intruder")
    make_cert(d, "ca", "expiring", LOCAL, days=3)
    make_dated_cert(d, "ca", "expired", "20200101000000Z", "20200102000000Z")
    make_dated_cert(d, "ca", "future", "20990101000000Z", "20991231000000Z")
    openssl("x509", "-in", "server.crt", "-outform", "der", "-out", "server.der", cwd=d)
    return lambda name: str(d / name)


def describe(endpoint, credentials=None, **options):
    with OracleClient(endpoint, credentials=credentials, retries=0, timeout=10, **options) as oracle:
        return oracle.describe()


def handshake_failure(endpoint, credentials=None, tls_server_name=None):
    """The OracleError of a client that would wait an hour for a server it cannot reach, and
    the seconds it took to come."""
    started = time.monotonic()
    with OracleClient(
        endpoint,
        credentials=credentials,
        tls_server_name=tls_server_name,
        timeout=10,
        reconnect_timeout=NEVER,
        connect_timeout=NEVER,
    ) as oracle:
        with pytest.raises(OracleError) as failure:
            oracle.describe()
    return str(failure.value), time.monotonic() - started


@pytest.fixture(scope="module")
def tls_server(pki):
    args = [*TLS_ARGS, "--tls-cert", pki("server.crt"), "--tls-key", pki("server.key")]
    with LocalServer(args, credentials=tls_channel_credentials(pki("ca.crt"))) as s:
        yield s


@pytest.fixture(scope="module")
def mtls_server(pki):
    args = [
        *TLS_ARGS,
        "--tls-cert",
        pki("server.crt"),
        "--tls-key",
        pki("server.key"),
        "--tls-client-ca",
        pki("ca.crt"),
    ]
    creds = tls_channel_credentials(pki("ca.crt"), pki("customer.crt"), pki("customer.key"))
    with LocalServer(args, credentials=creds) as s:
        yield s


def test_tls_handshake_with_the_right_ca(tls_server, pki):
    assert describe(tls_server.endpoint, tls_channel_credentials(pki("ca.crt"))).backbone.name


def test_the_ca_may_come_from_the_environment(tls_server, pki, monkeypatch):
    monkeypatch.setenv("GRAYTUNE_TLS_CA", pki("ca.crt"))
    assert describe(tls_server.endpoint, tls_channel_credentials()).backbone.name


def test_mutual_tls_accepts_a_client_the_ca_signed(mtls_server, pki):
    creds = tls_channel_credentials(pki("ca.crt"), pki("customer.crt"), pki("customer.key"))
    assert describe(mtls_server.endpoint, creds).backbone.name


# -- what the client says when its handshake cannot succeed: at once, the check and the flag --
def assert_said_at_once(failure, *words):
    message, seconds = failure
    assert "UNAVAILABLE" in message
    for word in words:
        assert word in message, message
    assert seconds < 60, f"{seconds:.0f} s: the failure was waited out, not reported"


def test_a_server_signed_by_an_unknown_ca_is_reported(tls_server, pki):
    failure = handshake_failure(tls_server.endpoint, tls_channel_credentials(pki("rogue-ca.crt")))
    assert_said_at_once(failure, "not signed by the CA in", "rogue-ca.crt", "--tls-ca FILE", "GRAYTUNE_TLS_CA")


def test_a_self_signed_server_is_reported(pki):
    args = [*TLS_ARGS, "--tls-cert", pki("rogue-ca.crt"), "--tls-key", pki("rogue-ca.key")]
    with LocalServer(args, credentials=tls_channel_credentials(pki("rogue-ca.crt"))) as server:
        failure = handshake_failure(server.endpoint, tls_channel_credentials(pki("ca.crt")))
    assert_said_at_once(failure, "self-signed", "--tls-ca FILE", "GRAYTUNE_TLS_CA")


def test_a_host_name_the_certificate_lacks_is_reported(tls_server, pki):
    failure = handshake_failure(tls_server.endpoint, tls_channel_credentials(pki("ca.crt")), "other.example.com")
    assert_said_at_once(failure, "does not name 'other.example.com'", "--tls-server-name NAME")


def test_an_expired_server_certificate_is_reported(pki):
    """graytune-server refuses to serve an expired certificate (below), so a bare gRPC server
    in this process serves one."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    read = lambda name: open(pki(name), "rb").read()
    port = server.add_secure_port(
        "127.0.0.1:0", grpc.ssl_server_credentials([(read("expired.key"), read("expired.crt"))])
    )
    server.start()
    try:
        failure = handshake_failure(f"127.0.0.1:{port}", tls_channel_credentials(pki("ca.crt")))
    finally:
        server.stop(None)
    assert_said_at_once(failure, "certificate has expired", "renew")


@pytest.mark.parametrize(
    "client, words",
    [
        (None, ("requires a client certificate", "--tls-cert FILE and --tls-key FILE")),
        ("intruder", ("does not accept this client's certificate", "intruder.crt", "--tls-client-ca")),
    ],
)
def test_mutual_tls_refusals_are_reported(mtls_server, pki, client, words):
    creds = (
        tls_channel_credentials(pki("ca.crt"))
        if client is None
        else tls_channel_credentials(pki("ca.crt"), pki(f"{client}.crt"), pki(f"{client}.key"))
    )
    assert_said_at_once(handshake_failure(mtls_server.endpoint, creds), *words)


def test_a_plaintext_client_of_a_tls_server_is_told_to_use_tls(tls_server):
    assert_said_at_once(handshake_failure(tls_server.endpoint), "serves TLS", "connect with --tls")


def test_a_tls_client_of_a_plaintext_server_is_told_so(server, pki):
    failure = handshake_failure(server.endpoint, tls_channel_credentials(pki("ca.crt")))
    assert_said_at_once(failure, "does not complete a TLS handshake", "--plaintext", "without --tls")


# -- what the server says about its TLS files at start-up --------------------------------
def start_failure(*tls_args):
    result = subprocess.run(
        server_command() + [*TLS_ARGS, "--port", "0", *tls_args], capture_output=True, text=True, timeout=300
    )
    return result.returncode, result.stderr


@pytest.mark.parametrize(
    "files, words",
    [
        (
            {"--tls-cert": "server.crt", "--tls-key": "customer.key"},
            ("--tls-key", "customer.key", "is not the private key of the certificate in --tls-cert", "server.crt"),
        ),
        ({"--tls-cert": "server.der", "--tls-key": "server.key"}, ("--tls-cert", "server.der", "is not PEM")),
        (
            {"--tls-cert": "server.key", "--tls-key": "server.crt"},
            ("--tls-cert", "server.key", "not a CERTIFICATE", "swapped"),
        ),
        (
            {"--tls-cert": "server.crt", "--tls-key": "server.csr"},
            ("--tls-key", "server.csr", "holds CERTIFICATE REQUEST, not a PRIVATE KEY"),
        ),
        (
            {"--tls-cert": "server.crt", "--tls-key": "server.key", "--tls-client-ca": "ca.key"},
            ("--tls-client-ca", "ca.key", "not a CERTIFICATE"),
        ),
        (
            {"--tls-cert": "expired.crt", "--tls-key": "expired.key"},
            ("--tls-cert", "expired.crt", "expired on 2020-01-02 00:00 UTC", "renew"),
        ),
        (
            {"--tls-cert": "future.crt", "--tls-key": "future.key"},
            ("--tls-cert", "future.crt", "not valid until 2099-01-01 00:00 UTC", "clock"),
        ),
    ],
    ids=["key-mismatch", "not-pem", "swapped", "key-not-a-key", "client-ca-not-a-cert", "expired", "not-yet-valid"],
)
def test_a_tls_file_that_cannot_work_stops_the_server_with_one_line(pki, files, words):
    code, stderr = start_failure(*[arg for flag, name in files.items() for arg in (flag, pki(name))])
    lines = [line for line in stderr.splitlines() if "graytune-server: error:" in line]
    assert code == 2 and len(lines) == 1, stderr
    for word in words:
        assert word in lines[0], lines[0]
    assert "port is in use" not in stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_key_stops_the_server(pki, tmp_path):
    key = tmp_path / "server.key"
    key.write_bytes(open(pki("server.key"), "rb").read())
    key.chmod(0)
    code, stderr = start_failure("--tls-cert", pki("server.crt"), "--tls-key", str(key))
    assert code == 2 and f"--tls-key {key}: cannot read it (Permission denied)" in stderr, stderr


def test_a_certificate_about_to_expire_is_a_warning(pki):
    args = [*TLS_ARGS, "--tls-cert", pki("expiring.crt"), "--tls-key", pki("expiring.key")]
    with LocalServer(args, credentials=tls_channel_credentials(pki("ca.crt"))) as server:
        assert describe(server.endpoint, tls_channel_credentials(pki("ca.crt"))).backbone.name
        warning = next(line for line in server.output if "WARNING" in line and "expires on" in line)
    assert f"--tls-cert {pki('expiring.crt')}" in warning
    expires = datetime.datetime.strptime(re.search(r"expires on (\S+ \S+) UTC", warning)[1], "%Y-%m-%d %H:%M")
    days = (expires - datetime.datetime.now(datetime.UTC).replace(tzinfo=None)) / datetime.timedelta(days=1)
    assert 2 < days <= 3


def test_serving_needs_tls_or_an_explicit_plaintext():
    result = subprocess.run(server_command() + ["--dev", "--port", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "--tls-cert and --tls-key, or --plaintext" in result.stderr


def test_a_certificate_for_another_host_name_is_verified_against_the_name_given(pki):
    """The container's health check connects to 127.0.0.1; the certificate names only the
    public host, which GRAYTUNE_HEALTH_HOST gives (a client: tls_server_name)."""
    args = [*TLS_ARGS, "--tls-cert", pki("public.crt"), "--tls-key", pki("public.key")]
    ca = tls_channel_credentials(pki("ca.crt"))
    with LocalServer(args, credentials=ca, tls_server_name="oracle.example.com") as server:
        health_check = server_command() + ["health", "--address", server.endpoint, "--tls-ca", pki("ca.crt")]
        env = {k: v for k, v in os.environ.items() if k != "GRAYTUNE_HEALTH_HOST"}
        unnamed = subprocess.run(health_check, capture_output=True, text=True, env=env, timeout=120)
        named = subprocess.run(
            health_check,
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, "GRAYTUNE_HEALTH_HOST": "oracle.example.com"},
        )
        with pytest.raises(OracleError):
            describe(server.endpoint, ca)
        with OracleClient(server.endpoint, credentials=ca, tls_server_name="oracle.example.com") as oracle:
            assert oracle.describe().backbone.name
    assert unnamed.returncode == 2 and "set GRAYTUNE_HEALTH_HOST" in unnamed.stderr
    assert (named.returncode, named.stdout.strip()) == (0, "SERVING"), named.stderr
