"""What one sample of the perf events costs: perfwatch's collector against the `perf` tool.

    .venv/bin/python tests/bench/bench_perf.py [--interval 1] [--samples 10] [--scrapes 500]

Run as root (system-wide counting). Every peer counts the same events on every online CPU, per
CPU (`perf stat -a -A`), and takes one sample per interval:

- perfwatch, in process: one `collect()` of the perf collector plus rendering its families in
  the text format with the exporter's own renderer (`exporter.exposition.render`, what `/metrics`
  runs), i.e. its share of a scrape (counters opened once, before timing);
- perfwatch, the exporter process with only the perf collector, scraped over HTTP: latency per
  scrape and the exporter's CPU time per scrape (from /proc/<pid>/stat);
- `perf stat -a -A -x, -e <events> -- sleep <interval>`, one run per sample: what an
  implementation that runs the perf tool at every scrape pays (CPU time of perf and sleep, from
  getrusage of the children; wall time beyond the interval);
- `perf stat -a -A -x, -I <interval> -e <events>`, one long run printing every interval: the
  cheapest way to use the perf tool (CPU time divided by the intervals printed).

Printed: per sample, median wall time and CPU time of each, and their ratios to perfwatch's
in-process scrape. The perf binary comes from Debian's linux-perf (installed if missing).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from bench_exporter import cpu_seconds  # noqa: E402
from support.procs import free_port  # noqa: E402

from perfwatch.common.config import from_mapping  # noqa: E402
from perfwatch.exporter import perf_events as pe  # noqa: E402
from perfwatch.exporter.collect import Registry  # noqa: E402
from perfwatch.exporter.collectors.base import HostPaths  # noqa: E402
from perfwatch.exporter.collectors.perf import PerfCollector, PerfOptions  # noqa: E402
from perfwatch.exporter.exposition import render  # noqa: E402


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ensure_perf() -> str:
    exe = shutil.which("perf")
    if exe is None:
        subprocess.run([str(REPO / "scripts" / "apt-install"), "linux-perf"], check=True)
        exe = shutil.which("perf")
    if exe is None:
        raise SystemExit("no perf binary even after installing linux-perf")
    return exe


def in_process(scrapes: int) -> tuple[list[float], list[float], int, float]:
    """Per-scrape wall and CPU seconds of collect() + render; counters held; open time."""
    start = time.perf_counter()
    collector = PerfCollector(from_mapping(PerfOptions, {}, "collectors.perf"), HostPaths())
    opened = time.perf_counter() - start
    registry = Registry()
    registry.register(collector)
    render(registry)  # warm up imports and caches
    walls, cpus = [], []
    for _ in range(scrapes):
        w0, c0 = time.perf_counter(), time.process_time()
        render(registry)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    held = sum(1 for slot in collector.slots.values() if slot.fd is not None)
    collector.close()
    return walls, cpus, held, opened


def over_http(scrapes: int, workdir: Path) -> tuple[list[float], float]:
    """Latencies and exporter CPU seconds per scrape of an exporter running only the perf collector."""
    import requests

    from perfwatch.exporter.collectors import load_all

    config = workdir / "perf-only.yml"
    others = "".join(f"  {name}:\n    enabled: false\n" for name in load_all() if name != "perf")
    config.write_text(f"collectors:\n{others}")
    port = free_port()
    with open(workdir / "exporter.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "perfwatch.exporter", "--listen", f"127.0.0.1:{port}",
                                 "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        session = requests.Session()
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 30
        while True:
            try:
                session.get(url, timeout=5).raise_for_status()
                break
            except requests.RequestException:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"exporter did not start: {(workdir / 'exporter.log').read_text()}") from None
                time.sleep(0.1)
        cpu0 = cpu_seconds(proc.pid)
        walls = []
        for _ in range(scrapes):
            w0 = time.perf_counter()
            session.get(url, timeout=10).raise_for_status()
            walls.append(time.perf_counter() - w0)
        cpu = (cpu_seconds(proc.pid) - cpu0) / scrapes
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    return walls, cpu


def perf_stat_per_sample(perf: str, events: str, interval: float, samples: int) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(samples):
        c0, w0 = children_cpu(), time.perf_counter()
        result = subprocess.run([perf, "stat", "-a", "-A", "-x,", "-e", events, "--", "sleep", str(interval)],
                                capture_output=True, text=True)
        walls.append(time.perf_counter() - w0)
        cpus.append(children_cpu() - c0)
        if result.returncode != 0:
            raise SystemExit(f"perf stat failed: {result.stderr[-2000:]}")
    return walls, cpus


def perf_stat_interval(perf: str, events: str, interval: float, samples: int) -> tuple[float, int]:
    """CPU seconds per printed interval of one long `perf stat -I` run."""
    c0 = children_cpu()
    proc = subprocess.Popen([perf, "stat", "-a", "-A", "-x,", "-I", str(int(interval * 1000)), "-e", events],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(interval * (samples + 0.5))
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    # Lines are `   <seconds since start>,CPU<n>,<value>,...`: one timestamp per interval printed.
    printed = len({line.split(",")[0] for line in err.splitlines() if line.strip()[:1].isdigit()})
    return (children_cpu() - c0) / max(printed, 1), printed


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.3f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=1.0, help="seconds per sample (default 1)")
    parser.add_argument("--samples", type=int, default=10, help="perf stat samples (default 10)")
    parser.add_argument("--scrapes", type=int, default=500, help="perfwatch scrapes (default 500)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: system-wide counting needs it (or CAP_PERFMON)")
    perf = ensure_perf()
    events = ",".join(pe.EVENTS)
    online = pe.parse_cpu_list(Path("/sys/devices/system/cpu/online").read_text())

    walls, cpus, held, opened = in_process(args.scrapes)
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        http_walls, http_cpu = over_http(args.scrapes, Path(tmp))
    stat_walls, stat_cpus = perf_stat_per_sample(perf, events, args.interval, args.samples)
    interval_cpu, printed = perf_stat_interval(perf, events, args.interval, args.samples)

    ours_wall, ours_cpu = statistics.median(walls), statistics.median(cpus)
    stat_overhead = statistics.median(stat_walls) - args.interval
    stat_cpu = statistics.median(stat_cpus)
    print(f"host: {os.cpu_count()} CPUs online {pe.format_cpu_list(online)}, {len(pe.EVENTS)} events requested, "
          f"{held} counters open (the rest unsupported here), interval {args.interval:g}s")
    print(f"perfwatch collector, in process ({args.scrapes} scrapes): wall {ms(ours_wall)}  cpu {ms(ours_cpu)}"
          f"  (opening the counters once: {ms(opened)})")
    print(f"perfwatch exporter over HTTP, perf only ({args.scrapes}): wall {ms(statistics.median(http_walls))}"
          f"  cpu {ms(http_cpu)}")
    print(f"perf stat -a -A -- sleep {args.interval:g} ({args.samples} runs): wall beyond the interval "
          f"{ms(stat_overhead)}  cpu {ms(stat_cpu)}")
    print(f"perf stat -a -A -I {int(args.interval * 1000)} ({printed} intervals): cpu per interval {ms(interval_cpu)}")
    print("ratios (peer / perfwatch in process):")
    print(f"  perf stat per sample: cpu x{stat_cpu / ours_cpu:.1f}, wall beyond the interval "
          f"x{stat_overhead / ours_wall:.1f}")
    print(f"  perf stat -I: cpu x{interval_cpu / ours_cpu:.1f}")
    print(f"  perf stat per sample vs perfwatch exporter over HTTP: cpu x{stat_cpu / http_cpu:.1f}")


if __name__ == "__main__":
    main()
