"""Scrape perfwatch-exporter and Debian's prometheus-node-exporter alternately, on the same host.

    .venv/bin/python tests/bench/bench_exporter.py [--scrapes 300] [--interval 0.05] [--config FILE]

Both start on loopback with their default collectors and are scraped the way Prometheus does
(keep-alive connection, `Accept-Encoding: gzip`, Prometheus' Accept header), one after the other,
the same number of times. Printed per exporter: series, bytes (plain and gzip), median and p90
scrape latency, CPU seconds per scrape (utime+stime from /proc/<pid>/stat over the whole run,
divided by the scrapes), RSS at the end, and perfwatch's ratio to node_exporter.

node_exporter runs with its defaults except `--no-collector.systemd`: Debian turns that collector
on, and without systemd (containers, this VM) it only fails at every scrape.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from support.procs import free_port  # noqa: E402

NODE_EXPORTER = "prometheus-node-exporter"
# What Prometheus 2.42 sends.
ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
          "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def cpu_seconds(pid: int) -> float:
    # Fields 14 and 15 of proc(5), counted after the ')' that ends the command name.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Target:
    name: str
    argv: list[str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    conn: http.client.HTTPConnection | None = None
    latencies: list[float] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    body: bytes = b""
    gzip_bytes: int = 0
    cpu_start: float = 0.0
    cpu_end: float = 0.0

    def start(self, log_dir: Path) -> None:
        log = open(log_dir / f"{self.name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}: see {log_dir / self.name}.log")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise SystemExit(f"{self.name} did not listen on port {self.port} within 30s")
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def scrape(self) -> float:
        assert self.conn is not None
        start = time.perf_counter()
        self.conn.request("GET", "/metrics", headers={"Accept": ACCEPT, "Accept-Encoding": "gzip"})
        response = self.conn.getresponse()
        data = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise SystemExit(f"{self.name}: HTTP {response.status}: {data[:200]!r}")
        if response.getheader("Content-Encoding") == "gzip":
            self.gzip_bytes = len(data)
            data = gzip.decompress(data)
        self.body = data
        return elapsed

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def series(self) -> int:
        return sum(1 for line in self.body.splitlines() if line and not line.startswith(b"#"))


def ensure_node_exporter() -> str:
    exe = shutil.which(NODE_EXPORTER) or (f"/usr/bin/{NODE_EXPORTER}" if Path(f"/usr/bin/{NODE_EXPORTER}").exists()
                                          else None)
    if exe is None:
        subprocess.run([str(REPO / "scripts" / "apt-install"), NODE_EXPORTER], check=True)
        exe = shutil.which(NODE_EXPORTER) or f"/usr/bin/{NODE_EXPORTER}"
    return exe


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


DURATION = re.compile(rb'^perfwatch_scrape_collector_duration_seconds\{collector="([^"]+)"\} (\S+)$', re.MULTILINE)


def collector_durations(bodies: list[bytes]) -> dict[str, float]:
    """Median time per collector over the scrapes, in ms, as the exporter measured it."""
    seen: dict[str, list[float]] = {}
    for body in bodies:
        for name, seconds in DURATION.findall(body):
            seen.setdefault(name.decode(), []).append(float(seconds) * 1000)
    return {name: statistics.median(values) for name, values in seen.items()}


def node_exporter_facts(exe: str, log_path: Path) -> tuple[str, list[str]]:
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    version = version.splitlines()[0] if version else "unknown"
    collectors = re.findall(r"caller=node_exporter\.go:\d+ level=info collector=(\w+)\s*$",
                            log_path.read_text(errors="replace"), re.MULTILINE)
    return version, collectors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=300, help="scrapes of each exporter (default 300)")
    parser.add_argument("--warmup", type=int, default=10, help="scrapes of each not counted (default 10)")
    parser.add_argument("--interval", type=float, default=0.05,
                        help="pause between two scrapes, seconds (default 0.05)")
    parser.add_argument("--config", help="perfwatch config file (default: none, every default collector)")
    args = parser.parse_args()

    node_exe = ensure_node_exporter()
    workdir = Path(tempfile.mkdtemp(prefix="bench-exporter-"))
    perfwatch_port, node_port = free_port(), free_port()
    perfwatch_argv = [sys.executable, "-m", "perfwatch.exporter", "--listen", f"127.0.0.1:{perfwatch_port}",
                      "--log-level", "warning"]
    if args.config:
        perfwatch_argv += ["--config", args.config]
    targets = [
        Target("perfwatch", perfwatch_argv, perfwatch_port),
        Target("node_exporter", [node_exe, f"--web.listen-address=127.0.0.1:{node_port}", "--no-collector.systemd"],
               node_port),
    ]
    try:
        for target in targets:
            target.start(workdir)
        for _ in range(args.warmup):
            for target in targets:
                target.scrape()
                time.sleep(args.interval)
        for target in targets:
            target.cpu_start = cpu_seconds(target.pid)
        for _ in range(args.scrapes):
            for target in targets:
                target.latencies.append(target.scrape())
                target.bodies.append(target.body)
                time.sleep(args.interval)
        for target in targets:
            target.cpu_end = cpu_seconds(target.pid)
        rss = {t.name: rss_bytes(t.pid) for t in targets}
    finally:
        for target in targets:
            target.stop()

    version, node_collectors = node_exporter_facts(node_exe, workdir / "node_exporter.log")
    print(f"host: {os.uname().nodename}, {os.cpu_count()} CPUs, kernel {os.uname().release}; "
          f"{args.scrapes} scrapes each, alternating, {args.interval * 1000:.0f} ms apart, after {args.warmup} warm-up")
    print(f"node_exporter: {version}; collectors: {', '.join(node_collectors)} (systemd disabled)")
    rows = {}
    for t in targets:
        rows[t.name] = {
            "series": float(t.series()),
            "bytes": float(len(t.body)),
            "gzip_bytes": float(t.gzip_bytes),
            "median_ms": statistics.median(t.latencies) * 1000,
            "p90_ms": percentile(t.latencies, 0.9) * 1000,
            "cpu_ms_per_scrape": (t.cpu_end - t.cpu_start) / args.scrapes * 1000,
            "rss_mib": rss[t.name] / 2**20,
        }
    names = [t.name for t in targets]
    print(f"\n{'':<20}" + "".join(f"{n:>15}" for n in names) + f"{'ratio':>10}")
    for key in rows[names[0]]:
        a, b = rows[names[0]][key], rows[names[1]][key]
        ratio = f"{a / b:.2f}" if b else "-"
        print(f"{key:<20}" + "".join(f"{rows[n][key]:>15.2f}" for n in names) + f"{ratio:>10}")
    print("\nratio = perfwatch / node_exporter (goal for median_ms and cpu_ms_per_scrape: <= 1.0)")
    print("\nperfwatch, median perfwatch_scrape_collector_duration_seconds per collector (ms):")
    durations = collector_durations(targets[0].bodies)
    print("  " + ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(durations.items(), key=lambda kv: -kv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
