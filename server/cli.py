"""graytune-server: serve a frozen OpenCLIP backbone as a gradient oracle.

graytune-server keys --file keys.json create --tier graybox --budget 100000
graytune-server --keys keys.json --tls-cert server.crt --tls-key server.key   # tiny model, random weights
graytune-server --dev --plaintext                 # no credentials, no TLS: development only
graytune-server health                            # exit 0 when serving (container checks)
graytune-server audit --log server.log            # per key: calls, samples, gradients, refusals
graytune-server usage migrate --from keys.usage.sqlite --to postgresql://graytune@db/graytune
graytune-server --model ViT-B-32 --pretrained laion2b_s34b_b79k
graytune-server --model ViT-B-32 --weights /models/vit-b-32.safetensors
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

from graytune.contract import GRAYBOX, PROTOCOL_VERSION, TIERS
from graytune.help_format import DefaultsHelpFormatter
from graytune.server.access.usage import is_url, redacted
from graytune.server.compute.limits import Limits
from graytune.server.service import logs

MB = 1 << 20


# The flags whose default is read from the environment (the compose file and the Kubernetes
# manifests set these); a flag given wins.
ENVIRONMENT = {
    "--model": "GRAYTUNE_MODEL",
    "--pretrained": "GRAYTUNE_PRETRAINED",
    "--weights": "GRAYTUNE_WEIGHTS",
    "--keys": "GRAYTUNE_KEYS",
    "--usage-db": "GRAYTUNE_USAGE_DB",
    "--usage-db-password-file": "GRAYTUNE_USAGE_DB_PASSWORD_FILE",
    "--tls-cert": "GRAYTUNE_TLS_CERT",
    "--tls-key": "GRAYTUNE_TLS_KEY",
    "--tls-client-ca": "GRAYTUNE_TLS_CLIENT_CA",
    "--metrics-port": "GRAYTUNE_METRICS_PORT",
    "--drain-seconds": "GRAYTUNE_DRAIN_SECONDS",
    "--log-format": "GRAYTUNE_LOG_FORMAT",
}


def env_argument(group, flag: str, default=None, **kwargs) -> None:
    """A flag whose default is its ENVIRONMENT variable when set, else `default`."""
    group.add_argument(flag, default=os.environ.get(ENVIRONMENT[flag]) or default, **kwargs)


class HelpFormatter(DefaultsHelpFormatter):
    """The client's help format, and each flag's environment variable after its help."""

    def _get_help_string(self, action: argparse.Action) -> str:
        env = ENVIRONMENT.get(action.option_strings[0]) if action.option_strings else None
        return super()._get_help_string(action) + (f" [${env}]" if env else "")


def parse_args(argv=None) -> argparse.Namespace:
    import graytune

    p = argparse.ArgumentParser(prog="graytune-server", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--version", action="version", version=f"graytune-server {graytune.__version__} (protocol {PROTOCOL_VERSION})"
    )
    model = p.add_argument_group("backbone")
    env_argument(model, "--model", default="graytune-tiny", help="OpenCLIP architecture name")
    env_argument(model, "--pretrained", help="OpenCLIP pretrained tag, fetched from the hub")
    env_argument(model, "--weights", type=Path, help="local .safetensors or .pt weights for --model")
    model.add_argument("--model-config", type=Path, help="architecture JSON file (its stem names the model)")
    model.add_argument("--seed", type=int, default=0, help="seed of the random init without weights")
    model.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    model.add_argument(
        "--precision",
        choices=["fp32", "amp_bf16", "amp_fp16"],
        default="fp32",
        help="autocast on the GPU (default: %(default)s)",
    )
    model.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    model.add_argument(
        "--prompt-template",
        action="append",
        dest="prompt_templates",
        metavar="TEXT",
        help="a template whose context tokens callers may shift (CraFT's black-box "
        "prompt search); repeat for more (default: 'a photo of a')",
    )
    serve = p.add_argument_group("serving")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=50051, help="gRPC port; 0 picks a free one")
    serve.add_argument(
        "--no-merge-batches",
        action="store_true",
        help="run each image Forward/Backward alone instead of merging concurrent ones",
    )
    serve.add_argument(
        "--max-concurrent-calls",
        type=int,
        default=64,
        help="Embed/Forward/Backward calls in flight, all callers; beyond it "
        "RESOURCE_EXHAUSTED (TOO_MANY_CALLS). Describe and health never count "
        "(default: %(default)s)",
    )
    serve.add_argument(
        "--max-calls-per-key",
        type=int,
        default=8,
        help="Embed/Forward/Backward calls in flight per key, so no key takes every "
        "slot; not applied with --dev (default: %(default)s)",
    )
    serve.add_argument(
        "--min-upload-kib-per-second",
        type=float,
        default=64.0,
        help="a request stream slower than this on average, after --upload-grace, is "
        "cut (DEADLINE_EXCEEDED) and its slot freed (default: %(default)s)",
    )
    serve.add_argument(
        "--upload-grace",
        type=float,
        default=10.0,
        help="seconds a request stream may take before the minimum rate applies (default: %(default)s)",
    )
    serve.add_argument(
        "--reflection-streams",
        type=int,
        default=0,
        help="serve gRPC reflection (for grpcurl and the like), at most this many "
        "streams at once; 0: off, as in production (default: %(default)s)",
    )
    env_argument(serve, "--keys", type=Path, help="API key file (see `graytune-server keys`); required unless --dev")
    env_argument(
        serve,
        "--usage-db",
        help="the usage store (budgets used, charged call ids): an SQLite file (default: beside the key "
        "file) for one host, or postgresql://USER@HOST:PORT/DB shared by replicas on several hosts "
        "(rate limits too; the password from PGPASSWORD, not the command line)",
    )
    env_argument(
        serve,
        "--usage-db-password-file",
        type=Path,
        help="a file holding the PostgreSQL password (a mounted secret), when not in PGPASSWORD or ~/.pgpass",
    )
    serve.add_argument(
        "--usage-timeout",
        type=float,
        default=2.0,
        help="seconds a billed call waits for the usage store; then UNAVAILABLE and "
        "the client retries (default: %(default)s)",
    )
    serve.add_argument("--dev", action="store_true", help="development mode: no credentials, every caller gets --tier")
    serve.add_argument("--tier", choices=TIERS, default=GRAYBOX, help="the callers' tier with --dev")
    tls = p.add_argument_group("transport security")
    env_argument(tls, "--tls-cert", type=Path, help="server certificate chain (PEM)")
    env_argument(tls, "--tls-key", type=Path, help="server private key (PEM)")
    env_argument(tls, "--tls-client-ca", type=Path, help="CA that signs client certificates: mutual TLS")
    tls.add_argument("--plaintext", action="store_true", help="serve without TLS (trusted networks only)")
    env_argument(
        serve,
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics over HTTP on this port (default: off)",
    )
    env_argument(
        serve,
        "--drain-seconds",
        type=float,
        default=0.0,
        help="on SIGTERM, first report NOT_SERVING for this long while still serving, so a balancer "
        "moves callers away before calls are refused; a second SIGTERM cuts it short (default: %(default)s)",
    )
    serve.add_argument(
        "--grace", type=float, default=10.0, help="seconds to finish calls in flight once the server stops"
    )
    limits = p.add_argument_group("limits")
    d = Limits()
    limits.add_argument("--max-batch", type=int, default=d.max_batch, help="samples (images or captions) per call")
    limits.add_argument(
        "--max-tensor-mb", type=float, default=d.max_tensor_bytes / MB, help="MiB of one tensor a caller sends"
    )
    limits.add_argument(
        "--max-graph-mb",
        type=float,
        default=d.max_graph_bytes / MB,
        help="memory held for pending Backward calls, all callers; when full, the key "
        "holding the most loses its oldest graph (default: %(default)s)",
    )
    limits.add_argument(
        "--max-graph-mb-per-key",
        type=float,
        help="memory one key's pending graphs may hold (default: no cap of its own; "
        "about --max-graph-mb / the keys active at once bounds each)",
    )
    limits.add_argument(
        "--handle-ttl", type=float, default=d.handle_ttl_seconds, help="seconds a graph waits for its Backward"
    )
    limits.add_argument(
        "--max-caption-bytes",
        type=int,
        default=d.max_caption_bytes,
        help="UTF-8 bytes per caption, checked before tokenising (default: %(default)s)",
    )
    limits.add_argument(
        "--max-context-rows",
        type=int,
        default=d.max_context_rows,
        help="candidate contexts x class names in one context_delta call (default: %(default)s)",
    )
    limits.add_argument(
        "--max-pixel-adapter",
        type=pixel_adapter_limits,
        default=d.max_pixel_adapter,
        metavar="LAYERS,CHANNELS,KERNEL",
        help="the largest pixel adapter a frugal image call may run here (uint8 pixels and the "
        "adapter's parameters in, its parameters' gradients out); 0 runs none "
        f"(default: {','.join(map(str, d.max_pixel_adapter))})",
    )
    limits.add_argument(
        "--max-call-seconds",
        type=float,
        default=d.max_call_seconds,
        help="a call still running this long is ended (DEADLINE_EXCEEDED or cancelled)",
    )
    p.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), help="the server's own log lines"
    )
    env_argument(
        p,
        "--log-format",
        default="text",
        choices=logs.FORMATS,
        help="json: one JSON object per line (time, level, logger, message; an audit line's fields as keys)",
    )
    p.epilog = (
        "environment (a flag given wins):\n"
        + "".join(f"  {env:34}{flag}\n" for flag, env in ENVIRONMENT.items())
        + (
            f"  {'GRAYTUNE_CACHE':34}where built-in weights are built and kept (default: ~/.cache/graytune)\n"
            "`graytune-server health --help` lists the health check's."
        )
    )
    return p.parse_args(argv)


def fail(*messages: str) -> None:
    for message in messages:
        print(f"graytune-server: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_port_free(host: str, port: int) -> None:
    """Start-up refuses a port another process listens on, as gRPC would, but at once."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's own listener
            probe.bind(address)
    except OSError as e:
        fail(
            f"cannot listen on {host}:{port}: {e.strerror or e} (`ss -ltnp 'sport = :{port}'` names a process "
            "listening there)"
        )


