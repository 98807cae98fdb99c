"""Where each level of the archive stands: policy, rollup watermark and lag, size, last runs.

The figures come from perfwatch.tier_status() (sql/functions/read.sql), which Grafana can
call too. Rows are PostgreSQL's live-row counts from its cumulative statistics (cheap, no
count(*) over a year of samples, no ANALYZE needed; they trail writes by the second or so a
backend takes to report them); bytes include indexes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import sqlalchemy as sa

from perfwatch.archiver import db
from perfwatch.archiver.policy import Policy


@dataclasses.dataclass
class TierStatus:
    level: int
    tier: str
    table_name: str
    resolution_seconds: float
    retention_seconds: float
    watermark: dt.datetime | None  # rolled up to (raw: None)
    lag_seconds: float | None  # now - watermark
    horizon: dt.datetime | None  # retention dropped everything before
    partitions: int
    oldest: dt.datetime | None  # start of the oldest partition
    newest: dt.datetime | None  # newest sample (raw) or bucket
    rows_estimate: int
    bytes: int
    bytes_per_row: float | None
    dirty_ranges: int  # late-sample ranges waiting for the next rollup
    last_rollup_at: dt.datetime | None
    last_rollup_seconds: float | None
    last_rollup_rows: int | None
    last_retention_at: dt.datetime | None
    last_retention_seconds: float | None
    last_retention_dropped: int | None
    last_retention_waiting: int | None
    in_policy: bool = True  # False: the given policy has this level, the database has not mirrored it yet


def tier_status(engine: sa.Engine, policy: Policy | None = None, now: dt.datetime | None = None) -> list[TierStatus]:
    """One entry per level mirrored in the database, raw first; with `policy`, also its levels
    the database does not know yet. Raises db.DatabaseUnavailable."""
    now = now or dt.datetime.now(dt.UTC)
    with db.unavailable_as("reading the tier status"), engine.connect() as conn:
        rows = db.call_table(conn, "tier_status", now)
    out = []
    for r in rows:
        out.append(TierStatus(
            r.level, r.tier, r.table_name, r.resolution.total_seconds(), r.retention.total_seconds(), r.watermark,
            r.lag_seconds, r.horizon, r.partitions, r.oldest, r.newest, int(r.rows_estimate or 0), int(r.bytes or 0),
            r.bytes_per_row, r.dirty_ranges, r.last_rollup_at, r.last_rollup_seconds, r.last_rollup_rows,
            r.last_retention_at, r.last_retention_seconds, r.last_retention_dropped, r.last_retention_waiting))
    if policy is not None:
        known = {s.tier for s in out}
        for level, name, resolution, retention in policy.levels():
            if name not in known:
                out.append(TierStatus(level, name, "", resolution, retention, None, None, None, 0, None, None, 0, 0,
                                      None, 0, None, None, None, None, None, None, None, in_policy=False))
    return out
