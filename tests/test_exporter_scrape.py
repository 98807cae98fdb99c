"""exporter/collect.py's CollectorSet in process: closing it while a scrape runs, collectors running
concurrently, scrapes sharing one collection."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collect import WAIT_STREAK, CollectorSet, SharedCall
from perfwatch.exporter.collectors.base import Collector, HostPaths, NoOptions, gauge
from perfwatch.exporter.exposition import render_families


class Slow(Collector[NoOptions]):
    """Blocks in collect() until released; counts its collects and closes."""

    name = "slow"
    description = "test"

    def __init__(self) -> None:
        super().__init__(NoOptions(), HostPaths())
        self.entered, self.release = threading.Event(), threading.Event()
        self.collects = self.closes = 0
        self.closed_while_collecting = False

    def collect(self) -> Iterator[Metric]:
        self.collects += 1
        self.entered.set()
        self.release.wait(10)
        self.closed_while_collecting = self.closes > 0
        yield gauge("slow", "Test.", 1)

    def close(self) -> None:
        self.closes += 1


def test_close_waits_for_the_scrape_in_progress_and_no_collector_runs_after_it() -> None:
    slow = Slow()
    collectors = CollectorSet([slow])
    scrape = threading.Thread(target=lambda: list(collectors.collect()))
    scrape.start()
    assert slow.entered.wait(10)
    closing = threading.Thread(target=collectors.close)
    closing.start()
    closing.join(0.3)
    assert closing.is_alive() and slow.closes == 0  # waits for the scrape
    slow.release.set()
    scrape.join(10)
    closing.join(10)
    assert slow.closes == 1 and not slow.closed_while_collecting
    families = {f.name: f for f in collectors.collect()}  # a late scrape on a kept-alive connection
    assert slow.collects == 1 and "perfwatch_slow" not in families
    assert families["node_scrape_collector_success"].samples == []
    collectors.close()
    assert slow.closes == 1


# --- concurrent collectors, shared collections ----------------------------------------------------

class Sleepy(Collector[NoOptions]):
    """Sleeps in collect() (as a collector waiting on the kernel would), records when it ran, and
    how many of its collects ran at once."""

    description = "test"

    def __init__(self, name: str, seconds: float, fail: bool = False) -> None:
        self.name = name  # type: ignore[misc]  # a ClassVar elsewhere; tests need several names
        super().__init__(NoOptions(), HostPaths())
        self.seconds, self.fail = seconds, fail
        self.spans: list[tuple[float, float]] = []
        self.active = self.most_active = 0
        self._count = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._count:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        start = time.monotonic()
        try:
            time.sleep(self.seconds)
            if self.fail:
                raise RuntimeError("broken on purpose")
        finally:
            self.spans.append((start, time.monotonic()))
            with self._count:
                self.active -= 1
        yield gauge(f"{self.name}_value", "Test.", 1)


def run_scrapes(collectors: CollectorSet, n: int) -> list[bytes]:
    """`n` scrapes at once, as `n` scrapers arriving together; the rendered body of each."""
    bodies: list[bytes] = [b""] * n
    barrier = threading.Barrier(n)

    def scrape(i: int) -> None:
        barrier.wait()
        bodies[i] = render_families(collectors.collect())

    threads = [threading.Thread(target=scrape, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return bodies


def test_collectors_that_wait_overlap_and_the_scrape_takes_the_slowest_not_the_sum() -> None:
    slow = [Sleepy(f"slow{i}", 0.3) for i in range(3)]
    quick = Sleepy("quick", 0.0)
    collectors = CollectorSet([*slow, quick], workers=3)
    try:
        for _ in range(WAIT_STREAK):  # the first scrapes, in the request's thread, measure the waits
            list(collectors.collect())
        assert collectors.waiting == {"slow0", "slow1", "slow2"}
        for _ in range(2):
            start = time.monotonic()
            families = {f.name: f for f in collectors.collect()}
            elapsed = time.monotonic() - start
            assert elapsed < 0.3 * 3 * 0.8, elapsed  # serial would be 0.9 s
            assert {s.labels["collector"]: s.value for s in families["node_scrape_collector_success"].samples} == {
                "slow0": 1, "slow1": 1, "slow2": 1, "quick": 1}
            assert all(f"perfwatch_{c.name}_value" in families for c in [*slow, quick])
        # Each slow collector's last run overlapped the others'.
        last = [c.spans[-1] for c in slow]
        assert max(s for s, _ in last) < min(e for _, e in last)
        # Order of the families stays the collectors' order whatever ran where.
        order = [f.name for f in collectors.collect() if f.name.endswith("_value")]
        assert order == ["perfwatch_slow0_value", "perfwatch_slow1_value", "perfwatch_slow2_value",
                         "perfwatch_quick_value"]
    finally:
        collectors.close()


def test_collectors_that_only_compute_stay_in_the_requests_thread() -> None:
    def busy(seconds: float) -> Iterator[Metric]:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass
        yield gauge("busy", "Test.", 1)

    cpu_bound = Sleepy("cpu_bound", 0.0)
    cpu_bound.collect = lambda: busy(0.01)  # type: ignore[method-assign]
    collectors = CollectorSet([cpu_bound, Sleepy("waits", 0.01)])
    try:
        for _ in range(3):
            list(collectors.collect())
    finally:
        collectors.close()
    assert collectors.waiting == {"waits"}


def test_waits_are_learnt_only_from_collections_no_other_scrape_arrived_during() -> None:
    """A scrape that joins a collection may hold the GIL meanwhile, which the collector's wall
    time counts as waiting: 8 concurrent scrapers moved CPU-bound collectors to the pool for good."""
    slow = Slow()
    collectors = CollectorSet([slow])
    try:
        first = threading.Thread(target=lambda: list(collectors.collect()))
        first.start()
        assert slow.entered.wait(10)
        joiner = threading.Thread(target=lambda: list(collectors.collect()))
        joiner.start()
        deadline = time.monotonic() + 10
        while not collectors._shared.joined() and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)  # the collector's "wait": 50 times the threshold
        slow.release.set()
        first.join(10)
        joiner.join(10)
        assert collectors.collections == 1 and collectors.waiting == set()
        slow.entered.clear()
        list(collectors.collect())  # alone: the same wait is learnt (released already: ~0 ms)
        assert collectors.waiting == set()
        for run in range(WAIT_STREAK):  # alone, sleeping in each run: learnt
            assert collectors.waiting == set(), run
            slow.entered.clear()
            slow.release.clear()
            alone = threading.Thread(target=lambda: list(collectors.collect()))
            alone.start()
            assert slow.entered.wait(10)
            time.sleep(0.05)
            slow.release.set()
            alone.join(10)
        assert collectors.waiting == {"slow"}
    finally:
        slow.release.set()
        collectors.close()


def test_a_collector_preempted_by_other_processes_is_not_taken_for_one_that_waits() -> None:
    """Time runnable but not running (other processes on its CPU, or the hypervisor's steal) is
    not a wait of the collector's own: without a sleep it stays in the request's thread."""
    import multiprocessing
    import os

    def spin(seconds: float) -> Iterator[Metric]:
        end = time.monotonic() + seconds  # wall time: most of it preempted by the hogs
        while time.monotonic() < end:
            pass
        yield gauge("spin", "Test.", 1)

    spinner = Sleepy("spinner", 0.0)
    spinner.collect = lambda: spin(0.05)  # type: ignore[method-assign]
    sleeper = Sleepy("sleeper", 0.02)
    collectors = CollectorSet([spinner, sleeper])
    cpu = min(os.sched_getaffinity(0))
    saved = os.sched_getaffinity(0)
    context = multiprocessing.get_context("fork")
    hogs = [context.Process(target=_hog, args=(cpu,), daemon=True) for _ in range(2)]
    try:
        for hog in hogs:
            hog.start()
        os.sched_setaffinity(0, {cpu})  # the hogs' CPU: the spinner gets a third of it
        time.sleep(0.1)
        for _ in range(4):
            list(collectors.collect())
    finally:
        os.sched_setaffinity(0, saved)
        for hog in hogs:
            hog.terminate()
            hog.join(10)
        collectors.close()
    assert collectors.waiting == {"sleeper"}


def _hog(cpu: int) -> None:
    import os

    os.sched_setaffinity(0, {cpu})
    while True:
        pass


def test_a_collector_that_sleeps_once_in_a_while_stays_in_the_requests_thread() -> None:
    once = Sleepy("once", 0.0)
    collectors = CollectorSet([once])
    try:
        for run in range(4 * WAIT_STREAK):
            once.seconds = 0.05 if run % WAIT_STREAK == 0 else 0.0  # one run in WAIT_STREAK sleeps 50 ms
            list(collectors.collect())
    finally:
        collectors.close()
    assert collectors.waiting == set()


def test_a_collector_that_raises_on_the_pool_is_marked_0_and_the_rest_answer() -> None:
    broken, fine, other = Sleepy("broken", 0.05, fail=True), Sleepy("fine", 0.05), Sleepy("other", 0.0)
    collectors = CollectorSet([broken, fine, other])
    try:
        for _ in range(WAIT_STREAK):  # learns which wait
            list(collectors.collect())
        assert collectors.waiting == {"broken", "fine"}
        families = {f.name: f for f in collectors.collect()}
    finally:
        collectors.close()
    success = {s.labels["collector"]: s.value for s in families["node_scrape_collector_success"].samples}
    assert success == {"broken": 0, "fine": 1, "other": 1}
    assert "perfwatch_fine_value" in families and "perfwatch_broken_value" not in families
    durations = {s.labels["collector"]: s.value for s in families["node_scrape_collector_duration_seconds"].samples}
    assert durations["broken"] >= 0.04 and durations["fine"] >= 0.04


def test_scrapes_that_arrive_together_share_one_collection_and_each_gets_it_whole() -> None:
    n = 8
    slow, stateful = Sleepy("slow", 0.2), Sleepy("perf", 0.05)
    collectors = CollectorSet([slow, stateful, Sleepy("quick", 0.0)])
    try:
        bodies = run_scrapes(collectors, n)
    finally:
        collectors.close()
    assert 1 <= collectors.collections < n
    assert len(slow.spans) == collectors.collections
    for body in bodies:
        text = body.decode()
        for name in ("slow", "perf", "quick"):
            assert f"perfwatch_{name}_value 1.0\n" in text
            assert f'node_scrape_collector_success{{collector="{name}"}} 1.0\n' in text
            assert f'node_scrape_collector_duration_seconds{{collector="{name}"}} ' in text
    # Scrapes that shared a collection got the same bytes: one run's durations, not a mix.
    assert len(set(bodies)) == collectors.collections


def test_a_stateful_collector_never_runs_twice_at_once_even_without_sharing() -> None:
    stateful, slow = Sleepy("perf", 0.02), Sleepy("slow", 0.02)
    collectors = CollectorSet([stateful, slow], share_window=0.0)  # every scrape its own collection
    try:
        run_scrapes(collectors, 6)
    finally:
        collectors.close()
    assert stateful.most_active == 1 and slow.most_active == 1
    assert collectors.collections >= 2


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_late_scrape_never_gets_a_collection_older_than_the_window() -> None:
    """Joining: only a collection that started at most `window` before the scrape arrived. A later
    scrape waits for the one in progress and gets a fresh one."""
    clock = Clock()
    release = threading.Event()
    started: list[float] = []

    def produce() -> float:  # a collection, identified by when it started
        started.append(clock.now)
        if len(started) == 1:
            release.wait(10)
        return started[-1]

    shared = SharedCall(produce, window=1.0, clock=clock)
    results: dict[str, float] = {}

    def call(name: str) -> None:
        results[name] = shared()

    first = threading.Thread(target=call, args=("first",))
    first.start()
    while not started:
        time.sleep(0.001)
    clock.now = 0.5  # within the window: joins the first collection
    joined = threading.Thread(target=call, args=("joined",))
    joined.start()
    time.sleep(0.1)
    clock.now = 2.0  # the collection in progress started 2 s before: too old for this one
    late = threading.Thread(target=call, args=("late",))
    late.start()
    time.sleep(0.1)
    assert shared.calls == 1  # the late one waits; it does not run a second collection alongside
    clock.now = 2.5
    release.set()
    for thread in (first, joined, late):
        thread.join(10)
    assert shared.calls == 2 and started == [0.0, 2.5]
    assert results == {"first": 0.0, "joined": 0.0, "late": 2.5}


def test_an_exception_reaches_every_scrape_that_shared_the_call() -> None:
    entered, release = threading.Event(), threading.Event()

    def produce() -> None:
        entered.set()
        release.wait(10)
        raise RuntimeError("boom")

    shared: SharedCall[None] = SharedCall(produce, window=10.0)
    errors: list[str] = []

    def call() -> None:
        try:
            shared()
        except RuntimeError as err:
            errors.append(str(err))

    threads = [threading.Thread(target=call) for _ in range(3)]
    threads[0].start()
    assert entered.wait(10)
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.1)
    release.set()
    for thread in threads:
        thread.join(10)
    assert errors == ["boom"] * 3 and shared.calls == 1


class Recording(Collector[NoOptions]):
    """Appends its collects to a shared log."""

    description = "test"

    def __init__(self, name: str, calls: list[str], *, start_fails: bool = False) -> None:
        self.name = name  # type: ignore[misc]  # one class, several collectors
        self.calls, self.start_fails = calls, start_fails
        super().__init__(NoOptions(), HostPaths())

    def collect(self) -> Iterator[Metric]:
        self.calls.append(f"collect {self.name}")
        yield gauge(self.name, "Test.", 1)


class Starting(Recording):
    """... and its starts; start() fails when told to."""

    def start(self) -> None:
        self.calls.append(f"start {self.name}")
        time.sleep(0.05)  # counts in its duration
        if self.start_fails:
            raise OSError("cannot start")


def test_start_runs_before_every_collect_of_each_collection_and_its_failure_fails_nothing() -> None:
    calls: list[str] = []
    collector_set = CollectorSet([Recording("a", calls), Starting("b", calls), Starting("c", calls, start_fails=True)])
    for _ in range(2):
        families = list(collector_set.collect())
        text = render_families(families).decode()
        assert 'node_scrape_collector_success{collector="c"} 1.0' in text  # its collect() worked
        durations = {s.labels["collector"]: s.value for f in families
                     if f.name == "node_scrape_collector_duration_seconds" for s in f.samples}
        assert durations["b"] >= 0.05 and durations["c"] >= 0.05 and durations["a"] < 0.05
    once = ["start b", "start c", "collect a", "collect b", "collect c"]
    assert calls == once + once
