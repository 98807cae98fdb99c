"""Operator commands: `migrate`, `rollup`, `retention`, `status`, `backup` — one pass, print, exit.

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

import psycopg
import sqlalchemy as sa
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from perfwatch.archiver.db import DatabaseUnavailable, make_engine
from perfwatch.archiver.embedded import EmbeddedPostgres, bin_dir
from perfwatch.archiver.migrate import apply_migrations
from perfwatch.archiver.policy import mirror_policy
from perfwatch.archiver.retention import run_retention
from perfwatch.archiver.rollup import run_rollups
from perfwatch.archiver.settings import ArchiverSettings
from perfwatch.archiver.status import TierStatus, tier_status
from perfwatch.common.config import format_duration

log = logging.getLogger("perfwatch.archiver")


# Commands that only read or maintain an archive: run where none is, they must not create one
# (a 46 MB cluster in whatever directory the command was typed in). `migrate` creates it.
NEEDS_AN_ARCHIVE = ("status", "rollup", "retention", "backup")


def operate(command: str, settings: ArchiverSettings, dsn: str | None, backup_file: str | None = None) -> int:
    embedded = None
    stop_after = False
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
            return 1
    if command == "backup":
        try:
            return backup(dsn, backup_file or "-")
        finally:
            if embedded is not None and stop_after:
                embedded.stop()
    engine = make_engine(dsn)
    try:
        return _run(command, settings, engine)
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
        engine.dispose()
        if embedded is not None and stop_after:
            embedded.stop()


def _run(command: str, settings: ArchiverSettings, engine: sa.Engine) -> int:
    policy = settings.policy
    if command == "status":
        print_status(tier_status(engine, policy))
        return 0
    applied = apply_migrations(engine)
    mirror_policy(engine, policy)
    if command == "migrate":
        print(f"applied {len(applied)} migrations{': ' + ', '.join(applied) if applied else ' (up to date)'}; "
              "policy mirrored")
    elif command == "rollup":
        for run in run_rollups(engine, policy):
            print(f"tier {run.tier}: {run.buckets_written} buckets in {run.chunks} chunks, "
                  f"{run.dirty_buckets_written} again for late samples; watermark {_time(run.watermark_before)} → "
                  f"{_time(run.watermark_after)} ({run.seconds:.2f}s)")
    elif command == "retention":
        retention = run_retention(engine, policy)
        print(f"created {len(retention.created)} partitions ahead{_list(retention.created)}")
        print(f"dropped {len(retention.dropped)} expired partitions{_list(retention.dropped)}")
        if retention.waiting:
            print(f"kept {len(retention.waiting)} expired partitions until the next tier has rolled them up"
                  f"{_list(retention.waiting)}")
    return 0


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
