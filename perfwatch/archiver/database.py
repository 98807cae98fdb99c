"""The archive database as the running archiver sees it: the engine, whether the schema is in
place, and whether PostgreSQL is up (logged once per outage, and in database_up)."""

from __future__ import annotations

import logging
import threading

from perfwatch.archiver.db import DatabaseUnavailable, make_engine
from perfwatch.archiver.migrate import apply_migrations
from perfwatch.archiver.policy import Policy, mirror_policy
from perfwatch.archiver.selfmetrics import ArchiverMetrics
from perfwatch.archiver.store import Store

log = logging.getLogger("perfwatch.archiver")


class Database:
    """The engine, and whether the schema is known to be in place; thread-safe."""

    def __init__(self, dsn: str, policy: Policy, metrics: ArchiverMetrics | None = None) -> None:
        self.dsn = dsn
        self.policy = policy
        self.metrics = metrics
        self.engine = make_engine(dsn)
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
            store = self.store = Store(self.engine)
            if self.metrics:
                self.metrics.store_dropped = lambda: dict(store.dropped)
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
