"""TLS and mutual TLS handshakes, with certificates this test makes with openssl."""
from __future__ import annotations

import os
import subprocess

import grpc
import pytest

from graytune.client.transport.local_server import LocalServer, server_command
from graytune.client.transport.oracle_client import OracleClient, OracleError, tls_channel_credentials

TLS_ARGS = ("--dev", "--threads", "1", "--log-level", "WARNING")


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(directory, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=directory)


def make_cert(directory, ca, name, san):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=directory)
    (directory / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "1", "-out", f"{name}.crt", "-extfile", f"{name}.ext", cwd=directory)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "rogue-ca")
    make_cert(d, "ca", "server", "DNS:localhost,IP:127.0.0.1")
    make_cert(d, "ca", "public", "DNS:oracle.example.com")  # names only the public host
    make_cert(d, "ca", "customer", "DNS:customer")
    make_cert(d, "rogue-ca", "intruder", "DNS:intruder")
    return lambda name: str(d / name)


def describe(endpoint, credentials=None):
    with OracleClient(endpoint, credentials=credentials, retries=0, timeout=10) as oracle:
        return oracle.describe()


@pytest.fixture(scope="module")
def tls_server(pki):
    args = [*TLS_ARGS, "--tls-cert", pki("server.crt"), "--tls-key", pki("server.key")]
    with LocalServer(args, credentials=tls_channel_credentials(pki("ca.crt"))) as s:
        yield s


@pytest.fixture(scope="module")
def mtls_server(pki):
    args = [*TLS_ARGS, "--tls-cert", pki("server.crt"), "--tls-key", pki("server.key"),
            "--tls-client-ca", pki("ca.crt")]
    creds = tls_channel_credentials(pki("ca.crt"), pki("customer.crt"), pki("customer.key"))
    with LocalServer(args, credentials=creds) as s:
        yield s


def test_tls_handshake_with_the_right_ca(tls_server, pki):
    assert describe(tls_server.endpoint, tls_channel_credentials(pki("ca.crt"))).backbone.name


@pytest.mark.parametrize("credentials", ["plaintext", "rogue-ca"])
def test_tls_refuses_plaintext_and_unknown_servers(tls_server, pki, credentials):
    creds = None if credentials == "plaintext" else tls_channel_credentials(pki("rogue-ca.crt"))
    with pytest.raises(OracleError) as failure:
        describe(tls_server.endpoint, creds)
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_accepts_a_client_the_ca_signed(mtls_server, pki):
    creds = tls_channel_credentials(pki("ca.crt"), pki("customer.crt"), pki("customer.key"))
    assert describe(mtls_server.endpoint, creds).backbone.name


@pytest.mark.parametrize("client", [None, "intruder"])
def test_mutual_tls_refuses_clients_without_a_signed_certificate(mtls_server, pki, client):
    creds = (tls_channel_credentials(pki("ca.crt")) if client is None else
             tls_channel_credentials(pki("ca.crt"), pki(f"{client}.crt"), pki(f"{client}.key")))
    with pytest.raises(OracleError) as failure:
        describe(mtls_server.endpoint, creds)
    assert failure.value.code == grpc.StatusCode.UNAVAILABLE


def test_serving_needs_tls_or_an_explicit_plaintext():
    result = subprocess.run(server_command() + ["--dev", "--port", "0"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2
    assert "--tls-cert and --tls-key, or --plaintext" in result.stderr


def test_a_certificate_for_another_host_name_is_verified_against_the_name_given(pki):
    """The container's health check connects to 127.0.0.1; the certificate names only the
    public host, which GRAYTUNE_HEALTH_HOST gives (a client: tls_server_name)."""
    args = [*TLS_ARGS, "--tls-cert", pki("public.crt"), "--tls-key", pki("public.key")]
    ca = tls_channel_credentials(pki("ca.crt"))
    with LocalServer(args, credentials=ca, tls_server_name="oracle.example.com") as server:
        health = server_command() + ["health", "--address", server.endpoint, "--tls-ca", pki("ca.crt")]
        env = {k: v for k, v in os.environ.items() if k != "GRAYTUNE_HEALTH_HOST"}
        unnamed = subprocess.run(health, capture_output=True, text=True, env=env, timeout=120)
        named = subprocess.run(health, capture_output=True, text=True, timeout=120,
                               env={**env, "GRAYTUNE_HEALTH_HOST": "oracle.example.com"})
        with pytest.raises(OracleError):
            describe(server.endpoint, ca)
        with OracleClient(server.endpoint, credentials=ca, tls_server_name="oracle.example.com") as oracle:
            assert oracle.describe().backbone.name
    assert unnamed.returncode == 2 and "set GRAYTUNE_HEALTH_HOST" in unnamed.stderr
    assert (named.returncode, named.stdout.strip()) == (0, "SERVING"), named.stderr
