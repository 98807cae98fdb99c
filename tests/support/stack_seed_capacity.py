"""A second host for the Utilisation and right-sizing dashboard (grafana/dashboards/capacity.json) in the
stack of tests/test_stack_dashboards.py: the real host is idle, has seconds of history and no interface
that reports its speed, so nothing there is over-utilised or has a share of link speed.

"capacity-seed:9100" (job perfwatch, as the real exporter) scraped every 2 s over the 3 minutes before
the stack started and since: CPUs 97% busy, memory 60% used, its disk 20% busy, eth0 at 60% of a
1 Gbit/s link (node_network_speed_bytes), and perfwatch_exporter_build_info so that the dashboard's
$instance offers it. Written as the archiver writes: through Store, as the archive's writer role (the
stack's archiver DSN). Most of it is late for the tiers; the seed waits until the archiver has rolled
it up, and mirrors the default rightsizing thresholds as the archiver's summary job does.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from test_archive_utilisation import META, host_batches

from perfwatch.archiver import db
from perfwatch.archiver.model import MetricMeta, Sample
from perfwatch.archiver.settings import RightsizingSettings
from perfwatch.archiver.store import Store
from perfwatch.archiver.summarise import mirror_thresholds
from support.postgres import scalar
from support.waiting import wait_until

JOB = "perfwatch"
INSTANCE = "capacity-seed:9100"
BUILD_INFO = "perfwatch_exporter_build_info"


def seed(stack: Any) -> None:
    with psycopg.connect(stack.superuser_dsn()) as conn:
        # the catalog's facts where the real exporter's series are there already
        known = {name: MetricMeta(name, kind, family, help_, unit) for name, kind, family, help_, unit in conn.execute(
            "SELECT name, kind, family_type, help, unit FROM perfwatch.metric WHERE name = ANY (%s)",
            ([*META, BUILD_INFO],))}
    meta = {**META, **{k: v for k, v in known.items() if k in META}}
    build_info = known.get(BUILD_INFO, MetricMeta(BUILD_INFO, "gauge", "gauge"))
    start = stack.started - dt.timedelta(minutes=3)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)
    engine = db.make_engine(stack.writer_dsn())
    try:
        store = Store(engine)
        labels = (("instance", INSTANCE), ("job", JOB), ("version", "seed"))
        for batch in host_batches(INSTANCE, 0.97, lambda _bucket: 0.6, 0.2, 0.6 * 125_000_000.0, start=start,
                                  minutes=(now - start).total_seconds() / 60, job=JOB, interval_s=2.0, meta=meta):
            times = sorted({s.timestamp_ms for s in batch.samples})
            batch.samples += [Sample(BUILD_INFO, labels, 1.0, t) for t in times]
            batch.metadata = {**batch.metadata, BUILD_INFO: build_info}
            store.write(batch)
        mirror_thresholds(engine, RightsizingSettings())
    finally:
        engine.dispose()
    with psycopg.connect(stack.superuser_dsn(), autocommit=True) as conn:
        wait_until(lambda: scalar(conn, "SELECT count(*) = 0 FROM perfwatch.rollup_dirty")
                   and scalar(conn, f"SELECT watermark >= '{now.isoformat()}' FROM perfwatch.tier WHERE name = '2s'"),
                   "the archiver to roll the seeded host up", 120, interval=0.5)
