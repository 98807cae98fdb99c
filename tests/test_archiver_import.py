"""`perfwatch-archiver import FILE`: OpenMetrics history into the archive, through the real CLI
process and a real PostgreSQL.

A generated file (counters with a reset, one with its `_created`, a gauge, a histogram's buckets, a
summary, label values with quotes, backslashes, a newline and unicode; four hours at 15 s, jittered
to the millisecond) is imported
into an archive that has already rolled up past that period, so that every sample is late, and
read back through the read functions (perfwatch.series, perfwatch.plan_tiers; the tables beneath
them are not the test's business): every sample exactly, the rolled-up tiers equal to the raw
samples, nothing written by a second import. promtool reads the same file into the same samples.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from support.archive import SyntheticSeries, at, close, floor_ms, ms, step_stats, stored_archive
from support.postgres import PostgresServer
from support.procs import REPO
from support.prometheus import promtool

from perfwatch.archiver import db
from perfwatch.archiver.migrate import apply_migrations
from perfwatch.archiver.policy import Policy
from perfwatch.archiver.rollup import run_rollups

POLICY = Policy()  # what the CLI runs with when given no config: raw 7d, 5m, 1h
LABELS = (("instance", "old-host:9100"), ("job", "history"))  # given with --label
ODD = 'C:\\dir "quoted" ü ✓\nsecond line'  # a label value with everything to escape


def run_import(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perfwatch.archiver", "import", "--dsn", dsn, *args],
                          capture_output=True, text=True, timeout=180, cwd=REPO)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels_text(labels: tuple[tuple[str, str], ...]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}" if labels else ""


def _stamp(t_ms: int) -> str:
    return f"{t_ms // 1000}.{t_ms % 1000:03d}"


@dataclasses.dataclass
class History:
    """An OpenMetrics file and the samples it holds (labels as in the file)."""

    lines: list[str]
    series: list[SyntheticSeries]
    start_ms: int
    end_ms: int

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def samples(self) -> set[tuple[str, tuple[tuple[str, str], ...], float, int]]:
        return {(s.name, s.labels, v, t) for s in self.series for t, v in s.points}


def history(end_ms: int, hours: float = 4, seed: int = 5) -> History:
    """`hours` of 15 s samples ending before `end_ms`, each timestamp jittered to the millisecond."""
    rng = random.Random(seed)
    start_ms = end_ms - int(hours * 3600_000) + 7_123
    times = [t + rng.randint(-500, 500) for t in range(start_ms, end_ms - 1000, 15_000)]
    reset_at = len(times) // 2 + 3

    def counter(step: float) -> list[tuple[int, float]]:
        value, out = 0.0, []
        for i, t in enumerate(times):
            value = rng.random() * step if i == reset_at else value + round(rng.random() * step, 3)
            out.append((t, value))
        return out

    lines = ["# HELP imp_requests Requests served.\n", "# TYPE imp_requests counter\n"]
    series = []
    s = SyntheticSeries("imp_requests_total", (("code", "200"), ("path", ODD)), "counter", counter(40.0))
    lines += [f"imp_requests_total{_labels_text(s.labels)} {v!r} {_stamp(t)}\n" for t, v in s.points]
    series.append(s)
    # one with its `_created` beside it at every time (prometheus_client's parser keeps only the first)
    s = SyntheticSeries("imp_requests_total", (("code", "500"), ("path", "/")), "counter", counter(2.0))
    created = SyntheticSeries("imp_requests_created", s.labels, "counter", [(t, start_ms / 1000) for t in times])
    for (t, v), (_, c) in zip(s.points, created.points, strict=True):
        lines += [f"imp_requests_total{_labels_text(s.labels)} {v!r} {_stamp(t)}\n",
                  f"imp_requests_created{_labels_text(s.labels)} {c!r} {_stamp(t)}\n"]
    series += [s, created]
    # a summary: its quantiles are gauges, its sum and count counters
    quantiles: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[int, float]]] = {}
    lines.append("# TYPE imp_rpc_seconds summary\n")
    count, total = 0, 0.0
    for t in times:
        count += rng.randint(1, 9)
        total = round(total + rng.random() * 3, 3)
        rows: list[tuple[str, tuple[tuple[str, str], ...], float]] = [
            ("imp_rpc_seconds", (("quantile", "0.5"),), round(rng.random(), 3)),
            ("imp_rpc_seconds", (("quantile", "0.9"),), round(1 + rng.random(), 3)),
            ("imp_rpc_seconds_sum", (), total), ("imp_rpc_seconds_count", (), float(count))]
        for name, labels, v in rows:
            quantiles.setdefault((name, labels), []).append((t, v))
            lines.append(f"{name}{_labels_text(labels)} {v!r} {_stamp(t)}\n")
    series += [SyntheticSeries(name, labels, "counter" if name != "imp_rpc_seconds" else "gauge", points)
               for (name, labels), points in quantiles.items()]
    # a gauge whose own `instance` label moves to exported_instance under --label instance=…
    gauge_labels = (("instance", "rack-1"), ("sensor", "a"))
    value, points = 20.0, []
    for t in times:
        value = round(value + rng.gauss(0, 2), 2)
        points.append((t, value))
    series.append(SyntheticSeries("imp_temperature_celsius", gauge_labels, "gauge", points))
    lines += ["# TYPE imp_temperature_celsius gauge\n", "# UNIT imp_temperature_celsius celsius\n"]
    lines += [f"imp_temperature_celsius{_labels_text(gauge_labels)} {v!r} {_stamp(t)}\n" for t, v in points]
    # a histogram: cumulative integer buckets, a sum and a count, reset once
    bounds = ("0.1", "1.0", "+Inf")
    hist: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[int, float]]] = {}
    counts, total = [0, 0, 0], 0.0
    lines += ["# HELP imp_latency_seconds Latency.\n", "# TYPE imp_latency_seconds histogram\n"]
    for i, t in enumerate(times):
        if i == reset_at:
            counts, total = [0, 0, 0], 0.0
        fast, slow, slower = rng.randint(0, 5), rng.randint(0, 3), rng.randint(0, 1)
        counts = [counts[0] + fast, counts[1] + fast + slow, counts[2] + fast + slow + slower]
        total = round(total + fast * 0.05 + slow * 0.5 + slower * 2.5, 3)
        for le, count in zip(bounds, counts, strict=True):
            labels = (("handler", "/api"), ("le", le))
            hist.setdefault(("imp_latency_seconds_bucket", labels), []).append((t, float(count)))
            lines.append(f"imp_latency_seconds_bucket{_labels_text(labels)} {count} {_stamp(t)}\n")
        for name, v in (("imp_latency_seconds_sum", total), ("imp_latency_seconds_count", float(counts[2]))):
            hist.setdefault((name, (("handler", "/api"),)), []).append((t, v))
            lines.append(f'{name}{{handler="/api"}} {v!r} {_stamp(t)}\n')
    series += [SyntheticSeries(name, labels, "counter", points) for (name, labels), points in hist.items()]
    lines.append("# EOF\n")
    return History(lines, series, start_ms, end_ms)


def gauge_lines(start_ms: int, count: int, name: str = "imp_big_gauge") -> list[str]:
    return [f"# TYPE {name} gauge\n"] + [f"{name} {i * 0.5!r} {_stamp(start_ms + i * 15_000)}\n" for i in range(count)]


def with_cli_labels(labels: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """A file's labels once --label job=… --label instance=… are added (honor_labels: false)."""
    out = dict(labels)
    if "instance" in out:
        out["exported_instance"] = out.pop("instance")
    out.update(LABELS)
    return tuple(sorted(out.items()))


