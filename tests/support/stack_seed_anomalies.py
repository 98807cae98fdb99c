"""History for the Anomalies and forecasts dashboard (grafana/dashboards/anomalies.json) in the stack of
tests/test_stack_dashboards.py, which has only seconds of its own.

* Baselines: for the real exporter's series that the z-score panels read (load, available memory,
  context switches, network received), two samples in each hour the panels' range can touch, on each
  of the 8 days before (the dashboard's minimum is 7), far from what the real host does now, so that
  the current hours have a z-score and are anomalous. Few samples on purpose: each one that old is a
  late sample, and every hour of it a partition of each tier for the archiver to create.
* A filesystem filling up steadily (mountpoint /srv/seed-filling) over the stack's time range, so
  that the forecast has a disk with days until full.

Written as the archiver writes: through Store, an hour a batch, as the archive's writer role (the stack's
archiver DSN); then it waits until the archiver has rolled the late samples up.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg

from perfwatch.archiver import db
from perfwatch.archiver.model import Batch, MetricMeta, Sample
from perfwatch.archiver.store import Store
from support.archive import floor_ms, ms
from support.waiting import wait_until

HOUR, DAY = 3600_000, 86400_000
JOB = "perfwatch"
SCORED = ("node_load1", "node_memory_MemAvailable_bytes", "node_context_switches_total",
          "node_network_receive_bytes_total")
FILLING = {"device": "/dev/seed0", "fstype": "ext4", "mountpoint": "/srv/seed-filling"}
SIZE, FILL_PER_S = 100 * 2**30, 2**20
BASELINE_DAYS = 8


def seed(stack: Any) -> None:
    with psycopg.connect(stack.superuser_dsn()) as conn:
        meta = {name: MetricMeta(name, kind, family, help_, unit) for name, kind, family, help_, unit in conn.execute(
            "SELECT name, kind, family_type, help, unit FROM perfwatch.metric WHERE name = ANY (%s)",
            ([*SCORED, "node_filesystem_size_bytes", "node_filesystem_avail_bytes"],))}
        # the label sets as the archive holds the real series (job and instance included)
        scored = conn.execute(
            "SELECT m.name, s.labels FROM perfwatch.series s JOIN perfwatch.metric m ON m.id = s.metric_id "
            "WHERE m.name = ANY (%s) AND s.labels ->> 'instance' = %s AND s.labels ->> 'job' = %s "
            "AND coalesce(s.labels ->> 'device', '') <> 'lo'", (list(SCORED), stack.exporter, JOB)).fetchall()
        current: dict[str, float] = dict(conn.execute(
            "SELECT m.name, max(x.value) FROM perfwatch.sample x JOIN perfwatch.series s ON s.id = x.series_id "
            "JOIN perfwatch.metric m ON m.id = s.metric_id WHERE m.name = 'node_memory_MemAvailable_bytes' "
            "AND s.labels ->> 'instance' = %s GROUP BY 1", (stack.exporter,)).fetchall())
    assert {name for name, _ in scored} == set(SCORED), f"the real exporter's series to seed: {scored}"
    samples: list[Sample] = []
    start = ms(stack.started)
    # the hours a panel's range, from 2 minutes before the start to the end of the tests, can touch
    hours = sorted({floor_ms(start - 120_000, HOUR), floor_ms(start + 15 * 60_000, HOUR)})
    for name, labels in scored:
        key = tuple(sorted(labels.items()))
        counter = 0.0
        for day in range(BASELINE_DAYS, 0, -1):
            wobble = 1 + 0.05 * (day % 5)  # a baseline that moves a little, so its stddev is not 0
            for hour in hours:
                for k in range(2):
                    t = hour - day * DAY + k * 60_000 + 7_000
                    if name == "node_load1":
                        value = 50.0 * wobble  # far above this VM's load
                    elif name == "node_memory_MemAvailable_bytes":
                        value = 3 * current.get(name, 2**30) * wobble
                    else:  # counters: a steady rate of 1e9 a second, continued from day to day
                        counter += 1e9 * 60 * wobble
                        value = counter
                    samples.append(Sample(name, key, value, t))
    # a filesystem filling at 1 MiB/s, every 2 s, from 2 minutes before the stack started until now
    fs = tuple(sorted({**FILLING, "job": JOB, "instance": stack.exporter}.items()))
    now = ms(dt.datetime.now(dt.UTC))
    for t in range(start - 120_000, now, 2000):
        samples.append(Sample("node_filesystem_size_bytes", fs, float(SIZE), t))
        avail = SIZE / 2 - FILL_PER_S * (t - start + 120_000) / 1000
        samples.append(Sample("node_filesystem_avail_bytes", fs, avail, t))
    # One batch per hour, as scrapes would come: the store notes one late range per batch, and a range
    # spanning the days would have the archiver roll up every day between again, in one transaction.
    by_hour: dict[int, list[Sample]] = {}
    for sample in samples:
        by_hour.setdefault(floor_ms(sample.timestamp_ms, HOUR), []).append(sample)
    engine = db.make_engine(stack.writer_dsn())
    try:
        store = Store(engine)
        written = sum(store.write(Batch(JOB, stack.exporter, max(x.timestamp_ms for x in batch), batch,
                                        {x.name: meta[x.name] for x in batch}))
                      for _, batch in sorted(by_hour.items()))
    finally:
        engine.dispose()
    assert written == len(samples), (written, len(samples))
    # Late samples reach the reads once the archiver has rolled them up (or packed them); its rollup
    # of samples older than a tier's packed windows needs the chunk partitions there (rollup_range).
    with psycopg.connect(stack.superuser_dsn(), autocommit=True) as conn:
        def settled() -> bool:
            since = stack.started - dt.timedelta(days=BASELINE_DAYS + 1)
            row = conn.execute("SELECT count(*), (SELECT count(*) FROM perfwatch.rollup_dirty) "
                               "FROM perfwatch.series('node_load1', %s, %s, %s, '1 hour')",
                               (json.dumps({"instance": stack.exporter, "job": JOB}), since,
                                stack.started - dt.timedelta(hours=12))).fetchone()
            return row == (BASELINE_DAYS * len(hours), 0)
        wait_until(settled, "the archiver rolling up the seeded late samples (see archiver.log)", 90, interval=0.5)
