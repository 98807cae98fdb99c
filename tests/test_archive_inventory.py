"""Host inventory and drift (perfwatch/archiver/sql/functions/inventory.sql) against a real PostgreSQL:
synthetic info series with known changes (a kernel upgraded and rolled back, A -> B -> A; a microcode
update on every CPU; an OS upgrade with quotes and unicode in its labels; a host that stops
reporting) written through Store, rolled up, raw retention run, so that the older answers come from the
tiers; then a real archiver scraping a real exporter whose textfile info series changes."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from conftest import StartExporter
from support.archive import SyntheticSeries, at, login_as, ms, stored_archive
from support.archiver import ArchiverProcess
from support.postgres import PostgresServer

from perfwatch.archiver.model import Batch, MetricMeta, Sample
from perfwatch.archiver.policy import Policy, Tier
from perfwatch.archiver.retention import run_retention
from perfwatch.archiver.rollup import run_rollups
from perfwatch.archiver.store import Store
from perfwatch.common.config import Duration

pytestmark = pytest.mark.usefixtures("stop_leftover_archivers")

NOW = dt.datetime(2024, 5, 1, 0, 20, tzinfo=dt.UTC)
POLICY = Policy(raw_retention=Duration(3 * 86400), tiers=[Tier(Duration(300), Duration(90 * 86400)),
                                                           Tier(Duration(3600), Duration(730 * 86400))])
MINUTE, HOUR, DAY = 60_000, 3600_000, 86400_000
START = ms(dt.datetime(2024, 4, 21, tzinfo=dt.UTC)) + 13_000  # a sample every minute, 13 s past it
LAST = ms(NOW) - 2 * MINUTE + 13_000  # a's newest sample: two minutes before NOW
UPGRADE = ms(dt.datetime(2024, 4, 24, 10, 31, 13, tzinfo=dt.UTC))  # a: kernel 6.1 -> 6.5 (tiers only by now)
MICROCODE = ms(dt.datetime(2024, 4, 27, 8, 30, 13, tzinfo=dt.UTC))  # a: both CPUs
ROLLBACK = ms(dt.datetime(2024, 4, 29, 12, 7, 13, tzinfo=dt.UTC))  # a: back to 6.1 (raw)
OS_UPGRADE = ms(dt.datetime(2024, 4, 25, 3, 0, 13, tzinfo=dt.UTC))  # b
STOP = ms(dt.datetime(2024, 4, 26, 6, 0, 13, tzinfo=dt.UTC))  # b's last sample
BRIEF = ms(dt.datetime(2024, 4, 23, 10, 20, 13, tzinfo=dt.UTC))  # d: 6.2 for 10 minutes, tiers only by now
OLD_OS = {"id": "debian", "name": "Debian GNU/Linux", "version_id": "11", "pretty_name": 'Debian "bullseye" \\ 11'}
NEW_OS = {"id": "debian", "name": "Débian", "version_id": "12", "pretty_name": "Débian «bookworm» ✓ 12"}
MODEL = "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"


def uname(release: str) -> dict[str, str]:
    return {"sysname": "Linux", "release": release, "version": f"#1 SMP {release}", "machine": "x86_64",
            "nodename": "a", "domainname": "(none)"}


def cpu(n: int, microcode: str) -> dict[str, str]:
    return {"package": "0", "core": str(n), "cpu": str(n), "vendor": "GenuineIntel", "family": "6", "model": "106",
            "model_name": MODEL, "microcode": microcode, "stepping": "6", "cachesize": "49152 KB"}


def info(metric: str, instance: str, times: list[int], labels: dict[str, str]) -> SyntheticSeries:
    key = tuple(sorted({"job": "node", "instance": instance, "rack": "r1", **labels}.items()))
    return SyntheticSeries(metric, key, "gauge", [(t, 1.0) for t in times])


def data() -> list[SyntheticSeries]:
    every = list(range(START, LAST + 1, MINUTE))
    a_kernel = ([t for t in every if t < UPGRADE or t >= ROLLBACK], [t for t in every if UPGRADE <= t < ROLLBACK])
    b_times = [t for t in every if t <= STOP]
    return [
        # A -> B -> A: the rollback reuses the first series, whose first_seen says nothing about it
        info("node_uname_info", "a:9100", a_kernel[0], uname("6.1.0")),
        info("node_uname_info", "a:9100", a_kernel[1], uname("6.5.0")),
        info("node_os_info", "a:9100", every, OLD_OS),
        *(info("node_cpu_info", "a:9100", [t for t in every if (t < MICROCODE) == old], cpu(n, code))
          for n in (0, 1) for old, code in ((True, "0xd0003a5"), (False, "0xd0003b9"))),
        info("node_uname_info", "b:9100", b_times, {**uname("5.10.0"), "nodename": "b"}),
        info("node_os_info", "b:9100", [t for t in b_times if t < OS_UPGRADE], OLD_OS),
        info("node_os_info", "b:9100", [t for t in b_times if t >= OS_UPGRADE], NEW_OS),
        # job brief: a value that comes and goes inside one hour, until an hour after
        SyntheticSeries("node_uname_info", (("instance", "d:9100"), ("job", "brief"), *sorted(uname("6.1.0").items())),
                        "gauge", [(t, 1.0) for t in every if t < BRIEF or BRIEF + 10 * MINUTE <= t < BRIEF + HOUR]),
        SyntheticSeries("node_uname_info", (("instance", "d:9100"), ("job", "brief"), *sorted(uname("6.2.0").items())),
                        "gauge", [(t, 1.0) for t in every if BRIEF <= t < BRIEF + 10 * MINUTE]),
    ]


class Archive:
    def __init__(self, dsn: str, engine: sa.Engine) -> None:
        self.dsn, self.engine = dsn, engine

    def call(self, function: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn) as conn:
            return conn.execute(f"SELECT * FROM perfwatch.{function}({', '.join(['%s'] * len(args))})",
                                [json.dumps(a) if isinstance(a, dict | list) else a for a in args]).fetchall()


@pytest.fixture(scope="module")
def archive(postgres_server: PostgresServer) -> Iterator[Archive]:
    with postgres_server.fresh_database() as dsn:
        engine = stored_archive(dsn, POLICY, data(), per_batch_ms=DAY)
        run_rollups(engine, POLICY, NOW)
        assert run_retention(engine, POLICY, NOW).dropped  # the upgrade is in the tiers only
        yield Archive(dsn, engine)
        engine.dispose()


def test_hosts_first_and_last_seen_from_the_samples_and_what_they_run(archive: Archive) -> None:
    rows = archive.call("hosts", at(START - HOUR), NOW, {"job": "node"})
    assert rows == [
        ("a:9100", "node", at(START), at(LAST), True, {"instance": "a:9100", "job": "node", "rack": "r1"},
         "6.1.0", "x86_64", OLD_OS["pretty_name"], MODEL, 2),
        ("b:9100", "node", at(START), at(STOP), False, {"instance": "b:9100", "job": "node", "rack": "r1"},
         "5.10.0", "x86_64", NEW_OS["pretty_name"], None, 0),
    ]


def test_hosts_over_a_past_range_answer_as_of_its_end(archive: Archive) -> None:
    # ending during a's 6.5 days, long before the catalog's last_seen of either kernel series
    end = ROLLBACK - DAY
    rows = archive.call("hosts", at(START), at(end), {"instance": "a:9100"})
    assert [(r[0], r[3], r[4], r[6]) for r in rows] == [("a:9100", at(end - (end - START) % MINUTE), True, "6.5.0")]
    # a range after b stopped: b is not in it
    assert [r[0] for r in archive.call("hosts", at(STOP + HOUR * 2), NOW, {"job": "node"})] == ["a:9100"]


def test_changes_list_each_label_with_its_time_including_the_change_back(archive: Archive) -> None:
    rows = archive.call("host_changes", at(START), NOW, {"job": "node"}, dt.timedelta(hours=1))
    assert rows == [
        (at(UPGRADE), "a:9100", "node", "node_uname_info", "release", "6.1.0", "6.5.0", 1, None),
        (at(UPGRADE), "a:9100", "node", "node_uname_info", "version", "#1 SMP 6.1.0", "#1 SMP 6.5.0", 1, None),
        *((at(OS_UPGRADE), "b:9100", "node", "node_os_info", key, OLD_OS[key], NEW_OS[key], 1, None)
          for key in ("name", "pretty_name", "version_id")),
        # the same change on every CPU at one scrape: one row
        (at(MICROCODE), "a:9100", "node", "node_cpu_info", "microcode", "0xd0003a5", "0xd0003b9", 2, "0,1"),
        (at(ROLLBACK), "a:9100", "node", "node_uname_info", "release", "6.5.0", "6.1.0", 1, None),
        (at(ROLLBACK), "a:9100", "node", "node_uname_info", "version", "#1 SMP 6.5.0", "#1 SMP 6.1.0", 1, None),
    ]
    # the same from 5-minute buckets; and a range that holds only the rollback
    assert archive.call("host_changes", at(START), NOW, {"job": "node"}, dt.timedelta(minutes=5)) == rows
    assert archive.call("host_changes", at(ROLLBACK - HOUR), NOW, {"instance": "a:9100"}, dt.timedelta(hours=1)) \
        == rows[-2:]
    assert archive.call("host_changes", at(START), NOW, {"instance": "nowhere"}, dt.timedelta(hours=1)) == []


def test_a_change_inside_one_tier_bucket_is_exact_where_it_opens_and_at_the_bucket_end_where_it_closes(
        archive: Archive) -> None:
    def changes(step: dt.timedelta) -> list[tuple[dt.datetime, str, str]]:
        rows = archive.call("host_changes", at(START), NOW, {"job": "brief"}, step)
        return [(r[0], r[5], r[6]) for r in rows if r[4] == "release"]

    back = BRIEF + 10 * MINUTE
    # the 1-hour tier: the hour's first and last samples of each kernel are all it keeps
    assert changes(dt.timedelta(hours=1)) == [(at(BRIEF), "6.1.0", "6.2.0"),
                                              (at(BRIEF + 39 * MINUTE), "6.2.0", "6.1.0")]  # 10:59:13
    # the 5-minute tier: each change in a bucket of its own, both exact
    assert changes(dt.timedelta(minutes=5)) == [(at(BRIEF), "6.1.0", "6.2.0"), (at(back), "6.2.0", "6.1.0")]


def test_bad_arguments_are_refused_naming_them(archive: Archive) -> None:
    with pytest.raises(psycopg.errors.RaiseException, match="step must be a positive interval"):
        archive.call("host_changes", at(START), NOW, None, dt.timedelta(0))
    with pytest.raises(psycopg.errors.RaiseException, match="t_from must be at or before t_to"):
        archive.call("hosts", NOW, at(START), None)
    with pytest.raises(psycopg.errors.RaiseException, match="matchers must be a JSON object"):
        archive.call("hosts", at(START), NOW, ["a:9100"])


def test_a_label_value_with_a_nul_is_not_stored_and_the_rest_of_the_host_is(archive: Archive) -> None:
    labels = {"job": "nul", "instance": "c:9100"}
    meta = {"node_os_info": MetricMeta("node_os_info", "gauge", "gauge"),
            "node_uname_info": MetricMeta("node_uname_info", "gauge", "gauge")}
    t = ms(NOW) - MINUTE
    bad = {**labels, **OLD_OS, "pretty_name": "bad\x00name"}
    samples = [Sample("node_os_info", tuple(sorted(bad.items())), 1.0, t),
               Sample("node_uname_info", tuple(sorted({**labels, **uname("6.1.0")}.items())), 1.0, t)]
    assert Store(archive.engine).write(Batch("nul", "c:9100", t, samples, meta)) == 1
    rows = archive.call("hosts", at(t - HOUR), NOW, {"job": "nul"})
    assert [(r[0], r[3], r[6], r[8]) for r in rows] == [("c:9100", at(t), "6.1.0", None)]


def test_grafana_reads_them(archive: Archive) -> None:
    with login_as("perfwatch_grafana", archive.dsn) as dsn, psycopg.connect(dsn) as conn:
        n = conn.execute("SELECT count(*) FROM perfwatch.host_changes(%s, %s, '{\"job\": \"node\"}', '1 hour')",
                         (at(START), NOW)).fetchone()
        hosts = conn.execute("SELECT count(*) FROM perfwatch.hosts(%s, %s, NULL)", (at(START), NOW)).fetchone()
    assert n == (8,) and hosts is not None and hosts[0] >= 2


# -- a real archiver scraping a real exporter whose info series changes -----------------------------------


def info_file(release: str) -> str:
    return ("# HELP node_uname_info Labeled system information as provided by the uname system call.\n"
            "# TYPE node_uname_info gauge\n"
            f'node_uname_info{{domainname="(none)",machine="x86_64",nodename="lab",release="{release}",'
            f'sysname="Linux",version="#1"}} 1\n')


def test_a_real_archiver_sees_the_kernel_change_and_the_change_back(
        tmp_path: Path, pg_dsn: str, start_exporter: StartExporter) -> None:
    directory = tmp_path / "textfile"
    directory.mkdir()
    prom = directory / "uname.prom"

    def write(release: str) -> None:  # atomically, as textfile writers should
        (directory / "uname.tmp").write_text(info_file(release))
        (directory / "uname.tmp").rename(prom)

    write("6.1.0")
    # the exporter's own uname collector off: the textfile's node_uname_info is the host's
    exporter = start_exporter({"collectors": {"uname": {"enabled": False}}},
                              "--collector.textfile.directory", str(directory))
    archiver = ArchiverProcess(tmp_path, {"scrape_interval": "300ms", "database": {"dsn": pg_dsn},
                                          "targets": [{"url": exporter.url, "job": "lab"}]}).start()
    began = dt.datetime.now(dt.UTC)

    def samples() -> list[tuple[str, dt.datetime]]:
        with psycopg.connect(pg_dsn) as conn:
            return [(r, t) for r, t in conn.execute(
                "SELECT s.labels ->> 'release', x.ts FROM perfwatch.sample x"
                " JOIN perfwatch.series s ON s.id = x.series_id JOIN perfwatch.metric m ON m.id = s.metric_id"
                " WHERE m.name = 'node_uname_info' ORDER BY x.ts")]

    def after(t: dt.datetime, release: str) -> bool:
        return sum(1 for r, ts in samples() if r == release and ts > t) >= 3

    archiver.wait_for(lambda: after(began, "6.1.0"), "samples of 6.1.0")
    changed = dt.datetime.now(dt.UTC)
    write("6.5.0")
    archiver.wait_for(lambda: after(changed, "6.5.0"), "samples of 6.5.0")
    back = dt.datetime.now(dt.UTC)
    write("6.1.0")
    archiver.wait_for(lambda: after(back, "6.1.0"), "samples of 6.1.0 again")
    archiver.stop()
    seen = samples()
    first_new = min(ts for r, ts in seen if r == "6.5.0")
    first_back = min(ts for r, ts in seen if r == "6.1.0" and ts > first_new)
    assert changed < first_new < back < first_back
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute("SELECT * FROM perfwatch.host_changes(%s, %s, '{\"job\": \"lab\"}', '1 hour')",
                            (began - dt.timedelta(minutes=1), dt.datetime.now(dt.UTC))).fetchall()
        hosts = conn.execute("SELECT instance, last_seen, kernel FROM perfwatch.hosts(%s, %s, '{\"job\": \"lab\"}')",
                             (began - dt.timedelta(minutes=1), dt.datetime.now(dt.UTC))).fetchall()
    instance = exporter.url.removeprefix("http://")
    assert rows == [(first_new, instance, "lab", "node_uname_info", "release", "6.1.0", "6.5.0", 1, None),
                    (first_back, instance, "lab", "node_uname_info", "release", "6.5.0", "6.1.0", 1, None)]
    assert hosts == [(instance, max(ts for _, ts in seen), "6.1.0")]
