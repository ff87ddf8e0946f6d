"""Autograd graphs held between a Forward call and its Backward call.

What a graph costs: the bytes its autograd graph keeps alive (`graph_bytes`): the activations
saved for backward, the input leaves and the output, each storage once, parameters excluded.
Image Forwards of several callers merged into one batch share one graph (a `GraphGroup`), which
lives until the last of its handles is gone: the store counts a group's bytes until then and
charges them to the owners of the handles still holding it, in proportion to their rows. So
`bytes_held` is what the held graphs really keep, and the charges of all owners add up to it.

Eviction is per owner, so that no caller can spend another's room:
- an owner whose charge would pass `max_bytes_per_owner` evicts its own oldest graphs first;
- when the total would pass `max_bytes`, graphs are evicted from the owner charged the most
  (counting the graph being put), its oldest first.
A caller that sends Forwards without Backward thus evicts only its own graphs while anyone else
holds less, and an owner holding at most max_bytes / (owners holding graphs) is never evicted for
another's put. A handle pins its whole merged batch: once the batch's other handles are gone its
owner is charged all of it (at most one batch of max_batch samples per handle). A graph whose
share is over either cap is refused (OverLimit, GRAPH_TOO_LARGE, naming the cap). A graph the
store no longer holds (evicted, or older than `ttl_seconds`: a sweeper thread frees those even
when no call arrives) gets `HandleExpired`, which the client answers by running Forward again:
the backbone is deterministic, so the recomputed gradient is the same.

Evicted and expired graphs leave the process too (graph_memory.return_freed_memory_to_the_os): glibc
otherwise keeps their pages in the heap, and the server's RSS grew twice the bytes held.

A handle carries a MAC of its sequence number and its owner under this instance's secret, so
the store can tell a caller's own consumed handle (ABORTED: recompute) from one it was never
given, without remembering consumed handles; and a handle that is not the caller's gets one
answer whether it was never issued, is held for another caller, or was consumed by one.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

import torch

from graytune import error_details
from graytune.server.compute.errors import HandleExpired, InputError, OverLimit
from graytune.server.compute.graph_memory import return_freed_memory_to_the_os
from graytune.tensor_codec import shown

HANDLE = re.compile(r"(?P<instance>[0-9a-f]{8})\.(?P<seq>[0-9]{1,18})\.(?P<mac>[0-9a-f]{16})", re.ASCII)


@dataclass(eq=False)
class GraphGroup:
    """One graph computed for several callers' Forward calls merged into one batch."""

    output: torch.Tensor  # (sum of B, E), attached to the graph
    handles: list[str] = field(default_factory=list)  # one member per caller's call


@dataclass
class HeldGraph:
    inputs: dict[str, torch.Tensor]  # leaves whose gradients Backward returns
    output: torch.Tensor  # (B, E) embeddings, still attached to the graph
    nbytes: int  # what its autograd graph keeps alive (a member of a group: the whole group's)
    owner: str  # the caller that may take it
    expires: float = 0.0
    group: GraphGroup | None = None  # set when the graph is a slice of a merged batch
    rows: slice | None = None  # this member's rows of group.output

    @property
    def num_rows(self) -> int:
        return 1 if self.rows is None else self.rows.stop - self.rows.start


def split_by_rows(nbytes: int, graphs: Iterable[HeldGraph]) -> dict[str, int]:
    """nbytes over the graphs' owners, in proportion to their rows; the rounding to the first."""
    graphs = list(graphs)
    rows = sum(g.num_rows for g in graphs)
    charges: dict[str, int] = {}
    for graph in graphs:
        charges[graph.owner] = charges.get(graph.owner, 0) + nbytes * graph.num_rows // rows
    if charges:
        charges[graphs[0].owner] += nbytes - sum(charges.values())
    return charges


@dataclass(eq=False)
class _SharedBytes:
    """One autograd graph's bytes, charged to the owners of the handles still holding it."""

    nbytes: int
    holders: dict[str, HeldGraph] = field(default_factory=dict)  # handle -> graph
    charges: dict[str, int] = field(default_factory=dict)  # owner -> its part, by rows held


