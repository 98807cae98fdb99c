"""The archiver's maintenance jobs (the compact, rollup and retention steps of scrape → spool →
store → compact → rollup → retention), one pass at a time, with their outcome in the archiver's own metrics."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

from perfwatch.archiver.compact import run_compaction
from perfwatch.archiver.database import Database
from perfwatch.archiver.db import DatabaseUnavailable
from perfwatch.archiver.policy import RAW, Policy
from perfwatch.archiver.retention import run_retention
from perfwatch.archiver.rollup import run_rollups
from perfwatch.archiver.selfmetrics import ArchiverMetrics
from perfwatch.archiver.status import tier_status

log = logging.getLogger("perfwatch.archiver")
T = TypeVar("T")


class Maintenance:
    def __init__(self, database: Database, policy: Policy, metrics: ArchiverMetrics,
                 revive: Callable[[], object] = lambda: None) -> None:
        self.database = database
        self.policy = policy
        self.metrics = metrics
        self.revive = revive  # called when the database is unreachable (restarts an embedded server)
        # Rollup and retention passes one at a time: both rewrite tier state, and run together
        # they can deadlock each other in PostgreSQL.
        self._lock = threading.Lock()
        for result in ("ok", "error"):
            metrics.retention_runs.labels(result)

    def rollup_pass(self) -> bool:
        """Compaction, then the rollups (their source is what the compaction packed, or the head)."""
        self._pass("compaction", run_compaction)
        runs = self._pass("rollup", run_rollups)
        if runs is None:
            for tier in self.policy.tiers:
                self.metrics.rollup_runs.labels(tier.name, "error").inc()
            return False
        # The watermarks first: whoever sees this pass counted sees the lag it left.
        self.refresh_tiers()
        for run in runs:
            self.metrics.rollup_runs.labels(run.tier, "ok").inc()
        self.metrics.rollup_last_success.set(time.time())
        return True

    def retention_pass(self) -> bool:
        run = self._pass("retention", run_retention)
        if run is None:
            self.metrics.retention_runs.labels("error").inc()
            return False
        self.metrics.retention_runs.labels("ok").inc()
        self.metrics.retention_last_success.set(time.time())
        for table in run.dropped:
            self.metrics.partitions_dropped.labels(partition_tier(table, self.policy)).inc()
        self.refresh_tiers()  # partitions came and went
        return True

    def _pass(self, what: str, work: Callable[[sa.Engine, Policy], T]) -> T | None:
        """`work` (a rollup or retention pass) once the database is ready; None if it failed (logged)."""
        try:
            if not self.database.ready():
                raise DatabaseUnavailable("the database is not ready")
            with self._lock:
                result = work(self.database.engine, self.policy)
        except DatabaseUnavailable as err:
            self.database.mark_down(err)
            log.warning("%s pass skipped: %s", what, err)
            self.revive()
            return None
        except Exception as err:
            log.error("%s pass failed: %s", what, err, exc_info=True)
            return None
        self.database.mark_up()
        return result

    def refresh_tiers(self) -> None:
        """tier_rows, tier_bytes and the watermarks behind rollup_lag_seconds (after each pass)."""
        try:
            states = tier_status(self.database.engine)
        except DatabaseUnavailable as err:
            self.database.mark_down(err)
            return
        for state in states:
            self.metrics.tier_rows.labels(state.tier).set(state.rows_estimate)
            self.metrics.tier_bytes.labels(state.tier).set(state.bytes)
            if state.tier != RAW:
                self.metrics.set_watermark(state.tier, state.watermark.timestamp() if state.watermark else None)


def partition_tier(table: str, policy: Policy) -> str:
    """The tier a partition table belongs to: sample_20250101 → raw, rollup_5m_20250101 → 5m."""
    for tier in policy.tiers:
        if table.startswith(f"rollup_{tier.name}_"):
            return tier.name
    return RAW if table.startswith("sample_") else "unknown"
