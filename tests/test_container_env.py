"""The owner's image environment, built the way the Dockerfile builds it (no Docker engine runs
here): its COPY lines staged into a folder, its `pip install` commands run in a fresh venv with
its build arguments; the server from that venv must then serve a caller and pass the health
check. A dependency the image lacks, or a file it does not copy, fails here."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch

from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient
from graytune.client.transport.remote import RemoteImageTower

ROOT = Path(__file__).resolve().parents[1]
# download.pytorch.org is out of this machine's reach; PyPI serves the same torch release.
BUILD_ARGS = {"TORCH_INDEX": "https://pypi.org/simple"}
# Commands that set up the OS user and folders, not the Python environment.
OS_COMMANDS = {"useradd", "mkdir", "chown"}
# The image disables pip's cache to stay small; here the cache is what holds torch's wheels.
IGNORED_ENV = {"PIP_NO_CACHE_DIR"}


def instructions(dockerfile: Path) -> list:
    """[(INSTRUCTION, arguments)], continuation lines joined, comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(line for line in dockerfile.read_text().splitlines() if not line.lstrip().startswith("#")),
    )
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip()]


def build(dockerfile: Path, root: Path) -> tuple:
    """Stages the image's /app under root and its Python environment in root/venv, as the
    Dockerfile's instructions say. -> (venv folder, the ENTRYPOINT's words)."""
    python = root / "venv"
    venv.create(python, with_pip=True)
    args, env, workdir, entrypoint = {}, {}, root, None
    for instruction, value in instructions(dockerfile):
        expand = lambda s: re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), env.get(m.group(1), "")), s)
        if instruction == "FROM":
            assert expand(value).startswith(f"python:{sys.version_info.major}.{sys.version_info.minor}"), value
        elif instruction == "ARG":
            name, _, default = value.partition("=")
            args[name] = BUILD_ARGS.get(name, default)
        elif instruction == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(value) if pair.split("=")[0] not in IGNORED_ENV)
        elif instruction == "WORKDIR":
            workdir = root / value.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            *sources, target = shlex.split(value)
            for source in sources:
                destination = workdir / target / Path(source).name if target.endswith("/") else workdir / target
                copy = shutil.copytree if (ROOT / source).is_dir() else shutil.copy
                copy(ROOT / source, destination)
        elif instruction == "RUN":
            for command in expand(value).split("&&"):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"]:
                    subprocess.run(
                        [str(python / "bin" / "pip"), *words[1:]],
                        cwd=workdir,
                        check=True,
                        capture_output=True,
                        env={**os.environ, **env},
                    )
                else:
                    assert words[0] in OS_COMMANDS, f"RUN {command}: this test does not know it"
        elif instruction == "ENTRYPOINT":
            entrypoint = json.loads(value)
        else:
            assert instruction in ("USER", "EXPOSE"), f"{instruction}: this test does not know it"
    return python, entrypoint


@pytest.fixture
def image_root(tmp_path):
    """The staged image; removed at once, not kept with pytest's last runs (it holds 5 GB)."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_images_environment_serves_gradients_and_passes_its_health_check(image_root):
    python, entrypoint = build(ROOT / "Dockerfile", image_root)
    assert entrypoint[0] == "graytune-server"
    server_exe = str(python / "bin" / entrypoint[0])
    with LocalServer(["--dev", "--plaintext", "--threads", "1"], command=[server_exe]) as server:
        health = subprocess.run(
            [server_exe, "health", "--address", server.endpoint], capture_output=True, text=True, timeout=120
        )
        with OracleClient(server.endpoint) as oracle:
            info = oracle.describe()
            pixels = torch.randn(2, 3, info.image.height, info.image.width, requires_grad=True)
            RemoteImageTower(oracle)(pixels).sum().backward()
    assert (health.returncode, health.stdout.strip()) == (0, "SERVING"), health.stderr
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    installed = subprocess.run(
        [str(python / "bin" / "pip"), "list", "--format", "freeze"], capture_output=True, text=True, check=True
    ).stdout
    assert "graytune==" in installed and "pytest==" not in installed, "the server extra only"
