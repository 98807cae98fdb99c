"""The writer (spool → store): one thread moves batches from the spool to the database, oldest
first. A database outage only makes the spool grow: the writer retries every retry interval and
catches up in order."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from perfwatch.archiver.database import Database
from perfwatch.archiver.db import DatabaseUnavailable
from perfwatch.archiver.selfmetrics import ArchiverMetrics
from perfwatch.archiver.spool import Spool

log = logging.getLogger("perfwatch.archiver")

# A batch whose write fails this many times in a row for a reason other than an outage (the store
# already keeps what PostgreSQL accepts of it, so this is a bug or a schema changed by hand) is set
# aside in the spool's rejected.jsonl, at once: one batch never holds the writer (and every target
# queued behind it) for longer than the failed attempts themselves.
REJECT_AFTER = 2


class Writer:
    def __init__(self, spool: Spool, database: Database, metrics: ArchiverMetrics, retry: float,
                 revive: Callable[[], object] = lambda: None) -> None:
        self.spool = spool
        self.database = database
        self.metrics = metrics
        self.retry = retry
        self.revive = revive  # called while the database is unreachable (restarts an embedded server)
        self._refusals = 0  # times in a row the database refused the oldest batch (while reachable)
        self._draining = threading.Event()  # shutting down: write what is left, then stop
        self._halt = threading.Event()  # stop now, even mid-backlog
        self._thread = threading.Thread(target=self._loop, name="writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, grace: float) -> None:
        """Write what the database takes within `grace` seconds; the write in flight completes,
        the rest stays spooled for the next start."""
        self._draining.set()
        if not self._thread.is_alive():
            return
        self._thread.join(grace)
        if self._thread.is_alive():
            self._halt.set()
            self._thread.join()

    def _loop(self) -> None:
        while not self._halt.is_set():
            try:
                if not self._write_next():
                    return
            except Exception:  # a bug or a failing disk must not end the writer silently
                log.exception("writer: unexpected error; trying again in %gs", self.retry)
                self._halt.wait(self.retry)

    def _write_next(self) -> bool:
        """Write the oldest spooled batch, or wait a while. False: draining and nothing more to do."""
        entry = self.spool.peek()
        if entry is None:
            if self._draining.is_set():
                return False
            self.spool.wait(0.5)
            return True
        if not self.database.ready():
            return self._wait_for_database()
        batch = entry.batch
        started = time.perf_counter()
        try:
            assert self.database.store is not None
            written = self.database.store.write(batch)
        except DatabaseUnavailable as err:
            self.database.mark_down(err)
            return self._wait_for_database()
        except Exception as err:
            self._refusals += 1
            log.error("writing the batch of %d samples from %s/%s scraped at %d failed (attempt %d): %s",
                      len(batch.samples), batch.job, batch.instance, batch.scraped_at_ms, self._refusals, err)
            if self._refusals >= REJECT_AFTER:
                self.spool.reject(entry, f"failed {self._refusals} times: {err}")
                self._refusals = 0
            return True
        self._refusals = 0
        self.spool.commit(entry)
        self.database.mark_up()
        self.metrics.write_duration.observe(time.perf_counter() - started)
        self.metrics.samples_written.labels(batch.job, batch.instance).inc(written)
        return True

    def _wait_for_database(self) -> bool:
        if self._draining.is_set():
            return False
        self.revive()
        self._halt.wait(self.retry)
        return True
