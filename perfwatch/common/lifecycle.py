"""A program's life around its HTTP server: bind, serve until SIGTERM or SIGINT, stop in order.

Both programs run the same way, so the exit codes and log lines are the same too: 1 and
"cannot listen on ADDRESS: reason" when the address cannot be bound, 1 when the program's own
start fails after the server is up, 0 and "stopped" after a signal.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable

from perfwatch.common.httpserver import Handler, WebServer
from perfwatch.common.webconfig import WebConfig


def stop_on_signals(log: logging.Logger) -> threading.Event:
    """An event that SIGTERM or SIGINT sets (and logs), for the main thread to wait on."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def serve(host: str, port: int, routes: dict[str, Handler], *, listen: str, server_name: str,
          web_config: WebConfig | None, log: logging.Logger,
          started: Callable[[WebServer], bool] | None = None,
          stopping: Callable[[], None] | None = None,
          cleanup: Callable[[], None] | None = None) -> int:
    """Serve `routes` on `host:port` until SIGTERM or SIGINT; the exit code. Call it from the main thread.

    `listen` is the address as the user wrote it, for the log. The program's own parts hook in:
    - `started(server)` once the server answers (log where, start the work); False: start-up
      failed, and it has logged why;
    - `stopping()` after a signal, or after `started` failed, while the server still answers;
    - `cleanup()` last, once the server no longer does (also when it could not listen): it
      releases what a request might still use.
    """
    try:
        server = WebServer(host, port, routes, server_name=server_name, web_config=web_config)
    except OSError as err:
        log.error("cannot listen on %s: %s", listen, err.strerror or err)
        if cleanup is not None:
            cleanup()
        return 1

    stop = stop_on_signals(log)
    server.start()
    ok = started is None or started(server)
    if ok:
        stop.wait()
    if stopping is not None:
        stopping()
    server.stop()
    if cleanup is not None:
        cleanup()
    if not ok:
        return 1
    log.info("stopped")
    return 0
