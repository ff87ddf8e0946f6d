"""deploy/monitoring/: Prometheus's config and alert rules pass promtool's checks and unit tests,
name only metrics a real server exports, and compose's monitoring profile mounts them with the
Grafana dashboard, whose queries name only those metrics too."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import torch
import yaml

from graytune.client.transport.local_server import LocalServer
from graytune.client.transport.oracle_client import OracleClient
from graytune.v1 import oracle_pb2 as pb

from helpers import KEYED_ARGS, compose_services, create_key, free_port, scrape

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "deploy" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "graytune.json"
PROMTOOL = shutil.which("promtool")


def promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess:
    assert PROMTOOL, "no promtool: bash scripts/setup.sh installs Debian's prometheus package"
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_rules_pass_promtools_checks_and_unit_tests():
    checked = promtool("check", "rules", "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "rules_test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_the_prometheus_config_is_valid_with_its_rules(tmp_path):
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules.yml"]  # where compose mounts rules.yml
    config["rule_files"] = [str(MONITORING / "rules.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def queried_metrics() -> set[str]:
    """The graytune metric names the rules and the dashboard query."""
    rules = yaml.safe_load((MONITORING / "rules.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    exprs += [t["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for t in panel["targets"]]
    return {name for expr in exprs for name in re.findall(r"\bgraytune_\w+", expr)}


def test_the_rules_and_dashboard_query_only_what_a_server_exports(tmp_path):
    key_file, port = tmp_path / "keys.json", free_port()
    secret = create_key(key_file, "--tier", "graybox", "--budget", "100", "--gradient-budget", "100")
    with LocalServer([*KEYED_ARGS, "--keys", str(key_file), "--metrics-port", str(port)]) as server:
        with OracleClient(server.endpoint, api_key=secret, retries=0) as oracle:
            handle, embeddings = oracle.forward(pb.IMAGE, {"pixels": torch.randn(2, 3, 32, 32)})
            oracle.backward(handle, torch.ones_like(embeddings))
        exported = {name for name, _ in scrape(port)}
    queried = queried_metrics()
    assert len(queried) >= 10 and queried <= exported, sorted(queried - exported)


def test_the_monitoring_profile_mounts_the_config_rules_and_dashboard():
    services = compose_services("monitoring")
    mounts = lambda service: {v["target"]: Path(v["source"]) for v in services[service]["volumes"]}
    prometheus, grafana = mounts("graytune-prometheus"), mounts("graytune-grafana")
    assert prometheus["/etc/prometheus/prometheus.yml"] == MONITORING / "prometheus.yml"
    assert prometheus["/etc/prometheus/rules.yml"] == MONITORING / "rules.yml"
    assert grafana["/etc/grafana/provisioning"] == MONITORING / "grafana" / "provisioning"
    assert grafana["/var/lib/grafana/dashboards"] == DASHBOARD.parent
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/graytune.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    [datasource] = source["datasources"]
    assert datasource["url"] == "http://graytune-prometheus:9090"
    assert services["graytune-prometheus"]["ports"][0]["target"] == 9090
    uids = {t["datasource"]["uid"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]}
    assert uids == {datasource["uid"]}
    # Prometheus finds every server by its compose service name, whichever profile runs.
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    with_metrics = {
        name
        for name, service in compose_services("cpu", "replicas").items()
        if service.get("environment", {}).get("GRAYTUNE_METRICS_PORT") == "9464"
    }
    assert set(job["dns_sd_configs"][0]["names"]) == with_metrics and job["dns_sd_configs"][0]["port"] == 9464


def test_every_alert_has_a_unit_test_that_fires_it():
    rules = yaml.safe_load((MONITORING / "rules.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((MONITORING / "rules_test.yml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert len(alerts) == 5 and alerts == fired
