"""Scrape and parse in worker processes (`scrape.workers: N`), so that more than one core parses.

Parsing is CPU-bound and holds the GIL: in one process the scrape jobs took 83 % of the time, and
the writer, starved of the GIL, wrote less the more there was to write. With N workers, the scrape
of a target — HTTP, parse, relabel, limits, and the JSON spool line — runs in a worker process;
the archiver's scheduling thread gets the Batch (or the ScrapeError) back and spools it exactly as
it spools its own, and the writer has the archiver's core.

* Workers are started with the `spawn` context, never `fork`: the archiver has threads (the
  scheduler's, the writer, the HTTP server's), and a forked child inherits their locks held.
* A target is scraped by one worker while it exists (the one with the fewest targets when it was
  first scraped), and the worker keeps one TargetScraper per target, so keep-alive sessions are
  reused. Each job carries the Target itself, so a reload needs no message: a worker that gets a
  target changed (interval, limits, credentials) makes a new scraper for it.
* A worker runs its scrapes on threads of its own: most of a scrape is waiting for the target.
* A worker that dies (SIGKILL, OOM killer, a crash) is logged, counted, and started again at once
  (after a growing pause if it keeps dying young); the scrapes it had in flight fail with reason
  `worker`, and those due meanwhile wait for the new one (up to their timeout). One that does not
  answer a scrape within the target's scrape_timeout + GRACE is taken for hung and killed: no
  scrape waits longer than that.
* Workers ignore SIGINT and SIGTERM: a signal to the whole process group (a terminal's Ctrl-C,
  systemd's stop) is the archiver's to act on — it lets the scrapes in flight finish, then ends
  its workers (`ScrapePool.close`). A worker whose archiver is gone (SIGKILL) reads the end of its
  pipe and exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from perfwatch.archiver.model import Batch, MetricMeta, Sample
from perfwatch.archiver.scrape import ScrapeError, Target, TargetScraper
from perfwatch.common.logs import setup_logging

log = logging.getLogger("perfwatch.archiver")

WORKER = "worker"  # scrape failure reason: the worker process died, or did not answer in time
GRACE = 5.0  # seconds past a target's scrape_timeout before its worker is taken for hung
THREADS = 256  # scrapes one worker runs at once (each mostly waits for its target)
STOP_WAIT = 2.0  # seconds close() waits for a worker to exit before killing it
# A worker that dies within QUICK_DEATH seconds of its start a second time in a row is started again
# only after a pause, doubled each time up to MAX_PAUSE: one that cannot start must not fork-bomb.
QUICK_DEATH = 5.0
MAX_PAUSE = 30.0

_CONTEXT = multiprocessing.get_context("spawn")

# Messages: archiver → worker (_JOB, job id, Target), (_FORGET, Target), None (stop);
# worker → archiver (job id, _OK, packed batch, spool line), (job id, _FAILED, reason, message),
# (job id, _BUG, what, traceback).
_JOB, _FORGET = "job", "forget"
_OK, _FAILED, _BUG = "ok", "failed", "bug"

Packed = tuple[str, str, int, list[tuple[Any, ...]], list[tuple[str, ...]]]


def pack(batch: Batch) -> Packed:
    """A Batch as plain tuples: pickled and rebuilt in a third of the time the dataclasses take."""
    return (batch.job, batch.instance, batch.scraped_at_ms,
            [(s.name, s.labels, s.value, s.timestamp_ms) for s in batch.samples],
            [(m.name, m.kind, m.family_type, m.help, m.unit) for m in batch.metadata.values()])


def unpack(packed: Packed) -> Batch:
    job, instance, scraped_at_ms, samples, metadata = packed
    return Batch(job, instance, scraped_at_ms, [Sample(*s) for s in samples],
                 {m[0]: MetricMeta(*m) for m in metadata})  # type: ignore[arg-type]  # kind is a SampleKind


# -- the worker process ------------------------------------------------------------------------


def _serve(conn: Connection, log_level: str) -> None:
    """A worker's main: run the scrapes the archiver sends until it says stop or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    setup_logging(log_level)  # what scrape.py logs (duplicate samples) in the archiver's format
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    scrapers: dict[tuple[str, str], TargetScraper] = {}
    scrapers_lock = threading.Lock()
    send_lock = threading.Lock()

    def scraper_for(target: Target) -> TargetScraper:
        with scrapers_lock:
            scraper = scrapers.get(target.identity)
            if scraper is None or not scraper.target.same_as(target):
                if scraper is not None:
                    scraper.close()
                scraper = scrapers[target.identity] = TargetScraper(target)
            return scraper

    def run(job_id: int, target: Target) -> None:
        reply: tuple[Any, ...]
        try:
            batch = scraper_for(target).scrape()
            reply = (job_id, _OK, pack(batch), (batch.to_json() + "\n").encode("utf-8"))
        except ScrapeError as err:
            reply = (job_id, _FAILED, err.reason, err.message)
        except Exception as err:  # a bug: the archiver logs it with the traceback
            reply = (job_id, _BUG, f"{type(err).__name__}: {err}"[:300], traceback.format_exc())
        try:
            with send_lock:
                conn.send(reply)
        except OSError:  # the archiver is gone
            os._exit(0)

    executor = ThreadPoolExecutor(THREADS, thread_name_prefix="scrape")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the archiver exited, or was killed
            os._exit(0)
        if message is None:
            break
        if message[0] == _JOB:
            executor.submit(run, message[1], message[2])
        elif message[0] == _FORGET:
            with scrapers_lock:
                scraper = scrapers.get(message[1].identity)
                if scraper is not None and scraper.target.same_as(message[1]):
                    del scrapers[message[1].identity]
                    scraper.close()
    os._exit(0)  # nothing in flight is wanted any more; sessions close with the process


