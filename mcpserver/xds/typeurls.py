"""The type URLs istiod asks for, per Istio version, and which of them we serve.

istiod's config-source client sends GVK strings (`networking.istio.io/v1/ServiceEntry`), not
`type.googleapis.com/...` names, and matches our response's type_url exactly, so responses
echo whatever the request said (pkg/adsc/adsc.go ConfigInitialRequests; pkg/adsc/util.go
convertTypeURLToMCPGVK). The lists below mirror ConfigInitialRequests for each release line.
"""

from __future__ import annotations

from typing import Final

SERVICE_ENTRY: Final = "ServiceEntry"
WORKLOAD_ENTRY: Final = "WorkloadEntry"
SERVED_KINDS: Final = (SERVICE_ENTRY, WORKLOAD_ENTRY)

MESH_CONFIG: Final = "core/v1alpha1/MeshConfig"

# Inner (body) message names: always v1alpha3, even when the GVK says v1, because
# networking/v1 in istio/api is only Go type aliases.
BODY_TYPE: Final = {
    SERVICE_ENTRY: "type.googleapis.com/istio.networking.v1alpha3.ServiceEntry",
    WORKLOAD_ENTRY: "type.googleapis.com/istio.networking.v1alpha3.WorkloadEntry",
}
RESOURCE_TYPE: Final = "type.googleapis.com/istio.mcp.v1alpha1.Resource"

ISTIO_1_23: Final = (
    MESH_CONFIG,
    "security.istio.io/v1beta1/AuthorizationPolicy",
    "networking.istio.io/v1alpha3/DestinationRule",
    "networking.istio.io/v1alpha3/EnvoyFilter",
    "networking.istio.io/v1alpha3/Gateway",
    "security.istio.io/v1beta1/PeerAuthentication",
    "networking.istio.io/v1beta1/ProxyConfig",
    "security.istio.io/v1beta1/RequestAuthentication",
    "networking.istio.io/v1alpha3/ServiceEntry",
    "networking.istio.io/v1alpha3/Sidecar",
    "telemetry.istio.io/v1alpha1/Telemetry",
    "networking.istio.io/v1alpha3/VirtualService",
    "extensions.istio.io/v1alpha1/WasmPlugin",
    "networking.istio.io/v1alpha3/WorkloadEntry",
    "networking.istio.io/v1alpha3/WorkloadGroup",
)

ISTIO_1_29: Final = (
    MESH_CONFIG,
    "security.istio.io/v1/AuthorizationPolicy",
    "networking.istio.io/v1/DestinationRule",
    "networking.istio.io/v1alpha3/EnvoyFilter",
    "networking.istio.io/v1/Gateway",
    "security.istio.io/v1/PeerAuthentication",
    "networking.istio.io/v1beta1/ProxyConfig",
    "security.istio.io/v1/RequestAuthentication",
    "networking.istio.io/v1/ServiceEntry",
    "networking.istio.io/v1/Sidecar",
    "telemetry.istio.io/v1/Telemetry",
    "networking.istio.io/v1/VirtualService",
    "extensions.istio.io/v1alpha1/WasmPlugin",
    "networking.istio.io/v1/WorkloadEntry",
    "networking.istio.io/v1/WorkloadGroup",
)

ISTIO_1_30: Final = (
    *ISTIO_1_29[:11],
    "extensions.istio.io/v1alpha1/TrafficExtension",
    *ISTIO_1_29[11:],
)

INITIAL_REQUESTS: Final = {"1.23": ISTIO_1_23, "1.29": ISTIO_1_29, "1.30": ISTIO_1_30}


def initial_requests(istio_version: str) -> tuple[str, ...]:
    """The type URLs istiod of that minor version subscribes to, in its order."""
    major, _, rest = istio_version.partition(".")
    minor = int(rest.partition(".")[0] or 0) if major == "1" else 99
    if minor <= 23:
        return ISTIO_1_23
    if minor <= 29:
        return ISTIO_1_29
    return ISTIO_1_30


def served_kind(type_url: str) -> str | None:
    """The kind we serve under this type URL, or None for types we answer empty.

    Accepts every networking.istio.io version (v1alpha3, v1beta1, v1) and the older
    `type.googleapis.com/istio.networking.v1alpha3.X` spelling.
    """
    if type_url.startswith("networking.istio.io/"):
        parts = type_url.split("/")
        if len(parts) == 3 and parts[2] in SERVED_KINDS:
            return parts[2]
        return None
    for kind, body in BODY_TYPE.items():
        if type_url == body:
            return kind
    return None
