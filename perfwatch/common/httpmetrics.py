"""The HTTP server's own metrics (both programs serve them on /metrics) and the limiter that keeps
its repeated log lines (a failed login, a failed handshake, an accept error) to one a minute."""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Iterator

from perfwatch.common.families import CounterMetricFamily, GaugeMetricFamily, Metric

# accept() failures for want of a resource: retried after a pause, and counted by errno.
ACCEPT_RESOURCE_ERRORS = {errno.EMFILE: "EMFILE", errno.ENFILE: "ENFILE", errno.ENOBUFS: "ENOBUFS",
                          errno.ENOMEM: "ENOMEM"}
AUTH_FAILURE_REASONS = ("no_credentials", "unsupported_scheme", "malformed", "unknown_user", "wrong_password")
# A line that may repeat (per client, per cause) is logged at info or warning once in this long.
LOG_INTERVAL = 60.0


class LogLimiter:
    """Says whether a line about `key` (a client address) is news: the first in `interval` seconds.

    Bounded: at most `max_keys` keys are remembered. When that many have each been logged within
    `interval`, a new key is not news either, so a flood from many addresses cannot flood the log
    at info (its lines go to debug)."""

    def __init__(self, interval: float = LOG_INTERVAL, max_keys: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._last: dict[str, float] = {}  # in the order of their last news: oldest first
        self._lock = threading.Lock()

    def news(self, key: str) -> bool:
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                return False
            if last is None and len(self._last) >= self.max_keys:
                for old in list(self._last):
                    if now - self._last[old] < self.interval:
                        break
                    del self._last[old]
                if len(self._last) >= self.max_keys:
                    return False
            self._last.pop(key, None)
            self._last[key] = now
            return True

    def __len__(self) -> int:
        return len(self._last)


class HTTPMetrics:
    """The HTTP server's own metrics, as a prometheus_client collector.

    The program creates it, registers it in the registry its /metrics serves and hands it to the
    server (`WebServer(metrics=…)`, `lifecycle.serve(http_metrics=…)`), so both programs serve the
    same names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.connections = 0
        self.max_connections = 0
        self.limit_reached = 0
        self.accept_errors = dict.fromkeys([*ACCEPT_RESOURCE_ERRORS.values(), "other"], 0)
        self.tls_handshake_failures = 0
        self.auth_failures = dict.fromkeys(AUTH_FAILURE_REASONS, 0)

    def count(self, what: str, label: str = "") -> None:
        with self._lock:
            if what == "accept_errors":
                self.accept_errors[label if label in self.accept_errors else "other"] += 1
            elif what == "auth_failures":
                self.auth_failures[label if label in self.auth_failures else "malformed"] += 1
            else:
                setattr(self, what, getattr(self, what) + 1)

    def describe(self) -> Iterator[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            accept_errors = dict(self.accept_errors)
            auth_failures = dict(self.auth_failures)
            tls_failures, limit_reached = self.tls_handshake_failures, self.limit_reached
        yield GaugeMetricFamily("perfwatch_http_connections",
                                "HTTP connections open now (accepted and not yet closed).", value=self.connections)
        yield GaugeMetricFamily("perfwatch_http_max_connections",
                                "The most HTTP connections served at once (max_connections); at it, new "
                                "connections wait in the listen backlog.", value=self.max_connections)
        yield CounterMetricFamily("perfwatch_http_connection_limit_reached",
                                  "Times the HTTP server reached max_connections and stopped accepting.",
                                  value=limit_reached)
        errors = CounterMetricFamily("perfwatch_http_accept_errors",
                                     "accept() failures, by errno; EMFILE: out of file descriptors, retried "
                                     "after a pause.", labels=["error"])
        for name, count in accept_errors.items():
            errors.add_metric([name], count)
        yield errors
        yield CounterMetricFamily("perfwatch_http_tls_handshake_failures",
                                  "TLS handshakes that failed or timed out, plain HTTP to the TLS port included.",
                                  value=tls_failures)
        auth = CounterMetricFamily("perfwatch_http_auth_failures",
                                   "Requests refused with 401 by basic auth, by reason.", labels=["reason"])
        for reason, count in auth_failures.items():
            auth.add_metric([reason], count)
        yield auth