# -- the archiver's side -----------------------------------------------------------------------


@dataclasses.dataclass
class _Job:
    target: Target
    done: threading.Event = dataclasses.field(default_factory=threading.Event)
    reply: tuple[Any, ...] | None = None
    failure: ScrapeError | None = None  # set instead of `reply` when the worker went away


@dataclasses.dataclass
class _Life:
    """One worker process, from its start to its end."""

    process: BaseProcess
    conn: Connection
    started: float
    jobs: dict[int, _Job] = dataclasses.field(default_factory=dict)
    killed_because: str | None = None


class _Slot:
    """Worker number `index`, started again whenever its process ends."""

    def __init__(self, pool: ScrapePool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.life: _Life | None = None  # None while (re)starting, or once closed
        self.targets: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._started = threading.Condition(self._lock)  # notified when a new life begins
        self._young_deaths = 0  # in a row

    def start(self) -> None:
        parent_end, child_end = _CONTEXT.Pipe(duplex=True)
        process = _CONTEXT.Process(target=_serve, args=(child_end, self.pool.log_level), daemon=True,
                                   name=f"perfwatch-archiver-worker-{self.index}")
        process.start()
        child_end.close()  # the worker's end is the worker's alone: its exit ends our reads
        life = _Life(process, parent_end, time.monotonic())
        with self._lock:
            self.life = life
            self._started.notify_all()
        threading.Thread(target=self._read, args=(life,), name=f"worker-{self.index}-reader", daemon=True).start()

    def scrape(self, target: Target) -> tuple[Batch, bytes]:
        job = _Job(target)
        with self._lock:
            # Being started again: wait for it, as a scrape waits for a slow target.
            self._started.wait_for(lambda: self.life is not None or self.pool.closing.is_set(), target.timeout)
            life = self.life
            if life is None:
                raise ScrapeError(WORKER, f"scrape worker {self.index} is being started again")
            job_id = next(self.pool.job_ids)
            life.jobs[job_id] = job
            try:
                life.conn.send((_JOB, job_id, target))
            except OSError as err:  # it died just now: its reader fails the job
                log.debug("scrape worker %d: sending a job failed: %s", self.index, err)
        wait = target.timeout + GRACE
        if not job.done.wait(wait):
            self._kill(life, f"it did not answer the scrape of {target.name} within {wait:g}s")
            if not job.done.wait(GRACE):
                raise ScrapeError(WORKER, f"no answer from scrape worker {self.index} within {wait:g}s")
        if job.failure is not None:
            raise job.failure
        assert job.reply is not None
        _, kind, first, second = job.reply
        if kind == _OK:
            return unpack(first), second
        if kind == _FAILED:
            raise ScrapeError(first, second)
        log.error("scrape of %s in worker %d raised %s", target.name, self.index, second.rstrip())
        raise ScrapeError(WORKER, f"the scrape raised {first}")

    def forget(self, target: Target) -> None:
        with self._lock:
            self.targets.discard(target.identity)
            if self.life is not None:
                with contextlib.suppress(OSError):  # it died: its scrapers went with it
                    self.life.conn.send((_FORGET, target))

    def _kill(self, life: _Life, why: str) -> None:
        # No lock taken: a thread blocked sending to a worker that reads no more may hold it, and
        # only this kill frees it.
        if life.killed_because is None:
            life.killed_because = why
            log.error("scrape worker %d (pid %s): %s; killing it", self.index, life.process.pid, why)
        life.process.kill()

    def _read(self, life: _Life) -> None:
        """The worker's answers, as they come; when it ends, fail what it had and start another."""
        try:
            while True:
                reply = life.conn.recv()
                with self._lock:
                    job = life.jobs.pop(reply[0], None)
                if job is not None:
                    job.reply = reply
                    job.done.set()
        except (EOFError, OSError):
            pass
        life.process.join(STOP_WAIT)
        if life.process.is_alive():  # it closed its end and lives on: not ours to trust
            life.process.kill()
            life.process.join()
        life.conn.close()
        with self._lock:
            lost, life.jobs = life.jobs, {}
            if self.life is life:
                self.life = None
        closing = self.pool.closing.is_set()
        how = _describe_exit(life.process.exitcode)
        failure = ScrapeError(WORKER, f"scrape worker {self.index} (pid {life.process.pid}) {how}"
                              + (f": {life.killed_because}" if life.killed_because else ""))
        for job in lost.values():
            job.failure = failure
            job.done.set()
        if closing:
            return
        log.error("scrape worker %d (pid %s) %s; %d scrapes in flight failed; starting it again",
                  self.index, life.process.pid, how, len(lost))
        self.pool.restarts += 1
        self._young_deaths = self._young_deaths + 1 if time.monotonic() - life.started < QUICK_DEATH else 0
        pause = min(MAX_PAUSE, 2.0 ** (self._young_deaths - 2)) if self._young_deaths > 1 else 0.0
        if pause and self.pool.closing.wait(pause):
            return
        try:
            self.start()
        except Exception as err:  # out of processes or memory: the next death or close tries again
            log.error("cannot start scrape worker %d again: %s", self.index, err)


class ScrapePool:
    """`size` scrape worker processes; `scrape(target)` from any thread, `close()` at the end."""

    def __init__(self, size: int, log_level: str = "info") -> None:
        if size < 1:
            raise ValueError("a scrape pool needs at least one worker")
        self.log_level = log_level
        self.closing = threading.Event()
        self.restarts = 0  # workers started again after they died
        self.job_ids = itertools.count()
        self._slots = [_Slot(self, i) for i in range(size)]
        self._assign_lock = threading.Lock()

    def start(self) -> None:
        for slot in self._slots:
            slot.start()

    def scrape(self, target: Target) -> tuple[Batch, bytes]:
        """Scrape `target` in its worker: the Batch and its spool line, or ScrapeError (a worker
        that died or hung: reason WORKER). Returns within target.timeout + 2 * GRACE."""
        if self.closing.is_set():
            raise ScrapeError(WORKER, "the archiver is stopping")
        return self._slot_for(target).scrape(target)

    def forget(self, target: Target) -> None:
        """`target` is no longer scraped (a reload removed it): its worker closes its session."""
        with self._assign_lock:
            for slot in self._slots:
                if target.identity in slot.targets:
                    slot.forget(target)

    def pids(self) -> list[int]:
        return [life.process.pid for slot in self._slots if (life := slot.life) is not None
                and life.process.pid is not None]

    def close(self) -> None:
        """Stop every worker: asked to exit, killed if it has not within STOP_WAIT."""
        self.closing.set()
        lives = []
        for slot in self._slots:
            with slot._lock:
                life, slot.life = slot.life, None
                slot._started.notify_all()  # scrapes waiting for a restart: there is none
            if life is not None:
                lives.append(life)
                with contextlib.suppress(OSError):  # gone already
                    life.conn.send(None)
        deadline = time.monotonic() + STOP_WAIT
        for life in lives:
            life.process.join(max(0.0, deadline - time.monotonic()))
            if life.process.is_alive():
                life.process.kill()
                life.process.join()

    def _slot_for(self, target: Target) -> _Slot:
        with self._assign_lock:
            for slot in self._slots:
                if target.identity in slot.targets:
                    return slot
            slot = min(self._slots, key=lambda s: len(s.targets))
            slot.targets.add(target.identity)
            return slot


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"
