"""The archiver's durable spool: order, restarts, torn lines, corruption, the size bound."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from support.procs import REPO

from perfwatch.archiver.model import Batch, MetricMeta, Sample
from perfwatch.archiver.spool import Spool


def batch(i: int, samples: int = 3) -> Batch:
    labels = (("instance", "h:1"), ("job", "j"), ("v", 'quote " back \\ nl \n ü 🙂 \'; DROP TABLE x;--'))
    return Batch("j", "h:1", 1_700_000_000_000 + i, [
        Sample(f"m{k}_total", labels, float(i) if k else math.inf, 1_700_000_000_000 + i) for k in range(samples)
    ], {f"m{k}_total": MetricMeta(f"m{k}_total", "counter", "counter", "help", "") for k in range(samples)})


def drain(spool: Spool) -> list[Batch]:
    out = []
    while (entry := spool.peek()) is not None:
        out.append(entry.batch)
        spool.commit(entry)
    return out


def test_batches_come_back_in_order_and_equal(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    sent = [batch(i) for i in range(5)]
    for b in sent:
        assert spool.append(b)
    assert spool.stats().batches == 5 and spool.stats().oldest_ms == sent[0].scraped_at_ms
    assert drain(spool) == sent
    stats = spool.stats()
    assert (stats.batches, stats.bytes, stats.oldest_ms) == (0, 0, None)


def test_a_peeked_batch_stays_until_committed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(batch(0))
    spool.append(batch(1))
    first = spool.peek()
    assert first is not None and spool.peek() == first  # a failed write leaves it at the head
    spool.commit(first)
    second = spool.peek()
    assert second is not None and second.batch == batch(1)


def test_reopened_spool_resumes_after_the_last_commit(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(6):
        spool.append(batch(i))
    for _ in range(2):
        entry = spool.peek()
        assert entry is not None
        spool.commit(entry)
    spool.close()
    again = Spool(tmp_path)
    assert again.stats().batches == 4
    assert drain(again) == [batch(i) for i in range(2, 6)]


def test_segments_are_deleted_once_written(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=2000)
    for i in range(50):
        spool.append(batch(i))
        entry = spool.peek()
        assert entry is not None
        spool.commit(entry)
    segments = list(tmp_path.glob("*.jsonl"))
    assert len(segments) == 1 and segments[0].stat().st_size < 2000 + len(batch(0).to_json()) + 1


def test_torn_last_line_is_cut_and_the_rest_kept(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(3):
        spool.append(batch(i))
    spool.close()
    segment = next(tmp_path.glob("*.jsonl"))
    with open(segment, "ab") as f:
        f.write(batch(3).to_json().encode()[:40])  # a crash in the middle of an append
    again = Spool(tmp_path)
    assert again.stats().batches == 3
    again.append(batch(4))
    assert drain(again) == [batch(0), batch(1), batch(2), batch(4)]


def test_unparsable_line_is_set_aside_not_lost(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append(batch(0))
    spool.close()
    segment = next(tmp_path.glob("*.jsonl"))
    with open(segment, "ab") as f:
        f.write(b'{"job": "half a batch"}\n')
    again = Spool(tmp_path)
    again.append(batch(1))
    assert drain(again) == [batch(0), batch(1)]
    assert again.rejected_lines == 1
    assert (tmp_path / "rejected.jsonl").read_bytes() == b'{"job": "half a batch"}\n'


def test_full_spool_drops_the_oldest_and_stays_bounded(tmp_path: Path) -> None:
    size = len(batch(0).to_json().encode()) + 1
    spool = Spool(tmp_path, max_bytes=20 * size, segment_bytes=5 * size)
    for i in range(100):
        assert spool.append(batch(i))
        on_disk = sum(p.stat().st_size for p in tmp_path.glob("*.jsonl"))
        assert on_disk <= 20 * size
    kept = drain(spool)
    assert spool.dropped_batches == 100 - len(kept) > 0
    assert kept == [batch(i) for i in range(100 - len(kept), 100)]  # newest kept, in order, no gap
    assert len(kept) >= 15


def test_batch_larger_than_the_bound_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=500)
    assert not spool.append(batch(0, samples=50))
    assert spool.dropped_batches == 1 and spool.stats().batches == 0


def test_commit_of_a_batch_dropped_meanwhile_is_ignored(tmp_path: Path) -> None:
    size = len(batch(0).to_json().encode()) + 1
    spool = Spool(tmp_path, max_bytes=4 * size, segment_bytes=size)
    spool.append(batch(0))
    in_flight = spool.peek()
    assert in_flight is not None
    for i in range(1, 8):
        spool.append(batch(i))  # pushes batch 0 out while the writer holds it
    spool.commit(in_flight)
    assert drain(spool) == [batch(i) for i in range(4, 8)]


def test_sigkill_during_appends_keeps_every_acknowledged_batch(tmp_path: Path) -> None:
    # A real process appends as fast as it can and says which batch each append returned for;
    # it is killed mid-stream. Everything it acknowledged must be there, in order, once.
    child = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from test_archiver_spool import batch
        from perfwatch.archiver.spool import Spool
        spool = Spool(sys.argv[1], segment_bytes=20000)
        i = 0
        while True:
            spool.append(batch(i, samples=40))
            print(i, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", child, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout is not None
    acknowledged = -1
    while acknowledged < 300:
        acknowledged = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    got = drain(Spool(tmp_path))
    assert len(got) >= acknowledged + 1
    assert got == [batch(i, samples=40) for i in range(len(got))]


def test_segment_truncated_underneath_is_survived(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    for i in range(3):
        spool.append(batch(i))
    os.truncate(next(tmp_path.glob("*.jsonl")), 0)  # someone else's doing
    assert spool.peek() is None and spool.stats().batches == 0
    spool.append(batch(3))
    assert drain(spool) == [batch(3)]


def test_a_full_disk_loses_only_the_batches_it_refused(tmp_path: Path) -> None:
    # A real write error from the kernel: a child process whose file size limit the spool's
    # segment reaches (EFBIG, as ENOSPC would be on a full disk). Once there is room again the
    # spool must take batches again, and nothing half-written may be left in it.
    child = textwrap.dedent(f"""
        import resource, signal, sys
        sys.path.insert(0, {str(REPO / "tests")!r})
        from test_archiver_spool import batch
        from perfwatch.archiver.spool import Spool
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead of killing us
        spool = Spool(sys.argv[1])
        size = len(batch(0, samples=20).to_json()) + 1
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(size * 3.5), resource.RLIM_INFINITY))
        for i in range(8):
            if i == 6:  # room again
                resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            try:
                spool.append(batch(i, samples=20))
                print(i, "ok", flush=True)
            except Exception as err:
                print(i, type(err).__name__, flush=True)
        print("dropped", spool.dropped_batches)
    """)
    result = subprocess.run([sys.executable, "-c", child, str(tmp_path)], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["0 ok", "1 ok", "2 ok", "3 OSError", "4 OSError", "5 OSError", "6 ok",
                                          "7 ok", "dropped 3"]
    again = Spool(tmp_path)
    assert drain(again) == [batch(i, samples=20) for i in (0, 1, 2, 6, 7)]
    assert again.rejected_lines == 0 and not (tmp_path / "rejected.jsonl").exists()


def test_a_line_names_each_label_set_once_and_reads_back_exactly(tmp_path: Path) -> None:
    shared = (("cpu", "0"), ("job", "j"))
    equal_not_same = tuple(list(shared))  # another tuple of the same labels: still the same labels back
    samples = [Sample("a_total", shared, 1.5, 1), Sample("b", shared, -math.inf, 2),
               Sample("c", (("cpu", "1"), ("job", "j")), math.nan, 3), Sample("d", equal_not_same, 0.1, 4),
               Sample("e", (), math.inf, 5)]
    sent = Batch("j", "h:1", 7, samples, {"b": MetricMeta("b", "gauge", "gauge", "h ü", "")})
    line = sent.to_json()
    assert line.count('"cpu","0"') <= 2 and line.count('"cpu","1"') == 1
    spool = Spool(tmp_path, memory_bytes=0)  # read back from disk, not the appended object
    spool.append(sent)
    entry = spool.peek()
    assert entry is not None
    got = entry.batch
    assert [(s.name, s.labels, s.timestamp_ms) for s in got.samples] == [(s.name, s.labels, s.timestamp_ms)
                                                                         for s in samples]
    assert [s.value for s in got.samples][:2] == [1.5, -math.inf] and math.isnan(got.samples[2].value)
    assert [s.value for s in got.samples][3:] == [0.1, math.inf] and got.metadata == sent.metadata


def test_a_line_with_the_labels_of_every_sample_in_full_reads(tmp_path: Path) -> None:
    # What earlier releases spooled (no numbered label sets): a spool left by one is replayed.
    old = ('{"job":"j","instance":"h:1","scraped_at_ms":7,"metadata":[["m_total","counter","counter","h",""]],'
           '"samples":[["m_total",[["instance","h:1"],["job","j"]],"inf",7],["m_total",[["job","j"]],2.5,8]]}\n')
    (tmp_path / "00000001.jsonl").write_text(old)
    spool = Spool(tmp_path)
    assert drain(spool) == [Batch("j", "h:1", 7, [Sample("m_total", (("instance", "h:1"), ("job", "j")), math.inf, 7),
                                                  Sample("m_total", (("job", "j"),), 2.5, 8)],
                                  {"m_total": MetricMeta("m_total", "counter", "counter", "h", "")})]
