"""The soak (issue 16): minutes of random churn across ZooKeeper, Consul and a static file,
with 16 istiod-like clients and the real istiod on one mcpserver process. At the end every
client's view, and istiod's, equals the registries' true state, and the process has leaked
no memory, asyncio tasks, threads or file descriptors.

`python -m tests.resilience.soak --minutes 10` (`make soak`); tests/resilience/test_soak.py
runs one minute of it in the test suite.
"""
