"""The AWS Cloud Map registry: namespaces, services and their healthy instances, polled with
botocore (revision checks, reads only on change, a periodic full reconcile)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcpserver.registry.cloudmap.config import CloudMapRegistrySettings
from mcpserver.registry.kind import Kind, RegistryContext

if TYPE_CHECKING:
    from mcpserver.registry.cloudmap.watcher import CloudMapRegistry


def _build(settings: CloudMapRegistrySettings, context: RegistryContext) -> CloudMapRegistry:
    # botocore (about 0.6 s to import) is loaded only when a Cloud Map registry is configured
    from mcpserver.registry.cloudmap.watcher import CloudMapRegistry

    return CloudMapRegistry(settings, context.metrics)


# Cloud Map keeps registrations in AWS: nothing registers again after its API was out of
# reach, so a recovery needs no grace.
KIND = Kind("cloudmap", CloudMapRegistrySettings, _build, recovery_grace=0.0)
