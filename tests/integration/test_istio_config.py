"""istio-config/, what users paste into Istio, held to account: each variant (plaintext, TLS,
sharded) says the same meshConfig in its three forms (IstioOperator overlay, values for
Istio's istiod chart, the raw `mesh` ConfigMap key); Istio's own istiod chart renders the
values into that `mesh` key; the real kube-apiserver accepts every plain manifest; and the
unmodified pilot-discovery, given the `mesh` key (its addresses pointed at a test mcpserver,
the TLS variant's CA replaced by the test CA), receives our ServiceEntries."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcpserver.app import App
from mcpserver.xds.shards import shard_port
from testbed.builds import helm_binary, istio_module_dir
from testbed.helm import Helm
from testbed.istiod import Istiod
from testbed.kube import ControlPlane, Kubectl
from tests.certs import make_certs
from tests.conftest import AppFactory, make_settings
from tests.integration.test_istiod import until

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "istio-config"
VARIANTS = ("plaintext", "tls", "sharded")
ADDRESS = "xds://mcpserver.istio-system.svc:15051"
SHARDED = [f"xds://mcpserver.istio-system.svc:{shard_port(15051, 4, k)}" for k in range(4)]
PLACEHOLDER_CA = "REPLACE-WITH-THE-CA-THAT-SIGNED-MCPSERVER-CERTIFICATE"


def load(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((CONFIG / name).read_text())
    return loaded


def mesh_key(variant: str) -> dict[str, Any]:
    mesh: dict[str, Any] = yaml.safe_load(load(f"mesh-configmap-{variant}.yaml")["data"]["mesh"])
    return mesh


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_is_one_mesh_config_in_three_forms(variant: str) -> None:
    operator = load(f"istiooperator-{variant}.yaml")
    assert operator["apiVersion"] == "install.istio.io/v1alpha1"
    assert operator["kind"] == "IstioOperator"
    forms = [
        operator["spec"]["meshConfig"],
        load(f"istiod-values-{variant}.yaml")["meshConfig"],
        mesh_key(variant),
    ]
    assert forms[0] == forms[1] == forms[2]
    sources = forms[0]["configSources"]
    expected = SHARDED if variant == "sharded" else [ADDRESS]
    assert [s["address"] for s in sources] == [*expected, "k8s://"]
    if variant == "tls":
        tls = sources[0]["tlsSettings"]
        assert tls["mode"] == "SIMPLE"
        assert tls["caCertificates"].startswith("-----BEGIN CERTIFICATE-----")
    else:
        assert "tlsSettings" not in sources[0]


@pytest.mark.parametrize("variant", VARIANTS)
def test_istios_own_istiod_chart_renders_the_values_into_the_mesh_key(
    variant: str, pilot_discovery_bin: Path
) -> None:
    chart = istio_module_dir() / "manifests" / "charts" / "istio-control" / "istio-discovery"
    helm = Helm(helm_binary())
    objects = helm.objects(
        chart, "istiod", "istio-system", CONFIG / f"istiod-values-{variant}.yaml"
    )
    (configmap,) = [
        o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "istio"
    ]
    rendered = yaml.safe_load(configmap["data"]["mesh"])
    assert rendered["configSources"] == mesh_key(variant)["configSources"]


def test_the_plain_manifest_is_what_the_chart_renders() -> None:
    """istio-config/mcpserver.yaml says it is the chart's output: it is, checksum annotation
    and all (scripts/gen_plain_manifest.py writes it; run it after changing the chart)."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_plain_manifest.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    objects = list(yaml.safe_load_all((CONFIG / "mcpserver.yaml").read_text()))
    (deployment,) = [o for o in objects if o and o["kind"] == "Deployment"]
    (configmap,) = [o for o in objects if o and o["kind"] == "ConfigMap"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/config"]) == 64  # an edited ConfigMap rolls the pods
    assert "registries" in configmap["data"]["config.yaml"]


def test_the_plain_manifests_pass_the_apiservers_validation(kubectl: Kubectl) -> None:
    """Server-side dry run, strict field validation. (IstioOperator has no CRD any more:
    istioctl reads it, and the test above checks its meshConfig.)"""
    for name in ("mcpserver.yaml", *(f"mesh-configmap-{v}.yaml" for v in VARIANTS)):
        out = kubectl.run(
            "apply", "--dry-run=server", "--validate=strict", "-f", str(CONFIG / name)
        )
        assert "(server dry run)" in out, out
    kinds = {d["kind"] for d in yaml.safe_load_all((CONFIG / "mcpserver.yaml").read_text())}
    assert kinds == {
        "ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
        "NetworkPolicy",
    }  # fmt: skip


def point_at(sources: list[dict[str, Any]], app: App) -> None:
    """An overlay's xds:// sources re-pointed at a test server on loopback: each port of the
    overlay (15051, or shard k of N at 15051 + 100*N + k) to the port the test server bound
    for the same shard."""
    shards = sum(1 for s in sources if s["address"].startswith("xds://"))
    ports = app.shard_ports(shards)
    for k, source in enumerate(s for s in sources if s["address"].startswith("xds://")):
        port = int(source["address"].rpartition(":")[2])
        assert port == shard_port(15051, shards, k), source
        source["address"] = f"xds://127.0.0.1:{ports[k]}"


@pytest.mark.parametrize("variant", VARIANTS)
async def test_pilot_discovery_reads_mcpserver_through_the_mesh_key(
    variant: str,
    pilot_discovery_bin: Path,
    control_plane: ControlPlane,
    start_app: AppFactory,
    static_file: Path,
    tmp_path: Path,
) -> None:
    sources = mesh_key(variant)["configSources"]
    overrides: dict[str, Any] = {}
    if variant == "tls":
        certs = make_certs(tmp_path / "certs")
        overrides["server"] = {
            "listen": "127.0.0.1:0",
            "admin": "127.0.0.1:0",
            "tls": {"cert_file": str(certs["server"]), "key_file": str(certs["server-key"])},
        }
        tls = sources[0]["tlsSettings"]
        assert PLACEHOLDER_CA in tls["caCertificates"]
        tls["caCertificates"] = certs["ca"].read_text()
    if variant == "sharded":
        overrides["server"] = {"listen": "127.0.0.1:0", "admin": "127.0.0.1:0", "shards": 4}
    app: App = await start_app(make_settings(static_file, **overrides))
    point_at(sources, app)
    istiod = Istiod(
        pilot_discovery_bin,
        tmp_path / "istiod",
        app.port,
        kubeconfig=control_plane.istiod_kubeconfig(),
        sources=sources,
    )
    istiod.workdir.mkdir()
    try:
        istiod.start()
        # a blocking wait in a thread: the in-process mcpserver must keep answering
        await asyncio.to_thread(istiod.wait_ready)
        found = await until(lambda: {"shop/cart", "shop/pay"} <= set(istiod.configs()), 60)
        assert found
    except AssertionError:
        print(istiod.log()[-4000:])
        raise
    finally:
        await asyncio.to_thread(istiod.stop)
