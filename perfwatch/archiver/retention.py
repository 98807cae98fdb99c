"""Retention (the last step of scrape → spool → store → rollup → retention): partitions ahead,
expired partitions dropped.

Every level (raw and each tier) is range-partitioned by time. A pass creates, for each level,
the partition holding `now` and the next one, then drops each partition that ended more than the
level's retention ago AND whose period the next tier has completely rolled up (its watermark at
or past the partition's end, no late samples there waiting). Partitions kept for the second
reason are reported as `waiting`: the archive is falling behind, and nothing is lost for it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from typing import Any

import sqlalchemy as sa

from perfwatch.archiver import db
from perfwatch.archiver.policy import Policy, mirror_policy

log = logging.getLogger(__name__)


@dataclasses.dataclass
class RetentionRun:
    created: list[str]  # partition tables created ahead
    dropped: list[str]  # partition tables dropped
    waiting: list[str]  # expired, kept until the next tier has rolled them up
    seconds: float


def run_retention(engine: sa.Engine, policy: Policy, now: dt.datetime | None = None) -> RetentionRun:
    """One retention pass over every level. Raises db.DatabaseUnavailable."""
    now = now or dt.datetime.now(dt.UTC)
    mirror_policy(engine, policy)
    started = time.monotonic()
    run = RetentionRun([], [], [], 0.0)
    for _, name, _, _ in policy.levels():
        level_started = time.monotonic()
        # Two transactions: creating partitions takes the partition lock, dropping takes the
        # rollup locks; a writer takes them the other way round, so one transaction holding
        # both could deadlock with it.
        with db.unavailable_as(f"retention of tier {name}"):
            created = db.retry_conflicts(f"creating partitions of tier {name}", _create_ahead, engine, name, now)
            outcome = db.retry_conflicts(f"retention of tier {name}", _drop_expired, engine, name, now,
                                         level_started)
        dropped = [r.partition for r in outcome if r.dropped]
        waiting = [r for r in outcome if not r.dropped]
        run.created += created
        run.dropped += dropped
        run.waiting += [r.partition for r in waiting]
        for table in dropped:
            log.info("retention dropped partition %s of tier %s", table, name)
        if waiting:
            log.warning("tier %s: %d expired partitions kept (oldest %s, ending %s) until the next tier has rolled "
                        "them up", name, len(waiting), waiting[0].partition, waiting[0].hi)
    run.seconds = time.monotonic() - started
    return run


def _create_ahead(engine: sa.Engine, name: str, now: dt.datetime) -> list[str]:
    with engine.begin() as conn:
        return [row[0] for row in db.call_table(conn, "create_partitions_ahead", name, now)]


def _drop_expired(engine: sa.Engine, name: str, now: dt.datetime, level_started: float) -> list[sa.Row[Any]]:
    with engine.begin() as conn:
        outcome = db.call_table(conn, "drop_expired", name, now)
        dropped = sum(1 for r in outcome if r.dropped)
        conn.execute(sa.select(db.fn("record_retention", name, now, time.monotonic() - level_started,
                                     dropped, len(outcome) - dropped)))
        return outcome
