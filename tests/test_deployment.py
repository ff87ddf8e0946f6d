"""The owner's deployment: compose file valid and as promised, container health check works."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import graytune
from graytune.client.transport.local_server import server_command

from helpers import compose, compose_services, free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("profile", [[], ["--profile", "cpu"], ["--profile", "replicas"], ["--profile", "monitoring"]])
def test_compose_file_is_valid(profile):
    result = compose(*profile, "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_services_are_what_the_owner_needs():
    services = compose_services("cpu")
    gpu, cpu = services["graytune-server"], services["graytune-server-cpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "deploy" not in cpu
    for service in (gpu, cpu):
        assert service["restart"] == "unless-stopped"
        assert service["healthcheck"]["test"] == ["CMD", "graytune-server", "health"]
        mounts = {v["target"]: v.get("read_only", False) for v in service["volumes"]}
        assert mounts == {"/models": False, "/state": False, "/secrets": True, "/certs": True}
        assert {p["target"] for p in service["ports"]} == {50051, 9464}
        published = {p["target"]: p.get("host_ip", "0.0.0.0") for p in service["ports"]}
        assert published[9464] == "127.0.0.1"  # metrics have no authentication: the host's loopback only
        env = service["environment"]
        assert env["GRAYTUNE_KEYS"].startswith("/secrets/") and env["GRAYTUNE_TLS_CERT"].startswith("/certs/")


def test_replicas_profile_puts_two_replicas_behind_envoy():
    """One service scaled to two, found by Envoy through its name (deploy/envoy/envoy.yaml's
    cluster; tests/test_envoy_config.py checks the file itself)."""
    services = compose_services("replicas")
    (cluster,) = yaml.safe_load((ROOT / "deploy" / "envoy" / "envoy.yaml").read_text())["static_resources"]["clusters"]
    upstream = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert upstream == {"address": "graytune-replicas", "port_value": 50051}  # the service's name: all its replicas
    lb, replicas = services["graytune-lb"], services[upstream["address"]]
    assert lb["image"].startswith("envoyproxy/envoy:v1.40")
    assert lb["command"] == ["envoy", "-c", "/etc/envoy/envoy.yaml"]
    mounts = {v["target"]: v["source"] for v in lb["volumes"]}
    assert mounts["/etc/envoy/envoy.yaml"] == str(ROOT / "deploy" / "envoy" / "envoy.yaml")
    assert [p["target"] for p in lb["ports"]] == [50051]
    assert replicas["deploy"]["replicas"] == 2
    assert replicas["command"] == ["--plaintext"] and not replicas.get("ports")
    # Budgets, charges and rate buckets in the profile's PostgreSQL, its password from one file.
    store = services["graytune-usage-db"]
    assert replicas["environment"]["GRAYTUNE_USAGE_DB"] == "postgresql://graytune@graytune-usage-db:5432/graytune"
    assert replicas["depends_on"]["graytune-usage-db"]["condition"] == "service_healthy"
    assert store["image"].startswith("postgres:") and store["healthcheck"]["test"][1] == "pg_isready"
    password = {v["target"]: v["source"] for v in store["volumes"]}[store["environment"]["POSTGRES_PASSWORD_FILE"]]
    secrets = {v["target"]: v["source"] for v in replicas["volumes"]}["/secrets"]
    assert replicas["environment"]["GRAYTUNE_USAGE_DB_PASSWORD_FILE"] == "/secrets/usage-db-password"
    assert password == str(Path(secrets) / "usage-db-password")
    assert not store.get("ports")  # reached on the compose network only


def test_replicas_on_a_cpu_host_reserve_no_gpu_and_run_the_cpu_image():
    """docker-compose.cpu.yml over the replicas profile: what deploy/compose_e2e.sh brings up."""
    cpu = compose_services("replicas", override=ROOT / "docker-compose.cpu.yml")["graytune-replicas"]
    replicas = compose_services("replicas")["graytune-replicas"]
    assert replicas["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert cpu["deploy"]["replicas"] == 2 and not cpu["deploy"].get("resources")
    assert cpu["image"] == f"graytune-server:{graytune.__version__}-cpu"
    assert cpu["build"]["args"]["TORCH_INDEX"].endswith("/cpu")
    assert {k: v for k, v in cpu.items() if k not in ("deploy", "image", "build")} == {
        k: v for k, v in replicas.items() if k not in ("deploy", "image", "build")
    }


def test_without_a_registry_the_bases_are_named_by_the_environment():
    names = {
        "GRAYTUNE_BASE_IMAGE": "local/python:3.11",
        "GRAYTUNE_POSTGRES_IMAGE": "local/postgres:15",
        "GRAYTUNE_ENVOY_IMAGE": "local/envoy:1.40",
    }
    services = compose_services("cpu", "replicas", env=names)
    assert {s["build"]["args"]["BASE"] for s in services.values() if "build" in s} == {"local/python:3.11"}
    assert services["graytune-usage-db"]["image"] == "local/postgres:15"
    assert services["graytune-lb"]["image"] == "local/envoy:1.40"


def test_the_build_context_is_what_the_image_copies():
    """.dockerignore lets through exactly the Dockerfile's COPY sources: a key file, a
    certificate or weights left in the repository never reach the builder."""
    copied = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if line.startswith(("COPY ", "ADD ")):
            copied.update(line.split()[1:-1])
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "*"
    assert {line[1:] for line in ignore if line.startswith("!")} == copied


def test_health_command_reports_serving(server):
    result = subprocess.run(
        server_command() + ["health", "--address", server.endpoint], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout.strip()) == (0, "SERVING")


def test_health_command_answers_without_importing_torch(server):
    """Orchestrators run it every few seconds with a timeout (compose: 10 s): no torch import."""
    probe = (
        "import sys\nfrom graytune.server.cli import main\ntry:\n    main(['health', '--address', sys.argv[1]])\n"
        "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", probe, server.endpoint], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["SERVING", "0", "False"], result.stderr


def test_health_command_fails_without_a_server():
    result = subprocess.run(
        server_command() + ["health", "--address", f"127.0.0.1:{free_port()}", "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "UNAVAILABLE" in result.stderr
    assert "if the server serves TLS, give --tls-ca" in result.stderr


@pytest.mark.parametrize(
    "args, env, what",
    [
        (
            ["--dev", "--pretrained", "mnist"],
            {"GRAYTUNE_CACHE": "/proc/1/graytune-cache"},
            "the cache of built-in weights",
        ),
        (["--keys", "KEYS", "--usage-db", "/proc/1/state/usage.sqlite"], {}, "the usage database"),
    ],
)
def test_a_folder_the_server_cannot_write_is_a_start_up_error(tmp_path, args, env, what):
    """As with a host folder mounted into the container that uid 1000 may not write."""
    keys = tmp_path / "keys.json"
    subprocess.run(
        server_command() + ["keys", "--file", str(keys), "create", "--tier", "graybox"], check=True, capture_output=True
    )
    args = [str(keys) if a == "KEYS" else a for a in args]
    result = subprocess.run(
        server_command() + [*args, "--plaintext", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
    )
    assert result.returncode == 2
    assert f"error: {what}" in result.stderr and "cannot write to /proc/1/" in result.stderr
    assert "chown" in result.stderr


def test_one_version_everywhere():
    """graytune.__version__ is written once; the package metadata, the server and the image
    tags of the compose file carry it."""
    assert importlib.metadata.version("graytune") == graytune.__version__
    printed = subprocess.run(server_command() + ["--version"], capture_output=True, text=True).stdout
    assert printed.startswith(f"graytune-server {graytune.__version__} ")
    services = compose_services("cpu", "replicas")
    images = {name: service["image"] for name, service in services.items()}
    assert images.pop("graytune-lb").startswith("envoyproxy/envoy:")  # upstream's, not ours
    assert images.pop("graytune-usage-db").startswith("postgres:")
    tags = {name: image.split(":")[1] for name, image in images.items()}
    assert tags.pop("graytune-server-cpu") == f"{graytune.__version__}-cpu"
    assert set(tags.values()) == {f"{graytune.__version__}-cuda"}, tags
    assert services["graytune-server"]["build"]["args"]["TORCH_INDEX"].endswith("/cu124")
    assert services["graytune-server-cpu"]["build"]["args"]["TORCH_INDEX"].endswith("/cpu")
