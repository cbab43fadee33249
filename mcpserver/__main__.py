"""The entry point: `python -m mcpserver` and the console script (pyproject.toml) both run
`main` from here.

The cyclic garbage collector is paused before anything else is imported. The CLI's imports
(~640 modules: gRPC, pydantic and the settings models, aiohttp, prometheus_client, ours)
grow the heap from nothing, and the collector walked it about 150 times meanwhile (one full
collection, 12 of the middle generation): ~40 ms of CPU, on the one thread that does all of
a cold start's work (0.95 s from spawn to istiod holding a 10k-service JSON file), for
little to find (below). `cli.main` resumes it for every command but `serve`, whose
collector stays paused until the first snapshot is served (runtime.py says why). Here, not
in cli.py: the tests import the CLI without running it.

The price: the cyclic garbage the imports drop (classes and functions the libraries make
and drop as they load: ~1,900 objects, 0.8 MiB) is frozen with the rest at the first
snapshot instead of collected. Collecting it after the imports is a full collection of
their heap, 26 ms.
"""

import gc

gc.disable()

from mcpserver.cli import main  # noqa: E402  after the pause: that is the point

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
