"""The test bed: the real components the integration tests, the resilience tests and the
benchmarks run against (a Kubernetes control plane, istiod, Envoy, ZooKeeper, Consul, r-nacos,
Eureka, a local Cloud Map API, podman images), how each is built or fetched into the cache
(`builds`), and how each runs as a process (`process`).

A package of its own, beside `tests/` and `bench/`, so that both import it and a unit-test
session never loads it: nothing under `tests/conftest.py` imports it at module level. It is
not part of the installed `mcpserver` distribution.
"""
