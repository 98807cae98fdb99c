"""Operator commands: `migrate`, `rollup`, `retention`, `status`, `report`, `backup`, `import` — one pass,
print, exit.

They work beside a running archiver (the SQL side serialises rollup and retention with table
locks, sql/functions/locks.sql). Without a DSN they use the embedded server under the data dir,
starting it for the command and stopping it after, unless it was running already.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import IO

import psycopg
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from perfwatch.archiver.backfill import ImportJob, ImportStats, MalformedInput, describe_range, import_lines, read_lines
from perfwatch.archiver.compact import run_compaction
from perfwatch.archiver.db import DatabaseUnavailable, make_engine
from perfwatch.archiver.embedded import EmbeddedPostgres, bin_dir
from perfwatch.archiver.migrate import apply_migrations
from perfwatch.archiver.policy import mirror_policy
from perfwatch.archiver.retention import run_retention
from perfwatch.archiver.rollup import TierRun, run_rollups
from perfwatch.archiver.settings import ArchiverSettings
from perfwatch.archiver.status import TierStatus, tier_status
from perfwatch.archiver.store import Store
from perfwatch.archiver.summarise import ReportRequest, print_report
from perfwatch.common.config import format_duration

log = logging.getLogger("perfwatch.archiver")


# Commands that read, maintain or add to an archive: run where none is, they must not create one
# (a 46 MB cluster in whatever directory the command was typed in). `migrate` creates it.
NEEDS_AN_ARCHIVE = ("status", "report", "rollup", "retention", "backup", "import")


def operate(command: str, settings: ArchiverSettings, dsn: str | None, backup_file: str | None = None,
            import_job: ImportJob | None = None, report: ReportRequest | None = None) -> int:
    embedded = None
    stop_after = False
    source = None
    if import_job is not None:  # an input that cannot be read fails before any database is started
        try:
            source = import_job.open()
        except OSError as err:
            print(f"perfwatch-archiver: import: cannot read {import_job.file}: {err.strerror or err}", file=sys.stderr)
            return 1
    if dsn is None:
        embedded = EmbeddedPostgres(Path(settings.data_dir) / "postgres")
        if command in NEEDS_AN_ARCHIVE and not embedded.exists():
            print(f"perfwatch-archiver: {command}: no archive in {Path(settings.data_dir).resolve()} (no embedded "
                  "PostgreSQL there); give the --data-dir (or --config) the archiver runs with, or --dsn",
                  file=sys.stderr)
            return 1
        stop_after = not embedded.running()
        try:
            dsn = embedded.start()
        except Exception as err:
            print(f"perfwatch-archiver: cannot start the embedded PostgreSQL in {embedded.data_dir}: {err}",
                  file=sys.stderr)
            if source is not None:
                source.close()
            return 1
    if command == "backup":
        try:
            return backup(dsn, backup_file or "-")
        finally:
            if embedded is not None and stop_after:
                embedded.stop()
    engine = make_engine(dsn)
    try:
        return _run(command, settings, engine, import_job, source, report)
    except DatabaseUnavailable as err:
        print(f"perfwatch-archiver: {command}: database unreachable: {err}", file=sys.stderr)
        return 1
    except sa.exc.ProgrammingError as err:
        if isinstance(err.orig, psycopg.errors.InvalidSchemaName | psycopg.errors.UndefinedFunction):
            print(f"perfwatch-archiver: {command}: the database has no perfwatch archive yet; "
                  "`perfwatch-archiver migrate` (or starting the archiver) creates it", file=sys.stderr)
        else:
            print(f"perfwatch-archiver: {command} failed: {_first_line(err.orig or err)}", file=sys.stderr)
        return 1
    except Exception as err:  # a migration that fails, a missing privilege: say it, exit 1
        print(f"perfwatch-archiver: {command} failed: {_first_line(getattr(err, 'orig', None) or err)}",
              file=sys.stderr)
        return 1
    finally:
        if source is not None:
            source.close()
        engine.dispose()
        if embedded is not None and stop_after:
            embedded.stop()


def _run(command: str, settings: ArchiverSettings, engine: sa.Engine, import_job: ImportJob | None = None,
         source: IO[bytes] | None = None, report: ReportRequest | None = None) -> int:
    policy = settings.policy
    if command == "status":
        print_status(tier_status(engine, policy))
        return 0
    if command == "report" and report is not None:  # reads only, like status
        print_report(engine, settings.rightsizing, report)
        return 0
    applied = apply_migrations(engine)
    mirror_policy(engine, policy)
    if command == "migrate":
        print(f"applied {len(applied)} migrations{': ' + ', '.join(applied) if applied else ' (up to date)'}; "
              "policy mirrored")
        # An archive written before storage v2 (or left behind by a stopped archiver) is packed
        # now, in transactions of an hour each (progress in the log): resumable at any point.
        packed = run_compaction(engine, policy)
        print(f"packed raw samples up to {_time(packed.watermark_after)}: {packed.chunks} chunks, "
              f"{packed.late_samples} late samples merged ({packed.seconds:.2f}s)")
    elif command == "rollup":
        print_rollups(run_rollups(engine, policy))
    elif command == "import" and import_job is not None and source is not None:
        return import_history(engine, settings, import_job, source)
    elif command == "retention":
        retention = run_retention(engine, policy)
        print(f"created {len(retention.created)} partitions ahead{_list(retention.created)}")
        print(f"dropped {len(retention.dropped)} expired partitions{_list(retention.dropped)}")
        if retention.waiting:
            print(f"kept {len(retention.waiting)} expired partitions until the next tier has rolled them up"
                  f"{_list(retention.waiting)}")
    return 0


def import_history(engine: sa.Engine, settings: ArchiverSettings, job: ImportJob, source: IO[bytes]) -> int:
    """`import FILE`: its samples into the archive, a summary, then one rollup pass."""
    stats = ImportStats()
    try:
        import_lines(Store(engine), read_lines(source), job.source, job.labels, stats)
    except MalformedInput as err:
        print_import(job, stats, done=False)
        print(f"perfwatch-archiver: import: {job.source}: {err}; nothing after it was written, what came before it "
              "was (importing the file again once it is fixed is safe)", file=sys.stderr)
        return 1
    except BaseException:
        print_import(job, stats, done=False)  # what is in the archive already; then the error, as for any command
        raise
    print_import(job, stats, done=True)
    if job.rollup:
        print_rollups(run_rollups(engine, settings.policy))
    else:
        print("not rolled up (--no-rollup): the archiver's next rollup pass (or `perfwatch-archiver rollup`) does it")
    return 0


def print_import(job: ImportJob, stats: ImportStats, *, done: bool) -> None:
    dropped = sum(stats.dropped.values())
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(stats.dropped.items()) if n)
    print(f"{'imported' if done else 'stopped importing'} {job.source}: {stats.written} samples written, "
          f"{stats.skipped} skipped as already stored, {dropped} dropped{f' ({reasons})' if reasons else ''}; "
          f"{describe_range(stats)}; {stats.read} samples in {stats.lines} lines read in {stats.seconds:.1f}s "
          f"({stats.rate():.0f} samples/s)")


def print_rollups(runs: list[TierRun]) -> None:
    for run in runs:
        print(f"tier {run.tier}: {run.buckets_written} buckets in {run.chunks} chunks, "
              f"{run.dirty_buckets_written} again for late samples; watermark {_time(run.watermark_before)} → "
              f"{_time(run.watermark_after)} ({run.seconds:.2f}s)")


def backup(dsn: str, file: str) -> int:
    """The archive's database with the bundled pg_dump, in its custom format (pg_restore reads it).
    Debian's pg_dump 15 refuses a server of 18, the embedded one: the bundled one dumps every
    server up to its own major. The password goes by the environment, not the command line."""
    params = dict(conninfo_to_dict(dsn))
    password = str(params.pop("password", "") or "")
    env = {**os.environ, **({"PGPASSWORD": password} if password else {})}
    argv = [str(bin_dir() / "pg_dump"), "--format=custom", f"--dbname={make_conninfo('', **params)}"]
    if file != "-":
        argv.append(f"--file={file}")
    result = subprocess.run(argv, env=env, stdout=None if file == "-" else subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, timeout=None)
    if result.returncode != 0:
        print(f"perfwatch-archiver: backup failed: {result.stderr.strip()}", file=sys.stderr)
        return 1
    if file != "-":
        size = Path(file).stat().st_size
        print(f"backup of database {params.get('dbname', '')} written to {file} ({_bytes(size)}); restore it with "
              f"pg_restore --dbname=DSN {file}")
    return 0


def print_status(states: list[TierStatus]) -> None:
    header = ("tier", "resolution", "retention", "watermark", "lag", "partitions", "rows", "bytes", "last rollup",
              "last retention")
    rows = [header]
    for s in states:
        rows.append((
            s.tier + ("" if s.in_policy else " (not mirrored yet)"),
            format_duration(s.resolution_seconds) if s.resolution_seconds else "-",
            _span(s.retention_seconds),
            _time(s.watermark) if s.tier != "raw" else "-",
            format_duration(round(s.lag_seconds)) if s.lag_seconds else "-",
            str(s.partitions), str(s.rows_estimate), _bytes(s.bytes),
            _time(s.last_rollup_at) if s.tier != "raw" else "-",
            _time(s.last_retention_at),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def _span(seconds: float) -> str:
    """Retention as people write it: 2y, 90d, 36h (format_duration would say 12w6d for 90d)."""
    for unit, suffix in ((365 * 86400, "y"), (86400, "d")):
        if seconds >= unit and seconds % unit == 0:
            return f"{int(seconds // unit)}{suffix}"
    return format_duration(seconds)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _time(value: object) -> str:
    return "never" if value is None else f"{value:%Y-%m-%d %H:%M:%S}Z"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _list(names: list[str]) -> str:
    return (": " + ", ".join(names)) if names else ""
