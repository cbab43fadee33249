"""Leader election on a coordination.k8s.io Lease, so that one replica of a set writes to the
apiserver while the others stand by warm (they run the same pipeline and hold the same
served set, so a new leader's first sync writes only what changed in between).

The rules are client-go's (k8s.io/client-go/tools/leaderelection/leaderelection.go,
tryAcquireOrRenew): a lease held by another is taken only after it went unrenewed for its
duration, measured on our own clock from when we last saw its record change (never by
comparing clocks across machines); a leader that cannot renew within `renew_deadline` stops
writing before its lease can expire; a replica that stops hands the lease over at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from mcpserver.sink.client import ApiError, KubeClient

log = logging.getLogger("mcpserver.sink")

PATH = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


def micro_time(at: float | None = None) -> str:
    """Kubernetes' MicroTime (RFC 3339 with microseconds)."""
    moment = datetime.fromtimestamp(time.time() if at is None else at, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseLostError(Exception):
    """This replica stopped being the leader."""


class Lease:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        duration: float,
        renew_deadline: float,
        retry_period: float,
    ) -> None:
        self._client = client
        self._collection = PATH.format(namespace=namespace)
        self._path = f"{self._collection}/{name}"
        self.namespace, self.name, self.identity = namespace, name, identity
        self._duration = duration
        self._renew_deadline = renew_deadline
        self._retry = retry_period
        self._observed: dict[str, Any] | None = None
        self._observed_at = 0.0
        self.holder = ""
        """Who holds it, as last seen."""
        self.leading = False
        self.error = ""
        """Why the last attempt failed (the apiserver unreachable, RBAC), "" when it did not."""

    async def acquire(self) -> None:
        """Return once this replica holds the lease."""
        # polled: the lease's state lives in the apiserver, not in an event of ours
        while not await self._try():  # noqa: ASYNC110
            await asyncio.sleep(self._retry)
        if not self.leading:
            log.info(
                "kubernetes sink: leading (lease %s/%s, identity %s)",
                self.namespace,
                self.name,
                self.identity,
            )
        self.leading = True

    async def hold(self) -> None:
        """Renew every retry period; raise LeaseLostError when a renewal did not succeed within
        the renew deadline (before the lease can expire for the others)."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self._retry)
            try:
                ok = await asyncio.wait_for(self._try(), self._renew_deadline)
            except TimeoutError:
                ok = False
            if ok:
                renewed = time.monotonic()
            elif time.monotonic() - renewed >= self._renew_deadline or self.holder not in (
                "",
                self.identity,
            ):
                self.leading = False
                log.warning(
                    "kubernetes sink: stopped leading (lease %s/%s, holder now %r)%s",
                    self.namespace,
                    self.name,
                    self.holder,
                    f": {self.error}" if self.error else "",
                )
                raise LeaseLostError(self.holder)

    async def release(self) -> None:
        """Hand the lease over (on shutdown), so a standby takes over without waiting for it
        to expire. Never raises."""
        if not self.leading or self._observed is None:
            return
        self.leading = False
        lease = self._observed
        spec = {**lease.get("spec", {}), "holderIdentity": "", "leaseDurationSeconds": 1}
        try:
            await self._client.request(
                "PUT", self._path, body={**lease, "spec": spec}, allow=frozenset({409})
            )
        except ApiError as err:
            log.warning("kubernetes sink: could not release the lease: %s", err)

    async def _try(self) -> bool:
        """client-go's tryAcquireOrRenew: True when this replica holds the lease now."""
        try:
            return await self._attempt()
        except ApiError as err:
            self.error = str(err)
            return False

    async def _attempt(self) -> bool:
        found = await self._client.request("GET", self._path, allow=frozenset({404}))
        now = time.time()
        fresh = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self._duration)),
            "acquireTime": micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": 0,
        }
        if found.status == 404:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": fresh,
            }
            created = await self._client.request(
                "POST", self._collection, body=body, allow=frozenset({409})
            )
            if created.status == 409:
                return False
            self._observe(created.body)
            self.error = ""
            return True
        lease = found.body
        spec = lease.get("spec") or {}
        if self._observed is None or self._observed.get("spec") != spec:
            self._observe(lease)
        holder = str(spec.get("holderIdentity") or "")
        self.holder = holder
        expired = time.monotonic() > self._observed_at + float(
            spec.get("leaseDurationSeconds") or self._duration
        )
        if holder and holder != self.identity and not expired:
            self.error = ""
            return False
        if holder == self.identity:
            fresh["acquireTime"] = spec.get("acquireTime") or fresh["acquireTime"]
            fresh["leaseTransitions"] = int(spec.get("leaseTransitions") or 0)
        else:
            fresh["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        updated = await self._client.request(
            "PUT", self._path, body={**lease, "spec": fresh}, allow=frozenset({409})
        )
        if updated.status == 409:
            return False
        self._observe(updated.body)
        self.error = ""
        return True

    def _observe(self, lease: dict[str, Any]) -> None:
        self._observed = lease
        self._observed_at = time.monotonic()
        self.holder = str((lease.get("spec") or {}).get("holderIdentity") or "")
