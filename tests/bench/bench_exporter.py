"""Scrape perfwatch-exporter and Debian's prometheus-node-exporter on the same host, with the same collectors.

    .venv/bin/python tests/bench/bench_exporter.py [--scrapes 300] [--interval 0.05] [--concurrency 8]
        [--rounds 40] [--repeat 3] [--config FILE]

Both start on loopback and are scraped the way Prometheus does (keep-alive connections,
`Accept-Encoding: gzip`, Prometheus' Accept header). node_exporter runs with exactly the
collectors that correspond to perfwatch's enabled ones (`--collector.disable-defaults` and one
`--collector.X` for each name in the enabled perfwatch collectors' `node_collectors`), so the
two do the same work; the collectors perfwatch has and node_exporter lacks (perf) are listed.

Each repetition has two phases, each exporter measured in turn within it:
- sequential: one scraper, the two exporters alternately, `--scrapes` each, `--interval` apart;
- concurrent: `--concurrency` scrapers (one keep-alive connection each) that start a scrape of
  one exporter at the same moment, wait for all answers, then do the same to the other,
  `--rounds` times, `--interval` apart (as several Prometheus servers whose scrapes line up).
Printed per phase and exporter: median and p90 latency, CPU seconds per scrape (utime+stime
from /proc/<pid>/stat over the phase, divided by its scrapes), and perfwatch's ratio; per
exporter: series, bytes (plain and gzip), RSS at the end; with `--repeat`, each repetition's
ratios with the load average before it, and their median and range.
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
import threading
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


DURATION = re.compile(rb'^node_scrape_collector_duration_seconds\{collector="([^"]+)"\} (\S+)$', re.MULTILINE)


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


def node_exporter_known(exe: str) -> set[str]:
    """The collectors this node_exporter binary has (its --help lists --[no-]collector.NAME)."""
    result = subprocess.run([exe, "--help"], capture_output=True, text=True)
    return set(re.findall(r"--(?:\[no-\])?collector\.([a-z_0-9]+)\s", result.stdout + result.stderr))


def matching_collectors(config: str | None) -> tuple[list[str], dict[str, tuple[str, ...]]]:
    """perfwatch's enabled collectors, and for each the node_exporter collectors it stands for."""
    sys.path.insert(0, str(REPO))
    from perfwatch.exporter.collectors import REGISTRY
    from perfwatch.exporter.settings import load_settings

    _, settings = load_settings(config)
    enabled = [name for name, entry in settings.items() if entry.enabled]
    return enabled, {name: REGISTRY[name].node_collectors for name in enabled}


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0
    scrapes: int = 0

    def row(self) -> dict[str, float]:
        return {"median_ms": statistics.median(self.latencies) * 1000,
                "p90_ms": percentile(self.latencies, 0.9) * 1000,
                "cpu_ms_per_scrape": self.cpu / self.scrapes * 1000}


@dataclass
class Run:
    """One repetition: the load average before it, and each phase's row per exporter."""

    load: str
    sequential: dict[str, dict[str, float]]
    concurrent: dict[str, dict[str, float]] | None = None
    distinct: dict[str, int] = field(default_factory=dict)


def sequential(targets: list[Target], scrapes: int, interval: float) -> dict[str, Phase]:
    phases = {t.name: Phase(scrapes=scrapes) for t in targets}
    start = {t.name: cpu_seconds(t.pid) for t in targets}
    for _ in range(scrapes):
        for target in targets:
            phases[target.name].latencies.append(target.scrape())
            target.bodies.append(target.body)
            time.sleep(interval)
    for target in targets:
        phases[target.name].cpu = cpu_seconds(target.pid) - start[target.name]
    return phases


