"""The Helm chart (charts/mcpserver) for real: Helm lints and renders it with its defaults and
with realistic values files, the real kube-apiserver validates every object it renders
(server-side dry run, strict field validation), the config it renders passes `mcpserver
check-config` in the file layout the Deployment mounts, and the values schema refuses a bad
value saying where and why."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from mcpserver.settings import load_settings
from mcpserver.xds.shards import shard_port
from testbed.builds import helm_binary
from testbed.helm import Helm
from testbed.kube import Kubectl

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mcpserver"
VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "mcpserver-chart"
CONFIG_DIR = PurePosixPath("/etc/mcpserver")
CASES = [None, *VALUES]
SINK_NAMESPACES = ("legacy", "payments")
IDS = ["defaults", *(v.name.removesuffix("-values.yaml") for v in VALUES)]

# The Prometheus Operator's CRD is not ours to copy: this is the least of it that lets the
# apiserver accept (and check the shape of) a ServiceMonitor.
SERVICE_MONITOR_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: {kind: ServiceMonitor, listKind: ServiceMonitorList, plural: servicemonitors, singular: servicemonitor}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          spec:
            type: object
            required: [selector, endpoints]
            properties:
              selector:
                type: object
                properties:
                  matchLabels: {type: object, additionalProperties: {type: string}}
              endpoints:
                type: array
                items:
                  type: object
                  properties:
                    port: {type: string}
                    path: {type: string}
                    interval: {type: string, pattern: '^[0-9]+(ms|s|m|h)$'}
"""


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm(helm_binary())


@pytest.fixture(scope="module")
def chart_cluster(kubectl: Kubectl) -> Iterator[Kubectl]:
    """The session's apiserver with the chart's namespace and the ServiceMonitor CRD."""
    kubectl.ensure_namespace(NAMESPACE)
    for namespace in SINK_NAMESPACES:  # where ci/kubernetes-sink-values.yaml lets it write
        kubectl.ensure_namespace(namespace)
    kubectl.apply(SERVICE_MONITOR_CRD)
    kubectl.run("wait", "--for=condition=established", "--timeout=60s",
                "crd/servicemonitors.monitoring.coreos.com")  # fmt: skip
    yield kubectl
    kubectl.delete(SERVICE_MONITOR_CRD)


def values_args(values: Path | None) -> tuple[Path, ...]:
    return () if values is None else (values,)


def dry_run(kubectl: Kubectl, objects: list[dict[str, Any]]) -> str:
    """Server-side dry run with strict field validation: the real API's verdict, nothing
    stored."""
    manifest = yaml.safe_dump_all(objects)
    return kubectl.run("apply", "--dry-run=server", "--validate=strict", "-f", "-", stdin=manifest)


def test_chart_lints_with_every_values_file(helm: Helm) -> None:
    for values in CASES:
        done = helm.lint(CHART, *values_args(values))
        assert done.returncode == 0, f"{values}: {done.stdout}{done.stderr}"


