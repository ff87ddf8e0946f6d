"""Prometheus metrics, served on their own HTTP port (`--metrics-port`).

graytune_requests_total{method,tier,status}      calls, by outcome
graytune_samples_total{method,tier}              samples answered
graytune_received_bytes_total{method}            tensor bytes in
graytune_sent_bytes_total{method}                tensor bytes out
graytune_request_seconds{method}                 latency histogram, whole call
graytune_device_seconds{method}                  time on the device thread
graytune_graphs_held, graytune_graph_bytes_held  graphs waiting for Backward
graytune_graph_bytes_cap                         --max-graph-mb: when held reaches it, graphs are evicted
graytune_device_queue_pending                    device work queued, not yet started (all callers)
graytune_serving{service}                        1 while the health service says SERVING, else 0
graytune_device_memory_bytes                     CUDA memory allocated, or the process RSS on CPU
graytune_device_memory_peak_bytes                the most of it since the server started
graytune_merged_calls{method}                    calls per merged image batch (Forward/Backward)
graytune_key_requests_total{key,method,status}   calls per key id ("-": no valid key), by outcome
graytune_key_samples_total{key,method}           samples answered per key id
graytune_key_budget{key,kind}                    a key's budget ("samples", "gradient samples")
graytune_key_budget_remaining{key,kind}          what it has left, read from the usage store at each scrape
graytune_build_info{version,protocol}            1; the server's version
graytune_backbone_info{model,sha256,device}      1; the backbone served

Key labels are key ids from the owner's key file (never secrets), so their number is bounded by it.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from typing import cast

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from graytune.server.access.credentials import KeyFile
from graytune.server.access.usage import GRADIENTS, SAMPLES, Budgets, budget_of
from graytune.server.compute.device import DeviceQueue
from graytune.server.compute.graph_store import GraphStore

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def _device_memory(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.memory_allocated(device))
    with open("/proc/self/statm") as f:  # resident pages
        return float(int(f.read().split()[1]) * resource.getpagesize())


def _device_memory_peak(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)  # the peak RSS, in KiB on Linux


class ServerMetrics:
    def __init__(
        self,
        store: GraphStore,
        device: torch.device,
        queue: DeviceQueue,
        graph_cap_bytes: int,
        registry: CollectorRegistry | None = None,
    ):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "graytune_requests", "Calls by method, tier and status", ["method", "tier", "status"], registry=r
        )
        self.samples = Counter("graytune_samples", "Samples answered", ["method", "tier"], registry=r)
        self.received = Counter("graytune_received_bytes", "Tensor bytes received", ["method"], registry=r)
        self.sent = Counter("graytune_sent_bytes", "Tensor bytes sent", ["method"], registry=r)
        self.latency = Histogram(
            "graytune_request_seconds", "Whole-call latency", ["method"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.device_time = Histogram(
            "graytune_device_seconds", "Time on the device thread", ["method"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.merged = Histogram(
            "graytune_merged_calls",
            "Calls per merged image batch",
            ["method"],
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
            registry=r,
        )
        Gauge("graytune_graphs_held", "Graphs waiting for Backward", registry=r).set_function(lambda: len(store))
        Gauge("graytune_graph_bytes_held", "Activation bytes held for Backward", registry=r).set_function(
            lambda: store.bytes_held
        )
        Gauge(
            "graytune_device_memory_bytes", "CUDA memory allocated, or the process RSS on CPU", registry=r
        ).set_function(lambda: _device_memory(device))
        Gauge(
            "graytune_device_memory_peak_bytes", "The most CUDA memory allocated, or the peak RSS on CPU", registry=r
        ).set_function(lambda: _device_memory_peak(device))
        Gauge("graytune_graph_bytes_cap", "Graph bytes held at which graphs are evicted", registry=r).set(
            graph_cap_bytes
        )
        Gauge("graytune_device_queue_pending", "Device work queued, not started", registry=r).set_function(
            queue.pending
        )
        self.serving = Gauge("graytune_serving", "1 while the health service says SERVING", ["service"], registry=r)
        self.key_requests = Counter(
            "graytune_key_requests", "Calls by key id, method and status", ["key", "method", "status"], registry=r
        )
        self.key_samples = Counter("graytune_key_samples", "Samples answered by key id", ["key", "method"], registry=r)

    def describe_server(self, version: str, protocol: str, model: str, sha256: str, device: str) -> None:
        Info("graytune_build", "The server's version", registry=self.registry).info(
            {"version": version, "protocol": protocol}
        )
        Info("graytune_backbone", "The backbone served", registry=self.registry).info(
            {"model": model, "sha256": sha256, "device": device}
        )

    def watch_budgets(self, keys: KeyFile, budgets: Budgets) -> None:
        """graytune_key_budget_remaining of each key with a budget, at each scrape."""
        self.registry.register(_BudgetsLeft(keys, budgets))

    def observe(
        self,
        method: str,
        key: str,
        tier: str,
        status: str,
        samples: int,
        bytes_in: int,
        bytes_out: int,
        seconds: float,
        device_seconds: float,
    ) -> None:
        self.requests.labels(method, tier, status).inc()
        self.key_requests.labels(key, method, status).inc()
        if status == "OK":
            self.samples.labels(method, tier).inc(samples)
            self.key_samples.labels(key, method).inc(samples)
            self.device_time.labels(method).observe(device_seconds)
        self.received.labels(method).inc(bytes_in)
        self.sent.labels(method).inc(bytes_out)
        self.latency.labels(method).observe(seconds)

    def observe_merged_batch(self, method: str, calls: int) -> None:
        self.merged.labels(method).observe(calls)

    def serve(self, host: str, port: int) -> tuple[str, int]:
        server, _ = start_http_server(port, host, registry=self.registry)
        return cast(tuple[str, int], server.server_address[:2])  # an IP socket's: (host, port, ...)


class _BudgetsLeft(Collector):
    def __init__(self, keys: KeyFile, budgets: Budgets):
        self.keys, self.budgets = keys, budgets

    def collect(self) -> Iterator[GaugeMetricFamily]:
        total = GaugeMetricFamily("graytune_key_budget", "A key's budget in samples, by kind", labels=["key", "kind"])
        left = GaugeMetricFamily(
            "graytune_key_budget_remaining", "Samples a key's budget has left, by kind", labels=["key", "kind"]
        )
        for key in self.keys.keys.values():  # the file as last reloaded
            for kind in (SAMPLES, GRADIENTS):
                budget = budget_of(key, kind)
                if budget is not None:
                    total.add_metric([key.id, kind], budget)
                    left.add_metric([key.id, kind], max(0, budget - self.budgets.used(key.id, kind)))
        yield total
        yield left