class Scrapers:
    """`n` threads, each with its own keep-alive connection to every target, that scrape one
    target at the same moment when told to."""

    def __init__(self, targets: list[Target], n: int) -> None:
        self.clones = [[Target(t.name, t.argv, t.port, proc=t.proc) for t in targets] for _ in range(n)]
        for row in self.clones:
            for clone in row:
                clone.conn = http.client.HTTPConnection("127.0.0.1", clone.port, timeout=30)
        self.n = n
        self.start = threading.Barrier(n + 1)
        self.done = threading.Barrier(n + 1)
        self.which = 0
        self.latencies: list[list[float]] = [[] for _ in range(n)]
        self.bodies: list[list[bytes]] = [[] for _ in range(n)]
        self.stop = False
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(n)]
        for thread in self.threads:
            thread.start()

    def _loop(self, i: int) -> None:
        while True:
            self.start.wait()
            if self.stop:
                return
            target = self.clones[i][self.which]
            self.latencies[i].append(target.scrape())
            self.bodies[i].append(target.body)
            self.done.wait()

    def round(self, which: int) -> tuple[list[float], list[bytes]]:
        """All `n` scrape target `which` at once; their latencies and bodies."""
        self.which = which
        for latencies, bodies in zip(self.latencies, self.bodies, strict=True):
            latencies.clear()
            bodies.clear()
        self.start.wait()
        self.done.wait()
        return [x for row in self.latencies for x in row], [b for row in self.bodies for b in row]

    def close(self) -> None:
        self.stop = True
        self.start.wait()
        for thread in self.threads:
            thread.join(10)
        for row in self.clones:
            for clone in row:
                assert clone.conn is not None
                clone.conn.close()


def concurrent(targets: list[Target], scrapers: Scrapers, rounds: int, interval: float
               ) -> tuple[dict[str, Phase], dict[str, int]]:
    """The phases, and for each target how many distinct collections answered its scrapes
    (distinct sets of collector durations: scrapes that shared a collection have the same)."""
    phases = {t.name: Phase(scrapes=rounds * scrapers.n) for t in targets}
    distinct = dict.fromkeys(phases, 0)
    start = {t.name: cpu_seconds(t.pid) for t in targets}
    for _ in range(rounds):
        for which, target in enumerate(targets):
            latencies, bodies = scrapers.round(which)
            phases[target.name].latencies += latencies
            distinct[target.name] += len({tuple(DURATION.findall(b)) for b in bodies})
            time.sleep(interval)
    for target in targets:
        phases[target.name].cpu = cpu_seconds(target.pid) - start[target.name]
    return phases, distinct


