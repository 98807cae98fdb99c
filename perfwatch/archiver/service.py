"""The running archiver, wired together: scrape jobs → spool → writer → PostgreSQL, and the rollup
and retention jobs, on one scheduler.

Every scraped batch goes to the spool first (fsynced); the writer (writer.py) moves batches to the
store in order, so scrapes never wait for the database. With `scrape.workers` > 0 the scrape and
parse of each target run in worker processes (workers.py) and the scrape job here only spools what
comes back. Without a configured DSN the archiver runs an embedded PostgreSQL and starts it again
when it is found dead (revive.py).

When it cannot keep up, it says so: a scrape APScheduler does not run because the target's previous
one is still running, or because it could not start in time, is counted per target
(perfwatch_archiver_scrapes_skipped_total{reason}) and logged once when the target starts falling
behind and once when it keeps up again — APScheduler's own warning per skipped run is silenced.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from pathlib import Path

from apscheduler.events import (
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    EVENT_JOB_SUBMITTED,
    JobExecutionEvent,
    JobSubmissionEvent,
    SchedulerEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from perfwatch.archiver.database import Database
from perfwatch.archiver.discovery import Clash, FileDiscovery, Found, Identity, merge
from perfwatch.archiver.embedded import EmbeddedPostgres
from perfwatch.archiver.maintenance import Maintenance
from perfwatch.archiver.revive import Reviver
from perfwatch.archiver.scrape import REASONS, ScrapeError, Target, TargetScraper
from perfwatch.archiver.selfmetrics import ArchiverMetrics
from perfwatch.archiver.settings import ArchiverSettings, ScheduleSettings
from perfwatch.archiver.spool import Spool
from perfwatch.archiver.summarise import summary_pass
from perfwatch.archiver.workers import WORKER, ScrapePool
from perfwatch.archiver.writer import Writer

log = logging.getLogger("perfwatch.archiver")
# Scrapes of a target that fell behind keep up again after this many runs in a row, none skipped.
KEEPS_UP_AFTER = 3

SHUTDOWN_GRACE = 5.0  # seconds SIGTERM waits for the writer to empty the spool into the database

# Reasons of perfwatch_archiver_scrapes_skipped_total.
STILL_RUNNING = "still_running"  # the target's previous scrape was still running when the next was due
MISSED = "missed"  # the scrape could not start in time (no free thread, the scheduler itself late)
SKIP_REASONS = (STILL_RUNNING, MISSED)
# APScheduler's warnings for each skipped run, said here once per target instead.
_APSCHEDULER_SKIP_MESSAGES = ("Execution of job", "Run time of job")


class _Pooled:
    """A target scraped in a worker process: TargetScraper's place in the scrape job."""

    def __init__(self, pool: ScrapePool, target: Target) -> None:
        self.pool = pool
        self.target = target

    def close(self) -> None:
        """Nothing here: the worker replaces a changed target's scraper, and `reload` tells the pool
        of a removed one."""


Scraper = TargetScraper | _Pooled


