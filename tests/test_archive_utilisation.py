"""Utilisation summaries and right-sizing against a real PostgreSQL, with known answers.

Hosts are written through Store as an exporter's scrapes every 60 s (off every bucket edge):
node_cpu_seconds_total for 2 CPUs, memory, a disk and a network interface, each busy by a known
share. Every bucket value is then known exactly, so are the p95s (percentile_cont: linear between
the nearest ranks, computed again here in Python) and the verdicts.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa
from support.archive import ms, stored_archive
from support.prometheus import Prometheus, promtool

from perfwatch.archiver.model import Batch, MetricMeta, Sample
from perfwatch.archiver.policy import Policy
from perfwatch.archiver.rollup import run_rollups
from perfwatch.archiver.settings import RightsizingSettings
from perfwatch.archiver.store import Store
from perfwatch.archiver.summarise import recommendations, run_summaries, summaries

DAY0 = dt.datetime(2024, 3, 4, tzinfo=dt.UTC)  # a Monday
DAYS = 2
NOW = DAY0 + dt.timedelta(days=DAYS, minutes=30)
POLICY = Policy()  # 5m first tier
INTERVAL_S = 60
OFFSET_S = 7  # scrapes at :07 of each minute: none on a bucket edge
MEM_TOTAL = 8 * 2**30
SPEED = 125_000_000.0  # 1 Gbit/s
META = {
    "node_cpu_seconds_total": MetricMeta("node_cpu_seconds_total", "counter", "counter"),
    "node_memory_MemTotal_bytes": MetricMeta("node_memory_MemTotal_bytes", "gauge", "gauge"),
    "node_memory_MemAvailable_bytes": MetricMeta("node_memory_MemAvailable_bytes", "gauge", "gauge"),
    "node_disk_io_time_seconds_total": MetricMeta("node_disk_io_time_seconds_total", "counter", "counter"),
    "node_network_receive_bytes_total": MetricMeta("node_network_receive_bytes_total", "counter", "counter"),
    "node_network_transmit_bytes_total": MetricMeta("node_network_transmit_bytes_total", "counter", "counter"),
    "node_network_speed_bytes": MetricMeta("node_network_speed_bytes", "gauge", "gauge"),
}


def memory_pattern(bucket: int) -> float:
    """A known, uneven distribution of used memory over a day's 288 buckets (constant inside each)."""
    return 0.2 + 0.5 * ((bucket * 37) % 288) / 288 + (0.25 if bucket % 97 == 0 else 0.0)


def host_batches(instance: str, cpu: float, memory: Callable[[int], float], disk: float, rx: float,
                 start: dt.datetime = DAY0, minutes: float = DAYS * 1440, job: str = "node",
                 interval_s: float = INTERVAL_S, meta: dict[str, MetricMeta] = META) -> Iterator[Batch]:
    """Scrapes every `interval_s`, from `start` + 7 s and for `minutes`, of a host whose CPUs are
    busy `cpu` of the time, memory used memory(5-minute bucket of the day), its disk busy `disk`, its
    eth0 receiving `rx` bytes/s (and transmitting half that), lo as busy but left out."""
    labels = (("instance", instance), ("job", job))
    counters = {"cpu": 1000.0, "disk": 50.0, "rx": 1e9, "tx": 2e9}
    hour: list[Sample] = []
    scrapes = round(minutes * 60 / interval_s)
    for i in range(scrapes + 1):
        t = ms(start) + round((i * interval_s + OFFSET_S) * 1000)
        bucket = (t % 86400_000) // 300_000
        samples = []
        for c in ("0", "1"):
            for mode, share in (("idle", 1 - cpu), ("iowait", 0.0), ("system", cpu * 0.25), ("user", cpu * 0.75)):
                value = counters["cpu"] + i * interval_s * share
                samples.append(Sample("node_cpu_seconds_total", tuple(sorted((*labels, ("cpu", c), ("mode", mode)))),
                                      value, t))
        available = MEM_TOTAL * (1 - memory(bucket))
        samples += [Sample("node_memory_MemTotal_bytes", labels, MEM_TOTAL, t),
                    Sample("node_memory_MemAvailable_bytes", labels, available, t),
                    Sample("node_disk_io_time_seconds_total", tuple(sorted((*labels, ("device", "sda")))),
                           counters["disk"] + i * interval_s * disk, t)]
        for device in ("eth0", "lo"):
            dl = tuple(sorted((*labels, ("device", device))))
            samples += [Sample("node_network_receive_bytes_total", dl, counters["rx"] + i * interval_s * rx, t),
                        Sample("node_network_transmit_bytes_total", dl, counters["tx"] + i * interval_s * rx / 2, t)]
        samples.append(Sample("node_network_speed_bytes", tuple(sorted((*labels, ("device", "eth0")))), SPEED, t))
        hour += samples
        if i % 60 == 59 or i == scrapes:  # 60 scrapes a batch: fewer transactions, the same rows
            yield Batch(job, instance, t, hour, meta)
            hour = []


