"""The running archiver, wired together: scrape jobs → spool → writer → PostgreSQL, and the rollup
and retention jobs, on one scheduler in one process.

Every scraped batch goes to the spool first (fsynced); the writer (writer.py) moves batches to the
store in order, so scrapes never wait for the database. Without a configured DSN the archiver runs
an embedded PostgreSQL and starts it again when it is found dead (revive.py).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
import time
from pathlib import Path

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from perfwatch.archiver.database import Database
from perfwatch.archiver.embedded import EmbeddedPostgres
from perfwatch.archiver.maintenance import Maintenance
from perfwatch.archiver.revive import Reviver
from perfwatch.archiver.scrape import REASONS, ScrapeError, Target, TargetScraper
from perfwatch.archiver.selfmetrics import ArchiverMetrics
from perfwatch.archiver.settings import ArchiverSettings, ScheduleSettings
from perfwatch.archiver.spool import Spool
from perfwatch.archiver.writer import Writer

log = logging.getLogger("perfwatch.archiver")

SHUTDOWN_GRACE = 5.0  # seconds SIGTERM waits for the writer to empty the spool into the database


class Archiver:
    def __init__(self, settings: ArchiverSettings, dsn: str | None) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.configured_dsn = dsn
        self.spool = Spool(self.data_dir / "spool", settings.spool.max_bytes)
        self.metrics = ArchiverMetrics(self.spool)
        self.scrapers = {t.identity: TargetScraper(t) for t in settings.scrape_targets()}
        self._failing: dict[str, str] = {}  # target name → last failure, to log changes only
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

        # Enough workers for every target and both maintenance jobs; targets added by a reload share them.
        workers = max(8, len(self.scrapers) + 2)
        self.scheduler = BackgroundScheduler(executors={"default": ThreadPoolExecutor(workers)}, timezone="UTC",
                                             job_defaults={"coalesce": True, "max_instances": 1})
        for scraper in self.scrapers.values():
            self._schedule_scrapes(scraper)
        self._schedule_maintenance(self.settings.schedule)
        self.scheduler.start()
        for scraper in self.scrapers.values():
            t = scraper.target
            log.info("scraping %s every %gs (timeout %gs)", t.name, t.interval, t.timeout)

    def _schedule_scrapes(self, scraper: TargetScraper) -> None:
        assert self.scheduler is not None
        t = scraper.target
        self.scheduler.add_job(self._scrape, IntervalTrigger(seconds=t.interval), args=[scraper],
                               id=f"scrape {t.job}/{t.instance}", next_run_time=first_scrape(t),
                               misfire_grace_time=max(1, int(t.interval)), replace_existing=True)

    def _schedule_maintenance(self, schedule: ScheduleSettings) -> None:
        assert self.scheduler is not None and self.maintenance is not None
        for job, interval in ((self.maintenance.rollup_pass, schedule.rollup_interval),
                              (self.maintenance.retention_pass, schedule.retention_interval)):
            name = job.__name__.removesuffix("_pass")
            self.scheduler.add_job(job, IntervalTrigger(seconds=interval), id=name, replace_existing=True,
                                   next_run_time=dt.datetime.now(dt.UTC), misfire_grace_time=max(1, int(interval)))

    def _announce(self, t: Target) -> None:
        """The target's series in the archiver's metrics from the start, at 0 (rates need a first point)."""
        self.metrics.scrapes.labels(t.job, t.instance)
        self.metrics.samples_scraped.labels(t.job, t.instance)
        self.metrics.samples_written.labels(t.job, t.instance)
        for reason in REASONS:
            self.metrics.scrape_failures.labels(t.job, t.instance, reason)

    # -- reload (SIGHUP, POST /-/reload) ---------------------------------------------------------

    def reload(self, new: ArchiverSettings) -> str:
        """Put `new` (validated by the caller) in force: targets added, removed or changed (their
        interval, timeout, limits, labels, credentials), the policy, the schedule and the log level.
        What the running process is built on (listen, data_dir, database, spool) needs a restart:
        said in the log, kept as it is. Returns what changed, for the log."""
        with self._reloading:
            old = self.settings
            for key in ("listen", "data_dir", "database", "spool", "max_connections"):
                if getattr(new, key, None) != getattr(old, key, None):
                    log.warning("reload: %s changed; it takes effect when the archiver restarts", key)
            changes = []
            wanted = {t.identity: t for t in new.scrape_targets()}
            for identity in [i for i in self.scrapers if i not in wanted]:
                scraper = self.scrapers.pop(identity)
                if self.scheduler is not None:
                    self.scheduler.remove_job(f"scrape {scraper.target.job}/{scraper.target.instance}")
                scraper.close()
                changes.append(f"-{scraper.target.name}")
            for identity, target in wanted.items():
                current = self.scrapers.get(identity)
                if current is not None and current.target.same_as(target):
                    continue
                scraper = self.scrapers[identity] = TargetScraper(target)
                self._announce(target)
                if self.scheduler is not None:
                    self._schedule_scrapes(scraper)  # replaces the old job, whose scraper is closed below
                if current is not None:
                    current.close()
                changes.append(f"{'~' if current else '+'}{target.name}")
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

    def stop(self) -> None:
        """Finish in-flight scrapes (they land in the spool), write what the database takes within
        SHUTDOWN_GRACE, and stop the embedded server if we started it."""
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=True)
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


def _nothing() -> None:
    """No embedded server to start again: a configured database is the operator's to run."""
