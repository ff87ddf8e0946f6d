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
