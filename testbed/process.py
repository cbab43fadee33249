"""How a test-bed server runs: started with its output in a log file, and stopped with a grace
period, by the kernel too when the test process dies without teardown."""

from __future__ import annotations

import shutil
import signal
import subprocess


def dying_with_us(command: list[str]) -> list[str]:
    """The command, SIGTERMed by the kernel when the test process dies (util-linux setpriv),
    so that a pytest killed without teardown (a CI timeout) leaves no server behind.

    The kernel ties the signal to the *thread* that started the child: a server started in
    a worker thread (`asyncio.to_thread(server.start)`) dies when that thread ends, which
    for the loop's default executor is when the test's event loop closes. Start servers
    that must outlive the test from the main thread (wait for them in a worker)."""
    setpriv = shutil.which("setpriv")
    return command if setpriv is None else [setpriv, "--pdeathsig", "TERM", "--", *command]


def terminate(
    process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, grace: float = 15.0
) -> None:
    """Ask a test server to stop, and kill it if it does not within `grace` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