def percentile_cont(values: list[float], q: float) -> float:
    """PostgreSQL's percentile_cont and PromQL's quantile_over_time: linear between the nearest ranks."""
    s = sorted(values)
    rank = q * (len(s) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (rank - lo)


@pytest.fixture
def hosts(pg_dsn: str) -> Iterator[sa.Engine]:
    engine = stored_archive(pg_dsn, POLICY)
    store = Store(engine)
    for batches in (host_batches("idle:9100", 0.01, lambda b: 0.1, 0.01, 1000.0),
                    host_batches("busy:9100", 1.0, lambda b: 0.5, 0.3, 5e6),
                    host_batches("known:9100", 0.5, memory_pattern, 0.9, 1e8)):
        for batch in batches:
            store.write(batch)
    run_rollups(engine, POLICY, now=NOW)
    yield engine
    engine.dispose()


def stored(engine: sa.Engine, period: str) -> dict[tuple[str, dt.datetime], sa.RowMapping]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM perfwatch.utilisation_summary WHERE period = :p"), {"p": period})
        return {(r.instance, r.period_start): r._mapping for r in rows}


def test_closed_periods_are_stored_with_known_values_and_a_second_pass_writes_nothing(hosts: sa.Engine) -> None:
    again, runs = run_summaries(hosts, RightsizingSettings(), now=NOW)
    assert again == 0
    by_period = {r.period: r for r in runs}
    # the first tier is rolled up to NOW - 1m: two whole days, 48 hours, no whole week or month
    assert by_period["hour"].watermark_after == DAY0 + dt.timedelta(days=2)
    assert by_period["day"].watermark_after == DAY0 + dt.timedelta(days=2)
    assert by_period["hour"].rows == 48 * 3 and by_period["day"].rows == 2 * 3
    assert by_period["week"].rows == 0 and by_period["month"].rows == 0
    days = stored(hosts, "day")
    assert len(days) == 6
    known = days[("known:9100", DAY0)]
    assert (known["buckets"], known["expected"], known["step"]) == (288, 288, dt.timedelta(minutes=5))
    used = [memory_pattern(b) for b in range(288)]
    assert known["memory_p95"] == pytest.approx(percentile_cont(used, 0.95), rel=1e-12, abs=1e-12)
    assert known["memory_max"] == pytest.approx(max(used), rel=1e-12)
    assert known["memory_avg"] == pytest.approx(sum(used) / 288, rel=1e-12)
    for key in ("cpu_avg", "cpu_p95", "cpu_max"):
        assert known[key] == pytest.approx(0.5, rel=1e-12)
    assert known["disk_p95"] == pytest.approx(0.9, rel=1e-9)
    # eth0 only (lo is left out): 1e8 in, 5e7 out; the busiest direction is 80% of 1 Gbit/s
    assert known["network_p95"] == pytest.approx(1.5e8, rel=1e-9)
    assert known["network_share_p95"] == pytest.approx(0.8, rel=1e-9)
    # every hour of the idle host is 1% busy
    hours = stored(hosts, "hour")
    assert {round(r["cpu_p95"], 12) for (inst, _), r in hours.items() if inst == "idle:9100"} == {0.01}
    computed = {k: dict(v) for k, v in days.items()}
    again, runs = run_summaries(hosts, RightsizingSettings(), now=NOW)
    assert again == 0 and sum(r.rows for r in runs) == 0
    assert {k: dict(v) for k, v in stored(hosts, "day").items()} == computed


def test_flat_idle_host_is_under_utilised_and_saturated_cpu_is_the_bottleneck(hosts: sa.Engine) -> None:
    run_summaries(hosts, RightsizingSettings(), now=NOW)
    recs = {r.instance: r for r in recommendations(hosts, "day", DAY0, DAY0 + dt.timedelta(days=2))}
    assert set(recs) == {"idle:9100", "busy:9100", "known:9100"}
    idle, busy, known = recs["idle:9100"], recs["busy:9100"], recs["known:9100"]
    assert (idle.verdict, idle.bottleneck, idle.periods) == ("under-utilised", None, 2)
    assert idle.cpu_p95 == pytest.approx(0.01) and idle.memory_p95 == pytest.approx(0.1)
    assert idle.recommendation.startswith("downsize")
    assert "CPU p95 1.0% < 80.0%" in idle.evidence
    assert (busy.verdict, busy.bottleneck) == ("over-utilised", "cpu")
    assert "CPU p95 100.0% >= 80.0% threshold (2024-03-04)" in busy.evidence
    assert busy.details["resources"]["cpu"]["p95"] == pytest.approx(1.0)
    # known: disk 90% busy (1.125 x its threshold) beats network at 80% (1.0 x)
    assert (known.verdict, known.bottleneck) == ("over-utilised", "disk")
    # an hour's view of one host, through the job/instance options
    only = recommendations(hosts, "hour", DAY0, DAY0 + dt.timedelta(hours=3), instance="busy:9100")
    assert [(r.instance, r.periods, r.bottleneck) for r in only] == [("busy:9100", 3, "cpu")]


def test_thresholds_from_the_config_are_honoured(hosts: sa.Engine) -> None:
    strict = RightsizingSettings(cpu_under=0.005, memory_over=0.35, network_over=0.7)
    run_summaries(hosts, strict, now=NOW)  # mirrors them
    with hosts.connect() as conn:
        assert dict(conn.execute(sa.text("SELECT name, value FROM perfwatch.rightsizing_threshold")).all()) == \
            strict.thresholds()
    recs = {r.instance: r for r in recommendations(hosts, "day", DAY0, DAY0 + dt.timedelta(days=2))}
    assert recs["idle:9100"].verdict == "ok"  # 1% CPU is no longer below the threshold
    # busy: memory 50% / 35% = 1.43 beats CPU 100% / 80% = 1.25
    assert (recs["busy:9100"].verdict, recs["busy:9100"].bottleneck) == ("over-utilised", "memory")
    # known: memory (p95 0.69 / 0.35) beats network (0.8 / 0.7) and disk (0.9 / 0.8)
    assert recs["known:9100"].bottleneck == "memory"
    assert recs["known:9100"].details["thresholds"]["network_over"] == 0.7


def test_late_samples_recompute_a_closed_period_once_rolled_up(hosts: sa.Engine) -> None:
    run_summaries(hosts, RightsizingSettings(), now=NOW)
    hour = DAY0 + dt.timedelta(hours=3)
    before = stored(hosts, "hour")[("idle:9100", hour)]
    assert before["memory_max"] == pytest.approx(0.1)
    # a replayed spool: scrapes 30 s after the stored ones, in 03:00-03:10, with all memory in use
    late = list(host_batches("idle:9100", 0.01, lambda b: 1.0, 0.01, 1000.0,
                             start=hour + dt.timedelta(seconds=30), minutes=9))
    store = Store(hosts)
    for batch in late:
        batch.samples = [s for s in batch.samples if s.name.startswith("node_memory")]
        store.write(batch)
    # not rolled up again yet: the summary waits for it
    run_summaries(hosts, RightsizingSettings(), now=NOW)
    assert stored(hosts, "hour")[("idle:9100", hour)]["memory_max"] == pytest.approx(0.1)
    run_rollups(hosts, POLICY, now=NOW)
    again, _ = run_summaries(hosts, RightsizingSettings(), now=NOW)
    # hour, day (and nothing else: no week or month is stored yet)
    assert again == 2
    after = stored(hosts, "hour")[("idle:9100", hour)]
    # buckets 03:00 and 03:05 now average 10 samples at 0.1 and 10 at 1.0 (03:05's 5+4 late ones)
    assert after["memory_max"] == pytest.approx((5 * 0.1 + 5 * 1.0) / 10, rel=1e-9)
    assert stored(hosts, "hour")[("idle:9100", hour + dt.timedelta(hours=1))]["memory_max"] == pytest.approx(0.1)
    with hosts.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM perfwatch.utilisation_dirty")).scalar() == 0


def test_the_open_period_is_computed_on_read(hosts: sa.Engine) -> None:
    run_summaries(hosts, RightsizingSettings(), now=NOW)
    rows = summaries(hosts, "week", DAY0, DAY0 + dt.timedelta(days=2), instance="busy:9100")
    assert [(r["period_start"], r["final"], r["buckets"]) for r in rows] == [(DAY0, False, 2 * 288)]
    assert rows[0]["cpu_p95"] == pytest.approx(1.0)
    days = summaries(hosts, "day", DAY0, DAY0 + dt.timedelta(days=3), instance="busy:9100")
    assert [(r["period_start"].day, r["final"]) for r in days] == [(4, True), (5, True), (6, False)]


def test_a_bad_period_is_refused_naming_it(hosts: sa.Engine) -> None:
    with pytest.raises(sa.exc.ProgrammingError, match="period must be hour, day, week or month, not fortnight"):
        summaries(hosts, "fortnight", DAY0, DAY0 + dt.timedelta(days=1))


def test_memory_p95_is_prometheus_quantile_over_time_of_5m_averages(pg_dsn: str, tmp_path: Path) -> None:
    """The same day of jittered, noisy memory samples in the archive and (backfilled with promtool) in a
    real Prometheus: the day's memory p95 equals
    quantile_over_time(0.95, (1 - avg_over_time(avail[5m]) / avg_over_time(total[5m]))[1d:5m]) at the
    day's end, the subquery's steps falling on the archive's bucket ends."""
    rng = random.Random(14)
    labels = (("instance", "h:9100"), ("job", "node"))
    points, t = [], ms(DAY0) + 3_000
    while t < ms(DAY0) + 86400_000 - 30_000:
        if t % 300_000 > 500:  # never on a bucket edge (Prometheus 2's ranges include both ends)
            points.append((t, MEM_TOTAL * rng.uniform(0.05, 0.95)))
        t += 30_000 + rng.randint(-4000, 4000)
    engine = stored_archive(pg_dsn, POLICY)
    Store(engine).write(Batch("node", "h:9100", points[-1][0], [
        s for t, avail in points for s in (Sample("node_memory_MemTotal_bytes", labels, MEM_TOTAL, t),
                                            Sample("node_memory_MemAvailable_bytes", labels, avail, t))], META))
    run_rollups(engine, POLICY, now=DAY0 + dt.timedelta(days=1, minutes=10))
    with engine.connect() as conn:
        [mine] = conn.execute(sa.text("SELECT * FROM perfwatch.utilisation_compute('day', :f, :t)"),
                              {"f": DAY0, "t": DAY0 + dt.timedelta(days=1)}).all()
    engine.dispose()
    assert mine.buckets == 0 and mine.expected == 288  # no CPU series: memory only
    lines = []
    for name, value in (("node_memory_MemTotal_bytes", lambda v: float(MEM_TOTAL)),
                        ("node_memory_MemAvailable_bytes", lambda v: v)):
        lines.append(f"# TYPE {name} gauge\n")
        lines += [f'{name}{{instance="h:9100",job="node"}} {value(v)!r} {t / 1000:.3f}\n' for t, v in points]
    (tmp_path / "samples.om").write_text("".join(lines) + "# EOF\n")
    made = promtool("tsdb", "create-blocks-from", "openmetrics", str(tmp_path / "samples.om"), str(tmp_path / "tsdb"))
    assert made.returncode == 0, made.stderr
    expr = ("quantile_over_time(0.95, (1 - avg_over_time(node_memory_MemAvailable_bytes[5m])"
            " / avg_over_time(node_memory_MemTotal_bytes[5m]))[1d:5m])")
    keep = ["--storage.tsdb.retention.time=100y"]
    with Prometheus(tmp_path, {"global": {"scrape_interval": "15s"}}, args=keep) as prom:
        params: dict[str, str | float] = {"query": expr, "time": ms(DAY0 + dt.timedelta(days=1)) / 1000}
        body = requests.get(f"{prom.url}/api/v1/query", params=params, timeout=30).json()
        assert body["status"] == "success", body
        [result] = body["data"]["result"]
        count = requests.get(f"{prom.url}/api/v1/query", timeout=30, params={
            "query": "count_over_time(avg_over_time(node_memory_MemTotal_bytes[5m])[1d:5m])",
            "time": params["time"]}).json()["data"]["result"]
    assert float(count[0]["value"][1]) == 288  # the same 288 buckets
    assert mine.memory_p95 == pytest.approx(float(result["value"][1]), rel=1e-12)
