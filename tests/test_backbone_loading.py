"""The owner loads weights from local files and architecture JSON; bad sources fail clearly."""

from __future__ import annotations

import json
import logging
import subprocess

import open_clip
import pytest
import torch
from safetensors.torch import save_file

from graytune.client.transport.local_server import LocalServer, server_command
from graytune.client.transport.oracle_client import OracleClient
from graytune.server.compute.backbone import BUILTIN_CONFIGS, BackboneSource, load_backbone, weights_sha256

from helpers import SERVER_ARGS


@pytest.fixture(scope="module")
def other_weights():
    """graytune-tiny with weights no seed of the server makes."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1234)
        return open_clip.create_model("graytune-tiny")


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_server_serves_a_local_weights_file(other_weights, tmp_path, suffix):
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in other_weights.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    with LocalServer([*SERVER_ARGS, "--weights", str(path)]) as server:
        with OracleClient(server.endpoint) as oracle:
            assert oracle.describe().backbone.sha256 == weights_sha256(other_weights)
            pixels = torch.randn(2, 3, 32, 32)
            torch.testing.assert_close(
                oracle.embed_images(pixels), other_weights.eval().encode_image(pixels), rtol=1e-5, atol=1e-6
            )


def test_architecture_json_file_names_the_model(tmp_path):
    config = json.loads((BUILTIN_CONFIGS / "graytune-tiny.json").read_text())
    config["vision_cfg"]["layers"] = 1
    path = tmp_path / "my-arch.json"
    path.write_text(json.dumps(config))
    backbone = load_backbone(BackboneSource(model_config=path))
    assert backbone.name == "my-arch"
    assert len(backbone.model.visual.transformer.resblocks) == 1


def test_backbone_is_frozen(backbone):
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert not backbone.model.training


def test_missing_weights_file_stops_the_server_with_a_message(tmp_path):
    result = subprocess.run(
        server_command() + ["--dev", "--plaintext", "--port", "0", "--weights", str(tmp_path / "nope.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "graytune-server: error: weights file not found" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'ViT-Z-99'.*graytune-tiny"):
        load_backbone(BackboneSource(model="ViT-Z-99"))


def test_random_weights_are_said_loudly(caplog, tmp_path):
    with caplog.at_level(logging.INFO, logger="graytune.server"):
        load_backbone(BackboneSource(model="graytune-tiny", seed=3))
        ours = lambda: [r for r in caplog.records if r.name.startswith("graytune") and r.levelno >= logging.WARNING]
        (warning,) = ours()
        assert "graytune-tiny has RANDOM weights (seed 3)" in warning.getMessage()
        assert "--pretrained TAG or --weights FILE" in warning.getMessage()
        caplog.clear()
        weights = tmp_path / "tiny.safetensors"
        save_file(open_clip.create_model("graytune-tiny").state_dict(), str(weights))
        load_backbone(BackboneSource(model="graytune-tiny", weights=str(weights)))
        assert not ours()
