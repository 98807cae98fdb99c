"""The kernel clock's discipline state from adjtimex(2) (node_exporter's timex collector).

`adjtimex(&tx)` with `tx.modes = 0` only reads, without privileges. The return value is the clock
state: TIME_ERROR (5) means not synchronised. `struct timex` (glibc, <sys/timex.h>) is laid out
with the C ABI's natural alignment, which ctypes reproduces: on x86_64 and aarch64 (LP64) it is
208 bytes — modes (int) @0, offset @8, freq @16, maxerror @24, esterror @32, status (int) @40,
constant @48, precision @56, tolerance @64, time (timeval) @72, tick @88, ppsfreq @96, jitter @104,
shift (int) @112, stabil @120, jitcnt @128, calcnt @136, errcnt @144, stbcnt @152, tai (int) @160,
then 11 ints of padding. offset and jitter are in microseconds, or nanoseconds with STA_NANO set;
freq, ppsfreq and stabil are ppm with a 16-bit fraction.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable, Iterator

from perfwatch.common.families import Metric
from perfwatch.exporter.collectors.base import NODE, Collector, NoOptions, counter, gauge, register

TIME_ERROR = 5
STA_NANO = 0x2000
PPM16FRAC = 1000000.0 * 65536.0
_long, _int = ctypes.c_long, ctypes.c_int


class Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", _long), ("tv_usec", _long)]


class Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint), ("offset", _long), ("freq", _long), ("maxerror", _long), ("esterror", _long),
        ("status", _int), ("constant", _long), ("precision", _long), ("tolerance", _long), ("time", Timeval),
        ("tick", _long), ("ppsfreq", _long), ("jitter", _long), ("shift", _int), ("stabil", _long),
        ("jitcnt", _long), ("calcnt", _long), ("errcnt", _long), ("stbcnt", _long), ("tai", _int),
        ("_padding", _int * 11),
    ]


def _libc_adjtimex() -> Callable[[Timex], int]:
    # The process' own symbols, libc's among them: ctypes.util.find_library would run ldconfig in a
    # subprocess and keep the subprocess and tempfile modules loaded (RSS).
    libc = ctypes.CDLL(None, use_errno=True)
    function = libc.adjtimex
    function.argtypes = [ctypes.POINTER(Timex)]
    function.restype = _int

    def adjtimex(tx: Timex) -> int:
        state = int(function(ctypes.byref(tx)))
        if state < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"adjtimex: {os.strerror(err)}")
        return state

    return adjtimex


@register
class TimexCollector(Collector[NoOptions]):
    name = "timex"
    description = "Clock synchronisation state: sync status, offset, frequency, errors, PPS (adjtimex(2))."
    node_collectors = ("timex",)
    adjtimex: Callable[[Timex], int]

    def setup(self) -> None:
        self.adjtimex = _libc_adjtimex()

    def collect(self) -> Iterator[Metric]:
        tx = Timex()
        try:
            state = self.adjtimex(tx)
        except PermissionError:  # a seccomp filter: no data, as node_exporter
            return
        divisor = 1e9 if tx.status & STA_NANO else 1e6
        for name, doc, value in (
            ("sync_status", "Is clock synchronized to a reliable server (1 = yes, 0 = no).",
             0.0 if state == TIME_ERROR else 1.0),
            ("offset_seconds", "Time offset in between local system and reference clock.", tx.offset / divisor),
            ("frequency_adjustment_ratio", "Local clock frequency adjustment.", 1 + tx.freq / PPM16FRAC),
            ("maxerror_seconds", "Maximum error in seconds.", tx.maxerror / 1e6),
            ("estimated_error_seconds", "Estimated error in seconds.", tx.esterror / 1e6),
            ("status", "Value of the status array bits.", float(tx.status)),
            ("loop_time_constant", "Phase-locked loop time constant.", float(tx.constant)),
            ("tick_seconds", "Seconds between clock ticks.", tx.tick / 1e6),
            ("pps_frequency_hertz", "Pulse per second frequency.", tx.ppsfreq / PPM16FRAC),
            ("pps_jitter_seconds", "Pulse per second jitter.", tx.jitter / divisor),
            ("pps_shift_seconds", "Pulse per second interval duration.", float(tx.shift)),
            ("pps_stability_hertz", "Pulse per second stability, average of recent frequency changes.",
             tx.stabil / PPM16FRAC),
            ("tai_offset_seconds", "International Atomic Time (TAI) offset.", float(tx.tai)),
        ):
            yield gauge(f"timex_{name}", doc, value, namespace=NODE)
        for name, doc, count in (
            ("pps_jitter_total", "Pulse per second count of jitter limit exceeded events.", tx.jitcnt),
            ("pps_calibration_total", "Pulse per second count of calibration intervals.", tx.calcnt),
            ("pps_error_total", "Pulse per second count of calibration errors.", tx.errcnt),
            ("pps_stability_exceeded_total", "Pulse per second count of stability limit exceeded events.", tx.stbcnt),
        ):
            yield counter(f"timex_{name}", doc, float(count), namespace=NODE)