def query(engine: sa.Engine, sql: str, **params: Any) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(sql), params))


def series_rows(engine: sa.Engine, name: str, labels: tuple[tuple[str, str], ...], t_from_ms: int, t_to_ms: int,
                step: str) -> list[sa.Row[Any]]:
    return query(engine, "SELECT * FROM perfwatch.series(:m, CAST(:matchers AS jsonb), :f, :t, "
                 "CAST(:step AS interval))", m=name, matchers=json.dumps(dict(labels)), f=at(t_from_ms),
                 t=at(t_to_ms), step=step)


def raw_points(engine: sa.Engine, name: str, labels: tuple[tuple[str, str], ...], t_from_ms: int,
               t_to_ms: int) -> list[tuple[int, float]]:
    """The series' raw samples, through the read function: a 1 ms step gives one row per sample."""
    rows = series_rows(engine, name, labels, t_from_ms, t_to_ms, "1 millisecond")
    assert all(r.samples == 1 for r in rows)
    return [(ms(r.time), r.last) for r in rows]


def count_points(engine: sa.Engine, name: str, t_from_ms: int, t_to_ms: int) -> int:
    return int(query(engine, "SELECT count(*) FROM perfwatch.series(:m, '{}', :f, :t, '1 millisecond')",
                     m=name, f=at(t_from_ms), t=at(t_to_ms))[0][0])


