"""Utilisation summaries and right-sizing (after the rollups: scrape → spool → store → compact →
rollup → summarise).

Per host (job, instance) and period (hour, day, week, month; UTC) the summaries hold CPU and memory
avg, p95 and max, disk I/O and network p95 (and max), over the first tier's bucket values: with the
default policy, "p95 of 5-minute averages". The SQL is sql/functions/utilisation.sql; this module
drives one pass:

1. the rightsizing thresholds of the config are mirrored (Grafana reads them from the archive);
2. periods that late samples changed (noted when the rollup rolls them up again) are summarised
   again once that rollup is done;
3. then forward from each period kind's watermark, a few periods per transaction, up to the periods
   the first tier has closed (its watermark). The open period is computed when read.

Like the rollups, a pass is idempotent: running it again writes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from typing import Any

import sqlalchemy as sa

from perfwatch.archiver import db
from perfwatch.archiver.database import Database
from perfwatch.archiver.settings import PERIODS, RightsizingSettings

log = logging.getLogger(__name__)


@dataclasses.dataclass
class SummaryRun:
    period: str
    watermark_before: dt.datetime | None
    watermark_after: dt.datetime | None
    rows: int  # forward pass
    seconds: float


def mirror_thresholds(engine: sa.Engine, rightsizing: RightsizingSettings) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT perfwatch.mirror_rightsizing(CAST(:t AS jsonb))"),
                     {"t": json.dumps(rightsizing.thresholds())})


def run_summaries(engine: sa.Engine, rightsizing: RightsizingSettings,
                  now: dt.datetime | None = None) -> tuple[int, list[SummaryRun]]:
    """One summary pass: (rows written again for late samples, a run per period kind).
    Raises db.DatabaseUnavailable."""
    now = now or dt.datetime.now(dt.UTC)
    with db.unavailable_as("summarising utilisation"):
        mirror_thresholds(engine, rightsizing)

        def dirty() -> int:
            with engine.begin() as conn:
                return int(conn.execute(sa.select(db.fn("summarise_dirty"))).scalar() or 0)

        again = db.retry_conflicts("utilisation summaries of late samples", dirty)
        runs = [_summarise(engine, period, now) for period in PERIODS]
    if again:
        log.info("summarised utilisation again for late samples: %d rows", again)
    return again, runs


def _summarise(engine: sa.Engine, period: str, now: dt.datetime) -> SummaryRun:
    started = time.monotonic()
    with engine.connect() as conn:
        before = conn.execute(sa.text("SELECT watermark FROM perfwatch.utilisation_state WHERE period = :p"),
                              {"p": period}).scalar()
    rows = 0
    after = before

    def next_step() -> sa.Row[Any]:
        with engine.begin() as conn:
            return db.call_table(conn, "summarise_next", period)[0]

    while True:
        step = db.retry_conflicts(f"utilisation summaries by {period}", next_step)
        if step.lo is None or step.hi is None or step.hi <= step.lo:
            break
        rows += step.rows
        after = step.hi
    seconds = time.monotonic() - started
    with engine.begin() as conn:
        conn.execute(sa.select(db.fn("record_summary", period, now, seconds, rows)))
    if rows or after != before:
        log.info("summarised utilisation by %s: %d rows up to %s (%.2fs)", period, rows, after, seconds)
    return SummaryRun(period, before, after, rows, seconds)


def summary_pass(database: Database, rightsizing: RightsizingSettings) -> bool:
    """The scheduled job (schedule.summary_interval): one pass, its failure logged, never raised."""
    try:
        if not database.ready():
            raise db.DatabaseUnavailable("the database is not ready")
        run_summaries(database.engine, rightsizing)
    except db.DatabaseUnavailable as err:
        database.mark_down(err)
        log.warning("summary pass skipped: %s", err)
        return False
    except Exception as err:
        log.error("summary pass failed: %s", err, exc_info=True)
        return False
    return True


# -- reading: `perfwatch-archiver report` ---------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ReportRequest:
    """What `perfwatch-archiver report` was asked for."""

    period: str
    t_from: dt.datetime
    t_to: dt.datetime
    job: str | None
    instance: str | None
    format: str  # text, json


@dataclasses.dataclass
class Recommendation:
    job: str
    instance: str
    verdict: str  # over-utilised, under-utilised, ok, insufficient data
    bottleneck: str | None  # cpu, memory, disk, network
    recommendation: str
    evidence: str
    periods: int
    cpu_p95: float | None
    memory_p95: float | None
    disk_p95: float | None
    network_p95: float | None  # bytes/s
    network_share_p95: float | None
    details: dict[str, Any]


def host_matchers(job: str | None, instance: str | None) -> str | None:
    """read.sql's matchers (JSON) for a job and an instance, each optional."""
    wanted = {k: v for k, v in (("job", job), ("instance", instance)) if v is not None}
    return json.dumps(wanted) if wanted else None


