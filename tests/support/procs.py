"""Start perfwatch's programs and their peers as real processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """A program started as a child process, with its output kept in a log file."""

    def __init__(self, argv: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None,
                 ready_url: str | None = None, ready_timeout: float = 30.0,
                 user: str | None = None, group: str | int | None = None,
                 extra_groups: list[str | int] | None = None, verify: bool | str = True,
                 cwd: Path = REPO) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.ready_url = ready_url
        self.ready_timeout = ready_timeout
        self.env = {**os.environ, **(env or {})}
        self.user = user
        # With `user` alone the child keeps root's groups, and group permission bits (not "other")
        # then decide its access: pass group and extra_groups=[] to drop them too.
        self.group = group
        self.extra_groups = extra_groups
        self.verify = verify
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT, env=self.env,
                                     user=self.user, group=self.group, extra_groups=self.extra_groups, cwd=self.cwd)
        if self.ready_url:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        url = self.ready_url
        assert url is not None, "a Service without ready_url has nothing to wait for"
        deadline = time.monotonic() + self.ready_timeout
        last: Exception | str = "no answer"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv[0]} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = requests.get(url, timeout=2, verify=self.verify)
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code}"
            except requests.RequestException as err:
                last = err
            time.sleep(0.1)
        raise RuntimeError(f"{self.argv} not ready at {self.ready_url} after {self.ready_timeout}s "
                           f"({last}):\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def send_signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send `signum`, wait for the exit, return the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"{self.argv[0]} ignored signal {signum} for {timeout}s:\n{self.log()}") from None
        self._log.close()
        return self.proc.returncode

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def python_module(module: str, *args: str) -> list[str]:
    """argv running `python -m module args`, with the interpreter the tests run under."""
    return [sys.executable, "-m", module, *args]