@pytest.mark.parametrize("values", CASES, ids=IDS)
def test_every_rendered_object_passes_the_apiservers_validation(
    helm: Helm, chart_cluster: Kubectl, values: Path | None
) -> None:
    objects = helm.objects(CHART, "mcpserver", NAMESPACE, *values_args(values))
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount"} <= kinds
    assert {"PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert ("ServiceMonitor" in kinds) == (values is not None and "consul" in values.name)
    out = dry_run(chart_cluster, objects)
    for o in objects:
        assert f"{o['kind'].lower()}" in out.lower() and o["metadata"]["name"] in out, out


def test_the_deployment_is_what_an_istio_component_needs(helm: Helm) -> None:
    objects = helm.objects(CHART, "mcpserver", NAMESPACE)
    by_kind = {o["kind"]: o for o in objects}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert by_kind["Deployment"]["spec"]["replicas"] == 2
    assert "podAntiAffinity" in pod["affinity"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    grpc = next(p for p in by_kind["Service"]["spec"]["ports"] if p["port"] == 15051)
    assert grpc["appProtocol"] == "grpc" and grpc["name"].startswith("grpc")
    # no RBAC at all: mcpserver never calls the apiserver
    assert not {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"} & set(by_kind)
    istiod, peers = by_kind["NetworkPolicy"]["spec"]["ingress"]
    assert istiod["ports"] == [{"port": "grpc-xds", "protocol": "TCP"}]
    # the replicas reach each other's admin port, and nothing else does
    assert peers["ports"] == [{"port": "http-admin", "protocol": "TCP"}]
    assert peers["from"] == [{"podSelector": {"matchLabels": pod_selector(objects)}}]


def pod_selector(objects: list[dict[str, Any]]) -> dict[str, str]:
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    labels: dict[str, str] = deployment["spec"]["selector"]["matchLabels"]
    return labels


def rendered(helm: Helm, *sets: str) -> list[dict[str, Any]]:
    done = helm.template(CHART, "mcpserver", NAMESPACE, sets=sets)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_replicas_name_each_other_and_keep_their_state_across_container_restarts(
    helm: Helm,
) -> None:
    """More than one replica: a headless Service resolving to every ready replica, and the
    config's `peers` naming it; an emptyDir at the config's `state_dir`. One replica: no
    peers. A config that sets either itself keeps its own."""
    objects = rendered(helm)
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    headless = services["mcpserver-peers"]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is False
    assert headless["selector"] == pod_selector(objects)
    config = yaml.safe_load(
        next(o for o in objects if o["kind"] == "ConfigMap")["data"]["config.yaml"]
    )
    assert config["peers"] == {
        "addresses": [f"mcpserver-peers.{NAMESPACE}.svc:15052"],
        "wait": "5s",
    }
    assert config["state_dir"] == "/var/lib/mcpserver"
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert "emptyDir" in volumes["state"] and mounts["state"]["mountPath"] == "/var/lib/mcpserver"
    alone = rendered(helm, "replicaCount=1", "stateDir.enabled=false")
    assert "mcpserver-peers" not in {o["metadata"]["name"] for o in alone}
    config = yaml.safe_load(
        next(o for o in alone if o["kind"] == "ConfigMap")["data"]["config.yaml"]
    )
    assert "peers" not in config and "state_dir" not in config
    (rule,) = next(o for o in alone if o["kind"] == "NetworkPolicy")["spec"]["ingress"]
    assert rule["ports"] == [{"port": "grpc-xds", "protocol": "TCP"}]
    own = rendered(helm, "config.peers=other:15052", "config.state_dir=/data")
    config = yaml.safe_load(next(o for o in own if o["kind"] == "ConfigMap")["data"]["config.yaml"])
    assert (config["peers"], config["state_dir"]) == ("other:15052", "/data")


def test_the_chart_has_no_traps(helm: Helm) -> None:
    """What an operator would otherwise find in production: a ServiceMonitor that the
    chart's own NetworkPolicy keeps from scraping, a PDB that hangs every drain of a single
    replica, an injected sidecar that waits for the istiod that waits for mcpserver."""
    done = helm.template(CHART, "mcpserver", NAMESPACE, sets=("serviceMonitor.enabled=true",))
    assert done.returncode != 0
    assert "serviceMonitor.enabled" in done.stderr and "networkPolicy.adminFrom" in done.stderr
    for sets in (
        ("serviceMonitor.enabled=true", "networkPolicy.enabled=false"),
        (
            "serviceMonitor.enabled=true",
            "networkPolicy.adminFrom[0].podSelector.matchLabels.app=prometheus",
        ),
    ):
        kinds = {o["kind"] for o in helm.objects(CHART, "mcpserver", NAMESPACE, sets=sets)}
        assert "ServiceMonitor" in kinds, sets
    single = helm.objects(CHART, "mcpserver", NAMESPACE, sets=("replicaCount=1",))
    assert "PodDisruptionBudget" not in {o["kind"] for o in single}
    for objects in (single, helm.objects(CHART, "mcpserver", NAMESPACE)):
        (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["sidecar.istio.io/inject"] == "false"


def mounted_layout(objects: list[dict[str, Any]], root: Path) -> Path:
    """The files the Deployment mounts under /etc/mcpserver, recreated under `root`: the
    ConfigMap's keys at their subPath mounts, an empty directory per Secret mount. Returns
    where config.yaml is."""
    by_kind = {o["kind"]: o for o in objects}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    data: dict[str, str] = by_kind["ConfigMap"]["data"]
    for mount in pod["containers"][0]["volumeMounts"]:
        target = PurePosixPath(mount["mountPath"])
        if "emptyDir" in volumes[mount["name"]]:
            continue  # the state directory: written at run time, nothing to check
        assert target.is_relative_to(CONFIG_DIR), target
        local = root / target.relative_to(CONFIG_DIR)
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(data[mount["subPath"]])
        else:
            assert "secret" in volume, volume
            local.mkdir(parents=True, exist_ok=True)
    return root / "config.yaml"


def secret_paths(value: Any) -> Iterator[str]:
    """Every relative path into a Secret mount that a config names."""
    if isinstance(value, dict):
        for item in value.values():
            yield from secret_paths(item)
    elif isinstance(value, list):
        for item in value:
            yield from secret_paths(item)
    elif isinstance(value, str) and value.startswith("secrets/"):
        yield value


@pytest.mark.parametrize("values", CASES, ids=IDS)
def test_the_rendered_config_passes_check_config_where_the_pod_mounts_it(
    helm: Helm, tmp_path: Path, values: Path | None
) -> None:
    objects = helm.objects(CHART, "mcpserver", NAMESPACE, *values_args(values))
    config = mounted_layout(objects, tmp_path / "etc-mcpserver")
    for relative in secret_paths(yaml.safe_load(config.read_text())):
        secret = config.parent / relative
        # a file of a Secret the Deployment mounts, not a path nothing provides
        assert secret.parent.is_dir(), f"{relative}: no Secret is mounted at {secret.parent}"
    # offline, as before a deploy: the Secrets' files are not at hand
    done = subprocess.run(
        [sys.executable, "-m", "mcpserver", "check-config", "--offline", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout


@pytest.mark.parametrize(
    ("bad", "where", "why"),
    [
        ("replicaCount=0", "/replicaCount", "minimum"),
        ("config.registries[0].name=Zk_Prod", "/config/registries/0/name", "does not match"),
        ("service.grpcPort=70000", "/service/grpcPort", "maximum"),
        ("antiAffinity=always", "/antiAffinity", "must be one of"),
        # `config` is described by mcpserver's own settings models
        ("config.foo=bar", "/config", "additional properties 'foo' not allowed"),
        ("config.debounce.after=soon", "/config/debounce/after", "want number"),
        ("config.registries[0].kind=etcd", "/config/registries/0/kind", "must be one of"),
    ],
)
def test_the_values_schema_refuses_a_bad_value_saying_where(
    helm: Helm, bad: str, where: str, why: str
) -> None:
    sets = (bad, "config.registries[0].kind=static") if "registries[0].name" in bad else (bad,)
    done = helm.template(CHART, "mcpserver", NAMESPACE, sets=sets)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr, done.stderr
    # a line at that place says why (an anyOf is one line, then a line per branch)
    lines = [x for x in done.stderr.splitlines() if f"'{where}'" in x]
    assert any(why in x for x in lines), done.stderr


def test_sharded_ports_follow_the_servers_rule(helm: Helm, tmp_path: Path) -> None:
    """With shards (and previousShards) the Deployment, the Service and the NetworkPolicy
    carry every port the server binds, by the server's own rule, and the configSources
    `mcpserver mesh-config` prints for the rendered config name the Service's ports."""
    values = CHART / "ci" / "sharded-values.yaml"
    objects = helm.objects(CHART, "mcpserver", NAMESPACE, values)
    by_kind = {o["kind"]: o for o in objects}
    (container,) = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    config = mounted_layout(objects, tmp_path / "etc-mcpserver")
    settings = load_settings(config, env)
    expected = {
        ("grpc-xds" if n == 1 else f"grpc-s{n}-{k}"): shard_port(15051, n, k)
        for n in settings.server.layouts()
        for k in range(n)
    }
    assert settings.server.layouts() == (1, 2, 4) and len(expected) == 7
    (service,) = [
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "mcpserver"
    ]  # not the peers' headless one
    service_ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert {k: v for k, v in service_ports.items() if k != "http-admin"} == expected
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {
        **expected,
        "http-admin": 15052,
    }
    rule, _peers = by_kind["NetworkPolicy"]["spec"]["ingress"]  # istiod's, the replicas'
    assert {p["port"] for p in rule["ports"]} == set(expected)
    host = f"mcpserver.{NAMESPACE}.svc"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcpserver",
            "mesh-config",
            "--config",
            str(config),
            "--address",
            host,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr
    sources = [s["address"] for s in yaml.safe_load(done.stdout)["configSources"]]
    assert sources == [
        *(f"xds://{host}:{service_ports[f'grpc-s4-{k}']}" for k in range(4)),
        "k8s://",
    ]


def test_the_kubernetes_sink_gets_a_token_and_rbac_and_nothing_more(helm: Helm) -> None:
    """Only with `config.sink` naming kubernetes: a token, a Role for the Lease in the
    release's namespace, and the right to write Istio's two kinds where it may (a Role per
    namespace when listed, a ClusterRole otherwise); the config names the owner and where
    the Lease lives."""
    sink = CHART / "ci" / "kubernetes-sink-values.yaml"
    objects = helm.objects(CHART, "mcpserver", NAMESPACE, sink)
    roles = {
        (o["kind"], o["metadata"].get("namespace", "")) for o in objects if "Role" in o["kind"]
    }
    assert roles == {
        ("Role", NAMESPACE),
        ("RoleBinding", NAMESPACE),
        ("Role", "legacy"),
        ("RoleBinding", "legacy"),
        ("Role", "payments"),
        ("RoleBinding", "payments"),
    }
    writers = [o for o in objects if o["kind"] == "Role" and o["metadata"]["namespace"] == "legacy"]
    (rule,) = writers[0]["rules"]
    assert rule["resources"] == ["serviceentries", "workloadentries"]
    assert "delete" in rule["verbs"] and "*" not in rule["verbs"]
    by_kind = {o["kind"]: o for o in objects}
    assert by_kind["ServiceAccount"]["automountServiceAccountToken"] is True
    assert by_kind["Deployment"]["spec"]["template"]["spec"]["automountServiceAccountToken"]
    config = yaml.safe_load(by_kind["ConfigMap"]["data"]["config.yaml"])
    assert config["kubernetes"] == {"owner": "mcpserver", "lease_namespace": NAMESPACE}
    # every namespace: a ClusterRole instead
    everywhere = rendered(helm, "config.sink={mcp,kubernetes}")
    kinds = {o["kind"] for o in everywhere}
    assert {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} <= kinds
    # the sink off (the default): no token, no RBAC
    default = rendered(helm)
    assert not {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"} & {
        o["kind"] for o in default
    }
