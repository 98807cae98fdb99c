"""A synthetic exporter: a real HTTP server whose every answer the test can predict and check.

Scrape number n (0, 1, …) serves counters that reset every `reset_every` scrapes, gauges, a
histogram, and label values full of quotes, backslashes, newlines, unicode and SQL. It records
each scrape it answered, so a test can compare the archive with what was really served.
"""

from __future__ import annotations

import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Label values that break naive escaping, quoting or SQL.
NASTY_VALUES = (
    'say "hi"',
    "back\\slash\\",
    "two\nlines",
    "ünïcödé ☃ 🙂 中文",
    "'; DROP TABLE series; --",
    "$1 %s {} \\n literal",
)


def counter_value(n: int, reset_every: int) -> float:
    """Grows by a varying step, and restarts from a small value every `reset_every` scrapes."""
    k = n % reset_every
    return 3.0 + sum(1.5 + (i * 7 % 5) for i in range(k)) + (n // reset_every) * 0.25


def gauge_value(n: int) -> float:
    return round(20.0 + 10.0 * math.sin(n / 3.0), 6)


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def exposition(n: int, reset_every: int = 7, wide: int = 0, bad_timestamp: bool = False) -> str:
    """Scrape n's body; `wide` adds that many series of one gauge (synthetic_wide{i}, value n), and
    `bad_timestamp` a sample whose timestamp no archive can store (year 2^40 ms from now)."""
    c = counter_value(n, reset_every)
    lines = [
        "# HELP synthetic_requests_total Requests served.",
        "# TYPE synthetic_requests_total counter",
        f'synthetic_requests_total{{code="200"}} {c}',
        f'synthetic_requests_total{{code="500"}} {c / 3}',
        "# HELP synthetic_temperature_celsius A gauge.",
        "# TYPE synthetic_temperature_celsius gauge",
        f"synthetic_temperature_celsius {gauge_value(n)}",
        "# HELP synthetic_scrape_number Which scrape this is (0, 1, …).",
        "# TYPE synthetic_scrape_number gauge",
        f"synthetic_scrape_number {n}",
        "# TYPE synthetic_latency_seconds histogram",
        f'synthetic_latency_seconds_bucket{{le="0.1"}} {n}',
        f'synthetic_latency_seconds_bucket{{le="+Inf"}} {2 * n}',
        f"synthetic_latency_seconds_sum {n * 0.15}",
        f"synthetic_latency_seconds_count {2 * n}",
        "# TYPE synthetic_stale gauge",
        "synthetic_stale NaN",
        "# TYPE synthetic_nasty_info gauge",
    ]
    lines += [f'synthetic_nasty_info{{value="{escape(v)}",index="{i}"}} 1' for i, v in enumerate(NASTY_VALUES)]
    if wide:
        lines.append("# TYPE synthetic_wide gauge")
        lines += [f'synthetic_wide{{i="{i}"}} {n}' for i in range(wide)]
    if bad_timestamp:
        lines += ["# TYPE synthetic_from_the_future gauge", f"synthetic_from_the_future {n} {2**53}"]
    return "\n".join(lines) + "\n"


def filler(size: int) -> bytes:
    """A valid exposition body of `size` bytes or a little more (one gauge, many series)."""
    line = 'synthetic_filler{{i="{:09d}",padding="{}"}} 1\n'
    out = [b"# TYPE synthetic_filler gauge\n"]
    total, i = len(out[0]), 0
    while total < size:
        chunk = line.format(i, "x" * 40).encode()
        out.append(chunk)
        total += len(chunk)
        i += 1
    return b"".join(out)


class SyntheticExporter:
    """Serves `exposition(n)` on /metrics. `mode`: ok, malformed, error (HTTP 500), slow, endless
    (a chunked body that never ends, until the client hangs up), huge (`huge_bytes` of valid
    exposition). `wide` and `bad_timestamp`: see exposition()."""

    def __init__(self, reset_every: int = 7, slow_seconds: float = 2.0, wide: int = 0, bad_timestamp: bool = False,
                 mode: str = "ok", huge_bytes: int = 0) -> None:
        self.reset_every = reset_every
        self.slow_seconds = slow_seconds
        self.wide = wide
        self.bad_timestamp = bad_timestamp
        self.huge = filler(huge_bytes) if huge_bytes else b""
        self.abandoned = 0  # endless or huge bodies the client stopped reading
        self.mode = mode
        self.served: list[tuple[float, int]] = []  # (time the answer was sent, scrape number)
        self._lock = threading.Lock()
        self._n = 0
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path != "/metrics":
                    self._answer(404, b"not found\n")
                    return
                mode = exporter.mode
                if mode == "error":
                    self._answer(500, b"internal error\n")
                elif mode == "malformed":
                    self._answer(200, b"# TYPE broken gauge\nbroken{unterminated=\"x} 1\n")
                elif mode == "slow":
                    time.sleep(exporter.slow_seconds)
                    self._answer(200, b"late 1\n")
                elif mode == "endless":
                    self._endless()
                elif mode == "huge":
                    self._answer(200, exporter.huge)
                else:
                    with exporter._lock:
                        n = exporter._n
                        exporter._n += 1
                        body = exposition(n, exporter.reset_every, exporter.wide, exporter.bad_timestamp).encode()
                        self._answer(200, body)
                        exporter.served.append((time.time(), n))

            def _endless(self) -> None:
                head = b"# TYPE synthetic_endless gauge\n"
                # Long lines: bytes, not samples, are what this body has too many of.
                pad = "x" * 2000
                block = b"".join(f'synthetic_endless{{i="{i}",pad="{pad}"}} 1\n'.encode() for i in range(25))
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    self.wfile.write(f"{len(head):x}\r\n".encode() + head + b"\r\n")
                    while True:
                        self.wfile.write(f"{len(block):x}\r\n".encode() + block + b"\r\n")
                except OSError:
                    with exporter._lock:
                        exporter.abandoned += 1

            def _answer(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # the scraper gave up (timeout) and closed the connection

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.instance = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> SyntheticExporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def served_numbers(self, before: float | None = None) -> list[int]:
        with self._lock:
            return [n for t, n in self.served if before is None or t < before]
