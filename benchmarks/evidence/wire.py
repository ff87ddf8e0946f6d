"""Bytes a process has put on and taken off the wire (TCP payload: HTTP/2 frames, gRPC headers,
protobuf and tensor bytes alike), from the kernel's per-socket counters as `ss` (iproute2)
reports them: what a step really costs on a network, not what the client library counted."""

from __future__ import annotations

import re
import shutil
import subprocess

COUNTERS = re.compile(r"\bbytes_acked:(\d+).*?\bbytes_received:(\d+)")


def tcp_bytes(pid: int, port: int) -> tuple[int, int] | None:
    """(sent and acknowledged, received) over process `pid`'s open TCP connections to `port`,
    or None where `ss` is missing or shows no such connection (it names a socket's process only
    to its owner or root)."""
    if shutil.which("ss") is None:
        return None
    listing = subprocess.run(
        ["ss", "-tinpH", "state", "established", f"( dport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    counters = [
        (int(m.group(1)), int(m.group(2)))
        for socket_line, info in zip(listing, listing[1:])
        if f"pid={pid}," in socket_line and (m := COUNTERS.search(info))
    ]  # -i: counters on the next line
    return (sum(c[0] for c in counters), sum(c[1] for c in counters)) if counters else None