def stored(engine: sa.Engine, data: History, labels_of: Any = with_cli_labels) -> set[Any]:
    out = set()
    for s in data.series:
        for t, v in raw_points(engine, s.name, labels_of(s.labels), data.start_ms - 3600_000, data.end_ms + 3600_000):
            out.add((s.name, s.labels, v, t))
    return out


@dataclasses.dataclass
class Imported:
    engine: sa.Engine
    data: History
    first: subprocess.CompletedProcess[str]
    again: subprocess.CompletedProcess[str]
    answers_before_again: dict[str, Any]
    file: Path


def answers(engine: sa.Engine, data: History) -> dict[str, Any]:
    """Everything the read function says about the imported period, at every level."""
    out = {}
    for s in data.series:
        for step in ("1 millisecond", "300 seconds", "3600 seconds"):
            out[f"{s.name}{s.labels}{step}"] = [tuple(r) for r in series_rows(
                engine, s.name, with_cli_labels(s.labels), floor_ms(data.start_ms, 3600_000), data.end_ms, step)]
    return out


@pytest.fixture(scope="module")
def imported(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Imported]:
    """An archive that has rolled up to now (a sample before the file's period and one of a minute
    ago), then the file imported, then imported again."""
    now_ms = ms(dt.datetime.now(dt.UTC))
    # Ends on the hour, an hour or so ago: both tiers have rolled past it when the import runs.
    data = history(floor_ms(now_ms - 120_000, 3600_000))
    before = SyntheticSeries("imp_up", (("job", "live"),), "gauge", [(data.start_ms - 1800_000, 1.0),
                                                                       (now_ms - 90_000, 1.0)])
    file = tmp_path_factory.mktemp("import") / "history.om"
    file.write_text(data.text)
    with postgres_server.fresh_database() as dsn:
        engine = stored_archive(dsn, POLICY, [before])
        runs = run_rollups(engine, POLICY)
        assert all(r.watermark_after is not None and ms(r.watermark_after) >= data.end_ms for r in runs)
        labels = [f"--label={k}={v}" for k, v in LABELS]
        first = run_import(dsn, *labels, str(file))
        assert first.returncode == 0, first.stderr
        snapshot = answers(engine, data)
        again = run_import(dsn, *labels, str(file))
        yield Imported(engine, data, first, again, snapshot, file)
        engine.dispose()


def test_every_sample_of_the_file_is_stored_exactly(imported: Imported) -> None:
    data = imported.data
    assert len(data.series) == 13 and len(data.samples()) > 12_000
    assert stored(imported.engine, data) == data.samples()
    # the labels as the file has them, escapes undone, with --label's job and instance added
    labels = query(imported.engine, "SELECT DISTINCT labels FROM perfwatch.series(:m, '{}', :f, :t, '1 millisecond')",
                   m="imp_requests_total", f=at(data.start_ms - 3600_000), t=at(data.end_ms))
    assert {json.dumps(r.labels, sort_keys=True) for r in labels} == {
        json.dumps(dict(with_cli_labels(s.labels)), sort_keys=True) for s in data.series
        if s.name == "imp_requests_total"}
    assert dict(with_cli_labels(data.series[0].labels))["path"] == ODD


