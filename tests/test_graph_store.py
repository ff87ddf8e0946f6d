"""GraphStore: one take per handle, TTL and byte caps, ownership, fair eviction; graph_bytes."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from graytune import error_details
from graytune.server.compute.errors import HandleExpired, InputError, OverLimit
from graytune.server.compute.graph_memory import graph_bytes
from graytune.server.compute.graph_store import GraphGroup, GraphStore, HeldGraph

TTL = 60.0


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def store(clock):
    return GraphStore(max_bytes=100, ttl_seconds=TTL, clock=clock)


def graph(nbytes, owner="alice"):
    return HeldGraph(inputs={"pixels": torch.zeros(1)}, output=torch.zeros(1, 2), nbytes=nbytes, owner=owner)


def sequence_number(handle: str) -> int:
    return int(handle.split(".")[1])


# --- put / take ----------------------------------------------------------------------------


def test_take_returns_the_graph_put_and_frees_its_bytes(store):
    g1, g2 = graph(10), graph(20)
    h1, h2 = store.put(g1), store.put(g2)
    assert (store.bytes_held, len(store)) == (30, 2)
    assert store.take(h1, "alice") is g1
    assert (store.bytes_held, len(store)) == (20, 1)
    assert store.take(h2, "alice") is g2
    assert (store.bytes_held, len(store)) == (0, 0)


def test_handle_can_be_taken_only_once(store):
    h = store.put(graph(10))
    store.take(h, "alice")
    with pytest.raises(HandleExpired, match="run Forward again"):
        store.take(h, "alice")


def test_graph_is_held_until_its_ttl(store, clock):
    h = store.put(graph(10))
    clock.now += TTL - 0.001
    assert store.take(h, "alice").nbytes == 10


def test_graph_older_than_ttl_is_expired(store, clock):
    h = store.put(graph(10))
    clock.now += TTL
    with pytest.raises(HandleExpired):
        store.take(h, "alice")
    assert store.bytes_held == 0


def test_sweep_frees_expired_graphs_without_a_take(store, clock):
    store.put(graph(10))
    clock.now += TTL / 2
    store.put(graph(20))
    store.sweep()
    assert (store.bytes_held, len(store)) == (30, 2)
    clock.now += TTL / 2
    store.sweep()
    assert (store.bytes_held, len(store)) == (20, 1)
    clock.now += TTL / 2
    store.sweep()
    assert (store.bytes_held, len(store)) == (0, 0)


def test_byte_cap_evicts_oldest_first(store):
    old, middle = store.put(graph(40)), store.put(graph(40))
    new = store.put(graph(40))
    assert (store.bytes_held, len(store)) == (80, 2)
    with pytest.raises(HandleExpired):
        store.take(old, "alice")
    assert store.take(middle, "alice").nbytes == 40
    assert store.take(new, "alice").nbytes == 40


def test_graph_exactly_at_the_cap_fits(store):
    store.put(graph(30))
    h = store.put(graph(100))
    assert (store.bytes_held, len(store)) == (100, 1)
    assert store.take(h, "alice").nbytes == 100


def test_graph_larger_than_the_cap_is_refused(store):
    kept = store.put(graph(10))
    with pytest.raises(OverLimit) as info:
        store.put(graph(101))
    assert "101" in str(info.value) and "100" in str(info.value)
    assert store.take(kept, "alice").nbytes == 10  # nothing evicted for a graph that never fits


# --- bad handles ---------------------------------------------------------------------------


@pytest.mark.parametrize("handle", ["", "abc", "a.1", "a.b.c", "a.-1.c", "a.1.b.c"])
def test_malformed_handle(store, handle):
    store.put(graph(10))
    with pytest.raises(InputError, match="malformed"):
        store.take(handle, "alice")


def test_handle_from_another_instance_mentions_a_restart(store, clock):
    before_restart = GraphStore(max_bytes=100, ttl_seconds=TTL, clock=clock)
    h = before_restart.put(graph(10))
    store.put(graph(10))
    with pytest.raises(HandleExpired, match="restart"):
        store.take(h, "alice")


def test_sequence_number_never_issued_is_unknown(store):
    h = store.put(graph(10))
    forged = f"{store.instance}.{sequence_number(h) + 1}.0123456789abcdef"
    with pytest.raises(InputError, match="unknown"):
        store.take(forged, "alice")
    assert store.take(h, "alice").nbytes == 10


def test_non_ascii_digit_sequence_number_is_an_input_error(store):
    store.put(graph(10))
    with pytest.raises(InputError):
        store.take(f"{store.instance}.\u00b2.0123456789abcdef", "alice")


def test_another_owner_cannot_take_the_graph(store):
    g = graph(10, owner="alice")
    h = store.put(g)
    with pytest.raises(InputError, match="unknown"):
        store.take(h, "mallory")
    assert store.take(h, "alice") is g


def test_another_owners_handle_is_unknown_whether_held_or_consumed(store):
    """A caller cannot learn whether another caller's handle was ever issued."""
    h = store.put(graph(10, owner="alice"))
    with pytest.raises(InputError, match="unknown") as held:
        store.take(h, "mallory")
    store.take(h, "alice")
    with pytest.raises(InputError, match="unknown") as consumed:
        store.take(h, "mallory")
    with pytest.raises(HandleExpired, match="no longer held"):  # alice's own: recompute
        store.take(h, "alice")
    assert str(held.value) == str(consumed.value)