class Archiver:
    def __init__(self, settings: ArchiverSettings, dsn: str | None) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.configured_dsn = dsn
        self.spool = Spool(self.data_dir / "spool", settings.spool.max_bytes,
                           memory_bytes=settings.spool.memory_bytes)
        self.metrics = ArchiverMetrics(self.spool)
        # Its processes are started by start(), once the database is ready: a start failing before leaves none.
        self.pool = ScrapePool(settings.scrape.workers, settings.log_level) if settings.scrape.workers else None
        # What is scraped comes from the config's targets and from file_sd's files; a reload and
        # file_sd's watcher thread both change it, one at a time.
        self._targets_lock = threading.Lock()
        self._static = settings.scrape_targets()
        self._clashes: set[Clash] = set()
        self.discovery = FileDiscovery(self._discovered, self.metrics)
        self._found_generation, self._found = self.discovery.reconfigure(settings)
        self.scrapers: dict[Identity, Scraper] = {identity: self._scraper(t)
                                                  for identity, t in self._wanted().items()}
        self._failing: dict[str, str] = {}  # target name → last failure, to log changes only
        # Falling behind: job id → target, the targets behind (identity → reason), skips since each
        # target's last run, the last scheduled time seen per job (coalesced runs leave gaps).
        self._jobs: dict[str, Target] = {}
        self._behind: dict[tuple[str, str], str] = {}
        self._skips: dict[tuple[str, str], int] = {}
        self._last_due: dict[str, dt.datetime] = {}
        self._running_since: dict[tuple[str, str], float] = {}
        self._clean_runs: dict[tuple[str, str], int] = {}  # runs in a row with none skipped before them
        self._behind_lock = threading.Lock()
        self._reloading = threading.Lock()
        self.embedded: EmbeddedPostgres | None = None
        self.reviver: Reviver | None = None
        self.db: Database | None = None
        self.maintenance: Maintenance | None = None
        self.scheduler: BackgroundScheduler | None = None
        self.writer: Writer | None = None
        for scraper in self.scrapers.values():
            self._announce(scraper.target)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        dsn = self.configured_dsn
        if dsn is None:
            self.embedded = EmbeddedPostgres(self.data_dir / "postgres")
            dsn = self.embedded.start()
            log.info("no database configured: using the embedded PostgreSQL in %s", self.embedded.data_dir)
        self.db = Database(dsn, self.settings.policy, self.metrics)
        retry = float(self.settings.database.retry_interval)
        revive = self.reviver = Reviver(self.embedded, self.db, retry) if self.embedded else None
        self.db.ready(strict=True)  # unreachable is not fatal: scrapes wait in the spool meanwhile
        self.writer = Writer(self.spool, self.db, self.metrics, retry, revive or _nothing)
        self.writer.start()
        self.maintenance = Maintenance(self.db, self.settings.policy, self.metrics, revive or _nothing)
        if self.pool is not None:
            self.pool.start()
            pool = self.pool
            self.metrics.scrape_workers = lambda: (len(pool.pids()), pool.restarts)
            log.info("scraping and parsing in %d worker processes", self.settings.scrape.workers)

        # Enough threads for every target and the three maintenance jobs; targets added by a reload share them.
        workers = max(8, len(self.scrapers) + 3)
        self.scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(workers)}, timezone="UTC",
                                             job_defaults={"coalesce": True, "max_instances": 1})
        _quiet_apscheduler()
        self.scheduler.add_listener(self._job_event, EVENT_JOB_SUBMITTED | EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        for scraper in self.scrapers.values():
            self._schedule_scrapes(scraper)
        self._schedule_maintenance(self.settings.schedule)
        self.scheduler.start()
        for scraper in self.scrapers.values():
            t = scraper.target
            log.info("scraping %s every %gs (timeout %gs)", t.name, t.interval, t.timeout)
        self.discovery.start()

    def _scraper(self, target: Target) -> Scraper:
        return TargetScraper(target) if self.pool is None else _Pooled(self.pool, target)

    def _schedule_scrapes(self, scraper: Scraper) -> None:
        assert self.scheduler is not None
        t = scraper.target
        job_id = f"scrape {t.job}/{t.instance}"
        with self._behind_lock:
            self._jobs[job_id] = t
            self._last_due.pop(job_id, None)
        self.scheduler.add_job(self._scrape, IntervalTrigger(seconds=t.interval), args=[scraper],
                               id=job_id, next_run_time=first_scrape(t),
                               misfire_grace_time=max(1, int(t.interval)), replace_existing=True)

    def _schedule_maintenance(self, schedule: ScheduleSettings) -> None:
        assert self.scheduler is not None and self.maintenance is not None
        for job, interval in ((self.maintenance.rollup_pass, schedule.rollup_interval),
                              (self.maintenance.retention_pass, schedule.retention_interval),
                              (self.summary_pass, schedule.summary_interval)):
            name = job.__name__.removesuffix("_pass")
            self.scheduler.add_job(job, IntervalTrigger(seconds=interval), id=name, replace_existing=True,
                                   next_run_time=dt.datetime.now(dt.UTC), misfire_grace_time=max(1, int(interval)))

    def summary_pass(self) -> bool:
        """Utilisation summaries of the periods the rollups closed (thresholds as the config says now)."""
        assert self.db is not None
        ok = summary_pass(self.db, self.settings.rightsizing)
        self.metrics.utilisation_runs.labels("ok" if ok else "error").inc()
        return ok

    def _announce(self, t: Target) -> None:
        """The target's series in the archiver's metrics from the start, at 0 (rates need a first point)."""
        self.metrics.scrapes.labels(t.job, t.instance)
        self.metrics.samples_scraped.labels(t.job, t.instance)
        self.metrics.samples_written.labels(t.job, t.instance)
        for reason in (*REASONS, WORKER) if self.pool is not None else REASONS:
            self.metrics.scrape_failures.labels(t.job, t.instance, reason)
        for reason in SKIP_REASONS:
            self.metrics.scrapes_skipped.labels(t.job, t.instance, reason)

    # -- reload (SIGHUP, POST /-/reload) ---------------------------------------------------------

    def reload(self, new: ArchiverSettings) -> str:
        """Put `new` (validated by the caller) in force: targets added, removed or changed (their
        interval, timeout, limits, labels, credentials), file_sd_configs (their files read again),
        the policy, the schedule and the log level. What the running process is built on (listen,
        data_dir, database, spool) needs a restart: said in the log, kept as it is. Returns what
        changed, for the log."""
        with self._reloading:
            old = self.settings
            for key in ("listen", "data_dir", "database", "spool", "scrape", "max_connections"):
                if getattr(new, key, None) != getattr(old, key, None):
                    log.warning("reload: %s changed; it takes effect when the archiver restarts", key)
            generation, found = self.discovery.reconfigure(new)
            with self._targets_lock:
                self._static = new.scrape_targets()
                if generation > self._found_generation:  # else the watcher handed on a newer list meanwhile
                    self._found_generation, self._found = generation, found
                changes = self.apply_targets(self._wanted())
            if new.policy != old.policy:
                new.policy.validate("policy")
                for holder in (self.db, self.maintenance):
                    if holder is not None:
                        holder.policy = new.policy  # mirrored by the next rollup and retention passes
                changes.append("policy")
            if new.schedule != old.schedule and self.scheduler is not None:
                self._schedule_maintenance(new.schedule)
                changes.append("schedule")
            if new.log_level != old.log_level:
                logging.getLogger().setLevel(new.log_level.upper())
                changes.append(f"log_level {new.log_level}")
            self.settings = new
            return ", ".join(changes) or "nothing changed"

    def _discovered(self, generation: int, found: list[Found]) -> None:
        """file_sd's watcher saw the files change: scrape what they list now, beside the static targets."""
        with self._targets_lock:
            if generation <= self._found_generation:
                return  # a reload has put a newer list in force
            self._found_generation, self._found = generation, found
            changes = self.apply_targets(self._wanted())
        if changes:
            log.info("file_sd: %s", ", ".join(changes))

    def _wanted(self) -> dict[Identity, Target]:
        """The static targets, then file_sd's (under _targets_lock)."""
        wanted, self._clashes = merge(self._static, self._found, self._clashes)
        return wanted

    def apply_targets(self, wanted: dict[Identity, Target]) -> list[str]:
        """Scrape `wanted` from now on: jobs of targets not in it removed, of new and changed ones
        (re)scheduled, the others left running. Returns the changes (`+`, `~`, `-` and the target's
        name). The caller holds _targets_lock."""
        changes = []
        for identity in [i for i in self.scrapers if i not in wanted]:
            scraper = self.scrapers.pop(identity)
            job_id = f"scrape {scraper.target.job}/{scraper.target.instance}"
            if self.scheduler is not None:
                self.scheduler.remove_job(job_id)
            with self._behind_lock:
                self._jobs.pop(job_id, None)
                self._last_due.pop(job_id, None)
                for state in (self._behind, self._skips, self._running_since, self._clean_runs):
                    state.pop(identity, None)
            scraper.close()
            if self.pool is not None:
                self.pool.forget(scraper.target)
            changes.append(f"-{scraper.target.name}")
        for identity, target in wanted.items():
            current = self.scrapers.get(identity)
            if current is not None and current.target.same_as(target):
                continue
            scraper = self.scrapers[identity] = self._scraper(target)
            self._announce(target)
            if self.scheduler is not None:
                self._schedule_scrapes(scraper)  # replaces the old job, whose scraper is closed below
            if current is not None:
                current.close()
            changes.append(f"{'~' if current else '+'}{target.name}")
        return changes

    def stop(self) -> None:
        """Finish in-flight scrapes (they land in the spool), write what the database takes within
        SHUTDOWN_GRACE, and stop the embedded server if we started it."""
        self.discovery.stop()  # first: no targets change under the scheduler's shutdown
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)  # scrapes in workers end within their timeout + GRACE
        if self.pool is not None:
            self.pool.close()  # before the writer's grace: nothing more comes from them
        if self.reviver is not None:
            self.reviver.stopped = True
        if self.writer is not None:
            self.writer.stop(SHUTDOWN_GRACE)
        left = self.spool.stats()
        if left.batches:
            log.warning("%d batches (%d bytes) stay in the spool %s; they are written at the next start",
                        left.batches, left.bytes, self.spool.directory)
        self.spool.close()
        for scraper in self.scrapers.values():
            scraper.close()
        if self.db is not None:
            self.db.dispose()
        if self.embedded is not None:
            self.embedded.stop()

    # -- the scrape job --------------------------------------------------------------------------

    def _scrape(self, scraper: Scraper) -> None:
        t = scraper.target
        m = self.metrics
        m.scrapes.labels(t.job, t.instance).inc()
        started = time.perf_counter()
        self._ran(t, started)
        line: bytes | None = None
        try:
            if isinstance(scraper, _Pooled):
                batch, line = scraper.pool.scrape(t)
            else:
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
            spooled = self.spool.append(batch, line)
        except OSError as err:
            log.error("cannot spool the scrape of %s (%d samples lost): %s", t.name, len(batch.samples), err)
            return
        if spooled:
            m.samples_scraped.labels(t.job, t.instance).inc(len(batch.samples))

    # -- falling behind --------------------------------------------------------------------------

    def _job_event(self, event: SchedulerEvent) -> None:
        """APScheduler's word on a scrape job: submitted (a run started on time, or coalesced runs
        before it were dropped), not run because the last one still runs, or started too late."""
        job_id = getattr(event, "job_id", None)
        if not isinstance(job_id, str):
            return
        with self._behind_lock:
            target = self._jobs.get(job_id)
            if target is None:
                return  # a maintenance job, or a target removed meanwhile
            if isinstance(event, JobSubmissionEvent):
                due = event.scheduled_run_times[-1]
                last, self._last_due[job_id] = self._last_due.get(job_id), due
                # The scheduler itself woke up late by more than an interval: it coalesced the
                # runs in between into this one, without an event for them.
                dropped = 0 if last is None else round((due - last).total_seconds() / target.interval) - 1
                if dropped > 0:
                    self._skipped(target, MISSED, dropped)
                if event.code == EVENT_JOB_MAX_INSTANCES:
                    self._skipped(target, STILL_RUNNING, 1)
            elif isinstance(event, JobExecutionEvent) and event.code == EVENT_JOB_MISSED:
                self._skipped(target, MISSED, 1)

    def _skipped(self, t: Target, reason: str, runs: int) -> None:
        """(under _behind_lock)"""
        self.metrics.scrapes_skipped.labels(t.job, t.instance, reason).inc(runs)
        self._skips[t.identity] = self._skips.get(t.identity, 0) + runs
        if t.identity in self._behind:
            return
        self._behind[t.identity] = reason
        if reason == STILL_RUNNING:
            since = self._running_since.get(t.identity)
            running = f" (for {time.perf_counter() - since:.1f}s)" if since is not None else ""
            why = f"its previous scrape was still running{running} when the next was due"
        else:
            why = "a scrape could not start in time: the archiver has more to do than it can"
        log.warning("scrapes of %s fall behind their %gs interval: %s; skipped runs are counted in "
                    "perfwatch_archiver_scrapes_skipped_total until it keeps up", t.name, t.interval, why)

    def _ran(self, t: Target, started: float) -> None:
        """A scrape of `t` starts: after KEEPS_UP_AFTER runs in a row with none skipped, it keeps
        up again (a target whose scrapes take about its interval would otherwise flap, a pair of
        log lines every few seconds)."""
        with self._behind_lock:
            self._running_since[t.identity] = started
            skipped = self._skips.pop(t.identity, 0)
            clean = self._clean_runs[t.identity] = 0 if skipped else self._clean_runs.get(t.identity, 0) + 1
            if clean >= KEEPS_UP_AFTER and self._behind.pop(t.identity, None) is not None:
                log.info("scrapes of %s keep up again", t.name)


