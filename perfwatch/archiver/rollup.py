"""Rollups (the `rollup` step of scrape → spool → store → rollup → retention).

Each tier is built from the level below it (the first from raw samples) by SQL in
sql/functions/rollup.sql; this module drives one pass over every tier:

1. late samples first: ranges noted in perfwatch.rollup_dirty (samples stored after their
   bucket was rolled up, e.g. a replayed spool) are rolled up again, and the buckets that
   changed are passed on to the next tier if it has already rolled past them;
2. then forward from the tier's watermark, one chunk per transaction, up to what is closed:
   buckets that end at or before `now - policy.rollup_delay` (first tier) or at or before the
   watermark of the tier below (the others).

   The first tier catches up on `policy.catchup_workers` connections at once (parallel.py): a
   step takes a few chunks, rolled up a chunk a connection (rollup_piece).

Buckets start on multiples of the resolution counted from the Unix epoch. A pass is idempotent:
running it again writes nothing (a bucket is rewritten only when its values differ).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from perfwatch.archiver import db
from perfwatch.archiver.parallel import piece_pool, run_pieces, split
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
    parallel_pieces: int = 0  # chunks rolled up on the pieces' own connections (policy.catchup_workers)


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
    rows = chunks = parallel = 0
    after = before
    delay = dt.timedelta(seconds=float(policy.rollup_delay))
    chunk = dt.timedelta(seconds=chunk_seconds(level, resolution))

    workers = policy.catchup_workers if level == 1 else 1

    def next_chunk(pool: ThreadPoolExecutor | None) -> tuple[_Step, int]:
        with engine.begin() as conn:
            if pool is None:
                done = db.call_table(conn, "rollup_next", name, now, delay, chunk)[0]
                return _Step(done.lo, done.hi, done.rows or 0, 0), 1
            # Two chunks a worker: the step waits for its slowest piece.
            step = db.call_table(conn, "rollup_window", name, now, delay, chunk * workers * 2)[0]
            if step.lo is None or step.hi <= step.lo or step.skipped:
                return _Step(step.lo, step.hi, 0, 0), 1
            pieces = split(step.lo, step.hi, chunk)
            if len(pieces) == 1:  # caught up: a few buckets, in this transaction
                written = int(conn.execute(sa.select(db.fn("rollup_range", name, step.lo, step.hi))).scalar_one())
            else:
                written = run_pieces(engine, pool, conn, "rollup_piece", name, pieces=pieces)
            conn.execute(sa.select(db.fn("set_watermark", name, step.hi)))
            return _Step(step.lo, step.hi, written, len(pieces) if len(pieces) > 1 else 0), len(pieces)

    with piece_pool(workers, f"rollup-{name}") as pool:
        while True:
            step, pieces = db.retry_conflicts(f"rollup of tier {name}", next_chunk, pool)
            if step.lo is None or step.hi is None or step.hi <= step.lo:
                break
            rows += step.rows
            chunks += pieces
            parallel += step.parallel
            after = step.hi
    seconds = time.monotonic() - started
    with engine.begin() as conn:
        conn.execute(sa.select(db.fn("record_rollup", name, now, seconds, rows + dirty)))
    if rows or dirty or after != before:
        log.info("rolled up tier %s: %d buckets in %d chunks (%d on %d connections at once) up to %s, "
                 "%d buckets again for late samples (%.2fs)",
                 name, rows, chunks, parallel, workers if parallel else 1, after, dirty, seconds)
    return TierRun(name, level, before, after, rows, dirty, chunks, seconds, parallel)


@dataclasses.dataclass
class _Step:
    lo: dt.datetime | None  # None: nothing to roll up yet
    hi: dt.datetime | None
    rows: int
    parallel: int  # pieces rolled up on other connections