def test_sweeper_thread_frees_expired_graphs():
    store = GraphStore(max_bytes=100, ttl_seconds=0.05)
    store.put(graph(10))
    stop = threading.Event()
    thread = store.run_sweeper(stop, every_seconds=0.01)
    try:
        deadline = time.monotonic() + 5
        while len(store) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert (store.bytes_held, len(store)) == (0, 0)
    finally:
        stop.set()
        thread.join(timeout=2)
    assert not thread.is_alive()


# --- graph_bytes -------------------------------------------------------------------


def small_graph(exclude):
    x = torch.randn(8, 16).requires_grad_()
    w = torch.nn.Parameter(torch.randn(16, 4))
    with graph_bytes({w.untyped_storage().data_ptr()} if exclude else set()) as total:
        loss = (x @ w).tanh().sum()
    return total.nbytes, loss, w


def test_graph_bytes_counts_saved_activations():
    counted, loss, _ = small_graph(exclude=True)
    assert counted > 0
    assert loss.requires_grad


def test_graph_bytes_excludes_given_storages():
    without_exclusion, _, w = small_graph(exclude=False)
    with_exclusion, _, _ = small_graph(exclude=True)
    assert without_exclusion - with_exclusion == w.untyped_storage().nbytes() == 16 * 4 * 4


def test_tensor_saved_twice_is_counted_once():
    x = torch.randn(32).requires_grad_()
    with graph_bytes(set()) as total:
        (x * x).sum()  # mul saves x as both operands
    assert total.nbytes == x.untyped_storage().nbytes() == 32 * 4


def test_sequence_number_zero_was_never_issued(store):
    store.put(graph(10))
    with pytest.raises(InputError, match="unknown"):
        store.take(f"{store.instance}.0.0123456789abcdef", "alice")


# --- fair eviction between owners -----------------------------------------------------------


def held(store, handle, owner) -> bool:
    return store.peek(handle, owner) is not None


def members(nbytes, *owners_and_rows):
    """The members of one merged batch whose graph keeps nbytes: (owner, rows) each."""
    group, start, graphs = GraphGroup(torch.zeros(1, 2)), 0, []
    for owner, rows in owners_and_rows:
        graphs.append(
            HeldGraph(
                {"pixels": torch.zeros(1)},
                torch.zeros(1, 2),
                nbytes,
                owner,
                group=group,
                rows=slice(start, start + rows),
            )
        )
        start += rows
    return graphs


def test_a_hog_evicts_only_its_own_graphs(store):
    victim = store.put(graph(30, owner="alice"))
    hog = [store.put(graph(20, owner="mallory")) for _ in range(10)]
    assert held(store, victim, "alice")
    assert [held(store, h, "mallory") for h in hog] == [False] * 7 + [True] * 3  # its oldest went
    assert (store.bytes_held_by("alice"), store.bytes_held_by("mallory"), store.bytes_held) == (30, 60, 90)


