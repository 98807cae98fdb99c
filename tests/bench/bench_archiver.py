"""What the archiver costs on its way to PostgreSQL, and how much one archiver keeps up with.

    .venv/bin/python tests/bench/bench_archiver.py [stages] [--batches 300] [--segment-mib 8]
    .venv/bin/python tests/bench/bench_archiver.py cpu [--path scrape remote_write] [--targets 40]
                                                   [--series 1000] [--interval 5] [--workers 0 2]
                                                   [--seconds 60] [--prometheus]
    .venv/bin/python tests/bench/bench_archiver.py ramp [--path scrape remote_write] [--targets 40]
                                                   [--series 1000] [--interval 5] [--workers 0 2]
                                                   [--seconds 60] [--bisect 1]

**stages**: one real exposition (a perfwatch-exporter process with its default collectors, fetched
once) is turned into `--batches` batches, each with its own timestamp, and sent down the
archiver's path batch by batch, every stage timed separately:

* parse:   archiver.scrape.parse_exposition (the parser scrape.py uses, labels, kinds);
* append:  Spool.append — JSON line, write, flush, fsync (the write-ahead step);
* replay:  Spool.peek + Spool.commit from the spool's memory queue (the batch just appended);
* replay from disk: the same with `memory_bytes=0` — read the line back, decode the JSON, move the
  head (what a restart with a backlog, or a backlog past spool.memory_bytes, costs);
* worker return: what the archiver's process pays for a batch a scrape worker parsed (unpickle the
  packed batch, rebuild it: workers.unpack);
* store:   Store.write — the peer: COPY into PostgreSQL, one transaction per batch.

**cpu**: a real archiver process (`python -m perfwatch.archiver`, spool in a temporary directory)
scrapes `--targets` synthetic targets of `--series` samples each every `--interval` seconds, once
for each `--workers` value, writing to an embedded PostgreSQL of the bench's own (a fresh database
each time). The targets are served by one process of the bench's (asyncio, bodies built once; only
a scrape-number line changes). After a warm-up (every target's series created and written), for
`--seconds`: CPU from /proc of the archiver (its process, the scrape workers and any child it
reaped) and of PostgreSQL (postmaster, backends, reaped ones), in ms per 1,000 samples written.
With `--prometheus`, Prometheus (Debian's `prometheus`, when installed) then scrapes the same
targets for as long, alone, and its CPU per 1,000 samples served is printed beside.

**ramp**: the highest rate one archiver keeps up with, per `--workers` value: `--targets` targets
of `--series` samples, scraped every `--interval` s at first, the interval halved (the offered
rate doubled) until a point fails, then `--bisect` times the rate midway between the best pass and
the first failure. The rate is ramped by the interval, not by adding targets, so that one database
serves the whole ramp and its series are created once, at the first point: a point with new
series measures how fast the store creates series (160,000 took minutes), not how fast the
archiver keeps up. A point passes ("keeps up") when the written rate is ≥ 98 % of the offered rate
(targets x samples / interval), the spool did not grow over the window, and no scrape was skipped
or failed.

**--path** (cpu, ramp; default `scrape`): how the samples reach the archiver; each path given is
measured in turn in the same run, on the same embedded PostgreSQL, with the same series (the
synthetic targets' names, labels and values, `job` and `instance` included), and printed in one
table with a column for the path:

* scrape:       the archiver scrapes the targets, as above, once per `--workers` value;
* remote_write: the archiver scrapes nothing and has `receive.remote_write: true`; a sender, a
  process of the bench's own, POSTs to its /api/v1/write what the targets hold, as Prometheus'
  remote_write would: for each target, every interval (the targets spread over it), its series
  in WriteRequests of at most 2,000 samples (Prometheus' default max_samples_per_send since 2.44,
  prometheus#12203; Debian's 2.42 sends 500), one sample per series with the send's timestamp,
  snappy-compressed, with Remote-Write 1.0's headers, on 8 keep-alive connections (Prometheus'
  shards), and each target's metadata at the start and every minute. The bodies are built once
  (perfwatch.archiver.prompb); a send only splices in its timestamp and scrape number, and
  compresses. `scrape.workers` does not apply (workers "-"): it runs once. The samples written
  are those of job "remote_write"; `skipped` counts the sends that started more than an interval
  late (all connections waiting on the archiver), `failed` the answers not 2xx (503: the archiver
  asks for a retry; the bench does not retry) and connection errors. The note says what the
  sender sent, its CPU, how long the archiver took to answer, and "SENDER BEHIND" where the
  sender itself could not keep the offered rate (its schedule late, or its core full): the point
  then measures the sender, not the archiver. In ramp, each path has a database of its own,
  shared by its points.

Printed: which parser scrape.py uses, the machine's CPUs and load (at the start and at the end),
and one table per mode; `wrk ms` is the part of `cpu ms/1k` spent in the scrape workers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import pickle
import statistics
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import cramjam
import psycopg
import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support.exposition import samples as exposed_samples  # noqa: E402
from support.procs import Service, free_port, python_module  # noqa: E402

from perfwatch.archiver import prompb  # noqa: E402
from perfwatch.archiver.db import make_engine  # noqa: E402
from perfwatch.archiver.embedded import EmbeddedPostgres  # noqa: E402
from perfwatch.archiver.migrate import apply_migrations  # noqa: E402
from perfwatch.archiver.policy import Policy, mirror_policy  # noqa: E402
from perfwatch.archiver.receive import JOB as REMOTE_WRITE_JOB  # noqa: E402
from perfwatch.archiver.receive import WRITE_PATH  # noqa: E402
from perfwatch.archiver.scrape import parse_exposition  # noqa: E402
from perfwatch.archiver.spool import Spool  # noqa: E402
from perfwatch.archiver.store import Store  # noqa: E402
from perfwatch.archiver.workers import pack, unpack  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
KEEP_UP = 0.98  # written / offered at least this, for a point to pass
WARM_UP_S = 180  # longest wait for an archiver to have written its first scrapes' backlog
MIN_INTERVAL = 0.1  # seconds: the ramp stops halving the interval here
PATHS = ("scrape", "remote_write")
MAX_SAMPLES_PER_SEND = 2000  # remote_write: samples per request at most (Prometheus' max_samples_per_send)
SENDER_CONNECTIONS = 8  # remote_write: keep-alive connections sending at once (Prometheus' shards)
METADATA_INTERVAL_S = 60  # remote_write: metadata sent this often (Prometheus' metadata_config.send_interval)


def parser_in_use() -> str:
    scrape_py = (REPO / "perfwatch" / "archiver" / "scrape.py").read_text()
    if (REPO / "perfwatch" / "archiver" / "parse.py").exists() and "archiver.parse" in scrape_py:
        return "perfwatch.archiver.parse (the fast parser)"
    return "prometheus_client.parser (pure Python; perfwatch/archiver/parse.py " + (
        "exists but scrape.py does not use it)" if (REPO / "perfwatch" / "archiver" / "parse.py").exists()
        else "not there)")


def machine() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


# -- stages ---------------------------------------------------------------------------------------


def fetch_exposition(workdir: Path) -> str:
    port = free_port()
    exporter = Service(python_module("perfwatch.exporter", "--listen", f"127.0.0.1:{port}"), workdir / "exporter.log",
                       ready_url=f"http://127.0.0.1:{port}/-/ready").start()
    try:
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30)  # perf deltas need a first scrape
        return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    finally:
        exporter.stop()


def stages(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="perfwatch-bench-archiver-") as tmp:
        workdir = Path(tmp)
        text = fetch_exposition(workdir)
        pg = EmbeddedPostgres(workdir / "pg")
        engine = make_engine(pg.start())
        try:
            apply_migrations(engine)
            mirror_policy(engine, Policy())
            store = Store(engine)
            spool = Spool(workdir / "spool", max_bytes=1 << 34, segment_bytes=args.segment_mib << 20)
            disk = Spool(workdir / "spool-disk", max_bytes=1 << 34, segment_bytes=args.segment_mib << 20,
                         memory_bytes=0)
            labels = {"job": "perfwatch", "instance": "127.0.0.1:10280"}
            start_ms = int(time.time() * 1000) - args.batches * 15_000
            timings: dict[str, list[float]] = {"parse": [], "append": [], "replay": [], "replay from disk": [],
                                               "worker return": [], "store": []}
            samples = 0
            for i in range(args.batches):
                t0 = time.perf_counter()
                batch = parse_exposition(text, labels, start_ms + i * 15_000)
                t1 = time.perf_counter()
                spool.append(batch)
                t2 = time.perf_counter()
                entry = spool.peek()
                assert entry is not None and entry.batch.scraped_at_ms == batch.scraped_at_ms
                t3 = time.perf_counter()
                store.write(entry.batch)
                t4 = time.perf_counter()
                spool.commit(entry)
                t5 = time.perf_counter()
                disk.append(batch)
                t6 = time.perf_counter()
                on_disk = disk.peek()
                assert on_disk is not None
                disk.commit(on_disk)
                t7 = time.perf_counter()
                assert on_disk.batch == batch
                packed = pickle.dumps(pack(batch), protocol=pickle.HIGHEST_PROTOCOL)
                t8 = time.perf_counter()
                unpack(pickle.loads(packed))
                t9 = time.perf_counter()
                timings["parse"].append(t1 - t0)
                timings["append"].append(t2 - t1)
                timings["replay"].append((t3 - t2) + (t5 - t4))
                timings["store"].append(t4 - t3)
                timings["replay from disk"].append(t7 - t6)
                timings["worker return"].append(t9 - t8)
                samples = len(batch.samples)
            spool.close()
            disk.close()
        finally:
            engine.dispose()
            pg.stop()

    medians = {stage: statistics.median(values) for stage, values in timings.items()}
    print(f"parser: {parser_in_use()}; {machine()}")
    print(f"exposition: {len(text)} bytes, {samples} samples per batch, {args.batches} batches "
          f"(spool line {len(batch.to_json().encode()) / 1024:.1f} KiB)")
    print(f"{'stage':<17} {'median ms/batch':>16} {'samples/s':>12}")
    for stage, median in medians.items():
        print(f"{stage:<17} {median * 1000:>16.3f} {samples / median:>12,.0f}")
    own = medians["parse"] + medians["append"] + medians["replay"]
    whole = own + medians["store"]
    print(f"archiver's own work (parse + append + replay): {own * 1000:.3f} ms/batch")
    print(f"whole path: {whole * 1000:.3f} ms/batch, {samples / whole:,.0f} samples/s")
    print(f"ratio own work / store write: {own / medians['store']:.2f}")
    spool_cost = medians["append"] + medians["replay"]
    print(f"ratio spool (append + replay) / store write: {spool_cost / medians['store']:.2f}")
    in_process = medians["append"] + medians["replay"] + medians["store"]
    print(f"archiver process with workers (worker return + append + replay + store): "
          f"{(in_process + medians['worker return']) * 1000:.3f} ms/batch, "
          f"{samples / (in_process + medians['worker return']):,.0f} samples/s on its core")
    return 0


# -- synthetic targets (a process of their own) ------------------------------------------------


def target_body(series: int) -> tuple[bytes, bytes]:
    """A host-like exposition of `series` samples (+1, the scrape number that goes between the two
    halves): families of 20 series with two labels, counters with decimals, gauges, a histogram."""
    lines: list[str] = []
    count = 0
    family = 0
    while count < series:
        kind = ("counter", "gauge", "histogram")[family % 3]
        name = f"bench_family_{family}" + ("_seconds_total" if kind == "counter" else "_bytes" if kind == "gauge"
                                           else "_duration_seconds")
        lines += [f"# HELP {name} Synthetic family {family} for the archiver bench.", f"# TYPE {name} {kind}"]
        if kind == "histogram":
            for device in range(min(2, max(1, (series - count) // 7))):
                for le in ("0.005", "0.05", "0.5", "5", "+Inf"):
                    lines.append(f'{name}_bucket{{device="sd{device}",le="{le}"}} {count * 3 + device}')
                lines.append(f'{name}_sum{{device="sd{device}"}} {count * 0.37:.3f}')
                lines.append(f'{name}_count{{device="sd{device}"}} {count * 3 + device}')
                count += 7
        else:
            for i in range(min(20, series - count)):
                value = f"{(family * 7919 + i * 104729) % 10_000_000 / 100:.2f}" if kind == "counter" \
                    else f"{((family + 1) * (i + 3) * 4096) % 2**34}"
                lines.append(f'{name}{{cpu="{i % 8}",mode="mode{i // 8}"}} {value}')
                count += 1
        family += 1
    head = "\n".join(lines) + "\n# TYPE bench_scrape_number gauge\nbench_scrape_number "
    return head.encode(), b"\n"


def samples_in(series: int) -> int:
    head, _ = target_body(series)  # its last line is the scrape number's, its value still to come
    return sum(1 for line in head.decode().splitlines() if line and not line.startswith("#"))


async def _serve_targets(port: int, series: int) -> None:
    head, tail = target_body(series)
    served: dict[str, int] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                path = request.split(b" ", 2)[1].decode()
                if path == "/stats":
                    body = json.dumps(served).encode()
                else:
                    n = served.get(path, 0)
                    served[path] = n + 1
                    body = head + str(n).encode() + tail
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


class Targets:
    """The synthetic targets: `/t/<i>` on one port, served by a child process."""

    def __init__(self, workdir: Path, series: int) -> None:
        self.port = free_port()
        self.series = series
        self.per_scrape = samples_in(series)
        self.service = Service([sys.executable, __file__, "serve", "--port", str(self.port), "--series", str(series)],
                               workdir / "targets.log", ready_url=f"http://127.0.0.1:{self.port}/stats")

    def __enter__(self) -> Targets:
        self.service.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.stop()

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.port}/t/{i}"

    def served(self) -> int:
        """Samples served so far, all targets together."""
        counts: dict[str, int] = requests.get(f"http://127.0.0.1:{self.port}/stats", timeout=10).json()
        return sum(counts.values()) * self.per_scrape

    @property
    def pid(self) -> int:
        assert self.service.proc is not None
        return self.service.proc.pid


# -- a remote_write sender (a process of its own) ------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# Placeholders in the serialized WriteRequests, replaced at each send: every sample's timestamp
# (a 6-byte varint, as every millisecond timestamp from 1971 to 2109 is), and the scrape number's
# value (a double, 8 bytes) — so a body is built once, and a send only splices in its bytes.
_TS_PLACEHOLDER = 1_111_111_111_111
_TS_FIELD = b"\x10"  # Sample.timestamp: field 2, varint
_NUMBER_PLACEHOLDER = 987_654_321.123_456_7
_VALUE_FIELD = b"\x09"  # Sample.value: field 1, 64-bit


@dataclasses.dataclass(frozen=True)
class WriteBody:
    """One WriteRequest of a target's series, serialized with placeholders (see above)."""

    raw: bytes
    samples: int
    number: bool  # holds the scrape-number sample

    def build(self, timestamp_ms: int, number: int) -> bytes:
        """The compressed body, sent with `timestamp_ms` on every sample."""
        stamp = _varint(timestamp_ms)
        assert len(stamp) == len(_varint(_TS_PLACEHOLDER)), "a timestamp outside 1971-2109"
        raw = self.raw.replace(_TS_FIELD + _varint(_TS_PLACEHOLDER), _TS_FIELD + stamp)
        if self.number:
            raw = raw.replace(_VALUE_FIELD + struct.pack("<d", _NUMBER_PLACEHOLDER),
                              _VALUE_FIELD + struct.pack("<d", float(number)))
        return bytes(cramjam.snappy.compress_raw(raw))


