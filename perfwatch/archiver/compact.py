"""Compaction (the `compact` step of scrape → spool → store → compact → rollup → retention).

Raw samples land in the head (perfwatch.sample, a row per sample); this step packs each closed
window of a series (an hour) into one row of arrays that PostgreSQL compresses
(perfwatch.sample_chunk), by SQL in sql/functions/compact.sql. One pass:

1. merges late samples (perfwatch.sample_late: written after their window was packed, e.g. a
   replayed spool or an import) into their chunks;
2. packs the head forward from the packed watermark, one stretch per transaction, up to what is
   closed (windows that end at or before `now - policy.rollup_delay`); catching up, a stretch of
   a few hours is packed an hour a connection on `policy.catchup_workers` at once (parallel.py);
3. packs each rollup tier's windows (a day of 5m buckets, 12 days of 1h ones) once the tier has
   rolled past them;
4. drops the partitions now wholly packed (detached and dropped as retention drops them).

Each transaction moves the watermark only with what it packed, so an interrupted pass (a crash,
the database going away) resumes where it stopped, and a second pass finds nothing to do. The
same pass converts an archive written before storage v2: it packs everything behind the
watermark, logging its progress.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from perfwatch.archiver import db
from perfwatch.archiver.parallel import piece_pool, run_pieces, split
from perfwatch.archiver.policy import Policy
from perfwatch.archiver.retention import RetentionRun, drop_queued

log = logging.getLogger(__name__)

# What one transaction (or one piece of a parallel step) packs. Writers wait for it (they must know
# whether a sample is packed or late), so it stays short: an hour of a 1,000-series host is
# ~240,000 samples, a fraction of a second.
SPAN = dt.timedelta(hours=1)
PROGRESS_EVERY = 10.0  # seconds between progress lines while catching up


@dataclasses.dataclass
class CompactionRun:
    watermark_before: dt.datetime | None
    watermark_after: dt.datetime | None
    chunks: int  # chunks written by packing the head
    late_samples: int  # late samples merged into chunks
    tier_chunks: int  # chunks of tier buckets written
    dropped: list[str]  # partitions dropped, wholly packed
    seconds: float


def run_compaction(engine: sa.Engine, policy: Policy, now: dt.datetime | None = None) -> CompactionRun:
    """One compaction pass. Raises db.DatabaseUnavailable."""
    now = now or dt.datetime.now(dt.UTC)
    delay = dt.timedelta(seconds=float(policy.rollup_delay))
    started = time.monotonic()
    with db.unavailable_as("compacting raw samples"):
        with engine.begin() as conn:
            before = db.call_table(conn, "tier_state", "packed")[0].watermark
        late = _merge_late(engine)
        chunks, after = _pack_head(engine, now, delay, before, started, policy.catchup_workers)
        tier_chunks = sum(_pack_tier(engine, tier.name) for tier in policy.tiers)
        retention = RetentionRun([], [], [], 0.0)
        drop_queued(engine, retention)
    seconds = time.monotonic() - started
    if chunks or late or tier_chunks or retention.dropped:
        log.info("compacted: %d chunks of raw samples packed up to %s, %d late samples merged, %d chunks of tier "
                 "buckets, %d partitions dropped (%.2fs)", chunks, _show(after), late, tier_chunks,
                 len(retention.dropped), seconds)
    return CompactionRun(before, after, chunks, late, tier_chunks, retention.dropped, seconds)


def _pack_tier(engine: sa.Engine, tier: str) -> int:
    """Pack every window of `tier` it has rolled past; the number of chunks written."""
    chunks = 0

    def step() -> sa.Row[Any]:
        with engine.begin() as conn:
            return db.call_table(conn, "compact_tier_next", tier)[0]

    while True:
        done = db.retry_conflicts(f"packing tier {tier}", step)
        if done.lo is None or done.hi <= done.lo:
            return chunks
        chunks += done.chunks


def _merge_late(engine: sa.Engine) -> int:
    merged = 0

    def step() -> sa.Row[Any]:
        with engine.begin() as conn:
            return db.call_table(conn, "compact_late", SPAN)[0]

    while True:
        done = db.retry_conflicts("merging late samples", step)
        if done.lo is None:
            return merged
        merged += done.merged


def _pack_head(engine: sa.Engine, now: dt.datetime, delay: dt.timedelta, before: dt.datetime | None,
               started: float, workers: int) -> tuple[int, dt.datetime | None]:
    chunks = 0
    after = before
    last_report = time.monotonic()
    closed_before = now - delay

    def step(pool: ThreadPoolExecutor | None) -> tuple[Any, Any, int]:
        with engine.begin() as conn:
            if pool is None:
                done = db.call_table(conn, "compact_next", now, delay, SPAN)[0]
                return done.lo, done.hi, done.chunks or 0
            # Two hours a worker: the step waits for its slowest piece.
            window = db.call_table(conn, "compact_window", now, delay, SPAN * workers * 2)[0]
            if window.lo is None or window.hi <= window.lo or window.skipped:
                return window.lo, window.hi, 0
            pieces = split(window.lo, window.hi, SPAN)
            if len(pieces) == 1:
                packed = int(conn.execute(sa.select(db.fn("compact_range", window.lo, window.hi))).scalar_one())
            else:
                packed = run_pieces(engine, pool, conn, "compact_piece", pieces=pieces)
            conn.execute(sa.select(db.fn("compact_advance", window.hi)))
            return window.lo, window.hi, packed

    with piece_pool(workers, "compaction") as pool:
        while True:
            lo, hi, packed = db.retry_conflicts("packing raw samples", step, pool)
            if lo is None or hi <= lo:
                return chunks, after
            chunks += packed
            after = hi
            if time.monotonic() - last_report >= PROGRESS_EVERY:
                last_report = time.monotonic()
                elapsed = last_report - started
                left = max(0.0, (closed_before - hi).total_seconds())
                log.info("compacting: packed up to %s (%d chunks so far, %.0fs of samples left to pack, %.0fs elapsed)",
                         _show(after), chunks, left, elapsed)


def _show(value: dt.datetime | None) -> str:
    return "nothing yet" if value is None else f"{value:%Y-%m-%d %H:%M:%S}Z"
