"""The demo owner model is reproducible: a second build gives bit-identical weights, so
adapters trained against one build are accepted by a server that built it again; processes that
start together on one cache build it once."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient
from graytune.server import pretraining
from graytune.server.compute import backbone  # noqa: F401  (registers graytune-tiny with OpenCLIP)

from helpers import SERVER_ARGS, wait_until


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


def flock_waiters(path) -> int:
    """How many flock requests wait on `path` (the kernel's /proc/locks marks them '->')."""
    inode = path.stat().st_ino
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if re.search(rf"->\s+FLOCK\s.*:{inode}\s", line))


def test_two_builds_of_one_model_at_once_build_it_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAYTUNE_CACHE", str(tmp_path))
    entered, release, builds = threading.Event(), threading.Event(), []

    def builder(model, tokenizer):  # stands for the minute-long recipe: holds until released
        builds.append(model)
        entered.set()
        assert release.wait(60)

    monkeypatch.setitem(pretraining.BUILDERS, ("graytune-tiny", "held"), builder)
    paths = []
    build = lambda: paths.append(pretraining.builtin_weights("graytune-tiny", "held"))
    first, second = threading.Thread(target=build), threading.Thread(target=build)
    first.start()
    assert entered.wait(60)
    second.start()
    lock = next(tmp_path.glob(".*.lock"))
    wait_until(lambda: flock_waiters(lock) == 1, what="the second build waits for the first")
    release.set()
    first.join(60)
    second.join(60)
    assert len(builds) == 1 and len(paths) == 2 and paths[0] == paths[1] and paths[0].is_file()
