"""Autograd graphs held between a Forward call and its Backward call.

Memory is bounded two ways: a byte cap over all callers (oldest graphs are evicted to make
room) and a time-to-live (a caller that never comes back for its gradient, or is gone, frees
its graphs after `ttl_seconds`; a sweeper thread enforces it even when no call arrives).
A handle the store no longer holds gets `HandleExpired`, which the client answers by running
Forward again: the backbone is deterministic, so the recomputed gradient is the same.

A handle carries a MAC of its sequence number and its owner under this instance's secret, so
the store can tell a caller's own consumed handle (ABORTED: recompute) from one it was never
given, without remembering consumed handles; and a handle that is not the caller's gets one
answer whether it was never issued, is held for another caller, or was consumed by one.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Set

import torch

from graytune import error_details
from graytune.server.compute.errors import HandleExpired, InputError, OverLimit
from graytune.tensor_codec import shown

HANDLE = re.compile(r"(?P<instance>[0-9a-f]{8})\.(?P<seq>[0-9]{1,18})\.(?P<mac>[0-9a-f]{16})", re.ASCII)


@dataclass(eq=False)
class GraphGroup:
    """One graph computed for several callers' Forward calls merged into one batch."""
    output: torch.Tensor  # (sum of B, E), attached to the graph
    handles: List[str] = field(default_factory=list)  # one member per caller's call


@dataclass
class HeldGraph:
    inputs: Dict[str, torch.Tensor]  # leaves whose gradients Backward returns
    output: torch.Tensor  # (B, E) embeddings, still attached to the graph
    nbytes: int  # activations saved for backward, parameters excluded
    owner: str  # the caller that may take it
    expires: float = 0.0
    group: Optional[GraphGroup] = None  # set when the graph is a slice of a merged batch
    rows: Optional[slice] = None  # this member's rows of group.output


@contextlib.contextmanager
def saved_bytes_counter(exclude_storages: Set[int]) -> Iterator[list]:
    """Counts the bytes autograd saves for backward inside the block (parameters excluded)."""
    seen: Set[int] = set()
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in seen and key not in exclude_storages:
            seen.add(key)
            total[0] += storage.nbytes()
        # Detached: a saved output returned as itself would hold its own grad_fn, a reference
        # cycle autograd cannot free (every graph leaked). Backward needs only the values.
        return t.detach()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield total


class GraphStore:
    def __init__(self, max_bytes: int, ttl_seconds: float,
                 clock: Callable[[], float] = time.monotonic):
        self.max_bytes = max_bytes
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.instance = secrets.token_hex(4)  # handles from another instance predate a restart
        self._secret = secrets.token_bytes(32)  # signs (sequence number, owner) into each handle
        self._graphs: "OrderedDict[str, HeldGraph]" = OrderedDict()  # oldest first
        self._issued = 0
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._graphs)

    def put(self, graph: HeldGraph) -> str:
        if graph.nbytes > self.max_bytes:
            raise OverLimit(
                f"the graph of this batch needs {graph.nbytes} bytes, over the server's cap of "
                f"{self.max_bytes} bytes for graphs held for Backward; send a smaller batch",
                error_details.GRAPH_TOO_LARGE)
        with self._lock:
            self._drop_expired()
            while self._bytes + graph.nbytes > self.max_bytes:
                self._drop(next(iter(self._graphs)))
            self._issued += 1
            handle = f"{self.instance}.{self._issued}.{self._mac(self._issued, graph.owner)}"
            graph.expires = self.clock() + self.ttl_seconds
            self._graphs[handle] = graph
            self._bytes += graph.nbytes
            return handle

    def take(self, handle: str, owner: str) -> HeldGraph:
        """Removes and returns the owner's graph: one Backward per Forward."""
        with self._lock:
            self._drop_expired()
            graph = self._graphs.get(handle)
            if graph is not None and graph.owner == owner:
                self._drop(handle)
                return graph
            parts = HANDLE.fullmatch(handle)
            if parts is None:
                raise InputError(f"handle: malformed handle {shown(handle)}")
            if parts["instance"] != self.instance:
                raise HandleExpired(
                    "handle: issued by another server instance (the server restarted, or another "
                    "replica answered); run Forward again")
            seq = int(parts["seq"])
            if not (0 < seq <= self._issued and hmac.compare_digest(parts["mac"], self._mac(seq, owner))):
                raise InputError(f"handle: unknown handle {shown(handle)}")
            raise HandleExpired(
                f"handle: no longer held (used already, older than {self.ttl_seconds:g} s, or "
                f"evicted to stay under {self.max_bytes} bytes); run Forward again")

    def _mac(self, seq: int, owner: str) -> str:
        return hmac.new(self._secret, f"{seq}/{owner}".encode(), hashlib.sha256).hexdigest()[:16]

    def peek(self, handle: str, owner: str) -> Optional[HeldGraph]:
        """The graph, if held for this owner; never raises, removes nothing."""
        graph = self._graphs.get(handle)
        return graph if graph is not None and graph.owner == owner else None

    def held(self, handles: Iterable[str]) -> int:
        return sum(1 for h in handles if h in self._graphs)

    def sweep(self) -> None:
        with self._lock:
            self._drop_expired()

    def run_sweeper(self, stop: threading.Event, every_seconds: float = 1.0) -> threading.Thread:
        def loop():
            while not stop.wait(every_seconds):
                self.sweep()
        thread = threading.Thread(target=loop, name="graph-sweeper", daemon=True)
        thread.start()
        return thread

    def _drop_expired(self) -> None:
        now = self.clock()
        while self._graphs:
            handle, graph = next(iter(self._graphs.items()))
            if graph.expires > now:
                break  # insertion order is expiry order: every later graph expires later
            self._drop(handle)

    def _drop(self, handle: str) -> None:
        self._bytes -= self._graphs.pop(handle).nbytes
