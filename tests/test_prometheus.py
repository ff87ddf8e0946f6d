"""The owner's Prometheus metrics, scraped over HTTP from a real server."""

from __future__ import annotations

import pytest
import torch

from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.v1 import oracle_pb2 as pb

from helpers import SERVER_ARGS, free_port, scrape


def test_metrics_count_calls_samples_bytes_and_held_graphs():
    port = free_port()
    with LocalServer([*SERVER_ARGS, "--metrics-port", str(port)]) as server:
        with OracleClient(server.endpoint, retries=0) as oracle:
            oracle.embed_images(torch.randn(3, 3, 32, 32))
            with pytest.raises(OracleError):
                oracle.embed_images(torch.randn(3, 3, 31, 32))
            handle, embeddings = oracle.forward(pb.IMAGE, {"pixels": torch.randn(2, 3, 32, 32)})
            oracle.backward(handle, torch.ones_like(embeddings))
            oracle.forward(pb.IMAGE, {"pixels": torch.randn(2, 3, 32, 32)})  # no Backward: held
        m = scrape(port)
    ok = frozenset({"method": "Embed", "tier": "graybox", "status": "OK"}.items())
    bad = frozenset({"method": "Embed", "tier": "graybox", "status": "INVALID_ARGUMENT"}.items())
    assert m[("graytune_requests_total", ok)] == 1
    assert m[("graytune_requests_total", bad)] == 1
    assert m[("graytune_samples_total", frozenset({"method": "Embed", "tier": "graybox"}.items()))] == 3
    embed = frozenset({"method": "Embed"}.items())
    assert m[("graytune_received_bytes_total", embed)] == 2 * 3 * 3 * 32 * 32 * 4 - 3 * 3 * 32 * 4
    assert m[("graytune_sent_bytes_total", embed)] == 3 * 128 * 4
    assert m[("graytune_request_seconds_count", embed)] == 2
    assert m[("graytune_graphs_held", frozenset())] == 1
    assert m[("graytune_graph_bytes_held", frozenset())] > 0
    assert m[("graytune_device_memory_bytes", frozenset())] > 0
    for method, batches in (("Forward", 2), ("Backward", 1)):  # one call per batch, alone here
        labels = frozenset({"method": method}.items())
        assert m[("graytune_merged_calls_count", labels)] == m[("graytune_merged_calls_sum", labels)] == batches
