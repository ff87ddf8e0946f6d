"""Across processes: one key's Forwards without Backward evict only its own graphs, never another's."""

from __future__ import annotations

import math

import grpc
import pytest
import torch

from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient, OracleError
from graytune.server.compute.limits import Limits
from graytune.server.compute.oracle import GradientOracle
from graytune.v1 import oracle_pb2 as pb

from helpers import KEYED_ARGS, create_key

CAP_MB = 2
HOG_BATCH = 4


def graph_bytes_of(backbone, batch: int) -> int:
    """What the server's store counts for one image Forward of `batch` images (same code, in-process)."""
    oracle = GradientOracle(backbone, Limits())
    try:
        oracle.forward(oracle.prepare("image", {"pixels": torch.randn(batch, 3, *backbone.image_size)}), "x")
        return oracle.store.bytes_held
    finally:
        oracle.device.close()


@pytest.fixture(scope="module")
def two_keys(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "keys.json"
    secrets = [create_key(key_file, "--tier", "graybox") for _ in range(2)]
    with LocalServer([*KEYED_ARGS, "--keys", str(key_file), "--max-graph-mb", str(CAP_MB)]) as server:
        yield server, secrets


def test_a_hogs_forwards_evict_its_own_graphs_not_another_keys(two_keys, backbone):
    server, (victim_key, hog_key) = two_keys
    cap = CAP_MB << 20
    hog_graph = graph_bytes_of(backbone, HOG_BATCH)
    calls = math.ceil(3 * cap / hog_graph)  # three times what the store holds
    pixels = lambda n: torch.randn(n, 3, *backbone.image_size)
    with (
        OracleClient(server.endpoint, api_key=victim_key, retries=0, timeout=60) as victim,
        OracleClient(server.endpoint, api_key=hog_key, retries=0, timeout=60) as hog,
    ):
        handle, embeddings = victim.forward(pb.IMAGE, {"pixels": pixels(1)})
        hog_handles = [hog.forward(pb.IMAGE, {"pixels": pixels(HOG_BATCH)}) for _ in range(calls)]
        # the victim's graph, the oldest of all, is still there: no ABORTED, no recompute
        assert victim.backward(handle, torch.ones_like(embeddings))["pixels"].shape == (1, 3, *backbone.image_size)
        with pytest.raises(OracleError) as evicted:
            hog.backward(hog_handles[0][0], torch.ones_like(hog_handles[0][1]))
        assert evicted.value.code == grpc.StatusCode.ABORTED
        newest, out = hog_handles[-1]
        assert hog.backward(newest, torch.ones_like(out))["pixels"].shape[0] == HOG_BATCH