def check_writable(folder: Path, what: str) -> None:
    """Start-up refuses a folder it will need to write, rather than failing at the first call."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK)
    except OSError:  # permission denied, a read-only file system
        writable = False
    if not writable:
        uid = os.getuid()
        fail(
            f"{what}: cannot write to {folder} as uid {uid}; make it writable by that uid (in a "
            f"container, the host folder mounted there: `sudo chown -R {uid}:{os.getgid()} HOST_FOLDER`)"
        )


# `keys create`'s flags, by the ApiKey field they set: errors name the flag the owner typed.
KEY_FLAGS = {
    "tier": "--tier",
    "label": "--label",
    "expires_at": "--expires",
    "budget_samples": "--budget",
    "gradient_budget_samples": "--gradient-budget",
    "rate_per_second": "--rate",
    "gradient_clip_norm": "--gradient-clip",
    "gradient_noise_std": "--gradient-noise",
    "pixel_gradients": "--pixel-gradients",
}
RELOAD_NOTE = "a server running with --keys {} reloads it within seconds (or at once on SIGHUP)"


def keys_main(argv) -> None:
    """graytune-server keys create|list|revoke: manage the API key file."""
    from graytune.server.access.credentials import KeyFile
    from graytune.server.access.key_schema import MAX_LABEL_CHARS, KeyFileError

    p = argparse.ArgumentParser(prog="graytune-server keys", description=keys_main.__doc__)
    p.add_argument("--file", type=Path, required=True, help="the key file (created if absent)")
    sub = p.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="add a key and print its secret, once")
    create.add_argument("--tier", choices=TIERS, required=True)
    create.add_argument("--label", help=f"whose key it is: printable text, at most {MAX_LABEL_CHARS} characters")
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument(
        "--expires",
        metavar="WHEN",
        type=expiry_time,
        help="refused from then on: a UTC date (2027-01-31: from 00:00 UTC that day) or an "
        "ISO-8601 time with a zone (2027-01-31T12:00:00+01:00)",
    )
    expiry.add_argument(
        "--expires-in", metavar="N{m,h,d}", type=expiry_after, help="refused after this long, e.g. 90m, 12h, 30d"
    )
    create.add_argument("--budget", type=int, help="samples of Embed/Forward over the key's life (0: frozen)")
    create.add_argument("--gradient-budget", type=int, help="samples of Backward (gradients) over the key's life")
    create.add_argument("--rate", type=float, help="calls per second (> 0)")
    create.add_argument(
        "--gradient-clip",
        type=float,
        help="rescale each returned gradient (per sample and input) to at most this L2 norm",
    )
    create.add_argument(
        "--gradient-noise", type=float, help="add Gaussian noise of this standard deviation to returned gradients"
    )
    create.add_argument(
        "--pixel-gradients",
        choices=("allowed", "never"),
        help="never: Backward returns this key no gradient w.r.t. pixels (what model extraction wants "
        "most); it can still train a pixel adapter through the frugal image call, whose gradients "
        "are the adapter's parameters' (default: allowed)",
    )
    listing = sub.add_parser("list", help="key ids, tiers, labels, expiry, limits and budget used (never secrets)")
    listing.add_argument("--usage-db", help="the server's --usage-db (a file or a URL), if not the default")
    revoke = sub.add_parser("revoke", help="remove a key")
    revoke.add_argument("key_id")
    args = p.parse_args(argv)
    try:
        keys = KeyFile(args.file)
    except KeyFileError as e:
        fail(*e.problems)
    if args.action == "create":
        create_key(keys, args)
    elif args.action == "list":
        list_keys(keys, args.usage_db or str(default_usage_db(args.file)))
    else:
        try:
            key = keys.revoke(args.key_id)
        except KeyError:
            fail(f"{args.file}: no key '{args.key_id}' (`graytune-server keys --file {args.file} list` shows them)")
        print(
            f"key {describe_key(key)} revoked: removed from {args.file}; "
            + RELOAD_NOTE.format(args.file)
            + " and refuses it from then on"
        )


def pixel_adapter_limits(text: str) -> tuple[int, int, int]:
    """ "4,16,5" -> (4, 16, 5): layers, channels, kernel size; "0" -> (0, 0, 0), none."""
    if text.strip() == "0":
        return (0, 0, 0)
    try:
        layers, channels, kernel = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give LAYERS,CHANNELS,KERNEL (e.g. 4,16,5), or 0") from None
    if min(layers, channels, kernel) < 1 or kernel % 2 == 0:
        raise argparse.ArgumentTypeError(f"{text!r}: each at least 1, the kernel size odd")
    return (layers, channels, kernel)


def expiry_time(text: str):
    from graytune.server.access.key_schema import parse_expiry

    try:
        return parse_expiry(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}; give a date (2027-01-31) or an ISO-8601 time with a zone") from None


def expiry_after(text: str):
    import re
    from datetime import timedelta

    from graytune.server.access.credentials import utc_now

    match = re.fullmatch(r"(\d+(?:\.\d+)?)([mhd])", text)
    if match is None or float(match[1]) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration with a unit: 90m, 12h or 30d")
    unit = {"m": "minutes", "h": "hours", "d": "days"}[match[2]]
    return utc_now() + timedelta(**{unit: float(match[1])})


def create_key(keys, args) -> None:
    from graytune.server.access.credentials import utc_now
    from graytune.server.access.key_schema import value_problems

    fields = dict(
        tier=args.tier,
        label=args.label,
        expires_at=args.expires or args.expires_in,
        budget_samples=args.budget,
        gradient_budget_samples=args.gradient_budget,
        rate_per_second=args.rate,
        gradient_clip_norm=args.gradient_clip,
        gradient_noise_std=args.gradient_noise,
        pixel_gradients=args.pixel_gradients,
    )
    problems = [f"{KEY_FLAGS[name]}: {problem}" for name, problem in value_problems(fields)]
    if fields["expires_at"] is not None and fields["expires_at"] <= utc_now():
        problems.append(f"--expires: {fields['expires_at']:%Y-%m-%dT%H:%M:%SZ} is in the past")
    if problems:
        fail(*problems)
    secret = keys.create(**fields)
    print(secret)
    key = keys.keys[secret.split("_")[1]]
    print(
        f"key {describe_key(key)} added to {args.file}; the secret above is shown once and stored nowhere; "
        + RELOAD_NOTE.format(args.file),
        file=sys.stderr,
    )


def describe_key(key) -> str:
    """`k1a2b3c4d (graybox, "acme", expires 2027-01-31T00:00:00Z)`: what names a key to its owner."""
    from graytune.server.access.key_schema import format_expiry

    about = [key.tier] + ([f'"{key.label}"'] if key.label else [])
    about += [f"expires {format_expiry(key.expires_at)}"] if key.expires_at else []
    return f"{key.id} ({', '.join(about)})"


def list_keys(keys, usage_db: str) -> None:
    from graytune.server.access.credentials import utc_now
    from graytune.server.access.key_schema import format_expiry
    from graytune.server.access.usage import GRADIENTS, SAMPLES, Budgets

    if not keys.keys:
        print(f"no keys in {keys.path}" + ("" if keys.path.exists() else " (the file does not exist yet)"))
        return
    charged = is_url(usage_db) or Path(usage_db).exists()  # no SQLite file: no call charged yet
    budgets = Budgets(open_usage_db(usage_db, timeout=10.0)) if charged else None
    now = utc_now()

    def budget(key, total, kind):
        used = budgets.used(key.id, kind) if budgets is not None else 0
        return "-" if total is None else f"{total} used {used}"

    def expiry(key):
        return (
            "-"
            if key.expires_at is None
            else format_expiry(key.expires_at) + (" (expired)" if key.expired(now) else "")
        )

    unset = lambda value: "-" if value is None else f"{value:g}"
    rows = [("ID", "TIER", "LABEL", "EXPIRES", "BUDGET", "RATE/S", "GRADIENT BUDGET", "CLIP", "NOISE", "PIXEL GRADS")]
    rows += [
        (
            key.id,
            key.tier,
            key.label or "-",
            expiry(key),
            budget(key, key.budget_samples, SAMPLES),
            unset(key.rate_per_second),
            budget(key, key.gradient_budget_samples, GRADIENTS),
            unset(key.gradient_clip_norm),
            unset(key.gradient_noise_std),
            key.pixel_gradients or "allowed",
        )
        for key in keys.list()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def default_usage_db(key_file: Path) -> Path:
    return key_file.with_suffix(".usage.sqlite")


STORE_CONNECT_WAIT = 30.0  # seconds a starting server waits for its PostgreSQL (starting beside it)


def open_usage_db(location: str, timeout: float, password_file: Path | None = None):
    """The usage store, or exit 2 saying why it cannot be used."""
    from graytune.server.access.usage import open_store, store_errors

    try:
        return open_store(location, timeout, connect_wait=STORE_CONNECT_WAIT, password_file=password_file)
    except ModuleNotFoundError:
        fail("a PostgreSQL usage store needs psycopg: pip install 'graytune[fleet]'")
    except store_errors(location) as e:  # locked while its schema needs creating, not SQLite, out of reach
        fail(f"the usage database {redacted(location)}: {e}")


def health_main(argv) -> None:
    """graytune-server health: exit 0 when the server's gRPC health check says SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="graytune-server health", description=health_main.__doc__, formatter_class=DefaultsHelpFormatter
    )
    p.add_argument(
        "--address",
        default=f"127.0.0.1:{env('GRAYTUNE_PORT', '50051')}",
        help="host:port of the server checked (default: 127.0.0.1 and $GRAYTUNE_PORT, else %(default)s)",
    )
    p.add_argument(
        "--tls-ca",
        default=env("GRAYTUNE_HEALTH_TLS_CA"),
        help="CA of the server certificate, for a TLS server (default: $GRAYTUNE_HEALTH_TLS_CA, else plaintext)",
    )
    for flag, variable, what in (
        ("--tls-cert", "GRAYTUNE_HEALTH_TLS_CERT", "client certificate"),
        ("--tls-key", "GRAYTUNE_HEALTH_TLS_KEY", "client key"),
    ):
        p.add_argument(flag, default=env(variable), help=f"{what}, for mutual TLS (default: ${variable}, else none)")
    p.add_argument(
        "--tls-host",
        default=env("GRAYTUNE_HEALTH_HOST"),
        help="the host name the server certificate is verified against, when it does not "
        "name the address checked (default: $GRAYTUNE_HEALTH_HOST, else the address)",
    )
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    args = p.parse_args(argv)
    read = lambda path: Path(path).read_bytes() if path else None
    options = [("grpc.ssl_target_name_override", args.tls_host)] if args.tls_host else []
    channel = (
        grpc.secure_channel(
            args.address,
            grpc.ssl_channel_credentials(read(args.tls_ca), read(args.tls_key), read(args.tls_cert)),
            options,
        )
        if args.tls_ca
        else grpc.insecure_channel(args.address)
    )
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
    except grpc.RpcError as e:
        if args.tls_ca:
            hint = "" if args.tls_host else "; if the server certificate names a host, set GRAYTUNE_HEALTH_HOST to it"
        else:  # a TLS server closes a plaintext connection: "Socket closed"
            hint = "; if the server serves TLS, give --tls-ca (or GRAYTUNE_HEALTH_TLS_CA)"
        fail(f"{args.address}: {e.code().name}: {e.details()}{hint}")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(status)
    sys.exit(0 if status == "SERVING" else 1)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keys"]:
        return keys_main(argv[1:])
    if argv[:1] == ["health"]:
        return health_main(argv[1:])
    if argv[:1] == ["usage"]:
        from graytune.server.access.usage.migrate import main as usage_main

        return usage_main(argv[1:])
    if argv[:1] == ["audit"]:
        from graytune.server.access.audit import main as audit_main

        return audit_main(argv[1:])
    args = parse_args(argv)
    logs.configure(args.log_level, args.log_format)
    log = logging.getLogger("graytune.server")
    from graytune.server.access.credentials import KeyFile
    from graytune.server.access.key_schema import KeyFileError
    from graytune.server.access.tls_files import TlsFileError, server_credentials
    from graytune.server.access.usage import Budgets

    # The owner's files are checked before OpenCLIP is imported (seconds) and the backbone loaded
    # (minutes for a large one): a wrong path, key file or certificate fails at once.
    if args.dev == (args.keys is not None):
        fail("give --keys FILE, or --dev for development without credentials")
    if args.plaintext == bool(args.tls_cert and args.tls_key) or bool(args.tls_cert) != bool(args.tls_key):
        fail("give --tls-cert and --tls-key, or --plaintext to serve without TLS")
    for path in (args.keys, args.tls_cert, args.tls_key, args.tls_client_ca, args.usage_db_password_file):
        if path is not None and not path.is_file():
            fail(f"file not found: {path}")
    if args.keys is not None:
        usage_db = args.usage_db or str(default_usage_db(args.keys))
        if not is_url(usage_db):
            check_writable(Path(usage_db).parent, "the usage database")
        try:
            keys = KeyFile(args.keys)  # every problem of the file, before the backbone loads
        except KeyFileError as e:
            fail(*e.problems)
        # Reachable, with a schema this server knows, before the model loads.
        budgets = Budgets(open_usage_db(usage_db, args.usage_timeout, args.usage_db_password_file))
    try:  # the certificate files too
        tls = None if args.plaintext else server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
    except TlsFileError as e:
        fail(str(e))
    check_port_free(args.host, args.port)  # before the backbone, which may take minutes to load or build
    import torch

    import graytune
    from graytune.server import pretraining
    from graytune.server.access.auth import Authenticator
    from graytune.server.compute.backbone import BackboneSource, load_backbone
    from graytune.server.compute.context_prompts import DEFAULT_TEMPLATES
    from graytune.server.compute.oracle import GradientOracle
    from graytune.server.service.metrics import ServerMetrics
    from graytune.server.service.usage_store import UsageStore

    if args.pretrained and pretraining.is_builtin(args.model, args.pretrained):
        check_writable(pretraining.cache_dir(), "the cache of built-in weights ($GRAYTUNE_CACHE)")
    if args.threads:
        torch.set_num_threads(args.threads)
    source = BackboneSource(args.model, args.pretrained, args.weights, args.model_config, args.seed)
    try:
        backbone = load_backbone(source, args.device, args.precision, args.prompt_templates or DEFAULT_TEMPLATES)
    except (FileNotFoundError, ValueError, RuntimeError, ModuleNotFoundError) as e:
        fail(str(e))
    limits = Limits(
        max_batch=args.max_batch,
        max_tensor_bytes=int(args.max_tensor_mb * MB),
        max_graph_bytes=int(args.max_graph_mb * MB),
        handle_ttl_seconds=args.handle_ttl,
        max_graph_bytes_per_key=None if args.max_graph_mb_per_key is None else int(args.max_graph_mb_per_key * MB),
        max_call_seconds=args.max_call_seconds,
        max_caption_bytes=args.max_caption_bytes,
        max_context_rows=args.max_context_rows,
        max_pixel_adapter=args.max_pixel_adapter,
    )
    oracle = GradientOracle(backbone, limits, merge_batches=not args.no_merge_batches)
    metrics = ServerMetrics(oracle.store, backbone.device, oracle.device, limits.max_graph_bytes)
    metrics.describe_server(
        graytune.__version__, PROTOCOL_VERSION, backbone.name, backbone.sha256, str(backbone.device)
    )
    oracle.on_merged_batch = metrics.observe_merged_batch
    if args.dev:
        log.warning("DEVELOPMENT MODE: no credentials; every caller has tier '%s'", args.tier)
        auth, store = Authenticator(None, args.tier), None
    else:
        auth = Authenticator(keys)
        store = UsageStore(budgets, timeout=args.usage_timeout)
        metrics.watch_budgets(keys, budgets)
        log.info("%d API keys from %s", len(keys.keys), args.keys)
    if args.plaintext:
        log.warning("serving plaintext: no transport security")
    if args.metrics_port is not None:
        host, port = metrics.serve(args.host, args.metrics_port)
        log.info("metrics on http://%s:%d/metrics", host, port)
    asyncio.run(serve(args, oracle, auth, store, metrics, tls))
    # Everything is written (the usage store closed, the calls finished): end now. Left to the
    # interpreter, gRPC's core took 3.4-4.4 s to tear down after "stopped", which an
    # orchestrator's stop timeout counts against the server.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


