"""A program's life around its HTTP server: bind, serve until a signal, reload on SIGHUP, stop in order.

Both programs run the same way, so the exit codes and log lines are the same too: 1 and
"cannot listen on ADDRESS: reason" when the address cannot be bound, 1 when the program's own
start fails after the server is up, 0 and "stopped" after a signal.

Signals: every catchable one whose default action would end the process (SIGTERM, SIGINT,
SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM) stops the program cleanly, with its `stopping` hook run —
none kills it outright (the archiver's embedded PostgreSQL would be left running). SIGHUP, and
`POST /-/reload` when `--web.enable-lifecycle` is given (as in Prometheus), re-read the web
config file and call the program's `reload`; a config that does not load is refused and the
one in force stays.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import signal
import threading
from collections.abc import Callable
from typing import Any

from perfwatch.common.config import ConfigError
from perfwatch.common.httpmetrics import HTTPMetrics
from perfwatch.common.httpserver import (
    MAX_CONNECTIONS,
    Handler,
    Request,
    Response,
    WebServer,
    method_not_allowed,
    open_files_headroom,
)
from perfwatch.common.webconfig import WebConfig, load_web_config

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM)
RELOAD_SIGNAL = signal.SIGHUP
RELOAD_PATH = "/-/reload"
_HANDLED = frozenset({*STOP_SIGNALS, RELOAD_SIGNAL})
# File descriptors kept free beside max_connections before the start-up warning: logs, the
# listening socket, files a scrape opens for a moment.
_FD_RESERVE = 32


class Signals:
    """The signals above, as a queue the main thread reads.

    Python's own signal handler writes each signal's number into a pipe (`signal.set_wakeup_fd`),
    in whichever thread the kernel delivered it to, so the main thread blocked on the pipe wakes
    up even when a signal lands in another thread; the Python-level handlers do nothing. Logging,
    reloading and stopping happen in `wait()`'s caller, never inside a handler. The pipe stays
    open for the life of the process: a signal during the program's stop finds it still there."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)  # full: plenty are waiting already
        for signum in (*STOP_SIGNALS, RELOAD_SIGNAL):
            signal.signal(signum, self._handler)

    @staticmethod
    def _handler(_signum: int, _frame: object) -> None:
        """Nothing: installing a handler is what keeps the default action (death) away."""

    def wait(self) -> signal.Signals:
        """The next signal received (blocks until there is one)."""
        while True:
            data = os.read(self._read, 1)
            if data and data[0] in _HANDLED:
                return signal.Signals(data[0])


class Reloader:
    """Re-reads the web config and calls the program's own `reload`, one reload at a time.

    Everything is loaded and checked before anything changes: a web config that does not load, or
    a `reload` that raises ConfigError (the program's refusal), leaves the configs in force as they
    are. The web config is put in force last, once the program's reload went through."""

    def __init__(self, server: WebServer, web_config_path: str | None, reload: Callable[[], None] | None,
                 log: logging.Logger) -> None:
        self.server = server
        self.web_config_path = web_config_path
        self.reload = reload
        self.log = log
        self._lock = threading.Lock()

    def __call__(self, source: str) -> str | None:
        """Reload; None when done, else the reason it was refused (logged already)."""
        with self._lock:
            try:
                web_config: WebConfig | None = None
                if self.web_config_path:
                    web_config = load_web_config(self.web_config_path)
                    self.server.check_web_config(web_config)
                if self.reload is not None:
                    self.reload()
            except ConfigError as err:
                self.log.error("reload refused: %s; the config in force stays (%s)", err, source)
                return str(err)
            except Exception as err:
                self.log.error("reload failed: %s; the config in force stays (%s)", err, source, exc_info=True)
                return str(err) or type(err).__name__
            details = ""
            if self.web_config_path and web_config is not None:
                self.server.set_web_config(web_config)
                details = f"; web config {self.web_config_path}: {web_config.describe()}"
            self.log.info("reloaded (%s)%s", source, details)
            return None


def reload_routes(reloader: Reloader, enabled: bool) -> tuple[dict[str, Handler], dict[str, Handler]]:
    """`/-/reload` as Prometheus 2.42 answers it: GET and HEAD routes, POST and PUT routes."""

    def reload(_request: Request) -> Response:
        error = reloader(f"{_request.method} {RELOAD_PATH}")
        if error is not None:
            return Response(500, f"failed to reload config: {error}\n".encode())
        return Response(200)

    def disabled(_request: Request) -> Response:
        return Response(403, b"Lifecycle API is not enabled.")

    get = {RELOAD_PATH: method_not_allowed("POST, PUT", b"Only POST or PUT requests allowed")}
    return get, {RELOAD_PATH: reload if enabled else disabled}