class GraphStore:
    def __init__(
        self,
        max_bytes: int,
        ttl_seconds: float,
        max_bytes_per_owner: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`max_bytes_per_owner`: None for `max_bytes`, where eviction from the owner charged
        the most is all that keeps owners apart."""
        self.max_bytes = max_bytes
        self.max_bytes_per_owner = max_bytes if max_bytes_per_owner is None else max_bytes_per_owner
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.instance = secrets.token_hex(4)  # handles from another instance predate a restart
        self._secret = secrets.token_bytes(32)  # signs (sequence number, owner) into each handle
        self._graphs: OrderedDict[str, HeldGraph] = OrderedDict()  # oldest first
        self._shared: dict[str, _SharedBytes] = {}  # handle -> the bytes of its graph
        self._by_owner: dict[str, OrderedDict[str, None]] = {}  # owner -> its handles, oldest first
        self._owner_bytes: dict[str, int] = {}  # owner -> bytes charged; they add up to _bytes
        self._issued = 0
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def bytes_held_by(self, owner: str) -> int:
        return self._owner_bytes.get(owner, 0)

    def __len__(self) -> int:
        return len(self._graphs)

    def put(self, graph: HeldGraph) -> str:
        """Holds a graph of its own; raises OverLimit if it is over a cap."""
        (result,) = self.put_all([graph])
        if isinstance(result, OverLimit):
            raise result
        return result

    def put_all(self, graphs: list[HeldGraph]) -> list[str | OverLimit]:
        """Holds the members of one merged batch (or one graph): a handle each, or OverLimit
        for a member whose share of the batch's bytes is over a cap (the others share it)."""
        nbytes, rows = graphs[0].nbytes, sum(g.num_rows for g in graphs)
        results = [self._over_limit(nbytes * g.num_rows // rows) for g in graphs]
        admitted = [g for g, refused in zip(graphs, results) if refused is None]
        if not admitted:
            return cast(list[str | OverLimit], results)  # each refused: an OverLimit
        with self._lock:
            before = self._bytes
            self._drop_expired()
            self._make_room(nbytes, split_by_rows(nbytes, admitted))
            freed = self._bytes < before
            shared = _SharedBytes(nbytes)
            handles = iter([self._hold(g, shared) for g in admitted])
            self._bytes += nbytes
            self._recharge(shared)
        if freed:
            return_freed_memory_to_the_os()
        return [next(handles) if refused is None else refused for refused in results]

    def _over_limit(self, share: int) -> OverLimit | None:
        for cap, whose in ((self.max_bytes, ""), (self.max_bytes_per_owner, " per key")):
            if share > cap:
                return OverLimit(
                    f"the graph of this batch needs {share} bytes, over the server's cap of {cap} "
                    f"bytes{whose} for graphs held for Backward; send a smaller batch",
                    error_details.GRAPH_TOO_LARGE,
                )
        return None

    def _make_room(self, nbytes: int, incoming: dict[str, int]) -> None:
        for owner, share in incoming.items():  # each owner within its cap, at its own expense
            while owner in self._by_owner and self._owner_bytes[owner] + share > self.max_bytes_per_owner:
                self._drop(next(iter(self._by_owner[owner])))
        while self._graphs and self._bytes + nbytes > self.max_bytes:  # from the largest holder,
            owner = max(
                self._by_owner, key=lambda o: (self._owner_bytes[o] + incoming.get(o, 0), incoming.get(o, 0))
            )  # on a tie the putter
            self._drop(next(iter(self._by_owner[owner])))

    def _hold(self, graph: HeldGraph, shared: _SharedBytes) -> str:
        self._issued += 1
        handle = f"{self.instance}.{self._issued}.{self._mac(self._issued, graph.owner)}"
        graph.expires = self.clock() + self.ttl_seconds
        self._graphs[handle] = graph
        self._shared[handle] = shared
        shared.holders[handle] = graph
        self._by_owner.setdefault(graph.owner, OrderedDict())[handle] = None
        return handle

    def _recharge(self, shared: _SharedBytes) -> None:
        """Charges the graph's bytes anew to the owners of its handles still held."""
        for owner, charge in shared.charges.items():
            self._owner_bytes[owner] -= charge
        shared.charges = split_by_rows(shared.nbytes, shared.holders.values())
        for owner, charge in shared.charges.items():
            self._owner_bytes[owner] = self._owner_bytes.get(owner, 0) + charge

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
                    "replica answered); run Forward again"
                )
            seq = int(parts["seq"])
            if not (0 < seq <= self._issued and hmac.compare_digest(parts["mac"], self._mac(seq, owner))):
                raise InputError(f"handle: unknown handle {shown(handle)}")
            raise HandleExpired(
                f"handle: no longer held (used already, older than {self.ttl_seconds:g} s, or "
                f"evicted to stay under {self.max_bytes} bytes, {self.max_bytes_per_owner} per key); "
                f"run Forward again"
            )

    def _mac(self, seq: int, owner: str) -> str:
        return hmac.new(self._secret, f"{seq}/{owner}".encode(), hashlib.sha256).hexdigest()[:16]

    def peek(self, handle: str, owner: str) -> HeldGraph | None:
        """The graph, if held for this owner; never raises, removes nothing."""
        graph = self._graphs.get(handle)
        return graph if graph is not None and graph.owner == owner else None

    def held(self, handles: Iterable[str]) -> int:
        return sum(1 for h in handles if h in self._graphs)

    def sweep(self) -> None:
        with self._lock:
            before = self._bytes
            self._drop_expired()
            freed = self._bytes < before
        if freed:
            return_freed_memory_to_the_os()

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
        """Lets go of a handle; its graph's bytes are freed with the last handle holding them."""
        owner = self._graphs.pop(handle).owner
        shared = self._shared.pop(handle)
        del shared.holders[handle]
        handles = self._by_owner[owner]
        del handles[handle]
        if not handles:
            del self._by_owner[owner]
        self._recharge(shared)
        if not shared.holders:
            self._bytes -= shared.nbytes
        if owner not in self._by_owner:
            del self._owner_bytes[owner]  # nothing left charged to it