def print_table(title: str, rows: dict[str, dict[str, float]], names: list[str]) -> None:
    print(f"\n{title}\n{'':<20}" + "".join(f"{n:>15}" for n in names) + f"{'ratio':>10}")
    for key in rows[names[0]]:
        a, b = rows[names[0]][key], rows[names[1]][key]
        ratio = f"{a / b:.2f}" if b else "-"
        print(f"{key:<20}" + "".join(f"{rows[n][key]:>15.2f}" for n in names) + f"{ratio:>10}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=300, help="sequential scrapes of each exporter (default 300)")
    parser.add_argument("--warmup", type=int, default=10, help="scrapes of each not counted (default 10)")
    parser.add_argument("--interval", type=float, default=0.05,
                        help="pause between two scrapes, or two rounds, seconds (default 0.05)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent scrapers (default 8; 0: none)")
    parser.add_argument("--rounds", type=int, default=40, help="rounds of concurrent scrapes (default 40)")
    parser.add_argument("--repeat", type=int, default=1, help="repetitions of both phases (default 1)")
    parser.add_argument("--config", help="perfwatch config file (default: none, every default collector)")
    args = parser.parse_args()

    node_exe = ensure_node_exporter()
    enabled, mapping = matching_collectors(args.config)
    known = node_exporter_known(node_exe)
    wanted = sorted({n for names in mapping.values() for n in names})
    unknown = [n for n in wanted if n not in known]
    node_flags = ["--collector.disable-defaults", *(f"--collector.{n}" for n in wanted if n in known)]
    workdir = Path(tempfile.mkdtemp(prefix="bench-exporter-"))
    perfwatch_port, node_port = free_port(), free_port()
    perfwatch_argv = [sys.executable, "-m", "perfwatch.exporter", "--listen", f"127.0.0.1:{perfwatch_port}",
                      "--log-level", "warning"]
    if args.config:
        perfwatch_argv += ["--config", args.config]
    targets = [
        Target("perfwatch", perfwatch_argv, perfwatch_port),
        Target("node_exporter", [node_exe, f"--web.listen-address=127.0.0.1:{node_port}", *node_flags], node_port),
    ]
    names = [t.name for t in targets]
    runs: list[Run] = []
    scrapers: Scrapers | None = None
    try:
        for target in targets:
            target.start(workdir)
        for _ in range(args.warmup):
            for target in targets:
                target.scrape()
                time.sleep(args.interval)
        if args.concurrency > 0:
            scrapers = Scrapers(targets, args.concurrency)
            for _ in range(2):  # warm the new connections up
                for which in range(len(targets)):
                    scrapers.round(which)
        for _ in range(args.repeat):
            load = Path("/proc/loadavg").read_text().split()[0]
            run = Run(load, {name: phase.row() for name, phase in
                             sequential(targets, args.scrapes, args.interval).items()})
            if scrapers is not None:
                phases, run.distinct = concurrent(targets, scrapers, args.rounds, args.interval)
                run.concurrent = {name: phase.row() for name, phase in phases.items()}
            runs.append(run)
        rss = {t.name: rss_bytes(t.pid) for t in targets}
    finally:
        if scrapers is not None:
            scrapers.close()
        for target in targets:
            target.stop()

    version, node_collectors = node_exporter_facts(node_exe, workdir / "node_exporter.log")
    print(f"host: {os.uname().nodename}, {os.cpu_count()} CPUs, kernel {os.uname().release}; "
          f"{args.repeat} repetition(s) of: {args.scrapes} sequential scrapes each, alternating, "
          f"{args.interval * 1000:.0f} ms apart, then {args.rounds} rounds of {args.concurrency} concurrent scrapes "
          f"of each; after {args.warmup} warm-up")
    print(f"node_exporter: {version}; collectors: {', '.join(node_collectors)}")
    print("perfwatch collectors -> node_exporter's: " + ", ".join(
        f"{name}->{'+'.join(mapping[name]) or '(none)'}" for name in enabled))
    if unknown:
        print(f"not in this node_exporter: {', '.join(unknown)}")
    static = {t.name: {"series": float(t.series()), "bytes": float(len(t.body)), "gzip_bytes": float(t.gzip_bytes),
                       "rss_mib": rss[t.name] / 2**20} for t in targets}
    print_table("size and memory", static, names)
    for i, run in enumerate(runs, 1):
        print_table(f"run {i} (load average {run.load}), sequential, 1 scraper", run.sequential, names)
        if run.concurrent is not None:
            scrapes = args.rounds * args.concurrency
            print_table(f"run {i}, {args.concurrency} concurrent scrapers ({scrapes} scrapes each; collections "
                        f"that answered them: perfwatch {run.distinct['perfwatch']})", run.concurrent, names)
    if len(runs) > 1:
        print(f"\nratios (perfwatch / node_exporter) over {len(runs)} runs: median [min-max]; "
              f"load averages {', '.join(r.load for r in runs)}")
        for label, phase in (("sequential", "sequential"), (f"{args.concurrency} concurrent", "concurrent")):
            for key in ("median_ms", "cpu_ms_per_scrape"):
                tables = [getattr(r, phase) for r in runs]
                ratios = [t[names[0]][key] / t[names[1]][key] for t in tables if t is not None]
                if ratios:
                    print(f"  {label:<14} {key:<18} {statistics.median(ratios):.2f} "
                          f"[{min(ratios):.2f}-{max(ratios):.2f}]")
    print("\ngoals: median_ms and cpu_ms_per_scrape ratio <= 0.7 sequential, <= 1.0 concurrent; RSS <= 30 MB")
    print("\nperfwatch, median node_scrape_collector_duration_seconds per collector (ms, sequential scrapes):")
    durations = collector_durations(targets[0].bodies)
    print("  " + ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(durations.items(), key=lambda kv: -kv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