async def serve(args, oracle, auth, store, metrics, tls) -> None:
    """Serves until SIGTERM or SIGINT, then drains for `--grace` seconds; reloads the key
    file on SIGHUP and when it changes."""
    import torch

    from graytune.server.access.key_reload import KeyReloader
    from graytune.server.service.admission import Admission
    from graytune.server.service.app import OracleServer
    from graytune.server.service.request_stream import UploadPace
    from graytune.server.service.servicer import OracleServicer

    log = logging.getLogger("graytune.server")
    # Development mode has one caller: a per-key cap would be the server's cap.
    admission = Admission(args.max_concurrent_calls, None if args.dev else args.max_calls_per_key)
    pace = UploadPace(args.min_upload_kib_per_second * 1024, args.upload_grace)
    servicer = OracleServicer(oracle, auth, admission, store, metrics, pace)
    try:
        server = OracleServer(oracle, servicer, f"{args.host}:{args.port}", tls, args.reflection_streams)
    except OSError as e:
        fail(str(e))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reloader = None
    if auth.keys is not None:  # the key file is reloaded when it changes, and on SIGHUP
        reloader = KeyReloader(auth.keys).start()
        loop.add_signal_handler(signal.SIGHUP, reloader.request)
    await server.start()
    if store is not None:  # a call still running after --max-call-seconds has been ended, on any replica
        sweeper = asyncio.create_task(store.release_abandoned(2 * args.max_call_seconds + 60))
    backbone = oracle.backbone
    log.info(
        "backbone %s sha256=%s on %s, %d threads",
        backbone.name,
        backbone.sha256[:16],
        backbone.device,
        torch.get_num_threads(),
    )
    # Tests and scripts read this line to learn the port (with --port 0).
    print(
        f"graytune-server listening on {args.host}:{server.port} "
        f"(backbone {backbone.name}, weights sha256 {backbone.sha256})",
        flush=True,
    )
    await stop.wait()
    if args.drain_seconds > 0:
        stop.clear()
        await server.report_draining()
        log.info(
            "draining: NOT_SERVING while still serving for up to %g s (SIGTERM again: stop now)", args.drain_seconds
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.drain_seconds)
    log.info("stopping: finishing in-flight calls for up to %.0f s", args.grace)
    await server.stop(args.grace)
    if store is not None:
        sweeper.cancel()
        store.close()
    if reloader is not None:
        reloader.close()
    log.info("stopped")


if __name__ == "__main__":
    main()
