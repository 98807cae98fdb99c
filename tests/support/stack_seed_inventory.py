"""Hosts with drift for the Hosts and drift dashboard (grafana/dashboards/inventory.json) in the stack of
tests/test_stack_dashboards.py, whose real exporter never changes its kernel, OS or CPUs.

Two hosts of the stack's job, from 115 s before the stack started (inside the panels' range):
* seed-upgraded:9100 — a kernel upgrade and its rollback (A -> B -> A), a microcode update on both of
  its CPUs, samples every 5 s until now;
* seed-gone:9100 — an OS upgrade, then silence from a minute before the stack started.

Written as the archiver writes: through Store, as the archive's writer role; the samples are older than
what the stack's tiers have rolled up, so it waits until the archiver has rolled them up again.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg

from perfwatch.archiver import db
from perfwatch.archiver.model import Batch, MetricMeta, Sample
from perfwatch.archiver.store import Store
from support.archive import ms
from support.waiting import wait_until

JOB = "perfwatch"
INFO = ("node_uname_info", "node_os_info", "node_cpu_info")
OS_11 = {"id": "debian", "name": "Debian GNU/Linux", "version_id": "11",
         "pretty_name": "Debian GNU/Linux 11 (bullseye)"}
OS_12 = {"id": "debian", "name": "Debian GNU/Linux", "version_id": "12",
         "pretty_name": "Debian GNU/Linux 12 (bookworm)"}
MODEL = "Seeded CPU @ 2.00GHz"


def uname(node: str, release: str) -> dict[str, str]:
    return {"sysname": "Linux", "release": release, "version": f"#1 SMP {release}", "machine": "x86_64",
            "nodename": node, "domainname": "(none)"}


def cpu(n: int, microcode: str) -> dict[str, str]:
    return {"package": "0", "core": str(n), "cpu": str(n), "vendor": "GenuineIntel", "family": "6", "model": "106",
            "model_name": MODEL, "microcode": microcode, "stepping": "6", "cachesize": "49152 KB"}


def seed(stack: Any) -> None:
    start = ms(stack.started)
    upgrade, microcode, rollback = start - 80_000, start - 70_000, start - 50_000
    os_upgrade, gone = start - 90_000, start - 60_000
    now = ms(dt.datetime.now(dt.UTC))
    samples: list[Sample] = []

    def add(name: str, instance: str, labels: dict[str, str], times: range, keep: Any = lambda t: True) -> None:
        key = tuple(sorted({**labels, "job": JOB, "instance": instance}.items()))
        samples.extend(Sample(name, key, 1.0, t) for t in times if keep(t))

    every = range(start - 115_000, now, 5000)
    host = "seed-upgraded:9100"
    add("node_uname_info", host, uname("upgraded", "6.1.0-seed"), every, lambda t: not upgrade <= t < rollback)
    add("node_uname_info", host, uname("upgraded", "6.5.0-seed"), every, lambda t: upgrade <= t < rollback)
    add("node_os_info", host, OS_12, every)
    for n in (0, 1):
        add("node_cpu_info", host, cpu(n, "0xd0003a5"), every, lambda t: t < microcode)
        add("node_cpu_info", host, cpu(n, "0xd0003b9"), every, lambda t: t >= microcode)
    before_gone = range(start - 115_000, gone + 1, 5000)
    add("node_uname_info", "seed-gone:9100", uname("gone", "5.10.0-seed"), before_gone)
    add("node_os_info", "seed-gone:9100", OS_11, before_gone, lambda t: t < os_upgrade)
    add("node_os_info", "seed-gone:9100", OS_12, before_gone, lambda t: t >= os_upgrade)
    with psycopg.connect(stack.superuser_dsn()) as conn:
        known = {name: MetricMeta(name, kind, family, help_, unit) for name, kind, family, help_, unit in conn.execute(
            "SELECT name, kind, family_type, help, unit FROM perfwatch.metric WHERE name = ANY (%s)", (list(INFO),))}
    # node_cpu_info may be new to this archive: described as node_exporter describes it
    meta = {name: known.get(name, MetricMeta(name, "gauge", "gauge", f"{name} (seeded)")) for name in INFO}
    engine = db.make_engine(stack.writer_dsn())
    try:
        written = Store(engine).write(Batch(JOB, "seed", max(s.timestamp_ms for s in samples), samples, meta))
    finally:
        engine.dispose()
    assert written == len(samples), (written, len(samples))
    # 7 changes: release and version twice, microcode (both CPUs, one row), version_id and pretty_name
    with psycopg.connect(stack.superuser_dsn(), autocommit=True) as conn:
        def settled() -> bool:
            rows = [conn.execute("SELECT count(*), (SELECT count(*) FROM perfwatch.rollup_dirty) FROM "
                                 "perfwatch.host_changes(%s, %s, %s, %s)",
                                 (stack.started - dt.timedelta(minutes=2), dt.datetime.now(dt.UTC),
                                  json.dumps({"job": JOB}), dt.timedelta(seconds=step))).fetchone()
                    for step in (1, 10)]
            return rows == [(7, 0), (7, 0)]
        wait_until(settled, "the archiver rolling up the seeded info samples (see archiver.log)", 90, interval=0.5)
