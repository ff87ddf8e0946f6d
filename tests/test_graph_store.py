"""GraphStore: one take per handle, TTL and byte cap, ownership; saved_bytes_counter."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from graytune.server.compute.errors import HandleExpired, InputError, OverLimit
from graytune.server.compute.graph_store import GraphStore, HeldGraph, saved_bytes_counter

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
    return HeldGraph(inputs={"pixels": torch.zeros(1)}, output=torch.zeros(1, 2), nbytes=nbytes,
                     owner=owner)


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


# --- saved_bytes_counter -------------------------------------------------------------------

def small_graph(exclude):
    x = torch.randn(8, 16).requires_grad_()
    w = torch.nn.Parameter(torch.randn(16, 4))
    with saved_bytes_counter({w.untyped_storage().data_ptr()} if exclude else set()) as total:
        loss = (x @ w).tanh().sum()
    return total[0], loss, w


def test_saved_bytes_counter_counts_saved_activations():
    counted, loss, _ = small_graph(exclude=True)
    assert counted > 0
    assert loss.requires_grad


def test_saved_bytes_counter_excludes_given_storages():
    without_exclusion, _, w = small_graph(exclude=False)
    with_exclusion, _, _ = small_graph(exclude=True)
    assert without_exclusion - with_exclusion == w.untyped_storage().nbytes() == 16 * 4 * 4


def test_tensor_saved_twice_is_counted_once():
    x = torch.randn(32).requires_grad_()
    with saved_bytes_counter(set()) as total:
        (x * x).sum()  # mul saves x as both operands
    assert total[0] == x.untyped_storage().nbytes() == 32 * 4


def test_sequence_number_zero_was_never_issued(store):
    store.put(graph(10))
    with pytest.raises(InputError, match="unknown"):
        store.take(f"{store.instance}.0.0123456789abcdef", "alice")
