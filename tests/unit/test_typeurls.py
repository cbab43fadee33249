"""Type URL sets per Istio version, mirroring adsc ConfigInitialRequests."""

from __future__ import annotations

import pytest

from mcpserver.xds.typeurls import ISTIO_1_23, ISTIO_1_29, ISTIO_1_30, initial_requests, served_kind

pytestmark = pytest.mark.unit


def test_sets() -> None:
    assert len(ISTIO_1_23) == len(ISTIO_1_29) == 15
    assert len(ISTIO_1_30) == 16
    assert ISTIO_1_30[11] == "extensions.istio.io/v1alpha1/TrafficExtension"
    assert initial_requests("1.22") is ISTIO_1_23
    assert initial_requests("1.29.6") is ISTIO_1_29
    assert initial_requests("1.31") is ISTIO_1_30


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("networking.istio.io/v1/ServiceEntry", "ServiceEntry"),
        ("networking.istio.io/v1alpha3/ServiceEntry", "ServiceEntry"),
        ("networking.istio.io/v1beta1/WorkloadEntry", "WorkloadEntry"),
        ("type.googleapis.com/istio.networking.v1alpha3.ServiceEntry", "ServiceEntry"),
        ("networking.istio.io/v1/VirtualService", None),
        ("core/v1alpha1/MeshConfig", None),
        ("networking.istio.io/ServiceEntry", None),
    ],
)
def test_served_kind(url: str, kind: str | None) -> None:
    assert served_kind(url) == kind
