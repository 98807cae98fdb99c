"""Store: write scraped batches into the archive (the `store` step of scrape → spool → store).

One batch is one transaction. The metric and series ids are cached in memory (a cache entry is
added only after its transaction commits, so a failed write leaves the cache consistent); samples
go by psycopg 3 COPY on the pooled connection:

* fast path: COPY straight into perfwatch.sample;
* a replayed batch (some rows already stored) fails there on the primary key, and is written
  again as COPY into a temporary staging table + INSERT ... ON CONFLICT DO NOTHING. Replays are
  rare (after an outage), so the common case pays nothing for idempotency.

Errors are classified by what they are: only a connection-level failure raises
db.DatabaseUnavailable (the batch stays spooled and is written later). Data PostgreSQL refuses
costs only the samples it refuses: the batch is split in halves until the refused samples are
alone (a bounded number of tries), and the rest is stored.

What is not stored, counted in `Store.dropped` by reason and logged once per target and reason:
* `nan`: NaN is Prometheus' staleness marker, not a value;
* `out_of_bounds`: a timestamp before 1970 or more than MAX_AHEAD in the future (a clock that is
  wrong; it would also make partitions for years nobody asked for);
* `expired`: older than what retention already dropped (storing it would bring back part of a
  dropped period that the first tier has already summarised without it);
* `unstorable`: a label name or value PostgreSQL cannot hold (a NUL character, invalid unicode);
* `refused`: anything else PostgreSQL refused to store (a value out of range, say).

Samples older than the first tier's watermark (a replayed spool) are stored and their range
noted for the rollup to redo (perfwatch.rollup_dirty). Samples for a window the compaction has
packed already go to perfwatch.sample_late, which the compaction merges into the chunks.
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import math
import struct
import time
from typing import Any

import psycopg
import sqlalchemy as sa

from perfwatch.archiver import db
from perfwatch.archiver.model import Batch, MetricMeta, Sample, SampleKind, datetime_to_ms, ms_to_datetime

log = logging.getLogger(__name__)

LAST_SEEN_REFRESH_MS = 3_600_000  # series.last_seen is refreshed at most hourly per series
MAX_AHEAD_MS = 3_600_000  # samples more than an hour ahead of this clock are out of bounds
# Transactions one batch may spend isolating refused samples; past it, what still fails is dropped
# whole (as refused), so that one bad batch cannot hold the writer back.
ISOLATION_BUDGET = 64
REASONS = ("nan", "out_of_bounds", "expired", "unstorable", "refused")
# The binary COPY stream of (int4 series_id, timestamptz, float8) rows, built whole (PostgreSQL's
# binary COPY format: a signature, flags and header extension, rows, a trailer).
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_COPY_ROW = struct.Struct(">hiiiqid")  # 3 fields, each its length then its value
_PG_EPOCH_MS = 946_684_800_000  # timestamptz counts microseconds from 2000-01-01 UTC
BEGIN_WRITE: sa.Select[Any] = sa.select(sa.literal_column("*")).select_from(db.fn("begin_write").alias("f"))

SeriesKey = tuple[str, tuple[tuple[str, str], ...]]


class _SeriesEntry:
    __slots__ = ("id", "last_seen_ms")

    def __init__(self, series_id: int, last_seen_ms: int) -> None:
        self.id = series_id
        self.last_seen_ms = last_seen_ms


class Store:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._metrics: dict[str, tuple[int, MetricMeta]] = {}
        self._series: dict[SeriesKey, _SeriesEntry] = {}
        self._partitions: set[int] = set()  # raw partition numbers (start // width) known to exist
        self._partition_ms: int | None = None
        self.dropped: collections.Counter[str] = collections.Counter()
        self.replayed_batches = 0  # batches that met rows already stored
        self._drops_logged: set[tuple[str, str]] = set()  # (target, reason) logged once at warning

    # -- public -----------------------------------------------------------------------------------

    def write(self, batch: Batch) -> int:
        """Store `batch`; return the number of samples inserted (0 for a batch stored before).

        Raises db.DatabaseUnavailable when PostgreSQL cannot be reached; nothing is stored then,
        and writing the same batch again later is safe. Other errors are bugs (or a schema
        changed by hand) and go to the caller.
        """
        target = f"{batch.job}/{batch.instance}"
        samples = [s for s in batch.samples if not math.isnan(s.value)]
        self._drop(target, "nan", len(batch.samples) - len(samples), "NaN (a stale marker) is not a value")
        lo_ms, hi_ms = 0, _now_ms() + MAX_AHEAD_MS
        kept = [s for s in samples if lo_ms <= s.timestamp_ms <= hi_ms]
        if len(kept) < len(samples):
            bad = next(s for s in samples if not lo_ms <= s.timestamp_ms <= hi_ms)
            self._drop(target, "out_of_bounds", len(samples) - len(kept),
                       f"timestamp {bad.timestamp_ms} ms of {bad.name} is before 1970 or more than "
                       f"{MAX_AHEAD_MS // 60_000} minutes ahead of this clock")
        if not kept:
            return 0
        budget = [ISOLATION_BUDGET]
        with db.unavailable_as(f"writing the batch of {target}"):
            return self._write_isolating(batch, kept, target, budget)

    def _write_isolating(self, batch: Batch, samples: list[Sample], target: str, budget: list[int]) -> int:
        """Write `samples`; where PostgreSQL refuses them, split in halves and write each, so that
        only the refused samples are lost (within `budget` transactions)."""
        try:
            return self._write_retrying(batch, samples, target)
        except _RefusedError as refused:
            budget[0] -= 1
            if len(samples) == 1 or budget[0] <= 0:
                self._drop(target, "refused", len(samples), f"PostgreSQL refused them: {refused}")
                return 0
        half = len(samples) // 2
        return (self._write_isolating(batch, samples[:half], target, budget)
                + self._write_isolating(batch, samples[half:], target, budget))

    def _write_retrying(self, batch: Batch, samples: list[Sample], target: str) -> int:
        for attempt in range(3):
            drops: dict[str, tuple[int, str]] = {}
            try:
                inserted = self._write(batch, samples, drops, staged=attempt > 0)
            except (sa.exc.DBAPIError, psycopg.Error) as wrapped:
                err = wrapped.orig if isinstance(wrapped, sa.exc.DBAPIError) else wrapped
                if isinstance(err, psycopg.errors.UniqueViolation):
                    # Some rows are stored already: a replay. Again, idempotently.
                    self.replayed_batches += 1
                    log.debug("batch of %s at %d is (partly) stored already; writing it idempotently",
                              target, batch.scraped_at_ms)
                elif isinstance(err, psycopg.errors.TransactionRollback):
                    # Lost a lock race with a rollup or retention pass: nothing was stored; again.
                    log.info("writing the batch of %s lost a lock race (%s); writing it again", target,
                             type(err).__name__)
                elif isinstance(err, psycopg.errors.LockNotAvailable):
                    # A partition had to be made and its lock_timeout ran out; in a moment, again.
                    log.info("writing the batch of %s waited too long for a lock (%s); writing it again", target,
                             str(err).strip())
                    time.sleep(0.2 * (attempt + 1))
                elif isinstance(err, psycopg.errors.CheckViolation) and "no partition" in str(err):
                    # A partition we remembered is gone (dropped by hand?): forget them and retry.
                    log.warning("partition missing for the batch of %s (%s); creating it again", target, err)
                    self._partitions.clear()
                else:
                    raise
            else:
                for reason, (count, why) in drops.items():
                    self._drop(target, reason, count, why)
                return inserted
        raise RuntimeError(f"could not write the batch of {target} in 3 attempts")

    def _drop(self, target: str, reason: str, count: int, why: str) -> None:
        if count <= 0:
            return
        self.dropped[reason] += count
        if (target, reason) in self._drops_logged:
            log.debug("dropped %d samples of %s (%s): %s", count, target, reason, why)
            return
        if len(self._drops_logged) < 10_000:  # bounded: targets x reasons, but targets come and go
            self._drops_logged.add((target, reason))
        log.warning("dropped %d samples of %s (%s): %s; later drops of %s for this reason are counted in "
                    "perfwatch_archiver_samples_dropped_total and logged at debug", count, target, reason, why, target)

    # -- internals --------------------------------------------------------------------------------

    def _write(self, batch: Batch, samples: list[Sample], drops: dict[str, tuple[int, str]], *,
               staged: bool) -> int:
        new_metrics: dict[str, tuple[int, MetricMeta]] = {}
        new_series: dict[SeriesKey, _SeriesEntry] = {}
        refreshed: list[_SeriesEntry] = []
        new_partitions: set[int] = set()
        with self.engine.connect() as conn:
            try:
                with conn.begin():
                    guard = conn.execute(BEGIN_WRITE).one()
                    refuse_ms = _to_ms(guard.refuse_before)
                    if refuse_ms is not None:
                        kept = [s for s in samples if s.timestamp_ms >= refuse_ms]
                        if len(kept) < len(samples):
                            before = f"{guard.refuse_before:%Y-%m-%d %H:%M:%S}Z"
                            drops["expired"] = (len(samples) - len(kept), f"older than {before} (retention dropped it)")
                        samples = kept
                    rows = self._resolve(conn, batch, samples, drops, new_metrics, new_series, refreshed)
                    if not rows:
                        return 0
                    lo_ms, hi_ms = min(r[1] for r in rows), max(r[1] for r in rows)
                    packed_ms = _to_ms(guard.packed_before)
                    inserted = 0
                    if packed_ms is not None and lo_ms < packed_ms:
                        late = [r for r in rows if r[1] < packed_ms]
                        rows = [r for r in rows if r[1] >= packed_ms]
                        inserted += self._copy_late(conn, late, guard.packed_width)
                    if rows:
                        new_partitions = self._ensure_partitions(conn, rows)
                        inserted += self._copy(conn, rows, staged=staged)
                    first_watermark_ms = _to_ms(guard.first_watermark)
                    if inserted and first_watermark_ms is not None and lo_ms < first_watermark_ms:
                        conn.execute(sa.select(db.fn("note_late", guard.first_tier, _ts(lo_ms), _ts(hi_ms))))
            except Exception as err:
                dbapi = conn.connection.dbapi_connection
                if dbapi is not None and dbapi.closed:
                    conn.invalidate()
                if isinstance(dbapi, psycopg.Connection):
                    if db.is_unavailable(err, dbapi):
                        raise db.DatabaseUnavailable(str(err).strip().splitlines()[0] or type(err).__name__) from err
                    orig = err.orig if isinstance(err, sa.exc.DBAPIError) else err
                    if isinstance(orig, psycopg.Error) and _is_refusal(orig):  # on a connection that is fine
                        raise _RefusedError(str(orig).strip().splitlines()[0]) from err
                raise
        # Committed: only now may the caches learn the new ids.
        self._metrics.update(new_metrics)
        self._series.update(new_series)
        for entry in refreshed:
            entry.last_seen_ms = batch.scraped_at_ms
        self._partitions |= new_partitions
        return inserted

    def _resolve(self, conn: sa.Connection, batch: Batch, samples: list[Sample], drops: dict[str, tuple[int, str]],
                 new_metrics: dict[str, tuple[int, MetricMeta]], new_series: dict[SeriesKey, _SeriesEntry],
                 refreshed: list[_SeriesEntry]) -> list[tuple[int, int, float]]:
        """(series id, ms, value) for each sample, creating metrics and series as needed.

        The hot path: one pass over the samples and a dictionary lookup each."""
        series = self._series
        rows = []
        missing: dict[SeriesKey, int] = {}  # key → first ms in this batch
        stale: set[_SeriesEntry] = set()
        refresh_before = batch.scraped_at_ms - LAST_SEEN_REFRESH_MS
        for s in samples:
            key = (s.name, s.labels)
            entry = series.get(key)
            if entry is None:
                if key not in missing or s.timestamp_ms < missing[key]:
                    missing[key] = s.timestamp_ms
                continue
            rows.append((entry.id, s.timestamp_ms, s.value))
            if entry.last_seen_ms <= refresh_before:
                stale.add(entry)
        metrics = self._metrics
        # Only the metrics of these samples: a batch split to isolate a refused sample must not carry
        # the refused metric into every part.
        names = {s.name for s in samples} if len(samples) < len(batch.samples) else batch.metadata.keys()
        changed = {name: meta for name, meta in batch.metadata.items()
                   if name in names and ((known := metrics.get(name)) is None or known[1] != meta)}
        # Names this batch has no metadata for (remote_write sends it apart): what the catalog says,
        # or a guess by name where it has nothing.
        unannounced = {name for name, _ in missing if name not in metrics and name not in changed}
        if changed:
            new_metrics.update(self._upsert_metrics(conn, changed))
        if unannounced:
            new_metrics.update(self._ensure_metrics(conn, sorted(unannounced)))
        if missing:
            unstorable = sorted(key for key in missing if not _storable(key))
            for key in unstorable:
                del missing[key]
            if missing:
                new_series.update(self._upsert_series(conn, missing, {**metrics, **new_metrics}))
                for s in samples:
                    entry = new_series.get((s.name, s.labels))
                    if entry is not None:
                        rows.append((entry.id, s.timestamp_ms, s.value))
            if unstorable:
                unstorable_keys = set(unstorable)
                skipped = sum(1 for s in samples if (s.name, s.labels) in unstorable_keys)
                drops["unstorable"] = (skipped, "a label name or value holds a NUL character or invalid unicode, "
                                       f"which PostgreSQL cannot store (metric {unstorable[0][0]})")
        if stale:
            ids = sorted(e.id for e in stale)
            conn.execute(sa.select(db.fn("touch_series", ids, _ts(batch.scraped_at_ms))))
            refreshed.extend(stale)
        return rows

    def _upsert_metrics(self, conn: sa.Connection, metas: dict[str, MetricMeta]) -> dict[str, tuple[int, MetricMeta]]:
        values = list(metas.values())
        rows = db.call_table(conn, "upsert_metrics", [m.name for m in values], [m.kind for m in values],
                             [m.family_type for m in values], [_clean_text(m.help) for m in values],
                             [_clean_text(m.unit) for m in values])
        ids = {row.name: row.id for row in rows}
        return {name: (ids[name], meta) for name, meta in metas.items()}

    def _ensure_metrics(self, conn: sa.Connection, names: list[str]) -> dict[str, tuple[int, MetricMeta]]:
        rows = db.call_table(conn, "ensure_metrics", names, [_guess_kind(name) for name in names])
        return {row.name: (row.id, MetricMeta(row.name, row.kind, row.family_type, row.help, row.unit)) for row in rows}

    def _upsert_series(self, conn: sa.Connection, missing: dict[SeriesKey, int],
                       metrics: dict[str, tuple[int, MetricMeta]]) -> dict[SeriesKey, _SeriesEntry]:
        by_db_key: dict[tuple[int, tuple[tuple[str, str], ...]], SeriesKey] = {}
        metric_ids, labels_json, seen = [], [], []
        for key, first_ms in missing.items():
            name, labels = key
            metric_id = metrics[name][0]
            by_db_key[(metric_id, tuple(sorted(labels)))] = key
            metric_ids.append(metric_id)
            labels_json.append(json.dumps(dict(labels), ensure_ascii=False))
            seen.append(_ts(first_ms))
        entries = {}
        for row in db.call_table(conn, "upsert_series", metric_ids, labels_json, seen):
            key = by_db_key[(row.metric_id, tuple(sorted(row.labels.items())))]
            entries[key] = _SeriesEntry(row.id, _to_ms(row.last_seen) or 0)
        return entries

    def _ensure_partitions(self, conn: sa.Connection, rows: list[tuple[int, int, float]]) -> set[int]:
        if self._partition_ms is None:
            width = db.call_table(conn, "tier_state", "raw")[0].partition_width
            self._partition_ms = int(width.total_seconds() * 1000)
        width_ms = self._partition_ms
        needed = {ms // width_ms for ms in {r[1] for r in rows}} - self._partitions
        for number in sorted(needed):
            conn.execute(sa.select(db.fn("ensure_partition", "raw", _ts(number * width_ms))))
        return needed

    def _copy(self, conn: sa.Connection, rows: list[tuple[int, int, float]], *, staged: bool) -> int:
        cur = db.psycopg_connection(conn).cursor()
        if staged:
            cur.execute(db.sql_text("store_stage_create"))
        _copy_rows(cur, db.sql_text("store_stage_copy" if staged else "store_copy_sample"), rows)
        if not staged:
            return len(rows)
        cur.execute(db.sql_text("store_stage_merge"))
        return cur.rowcount

    def _copy_late(self, conn: sa.Connection, rows: list[tuple[int, int, float]], packed_width: dt.timedelta) -> int:
        """Rows for windows already packed (sql/functions/compact.sql): through the staging table
        into sample_late, skipping those a chunk holds already."""
        cur = db.psycopg_connection(conn).cursor()
        cur.execute(db.sql_text("store_stage_create"))
        _copy_rows(cur, db.sql_text("store_stage_copy"), rows)
        cur.execute(db.sql_text("store_stage_merge_late"), (packed_width,))
        return cur.rowcount


def _copy_rows(cur: psycopg.Cursor[Any], statement: str, rows: list[tuple[int, int, float]]) -> None:
    # Binary COPY: the server parses no text, and a double travels as its 8 bytes (exact, infinities
    # included). The stream is packed here, a struct call a row: psycopg's write_row, with a datetime
    # a row, cost three times as much.
    pack = _COPY_ROW.pack
    data = b"".join([pack(3, 4, series_id, 8, (ms - _PG_EPOCH_MS) * 1000, 8, value) for series_id, ms, value in rows])
    with cur.copy(statement) as copy:
        copy.write(_COPY_HEADER + data + _COPY_TRAILER)


def _guess_kind(name: str) -> SampleKind:
    # A sample without metadata: decide by name, as Prometheus' rate() warnings do; untyped gets
    # counter maths and a gauge's aggregates both, so either reading of it stays right.
    return "counter" if name.endswith(("_total", "_bucket", "_count", "_sum")) else "untyped"


def _storable(key: SeriesKey) -> bool:
    name, labels = key
    for text in (name, *(x for pair in labels for x in pair)):
        if "\x00" in text:
            return False
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            return False
    return True


def _clean_text(text: str) -> str:
    # HELP and unit are descriptions, not identity: drop what PostgreSQL cannot store rather than the sample.
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


_ts = ms_to_datetime


def _to_ms(value: dt.datetime | None) -> int | None:
    return None if value is None else datetime_to_ms(value)


class _RefusedError(Exception):
    """PostgreSQL refused some of the samples (the message says why)."""


def _is_refusal(err: psycopg.Error) -> bool:
    """Data PostgreSQL will not store, as opposed to an outage or a bug: a data exception (22: a
    value or timestamp out of range, a byte it cannot hold), an integrity violation other than a
    replay's duplicate key (23), a program limit (54), or a statement libpq refused client-side on a
    connection that is fine (no SQLSTATE)."""
    state = err.sqlstate
    if state is None:
        return isinstance(err, psycopg.OperationalError)
    return state.startswith(("22", "54")) or (state.startswith("23") and state != "23505")


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
