"""graytune-server audit: who pulled how many embeddings and gradients, from the server's log.

    graytune-server audit --log server.log                  # every key, one row each
    graytune-server audit --log server.log --key k1a2b3c4 --json
    docker compose logs graytune-server | graytune-server audit

Reads the one audit line the server writes per call (`call method=... caller=... status=...`,
in either `--log-format`, text or json) and skips every other line. Per key: calls (by
method), samples embedded (Embed and Forward), gradient samples (Backward), bytes in and out,
calls refused or failed (any status but OK, by status and the limit that refused them), and
when the key was first and last seen. Samples count whatever the call's status: a call that
failed after computing (cancelled mid-reply) may still have sent its answer. Calls refused for
a missing or unknown key have the key `-` (their line names the peer address).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

# Searched, not matched: a prefix (a container's name, a journal's) may stand before the line.
CALL_LINE = re.compile(
    r"(?:(?P<time>\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d+(?:[+-]\d\d:\d\d|Z)?) \S+ \S+: )?"
    r"\bcall (?P<fields>\w+=.*)"
)
# key=value; a quoted value is a Python repr (detail=...) and may hold spaces, quotes and
# `key=value` text of its own, which is consumed with it and never read as a field.
FIELD = re.compile(r"""(?<!\S)(\w+)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S*)""")
EMBEDDING_METHODS = ("Embed", "Forward")
GRADIENT_METHODS = ("Backward",)


def parse_line(line: str) -> dict[str, str] | None:
    """The fields of an audit line (and `time`, when the line has one), or None for other lines;
    a line of `--log-format json` gives its fields as keys."""
    record = _json_object(line)
    if record is not None:
        fields = {k: str(v) for k, v in record.items() if isinstance(v, str | int | float)}
        return fields if fields.get("message", "").startswith("call ") and _has_who_and_what(fields) else None
    match = CALL_LINE.search(line.rstrip("\n"))
    if match is None:
        return None
    fields = {}
    for m in FIELD.finditer(match.group("fields")):
        fields.setdefault(m.group(1), m.group(2))  # the server's fields come before any detail
    if not _has_who_and_what(fields):
        return None
    if match.group("time"):
        fields["time"] = match.group("time")
    return fields


def _has_who_and_what(fields: dict[str, str]) -> bool:
    return all(fields.get(name) for name in ("method", "caller", "status"))


def _json_object(line: str) -> dict[str, object] | None:
    """The JSON object a line holds after any prefix (a container's name), else None."""
    start = line.find("{")
    if start < 0:
        return None
    try:
        record = json.loads(line[start:])
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _count(fields: dict[str, str], name: str) -> int:
    value = fields.get(name, "")
    return int(value) if value.isdigit() else 0


@dataclass
class KeyUsage:
    key: str
    tier: str = "-"
    calls: int = 0
    calls_by_method: dict[str, int] = field(default_factory=dict)
    samples_embedded: int = 0
    gradient_samples: int = 0
    refusals: dict[str, int] = field(default_factory=dict)  # calls not answered OK, by status/reason
    bytes_in: int = 0
    bytes_out: int = 0
    first_seen: str | None = None  # asctime strings: their order is the time order
    last_seen: str | None = None

    def add(self, fields: dict[str, str]) -> None:
        method, status, samples = fields["method"], fields["status"], _count(fields, "samples")
        if fields.get("tier", "-") != "-":
            self.tier = fields["tier"]
        self.calls += 1
        self.calls_by_method[method] = self.calls_by_method.get(method, 0) + 1
        self.samples_embedded += samples if method in EMBEDDING_METHODS else 0
        self.gradient_samples += samples if method in GRADIENT_METHODS else 0
        if status != "OK":  # by status and, where a limit refused it, which (RESOURCE_EXHAUSTED/RATE_LIMITED)
            kind = f"{status}/{fields['reason']}" if fields.get("reason") else status
            self.refusals[kind] = self.refusals.get(kind, 0) + 1
        self.bytes_in += _count(fields, "bytes_in")
        self.bytes_out += _count(fields, "bytes_out")
        if "time" in fields:
            self.first_seen = min(filter(None, (self.first_seen, fields["time"])))
            self.last_seen = max(filter(None, (self.last_seen, fields["time"])))


def summarise(lines: Iterable[str]) -> dict[str, KeyUsage]:
    usage: dict[str, KeyUsage] = {}
    for fields in filter(None, map(parse_line, lines)):
        caller = fields["caller"]
        usage.setdefault(caller, KeyUsage(caller)).add(fields)
    return usage


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _pairs(counts: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "-"


def table(rows: list[KeyUsage]) -> Iterator[str]:
    header = (
        "key",
        "tier",
        "calls",
        "embedded",
        "gradients",
        "in",
        "out",
        "first seen",
        "last seen",
        "calls by method",
        "refused",
    )
    cells = [header] + [
        (
            u.key,
            u.tier,
            str(u.calls),
            str(u.samples_embedded),
            str(u.gradient_samples),
            _size(u.bytes_in),
            _size(u.bytes_out),
            u.first_seen or "-",
            u.last_seen or "-",
            _pairs(u.calls_by_method),
            _pairs(u.refusals),
        )
        for u in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        yield "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="graytune-server audit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--log", default="-", help="the server's log file; - (the default) reads stdin")
    p.add_argument("--key", help="one key id (as `graytune-server keys list` shows it)")
    p.add_argument("--json", action="store_true", help="JSON: one object with --key, else a list")
    args = p.parse_args(argv)
    if args.log == "-" and sys.stdin.isatty():
        p.error("give --log FILE, or pipe the log in")
    # Logs may hold bytes that are not UTF-8 (a torn line, another program's output).
    try:
        source = (
            io.TextIOWrapper(sys.stdin.buffer, errors="replace")
            if args.log == "-"
            else open(args.log, errors="replace")
        )
    except OSError as e:
        p.error(f"{args.log}: {e.strerror}")
    with source:
        usage = summarise(source)
    if args.key is not None:
        rows = [usage.get(args.key, KeyUsage(args.key))]  # no calls is an answer too
    else:  # the heaviest gradient users first: they are the ones who could distil the model
        rows = sorted(usage.values(), key=lambda u: (-u.gradient_samples, -u.samples_embedded, u.key))
    if args.json:
        result = [dataclasses.asdict(u) for u in rows]
        print(json.dumps(result[0] if args.key is not None else result, indent=2))
    else:
        print("\n".join(table(rows)))
