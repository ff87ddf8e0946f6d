"""A second, independent client (Node.js, @grpc/grpc-js, the .proto loaded at run time) gets
what the Python client gets: the contract stands on its own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import graytune.v1
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient

from helpers import KEYED_ARGS, create_key

NODE_DIR = Path(__file__).parent / "node"
PROTO = Path(graytune.v1.__file__).parent / "oracle.proto"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    key_file = tmp_path_factory.mktemp("node-keys") / "keys.json"
    secret = create_key(key_file, "--tier", "graybox")
    with LocalServer([*KEYED_ARGS, "--keys", str(key_file)]) as server:
        yield server, secret


def test_node_client_matches_the_python_client(keyed):
    assert shutil.which("node"), "Node.js is needed for the second-client test"
    assert (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir(), "run scripts/setup.sh (npm ci)"
    server, secret = keyed
    result = subprocess.run(
        ["node", str(NODE_DIR / "describe_embed.js"), server.endpoint, str(PROTO)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GRAYTUNE_API_KEY": secret},
    )
    assert result.returncode == 0, result.stderr
    node = json.loads(result.stdout)

    with OracleClient(server.endpoint, api_key=secret) as oracle:
        info = oracle.describe()
        h, w = info.image.height, info.image.width
        pixels = torch.sin(torch.arange(2 * 3 * h * w, dtype=torch.float64)).div(2).float().view(2, 3, h, w)
        image = oracle.embed_images(pixels)
        text = oracle.embed_texts(["a photo of the digit three.", "a cat"])

    d = node["describe"]
    assert d["backbone"] == {"name": info.backbone.name, "sha256": info.backbone.sha256}
    assert d["tier"] == "graybox" and d["callerId"] == info.caller_id and d["embedDim"] == info.embed_dim
    assert node["image"]["shape"] == [2, info.embed_dim]
    torch.testing.assert_close(torch.tensor(node["image"]["values"]).view(2, -1), image, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(node["text"]["values"]).view(2, -1), text, rtol=1e-6, atol=1e-6)
