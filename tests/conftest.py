"""Shared fixtures: real server processes on free ports, the same backbone in-process, data."""

from __future__ import annotations

import os
import time

from graytune.openmp import wait_passively

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach a hub
os.environ.pop("GRAYTUNE_API_KEY", None)  # a developer's own key must not reach the tests' servers
wait_passively()  # the test process mostly waits on servers

import pytest  # noqa: E402
import torch  # noqa: E402

from graytune.client.transport.local_server import LocalServer  # noqa: E402
from graytune.client.transport.oracle_client import OracleClient  # noqa: E402

# Every server a test starts shares the cores with the test process.
SERVER_ARGS = ("--dev", "--plaintext", "--threads", "1", "--log-level", "WARNING")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """Where built-in pretrained weights are built: once per test session."""
    path = tmp_path_factory.mktemp("graytune-cache")
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


def wait_until(condition, timeout: float = 60.0, what: str = "condition") -> None:
    """Polls `condition` until true; a generous deadline, never a guess at how long work takes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout} s")
        time.sleep(0.005)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


# Relative L2 error of float32 results whose sums run in another order or over other shapes
# (e.g. the server's text transformer stops at the batch's last end-of-text, a reference runs the
# whole context): ~170 units of rounding; seen up to 6e-7. Element-wise tolerances do not hold
# there: a gradient summed over positions cancels, and a small element carries a large error.
REORDERED = 1e-5
