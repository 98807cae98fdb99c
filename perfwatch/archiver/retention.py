"""Retention (the last step of scrape → spool → store → rollup → retention): partitions ahead,
expired partitions dropped, without ever holding a writer back.

Every level (raw and each tier) is range-partitioned by time. A pass creates, for each level,
the partition holding `now` and the next one (perfwatch.ensure_partition: a table of its own,
then ATTACH, which takes no lock a reader or a writer holds). It then expires each partition that
ended more than the level's retention ago AND whose period the next tier has completely rolled
up (its watermark at or past the partition's end, no late samples there waiting); partitions kept
for the second reason are reported as `waiting`: the archive is falling behind, and nothing is
lost for it. An expired partition leaves the catalog at once and is then detached from its
level's table with DETACH PARTITION ... CONCURRENTLY and dropped, each under a lock_timeout: a
reader that holds a lock on it (a Grafana session idle in a transaction) only delays its drop to a
later pass.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from typing import Any

import sqlalchemy as sa
from psycopg import sql

from perfwatch.archiver import db
from perfwatch.archiver.policy import Policy, mirror_policy

log = logging.getLogger(__name__)

# How long the DDL of a drop waits for a lock before it gives up until the next pass. DETACH ...
# CONCURRENTLY also waits, under it, for the transactions that might still see the partition.
DROP_LOCK_TIMEOUT = "5s"


@dataclasses.dataclass
class RetentionRun:
    created: list[str]  # partition tables created ahead
    dropped: list[str]  # partition tables dropped
    waiting: list[str]  # expired, kept until the next tier has rolled them up
    seconds: float
    deferred: list[str] = dataclasses.field(default_factory=list)  # expired, drop postponed (a lock)


def run_retention(engine: sa.Engine, policy: Policy, now: dt.datetime | None = None) -> RetentionRun:
    """One retention pass over every level. Raises db.DatabaseUnavailable."""
    now = now or dt.datetime.now(dt.UTC)
    mirror_policy(engine, policy)
    started = time.monotonic()
    run = RetentionRun([], [], [], 0.0)
    for _, name, _, _ in policy.levels():
        level_started = time.monotonic()
        # Two transactions: creating partitions takes the partition lock, expiring takes the
        # rollup locks; a writer takes them the other way round, so one transaction holding
        # both could deadlock with it.
        with db.unavailable_as(f"retention of tier {name}"):
            try:
                run.created += db.retry_conflicts(f"creating partitions of tier {name}", _create_ahead, engine,
                                                  name, now)
            except sa.exc.DBAPIError as err:
                if not db.is_lock_timeout(err):
                    raise
                log.warning("tier %s: creating partitions ahead waited too long for a lock; next pass", name)
            outcome = db.retry_conflicts(f"retention of tier {name}", _expire, engine, name, now, level_started)
        waiting = [r for r in outcome if not r.dropped]
        run.waiting += [r.partition for r in waiting]
        if waiting:
            log.warning("tier %s: %d expired partitions kept (oldest %s, ending %s) until the next tier has rolled "
                        "them up", name, len(waiting), waiting[0].partition, waiting[0].hi)
    with db.unavailable_as("dropping expired partitions"):
        drop_queued(engine, run)
    run.seconds = time.monotonic() - started
    return run


def _create_ahead(engine: sa.Engine, name: str, now: dt.datetime) -> list[str]:
    with engine.begin() as conn:
        return [row[0] for row in db.call_table(conn, "create_partitions_ahead", name, now)]


def _expire(engine: sa.Engine, name: str, now: dt.datetime, level_started: float) -> list[sa.Row[Any]]:
    with engine.begin() as conn:
        outcome = db.call_table(conn, "expire_partitions", name, now)
        dropped = sum(1 for r in outcome if r.dropped)
        conn.execute(sa.select(db.fn("record_retention", name, now, time.monotonic() - level_started,
                                     dropped, len(outcome) - dropped)))
        return outcome


def drop_queued(engine: sa.Engine, run: RetentionRun) -> None:
    """Detach and drop every queued partition (expired by this pass or an earlier one)."""
    with engine.connect() as conn:
        try:
            pending = db.call_table(conn, "pending_drops")
            conn.commit()
            if not pending:
                return
            # DETACH ... CONCURRENTLY cannot run in a transaction block; the session's settings
            # (role, lock_timeout) never go back to the pool (invalidated below).
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            raw = db.psycopg_connection(conn)
            db.become_writer(raw)
            raw.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(DROP_LOCK_TIMEOUT)))
            for i, row in enumerate(pending):
                if not _drop_one(raw, row.table_name, row.parent, row.attached, row.detach_pending):
                    # Whoever holds that lock (a reader) most likely holds the others': next pass.
                    run.deferred += [r.table_name for r in pending[i:]]
                    break
                conn.execute(sa.select(db.fn("partition_dropped", row.table_name)))
                run.dropped.append(row.table_name)
                log.info("dropped partition %s of %s", row.table_name, row.parent)
        finally:
            conn.invalidate()


def _drop_one(raw: Any, table: str, parent: str, attached: bool, detach_pending: bool) -> bool:
    """Detach `table` from `parent` (finishing a detach an earlier pass began) and drop it; False
    if a lock is held (logged: the next pass tries again)."""
    child, level = sql.Identifier("perfwatch", table), sql.Identifier("perfwatch", parent)
    try:
        if detach_pending:
            raw.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} FINALIZE").format(level, child))
        elif attached:
            raw.execute(sql.SQL("ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY").format(level, child))
        raw.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(child))
    except Exception as err:
        if not db.is_lock_timeout(err):
            raise
        log.info("partition %s: its drop waited %s for a lock (a reader holds it); trying again next pass",
                 table, DROP_LOCK_TIMEOUT)
        return False
    return True
