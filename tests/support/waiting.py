"""Waiting for something to have happened: poll it, never sleep a fixed time and hope."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str, timeout: float = 10.0, *, interval: float = 0.05,
               details: Callable[[], str] | None = None) -> T:
    """Call `condition` until it returns something true, and return that.

    After `timeout` seconds raise AssertionError naming `what` was waited for, followed by
    `details()` (a log, say) when given. The condition is tried once more after the deadline, so a
    slow poll is not counted as a failure; exceptions it raises go through to the caller."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            message = f"timed out after {timeout:g}s waiting for {what}"
            raise AssertionError(f"{message}\n{details()}" if details else message)
        time.sleep(interval)
