"""A graph held for Backward is freed once its Backward is done, and a server evicting graphs
keeps its memory within the graph cap."""

from __future__ import annotations

import gc
import os
import weakref

import pytest
import torch

from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient
from graytune.server.compute.limits import Limits
from graytune.server.compute.oracle import GradientOracle
from graytune.v1 import oracle_pb2 as pb

from helpers import SERVER_ARGS


@pytest.mark.parametrize("merge_batches", [True, False])
@pytest.mark.parametrize("tower", ["image", "text"])
def test_backward_frees_the_graph(backbone, tower, merge_batches):
    oracle = GradientOracle(backbone, Limits(), merge_batches=merge_batches)
    try:
        if tower == "image":
            inputs = {"pixels": torch.randn(3, 3, *backbone.image_size)}
        else:
            inputs = {
                "token_ids": backbone.text.tokenize(["a", "b c", "d"], 0),
                "shift": torch.zeros(backbone.text.token_width),
            }
        request = oracle.prepare(tower, inputs, grad_inputs=())
        handle, embeddings = oracle.forward(request, "caller")
        held = oracle.store.peek(handle, "caller")
        output = weakref.ref(held.group.output if held.group is not None else held.output)
        leaves = [weakref.ref(t) for t in held.inputs.values()]
        del held, inputs, request  # the leaves may be the very tensors sent
        oracle.backward(handle, {"embeddings": torch.ones_like(embeddings)}, "caller")
        gc.collect()
        assert output() is None, "the graph's output outlived its Backward"
        assert all(leaf() is None for leaf in leaves), "an input leaf outlived its Backward"
    finally:
        oracle.device.close()


CAP_MB = 64
# The server's RSS may pass the graphs it holds by the allocator's slack and what is not a graph
# (gRPC buffers, logging): a quarter of the cap. Measured: 0.95-1.0x at 200 and 800 MB; without
# returning evicted graphs' pages to the OS it was 2.0x.
RSS_TOLERANCE = 1.25


def resident_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from /proc")
def test_server_memory_stays_within_the_graph_cap_under_forwards_without_backward():
    batch = 32
    with (
        LocalServer([*SERVER_ARGS, "--max-graph-mb", str(CAP_MB)]) as server,
        OracleClient(server.endpoint, timeout=60) as client,
    ):
        info = client.describe()
        pixels = torch.randn(batch, 3, info.image.height, info.image.width)
        handle, embeddings = client.forward(pb.IMAGE, {"pixels": pixels})
        client.backward(handle, torch.ones_like(embeddings))  # a whole step's transients, once
        before = resident_bytes(server.process.pid)
        # a Forward of 32 tiny images keeps 6.7 MiB of graph: CAP_MB calls fill the store 6 times
        for _ in range(CAP_MB):
            client.forward(pb.IMAGE, {"pixels": pixels})
        growth = resident_bytes(server.process.pid) - before
    assert growth <= RSS_TOLERANCE * (CAP_MB << 20), f"RSS grew {growth >> 20} MiB for a {CAP_MB} MiB cap"
