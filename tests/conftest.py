"""Shared fixtures: real server processes on free ports, the same backbone in-process, data."""

from __future__ import annotations

import os

from graytune.openmp import wait_passively

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach a hub
os.environ.pop("GRAYTUNE_API_KEY", None)  # a developer's own key must not reach the tests' servers
wait_passively()  # the test process mostly waits on servers

import pytest  # noqa: E402

from graytune.client.transport.local_server import LocalServer  # noqa: E402
from graytune.client.transport.oracle_client import OracleClient  # noqa: E402

from helpers import SERVER_ARGS  # noqa: E402
from postgres_cluster import PostgresCluster  # noqa: E402

# The files that take longest (seconds on 2 loaded cores, `scripts/test.sh --durations=0`,
# 2026-12-07), run first: pytest-xdist hands whole files to its workers in collection order
# (scripts/test.sh keeps it with --no-loadscope-reorder), so a long file started last would
# leave the other worker idle until it ends. The rest follow in their usual order.
LONGEST_FIRST = (
    "test_benchmarks.py",  # 682
    "test_evidence.py",  # 416
    "test_faults.py",  # 274
    "test_classify.py",  # 258, the MNIST backbone's first build among them
    "test_craft.py",  # 237
    "test_container_env.py",  # 235
    "test_run_dir.py",  # 211
    "test_training.py",  # 207
    "test_fleet_usage.py",  # 173
    "test_pretrained.py",  # 136
    "test_tls.py",  # 135
    "test_credentials.py",  # 130
    "test_readme.py",  # 111
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """Where built-in pretrained weights are built: once per test run, the workers of
    pytest-xdist sharing one folder (the server's build lock makes the others wait)."""
    root = tmp_path_factory.getbasetemp()
    path = (root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root) / "graytune-cache"
    path.mkdir(exist_ok=True)
    os.environ["GRAYTUNE_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def server():
    """The default server: graytune-tiny with seeded random weights, tier graybox."""
    with LocalServer(SERVER_ARGS) as s:
        yield s


@pytest.fixture(scope="session")
def pretrained_server(cache_dir):
    """graytune-tiny pretrained on MNIST: a backbone that knows digits, for training tests."""
    with LocalServer([*SERVER_ARGS, "--pretrained", "mnist"], env={"GRAYTUNE_CACHE": str(cache_dir)}) as s:
        yield s


@pytest.fixture
def oracle(server):
    with OracleClient(server.endpoint, timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def backbone():
    """The default server's backbone, built in this process for reference gradients."""
    from graytune.server.compute.backbone import BackboneSource, load_backbone

    return load_backbone(BackboneSource())


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """scikit-learn's digits as an image-caption data set: {'train': csv, 'val': csv}."""
    from graytune.client.demo.digits import write_digits

    return write_digits(tmp_path_factory.mktemp("digits"))


@pytest.fixture(scope="session")
def postgres():
    """One PostgreSQL server per test process; each test makes its own database."""
    cluster = PostgresCluster()
    yield cluster
    cluster.close()
