"""The archive's answers computed independently, from raw samples, in Python; and synthetic data.

The definitions are those of perfwatch/archiver/sql/functions/read.sql and buckets.sql (README "Reading the archive"):

* buckets start on multiples of their width counted from the Unix epoch;
* a counter's increase over a set of samples is the sum over consecutive samples (a, b) of
  b - a, or b when b < a (a reset to zero in between); no extrapolation;
* per bucket of a tier: only pairs with both samples inside the bucket (the pair across a
  boundary is recovered from last/first values);
* per step of the read function: pairs whose later sample falls in the step and whose earlier
  sample is inside the queried range.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import random
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from perfwatch.archiver import db
from perfwatch.archiver.migrate import apply_migrations
from perfwatch.archiver.model import Batch, MetricMeta, Sample, SampleKind
from perfwatch.archiver.policy import Policy, mirror_policy
from perfwatch.archiver.store import Store

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
Point = tuple[int, float]  # (ms since the epoch, value)


def ms(t: dt.datetime) -> int:
    delta = t - EPOCH
    return (delta.days * 86400 + delta.seconds) * 1000 + delta.microseconds // 1000


def at(ms_: int) -> dt.datetime:
    return EPOCH + dt.timedelta(milliseconds=ms_)


def floor_ms(t_ms: int, width_ms: int) -> int:
    return t_ms - t_ms % width_ms


def delta(prev: float, cur: float) -> float:
    return cur - prev if cur >= prev else cur


@dataclasses.dataclass
class Stats:
    count: int
    sum: float
    min: float
    max: float
    first_ms: int
    first: float
    last_ms: int
    last: float
    increase: float  # counters; pairs as the docstring says
    resets: int

    @property
    def avg(self) -> float:
        return self.sum / self.count


def bucket_stats(points: Sequence[Point], width_ms: int) -> dict[int, Stats]:
    """What a rollup tier of `width_ms` must hold for one series (points sorted by time)."""
    out: dict[int, Stats] = {}
    prev_bucket = None
    prev_value = 0.0
    for t, v in points:
        b = floor_ms(t, width_ms)
        s = out.get(b)
        if s is None:
            out[b] = Stats(1, v, v, v, t, v, t, v, 0.0, 0)
        else:
            s.count += 1
            s.sum += v
            s.min = min(s.min, v)
            s.max = max(s.max, v)
            s.last_ms, s.last = t, v
        if prev_bucket == b:
            out[b].increase += delta(prev_value, v)
            out[b].resets += v < prev_value
        prev_bucket, prev_value = b, v
    return out


def step_stats(points: Sequence[Point], t_from_ms: int, t_to_ms: int, step_ms: int,
               bucket_of: Callable[[int], int] | None = None) -> dict[int, Stats]:
    """What perfwatch.series() must answer for one series over [t_from, t_to) with `step`.

    `bucket_of` maps a sample time to its output row where that is not simply its step (a period
    served by a tier coarser than the step)."""
    lo = floor_ms(t_from_ms, step_ms)
    hi = -(-t_to_ms // step_ms) * step_ms
    inside = [(t, v) for t, v in points if lo <= t < hi]
    out: dict[int, Stats] = {}
    prev: float | None = None
    for t, v in inside:
        b = bucket_of(t) if bucket_of else floor_ms(t, step_ms)
        s = out.get(b)
        if s is None:
            s = out[b] = Stats(0, 0.0, v, v, t, v, t, v, 0.0, 0)
        s.count += 1
        s.sum += v
        s.min = min(s.min, v)
        s.max = max(s.max, v)
        s.last_ms, s.last = t, v
        if prev is not None:
            s.increase += delta(prev, v)
            s.resets += v < prev
        prev = v
    return out


def increase(points: Iterable[Point]) -> float:
    total, prev = 0.0, None
    for _, v in points:
        if prev is not None:
            total += delta(prev, v)
        prev = v
    return total


# -- synthetic data ---------------------------------------------------------------------------------

@dataclasses.dataclass
class SyntheticSeries:
    name: str
    labels: tuple[tuple[str, str], ...]  # sorted, with job and instance
    kind: SampleKind
    points: list[Point]


def synthetic(start: dt.datetime, hours: float, *, interval_s: float = 10.0, seed: int = 7,
              job: str = "synthetic", instance: str = "host:1") -> list[SyntheticSeries]:
    """Counters with resets (random ones, and ones placed on the first and last sample of 5m and 1h
    buckets), a large-valued counter, gauges that go negative, jittered intervals, a gap, and a
    series that starts late and stops early."""
    rng = random.Random(seed)
    t0 = ms(start)
    end = t0 + int(hours * 3600_000)
    times = []
    t = t0
    while t < end:
        times.append(t)
        t += int(interval_s * 1000) + rng.randint(-2000, 2000)
    gap_lo, gap_hi = t0 + (end - t0) // 3, t0 + (end - t0) // 3 + 7 * 60_000  # 7 minutes without scrapes
    times = [t for t in times if not gap_lo <= t < gap_hi]

    def labels(**extra: str) -> tuple[tuple[str, str], ...]:
        return tuple(sorted({"job": job, "instance": instance, **extra}.items()))

    def counter(base: float, step: float, reset_p: float) -> list[Point]:
        out, v = [], base
        for i, t in enumerate(times):
            boundary = floor_ms(t, 300_000) != floor_ms(times[i - 1], 300_000) if i else False
            last_in_hour = i + 1 < len(times) and floor_ms(times[i + 1], 3600_000) != floor_ms(t, 3600_000)
            if rng.random() < reset_p or (boundary and rng.random() < 0.05) or (last_in_hour and rng.random() < 0.3):
                v = rng.random() * step  # restarted: counts again from zero
            else:
                v += rng.random() * step
            out.append((t, v))
        return out

    def gauge() -> list[Point]:
        out, v = [], 0.0
        for t in times:
            v += rng.gauss(0, 3)
            out.append((t, v))
        return out

    late_start, early_end = t0 + (end - t0) // 4, t0 + 3 * (end - t0) // 4
    return [
        SyntheticSeries("synthetic_requests_total", labels(code="200"), "counter", counter(0, 50, 0.002)),
        SyntheticSeries("synthetic_requests_total", labels(code="500"), "counter", counter(0, 2, 0.01)),
        SyntheticSeries("synthetic_bytes_total", labels(), "counter", counter(1e12, 1e6, 0.001)),
        SyntheticSeries("synthetic_temperature_celsius", labels(sensor="a"), "gauge", gauge()),
        SyntheticSeries("synthetic_temperature_celsius", labels(sensor="b"), "gauge",
                        [p for p in gauge() if late_start <= p[0] < early_end]),
    ]


def batches(series: Sequence[SyntheticSeries], *, per_batch_ms: int = 3600_000, job: str = "synthetic",
            instance: str = "host:1") -> list[Batch]:
    """The series as store batches, each holding `per_batch_ms` of samples (of every series)."""
    meta = {s.name: MetricMeta(s.name, s.kind, s.kind, f"{s.name} help") for s in series}
    by_window: dict[int, list[Sample]] = {}
    for s in series:
        for t, v in s.points:
            by_window.setdefault(floor_ms(t, per_batch_ms), []).append(Sample(s.name, s.labels, v, t))
    return [Batch(job, instance, max(x.timestamp_ms for x in samples), samples,
                  {n: m for n, m in meta.items() if any(x.name == n for x in samples)})
            for _, samples in sorted(by_window.items())]


def close(a: float | None, b: float | None, rel: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def same(a: Any, b: Any, rel: float = 1e-12) -> bool:
    """Two answers of the archive (rows of values, nested) equal, floats to `rel`."""
    if isinstance(a, float) and isinstance(b, float):
        return close(a, b, rel=rel)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y, rel) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@contextmanager
def login_as(role: str, superuser_dsn: str) -> Iterator[str]:
    """A DSN logging in as `role` (perfwatch_grafana, perfwatch_writer: NOLOGIN as created) to the
    database of `superuser_dsn`, with a password of the test's; NOLOGIN again afterwards."""
    password = secrets.token_urlsafe(18)
    with psycopg.connect(superuser_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    params = conninfo_to_dict(superuser_dsn)
    params.update(user=role, password=password)
    try:
        yield make_conninfo("", **params)
    finally:
        with psycopg.connect(superuser_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(sql.Identifier(role)))


def stored_archive(dsn: str, policy: Policy, data: Sequence[SyntheticSeries] = (), *,
                   per_batch_ms: int = 3600_000) -> sa.Engine:
    """An archive at `dsn`: migrated, `policy` mirrored, `data` written through Store in batches of
    `per_batch_ms` (not rolled up). The caller disposes of the engine."""
    engine = db.make_engine(dsn)
    apply_migrations(engine)
    mirror_policy(engine, policy)
    store = Store(engine)
    for batch in batches(data, per_batch_ms=per_batch_ms):
        store.write(batch)
    return engine