def test_owners_at_their_share_keep_their_graphs(clock):
    store = GraphStore(max_bytes=100, ttl_seconds=TTL, max_bytes_per_owner=50, clock=clock)
    alice = [store.put(graph(25, owner="alice")) for _ in range(2)]
    bob = [store.put(graph(25, owner="bob")) for _ in range(2)]
    newest = store.put(graph(25, owner="bob"))  # over bob's share: bob's own oldest goes
    assert all(held(store, h, "alice") for h in alice)
    assert [held(store, h, "bob") for h in [*bob, newest]] == [False, True, True]
    assert (store.bytes_held_by("alice"), store.bytes_held_by("bob")) == (50, 50)


def test_the_owner_holding_the_most_is_evicted_first(store):
    small = store.put(graph(20, owner="alice"))
    large = [store.put(graph(30, owner="bob")) for _ in range(2)]
    store.put(graph(30, owner="carol"))  # 110 > 100: bob holds the most
    assert held(store, small, "alice")
    assert [held(store, h, "bob") for h in large] == [False, True]


def test_a_graph_over_the_per_owner_cap_is_refused_naming_it(clock):
    store = GraphStore(max_bytes=100, ttl_seconds=TTL, max_bytes_per_owner=40, clock=clock)
    kept = store.put(graph(30))
    with pytest.raises(OverLimit) as info:
        store.put(graph(41))
    assert info.value.reason == error_details.GRAPH_TOO_LARGE
    assert "41 bytes" in str(info.value) and "40 bytes per key" in str(info.value)
    assert held(store, kept, "alice")


def test_a_groups_bytes_are_freed_only_with_its_last_member(store):
    a, b = store.put_all(members(60, ("alice", 1), ("bob", 2)))
    assert (store.bytes_held, store.bytes_held_by("alice"), store.bytes_held_by("bob")) == (60, 20, 40)
    store.take(b, "bob")  # the graph stays for alice: all of it is charged to her
    assert (store.bytes_held, store.bytes_held_by("alice"), store.bytes_held_by("bob")) == (60, 60, 0)
    store.take(a, "alice")
    assert (store.bytes_held, len(store)) == (0, 0)


def test_evicting_a_group_member_frees_nothing_until_the_group_is_gone(store):
    """A hog's member of a merged batch is evicted, but the graph lives on for alice: room is
    made from whole graphs freed, so the store never holds more than its cap."""
    alice, hog_member = store.put_all(members(60, ("alice", 1), ("mallory", 3)))
    hog = store.put(graph(30, owner="mallory"))
    store.put(graph(30, owner="mallory"))  # 120 > 100: mallory's member goes, freeing nothing
    assert not held(store, hog_member, "mallory") and not held(store, hog, "mallory")
    assert held(store, alice, "alice")
    assert (store.bytes_held, store.bytes_held_by("alice"), store.bytes_held_by("mallory")) == (90, 60, 30)


def test_a_group_member_over_its_cap_is_refused_and_the_others_share_the_graph(clock):
    store = GraphStore(max_bytes=100, ttl_seconds=TTL, max_bytes_per_owner=40, clock=clock)
    a, refused = store.put_all(members(90, ("alice", 1), ("bob", 2)))  # bob's share: 60 > 40
    assert isinstance(refused, OverLimit) and "60 bytes" in str(refused)
    assert (store.bytes_held, store.bytes_held_by("alice"), len(store)) == (90, 90, 1)
    assert store.take(a, "alice").rows == slice(0, 1)


@pytest.mark.parametrize("seed", range(5))
def test_charges_add_up_to_the_bytes_held(store, clock, seed):
    """Whatever the puts, takes and expiries: the owners' charges sum to the total, under the cap."""
    g = torch.Generator().manual_seed(seed)
    handles = []
    for _ in range(200):
        owners = [
            ("alice", "bob", "carol")[i]
            for i in torch.randint(3, (int(torch.randint(1, 4, (1,), generator=g)),), generator=g)
        ]
        batch = members(int(torch.randint(1, 60, (1,), generator=g)), *[(o, 1 + i) for i, o in enumerate(owners)])
        handles += [(h, m.owner) for h, m in zip(store.put_all(batch), batch) if isinstance(h, str)]
        if torch.rand(1, generator=g) < 0.3 and handles:
            h, owner = handles.pop(int(torch.randint(len(handles), (1,), generator=g)))
            if held(store, h, owner):
                store.take(h, owner)
        clock.now += float(torch.rand(1, generator=g)) * TTL / 10
        assert store.bytes_held <= store.max_bytes
        assert sum(store.bytes_held_by(o) for o in ("alice", "bob", "carol")) == store.bytes_held
