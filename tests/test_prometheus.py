"""The owner's Prometheus metrics, scraped over HTTP from a real server."""

from __future__ import annotations

import pytest
import torch

import graytune
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.contract import PROTOCOL_VERSION
from graytune.server.compute.limits import Limits
from graytune.v1 import oracle_pb2 as pb

from helpers import KEYED_ARGS, SERVER_ARGS, create_key, free_port, scrape


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
    assert m[("graytune_device_memory_peak_bytes", frozenset())] > 0
    for method, batches in (("Forward", 2), ("Backward", 1)):  # one call per batch, alone here
        labels = frozenset({"method": method}.items())
        assert m[("graytune_merged_calls_count", labels)] == m[("graytune_merged_calls_sum", labels)] == batches


def test_metrics_per_key_budgets_left_and_what_is_served(tmp_path):
    key_file, port = tmp_path / "keys.json", free_port()
    budgeted = create_key(key_file, "--tier", "graybox", "--budget", "10", "--gradient-budget", "4")
    other = create_key(key_file, "--tier", "blackbox")  # no budget: no budget gauge
    with LocalServer([*KEYED_ARGS, "--keys", str(key_file), "--metrics-port", str(port)]) as server:
        with OracleClient(server.endpoint, api_key=budgeted, retries=0) as oracle:
            sha256 = oracle.describe().backbone.sha256
            oracle.embed_images(torch.randn(3, 3, 32, 32))
            handle, embeddings = oracle.forward(pb.IMAGE, {"pixels": torch.randn(2, 3, 32, 32)})
            oracle.backward(handle, torch.ones_like(embeddings))
        with OracleClient(server.endpoint, api_key=other, retries=0) as oracle:
            oracle.embed_texts(["a cat"])
            with pytest.raises(OracleError):  # PERMISSION_DENIED: no gradients for blackbox
                oracle.forward(pb.IMAGE, {"pixels": torch.randn(1, 3, 32, 32)})
        m = scrape(port)
    ids = {name: secret.split("_")[1] for name, secret in (("budgeted", budgeted), ("other", other))}
    labels = lambda **kv: frozenset(kv.items())
    key = ids["budgeted"]
    assert m[("graytune_key_requests_total", labels(key=key, method="Embed", status="OK"))] == 1
    assert m[("graytune_key_samples_total", labels(key=key, method="Embed"))] == 3
    assert m[("graytune_key_samples_total", labels(key=key, method="Backward"))] == 2
    denied = labels(key=ids["other"], method="Forward", status="PERMISSION_DENIED")
    assert m[("graytune_key_requests_total", denied)] == 1
    samples = lambda name: [(dict(found), value) for (sample, found), value in m.items() if sample == name]
    left = samples("graytune_key_budget_remaining")  # the other key has no budget, so no gauge
    assert {found["kind"]: value for found, value in left} == {"samples": 10 - 3 - 2, "gradient samples": 4 - 2}
    assert {found["key"] for found, _ in left} == {key}
    assert {found["kind"]: value for found, value in samples("graytune_key_budget")} == {
        "samples": 10,
        "gradient samples": 4,
    }
    assert samples("graytune_build_info") == [({"version": graytune.__version__, "protocol": PROTOCOL_VERSION}, 1)]
    [(backbone, _)] = samples("graytune_backbone_info")
    # What the alert rules watch (deploy/monitoring/rules.yml): health, the device queue, the graph cap.
    serving = {found["service"]: value for found, value in samples("graytune_serving")}
    assert serving == {"server": 1, "graytune.v1.GradientOracle": 1, "graytune.UsageStore": 1}
    assert samples("graytune_device_queue_pending") == [({}, 0)]
    assert samples("graytune_graph_bytes_cap") == [({}, Limits().max_graph_bytes)]
    assert backbone == {"model": "graytune-tiny", "sha256": sha256, "device": "cpu"}
