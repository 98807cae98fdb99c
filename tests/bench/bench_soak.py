"""A soak run of the archiver: PostgreSQL stopped and the archiver SIGKILLed at random times, and
afterwards every scrape a target served in the archive exactly once.

    .venv/bin/python tests/bench/bench_soak.py [--minutes 10] [--targets 20] [--seed 1] [--keep]
    .venv/bin/python tests/bench/bench_soak.py --minutes 2 --targets 5        # a quick check

Loopback only, bounded in time. `--targets` synthetic exporters (tests/support/synthetic.py: each
served scrape is recorded and carries its number, synthetic_scrape_number), each with `--series`
series of its own beside the synthetic exporter's 14 (by default about the 320 samples of a
perfwatch-exporter scrape), are scraped every `--interval` by one archiver, a real
`python -m perfwatch.archiver` process with its spool in the work dir. It writes to a PostgreSQL
of the soak's own (an embedded server in the work dir, given to it by DSN: the soak stops it, and
the archiver does not start a configured database again). For `--minutes`, two chaos loops,
seeded by `--seed` and independent of each other (so some kills fall in an outage, with a backlog
in the spool):

* PostgreSQL: every 5 to 45 s, stopped (`pg_ctl stop -m fast`, or one time in three `-m
  immediate`, a crash) for 3 to 30 s, then started again on the same port;
* the archiver: every 5 to 40 s, SIGKILLed and started again at once on the same data dir.

Then the chaos stops (PostgreSQL up, the archiver running), the archiver drains its spool
(perfwatch_archiver_spool_batches 0 and every target's latest scrape archived) and is stopped with
SIGTERM, and the soak compares, per target, the scrape numbers the target served with those in the
archive. Printed: each chaos event as it happens, then one table: scrapes and samples served,
samples written (rows in the archive), scrapes lost (served, not archived) — "in flight at a
SIGKILL" (answered in the second before a kill, and its batch not in the spool when the soak read
it right after the kill: it had not reached the spool's fsync, and Prometheus loses such a scrape
too) and "other" (a lost batch the spool held after a kill is "other" however close to the kill
it was answered) —, scrapes archived twice, archived scrapes with samples missing, the outages and
kills, what the archiver counted (scrape failures, spool
drops, rejected batches, log lines at warning and error), its peak spool and peak RSS (VmHWM, the
largest of its lives), wall time, and the load average (os.getloadavg) before and after. Every lost
scrape, with when it was answered and how long before which kill, goes to lost.txt in the work dir.
The archiver scrapes every target at the same instant of each interval, so a kill in the tenth of
a second or so after it loses one scrape of most targets (Prometheus spreads its targets over the
interval).

Exit status: 0 when "other" lost, archived twice and incomplete are all 0 (the goal); 1 when not;
2 when the soak itself could not finish (a chaos step failed, the drain timed out). The work dir
(archiver.log, chaos.log, lost.txt, postgres/postgres.log, the spool under data/) is removed at
the end unless `--keep` is given or the soak failed; its path is printed. The default run writes
about 3.8 million rows (some 350 MB of database) there.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import random
import re
import shutil
import signal
import socket
import socketserver
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import requests
import yaml
from psycopg.abc import QueryNoTemplate

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support.exposition import samples  # noqa: E402
from support.procs import Service, python_module  # noqa: E402
from support.synthetic import SyntheticExporter, exposition  # noqa: E402

from perfwatch.archiver.embedded import EmbeddedPostgres  # noqa: E402
from perfwatch.archiver.scrape import parse_exposition  # noqa: E402

JOB = "synthetic"
# A scrape answered this long before a SIGKILL may not have reached the spool's fsync.
IN_FLIGHT_S = 1.0
# ... or recorded by the target just after it (its handler ends after the archiver died), which is
# well before the next archiver can have started (a second or so) and scraped.
AFTER_KILL_S = 0.25


def quiet_port() -> int:
    """A free loopback port below the kernel's ephemeral range, so that no outgoing connection takes
    it as its source port while its server is down (PostgreSQL would then move to another port,
    where the archiver's DSN does not follow it, and the archiver could not start again)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 10_000), low) if low > 2048 else rng.randrange(20_000, 30_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port below the ephemeral range")


# A spool line (model.Batch.to_json): its target and scrape time, then its samples.
SPOOL_LINE_RE = re.compile(rb'^\{"job":"[^"]*","instance":"([^"]*)","scraped_at_ms":(\d+),')
SCRAPE_NUMBER_RE = re.compile(rb'\["synthetic_scrape_number",\[\["instance","[^"]*"\],\["job","[^"]*"\]\],([0-9.]+),')


def spooled_since(spool: Path, since_ms: int) -> set[tuple[str, int]]:
    """(instance, scrape number) of every whole line in the spool's segments scraped at or after
    `since_ms`: the batches that had reached the spool (appended, fsynced) when it is read."""
    found = set()
    for segment in sorted(spool.glob("*.jsonl")):
        if segment.name == "rejected.jsonl":
            continue
        for line in segment.read_bytes().split(b"\n")[:-1]:  # the last piece is empty, or a torn line
            head = SPOOL_LINE_RE.match(line)
            if head is None or int(head[2]) < since_ms:
                continue
            number = SCRAPE_NUMBER_RE.search(line)
            if number is not None:
                found.add((head[1].decode(), int(float(number[1]))))
    return found


def quiet_resets(server: socketserver.BaseServer) -> None:
    """A SIGKILLed archiver resets its keep-alive connections to the targets: no traceback for that."""
    original = server.handle_error

    def handle_error(request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            original(request, client_address)

    server.handle_error = handle_error  # type: ignore[method-assign]


def peak_rss(pid: int) -> int:
    """VmHWM of `pid` in bytes (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclasses.dataclass
class Life:
    """What one archiver process counted (its counters start at 0 at each start), as last polled."""

    failures: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    dropped_batches: float = 0.0
    rejected_batches: float = 0.0
    samples_dropped: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)


class Archiver:
    """perfwatch-archiver as a process, started again after each SIGKILL with the same port, config,
    data dir and log file."""

    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.port = quiet_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = workdir / "data"
        path = workdir / "archiver.yml"
        path.write_text(yaml.safe_dump({"listen": f"127.0.0.1:{self.port}", "data_dir": str(self.data_dir),
                                        **config}, allow_unicode=True))
        self.log_path = workdir / "archiver.log"
        self.service = Service(python_module("perfwatch.archiver", "--config", str(path)), self.log_path,
                               ready_url=f"{self.url}/-/ready", ready_timeout=120)
        self.life = -1  # which start the process now running is (0 the first)
        self.lives: dict[int, Life] = {}
        self.peak_rss = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            self.life += 1
            self.lives[self.life] = Life()
        with open(self.log_path, "a") as log:
            log.write(f"--- bench_soak: start {self.life} at {time.strftime('%H:%M:%S')} ---\n")
        self.service.start()

    @property
    def pid(self) -> int:
        assert self.service.proc is not None
        return self.service.proc.pid

    def note_rss(self) -> None:
        self.peak_rss = max(self.peak_rss, peak_rss(self.pid))

    def kill(self) -> Kill:
        """SIGKILL it, and read what its spool holds of the last seconds' scrapes."""
        self.note_rss()
        sent = time.time()
        self.service.stop(signal.SIGKILL)
        reaped = time.time()
        return Kill(sent, reaped, spooled_since(self.data_dir / "spool", int((sent - 5) * 1000)))

    def stop(self) -> int:
        self.note_rss()
        return self.service.stop(signal.SIGTERM, timeout=60)

    def poll(self) -> dict[str, list[tuple[dict[str, str], float]]] | None:
        """Its /metrics by name, remembered in the current life's counts; None if it did not answer."""
        life = self.life
        try:
            r = requests.get(f"{self.url}/metrics", timeout=3)
        except requests.RequestException:
            return None
        if r.status_code != 200 or life != self.life:
            return None
        found: dict[str, list[tuple[dict[str, str], float]]] = collections.defaultdict(list)
        for s in samples(r.text):
            found[s.name].append((s.labels, float(s.value)))
        counts = Life()
        for labels, v in found["perfwatch_archiver_scrape_failures_total"]:
            counts.failures[labels["reason"]] += int(v)
        for labels, v in found["perfwatch_archiver_samples_dropped_total"]:
            counts.samples_dropped[labels["reason"]] += int(v)
        counts.dropped_batches = sum(v for _, v in found["perfwatch_archiver_spool_dropped_batches_total"])
        counts.rejected_batches = sum(v for _, v in found["perfwatch_archiver_batches_rejected_total"])
        with self._lock:
            if life == self.life:
                self.lives[life] = counts
        return found

    def totals(self) -> Life:
        total = Life()
        for life in self.lives.values():
            total.failures.update(life.failures)
            total.samples_dropped.update(life.samples_dropped)
            total.dropped_batches += life.dropped_batches
            total.rejected_batches += life.rejected_batches
        return total


def metric(found: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float:
    return sum(v for _, v in found.get(name, []))


@dataclasses.dataclass
class Outage:
    start: float
    end: float
    mode: str


@dataclasses.dataclass
class Kill:
    sent: float
    reaped: float
    spooled: set[tuple[str, int]]  # (instance, scrape number) of the last seconds in the spool after the kill
    during_outage: bool = False


class Chaos:
    """The two loops (PostgreSQL outages, archiver SIGKILLs), each in a thread of its own and drawing
    from a random generator of its own, seeded: the same seed gives the same schedule."""

    def __init__(self, pg: EmbeddedPostgres, dsn: str, archiver: Archiver, seed: int,
                 say: Callable[[str], None]) -> None:
        self.pg = pg
        self.dsn = dsn
        self.archiver = archiver
        self.seed = seed
        self.say = say
        self.done = threading.Event()
        self.outages: list[Outage] = []
        self.kills: list[Kill] = []
        self.errors: list[str] = []
        self.pg_down_since: float | None = None
        self._threads = [threading.Thread(target=self._guard, args=(self._postgres,), name="chaos-postgres"),
                         threading.Thread(target=self._guard, args=(self._archiver,), name="chaos-archiver")]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        """End the chaos: an outage under way ends now (PostgreSQL started again), a restart under way
        finishes."""
        self.done.set()
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join()

    def _guard(self, loop: Callable[[], None]) -> None:
        try:
            loop()
        except Exception:
            self.errors.append(traceback.format_exc())
            self.say(f"chaos step failed, chaos ends: {traceback.format_exc().strip().splitlines()[-1]}")
            self.done.set()

    def _postgres(self) -> None:
        rng = random.Random(f"{self.seed}:postgres")
        while True:
            gap, duration = rng.uniform(5, 45), rng.uniform(3, 30)
            mode = "immediate" if rng.random() < 1 / 3 else "fast"
            if self.done.wait(gap):
                return
            start = time.time()
            self.pg.stop(mode)
            self.pg_down_since = start
            self.say(f"PostgreSQL stopped ({mode}) for {duration:.1f} s")
            self.done.wait(duration)  # cut short when the chaos ends
            try:
                dsn = self.pg.start()
            finally:
                self.pg_down_since = None
            end = time.time()
            self.outages.append(Outage(start, end, mode))
            self.say(f"PostgreSQL started again after {end - start:.1f} s")
            if dsn != self.dsn:
                raise RuntimeError(f"PostgreSQL came back elsewhere ({dsn}); the archiver's DSN is {self.dsn}")

    def _archiver(self) -> None:
        rng = random.Random(f"{self.seed}:archiver")
        while True:
            if self.done.wait(rng.uniform(5, 40)):
                return
            during = self.pg_down_since is not None
            kill = self.archiver.kill()
            kill.during_outage = during
            self.kills.append(kill)
            started = time.time()
            self.archiver.start()
            self.say(f"archiver SIGKILLed{' during the outage' if during else ''} ({len(kill.spooled)} batches of "
                     f"its last 5 s in the spool), started again (ready in {time.time() - started:.1f} s)")


def query(dsn: str, sql: QueryNoTemplate) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql).fetchall()


SCRAPE_NUMBERS = ("SELECT s.labels->>'instance', x.value FROM perfwatch.sample x"
                  " JOIN perfwatch.series s ON s.id = x.series_id JOIN perfwatch.metric m ON m.id = s.metric_id"
                  f" WHERE m.name = 'synthetic_scrape_number' AND s.labels->>'job' = '{JOB}'")
ROWS_PER_INSTANCE = ("SELECT s.labels->>'instance', count(*) FROM perfwatch.sample x"
                     f" JOIN perfwatch.series s ON s.id = x.series_id WHERE s.labels->>'job' = '{JOB}' GROUP BY 1")


def archived_numbers(dsn: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = collections.defaultdict(list)
    for instance, value in query(dsn, SCRAPE_NUMBERS):
        out[instance].append(int(value))
    return out


def latest_archived(dsn: str) -> dict[str, int]:
    rows = query(dsn, f"SELECT instance, max(value) FROM ({SCRAPE_NUMBERS}) AS n(instance, value) GROUP BY 1")
    return {instance: int(v) for instance, v in rows}


def duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} min {s} s" if minutes else f"{s} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10, help="how long the chaos lasts (default 10)")
    parser.add_argument("--targets", type=int, default=20, help="synthetic targets (default 20)")
    parser.add_argument("--series", type=int, default=300,
                        help="series of each target's own beside the 14 every synthetic scrape has (default 300)")
    parser.add_argument("--interval", default="1s", help="scrape interval, a Prometheus duration (default 1s)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the chaos schedule (default 1)")
    parser.add_argument("--drain-timeout", type=float, default=300,
                        help="seconds the archiver may take to empty its spool at the end (default 300)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, spool, database)")
    args = parser.parse_args()

    began = time.time()
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="perfwatch-bench-soak-"))
    chaos_log = open(workdir / "chaos.log", "a")  # noqa: SIM115 - closed at the end

    saying = threading.Lock()

    def say(message: str) -> None:
        line = f"{time.time() - began:8.1f} s  {message}"
        with saying:
            print(line, flush=True)
            chaos_log.write(line + "\n")
            chaos_log.flush()

    per_scrape = len(parse_exposition(exposition(0, wide=args.series), {"job": JOB, "instance": "x"}, 0).samples)
    pg = EmbeddedPostgres(workdir / "postgres")
    say(f"work dir {workdir}; {args.targets} targets x {per_scrape} samples every {args.interval}, "
        f"{args.minutes:g} min of chaos, seed {args.seed}")
    pg.start()
    pg.stop()
    pg.port_file.write_text(f"{quiet_port()}\n")  # below the ephemeral range: nothing takes it during an outage
    dsn = pg.start()
    synths = [SyntheticExporter(wide=args.series) for _ in range(args.targets)]
    for synth in synths:
        quiet_resets(synth.httpd)
        synth.__enter__()
    archiver = Archiver(workdir, {"scrape_interval": args.interval,
                                  "targets": [{"url": s.url, "job": JOB} for s in synths],
                                  "database": {"dsn": dsn}})
    chaos = Chaos(pg, dsn, archiver, args.seed, say)
    peak_spool = 0.0
    watching = threading.Event()

    def watch() -> None:
        nonlocal peak_spool
        while not watching.wait(1.0):
            found = archiver.poll()
            if found is not None:
                peak_spool = max(peak_spool, metric(found, "perfwatch_archiver_spool_batches"))
                archiver.note_rss()

    watcher = threading.Thread(target=watch, name="watch", daemon=True)
    failure = ""
    drain_s = 0.0
    chaos_s = 0.0
    rc: int | None = None
    try:
        archiver.start()
        version = query(dsn, "SHOW server_version")[0][0]
        say(f"archiver ready on {archiver.url}, PostgreSQL {version} on 127.0.0.1:{pg.port}")
        watcher.start()
        chaos_began = time.time()
        chaos.start()
        chaos.done.wait(args.minutes * 60)
        chaos.stop()
        chaos_s = time.time() - chaos_began
        if chaos.errors:
            failure = "a chaos step failed:\n" + "\n".join(chaos.errors)
        say("chaos over; draining the spool")

        drained = time.time()
        latest = {s.instance: s.served[-1][1] for s in synths if s.served}
        while True:
            found = archiver.poll()
            if found is not None and metric(found, "perfwatch_archiver_spool_batches") == 0:
                archived = latest_archived(dsn)
                if all(archived.get(instance, -1) >= n for instance, n in latest.items()):
                    break
            if not archiver.service.running:
                failure = failure or f"the archiver exited while draining:\n{archiver.service.log()[-3000:]}"
                break
            if time.time() - drained > args.drain_timeout:
                spooled = metric(found, "perfwatch_archiver_spool_batches") if found else "?"
                failure = failure or f"the spool did not drain in {args.drain_timeout:g} s ({spooled} batches left)"
                break
            time.sleep(0.5)
        drain_s = time.time() - drained
        say(f"drained in {drain_s:.1f} s; stopping the archiver (SIGTERM)")
        watching.set()
        watcher.join()
        archiver.poll()  # its last counts
        rc = archiver.stop()
        if rc != 0:
            failure = failure or f"the archiver exited {rc} on SIGTERM"
    except BaseException:
        failure = failure or traceback.format_exc()
        raise
    finally:
        watching.set()
        chaos.stop()  # PostgreSQL up again, whatever ended the soak
        if archiver.service.proc is not None and archiver.service.running:
            archiver.service.stop(signal.SIGTERM, timeout=60)
        try:
            numbers = archived_numbers(dsn)
            rows = dict(query(dsn, ROWS_PER_INSTANCE))
        finally:
            pg.stop()
            for synth in synths:
                synth.__exit__(None)
        load_after = os.getloadavg()
        chaos_log.close()

    # -- compare ---------------------------------------------------------------------------------
    served_scrapes = lost_in_flight = lost_other = twice = incomplete = phantom = 0
    samples_written = sum(int(n) for n in rows.values())
    problems = []
    lost_lines = []  # every lost scrape, for lost.txt
    kills_hit: set[int] = set()
    before_kill: list[float] = []  # how long before its kill each in-flight scrape was answered

    def kill_of(t: float) -> int | None:
        """The kill a scrape answered at `t` was in flight at, if any."""
        return next((i for i, k in enumerate(chaos.kills) if k.sent - IN_FLIGHT_S < t <= k.reaped + AFTER_KILL_S),
                    None)

    for synth in synths:
        served = synth.served
        when = {n: t for t, n in served}
        stored = numbers.get(synth.instance, [])
        stored_set = set(stored)
        other = []
        for n in sorted(set(when) - stored_set):
            kill = kill_of(when[n])
            in_spool = [i for i, k in enumerate(chaos.kills) if (synth.instance, n) in k.spooled]
            if in_spool:  # it had reached the spool: durable, and lost all the same
                other.append(n)
                lost_lines.append(f"{synth.instance} #{n} answered at +{when[n] - began:.3f} s: other, in the spool "
                                  f"after SIGKILL {in_spool[0]} and never archived")
            elif kill is None:
                other.append(n)
                lost_lines.append(f"{synth.instance} #{n} answered at +{when[n] - began:.3f} s: other")
            else:
                kills_hit.add(kill)
                before_kill.append(chaos.kills[kill].sent - when[n])
                lost_lines.append(f"{synth.instance} #{n} answered at +{when[n] - began:.3f} s, "
                                  f"{chaos.kills[kill].sent - when[n]:.3f} s before SIGKILL {kill}, not in the spool "
                                  "after it: in flight")
        dup = len(stored) - len(stored_set)
        missing = len(stored) * per_scrape - int(rows.get(synth.instance, 0))
        extra = len(stored_set - set(when))
        served_scrapes += len(served)
        lost_in_flight += len(set(when) - stored_set) - len(other)
        lost_other += len(other)
        twice += dup
        incomplete += max(0, missing)
        phantom += extra
        if other or dup or missing or extra:
            lost_at = ", ".join(f"#{n} at +{when[n] - began:.1f} s" for n in other[:10])
            problems.append(f"  {synth.instance}: lost {len(other)} ({lost_at}{', …' if len(other) > 10 else ''}), "
                            f"archived twice {dup}, samples missing {missing}, never served {extra}")
    if workdir.exists():
        (workdir / "lost.txt").write_text("".join(line + "\n" for line in lost_lines))
    in_flight = f"{lost_in_flight:,}"
    if before_kill:
        in_flight += (f" (at {len(kills_hit)} of {len(chaos.kills)} kills; answered {min(before_kill):.2f} to "
                      f"{max(before_kill):.2f} s before it)")

    counts = archiver.totals()
    outage_s = [o.end - o.start for o in chaos.outages]
    modes = collections.Counter(o.mode for o in chaos.outages)
    log_text = archiver.service.log()
    warnings, errors = log_text.count(" level=warning "), log_text.count(" level=error ")
    failures = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.failures.items()) if n) or "none"
    dropped = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.samples_dropped.items()) if n) or "none"
    outages = (f"{len(outage_s)} ({modes['fast']} fast, {modes['immediate']} immediate; "
               f"{min(outage_s):.1f} to {max(outage_s):.1f} s, {sum(outage_s):.0f} s in all)") if outage_s else "0"
    during = sum(k.during_outage for k in chaos.kills)
    table = [
        ("scrapes served", f"{served_scrapes:,}"),
        ("samples served (NaN excluded)", f"{served_scrapes * per_scrape:,}"),
        ("samples written (rows in the archive)", f"{samples_written:,}"),
        ("scrapes lost: in flight at a SIGKILL", in_flight),
        ("scrapes lost: other", f"**{lost_other:,}**"),
        ("scrapes archived twice", f"**{twice:,}**"),
        ("samples missing from archived scrapes", f"{incomplete:,}"),
        ("scrapes archived, never served", f"{phantom:,}"),
        ("PostgreSQL outages", outages),
        ("archiver SIGKILLs", f"{len(chaos.kills)} ({during} during an outage)"),
        ("scrape failures (archiver's counts)", failures),
        ("spool drops / rejected batches / samples dropped",
         f"{counts.dropped_batches:.0f} / {counts.rejected_batches:.0f} / {dropped}"),
        ("archiver log lines at warning / error", f"{warnings} / {errors}"),
        ("peak spool", f"{peak_spool:.0f} batches"),
        ("archiver peak RSS", f"{archiver.peak_rss / 2**20:.1f} MiB"),
        ("wall time", f"{duration(time.time() - began)} (chaos {duration(chaos_s)}, drain {drain_s:.1f} s)"),
        ("load average before / after", " ".join(f"{x:.2f}" for x in load_before) + " / "
         + " ".join(f"{x:.2f}" for x in load_after)),
    ]
    print(f"\nsoak: {args.targets} targets x {per_scrape} samples every {args.interval}, "
          f"{duration(chaos_s)} of chaos (seed {args.seed}), {os.cpu_count()} CPUs, archiver exit {rc}\n")
    width = max(len(k) for k, _ in table)
    print(f"| {'':<{width}} | |\n| {'-' * width} | --- |")
    for key, value in table:
        print(f"| {key:<{width}} | {value} |")
    if problems:
        print("\ntargets with scrapes lost (other than in flight), twice, or incomplete:\n" + "\n".join(problems))
    bad = lost_other or twice or incomplete or phantom
    print(f"\ngoal: lost (other) 0, archived twice 0 — {'FAILED' if bad else 'met'}")
    if failure:
        print(f"\nthe soak did not finish cleanly: {failure}")
    if args.keep or bad or failure:
        print(f"work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 2 if failure else 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
