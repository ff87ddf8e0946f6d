"""The demo owner model is reproducible: a second build gives bit-identical weights, so
adapters trained against one build are accepted by a server that built it again."""

from __future__ import annotations

from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient

from conftest import SERVER_ARGS


def served_sha256(server) -> str:
    with OracleClient(server.endpoint) as oracle:
        return oracle.describe().backbone.sha256


def test_a_second_build_in_an_empty_cache_with_other_threads_has_the_same_hash(pretrained_server, tmp_path):
    first = served_sha256(pretrained_server)  # built with --threads 1 in the session's cache
    args = [a for a in SERVER_ARGS if a not in ("--threads", "1")]
    with LocalServer(
        [*args, "--threads", "2", "--pretrained", "mnist"], env={"GRAYTUNE_CACHE": str(tmp_path)}
    ) as server:
        second = served_sha256(server)
        printed = [line for line in server.output if "listening on" in line]
    assert list(tmp_path.glob("graytune-tiny-mnist-*.safetensors")), "built again, not read from a cache"
    assert second == first
    assert printed and f"weights sha256 {second}" in printed[0], "the hash is printed at start"
