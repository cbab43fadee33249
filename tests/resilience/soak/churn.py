"""Random, seeded churn of the three registries: each churner makes one small change per
`step()` (blocking I/O: the caller runs it in a thread) and counts what it did.

Each registry's instances stay between LOW and HIGH, and a step removes at most a few, so no
rebuild ever sees a mass removal that protection would hold (more than half of a registry's
instances) when each update is judged alone (the soak's mcpserver sets protection.window to
0s: over a minute the walk can lose more than half): the soak measures leaks and
convergence, not the hold. Addresses are unique per
registry, so one address is one endpoint.

`reshape(shape)` steps a registry back towards the service names it had at a checkpoint:
mcpserver keeps per-service state (a Consul watch task and its connection per service), so
tasks and descriptors are compared at equal shapes, and a leak is what remains.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from kazoo.client import KazooClient

from testbed.consulagent import ConsulAgent
from tests.resilience.soak.truth import DUBBO_ROOT

LOW, HIGH = 12, 40  # instances per registry
START_SERVICES, START_INSTANCES = 6, 3


@dataclass
class Addresses:
    """Unique addresses, 10.<registry>.x.y."""

    registry: int
    used: int = 0

    def next(self) -> str:
        self.used += 1
        return f"10.{self.registry}.{self.used // 250}.{self.used % 250 + 1}"


@dataclass
class Churner:
    rng: random.Random
    counts: Counter[str] = field(default_factory=Counter)

    def instances(self) -> int:
        raise NotImplementedError

    def pick_op(self, ops: dict[str, int]) -> str:
        """One op by weight; adds only below LOW, removals only above HIGH."""
        total = self.instances()
        if total <= LOW:
            ops = {k: v for k, v in ops.items() if not k.endswith("-")}
        elif total >= HIGH:
            ops = {k: v for k, v in ops.items() if not k.endswith("+")}
        return self.rng.choices(list(ops), weights=list(ops.values()))[0]


@dataclass
class Provider:
    address: str
    port: int
    version: str
    weight: int
    enabled: bool
    path: str = ""


@dataclass
class DubboChurn(Churner):
    """Dubbo interface-level providers (ephemeral nodes, as Dubbo registers them); a changed
    provider is re-registered as a new node, as Dubbo does."""

    zk: KazooClient | None = None
    interfaces: dict[str, dict[str, Provider]] = field(default_factory=dict)
    addresses: Addresses = field(default_factory=lambda: Addresses(1))
    made: int = 0

    def instances(self) -> int:
        return sum(len(p) for p in self.interfaces.values())

    def populate(self) -> None:
        for _ in range(START_SERVICES):
            self._add_interface(START_INSTANCES)

    def step(self) -> None:
        ops = {"provider+": 3, "provider-": 3, "provider~": 4, "interface+": 1, "interface-": 1}
        op = self.pick_op(ops)
        populated = [i for i, p in self.interfaces.items() if p]
        if op == "provider+" and self.interfaces:
            self._register(self.rng.choice(sorted(self.interfaces)), self._provider())
        elif op == "provider-" and populated:
            interface = self.rng.choice(sorted(populated))
            self._unregister(interface, self.rng.choice(sorted(self.interfaces[interface])))
        elif op == "provider~" and populated:
            interface = self.rng.choice(sorted(populated))
            old = self.interfaces[interface][self.rng.choice(sorted(self.interfaces[interface]))]
            self._unregister(interface, old.address)
            self._register(interface, self._changed(old))
        elif op == "interface+":
            self._add_interface(self.rng.randint(1, 3))
        elif op == "interface-" and len(self.interfaces) > 2:
            small = [i for i, p in self.interfaces.items() if len(p) <= 3]
            if not small:
                return
            self._remove_interface(self.rng.choice(sorted(small)))
        else:
            return
        self.counts[op] += 1

    def shape(self) -> frozenset[str]:
        return frozenset(self.interfaces)

    def reshape(self, shape: frozenset[str]) -> bool:
        """One step towards the interfaces of `shape`; False when there."""
        extra = sorted(self.interfaces.keys() - shape)
        if extra:
            providers = self.interfaces[extra[0]]
            if providers:
                self._unregister(extra[0], sorted(providers)[0])
            else:
                self._remove_interface(extra[0])
            return True
        missing = sorted(shape - self.interfaces.keys())
        if missing:
            self.interfaces[missing[0]] = {}
            self._register(missing[0], self._provider())
            return True
        return False

    def _client(self) -> KazooClient:
        assert self.zk is not None
        return self.zk

    def _provider(self) -> Provider:
        return Provider(
            self.addresses.next(),
            self.rng.choice((20880, 20880, 20881)),
            self.rng.choice(("1.0.0", "1.1.0")),
            self.rng.choice((100, 200)),
            enabled=True,
        )

    def _changed(self, old: Provider) -> Provider:
        change = self.rng.choice(("port", "version", "weight", "enabled"))
        new = Provider(old.address, old.port, old.version, old.weight, old.enabled)
        if change == "port":
            new.port = 20881 if old.port == 20880 else 20880
        elif change == "version":
            new.version = "1.1.0" if old.version == "1.0.0" else "1.0.0"
        elif change == "weight":
            new.weight = 300 - old.weight
        else:
            new.enabled = not old.enabled
        return new

    def _add_interface(self, providers: int) -> None:
        self.made += 1
        interface = f"org.soak.Service{self.made}"
        self.interfaces[interface] = {}
        for _ in range(providers):
            self._register(interface, self._provider())

    def _register(self, interface: str, provider: Provider) -> None:
        query = "&".join(
            f"{k}={v}"
            for k, v in (
                ("application", "soak"),
                ("enabled", str(provider.enabled).lower()),
                ("interface", interface),
                ("side", "provider"),
                ("timestamp", str(int(time.time() * 1000))),
                ("version", provider.version),
                ("weight", str(provider.weight)),
            )
        )
        url = f"dubbo://{provider.address}:{provider.port}/{interface}?{query}"
        provider.path = f"{DUBBO_ROOT}/{interface}/providers/{quote(url, safe='')}"
        self._client().create(provider.path, b"", makepath=True, ephemeral=True)
        self.interfaces[interface][provider.address] = provider

    def _unregister(self, interface: str, address: str) -> None:
        provider = self.interfaces[interface].pop(address)
        self._client().delete(provider.path)

    def _remove_interface(self, interface: str) -> None:
        self.interfaces.pop(interface)
        self._client().delete(f"{DUBBO_ROOT}/{interface}", recursive=True)


@dataclass
class ConsulInstance:
    address: str
    port: int
    version: str
    zone: str
    passing: bool = True


@dataclass
class ConsulChurn(Churner):
    """Consul service instances on the agent: registered, deregistered, re-registered with
    other tags and meta, and their TTL checks passed or failed."""

    agent: ConsulAgent | None = None
    services: dict[str, dict[str, ConsulInstance]] = field(default_factory=dict)
    addresses: Addresses = field(default_factory=lambda: Addresses(2))
    made: int = 0

    def instances(self) -> int:
        return sum(len(i) for i in self.services.values())

    def populate(self) -> None:
        for _ in range(START_SERVICES):
            name = self._new_name()
            for _ in range(START_INSTANCES):
                self._register(name, self._instance())

    def step(self) -> None:
        ops = {"instance+": 3, "instance-": 3, "retag": 3, "health": 3}
        op = self.pick_op(ops) if self.services else "instance+"
        if op == "instance+":
            fresh = self.rng.random() < 0.2 or not self.services
            name = self._new_name() if fresh else self.rng.choice(sorted(self.services))
            self._register(name, self._instance())
        else:
            name = self.rng.choice(sorted(self.services))
            ident = self.rng.choice(sorted(self.services[name]))
            instance = self.services[name][ident]
            if op == "instance-":
                self._deregister(name, ident)
            elif op == "retag":
                instance.version = "v2" if instance.version == "v1" else "v1"
                instance.zone = self.rng.choice(("z1", "z2", "z3"))
                instance.port = self.rng.choice((8080, 8080, 8081))
                self._register(name, instance, ident)
            else:
                instance.passing = not instance.passing
                verdict = "pass" if instance.passing else "fail"
                self._client().request("PUT", f"/v1/agent/check/{verdict}/service:{ident}")
        self.counts[op] += 1

    def shape(self) -> frozenset[str]:
        return frozenset(self.services)

    def reshape(self, shape: frozenset[str]) -> bool:
        extra = sorted(self.services.keys() - shape)
        if extra:
            self._deregister(extra[0], sorted(self.services[extra[0]])[0])
            return True
        missing = sorted(shape - self.services.keys())
        if missing:
            self._register(missing[0], self._instance())
            return True
        return False

    def _client(self) -> ConsulAgent:
        assert self.agent is not None
        return self.agent

    def _new_name(self) -> str:
        self.made += 1
        return f"soak-{self.made}"

    def _instance(self) -> ConsulInstance:
        return ConsulInstance(
            self.addresses.next(),
            self.rng.choice((8080, 8080, 8081)),
            self.rng.choice(("v1", "v2")),
            self.rng.choice(("z1", "z2", "z3")),
        )

    def _register(self, name: str, instance: ConsulInstance, ident: str | None = None) -> None:
        ident = ident or f"{name}-{instance.address}"
        self._client().register(
            Name=name,
            ID=ident,
            Address=instance.address,
            Port=instance.port,
            Tags=[f"version={instance.version}"],
            Meta={"zone": instance.zone},
            # a TTL far beyond the run: only the churn decides health
            Check={"TTL": "24h", "Status": "passing" if instance.passing else "critical"},
        )
        self.services.setdefault(name, {})[ident] = instance

    def _deregister(self, name: str, ident: str) -> None:
        self._client().deregister(ident)
        del self.services[name][ident]
        if not self.services[name]:
            del self.services[name]


@dataclass
class StaticChurn(Churner):
    """The static file: services added, changed and removed, the file replaced whole by a
    rename each time (as an editor or a config-management tool writes it)."""

    path: Path | None = None
    services: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    addresses: Addresses = field(default_factory=lambda: Addresses(3))
    made: int = 0

    def instances(self) -> int:
        return sum(len(i) for i in self.services.values())

    def populate(self) -> None:
        for _ in range(START_SERVICES):
            self._add_service(START_INSTANCES)
        self._write()

    def step(self) -> None:
        ops = {"service+": 1, "service-": 1, "instance+": 3, "instance-": 3, "instance~": 4}
        op = self.pick_op(ops)
        if op == "service+":
            self._add_service(self.rng.randint(1, 3))
        elif op == "service-":
            small = [s for s, i in self.services.items() if len(i) <= 3]
            if len(self.services) <= 2 or not small:
                return
            del self.services[self.rng.choice(sorted(small))]
        else:
            instances = self.services[self.rng.choice(sorted(self.services))]
            if op == "instance+":
                instances.append(self._instance())
            elif op == "instance-":
                if len(instances) <= 1:  # a service with no instance: that is service-
                    return
                instances.pop(self.rng.randrange(len(instances)))
            else:
                self._change(instances[self.rng.randrange(len(instances))])
        self._write()
        self.counts[op] += 1

    def shape(self) -> frozenset[str]:
        return frozenset()  # no per-service state in the server: nothing to reshape

    def reshape(self, shape: frozenset[str]) -> bool:
        return False

    def _add_service(self, instances: int) -> None:
        self.made += 1
        self.services[f"static-{self.made}"] = [self._instance() for _ in range(instances)]

    def _instance(self) -> dict[str, Any]:
        instance: dict[str, Any] = {"address": self.addresses.next(), "labels": {"version": "v1"}}
        if self.rng.random() < 0.3:
            instance["ports"] = {"http": 9090}
        return instance

    def _change(self, instance: dict[str, Any]) -> None:
        if self.rng.random() < 0.5:
            version = instance["labels"]["version"]
            instance["labels"]["version"] = "v2" if version == "v1" else "v1"
        elif "ports" in instance:
            del instance["ports"]
        else:
            instance["ports"] = {"http": 9090}

    def _write(self) -> None:
        assert self.path is not None
        services = [
            {
                "name": name,
                "namespace": "soak",
                "host": f"{name}.soak.mesh",
                "ports": [{"name": "http", "number": 8080, "protocol": "HTTP"}],
                "instances": instances,
            }
            for name, instances in sorted(self.services.items())
        ]
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(yaml.safe_dump({"services": services}))
        partial.replace(self.path)