def write_bodies(series: int, instance: str) -> list[WriteBody]:
    """What a target's scrape holds, as Prometheus would remote-write it: the synthetic target's
    samples (the same names, labels and values, parsed by the archiver's own parser), with the
    target's `job` and `instance`, in WriteRequests of at most MAX_SAMPLES_PER_SEND samples."""
    head, tail = target_body(series)
    text = (head + b"0" + tail).decode()
    samples = parse_exposition(text, {"job": "bench", "instance": instance}, 0).samples
    bodies = []
    for start in range(0, len(samples), MAX_SAMPLES_PER_SEND):
        request = prompb.WriteRequest()
        number = False
        for s in samples[start:start + MAX_SAMPLES_PER_SEND]:
            series_message = request.timeseries.add()
            series_message.labels.add(name="__name__", value=s.name)  # sorted: "__name__" first
            for key, value in s.labels:
                series_message.labels.add(name=key, value=value)
            is_number = s.name == "bench_scrape_number"
            number = number or is_number
            series_message.samples.add(value=_NUMBER_PLACEHOLDER if is_number else s.value,
                                       timestamp=_TS_PLACEHOLDER)
        raw = request.SerializeToString()
        count = len(request.timeseries)
        # The placeholders must be found where they stand and nowhere else (not inside a value).
        assert raw.count(_TS_FIELD + _varint(_TS_PLACEHOLDER)) == count
        assert raw.count(_VALUE_FIELD + struct.pack("<d", _NUMBER_PLACEHOLDER)) == int(number)
        bodies.append(WriteBody(raw, count, number))
    check = prompb.WriteRequest.FromString(bytes(cramjam.snappy.decompress_raw(bodies[-1].build(1_700_000_000_123, 7))))
    assert {s.timestamp for ts in check.timeseries for s in ts.samples} == {1_700_000_000_123}
    return bodies


