"""Rollups (the `rollup` step of scrape → spool → store → rollup → retention).

Each tier is built from the level below it (the first from raw samples) by SQL in
sql/functions/rollup.sql; this module drives one pass over every tier:

1. late samples first: ranges noted in perfwatch.rollup_dirty (samples stored after their
   bucket was rolled up, e.g. a replayed spool) are rolled up again, and the buckets that
   changed are passed on to the next tier if it has already rolled past them;
2. then forward from the tier's watermark, one chunk per transaction, up to what is closed:
   buckets that end at or before `now - policy.rollup_delay` (first tier) or at or before the
   watermark of the tier below (the others).

Buckets start on multiples of the resolution counted from the Unix epoch. A pass is idempotent:
running it again writes nothing (a bucket is rewritten only when its values differ).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import time
from typing import Any

import sqlalchemy as sa

from perfwatch.archiver import db
from perfwatch.archiver.policy import Policy, mirror_policy

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TierRun:
    tier: str  # '5m'
    level: int
    watermark_before: dt.datetime | None
    watermark_after: dt.datetime | None
    buckets_written: int  # forward pass
    dirty_buckets_written: int  # late samples rolled up again
    chunks: int
    seconds: float


def chunk_seconds(level: int, resolution: float) -> float:
    """How much one transaction rolls up: an hour of raw samples, a day of a tier's buckets."""
    span = 3600.0 if level == 1 else 86400.0
    return math.ceil(span / resolution) * resolution


def run_rollups(engine: sa.Engine, policy: Policy, now: dt.datetime | None = None) -> list[TierRun]:
    """One rollup pass over every tier, finest first. Raises db.DatabaseUnavailable."""
    now = now or dt.datetime.now(dt.UTC)
    mirror_policy(engine, policy)
    runs = []
    for level, tier in enumerate(policy.tiers, 1):
        with db.unavailable_as(f"rolling up tier {tier.name}"):
            runs.append(_roll_tier(engine, policy, level, tier.name, float(tier.resolution), now))
    return runs


def _roll_tier(engine: sa.Engine, policy: Policy, level: int, name: str, resolution: float,
               now: dt.datetime) -> TierRun:
    started = time.monotonic()
    with engine.begin() as conn:
        before = db.call_table(conn, "tier_state", name)[0].watermark
        dirty = conn.execute(sa.select(db.fn("rollup_dirty", name))).scalar() or 0
    rows = chunks = 0
    after = before
    delay = dt.timedelta(seconds=float(policy.rollup_delay))
    chunk = dt.timedelta(seconds=chunk_seconds(level, resolution))
    def next_chunk() -> sa.Row[Any]:
        with engine.begin() as conn:
            return db.call_table(conn, "rollup_next", name, now, delay, chunk)[0]

    while True:
        step = db.retry_conflicts(f"rollup of tier {name}", next_chunk)
        if step.lo is None or step.hi <= step.lo:
            break
        rows += step.rows
        chunks += 1
        after = step.hi
    seconds = time.monotonic() - started
    with engine.begin() as conn:
        conn.execute(sa.select(db.fn("record_rollup", name, now, seconds, rows + dirty)))
    if rows or dirty or after != before:
        log.info("rolled up tier %s: %d buckets in %d chunks up to %s, %d buckets again for late samples (%.2fs)",
                 name, rows, chunks, after, dirty, seconds)
    return TierRun(name, level, before, after, rows, dirty, chunks, seconds)