def fit_open_files(max_connections: int, log: logging.Logger) -> None:
    """Make room for max_connections in the open-files limit: raise the soft limit (up to the hard
    one) when the descriptors open now and max_connections need more, as the perf collector does
    for its counters (Go programs raise it to the hard limit at start); warn when the hard limit
    does not allow it, since past it connections wait (accept: too many open files)."""
    headroom = open_files_headroom()
    if headroom is None:
        return
    used, soft = headroom
    want = used + max_connections + _FD_RESERVE
    if want <= soft:
        return
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if new > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            log.debug("open-files limit raised from %d to %d for max_connections %d", soft, new, max_connections)
            soft = new
        except (OSError, ValueError) as err:
            log.debug("cannot raise the open-files limit: %s", err)
    if want > soft:
        log.warning("max_connections %d and the %d files open now need more than the open-files limit %d: "
                    "connections past it wait (accept: too many open files); raise the limit (ulimit -n, "
                    "systemd's LimitNOFILE=) or lower max_connections", max_connections, used, soft)


def serve(host: str, port: int, routes: dict[str, Handler], *, listen: str, server_name: str,
          web_config: WebConfig | None, log: logging.Logger,
          started: Callable[[WebServer], bool] | None = None,
          stopping: Callable[[], None] | None = None,
          cleanup: Callable[[], None] | None = None,
          web_config_path: str | None = None,
          reload: Callable[[], None] | None = None,
          enable_lifecycle: bool = False,
          max_connections: int = MAX_CONNECTIONS,
          http_metrics: HTTPMetrics | None = None,
          post_routes: dict[str, Handler] | None = None,
          body_limits: dict[str, int] | None = None) -> int:
    """Serve `routes` on `host:port` until a stop signal; the exit code. Call it from the main thread.

    `listen` is the address as the user wrote it, for the log. The program's own parts hook in:
    - `started(server)` once the server answers (log where, start the work); False: start-up
      failed, and it has logged why;
    - `stopping()` after a signal, or after `started` failed, while the server still answers;
    - `cleanup()` last, once the server no longer does (also when it could not listen): it
      releases what a request might still use;
    - `reload()` at SIGHUP or `POST /-/reload` (`enable_lifecycle`), after `web_config_path`
      (the file `web_config` came from) has been re-read and found good: re-read the program's
      own config and put it in force, or raise ConfigError to refuse it (nothing changes then).
    `http_metrics`: the server's collector, which the program has registered in its registry.
    `post_routes` and `body_limits`: the program's own POST routes, and the bodies they read.
    """
    try:
        server = WebServer(host, port, dict(routes), server_name=server_name, web_config=web_config,
                           max_connections=max_connections, metrics=http_metrics,
                           post_routes=dict(post_routes or {}), body_limits=body_limits)
    except OSError as err:
        log.error("cannot listen on %s: %s", listen, err.strerror or err)
        if cleanup is not None:
            cleanup()
        return 1
    reloader = Reloader(server, web_config_path, reload, log)
    get_reload, post_reload = reload_routes(reloader, enable_lifecycle)
    server.routes.update(get_reload)
    server.post_routes.update(post_reload)

    signals = Signals()
    server.start()
    ok = started is None or started(server)
    if ok:
        fit_open_files(max_connections, log)
        while True:
            signum = signals.wait()
            if signum == RELOAD_SIGNAL:
                reloader(signum.name)
                continue
            log.info("received %s, shutting down", signum.name)
            break
    if stopping is not None:
        stopping()
    server.stop()
    if cleanup is not None:
        cleanup()
    if not ok:
        return 1
    log.info("stopped")
    return 0


def add_web_arguments(parser: argparse.ArgumentParser, program: str, default: Any = None) -> None:
    """The options of the HTTP server both programs share (as Prometheus and its exporters name
    them); `default`: argparse.SUPPRESS where a subcommand must not overwrite them."""
    parser.add_argument("--web-config", "--web.config.file", metavar="FILE", dest="web_config", default=default,
                        help="TLS and basic-auth config in exporter-toolkit's web-config.yml format (the file "
                        "node_exporter reads; see README, Authentication and TLS)")
    parser.add_argument("--web.max-connections", type=positive_int, metavar="N", dest="max_connections",
                        default=default, help="most HTTP connections served at once; more wait in the listen "
                        f"backlog (default: the config's max_connections, else {MAX_CONNECTIONS})")
    parser.add_argument("--web.enable-lifecycle", action="store_true", dest="enable_lifecycle", default=default,
                        help=f"let POST /-/reload reload {program}'s config, as SIGHUP does (as in Prometheus; "
                        "without it /-/reload answers 403)")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value
