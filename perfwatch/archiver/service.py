"""The running archiver: scrape jobs → spool → writer thread → PostgreSQL, plus rollup and
retention jobs, in one process.

Every scraped batch goes to the spool first (fsynced), and one writer thread moves batches from
the spool to the store in order. A database outage therefore only makes the spool grow; the
writer retries every `database.retry_interval` and catches up oldest-first. Scrapes never wait
for the database. When the database is the embedded one and its server is found dead (killed,
OOM-killed, stopped by hand), the archiver starts it again.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import fcntl
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

import sqlalchemy as sa
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from perfwatch.archiver.db import DatabaseUnavailable, make_engine
from perfwatch.archiver.embedded import EmbeddedPostgres
from perfwatch.archiver.migrate import apply_migrations
from perfwatch.archiver.policy import RAW, Policy, mirror_policy
from perfwatch.archiver.retention import run_retention
from perfwatch.archiver.rollup import run_rollups
from perfwatch.archiver.scrape import REASONS, ScrapeError, TargetScraper
from perfwatch.archiver.selfmetrics import ArchiverMetrics
from perfwatch.archiver.settings import ArchiverSettings
from perfwatch.archiver.spool import Spool
from perfwatch.archiver.status import tier_status
from perfwatch.archiver.store import Store

log = logging.getLogger("perfwatch.archiver")

SHUTDOWN_GRACE = 5.0  # seconds SIGTERM waits for the writer to empty the spool into the database
REVIVE_BACKOFF_MAX = 60.0  # seconds between tries to start a dead embedded server that keeps failing to start
REJECT_AFTER = 3  # a batch the database refuses this many times (while up) is set aside
T = TypeVar("T")


class DataDirLockedError(RuntimeError):
    pass


def lock_data_dir(data_dir: Path) -> IO[str]:
    """One archiver per data dir: two would interleave one spool."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / "archiver.lock", "a+")  # noqa: SIM115 - held for the process' life
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DataDirLockedError(f"another perfwatch-archiver uses data dir {data_dir}") from None
    return handle


@dataclasses.dataclass
class Database:
    """The engine, and whether the schema is known to be in place; thread-safe."""

    dsn: str
    policy: Policy
    metrics: ArchiverMetrics | None = None

    def __post_init__(self) -> None:
        self.engine = make_engine(self.dsn)
        self.store: Store | None = None
        self._lock = threading.Lock()
        self._down_reason: str | None = None

    def ready(self, strict: bool = False) -> bool:
        """Migrations applied and policy mirrored (once per process); False while unreachable.
        Other failures (a missing privilege, a changed migration) are logged and retried, or
        raised when `strict` (at start, where they are a setup error to report and exit on)."""
        with self._lock:
            if self.store is not None:
                return True
            try:
                apply_migrations(self.engine)  # logs each file it applies
                mirror_policy(self.engine, self.policy)
            except DatabaseUnavailable as err:
                self.mark_down(err)
                return False
            except Exception as err:
                if strict:
                    raise
                log.error("cannot prepare the database (migrations, policy): %s; retrying", err)
                return False
            self.store = Store(self.engine)
            if self.metrics:
                self.metrics.store_dropped = lambda: dict(self.store.dropped) if self.store else {}
        self.mark_up()
        return True

    def mark_down(self, err: BaseException) -> None:
        if self.metrics:
            self.metrics.database_up.set(0)
        reason = str(err) or type(err).__name__
        log.debug("database unavailable: %s", reason)
        if self._down_reason is None:
            log.error("database unreachable (%s): batches wait in the spool; retrying", reason)
        self._down_reason = reason

    def mark_up(self) -> None:
        if self.metrics:
            self.metrics.database_up.set(1)
        if self._down_reason is not None:
            log.info("database reachable again")
        self._down_reason = None

    def use_dsn(self, dsn: str) -> None:
        """Connect to `dsn` from now on: the embedded server came back on another port (its old one
        was taken meanwhile). Same server, same data: the store keeps its caches and counters."""
        with self._lock:
            if dsn == self.dsn:
                return
            old, self.dsn = self.engine, dsn
            self.engine = make_engine(dsn)
            if self.store is not None:
                self.store.engine = self.engine
        old.dispose()
        log.info("the database moved to a new address; connecting there from now on")

    def dispose(self) -> None:
        self.engine.dispose()


