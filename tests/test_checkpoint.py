"""Adapter directories: round trip, atomic writes, and refusal of another backbone."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from graytune.client.data.files import write_dir_atomically
from graytune.client.methods.adapter_dir import save_adapters
from graytune.client.methods.base import BackboneMismatch
from graytune.client.methods.graybox.config import GrayboxConfig
from graytune.client.methods.graybox.model import GrayboxCLIP
from graytune.client.methods.graybox.options import DGAOptions
from graytune.client.methods.registry import load_adapters
from graytune.client.training import checkpoint
from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient

from helpers import SERVER_ARGS


def trained_looking(oracle) -> GrayboxCLIP:
    model = GrayboxCLIP(GrayboxConfig.for_oracle(oracle, DGAOptions(extra_tokens=2)), oracle)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def test_adapter_directory_round_trip(oracle, tmp_path):
    model = trained_looking(oracle)
    model.save_pretrained(tmp_path / "adapter")  # PEFT's names for save/load_adapters
    loaded = GrayboxCLIP.from_pretrained(tmp_path / "adapter", oracle)
    assert loaded.config == model.config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(pixels), model.encode_image(pixels))
        torch.testing.assert_close(loaded.encode_text(["a seven."]), model.encode_text(["a seven."]))


def test_adapter_config_records_method_sizes_backbone_and_protocol(oracle, tmp_path):
    save_adapters(tmp_path, trained_looking(oracle))
    text = (tmp_path / "adapter_config.json").read_text()
    config = json.loads(text)
    info = oracle.describe()
    assert list(config) == sorted(config)
    assert config["method"] == "graybox-dga"
    assert config["backbone_sha256"] == info.backbone.sha256
    assert config["protocol_version"] == info.protocol_version
    assert config["extra_tokens"] == 2 and config["embed_dim"] == info.embed_dim
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapters.safetensors"]


def test_a_crash_while_writing_leaves_the_previous_directory_whole(oracle, tmp_path):
    target = tmp_path / "adapter"
    save_adapters(target, trained_looking(oracle))
    before = {p.name: p.read_bytes() for p in target.iterdir()}

    def crash(tmp):
        (tmp / "adapters.safetensors").write_bytes(b"half a fi")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_dir_atomically(target, crash)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


def test_latest_names_only_complete_checkpoints(oracle, tmp_path):
    model = trained_looking(oracle)
    for step in (2, 4, 6):
        checkpoint.save_checkpoint(tmp_path, step, model, {"step": step}, keep=2)
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_0000006"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000004", "step_0000006"]
    assert checkpoint.load_training_state(checkpoint.latest_checkpoint(tmp_path)) == {"step": 6}


def test_unknown_config_keys_are_refused(oracle, tmp_path):
    save_adapters(tmp_path, trained_looking(oracle))
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    (tmp_path / "adapter_config.json").write_text(json.dumps({**config, "lora_rank": 8}))
    with pytest.raises(ValueError, match="lora_rank"):
        load_adapters(tmp_path, oracle)


@pytest.fixture(scope="module")
def other_server():
    """Same architecture, other weights (another seed): another backbone."""
    with LocalServer([*SERVER_ARGS, "--seed", "1"]) as s:
        yield s


def test_adapters_refuse_another_backbone(oracle, other_server, tmp_path):
    save_adapters(tmp_path, trained_looking(oracle))
    with OracleClient(other_server.endpoint) as other:
        with pytest.raises(BackboneMismatch, match="trained against graytune-tiny"):
            load_adapters(tmp_path, other)


def test_cli_eval_refuses_another_backbone(oracle, other_server, digits, tmp_path):
    save_adapters(tmp_path, trained_looking(oracle))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "graytune.client.cli",
            "eval",
            "--endpoint",
            other_server.endpoint,
            "--adapter",
            str(tmp_path),
            "--val-data",
            digits["val"],
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "trained against graytune-tiny" in result.stderr


def test_cli_eval_and_info(server, oracle, digits, tmp_path):
    save_adapters(tmp_path, trained_looking(oracle))
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", "graytune.client.cli", *args, "--endpoint", server.endpoint],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(run("info").stdout)
    assert info["backbone"]["sha256"] == oracle.describe().backbone.sha256
    metrics = json.loads(run("eval", "--adapter", str(tmp_path), "--val-data", digits["val"]).stdout)
    assert set(metrics) >= {"image_to_text_R@1", "text_to_image_R@10", "image_to_text_median_rank"}
    assert 0 <= metrics["image_to_text_R@1"] <= 1


LEGACY_0_2 = {  # adapter_config.json as graytune 0.2.0 wrote it: every method's fields, CraFT's nested
    "adapters": "both",
    "backbone_name": "graytune-tiny",
    "backbone_sha256": "ab" * 32,
    "classes": 0,
    "craft": {},
    "deep_prompt_depth": 0,
    "deep_prompt_tokens": 4,
    "domains": [],
    "embed_dim": 64,
    "extra_tokens": 1,
    "image_token_width": 64,
    "method": "graybox-dga",
    "pixel_channels": 8,
    "pixel_kernel_size": 3,
    "pixel_layers": 2,
    "protocol_version": "1.4",
    "task": {"name": "retrieval"},
    "temporal_pooling": "mean",
    "token_width": 64,
}


def test_adapters_saved_by_graytune_0_2_still_load(tmp_path):
    from graytune.client.methods.craft.model import CraftConfig
    from graytune.client.methods.linear_probe.model import LinearProbeConfig
    from graytune.client.methods.registry import read_config

    (tmp_path / "adapter_config.json").write_text(json.dumps(LEGACY_0_2))
    config = read_config(tmp_path)
    assert isinstance(config, GrayboxConfig) and config.to_dict() == {
        **{k: v for k, v in LEGACY_0_2.items() if k != "craft"},
        "domains": (),
    }
    probe = {**LEGACY_0_2, "method": "linear-probe", "classes": 3}
    (tmp_path / "adapter_config.json").write_text(json.dumps(probe))
    fields = {f.name for f in dataclasses.fields(LinearProbeConfig)}
    assert read_config(tmp_path) == LinearProbeConfig(
        **{**{k: v for k, v in probe.items() if k in fields}, "domains": ()}
    )
    craft = {
        **probe,
        "method": "craft",
        "craft": {
            "template": "a photo of a",
            "context_tokens": 4,
            "intrinsic_dim": 16,
            "projection_seed": 0,
            "projection_std": 0.25,
            "hidden": 256,
            "logit_scale": 100.0,
        },
    }
    (tmp_path / "adapter_config.json").write_text(json.dumps(craft))
    loaded = read_config(tmp_path)
    assert isinstance(loaded, CraftConfig) and (loaded.template, loaded.intrinsic_dim, loaded.classes) == (
        "a photo of a",
        16,
        3,
    )


def test_an_unknown_key_in_a_new_adapter_config_is_refused(tmp_path):
    from graytune.client.methods.registry import read_config

    values = {k: v for k, v in LEGACY_0_2.items() if k != "craft"}
    (tmp_path / "adapter_config.json").write_text(json.dumps({**values, "pixel_layerz": 2}))
    with pytest.raises(ValueError, match=r"unknown keys \['pixel_layerz'\]"):
        read_config(tmp_path)
