"""One scrape: run every enabled collector, time it, and never let one failure fail the rest.

Also the registry `/metrics` renders: the collectors, the process' own metrics and build info.
Rendering the registry as text is exposition.py's job.

Two things make a scrape cheaper than running the collectors one after the other per request:

- **Concurrent collectors.** A collector that waits (its run's wall time minus its thread's CPU
  time, where that is most of the run, smoothed over its runs: at least `wait_threshold`, 1 ms)
  moves to a small thread pool
  and stays there: each scrape hands the waiting collectors to the pool, runs the others in the
  request's thread meanwhile, then collects the pool's results. What waits is I/O the kernel
  has to answer — `filesystem`'s statvfs on a network mount, a slow hwmon sensor, a sysfs file
  behind firmware —, and Python releases the GIL while it waits, so those waits overlap the
  other collectors' work instead of adding to it. Collectors that only compute or read
  /proc (CPU time, user or kernel, which the GIL and two cores would serialise anyway) stay in
  the request's thread: measured on this 2-vCPU VM, handing every collector that took over
  0.3 ms to the pool made the scrape 14 % slower and 15 % more expensive (GIL hand-offs, thread
  wake-ups). Every collector runs in the request's thread until it is found to wait: it slept
  (a voluntary context switch) for longer than it ran, in a run while no pool thread was busy and
  in a collection no other scrape joined (other threads' hold on the GIL reads as sleeping too).
- **Started early.** A collector that waits in a thread of its own (filesystem's statvfs, behind
  a timeout for hung mounts) starts that at the beginning of each collection (Collector.start),
  so the wait overlaps the other collectors and its collect() finds the answer ready; the time
  start() takes counts in its duration.
- **Shared collections.** A scrape that arrives while a collection is in progress, and no more
  than `share_window` (0.2 s) after it started, waits for it and gets its families: N scrapers
  that arrive together cost one collection, not N. A scrape that arrives later than that waits
  for the collection in progress to end and then starts (or joins) a fresh one, so no answer
  is older than its request's arrival by more than `share_window`. Every answer is one whole
  collection (each family, success and duration of the same run), never a mix of two.

Collections never overlap (one runs at a time, under `_lock`), so a collector that keeps state
across scrapes (perf deltas) never runs twice at once, and `close()` waits for the one in
progress.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from resource import RUSAGE_THREAD, getrusage
from typing import Any, Generic, Protocol, TypeVar

from perfwatch.common.families import GaugeMetricFamily, InfoMetricFamily, Metric
from perfwatch.exporter.collectors.base import NODE, Collector, metric_name
from perfwatch.exporter.process_metrics import ProcessMetrics

log = logging.getLogger(__name__)

# A collector whose smoothed wait (wall time minus thread CPU time) reaches this moves to the pool.
WAIT_THRESHOLD = 0.001
# How many collectors run on the pool at once. Two cores and the GIL gain little from more.
WORKERS = 3
# A scrape joins a collection in progress that started at most this long before it arrived.
# Far above a normal collection (5 to 10 ms here), so scrapes that arrive together share one, and
# short enough that a stuck collection (an NFS mount not answering) is not joined by the scrapes
# that arrive long after it started: they get a fresh one after it.
SHARE_WINDOW = 0.2
# Weight of the last run's wait in the smoothed wait: low, so that one run preempted by another
# process (time runnable but not running counts as waiting) does not move a collector.
SMOOTHING = 0.2
# ... and it must have slept in this many of its runs in a row: a collector that sleeps once in a
# while (a page fault waiting for the disk, a kernel mutex) stays, and over weeks of uptime such
# one-off sleeps would have moved one collector after another.
WAIT_STREAK = 3

T = TypeVar("T")


class _Run(Generic[T]):
    """One run of the shared function: when it started, and its result once done."""

    __slots__ = ("done", "error", "joined", "started", "value")

    def __init__(self, started: float) -> None:
        self.started = started
        self.done = False
        self.joined = False  # another caller arrived while it ran
        self.value: T | None = None
        self.error: BaseException | None = None


class SharedCall(Generic[T]):
    """Calls `produce` for whoever asks, letting callers that arrive together share one call.

    A caller that arrives while a call is in progress that started at most `window` seconds
    before gets that call's result (or exception). Otherwise it waits for the call in progress to
    end and starts a new one, or joins one that another waiting caller started. One call runs at
    a time. `calls` counts the calls made.
    """

    def __init__(self, produce: Callable[[], T], window: float = SHARE_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.produce = produce
        self.window = window
        self.clock = clock
        self.calls = 0
        self._cond = threading.Condition()
        self._run: _Run[T] | None = None  # the call in progress

    def __call__(self) -> T:
        arrival = self.clock()
        with self._cond:
            while (run := self._run) is not None:
                run.joined = True
                if arrival - run.started <= self.window:
                    while not run.done:
                        self._cond.wait()
                    if run.error is not None:
                        raise run.error
                    return run.value  # type: ignore[return-value]  # set when done without error
                while self._run is run:  # too old for this caller: wait for it to end
                    self._cond.wait()
            run = self._run = _Run(self.clock())
            self.calls += 1
        try:
            run.value = value = self.produce()
        except BaseException as err:
            run.error = err
            raise
        finally:
            with self._cond:
                run.done = True
                self._run = None
                self._cond.notify_all()
        return value

    def joined(self) -> bool:
        """From inside `produce`: whether another caller has arrived during this call so far."""
        with self._cond:
            return self._run is not None and self._run.joined


class CollectorSet:
    """The registry's collector that runs perfwatch's collectors at every scrape."""

    def __init__(self, collectors: Sequence[Collector[Any]], *, workers: int = WORKERS,
                 share_window: float = SHARE_WINDOW, wait_threshold: float = WAIT_THRESHOLD) -> None:
        self.collectors = list(collectors)
        # The collectors that start work at the beginning of a collection (Collector.start).
        self._starting = [c for c in self.collectors if type(c).start is not Collector.start]
        self.wait_threshold = wait_threshold
        # One collection at a time: collectors keep state between scrapes (perf deltas).
        self._lock = threading.Lock()
        self._last_error: dict[str, str] = {}
        # Smoothed wait per collector, from its runs in the request's thread; the ones that wait.
        self._wait: dict[str, float] = {}
        self._streak: dict[str, int] = {}  # runs in a row that slept, per collector
        self.waiting: set[str] = set()
        self._waits: list[tuple[str, float]] = []  # this collection's (collector, wait), in the request's thread
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None  # started at the first collection that needs it
        self._shared = SharedCall(self._collect_all, share_window)

    @property
    def collections(self) -> int:
        """Collections run so far (scrapes that shared one count once)."""
        return self._shared.calls

    def collect(self) -> Iterator[Metric]:
        return iter(self._shared())

    def _collect_all(self) -> list[Metric]:
        success = GaugeMetricFamily(metric_name("scrape_collector_success", NODE),
                                    "perfwatch-exporter: Whether a collector succeeded.", labels=["collector"])
        duration = GaugeMetricFamily(metric_name("scrape_collector_duration_seconds", NODE),
                                     "perfwatch-exporter: Duration of a collector scrape.", labels=["collector"])
        out: list[Metric] = []
        with self._lock:
            starting: dict[str, float] = {}  # seconds in start(), part of the collector's duration
            for collector in self._starting:
                began = time.perf_counter()
                try:
                    collector.start()
                except Exception:  # its collect() runs it again, and fails the collector if it fails
                    log.debug("collector %s failed to start", collector.name, exc_info=True)
                starting[collector.name] = time.perf_counter() - began
            # The textfile collector runs after the others and is told what they expose: a file's
            # metric may not clash with the exporter's own (runs_last, expose_after).
            early = [c for c in self.collectors if not c.runs_last]
            late = [c for c in self.collectors if c.runs_last]
            done = dict(zip(map(id, early), self._run_all(early), strict=True))
            exposed = [family for families, _ in done.values() if families for family in families]
            for collector in late:
                collector.expose_after(exposed)
            done.update(zip(map(id, late), self._run_all(late), strict=True))
            # A wait measured while other scrapes arrived may be time spent waiting for the GIL
            # their threads held, not for the kernel: 8 scrapers arriving together moved
            # arp, conntrack and cpu to the pool for good, and every later scrape paid for it.
            if not self._shared.joined():
                self._learn_waits()
            self._waits.clear()
            for collector in self.collectors:
                families, seconds = done[id(collector)]
                duration.add_metric([collector.name], seconds + starting.get(collector.name, 0.0))
                success.add_metric([collector.name], 0.0 if families is None else 1.0)
                if families:
                    out.extend(families)
        out.append(success)
        out.append(duration)
        return out

    def _run_all(self, collectors: list[Collector[Any]]) -> list[tuple[list[Metric] | None, float]]:
        results: list[tuple[list[Metric] | None, float]] = [(None, 0.0)] * len(collectors)
        pending: list[tuple[int, Future[tuple[list[Metric] | None, float, float]]]] = []
        if self.waiting and self._workers > 0 and len(collectors) > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="collector")
            pending = [(i, self._pool.submit(self._timed, c)) for i, c in enumerate(collectors)
                       if c.name in self.waiting]
        queued = {i for i, _ in pending}
        for i, collector in enumerate(collectors):
            if i in queued:
                continue
            # A pool thread still running takes the GIL from this one at every switch interval:
            # waiting for it back is a sleep too, and it moved one collector after another.
            alone = all(future.done() for _, future in pending)
            families, seconds, waited = self._timed(collector)
            results[i] = (families, seconds)
            if alone:
                self._waits.append((collector.name, waited))
        for i, future in pending:
            families, seconds, _ = future.result()
            results[i] = (families, seconds)
        return results

    def _learn_waits(self) -> None:
        for name, waited in self._waits:
            # From 0: a first run's one-time waits (a helper thread starting, cold caches) count
            # for a fifth; a real wait of 5 ms or more, run after run, moves it.
            smoothed = self._wait.get(name, 0.0)
            smoothed += SMOOTHING * (waited - smoothed)
            self._wait[name] = smoothed
            self._streak[name] = self._streak.get(name, 0) + 1 if waited > 0 else 0
            if smoothed >= self.wait_threshold and self._streak[name] >= WAIT_STREAK and name not in self.waiting:
                log.info("collector %s waits (%.1f ms a run): it runs on its own thread from now on",
                         name, smoothed * 1000)
                self.waiting.add(name)

    def _timed(self, collector: Collector[Any]) -> tuple[list[Metric] | None, float, float]:
        """The collector's families (None: it failed), its wall time, and its wait: the part of the
        wall time that was not this thread's CPU time, where the thread slept (a voluntary context
        switch) and the wait is most of the run (0 otherwise).

        A collector that computes can be preempted by another process, or lose its vCPU to the
        hypervisor (steal), for a few ms: neither is a sleep of its own, and asking the wait to
        exceed the CPU time keeps the rest out. On this VM, a few seconds of steal moved every
        collector to the pool when wall minus CPU time alone was asked for. One that waits on the
        kernel (statvfs on NFS) sleeps and uses almost no CPU meanwhile."""
        start, before = time.perf_counter(), getrusage(RUSAGE_THREAD)
        families = self._run(collector)
        seconds = time.perf_counter() - start
        after = getrusage(RUSAGE_THREAD)
        if after.ru_nvcsw == before.ru_nvcsw:
            return families, seconds, 0.0
        # utime + stime of one thread add up to its exact CPU time (the kernel scales the split).
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        waited = seconds - cpu
        return families, seconds, waited if waited > cpu else 0.0

    def _run(self, collector: Collector[Any]) -> list[Metric] | None:
        try:
            families = list(collector.collect())
        except Exception as err:  # a collector must never fail the scrape
            message = f"{type(err).__name__}: {err}"
            # Log when a collector starts failing or fails differently, not at every scrape.
            if self._last_error.get(collector.name) != message:
                log.error("collector %s failed: %s", collector.name, message, exc_info=True)
                self._last_error[collector.name] = message
            return None
        if self._last_error.pop(collector.name, None) is not None:
            log.info("collector %s recovered", collector.name)
        return families

    def close(self) -> None:
        # Wait for a scrape in progress, and run no collector after this: a keep-alive connection
        # can still be served after the server stopped accepting, and a closed perf collector
        # would open its counters again.
        with self._lock:
            collectors, self.collectors = self.collectors, []
            self._starting = []
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        for collector in collectors:
            try:
                collector.close()
            except Exception:
                log.exception("collector %s failed to close", collector.name)


# mallopt(3) M_ARENA_MAX. glibc gives each thread that allocates its own malloc arena, up to 8 per
# core: the scrape threads (one per connection) and the pool grew the exporter's RSS by 4-6 MB
# under 8 concurrent scrapers. Under the GIL the threads barely contend for malloc: one arena
# keep the RSS near what one scraper needs.
M_ARENA_MAX = -8
MALLOC_ARENAS = 1


def limit_malloc_arenas() -> None:
    """Cap glibc's malloc arenas at MALLOC_ARENAS, unless MALLOC_ARENA_MAX is set (then glibc
    honours it); a no-op elsewhere (musl, other systems). Call before the threads start."""
    import ctypes
    import os

    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        # The process' own symbols, libc's among them; not ctypes.util.find_library, which runs
        # ldconfig in a subprocess and leaves the subprocess and tempfile modules loaded (RSS).
        libc = ctypes.CDLL(None)
        libc.mallopt(M_ARENA_MAX, MALLOC_ARENAS)
    except (OSError, AttributeError):
        log.debug("no mallopt here: malloc arenas left as they are")


# gc's first-generation threshold (CPython's default is 700). A scrape holds 2,000-4,000 container
# objects (samples, label dicts, lines) until its answer is written, so at 700 the collector ran
# about twice per scrape over them, and every sixth scrape its second generation: 4 % of a
# scrape's CPU (perf, this VM). Nearly all of them are freed by reference counting when the
# answer is sent, so with this threshold a collection runs only when objects accumulate.
GC_FIRST_GENERATION = 20_000


def tune_garbage_collector() -> None:
    """Move what exists at start (modules, collectors, caches) out of gc's reach (gc.freeze) and
    raise its first threshold to GC_FIRST_GENERATION. Call once, when start-up is done."""
    import gc

    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_FIRST_GENERATION, second, third)


class Collects(Protocol):
    def collect(self) -> Iterable[Metric]: ...


class Registry:
    """What `/metrics` renders: the families of each collector registered, in their order.

    prometheus_client's CollectorRegistry without what the exporter does not use (describe(),
    name clash checks, restricted views), so that the exporter does not load prometheus_client."""

    def __init__(self) -> None:
        self._collectors: list[Collects] = []
        self._lock = threading.Lock()

    def register(self, collector: Collects) -> None:
        with self._lock:
            self._collectors.append(collector)

    def collect(self) -> Iterator[Metric]:
        with self._lock:  # a copy: a scrape is not disturbed by a register() meanwhile
            collectors = list(self._collectors)
        for collector in collectors:
            yield from collector.collect()


class _Static:
    """A collector that serves families fixed at start (build info)."""

    def __init__(self, *families: Metric) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def build_registry(collector_set: CollectorSet, *, version: str) -> Registry:
    """The registry `/metrics` renders: the collectors, the process' own metrics, build info.

    Called once by the exporter before its server starts: it also caps malloc arenas for the
    scrape and pool threads to come (limit_malloc_arenas)."""
    import platform

    limit_malloc_arenas()
    registry = Registry()
    registry.register(collector_set)
    registry.register(ProcessMetrics())
    build_info = InfoMetricFamily(
        metric_name("exporter_build"),
        "perfwatch exporter version and the Python it runs on.",
        value={"version": version, "python_version": platform.python_version()},
    )
    registry.register(_Static(build_info))
    return registry