def recommendations(engine: sa.Engine, period: str, t_from: dt.datetime, t_to: dt.datetime,
                    job: str | None = None, instance: str | None = None,
                    thresholds: dict[str, float] | None = None) -> list[Recommendation]:
    """perfwatch.rightsizing's rows; `thresholds` override the mirrored ones (the report uses its config's)."""
    with db.unavailable_as("reading the right-sizing recommendations"), engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM perfwatch.rightsizing(:p, :f, :t, CAST(:m AS jsonb), "
                                    "CAST(:th AS jsonb))"),
                            {"p": period, "f": t_from, "t": t_to, "m": host_matchers(job, instance),
                             "th": json.dumps(thresholds) if thresholds is not None else None})
        return [Recommendation(**row._mapping) for row in rows]


def summaries(engine: sa.Engine, period: str, t_from: dt.datetime, t_to: dt.datetime,
              job: str | None = None, instance: str | None = None) -> list[dict[str, Any]]:
    """perfwatch.utilisation's rows, as dicts."""
    with db.unavailable_as("reading the utilisation summaries"), engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM perfwatch.utilisation(:p, :f, :t, CAST(:m AS jsonb))"),
                            {"p": period, "f": t_from, "t": t_to, "m": host_matchers(job, instance)})
        return [dict(row._mapping) for row in rows]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    for unit in ("B/s", "kB/s", "MB/s", "GB/s"):
        if abs(value) < 1000 or unit == "GB/s":
            return f"{value:.1f} {unit}" if unit != "B/s" else f"{value:.0f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def format_report(recs: list[Recommendation], period: str, t_from: dt.datetime, t_to: dt.datetime) -> str:
    """The text table of `report`: one line per host, its evidence on the line below."""
    header = ("HOST", "VERDICT", "BOTTLENECK", "CPU p95", "MEM p95", "DISK p95", "NET p95", "NET/SPEED")
    lines = [f"right-sizing by {period} from {t_from.isoformat()} to {t_to.isoformat()} "
             f"(p95 of the first tier's bucket values; the busiest {period} decides)"]
    table = [header] + [(f"{r.job}/{r.instance}", r.verdict, r.bottleneck or "-", _percent(r.cpu_p95),
                         _percent(r.memory_p95), _percent(r.disk_p95), _rate(r.network_p95),
                         _percent(r.network_share_p95)) for r in recs]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i:
            r = recs[i - 1]
            lines.append(f"    {r.recommendation}; {r.evidence}")
    if not recs:
        lines.append("no host has utilisation data in this range")
    return "\n".join(lines)


def report_json(recs: list[Recommendation], period: str, t_from: dt.datetime, t_to: dt.datetime) -> str:
    return json.dumps({"period": period, "from": t_from.isoformat(), "to": t_to.isoformat(),
                       "hosts": [dataclasses.asdict(r) for r in recs]}, indent=2, default=str)


def print_report(engine: sa.Engine, rightsizing: RightsizingSettings, request: ReportRequest) -> None:
    """`report`: the recommendations of the range, with the config's thresholds, as a table or JSON."""
    recs = recommendations(engine, request.period, request.t_from, request.t_to, request.job, request.instance,
                           thresholds=rightsizing.thresholds())
    render = report_json if request.format == "json" else format_report
    print(render(recs, request.period, request.t_from, request.t_to))