class Archiver:
    def __init__(self, settings: ArchiverSettings, dsn: str | None) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.configured_dsn = dsn
        self.spool = Spool(self.data_dir / "spool", settings.spool.max_bytes)
        self.metrics = ArchiverMetrics(self.spool)
        self.targets = settings.scrape_targets()
        self.scrapers = [TargetScraper(t) for t in self.targets]
        self._failing: dict[str, str] = {}  # target name → last failure, to log changes only
        self._refusals = 0  # times in a row the database refused the oldest batch (while reachable)
        self._draining = threading.Event()  # SIGTERM: write what is left, then stop
        self._halt = threading.Event()  # stop now, even mid-backlog
        # Rollup and retention passes one at a time: both rewrite tier state, and run together
        # they can deadlock each other in PostgreSQL.
        self._maintenance = threading.Lock()
        self.embedded: EmbeddedPostgres | None = None
        # Starting a dead embedded server again: one thread at a time, and not more often than this.
        self._reviving = threading.Lock()
        self._revive_wait = float(settings.database.retry_interval)
        self._next_revive = 0.0  # time.monotonic() of the next allowed try
        self.db: Database | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.writer: threading.Thread | None = None
        for t in self.targets:
            self.metrics.scrapes.labels(t.job, t.instance)
            self.metrics.samples_scraped.labels(t.job, t.instance)
            self.metrics.samples_written.labels(t.job, t.instance)
            for reason in REASONS:
                self.metrics.scrape_failures.labels(t.job, t.instance, reason)
        for result in ("ok", "error"):
            self.metrics.retention_runs.labels(result)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        dsn = self.configured_dsn
        if dsn is None:
            self.embedded = EmbeddedPostgres(self.data_dir / "postgres")
            dsn = self.embedded.start()
            log.info("no database configured: using the embedded PostgreSQL in %s", self.embedded.data_dir)
        self.db = Database(dsn, self.settings.policy, self.metrics)
        self.db.ready(strict=True)  # unreachable is not fatal: scrapes wait in the spool meanwhile
        self.writer = threading.Thread(target=self._write_loop, name="writer", daemon=True)
        self.writer.start()

        workers = len(self.scrapers) + 2
        self.scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(workers)}, timezone="UTC",
                                             job_defaults={"coalesce": True, "max_instances": 1})
        now = _now()
        for scraper in self.scrapers:
            t = scraper.target
            self.scheduler.add_job(self._scrape, IntervalTrigger(seconds=t.interval), args=[scraper],
                                   id=f"scrape {t.job}/{t.instance}", next_run_time=now,
                                   misfire_grace_time=max(1, int(t.interval)))
        schedule = self.settings.schedule
        self.scheduler.add_job(self.rollup_pass, IntervalTrigger(seconds=schedule.rollup_interval), id="rollup",
                               next_run_time=now, misfire_grace_time=max(1, int(schedule.rollup_interval)))
        self.scheduler.add_job(self.retention_pass, IntervalTrigger(seconds=schedule.retention_interval),
                               id="retention", next_run_time=now,
                               misfire_grace_time=max(1, int(schedule.retention_interval)))
        self.scheduler.start()
        for t in self.targets:
            log.info("scraping %s every %gs (timeout %gs)", t.name, t.interval, t.timeout)

    def stop(self) -> None:
        """Finish in-flight scrapes (they land in the spool), write what the database takes within
        SHUTDOWN_GRACE, and stop the embedded server if we started it."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
        self._draining.set()
        if self.writer is not None:
            self.writer.join(SHUTDOWN_GRACE)
            if self.writer.is_alive():
                self._halt.set()  # the write in flight completes; the rest stays spooled
                self.writer.join()
        left = self.spool.stats()
        if left.batches:
            log.warning("%d batches (%d bytes) stay in the spool %s; they are written at the next start",
                        left.batches, left.bytes, self.spool.directory)
        self.spool.close()
        for scraper in self.scrapers:
            scraper.close()
        if self.db is not None:
            self.db.dispose()
        if self.embedded is not None:
            self.embedded.stop()

    # -- jobs ------------------------------------------------------------------------------------

    def _scrape(self, scraper: TargetScraper) -> None:
        t = scraper.target
        m = self.metrics
        m.scrapes.labels(t.job, t.instance).inc()
        started = time.perf_counter()
        try:
            batch = scraper.scrape()
        except ScrapeError as err:
            m.scrape_duration.labels(t.job, t.instance).set(time.perf_counter() - started)
            m.scrape_failures.labels(t.job, t.instance, err.reason).inc()
            m.target_up.labels(t.job, t.instance).set(0)
            failure = f"{err.reason}: {err.message}"
            if self._failing.get(t.name) != failure:
                log.warning("scrape of %s failed: %s", t.name, failure)
                self._failing[t.name] = failure
            return
        m.scrape_duration.labels(t.job, t.instance).set(time.perf_counter() - started)
        m.target_up.labels(t.job, t.instance).set(1)
        if self._failing.pop(t.name, None) is not None:
            log.info("scrape of %s works again", t.name)
        if not batch.samples:
            return
        try:
            spooled = self.spool.append(batch)
        except OSError as err:
            log.error("cannot spool the scrape of %s (%d samples lost): %s", t.name, len(batch.samples), err)
            return
        if spooled:
            m.samples_scraped.labels(t.job, t.instance).inc(len(batch.samples))

    def rollup_pass(self) -> bool:
        runs = self._maintenance_pass("rollup", run_rollups)
        if runs is None:
            for tier in self.settings.policy.tiers:
                self.metrics.rollup_runs.labels(tier.name, "error").inc()
            return False
        for run in runs:
            self.metrics.rollup_runs.labels(run.tier, "ok").inc()
        self.metrics.rollup_last_success.set(time.time())
        self.refresh_tiers()
        return True

    def retention_pass(self) -> bool:
        run = self._maintenance_pass("retention", run_retention)
        if run is None:
            self.metrics.retention_runs.labels("error").inc()
            return False
        self.metrics.retention_runs.labels("ok").inc()
        self.metrics.retention_last_success.set(time.time())
        for table in run.dropped:
            self.metrics.partitions_dropped.labels(partition_tier(table, self.settings.policy)).inc()
        return True

    def _maintenance_pass(self, what: str, work: Callable[[sa.Engine, Policy], T]) -> T | None:
        """`work` (a rollup or retention pass) once the database is ready; None if it failed (logged)."""
        assert self.db is not None
        try:
            if not self.db.ready():
                raise DatabaseUnavailable("the database is not ready")
            with self._maintenance:
                result = work(self.db.engine, self.settings.policy)
        except DatabaseUnavailable as err:
            self.db.mark_down(err)
            log.warning("%s pass skipped: %s", what, err)
            self.revive_embedded()
            return None
        except Exception as err:
            log.error("%s pass failed: %s", what, err, exc_info=True)
            return None
        self.db.mark_up()
        return result

    def refresh_tiers(self) -> None:
        """tier_rows, tier_bytes and the watermarks behind rollup_lag_seconds (after each rollup pass)."""
        assert self.db is not None
        try:
            states = tier_status(self.db.engine)
        except DatabaseUnavailable as err:
            self.db.mark_down(err)
            return
        for state in states:
            self.metrics.tier_rows.labels(state.tier).set(state.rows_estimate)
            self.metrics.tier_bytes.labels(state.tier).set(state.bytes)
            if state.tier != RAW:
                self.metrics.set_watermark(state.tier, state.watermark.timestamp() if state.watermark else None)

    def revive_embedded(self) -> bool:
        """The database is unreachable: if it is our embedded server and that no longer runs
        (killed, OOM-killed, stopped by hand or by an operator command that had started it), start
        it again, or nobody would and the spool would grow until the archiver restarts. Batches
        wait in the spool meanwhile. At most once per retry interval (longer while starting keeps
        failing), by one thread at a time. True if it started the server."""
        if self.embedded is None or self._draining.is_set() or not self._reviving.acquire(blocking=False):
            return False
        try:
            if time.monotonic() < self._next_revive:
                return False
            assert self.db is not None
            started = False
            retry = float(self.settings.database.retry_interval)
            try:
                if not self.embedded.running():
                    log.warning("the embedded PostgreSQL in %s is not running (killed, crashed or stopped); "
                                "starting it again", self.embedded.data_dir)
                    self.embedded.start()
                    started = True
                # Its address, even when it runs: whoever started it may have moved it to a new port.
                self.db.use_dsn(self.embedded.dsn())
            except Exception as err:
                # Orphaned backends of a killed server still holding its shared memory, a full disk:
                # try again later, less often while it keeps failing.
                self._revive_wait = min(self._revive_wait * 2, max(retry, REVIVE_BACKOFF_MAX))
                reason = (str(err).strip() or type(err).__name__).splitlines()[0]
                log.error("cannot start the embedded PostgreSQL again (%s); batches wait in the spool, next try in "
                          "%gs", reason, self._revive_wait)
                log.debug("starting the embedded PostgreSQL failed", exc_info=True)
            else:
                self._revive_wait = retry
            self._next_revive = time.monotonic() + self._revive_wait
            return started
        finally:
            self._reviving.release()

    # -- the writer ------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        """Move batches from the spool to the store, oldest first, until halted or drained."""
        retry = float(self.settings.database.retry_interval)
        while not self._halt.is_set():
            try:
                if not self._write_next(retry):
                    return
            except Exception:  # a bug or a failing disk must not end the writer silently
                log.exception("writer: unexpected error; trying again in %gs", retry)
                self._halt.wait(retry)

    def _write_next(self, retry: float) -> bool:
        """Write the oldest spooled batch, or wait a while. False: draining and nothing more to do."""
        assert self.db is not None
        entry = self.spool.peek()
        if entry is None:
            if self._draining.is_set():
                return False
            self.spool.wait(0.5)
            return True
        if not self.db.ready():
            if self._draining.is_set():
                return False
            self.revive_embedded()
            self._halt.wait(retry)
            return True
        batch = entry.batch
        started = time.perf_counter()
        try:
            assert self.db.store is not None
            written = self.db.store.write(batch)
        except DatabaseUnavailable as err:
            self.db.mark_down(err)
            if self._draining.is_set():
                return False
            self.revive_embedded()
            self._halt.wait(retry)
            return True
        except Exception as err:
            self._refusals += 1
            log.error("database refused the batch of %d samples from %s/%s scraped at %d (attempt %d): %s",
                      len(batch.samples), batch.job, batch.instance, batch.scraped_at_ms, self._refusals, err)
            if self._refusals >= REJECT_AFTER:
                self.spool.reject(entry, f"refused by the database {self._refusals} times: {err}")
                self._refusals = 0
            else:
                self._halt.wait(retry)
            return True
        self._refusals = 0
        self.spool.commit(entry)
        self.db.mark_up()
        self.metrics.write_duration.observe(time.perf_counter() - started)
        self.metrics.samples_written.labels(batch.job, batch.instance).inc(written)
        return True


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def partition_tier(table: str, policy: Policy) -> str:
    """The tier a partition table belongs to: sample_20250101 → raw, rollup_5m_20250101 → 5m."""
    for tier in policy.tiers:
        if table.startswith(f"rollup_{tier.name}_"):
            return tier.name
    return RAW if table.startswith("sample_") else "unknown"
