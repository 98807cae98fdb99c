"""An exporter as a real process for the HTTP server's tests: any arguments, a web config, an
open-files limit, its CPU time; and a raw HTTP client that counts the answers it gets."""

from __future__ import annotations

import os
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any

import bcrypt
import requests
import yaml

from support.exposition import value
from support.procs import Service, free_port, python_module
from support.waiting import wait_until

# Sets the open-files limit (soft, hard), then becomes the exporter: the same PID.
_WITH_NOFILE = ("import os, resource, sys; soft, hard = map(int, sys.argv[1].split(':')); "
                "resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)); "
                "os.execv(sys.executable, [sys.executable, '-m', 'perfwatch.exporter', *sys.argv[2:]])")


def bcrypt_hash(password: str, cost: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=cost)).decode()


class ExporterProcess:
    """perfwatch-exporter on a free loopback port with `args`, a config dict and a web-config dict."""

    def __init__(self, workdir: Path, name: str, *args: str, config: dict[str, Any] | None = None,
                 web_config: dict[str, Any] | None = None, nofile: int | tuple[int, int] | None = None,
                 scheme: str = "http",
                 verify: bool | str = True) -> None:
        self.port = free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify = verify
        argv = ["--listen", f"127.0.0.1:{self.port}", *args]
        self.config_path = workdir / f"{name}.yml"
        if config is not None:
            self.write_config(config)
            argv += ["--config", str(self.config_path)]
        self.web_config_path = workdir / f"{name}-web.yml"
        if web_config is not None:
            self.write_web_config(web_config)
            argv += ["--web-config", str(self.web_config_path)]
        if isinstance(nofile, int):
            nofile = (nofile, nofile)
        command = ([sys.executable, "-c", _WITH_NOFILE, f"{nofile[0]}:{nofile[1]}", *argv] if nofile is not None
                   else python_module("perfwatch.exporter", *argv))
        self.service = Service(command, workdir / f"{name}.log")

    def write_config(self, config: dict[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(config))

    def write_web_config(self, web_config: dict[str, Any]) -> None:
        self.web_config_path.write_text(yaml.safe_dump(web_config, allow_unicode=True))

    def start(self) -> ExporterProcess:
        self.service.start()

        def healthy() -> bool:
            if not self.service.running:
                raise AssertionError(f"the exporter exited:\n{self.service.log()}")
            try:
                return self.get("/-/healthy", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        wait_until(healthy, "the exporter to answer /-/healthy", 30, interval=0.1, details=self.log)
        return self

    @property
    def pid(self) -> int:
        assert self.service.proc is not None
        return self.service.proc.pid

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("verify", self.verify)
        kwargs.setdefault("timeout", 10)
        return requests.get(self.url + path, **kwargs)

    def metric(self, name: str, auth: tuple[str, str] | None = None, **labels: str) -> float:
        """One sample of the exporter's own /metrics, scraped with `auth` (user, password)."""
        response = self.get("/metrics", auth=auth)
        assert response.status_code == 200, response.text
        return value(response.text, name, **labels)

    def open_files_limit(self) -> tuple[int, int]:
        """The process's (soft, hard) RLIMIT_NOFILE now."""
        for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
        raise AssertionError("no Max open files line")

    def cpu_seconds(self) -> float:
        """User + system CPU time of the whole process, every thread (/proc/PID/stat)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log(self) -> str:
        return self.service.log()

    def stop(self, signum: int | None = None) -> int:
        return self.service.stop(signum) if signum is not None else self.service.stop()


def exchange(port: int, data: bytes, *, quiet: float = 1.5, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send `data` on a new connection and read until the server closes it or says nothing for
    `quiet` seconds: (everything read, whether the server closed the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_all(sock, quiet=quiet, timeout=timeout)


def read_all(sock: socket.socket, *, quiet: float = 1.5, timeout: float = 10.0) -> tuple[bytes, bool]:
    answer = b""
    deadline = time.monotonic() + timeout
    sock.settimeout(quiet)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return answer, False
        except ConnectionResetError:
            return answer, True
        if not chunk:
            return answer, True
        answer += chunk
    return answer, False


STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


def statuses(answer: bytes) -> list[int]:
    """The status of every response in `answer` (bodies here never hold a status line)."""
    return [int(code) for code in STATUS_LINE.findall(answer)]