def metadata_body(series: int) -> bytes:
    """The synthetic target's families (TYPE, HELP) as a metadata-only WriteRequest, compressed."""
    head, _ = target_body(series)
    families: dict[str, list[str]] = {}
    for line in head.decode().splitlines():
        if line.startswith(("# TYPE ", "# HELP ")):
            _, what, name, rest = line.split(" ", 3)
            families.setdefault(name, ["unknown", ""])[0 if what == "TYPE" else 1] = rest
    types = {name: number for number, name in prompb.METRIC_TYPES.items()}
    request = prompb.WriteRequest()
    for name, (kind, help_text) in families.items():
        request.metadata.add(type=types[kind], metric_family_name=name, help=help_text)
    return bytes(cramjam.snappy.compress_raw(request.SerializeToString()))


class _Connection:
    """One keep-alive HTTP/1.1 connection to the archiver, opened again after an error."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> int:
        """POST `body` as a remote_write request; the answer's status (its body read and dropped)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                              "User-Agent: perfwatch-bench-archiver\r\nContent-Encoding: snappy\r\n"
                              "Content-Type: application/x-protobuf\r\nX-Prometheus-Remote-Write-Version: 0.1.0\r\n"
                              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            await self.writer.drain()
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(head[0].split(" ", 2)[1])
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
            await self.reader.readexactly(int(headers.get("content-length", "0")))
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def _send_remote_write(url: str, port: int, targets: int, series: int, interval: float) -> None:
    """Every `interval`, for each of `targets` targets (spread over the interval), its WriteRequests
    into a queue that SENDER_CONNECTIONS keep-alive connections take from; a metadata request per
    target at the start and every METADATA_INTERVAL_S, as Prometheus sends. GET /stats on `port`
    says what was due, sent and answered. A request that is not answered 2xx is counted, not retried."""
    split = urlsplit(url)
    host, archiver_port = split.hostname or "127.0.0.1", split.port or 80
    bodies = [write_bodies(series, f"t{i}") for i in range(targets)]
    metadata = metadata_body(series)
    stats: dict[str, Any] = {"due": 0, "started": 0, "answered": 0, "samples_due": 0, "samples_ok": 0, "late": 0,
                             "errors": 0, "codes": {}, "loop_lag_max_s": 0.0, "queued_max_s": 0.0,
                             "answer_s": 0.0, "first_error": ""}
    queue: asyncio.Queue[tuple[float, WriteBody | None, int, int]] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    async def connection() -> None:
        conn = _Connection(host, archiver_port, split.path or WRITE_PATH)
        while True:
            due, body, timestamp_ms, number = await queue.get()
            started = loop.time()
            body_bytes = metadata if body is None else body.build(timestamp_ms, number)
            if body is not None:
                stats["started"] += 1
                stats["queued_max_s"] = max(stats["queued_max_s"], started - due)
                if started - due > interval:
                    stats["late"] += 1
            try:
                status = await conn.post(body_bytes)
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as err:
                stats["errors"] += 1
                stats["first_error"] = stats["first_error"] or repr(err)
                await asyncio.sleep(0.1)
                continue
            stats["codes"][str(status)] = stats["codes"].get(str(status), 0) + 1
            if body is not None:
                stats["answered"] += 1
                stats["answer_s"] += loop.time() - started
                if 200 <= status < 300:
                    stats["samples_ok"] += body.samples

    async def schedule() -> None:
        start, wall = loop.time() + 0.2, time.time() + 0.2
        next_metadata = start
        for k in itertools.count():
            for i in range(targets):
                offset = (k + i / targets) * interval
                await asyncio.sleep(max(0.0, start + offset - loop.time()))
                now = loop.time()
                stats["loop_lag_max_s"] = max(stats["loop_lag_max_s"], now - (start + offset))
                if now >= next_metadata:
                    next_metadata += METADATA_INTERVAL_S
                    for _ in range(targets):
                        queue.put_nowait((now, None, 0, 0))
                for body in bodies[i]:
                    stats["due"] += 1
                    stats["samples_due"] += body.samples
                    queue.put_nowait((start + offset, body, round((wall + offset) * 1000), k))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                body = json.dumps({**stats, "queued": queue.qsize()}).encode()
                if request.split(b" ", 2)[1] == b"/stats/window":
                    stats["loop_lag_max_s"] = stats["queued_max_s"] = 0.0
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    tasks = [asyncio.create_task(connection()) for _ in range(SENDER_CONNECTIONS)]
    tasks.append(asyncio.create_task(schedule()))
    print("ready", flush=True)
    async with server:
        await asyncio.gather(server.serve_forever(), *tasks)


