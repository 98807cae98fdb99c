"""What the archiver adds to each scrape on its way to PostgreSQL, against the store write itself.

    .venv/bin/python tests/bench/bench_archiver.py [--batches 300] [--segment-mib 8]

One real exposition (a perfwatch-exporter process with its default collectors, fetched once) is
turned into `--batches` batches, each with its own timestamp, and sent down the archiver's path
batch by batch, every stage timed separately:

* parse:   archiver.scrape.parse_exposition (prometheus_client's parser, labels, kinds);
* append:  Spool.append — JSON line, write, flush, fsync (the write-ahead step);
* replay:  Spool.peek + Spool.commit — read the line back, parse the JSON, move the head;
* store:   Store.write — the peer: COPY into PostgreSQL, one transaction per batch.

The spool and PostgreSQL's data directory are on the same filesystem (a temporary directory).
Printed: the median per batch of each stage, samples per second, and the ratio of the archiver's
own work (parse + append + replay) to the store write measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from support.procs import Service, free_port, python_module  # noqa: E402

from perfwatch.archiver.db import make_engine  # noqa: E402
from perfwatch.archiver.embedded import EmbeddedPostgres  # noqa: E402
from perfwatch.archiver.migrate import apply_migrations  # noqa: E402
from perfwatch.archiver.policy import Policy, mirror_policy  # noqa: E402
from perfwatch.archiver.scrape import parse_exposition  # noqa: E402
from perfwatch.archiver.spool import Spool  # noqa: E402
from perfwatch.archiver.store import Store  # noqa: E402


def fetch_exposition(workdir: Path) -> str:
    port = free_port()
    exporter = Service(python_module("perfwatch.exporter", "--listen", f"127.0.0.1:{port}"), workdir / "exporter.log",
                       ready_url=f"http://127.0.0.1:{port}/-/ready").start()
    try:
        requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30)  # perf deltas need a first scrape
        return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    finally:
        exporter.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--segment-mib", type=int, default=8, help="spool segment size")
    args = parser.parse_args()

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
            labels = {"job": "perfwatch", "instance": "127.0.0.1:10280"}
            start_ms = int(time.time() * 1000) - args.batches * 15_000
            timings: dict[str, list[float]] = {"parse": [], "append": [], "replay": [], "store": []}
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
                timings["parse"].append(t1 - t0)
                timings["append"].append(t2 - t1)
                timings["replay"].append((t3 - t2) + (t5 - t4))
                timings["store"].append(t4 - t3)
                samples = len(batch.samples)
            spool.close()
        finally:
            engine.dispose()
            pg.stop()

    medians = {stage: statistics.median(values) for stage, values in timings.items()}
    print(f"exposition: {len(text)} bytes, {samples} samples per batch, {args.batches} batches "
          f"(spool line {len(batch.to_json().encode()) / 1024:.1f} KiB)")
    print(f"{'stage':<8} {'median ms/batch':>16} {'samples/s':>12}")
    for stage, median in medians.items():
        print(f"{stage:<8} {median * 1000:>16.3f} {samples / median:>12,.0f}")
    own = medians["parse"] + medians["append"] + medians["replay"]
    whole = own + medians["store"]
    print(f"archiver's own work (parse + append + replay): {own * 1000:.3f} ms/batch")
    print(f"whole path: {whole * 1000:.3f} ms/batch, {samples / whole:,.0f} samples/s")
    print(f"ratio own work / store write: {own / medians['store']:.2f}")
    spool_cost = medians["append"] + medians["replay"]
    print(f"ratio spool (append + replay) / store write: {spool_cost / medians['store']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