def test_the_import_says_what_it_wrote(imported: Imported) -> None:
    out = imported.first.stdout
    n = len(imported.data.samples())
    assert f"imported {imported.file}: {n} samples written, 0 skipped as already stored, 0 dropped;" in out, out
    assert f"{n} samples in {len(imported.data.lines)} lines read" in out
    start = at(min(t for s in imported.data.series for t, _ in s.points))
    assert f"{start:%Y-%m-%d %H:%M:%S}.{start.microsecond // 1000:03d}Z to " in out
    # every sample was late (both tiers had rolled past it): the rollup pass redid the period
    again = {m[1]: int(m[2]) for m in re.finditer(r"tier (\w+): \d+ buckets in \d+ chunks, (\d+) again", out)}
    assert set(again) == {"5m", "1h"}, out
    assert again["5m"] >= 4 * 12 * len(imported.data.series) and again["1h"] >= 4 * len(imported.data.series), out


def test_the_imported_period_is_rolled_up_and_agrees_with_raw(imported: Imported) -> None:
    engine, data = imported.engine, imported.data
    t_from, t_to = floor_ms(data.start_ms, 3600_000), data.end_ms
    for step_s, tier in ((300, "5m"), (3600, "1h")):
        plan = query(engine, "SELECT * FROM perfwatch.plan_tiers(:f, :t, CAST(:s AS interval))",
                     f=at(t_from), t=at(t_to), s=f"{step_s} seconds")
        assert [(p.tier, ms(p.lo) <= t_from, ms(p.hi) >= t_to) for p in plan] == [(tier, True, True)], plan
        for s in data.series:
            rows = series_rows(engine, s.name, with_cli_labels(s.labels), t_from, t_to, f"{step_s} seconds")
            expected = step_stats(s.points, t_from, t_to, step_s * 1000)
            assert [ms(r.time) for r in rows] == sorted(expected), (s.name, step_s)
            for r in rows:
                want = expected[ms(r.time)]
                assert r.samples == want.count and close(r.avg, want.avg), (s.name, step_s, r.time)
                assert close(r.min, want.min) and close(r.max, want.max) and close(r.last, want.last)
                if s.kind == "counter":
                    assert close(r.increase, want.increase) and r.resets == want.resets, (s.name, step_s, r.time)
                else:
                    assert r.increase is None
    # the counters' resets reached the tiers
    first = data.series[0]
    rows = series_rows(engine, first.name, with_cli_labels(first.labels), t_from, t_to, "3600 seconds")
    assert sum(r.resets for r in rows) == 1


def test_importing_the_same_file_again_writes_nothing_and_answers_the_same(imported: Imported) -> None:
    again = imported.again
    assert again.returncode == 0, again.stderr
    n = len(imported.data.samples())
    assert f"0 samples written, {n} skipped as already stored, 0 dropped" in again.stdout, again.stdout
    assert ", 0 again for late samples" in again.stdout
    assert answers(imported.engine, imported.data) == imported.answers_before_again


def test_promtool_reads_the_same_file_into_the_same_samples(imported: Imported, tmp_path: Path) -> None:
    """The input is promtool's: its blocks hold the samples the archive holds."""
    made = promtool("tsdb", "create-blocks-from", "openmetrics", str(imported.file), str(tmp_path / "tsdb"))
    assert made.returncode == 0, made.stderr
    (tmp_path / "tsdb" / "wal").mkdir()  # dump reads a head too
    dump = promtool("tsdb", "dump", str(tmp_path / "tsdb"))
    assert dump.returncode == 0, dump.stderr
    got = set()
    for line in dump.stdout.splitlines():
        labels_text, value, ts = re.fullmatch(r"\{(.*)\} (\S+) (-?\d+)", line).groups()  # type: ignore[union-attr]
        labels = {k: re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m[1], m[1]), v)
                  for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels_text)}
        name = labels.pop("__name__")
        got.add((name, tuple(sorted(labels.items())), float(value), int(ts)))
    assert got == imported.data.samples() == stored(imported.engine, imported.data)


