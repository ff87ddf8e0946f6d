"""The committed gRPC stubs are exactly what scripts/gen_protos.sh generates from the .proto."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("grpc_tools")

ROOT = Path(__file__).resolve().parent.parent
STUBS = ["oracle_pb2.py", "oracle_pb2.pyi", "oracle_pb2_grpc.py"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("stubs")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gen_protos.sh"), str(out)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"scripts/gen_protos.sh failed:\n{result.stderr}"
    return out / "graytune" / "v1"


@pytest.mark.parametrize("name", STUBS)
def test_committed_stub_matches_generated(generated, name):
    committed = ROOT / "protos" / "graytune" / "v1" / name
    assert committed.read_bytes() == (generated / name).read_bytes(), (
        f"protos/graytune/v1/{name} is out of date with oracle.proto: run scripts/gen_protos.sh and commit the result"
    )