class Sender:
    """The remote_write sender for one point: a child process, its counters at /stats."""

    def __init__(self, workdir: Path, url: str, targets: int, series: int, interval: float) -> None:
        self.port = free_port()
        self.service = Service([sys.executable, __file__, "send", "--port", str(self.port), "--url", url,
                                "--targets", str(targets), "--series", str(series), "--interval", repr(interval)],
                               workdir / f"sender-{self.port}.log", ready_url=f"http://127.0.0.1:{self.port}/stats")

    def __enter__(self) -> Sender:
        self.service.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.service.stop()

    def stats(self, window: bool = False) -> dict[str, Any]:
        """Its counters; with `window`, the maxima (loop lag, time queued) since the last such call,
        and started again."""
        found: dict[str, Any] = requests.get(f"http://127.0.0.1:{self.port}/stats{'/window' if window else ''}",
                                             timeout=10).json()
        return found

    @property
    def pid(self) -> int:
        assert self.service.proc is not None
        return self.service.proc.pid


# -- CPU from /proc --------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, list[str]]:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), fields  # ppid, fields from "state" on


def cpu_seconds(root: int) -> float:
    return sum(cpu_split(root))


def cpu_split(root: int) -> tuple[float, float]:
    """CPU seconds (user + system) of `root` itself, and of its children: every live descendant,
    and those `root` reaped (cutime, cstime)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid, fields = _stat(int(entry.name))
                children.setdefault(ppid, []).append(int(entry.name))
                stats[int(entry.name)] = fields
    own = descendants = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        found = stats.get(pid)
        if found is None:
            continue
        # utime, stime, cutime, cstime: fields 14-17 of stat, 11-14 counted from "state" (0)
        ticks = [int(f) for f in found[11:15]]
        if pid == root:
            own += ticks[0] + ticks[1]
            descendants += ticks[2] + ticks[3]
        else:
            descendants += sum(ticks)
        todo += children.get(pid, [])
    return own / CLK_TCK, descendants / CLK_TCK


# -- one point: an archiver (or Prometheus) against the targets for a while ----------------------


@dataclasses.dataclass
class Point:
    who: str
    path: str  # scrape or remote_write
    workers: str  # scrape.workers ("-": does not apply)
    targets: int
    interval: float
    offered: float  # samples/s the targets would serve (the sender would send) on schedule
    written: float  # samples/s the archiver wrote (Prometheus: samples/s served to it)
    cpu_ms: float  # per 1,000 samples (archiver: written; Prometheus: served), its children included
    pg_ms: float  # PostgreSQL's, per 1,000 samples written
    workers_ms: float = 0.0  # of cpu_ms, the scrape workers' (the archiver's children)
    spool_growth: int = 0
    skipped: int = 0  # scrapes skipped; remote_write: sends started more than an interval late
    failed: int = 0  # scrapes failed; remote_write: answers not 2xx, and connection errors
    oldest_age: float = 0.0
    note: str = ""

    @property
    def keeps_up(self) -> bool:
        return (self.written >= KEEP_UP * self.offered and self.skipped == 0 and self.failed == 0
                and self.spool_growth <= max(2, self.targets // 10))


def scrape_metrics(url: str, job: str | None = None) -> dict[str, float]:
    """Sums per metric name of the archiver's /metrics (labels summed over); with `job`, samples with
    a `job` label of another value are left out."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    found: dict[str, float] = {}
    for s in exposed_samples(text):
        if job is None or s.labels.get("job", job) == job:
            found[s.name] = found.get(s.name, 0.0) + float(s.value)
    return found


