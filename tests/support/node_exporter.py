"""Debian's node_exporter (package prometheus-node-exporter, 1.5) scraped once, for the tests that
compare perfwatch's output with it."""

from __future__ import annotations

import pwd
import shutil
import subprocess
import time
from collections.abc import Sequence
from typing import Any

import requests

from support.procs import free_port

NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")


def scrape_once(args: Sequence[str] = (), user: str | None = None) -> str:
    """node_exporter's /metrics with `args` (collector flags), run as `user` if given, then stopped."""
    assert NODE_EXPORTER is not None, "prometheus-node-exporter is missing: scripts/test installs it"
    port = free_port()
    kwargs: dict[str, Any] = {}
    if user:  # drop root's groups too, so that permission bits for "other" decide
        kwargs = {"user": user, "group": pwd.getpwnam(user).pw_gid, "extra_groups": []}
    proc = subprocess.Popen([NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            except requests.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)
