"""Bytes a process has put on and taken off the wire (TCP payload: HTTP/2 frames, gRPC headers,
protobuf and tensor bytes alike), from the kernel's per-socket counters as `ss` (iproute2)
reports them: what a step really costs on a network, not what the client library counted."""
from __future__ import annotations

import re
import shutil
import subprocess
from typing import Optional, Tuple

COUNTERS = re.compile(r"\bbytes_acked:(\d+).*?\bbytes_received:(\d+)")


def tcp_bytes(pid: int, port: int) -> Optional[Tuple[int, int]]:
    """(sent and acknowledged, received) over process `pid`'s open TCP connections to `port`,
    or None where `ss` is missing."""
    if shutil.which("ss") is None:
        return None
    listing = subprocess.run(["ss", "-tinpH", "state", "established", f"( dport = :{port} )"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    sent = received = 0
    for socket_line, info in zip(listing, listing[1:]):  # -i puts each socket's counters on the next line
        if f"pid={pid}," in socket_line and (m := COUNTERS.search(info)):
            sent, received = sent + int(m.group(1)), received + int(m.group(2))
    return sent, received
