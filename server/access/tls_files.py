"""The server's TLS files, checked before serving: a file that cannot work is one line naming
its flag, its path and what is wrong (not gRPC's "failed to bind"), an expired certificate
refuses to start, and one that expires within EXPIRY_WARNING is logged as a warning.

`cryptography` reads the files: Python's `ssl` can check that a key matches its certificate,
but has no public way to read a certificate's validity dates.
"""

from __future__ import annotations

import datetime
import logging
import re
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

log = logging.getLogger("graytune.server")
EXPIRY_WARNING = datetime.timedelta(days=14)
PEM_LABEL = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


class TlsFileError(ValueError):
    """A TLS file the server cannot serve with; the message names the file and the problem."""


def server_credentials(cert: Path, key: Path, client_ca: Path | None = None) -> grpc.ServerCredentials:
    """TLS from PEM files; with `client_ca`, mutual TLS: clients must show a certificate it
    signed. Raises TlsFileError for a file that cannot work."""
    cert_pem, key_pem = _read(cert, "--tls-cert"), _read(key, "--tls-key")
    chain = _certificates(cert_pem, cert, "--tls-cert")
    private_key = _private_key(key_pem, key)
    if _public_bytes(chain[0].public_key()) != _public_bytes(private_key.public_key()):
        raise TlsFileError(
            f"--tls-key {key}: is not the private key of the certificate in --tls-cert {cert} "
            f"({_subject(chain[0])}); give the key that certificate was made for"
        )
    _check_dates(chain, cert, "--tls-cert")
    client_ca_pem = None
    if client_ca is not None:
        client_ca_pem = _read(client_ca, "--tls-client-ca")
        _check_dates(_certificates(client_ca_pem, client_ca, "--tls-client-ca"), client_ca, "--tls-client-ca")
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)], root_certificates=client_ca_pem, require_client_auth=client_ca is not None
    )


def _read(path: Path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise TlsFileError(f"{flag} {path}: cannot read it ({e.strerror})") from None


def _labels(pem: bytes, path: Path, flag: str) -> list[str]:
    """The PEM block types in a file ("CERTIFICATE", "PRIVATE KEY", ...)."""
    labels = [label.decode() for label in PEM_LABEL.findall(pem)]
    if not labels:
        raise TlsFileError(
            f"{flag} {path}: is not PEM (no '-----BEGIN' line); a DER file converts with "
            f"`openssl x509 -inform der` (a certificate) or `openssl pkey -inform der` (a key)"
        )
    return labels


def _certificates(pem: bytes, path: Path, flag: str) -> list[x509.Certificate]:
    labels = _labels(pem, path, flag)
    if "CERTIFICATE" not in labels:
        swapped = "; are --tls-cert and --tls-key swapped?" if any("PRIVATE KEY" in label for label in labels) else ""
        raise TlsFileError(f"{flag} {path}: holds {', '.join(labels)}, not a CERTIFICATE{swapped}")
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise TlsFileError(f"{flag} {path}: a CERTIFICATE block does not parse ({e})") from None


def _private_key(pem: bytes, path: Path) -> PrivateKeyTypes:
    labels = _labels(pem, path, "--tls-key")
    if not any(label.endswith("PRIVATE KEY") for label in labels):
        swapped = "; are --tls-cert and --tls-key swapped?" if "CERTIFICATE" in labels else ""
        raise TlsFileError(f"--tls-key {path}: holds {', '.join(labels)}, not a PRIVATE KEY{swapped}")
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:  # cryptography's way of saying the key needs a password
        raise TlsFileError(
            f"--tls-key {path}: is encrypted with a passphrase, which the server cannot "
            f"ask for; decrypt it with `openssl pkey -in {path} -out KEY`"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise TlsFileError(f"--tls-key {path}: the PRIVATE KEY does not parse ({e})") from None


def _check_dates(chain: list[x509.Certificate], path: Path, flag: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    for certificate in chain:
        after, before = certificate.not_valid_after_utc, certificate.not_valid_before_utc
        if after < now:
            raise TlsFileError(
                f"{flag} {path}: the certificate {_subject(certificate)} expired on {_date(after)}; renew it"
            )
        if before > now:
            raise TlsFileError(
                f"{flag} {path}: the certificate {_subject(certificate)} is not valid until "
                f"{_date(before)}; is this host's clock right?"
            )
        if after - now < EXPIRY_WARNING:
            log.warning(
                "%s %s: the certificate %s expires on %s, in %.1f days; renew it before then",
                flag,
                path,
                _subject(certificate),
                _date(after),
                (after - now) / datetime.timedelta(days=1),
            )


def _public_bytes(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _subject(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "(no subject)"


def _date(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")