def _not_2xx(stats: dict[str, Any]) -> int:
    return sum(n for code, n in stats["codes"].items() if not code.startswith("2"))


class Bench:
    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        self.pg = EmbeddedPostgres(workdir / "pg")
        self.admin_dsn = self.pg.start()

    def close(self) -> None:
        self.pg.stop()

    def postmaster(self) -> int:
        return int((self.pg.pgdata / "postmaster.pid").read_text().split()[0])

    @contextlib.contextmanager
    def database(self) -> Any:
        name = f"bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            yield self.pg.dsn(name)
        finally:
            with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def archiver(self, targets: Targets, count: int, workers: int | None, interval: float, dsn: str | None = None,
                 path: str = "scrape") -> Point:
        """One archiver for args.seconds after its warm-up; on database `dsn`, or a new one. `path`
        scrape: it scrapes `count` of the targets; remote_write: it scrapes nothing, and a Sender
        remote-writes what those targets hold (`workers` is None)."""
        with contextlib.ExitStack() as stack:
            if dsn is None:
                dsn = stack.enter_context(self.database())
            return self._archiver(targets, count, workers, interval, dsn, path)

    def _archiver(self, targets: Targets, count: int, workers: int | None, interval: float, dsn: str,
                  path: str) -> Point:
        args = self.args
        offered = count * targets.per_scrape / interval
        parser = parser_in_use().split()[0]  # each archiver imports scrape.py anew: say which it had
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        config: dict[str, Any] = {"listen": f"127.0.0.1:{port}", "data_dir": str(self.workdir / f"data-{port}"),
                                  "log_level": "warning", "scrape_interval": f"{round(interval * 1000)}ms",
                                  "database": {"dsn": dsn}}
        if path == "scrape":
            config["scrape"] = {"workers": workers}
            config["targets"] = [{"url": targets.url(i), "job": "bench", "instance": f"t{i}"} for i in range(count)]
        else:
            config["receive"] = {"remote_write": True}
        job = REMOTE_WRITE_JOB if path == "remote_write" else None
        config_path = self.workdir / f"archiver-{port}.yml"
        config_path.write_text(yaml.safe_dump(config))
        log = self.workdir / f"archiver-{port}.log"
        service = Service(python_module("perfwatch.archiver", "--config", str(config_path)), log,
                          ready_url=f"{url}/-/ready", ready_timeout=120).start()
        assert service.proc is not None
        sent0: dict[str, Any] = {}
        sent1: dict[str, Any] = {}
        sender_cpu = 0.0
        try:
            with contextlib.ExitStack() as stack:
                sender = None if path == "scrape" else stack.enter_context(
                    Sender(self.workdir, url + WRITE_PATH, count, targets.series, interval))
                # Warm-up: every target's series created and written, and the backlog that made (series
                # are created at the first scrape) written too — or, for an archiver that cannot catch
                # up, WARM_UP_S. Then one interval more.
                deadline = time.monotonic() + WARM_UP_S
                while time.monotonic() < deadline:
                    m = scrape_metrics(url, job)
                    if (m.get("perfwatch_archiver_samples_written_total", 0) >= count * targets.per_scrape
                            and m.get("perfwatch_archiver_spool_batches", 0) <= max(2, count // 10)
                            and m.get("perfwatch_archiver_spool_oldest_age_seconds", 0) < 2 * interval + 1):
                        break
                    time.sleep(1)
                time.sleep(interval)
                if sender is not None:
                    sent0, sender_cpu = sender.stats(window=True), cpu_seconds(sender.pid)
                m0, t0 = scrape_metrics(url, job), time.monotonic()
                cpu0, pg0 = cpu_split(service.proc.pid), cpu_seconds(self.postmaster())
                oldest = 0.0
                end = t0 + args.seconds
                while time.monotonic() < end:
                    time.sleep(min(5.0, max(0.0, end - time.monotonic())))
                    oldest = max(oldest,
                                 scrape_metrics(url, job).get("perfwatch_archiver_spool_oldest_age_seconds", 0))
                cpu1, pg1 = cpu_split(service.proc.pid), cpu_seconds(self.postmaster())
                m1, t1 = scrape_metrics(url, job), time.monotonic()
                if sender is not None:
                    sent1, sender_cpu = sender.stats(window=True), cpu_seconds(sender.pid) - sender_cpu
        finally:
            service.stop(timeout=60)

        def delta(name: str) -> float:
            return m1.get(name, 0.0) - m0.get(name, 0.0)

        written = delta("perfwatch_archiver_samples_written_total")
        per_k = 1000 / written if written else float("nan")
        point = Point("archiver", path, "-" if workers is None else str(workers), count, interval, offered,
                      written / (t1 - t0), (sum(cpu1) - sum(cpu0)) * 1000 * per_k, (pg1 - pg0) * 1000 * per_k,
                      workers_ms=(cpu1[1] - cpu0[1]) * 1000 * per_k, note=parser,
                      spool_growth=int(delta("perfwatch_archiver_spool_batches")),
                      skipped=int(delta("perfwatch_archiver_scrapes_skipped_total")),
                      failed=int(delta("perfwatch_archiver_scrape_failures_total")), oldest_age=oldest)
        if path == "remote_write":
            point.skipped = sent1["late"] - sent0["late"]
            point.failed = _not_2xx(sent1) - _not_2xx(sent0) + sent1["errors"] - sent0["errors"]
            point.note = sender_note(sent0, sent1, t1 - t0, offered, sender_cpu / (t1 - t0), interval)
        return point

    def prometheus(self, targets: Targets, count: int) -> Point | None:
        from support.prometheus import Prometheus

        args = self.args
        offered = count * targets.per_scrape / args.interval
        workdir = self.workdir / f"prometheus-{count}"
        workdir.mkdir()
        interval = f"{int(args.interval * 1000)}ms"
        config = {"global": {"scrape_interval": interval, "scrape_timeout": interval},
                  "scrape_configs": [{"job_name": "bench", "static_configs": [
                      {"targets": [f"127.0.0.1:{targets.port}"],
                       "labels": {"__metrics_path__": f"/t/{i}", "instance": f"t{i}"}} for i in range(count)]}]}
        try:
            prometheus = Prometheus(workdir, config)
        except RuntimeError as err:
            print(f"  (no Prometheus beside it: {err})")
            return None
        with prometheus:
            assert prometheus.service.proc is not None
            prometheus.wait_for(f'count(up{{job="bench"}} == 1) == {count}', timeout=120)
            time.sleep(2 * args.interval)
            served0, cpu0, t0 = targets.served(), cpu_seconds(prometheus.service.proc.pid), time.monotonic()
            time.sleep(args.seconds)
            served1, cpu1, t1 = targets.served(), cpu_seconds(prometheus.service.proc.pid), time.monotonic()
        served = served1 - served0
        return Point("Prometheus 2.42", "scrape", "-", count, args.interval, offered, served / (t1 - t0),
                     (cpu1 - cpu0) * 1e6 / served, 0.0,
                     note="TSDB included")


def sender_note(sent0: dict[str, Any], sent1: dict[str, Any], seconds: float, offered: float, cpu_share: float,
                interval: float) -> str:
    """What the remote_write sender did in the window: the rates it had due and got 2xx for, its
    CPU, how long the archiver took to answer, the answers that were not 2xx (before the window
    too); and whether the sender itself fell behind the offered rate (its schedule late, or its core
    full), which would make the point measure the sender and not the archiver."""
    due = (sent1["samples_due"] - sent0["samples_due"]) / seconds
    ok = (sent1["samples_ok"] - sent0["samples_ok"]) / seconds
    answered = sent1["answered"] - sent0["answered"]
    answer_ms = (sent1["answer_s"] - sent0["answer_s"]) * 1000 / answered if answered else float("nan")
    behind = due < KEEP_UP * offered or sent1["loop_lag_max_s"] > interval / 2 or cpu_share > 0.9
    codes = ",".join(f"{code}:{n}" for code, n in sorted(sent1["codes"].items()))
    note = (f"sender: {due:,.0f}/s due, {ok:,.0f}/s answered 2xx, {cpu_share:.0%} of a core, "
            f"answers {answer_ms:.0f} ms avg, queued up to {sent1['queued_max_s']:.2f}s, "
            f"answers since its start {codes}")
    if _not_2xx(sent0) or sent0["errors"]:
        note += f" ({_not_2xx(sent0)} not 2xx, {sent0['errors']} errors before the window)"
    if sent1["first_error"]:
        note += f"; first error: {sent1['first_error']}"
    return note + ("; SENDER BEHIND the offered rate" if behind else "")


HEADER = (f"{'who':<15} {'path':<12} {'workers':>7} {'targets':>7} {'every':>6} {'offered/s':>10} {'written/s':>10} "
          f"{'cpu ms/1k':>10} {'wrk ms':>7} {'pg ms/1k':>9} {'spool +':>7} {'skipped':>7} {'failed':>6} "
          f"{'oldest s':>8}  keeps up")


def print_points(points: list[Point], header: bool = False) -> None:
    if header:
        print(HEADER)
    for p in points:
        print(f"{p.who:<15} {p.path:<12} {p.workers:>7} {p.targets:>7} {p.interval:>5.3g}s {p.offered:>10,.0f} "
              f"{p.written:>10,.0f} {p.cpu_ms:>10.1f} {p.workers_ms:>7.1f} {p.pg_ms:>9.1f} "
              f"{p.spool_growth:>7} {p.skipped:>7} {p.failed:>6} {p.oldest_age:>8.1f}  "
              f"{'yes' if p.keeps_up else 'no'} {p.note}", flush=True)


def runs(args: argparse.Namespace) -> list[tuple[str, int | None]]:
    """(path, scrape.workers) in the order measured: each path of --path in turn, the scrape path
    once per --workers value, remote_write once (workers None)."""
    return [(path, workers) for path in args.path for workers in (args.workers if path == "scrape" else [None])]


def cpu(args: argparse.Namespace) -> int:
    print(f"parser: {parser_in_use()}; {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="perfwatch-bench-archiver-") as tmp:
        workdir = Path(tmp)
        bench = Bench(workdir, args)
        try:
            with Targets(workdir, args.series) as targets:
                print(f"{args.targets} targets x {targets.per_scrape} samples every {args.interval:g}s, "
                      f"{args.seconds:g}s measured per run", flush=True)
                print(HEADER)
                points = []
                for path, workers in runs(args):
                    points.append(bench.archiver(targets, args.targets, workers, args.interval, path=path))
                    print_points(points[-1:])
                if args.prometheus and (p := bench.prometheus(targets, args.targets)) is not None:
                    points.append(p)
                    print_points(points[-1:])
        finally:
            bench.close()
    print()
    print(f"{machine()} at the end")
    print_points(points, header=True)
    return 0


def ramp(args: argparse.Namespace) -> int:
    print(f"parser: {parser_in_use()}; {machine()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="perfwatch-bench-archiver-") as tmp:
        workdir = Path(tmp)
        bench = Bench(workdir, args)
        best: dict[tuple[str, int | None], Point | None] = {}
        first_failure: dict[tuple[str, int | None], Point] = {}
        everything: list[Point] = []
        try:
            with Targets(workdir, args.series) as targets, contextlib.ExitStack() as stack:
                per_second = args.targets * targets.per_scrape  # offered at a 1 s interval
                print(f"{args.targets} targets x {targets.per_scrape} samples, {args.seconds:g}s measured per point",
                      flush=True)
                print(HEADER)
                databases: dict[str, str] = {}  # one per path, for all its points
                for path, workers in runs(args):
                    if path not in databases:
                        databases[path] = stack.enter_context(bench.database())
                    key = (path, workers)
                    best[key] = None
                    passed, failed, bisections = 0.0, 0.0, 0
                    rate = per_second / args.interval
                    while True:
                        point = bench.archiver(targets, args.targets, workers, per_second / rate, databases[path], path)
                        everything.append(point)
                        print_points([point])
                        if point.keeps_up:
                            passed, best[key] = rate, point
                        else:
                            failed = rate
                            if key not in first_failure or point.offered < first_failure[key].offered:
                                first_failure[key] = point
                        if not failed:
                            rate *= 2
                            if per_second / rate < MIN_INTERVAL:
                                break
                            continue
                        if not passed or bisections >= args.bisect:
                            break
                        bisections += 1
                        rate = (passed + failed) / 2
        finally:
            bench.close()
    print()
    print(f"{machine()} at the end")
    print_points(everything, header=True)
    print()
    for (path, workers), top in best.items():
        who = path if workers is None else f"{path}, workers {workers}"
        failure = first_failure.get((path, workers))
        not_with = (f"; not with {failure.offered:,.0f} ({failure.written:,.0f} written)" if failure is not None
                    else "")
        if top is None:
            print(f"{who}: did not keep up even at a {args.interval:g}s interval{not_with}")
        else:
            print(f"{who}: keeps up with {top.offered:,.0f} samples/s ({top.targets} targets every "
                  f"{top.interval:.3g}s), {top.cpu_ms:.1f} ms CPU per 1,000 samples (+ PostgreSQL {top.pg_ms:.1f})"
                  f"{not_with}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="stages", choices=("stages", "cpu", "ramp", "serve", "send"))
    parser.add_argument("--batches", type=int, default=300, help="stages: batches sent down the path")
    parser.add_argument("--segment-mib", type=int, default=8, help="stages: spool segment size")
    parser.add_argument("--path", nargs="+", choices=PATHS, default=["scrape"],
                        help="cpu, ramp: how the samples reach the archiver, each measured in turn")
    parser.add_argument("--targets", type=int, default=40, help="cpu, ramp: synthetic targets")
    parser.add_argument("--series", type=int, default=1000, help="cpu, ramp: samples per target (about)")
    parser.add_argument("--interval", type=float, default=5.0, help="cpu, ramp (first point): scrape interval, s")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2],
                        help="cpu, ramp: scrape.workers values (the scrape path's)")
    parser.add_argument("--seconds", type=float, default=60.0, help="cpu, ramp: measured window per run")
    parser.add_argument("--prometheus", action="store_true", help="cpu: Prometheus on the same targets after")
    parser.add_argument("--bisect", type=int, default=1, help="ramp: midpoints tried after the first failure")
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode == "serve":
        asyncio.run(_serve_targets(args.port, args.series))
        return 0
    if args.mode == "send":
        asyncio.run(_send_remote_write(args.url, args.port, args.targets, args.series, args.interval))
        return 0
    return {"stages": stages, "cpu": cpu, "ramp": ramp}[args.mode](args)


if __name__ == "__main__":
    raise SystemExit(main())
