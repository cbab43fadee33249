"""The test Dubbo 3 provider (testbed/dubbo, built by `builds.dubbo_provider_classpath`) as a
process: it registers one interface, `mcpserver.demo.GreetingService`, of application
`greeter` version 1.0.0, in the registry its URL names (zookeeper:// address or nacos://),
and logs PROVIDER READY once exported."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from testbed.ports import free_port
from testbed.process import Process


class DubboProvider:
    """`registry`: a ZooKeeper address (host:port) or a `nacos://` URL. `own_home`: the
    JVM's user.home, nacos-client's log and snapshot directories (and the working
    directory) in `workdir`, for a nacos:// registry whose client writes there."""

    def __init__(self, classpath: str, registry: str, workdir: Path, own_home: bool = False):
        self.port = free_port()
        self.log = workdir / "provider.log"
        workdir.mkdir(parents=True, exist_ok=True)
        java = shutil.which("java") or "java"
        home = [
            f"-Duser.home={workdir}",
            f"-DJM.LOG.PATH={workdir / 'logs'}",
            f"-DJM.SNAPSHOT.PATH={workdir}",
        ]
        command = [
            java,
            "-Xmx256m",
            *(home if own_home else []),
            "-cp",
            classpath,
            "mcpserver.demo.Provider",
            registry,
            str(self.port),
            "greeter",
            "1.0.0",
        ]
        # Tests bind loopback only. Dubbo refuses 127.x (and then binds 0.0.0.0) but takes
        # IPv6's ::1, and registers it: so this also exercises IPv6 provider URLs.
        env = {**os.environ, "DUBBO_IP_TO_BIND": "::1"}
        cwd = workdir if own_home else None
        self.process = Process(command, self.log, cwd=cwd, env=env, fresh_log=True)

    def wait_ready(self, within: float = 120) -> None:
        self.process.wait_ready(
            "the Dubbo provider", lambda: "PROVIDER READY" in self.process.output(), within, 0.2
        )

    def stop(self) -> None:
        self.process.stop(grace=30)
