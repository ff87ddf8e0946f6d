"""Why a server that was never reached does not answer, found by connecting to it with Python's
`socket` and `ssl`: gRPC reports every failure to connect as UNAVAILABLE, the same for a server
not up yet (worth waiting for) as for a TLS handshake that fails (which waiting never fixes).

    why = unreachable("oracle.example.com:50051")            # "connection refused", or None
    handshake_check(endpoint, TlsFiles(ca="ca.crt"), None)   # raises HandshakeFailure, saying
                                                             # which check failed and which flag fixes it
"""

from __future__ import annotations

import re
import socket
import ssl
from dataclasses import dataclass

PROBE_TIMEOUT = 5.0
# The HTTP/2 client preface and an empty SETTINGS frame: a gRPC server answers them with its own
# SETTINGS; one that refused this client's certificate (mutual TLS) closes the connection instead.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
TRUST_HINT = "--tls-ca FILE (or GRAYTUNE_TLS_CA=FILE)"
# OpenSSL's X509_V_ERR_* codes, as ssl.SSLCertVerificationError.verify_code gives them.
NOT_YET_VALID, EXPIRED, SELF_SIGNED, HOST_MISMATCH, IP_MISMATCH = 9, 10, 18, 62, 64
UNTRUSTED = {2, 19, 20, 21}  # no issuer certificate, self-signed one in the chain, no local issuer, leaf unverifiable


@dataclass(frozen=True)
class TlsFiles:
    """What the client's TLS was made from: the CA that verifies the server (None: the system's
    roots) and, for mutual TLS, this client's certificate and key."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


class HandshakeFailure(Exception):
    """The endpoint accepts connections, but this client's transport (TLS with its files, or
    plaintext) cannot work with it, and will not until a certificate or a flag changes."""


def host_and_port(endpoint: str) -> tuple[str, int] | None:
    """`host:port`, `[::1]:port`, `dns:///host:port` or `ipv4:a.b.c.d:port`; None for gRPC target
    forms this module does not probe (unix sockets, several addresses)."""
    target = re.sub(r"^(dns:(//[^/]*)?/?|ipv4:|ipv6:)", "", endpoint)
    match = re.fullmatch(r"(?:\[([0-9a-fA-F:.]+)\]|([^:/,\[\]]+))(?::(\d+))?", target)
    if match is None:
        return None
    return match[1] or match[2], int(match[3] or 443)


def unreachable(endpoint: str) -> str | None:
    """None when the endpoint accepts a TCP connection (or cannot be probed); else why not."""
    address = host_and_port(endpoint)
    if address is None:
        return None
    try:
        socket.create_connection(address, PROBE_TIMEOUT).close()
    except socket.gaierror as e:
        return f"cannot resolve host {address[0]!r}: {e.strerror}"
    except TimeoutError:
        return f"no answer to a connection within {PROBE_TIMEOUT:g} s"
    except OSError as e:
        return (e.strerror or str(e)).lower()
    return None


def handshake_check(endpoint: str, tls: TlsFiles | None, server_name: str | None) -> None:
    """Raises HandshakeFailure when this client's transport cannot work with the server at
    `endpoint`: `tls` None is plaintext (it fails against a server that speaks TLS); otherwise the
    handshake gRPC makes with the same files and `server_name` (default: the endpoint's host)."""
    address = host_and_port(endpoint)
    if address is None:
        return
    if tls is None:
        if _speaks_tls(address):
            raise HandshakeFailure(
                f"{endpoint} serves TLS, and this client connects in plaintext: connect with --tls, "
                f"and {TRUST_HINT} if a private CA signed the server's certificate"
            )
        return
    name = server_name or address[0]
    try:
        context = ssl.create_default_context(cafile=tls.ca)
        if tls.cert:
            context.load_cert_chain(tls.cert, tls.key)
    except (ssl.SSLError, OSError) as e:
        raise HandshakeFailure(
            f"this client's TLS files do not load ({e}): check --tls-ca, --tls-cert and --tls-key"
        ) from None
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection(address, PROBE_TIMEOUT) as raw,
            context.wrap_socket(raw, server_hostname=name) as connection,
        ):
            connection.sendall(HTTP2_PREFACE)
            closed = connection.recv(1) == b""
    except ssl.SSLCertVerificationError as e:
        raise HandshakeFailure(f"TLS handshake with {endpoint} failed: {_verify_failure(e, tls, name)}") from None
    except ssl.SSLError as e:
        raise HandshakeFailure(
            f"TLS handshake with {endpoint} failed: {_alert_failure(e.reason, tls)}"
            if "ALERT" in (e.reason or "")
            else f"{endpoint} does not complete a TLS handshake ({e.reason or e}): if the server runs with "
            f"--plaintext, connect without --tls and the --tls-* files"
        ) from None
    except OSError:
        return  # gone, or slow: a failure to reach it, which the caller waits out
    if closed:  # what a server that requires client certificates (mutual TLS) does with a refused one
        raise HandshakeFailure(
            f"TLS handshake with {endpoint} failed: the server closed the connection as soon as it was made: "
            + (
                f"it does not accept this client's certificate {tls.cert} (--tls-cert); is it signed by the CA "
                f"the server trusts for clients (its --tls-client-ca), and still valid?"
                if tls.cert
                else "it requires a client certificate (mutual TLS): pass --tls-cert FILE and --tls-key FILE"
            )
        )


def _speaks_tls(address: tuple[str, int]) -> bool:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # any certificate: is it TLS at all?
    try:
        with socket.create_connection(address, PROBE_TIMEOUT) as raw, context.wrap_socket(raw):
            return True
    except OSError:  # ssl.SSLError included: a plaintext server answers a ClientHello with nonsense
        return False


def _verify_failure(error: ssl.SSLCertVerificationError, tls: TlsFiles, name: str) -> str:
    trusted = f"the CA in {tls.ca} (--tls-ca)" if tls.ca else "this system's CAs"
    code = error.verify_code
    if code == SELF_SIGNED:
        return (
            f"the server's certificate is self-signed, and not {trusted}: to trust it, pass that "
            f"certificate itself with {TRUST_HINT}"
        )
    if code in UNTRUSTED:
        return (
            f"the server's certificate is not signed by {trusted} ({error.verify_message}): pass the CA "
            f"that signed it with {TRUST_HINT}"
        )
    if code == EXPIRED:
        return (
            "the server's certificate has expired: its owner must renew it (or this machine's clock "
            "is wrong); no client flag fixes that"
        )
    if code == NOT_YET_VALID:
        return "the server's certificate is not valid yet: check this machine's clock and the certificate's dates"
    if code in (HOST_MISMATCH, IP_MISMATCH):
        return (
            f"the server's certificate does not name {name!r}: connect to a host name it holds, or give "
            f"that name with --tls-server-name NAME"
        )
    return f"the server's certificate failed verification: {error.verify_message}"


def _alert_failure(reason: str, tls: TlsFiles) -> str:
    """A TLS alert the server sent: about this client's certificate, under mutual TLS."""
    alert = reason.split("ALERT_", 1)[1].replace("_", " ").lower()
    if not tls.cert:
        return (
            f"the server refused the handshake ({alert}); a server that requires client certificates "
            f"(mutual TLS) does: pass --tls-cert FILE and --tls-key FILE"
        )
    return (
        f"the server refused this client's certificate {tls.cert} (--tls-cert): {alert}; it must be "
        f"signed by the CA the server trusts for clients (its --tls-client-ca) and be valid"
    )
