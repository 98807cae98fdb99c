"""What basic auth and TLS add to a scrape: many concurrent scrapes of real exporters on loopback.

    .venv/bin/python tests/bench/bench_auth.py [--clients 16] [--requests 400] [--cost 10] [--seconds 20]

Started, each a perfwatch-exporter process with the same collectors:

- `plain`: no web config;
- `auth`: basic auth (one user, bcrypt cost `--cost`), cache of verified credentials on;
- `auth, no cache`: the same, with the cache's size set to 0 in that process, so every request
  pays a bcrypt check (what an exporter without the cache does);
- `tls+auth`: TLS (a CA made here) and basic auth, cache on.

Each is hit by one client, then by `--clients` threads at once, `--requests` requests in all
(fewer if `--seconds` runs out), each thread on its own keep-alive connection, on `/-/ready` (no
work behind it: the cost of auth alone) and `/metrics` (a real scrape). The rows take turns in
`--rounds` rounds so that changes in the machine's load hit them alike. Also `auth, wrong password` (401s, bcrypt at
every request, cache or not) and `tls+auth, new connection per request` (a TLS handshake each).
Printed: requests done, median/p90/p99 latency, requests per second, and the median's ratio to
`plain` measured in the same run. In process: one bcrypt check against one cached check, and the
cache's size after many right and wrong attempts.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import bcrypt  # noqa: E402
from support.pki import PKI  # noqa: E402
from support.procs import free_port  # noqa: E402

from perfwatch.common.basicauth import BasicAuth  # noqa: E402

USER, PASSWORD = "prometheus", "bench-password"


class Exporter:
    def __init__(self, name: str, workdir: Path, web_config: Mapping[str, object] | None, *, no_cache: bool = False,
                 tls: ssl.SSLContext | None = None) -> None:
        self.name, self.port, self.tls = name, free_port(), tls
        args = ["--listen", f"127.0.0.1:{self.port}", "--log-level", "warning"]
        if web_config is not None:
            path = workdir / f"{name.replace(' ', '_').replace(',', '')}.yml"
            path.write_text(yaml.safe_dump(web_config))
            args += ["--web-config", str(path)]
        if no_cache:
            # This script again, as a child that sets the cache size to 0 and runs the exporter.
            argv = [sys.executable, __file__, "--child-no-cache", *args]
        else:
            argv = [sys.executable, "-m", "perfwatch.exporter", *args]
        self.log = open(workdir / f"{self.port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = self.connect()
                conn.request("GET", "/-/healthy")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{name} did not start: {(workdir / f'{self.port}.log').read_text()}") \
                        from None
                time.sleep(0.1)

    def connect(self) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.tls, timeout=60)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()


def run_load(exporter: Exporter, path: str, headers: dict[str, str], clients: int, requests: int,
             seconds: float, reuse: bool = True) -> tuple[list[float], dict[int, int], float]:
    """`clients` threads, `requests` requests in all or until `seconds` pass: latencies, statuses, wall time."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    remaining = [requests]
    deadline = time.monotonic() + seconds

    def take() -> bool:
        with lock:
            if remaining[0] <= 0 or time.monotonic() > deadline:
                return False
            remaining[0] -= 1
            return True

    def worker() -> None:
        conn = exporter.connect()
        while take():
            if not reuse:
                conn.close()
                conn = exporter.connect()
            start = time.perf_counter()
            conn.request("GET", path, headers={"Accept-Encoding": "gzip", **headers})
            response = conn.getresponse()
            response.read()
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                statuses[response.status] = statuses.get(response.status, 0) + 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, statuses, time.perf_counter() - start


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def in_process(cost: int) -> None:
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=cost)).decode()
    header = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    auth = BasicAuth({USER: hashed})
    raw = []
    for _ in range(5):
        start = time.perf_counter()
        bcrypt.checkpw(PASSWORD.encode(), hashed.encode())
        raw.append(time.perf_counter() - start)
    assert auth.check(header).ok
    cached = []
    for _ in range(20000):
        start = time.perf_counter()
        auth.check(header)
        cached.append(time.perf_counter() - start)
    for i in range(50):
        auth.check("Basic " + base64.b64encode(f"{USER}:wrong-{i}".encode()).decode())
        auth.check("Basic " + base64.b64encode(f"user{i}:{PASSWORD}".encode()).decode())
    print(f"\nin process, bcrypt cost {cost}: one bcrypt check {statistics.median(raw) * 1e3:.1f} ms, "
          f"one cached check {statistics.median(cached) * 1e6:.1f} us "
          f"(ratio {statistics.median(raw) / statistics.median(cached):,.0f}x)")
    print(f"cache entries after 20001 right and 100 wrong/unknown attempts: {auth.cache_size} "
          "(only verified credentials are kept: at most one per configured user)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=400, help="requests per variant (at most)")
    parser.add_argument("--seconds", type=float, default=20, help="time cap per variant and table")
    parser.add_argument("--rounds", type=int, default=4, help="rows take turns in this many rounds")
    parser.add_argument("--cost", type=int, default=10, help="bcrypt cost of the user's hash (htpasswd -B: 5..)")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-auth-"))
    pki = PKI(workdir / "pki")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=args.cost)).decode()
    users = {"basic_auth_users": {USER: hashed}}
    client_tls = ssl.create_default_context(cafile=str(pki.ca))
    good = {"Authorization": "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()}
    wrong = {"Authorization": "Basic " + base64.b64encode(f"{USER}:not-it".encode()).decode()}

    exporters = {
        "plain": Exporter("plain", workdir, None),
        "auth": Exporter("auth", workdir, users),
        "auth, no cache": Exporter("auth, no cache", workdir, users, no_cache=True),
        "tls+auth": Exporter("tls+auth", workdir, users | {"tls_server_config": {
            "cert_file": str(pki.server_cert), "key_file": str(pki.server_key)}}, tls=client_tls),
    }
    runs: list[tuple[str, str, dict[str, str], bool]] = [
        ("plain", "plain", {}, True),
        ("auth", "auth", good, True),
        ("auth, no cache", "auth, no cache", good, True),
        ("auth, wrong password", "auth", wrong, True),
        ("tls+auth", "tls+auth", good, True),
        ("tls+auth, new connection per request", "tls+auth", good, False),
    ]
    print(f"{args.clients} concurrent clients, up to {args.requests} requests or {args.seconds:.0f} s per row; "
          f"bcrypt cost {args.cost}; {os.cpu_count()} CPUs (shared with whatever else runs)")
    try:
        for exporter in exporters.values():
            # Warm up: the first request of a cached variant pays its one bcrypt check here.
            run_load(exporter, "/-/ready", good, args.clients, args.clients, 60)
        for clients, path in ((1, "/-/ready"), (args.clients, "/-/ready"), (args.clients, "/metrics")):
            print(f"\n{path}, {clients} client{'s' if clients > 1 else ''}")
            print(f"{'variant':<40} {'done':>5} {'status':>10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
                  f"{'req/s':>7} {'p50 / plain':>11}")
            results: dict[str, tuple[list[float], dict[int, int], float]] = {r[0]: ([], {}, 0.0) for r in runs}
            # Rows take turns, round by round, so drift in what else the machine does hits them alike.
            for _ in range(args.rounds):
                for label, name, headers, reuse in runs:
                    lat, statuses, wall = run_load(exporters[name], path, headers, clients,
                                                   args.requests // args.rounds, args.seconds / args.rounds, reuse)
                    total_lat, total_statuses, total_wall = results[label]
                    total_lat += lat
                    for code, count in statuses.items():
                        total_statuses[code] = total_statuses.get(code, 0) + count
                    results[label] = (total_lat, total_statuses, total_wall + wall)
            base = statistics.median(results["plain"][0])
            for label, (lat, statuses, wall) in results.items():
                p50 = statistics.median(lat)
                status = ",".join(f"{k}x{v}" for k, v in sorted(statuses.items()))
                print(f"{label:<40} {len(lat):>5} {status:>10} {p50 * 1e3:>8.2f} {pct(lat, 0.9) * 1e3:>8.2f} "
                      f"{pct(lat, 0.99) * 1e3:>8.2f} {len(lat) / wall:>7.0f} {p50 / base:>10.2f}x")
    finally:
        for exporter in exporters.values():
            exporter.stop()
    in_process(args.cost)
    return 0


def child_no_cache(argv: list[str]) -> int:
    from perfwatch.exporter import cli

    real_init: Callable[..., None] = BasicAuth.__init__

    def init_without_cache(self: BasicAuth, users: dict[str, str], max_entries: int = 0) -> None:
        real_init(self, users, 0)

    BasicAuth.__init__ = init_without_cache  # type: ignore[method-assign]  # replaced on purpose, in this child only
    return cli.main(argv)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child-no-cache":
        raise SystemExit(child_no_cache(sys.argv[2:]))
    raise SystemExit(main())
