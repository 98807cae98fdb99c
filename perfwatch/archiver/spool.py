"""A durable, ordered queue of batches on local disk: the archiver's write-ahead log.

Every scraped batch is appended here (one JSON line, flushed and fsynced) before the writer
sends it to PostgreSQL, and is released only after the store has it. So a database outage, a
SIGTERM or a SIGKILL loses nothing that was appended, and batches reach the database in the
order they were scraped; the store's primary key makes a second write of a batch harmless.

On disk, under `directory`: numbered segments `00000001.jsonl`, … and `head` ("<segment>
<offset>": where the oldest unwritten batch starts). `head` is written by rename without fsync:
a stale head only means some batches are written twice, which the store ignores. So it is written
at most every HEAD_EVERY seconds as the writer moves on (each rename cost the writer as much as an
fsync), and at once when it moves back — a segment emptied for reuse, where a stale head would
point into newer batches — when batches are dropped to make room, and at close. A segment is
deleted once every batch in it is written; the segment being appended to is emptied once it is
all written and holds RECLAIM_BYTES or more (emptying it after every batch, with the head written
at once each time, cost the writer more than the fsync of the append), or when an append fails
(a full disk: the space its written batches hold is given back, and the append tried again). A torn last line (a crash
mid-append) is cut off at start. A line that does not parse is moved to `rejected.jsonl` and skipped.

Bounded by `max_bytes`: when an append would pass it, the oldest segments are dropped (logged,
counted) — the newest data is the one still missing from the archive's recent end, and the
bound exists so a long outage cannot fill the disk.

The log is read back only for replay. An appended batch is also kept in memory, in a queue bounded
by `memory_bytes` (counted in its bytes on disk; in memory a batch takes 1.5 to 5 times that),
and `peek` hands the writer that object: decoding the line the same process had just encoded was
40 % of the writer's time. What the queue does not hold — batches appended before this process
started, and those appended while the queue was full (they are kept on disk only, and the queue
takes new ones again as the writer drains it) — `peek` reads back from disk and decodes, as before.
Either way the same batches come out in the same order: the queue is keyed by where each batch
lies on disk, and the disk stays the truth (a segment found shorter than what was appended to it
is believed, memory or not). Durability is the log's alone: `append` returns after the fsync.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import BinaryIO

from perfwatch.archiver.model import Batch

log = logging.getLogger(__name__)

_SEGMENT_RE = re.compile(r"^(\d{8})\.jsonl$")
DEFAULT_MAX_BYTES = 1 << 30
MAX_SEGMENT_BYTES = 8 << 20
# Spool bytes whose batches are kept in memory as well. In RAM a batch takes 1.5-2.5 times its line
# with archiver.parse (it shares label strings), up to 5 with prometheus_client's parser (measured).
# At 7,000 samples/s (85-170 bytes each on disk) it holds 15 to 30 s of backlog.
DEFAULT_MEMORY_BYTES = 16 << 20
_CHUNK = 1 << 16
HEAD_EVERY = 0.5  # seconds: how stale `head` may be while the writer moves it forward
# The segment being appended to is emptied once all written and at least this large (or
# segment_bytes, if smaller): written batches keep at most this much disk.
RECLAIM_BYTES = 1 << 20


@dataclasses.dataclass(frozen=True)
class Entry:
    """The oldest batch in the spool and where it lies."""

    batch: Batch
    segment: int
    offset: int
    end: int


@dataclasses.dataclass(frozen=True)
class SpoolStats:
    batches: int  # appended, not yet written
    bytes: int  # their size on disk
    oldest_ms: int | None  # scrape time of the oldest, None when empty
    memory_batches: int = 0  # of them, also held in memory (the rest is read back from disk)
    memory_bytes: int = 0  # their size on disk


@dataclasses.dataclass
class _Segment:
    number: int
    path: Path
    size: int
    lines: int


class SpoolNearlyFull(Exception):  # noqa: N818 - a state, not an error of the caller's
    """The append would take the spool past the limit its caller gave (append's `below`)."""

    def __init__(self, pending_bytes: int) -> None:
        super().__init__(f"the spool holds {pending_bytes} bytes")
        self.pending_bytes = pending_bytes


class Spool:
    def __init__(self, directory: Path | str, max_bytes: int = DEFAULT_MAX_BYTES,
                 segment_bytes: int | None = None, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or max(1, min(MAX_SEGMENT_BYTES, max_bytes // 4))
        self.memory_bytes = max(0, min(memory_bytes, max_bytes))  # 0: every batch is read back from disk
        self.reclaim_bytes = min(RECLAIM_BYTES, self.segment_bytes)
        self.dropped_batches = 0  # dropped to stay within max_bytes (oldest first), or a failed append
        self.rejected_lines = 0  # batches set aside in rejected.jsonl (unparsable, or refused by the DB)
        self.read_back = 0  # batches peek read back from disk (not, or no longer, held in memory)
        # Appended batches also held in memory, in log order, each with its place on disk. Those
        # before the head (written, or dropped to make room) are let go as the head moves.
        self._memory: collections.deque[Entry] = collections.deque()
        self._memory_size = 0  # bytes on disk of the batches in self._memory
        self._lock = threading.RLock()
        self._appended = threading.Condition(self._lock)
        self._segments: list[_Segment] = []
        self._head_offset = 0  # in self._segments[0]
        self._head_lines = 0  # lines of self._segments[0] before the head
        self._peeked: Entry | None = None
        self._head_written = 0.0  # time.monotonic() of the last write of `head`
        self._head_stale = False  # moved on since
        self._writer: BinaryIO | None = None  # append handle of the last segment
        self.directory.mkdir(parents=True, exist_ok=True)
        self._open()

    # -- start-up ------------------------------------------------------------------------------

    def _open(self) -> None:
        numbers = sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _SEGMENT_RE.match(p.name)))
        head_segment, head_offset = self._read_head()
        for number in numbers:
            if number < head_segment:  # written before the last run ended, not yet deleted
                self._path(number).unlink()
                continue
            path = self._path(number)
            self._segments.append(_Segment(number, path, path.stat().st_size, 0))
        if self._segments:
            self._repair_torn_tail(self._segments[-1])
            for segment in self._segments:
                segment.lines = _count_lines(segment.path)
            first = self._segments[0]
            if first.number == head_segment and 0 < head_offset <= first.size:
                self._head_offset = head_offset
                self._head_lines = _count_lines(first.path, head_offset)
        self._next_number = max([head_segment, *numbers]) + 1
        self._normalise_head()
        stats = self.stats()
        if stats.batches:
            log.info("spool %s holds %d batches (%d bytes) not yet in the database; they are written first",
                     self.directory, stats.batches, stats.bytes)

    def _read_head(self) -> tuple[int, int]:
        try:
            segment, offset = (self.directory / "head").read_text().split()
            return int(segment), int(offset)
        except FileNotFoundError:
            return 0, 0
        except (OSError, ValueError) as err:
            log.warning("spool head file %s unreadable (%s); replaying from the first segment",
                        self.directory / "head", err)
            return 0, 0

    def _repair_torn_tail(self, segment: _Segment) -> None:
        with open(segment.path, "rb+") as f:
            if segment.size == 0:
                return
            f.seek(segment.size - 1)
            if f.read(1) == b"\n":
                return
            # Find the last complete line; what follows it is an append a crash cut short.
            pos = segment.size
            keep = 0
            while pos > 0:
                start = max(0, pos - _CHUNK)
                f.seek(start)
                block = f.read(pos - start)
                newline = block.rfind(b"\n")
                if newline >= 0:
                    keep = start + newline + 1
                    break
                pos = start
            f.truncate(keep)
            os.fsync(f.fileno())
        log.warning("spool segment %s ended in a torn line (a crash during an append): cut %d bytes",
                    segment.path, segment.size - keep)
        segment.size = keep

    # -- appending (scrape threads) --------------------------------------------------------------

    def append(self, batch: Batch, line: bytes | None = None, *, below: int | None = None) -> bool:
        """Persist `batch` (fsync) at the end. False if it alone is larger than max_bytes.

        `line`: the batch's spool line (`batch.to_json()` and a newline, UTF-8) when the caller has
        it already — a scrape worker encodes it beside the parse, off the archiver's own core.
        `below`: raise SpoolNearlyFull rather than let the pending bytes pass it, checked under the
        spool's lock (the receiver's high water: concurrent requests cannot overshoot it together)."""
        if line is None:
            line = (batch.to_json() + "\n").encode("utf-8")
        with self._lock:
            if below is not None and len(line) <= self.max_bytes and self._pending_bytes() + len(line) > below:
                raise SpoolNearlyFull(self._pending_bytes())
            if len(line) > self.max_bytes:
                self.dropped_batches += 1
                log.error("batch of %d samples from %s/%s is %d bytes, more than the spool's max_bytes %d: dropped",
                          len(batch.samples), batch.job, batch.instance, len(line), self.max_bytes)
                return False
            self._make_room(len(line))
            if not self._segments or self._segments[-1].size >= self.segment_bytes:
                self._new_segment()
            try:
                self._write_line(line)
            except OSError:
                # Disk full or failing. Written batches the segment still holds (it is emptied only
                # at reclaim_bytes) may be the space wanted: give it back and try once more.
                if not self._reclaim():
                    self.dropped_batches += 1
                    raise
                try:
                    self._write_line(line)
                except OSError:
                    self.dropped_batches += 1
                    raise
            segment = self._segments[-1]
            offset = segment.size
            segment.size += len(line)
            segment.lines += 1
            if self._memory_size + len(line) <= self.memory_bytes:
                self._memory.append(Entry(batch, segment.number, offset, segment.size))
                self._memory_size += len(line)
            self._appended.notify_all()
        return True

    def _write_line(self, line: bytes) -> None:
        """Append `line` to the last segment, fsynced; on an error, cut what part of it got out, so
        that the next append starts on a line boundary."""
        segment = self._segments[-1]
        if self._writer is None:
            self._writer = open(segment.path, "ab")  # noqa: SIM115 - kept open between appends
        try:
            self._writer.write(line)
            self._writer.flush()
            os.fsync(self._writer.fileno())
        except OSError:
            writer, self._writer = self._writer, None  # the next append opens the file afresh
            with contextlib.suppress(OSError):
                # close() flushes what the disk refused once more, fails again and raises;
                # the file is closed all the same.
                writer.close()
            os.truncate(segment.path, segment.size)
            raise

    def _reclaim(self) -> bool:
        """Empty the last segment if all of it is written (whatever its size); True if it held any."""
        if len(self._segments) != 1 or not 0 < self._segments[0].size <= self._head_offset:
            return False
        with contextlib.suppress(OSError):  # the append's error is the one to report
            self._normalise_head(reclaim=True)
        return self._segments[0].size == 0

    def _make_room(self, size: int) -> None:
        while self._segments and self._pending_bytes() + size > self.max_bytes:
            oldest = self._segments[0]
            lost = oldest.lines - self._head_lines
            self.dropped_batches += lost
            log.error("spool %s is full (max_bytes %d): dropped its oldest %d batches (%d bytes, segment %s)",
                      self.directory, self.max_bytes, lost, oldest.size - self._head_offset, oldest.path.name)
            self._drop_first()
            self._write_head(now=True)

    def _new_segment(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        number = self._next_number
        self._next_number += 1
        path = self._path(number)
        path.touch()
        _fsync_dir(self.directory)  # so the new segment's name survives a crash too
        self._segments.append(_Segment(number, path, 0, 0))
        self._normalise_head()

    # -- consuming (the writer thread) -----------------------------------------------------------

    def wait(self, timeout: float) -> bool:
        """Block until a batch is pending (True) or `timeout` passes (False)."""
        with self._lock:
            return self._appended.wait_for(self._has_pending, timeout)

    def peek(self) -> Entry | None:
        """The oldest batch not yet written, or None: the appended object itself while the memory
        queue holds it, else read back from disk. Unparsable lines are moved aside."""
        with self._lock:
            while True:
                if self._peeked is not None:
                    return self._peeked
                if not self._has_pending():
                    return None
                segment = self._segments[0]
                held = self._memory[0] if self._memory else None
                if (held is not None and (held.segment, held.offset) == (segment.number, self._head_offset)
                        and _file_size(segment.path) >= held.end):
                    # On disk as appended (a stat, so that a segment cut short underneath is noticed
                    # as it is without the memory queue, below).
                    self._peeked = held
                    return held
                self.read_back += 1
                with open(segment.path, "rb") as f:
                    f.seek(self._head_offset)
                    raw = f.readline()
                if not raw:
                    # The file is shorter than what we appended: changed underneath us. Believe
                    # the disk and move on, rather than reading the same nothing forever.
                    log.error("spool segment %s ends at %d, before the %d bytes written to it; continuing after it",
                              segment.path, self._head_offset, segment.size)
                    segment.size = self._head_offset
                    segment.lines = self._head_lines
                    self._forget_segment(segment.number)  # what memory held of it is gone from disk
                    self._normalise_head()
                    continue
                end = self._head_offset + len(raw)
                try:
                    batch = Batch.from_json(raw.decode("utf-8"))
                except (ValueError, KeyError, TypeError, IndexError) as err:
                    self._set_aside(raw, f"segment {segment.path.name} offset {self._head_offset}: {err}")
                    self._advance(segment.number, end)
                    continue
                self._peeked = Entry(batch, segment.number, self._head_offset, end)

    def commit(self, entry: Entry) -> None:
        """`entry` is in the database: release it (unless dropped meanwhile to make room)."""
        with self._lock:
            self._advance(entry.segment, entry.end, expected_offset=entry.offset)

    def _advance(self, segment: int, end: int, expected_offset: int | None = None) -> None:
        if not self._segments or self._segments[0].number != segment:
            return
        if expected_offset is not None and expected_offset != self._head_offset:
            return
        self._head_offset = end
        self._head_lines += 1
        self._peeked = None
        self._normalise_head()
        self._write_head(now=False)

    def reject(self, entry: Entry, reason: str) -> None:
        """The database refuses `entry` for good: keep it in rejected.jsonl and move past it."""
        with self._lock:
            self._set_aside((entry.batch.to_json() + "\n").encode("utf-8"), reason)
            self._advance(entry.segment, entry.end, expected_offset=entry.offset)

    def _set_aside(self, raw: bytes, reason: str) -> None:
        self.rejected_lines += 1
        path = self.directory / "rejected.jsonl"
        with open(path, "ab") as f:
            f.write(raw if raw.endswith(b"\n") else raw + b"\n")
            f.flush()
            os.fsync(f.fileno())
        log.error("spool %s: set a batch aside in %s (%s)", self.directory, path, reason)

    # -- state -----------------------------------------------------------------------------------

    def stats(self) -> SpoolStats:
        with self._lock:
            batches = sum(s.lines for s in self._segments) - self._head_lines
            oldest = None
            if batches:
                entry = self.peek()
                oldest = entry.batch.scraped_at_ms if entry else None
            return SpoolStats(batches, self._pending_bytes(), oldest, len(self._memory), self._memory_size)

    def close(self) -> None:
        with self._lock:
            if self._head_stale:
                self._write_head(now=True)
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def _has_pending(self) -> bool:
        return bool(self._segments) and (self._head_offset < self._segments[0].size or len(self._segments) > 1)

    def _pending_bytes(self) -> int:
        return sum(s.size for s in self._segments) - self._head_offset

    def _normalise_head(self, reclaim: bool = False) -> None:
        """Delete finished segments other than the one being appended to, and empty that one once
        it is all written and holds reclaim_bytes (or `reclaim`: an append failed): a segment
        smaller than the rotation size would otherwise keep its written batches on disk until it
        filled up, and after a disk-full outage every later append would fail on the space they
        hold."""
        self._forget_written()
        while len(self._segments) > 1 and self._head_offset >= self._segments[0].size:
            self._drop_first()
        if (len(self._segments) == 1 and 0 < self._segments[0].size <= self._head_offset
                and (reclaim or self._segments[0].size >= self.reclaim_bytes)):
            segment = self._segments[0]
            # The append handle is O_APPEND: its next write lands at the new end, 0. A crash here at
            # worst replays what was written (the head names an offset past the end: read from 0).
            os.truncate(segment.path, 0)
            segment.size = segment.lines = 0
            self._head_offset = self._head_lines = 0
            self._peeked = None
            self._write_head(now=True)  # back to 0: the head must not name an offset into newer batches

    def _drop_first(self) -> None:
        first = self._segments.pop(0)
        if self._writer is not None and not self._segments:
            self._writer.close()
            self._writer = None
        first.path.unlink(missing_ok=True)
        self._head_offset = 0
        self._head_lines = 0
        self._peeked = None
        self._forget_written()

    def _forget_written(self) -> None:
        """Let go of the held batches before the head: written, or dropped to make room."""
        head = (self._segments[0].number, self._head_offset) if self._segments else None
        while self._memory and (head is None or (self._memory[0].segment, self._memory[0].offset) < head):
            entry = self._memory.popleft()
            self._memory_size -= entry.end - entry.offset

    def _forget_segment(self, number: int) -> None:
        gone = [e for e in self._memory if e.segment == number]
        if gone:
            self._memory = collections.deque(e for e in self._memory if e.segment != number)
            self._memory_size -= sum(e.end - e.offset for e in gone)

    def _write_head(self, now: bool) -> None:
        """`now`: whatever the time since the last write (see HEAD_EVERY)."""
        if not now and time.monotonic() - self._head_written < HEAD_EVERY:
            self._head_stale = True
            return
        self._head_written = time.monotonic()
        self._head_stale = False
        segment = self._segments[0].number if self._segments else self._next_number - 1
        tmp = self.directory / "head.tmp"
        tmp.write_text(f"{segment} {self._head_offset}\n")
        tmp.replace(self.directory / "head")

    def _path(self, number: int) -> Path:
        return self.directory / f"{number:08d}.jsonl"


def _count_lines(path: Path, limit: int | None = None) -> int:
    count = 0
    remaining = limit
    with open(path, "rb") as f:
        while remaining is None or remaining > 0:
            block = f.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
            if not block:
                break
            count += block.count(b"\n")
            if remaining is not None:
                remaining -= len(block)
    return count


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
