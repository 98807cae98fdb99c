"""Hardware and cache events counting real work, in a real exporter process.

They need a hardware PMU; where the kernel exposes none (a VM without a virtual PMU) they skip,
saying so. They are the only tests that may skip.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from support.exposition import value, values
from test_perf_kernel import last_online_cpu, missing_pmu, run_pinned

from perfwatch.exporter import perf_events as pe

if TYPE_CHECKING:
    from conftest import StartExporter

pytestmark = pytest.mark.pmu

LOOPS = 3_000_000
LOOP = f"x = 0\nfor i in range({LOOPS}):\n    x += i\n"
CACHE_EVENTS = [e.name for e in pe.EVENTS.values() if e.type == pe.PERF_TYPE_HW_CACHE]


@pytest.fixture(scope="module", autouse=True)
def pmu() -> None:
    reason = missing_pmu()
    if reason:
        pytest.skip(reason)


def rise(before: str, after: str, event: str, cpu: str) -> float:
    metric = "perfwatch_" + pe.EVENTS[event].metric
    return value(after, metric, cpu=cpu) - value(before, metric, cpu=cpu)


def test_instructions_cycles_and_branches_of_a_known_loop(start_exporter: StartExporter) -> None:
    events = ["instructions", "cycles", "branch-instructions", "branch-misses"]
    exporter = start_exporter({"collectors": {"perf": {"events": events}}})
    cpu = str(last_online_cpu())
    before = exporter.scrape()
    run_pinned(int(cpu), LOOP)
    after = exporter.scrape()
    supported = {dict(k)["event"]: v for k, v in values(after, "perfwatch_perf_event_supported").items()}
    assert supported["instructions"] == supported["cycles"] == 1
    instructions = rise(before, after, "instructions", cpu)
    cycles = rise(before, after, "cycles", cpu)
    # One interpreted `x += i` iteration is several bytecodes, each many machine instructions.
    assert instructions >= 10 * LOOPS, instructions
    assert 0.1 <= instructions / cycles <= 8, (instructions, cycles)  # a plausible IPC
    if supported["branch-instructions"]:
        branches = rise(before, after, "branch-instructions", cpu)
        assert branches >= LOOPS, branches  # at least the loop's own branch per iteration
        if supported["branch-misses"]:
            assert 0 <= rise(before, after, "branch-misses", cpu) <= branches
    for labels, ratio in values(after, "perfwatch_perf_event_running_ratio").items():
        assert 0 <= ratio <= 1, (labels, ratio)
    assert value(after, "perfwatch_perf_event_running_ratio", event="instructions", cpu=cpu) > 0


def test_cache_events_count_memory_work(start_exporter: StartExporter) -> None:
    # Every hardware and cache event at once: more than the PMU has counters, so the kernel
    # multiplexes; the scaled estimates must still add up to at least the work done.
    exporter = start_exporter({"collectors": {"perf": {"events": ["instructions", *CACHE_EVENTS]}}})
    cpu = str(last_online_cpu())
    touches = (64 << 20) // 64
    before = exporter.scrape()
    run_pinned(int(cpu), f"b = bytearray({64 << 20})\ns = 0\nfor i in range(0, len(b), 64):\n    s += b[i]\n")
    after = exporter.scrape()
    supported = {dict(k)["event"]: v for k, v in values(after, "perfwatch_perf_event_supported").items()}
    counting = [e for e in CACHE_EVENTS if supported[e]]
    assert counting, "a PMU that counts instructions but no generalised cache event"
    for event in counting:
        assert rise(before, after, event, cpu) >= 0, event
    assert any(rise(before, after, e, cpu) > 0 for e in counting), counting
    if supported["L1-dcache-loads"]:
        assert rise(before, after, "L1-dcache-loads", cpu) >= touches
    assert rise(before, after, "instructions", cpu) >= 10 * touches
    ratios = values(after, "perfwatch_perf_event_running_ratio")
    assert all(0 <= r <= 1 for r in ratios.values()), ratios
