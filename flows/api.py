"""The Prefect API a command's flow run reports to: PREFECT_API_URL when set, else a temporary
server of the command's own, started before anything else so that it boots while the config loads.

Prefect would start a temporary server by itself, but only once the flow calls the API, and only
after importing the whole server into the flow's process (seconds and ~100 MiB in every run). This one is the same app (`prefect.server.api.server:create_app` under uvicorn, in
Prefect's temporary-server mode: no UI, only the services one run needs) in a subprocess from the start.
It ends with the command, whatever ended it (`kill -9` included): it reads a pipe from the command
until the pipe closes, and on Linux the kernel also signals it when its parent dies.
"""
from __future__ import annotations

import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tasks.errors import UserError

_temporary: list[str] = []  # the API URLs of the servers started here


@contextmanager
def temporary_api() -> Iterator[None]:
    """PREFECT_API_URL pointed at a temporary server while open, unless it names one already; the
    server stops when the process exits."""
    from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_UI_URL, temporary_settings

    if PREFECT_API_URL.value():
        yield
        return
    with socket.socket() as probe:  # a free port, as the kernel picks one
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # no telemetry unless the user asks for it: runs are offline, and its failure is logged as an ERROR
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", **os.environ, "PREFECT_UI_ENABLED": "false",
           "PREFECT__SERVER_EPHEMERAL": "1"}
    server = subprocess.Popen([sys.executable, "-m", "flows.api", str(port)], env=env, stdin=subprocess.PIPE)
    atexit.register(stop, server)  # at exit, after Prefect has sent its last logs and events (registered later)
    url = f"http://127.0.0.1:{port}/api"
    _temporary.append(url)
    # It serves no UI: no "View at" links. Flow heartbeats tell a server that a run's process died;
    # this one dies with it, and each flow's end waits up to 1 s for the heartbeat thread.
    with temporary_settings({PREFECT_API_URL: url, PREFECT_UI_URL: "", PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def stop(server: subprocess.Popen) -> None:
    """Stop a temporary server and wait for it to exit."""
    server.terminate()
    server.wait()


def serve(port: int) -> None:
    """The temporary server's process: Prefect's API on 127.0.0.1:`port` until it is stopped or the
    process that started it is gone."""
    import uvicorn

    parent = os.getppid()
    if sys.platform == "linux":  # the kernel sends SIGTERM when the parent dies
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    threading.Thread(target=stop_when_closed, args=(parent,), daemon=True).start()
    uvicorn.run("prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=port,
                log_level="error", lifespan="on")


def stop_when_closed(parent: int) -> None:
    """SIGTERM to this process once stdin, a pipe the parent holds open, closes (the parent is gone)."""
    if os.getppid() == parent:  # else it died before the kernel was told to signal
        while os.read(0, 4096):  # the file descriptor itself: sys.stdin's lock would stall the exit
            pass
    os.kill(os.getpid(), signal.SIGTERM)


def wait_for_api() -> None:
    """Return once the Prefect API answers, saying so when it is a temporary one; a UserError naming
    it when it has not within PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS."""
    from prefect.logging import get_logger
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    url, timeout = PREFECT_API_URL.value(), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                if url in _temporary:
                    get_logger().info("Prefect API: a temporary server at %s, stopped at exit (set "
                                      "PREFECT_API_URL to report to a running one)", url)
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise UserError(f"the Prefect API at {url} did not answer within {timeout} s: is the server up? "
                            "(PREFECT_API_URL names it; unset, a temporary one is started)")
        time.sleep(0.05)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
