"""Pieces of a compaction or rollup step, done on several connections at once.

A catch-up (hours closed after a restart, an import) is PostgreSQL's per-sample work, which one
connection does on one core. The step's transaction takes the locks and the range (compact_window,
rollup_window) and holds them, so writers wait as they do for a step done in one transaction;
other connections pack or roll up a chunk of the range each (compact_piece, rollup_piece, which
check that the step's backend holds the locks) and commit; then the step moves the watermark and
commits. Readers go by the watermark, so a piece committed before a failed step is never read,
and the next pass does it again to the same result.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from perfwatch.archiver import db


@contextlib.contextmanager
def piece_pool(workers: int, name: str) -> Iterator[ThreadPoolExecutor | None]:
    """Threads for the pieces (None for one worker: every step in its own transaction)."""
    if workers <= 1:
        yield None
        return
    with ThreadPoolExecutor(workers, thread_name_prefix=name) as pool:
        yield pool


def split(lo: dt.datetime, hi: dt.datetime, chunk: dt.timedelta) -> list[tuple[dt.datetime, dt.datetime]]:
    """[lo, hi) in pieces of `chunk` (the last may be shorter)."""
    edges = [lo + chunk * i for i in range(math.ceil((hi - lo) / chunk))] + [hi]
    return list(itertools.pairwise(edges))


def run_pieces(engine: sa.Engine, pool: ThreadPoolExecutor, step: sa.Connection, function: str, *args: Any,
               pieces: list[tuple[dt.datetime, dt.datetime]]) -> int:
    """perfwatch.<function>(*args, lo, hi, holder) for each piece, on connections of their own, while
    `step` (whose backend is the holder) holds the locks; the sum of what they return."""
    holder = step.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()

    def one(piece: tuple[dt.datetime, dt.datetime]) -> int:
        with engine.begin() as conn:
            return int(conn.execute(sa.select(db.fn(function, *args, *piece, holder))).scalar_one())

    return sum(pool.map(one, pieces))