def first_scrape(target: Target, now: dt.datetime | None = None) -> dt.datetime:
    """When to scrape `target` first: at its own offset within the interval, as Prometheus spreads
    its targets (a hash of the target, so the same after a restart). Started all at once, every
    target answered at the same instant and queued for the parser and the spool's fsync: a crash
    then lost a scrape of most targets instead of about one, and the CPU came in bursts."""
    now = now or dt.datetime.now(dt.UTC)
    interval_us = max(1, round(target.interval * 1e6))
    digest = hashlib.sha256(f"{target.job}\0{target.instance}\0{target.url}".encode()).digest()
    offset_us = int.from_bytes(digest[:8], "big") % interval_us
    now_us = int(now.timestamp() * 1e6)
    first_us = now_us - now_us % interval_us + offset_us
    if first_us < now_us:
        first_us += interval_us
    return dt.datetime.fromtimestamp(first_us / 1e6, dt.UTC)


def _quiet_apscheduler() -> None:
    """APScheduler warns at every skipped run; the archiver counts them and logs once per target."""
    def keep(record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(_APSCHEDULER_SKIP_MESSAGES))

    for name in ("apscheduler.scheduler", "apscheduler.executors.default"):
        logger = logging.getLogger(name)
        if not any(getattr(f, "__name__", "") == keep.__name__ for f in logger.filters):
            logger.addFilter(keep)


def _nothing() -> None:
    """No embedded server to start again: a configured database is the operator's to run."""