@pytest.mark.parametrize(("case", "line", "words"), [
    ("bad line", 20_002, "imp_big_gauge{oops"),
    ("no timestamp", 20_002, "no timestamp"),
    ("no EOF", 25_002, "# EOF"),
    ("cut short", 25_001, "without a newline"),
    ("blank line", 20_002, "blank line"),
])
def test_malformed_input_exits_1_naming_the_line_and_writes_only_what_came_before(
        pg_dsn: str, tmp_path: Path, case: str, line: int, words: str) -> None:
    start_ms = floor_ms(ms(dt.datetime.now(dt.UTC)), 3600_000) - 110 * 3600_000
    lines = [*gauge_lines(start_ms, 25_000), "# EOF\n"]  # 25,000 samples at 15 s: more than one batch
    if case == "bad line":
        lines[20_001] = "imp_big_gauge{oops 1 2\n"
    elif case == "no timestamp":
        lines[20_001] = "imp_big_gauge 1\n"
    elif case == "blank line":
        lines[20_001] = "\n"
    elif case == "no EOF":
        lines.pop()
    elif case == "cut short":
        lines = lines[:25_001]
        lines[-1] = lines[-1][:-5]
    file = tmp_path / "bad.om"
    file.write_text("".join(lines))
    result = run_import(pg_dsn, str(file))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"{file}: line {line}: " in result.stderr and words in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    # every sample before the bad line is stored, none after it
    engine = db.make_engine(pg_dsn)
    try:
        points = raw_points(engine, "imp_big_gauge", (), start_ms - 1, start_ms + 26_000 * 15_000)
    finally:
        engine.dispose()
    before = min(line - 2, 25_000)  # the samples on the lines before it (line 1 is the TYPE)
    assert points == [(start_ms + i * 15_000, i * 0.5) for i in range(before)]
    assert f"stopped importing {file}: {before} samples written" in result.stdout, result.stdout


def test_standard_input_is_read_as_a_stream(pg_dsn: str) -> None:
    """`import -`: the samples of the first batches are in the archive before the input has ended."""
    start_ms = floor_ms(ms(dt.datetime.now(dt.UTC)), 3600_000) - 110 * 3600_000
    lines = gauge_lines(start_ms, 25_000)
    engine = db.make_engine(pg_dsn)
    apply_migrations(engine)
    proc = subprocess.Popen([sys.executable, "-m", "perfwatch.archiver", "import", "--dsn", pg_dsn, "--no-rollup",
                             "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)
    try:
        assert proc.stdin is not None
        proc.stdin.write("".join(lines[:22_000]))
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while count_points(engine, "imp_big_gauge", start_ms, start_ms + 26_000 * 15_000) < 20_000:
            assert proc.poll() is None and time.monotonic() < deadline, "the first batch never arrived"
            time.sleep(0.2)
        proc.stdin.write("".join(lines[22_000:]) + "# EOF\n")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "imported standard input: 25000 samples written" in out and "not rolled up (--no-rollup)" in out, out
    assert count_points(engine, "imp_big_gauge", start_ms, start_ms + 26_000 * 15_000) == 25_000
    engine.dispose()


@pytest.mark.parametrize(("label", "words"), [
    ("job", "not NAME=VALUE"),
    ("bad-name=x", "not a valid label name"),
    ("__name__=x", "not a valid label name"),
    ("job=", "empty"),
])
def test_a_bad_label_is_a_usage_error(tmp_path: Path, label: str, words: str) -> None:
    file = tmp_path / "x.om"
    file.write_text("# EOF\n")
    result = run_import("postgresql://u:p@127.0.0.1:1/x", "--label", label, str(file))
    assert result.returncode == 2 and "config error: --label" in result.stderr and words in result.stderr, \
        result.stderr
    twice = run_import("postgresql://u:p@127.0.0.1:1/x", "--label", "job=a", "--label", "job=b", str(file))
    assert twice.returncode == 2 and "job is given twice" in twice.stderr


def test_an_unreadable_file_or_an_unreachable_database_exits_1(tmp_path: Path) -> None:
    missing = run_import("postgresql://u:p@127.0.0.1:1/x", str(tmp_path / "nope.om"))
    assert missing.returncode == 1 and f"cannot read {tmp_path / 'nope.om'}: No such file" in missing.stderr
    file = tmp_path / "x.om"
    file.write_text("# EOF\n")
    down = run_import("postgresql://u:p@127.0.0.1:1/x", str(file))
    assert down.returncode == 1 and "database unreachable" in down.stderr and "127.0.0.1" in down.stderr, down.stderr
    assert "Traceback" not in down.stderr
